"""Flow-guided temporal fill plus spatial inpainting (the embedded default).

To complete frame t, the hole (dilated as the reference video inpainters do) is
traced through the window along optical flow that was itself completed inside the
holes (push-pull interpolation from the surrounding background motion).  Each hole
pixel takes its colour from the nearest frame in which that point of the scene is
visible; then from past reference frames; then from the previous output's fill
(inside its hole, before feathering: it keeps what was made up stable instead of
flickering, and never takes back a part of the object a mask missed); what no frame
saw is filled with texture copied from beside the hole.  Only the dilated hole is replaced.

Flows are computed once per consecutive frame pair at a reduced size and cached,
so the cost per frame is two flows plus sampling, whatever the window length.
"""
from __future__ import annotations

import collections
import cv2
import numpy as np

from ..stages import Image, InpaintRequest, Inpainter, Mask, WindowEntry, dilate_hole
from .registry import BackendOptions

FLOW_SIZE = 480  # long side flows are computed at
HOLE_GROW = 6  # extra dilation (px at flow size) of holes where flow is untrusted


def fill_invalid(field: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Push-pull interpolation: fill ``field`` (HxWxC float32) where ``valid`` is False."""
    if valid.all() or not valid.any():
        return field
    levels = []
    f = field * valid[..., None]
    w = valid.astype(np.float32)
    while True:
        levels.append((f, w))
        if (w > 0).all() or min(w.shape) <= 2:
            break
        h2, w2 = (w.shape[0] + 1) // 2, (w.shape[1] + 1) // 2
        f = cv2.resize(f, (w2, h2), interpolation=cv2.INTER_AREA)
        w = cv2.resize(w, (w2, h2), interpolation=cv2.INTER_AREA)
        if f.ndim == 2:
            f = f[..., None]
    # pull: from the coarsest level up, fill where the weight is low
    f, w = levels[-1]
    est = f / np.maximum(w, 1e-6)[..., None]
    for f, w in reversed(levels[:-1]):
        up = cv2.resize(est, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        if up.ndim == 2:
            up = up[..., None]
        alpha = np.clip(w, 0, 1)[..., None]
        est = np.where(alpha > 0, f / np.maximum(w, 1e-6)[..., None], 0) * alpha + up * (1 - alpha)
    out = field.copy()
    out[~valid] = est[~valid]
    return out


def spatial_fill(image: Image, hole: Mask, radius: int = 5) -> Image:
    """Telea inpainting of ``hole`` on a crop around it (cost grows with the hole, not the frame)."""
    if not hole.any():
        return image
    ys, xs = np.nonzero(hole)
    h, w = hole.shape
    pad = 2 * radius + 8
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    out = image.copy()
    crop = cv2.inpaint(np.ascontiguousarray(image[y0:y1, x0:x1]), hole[y0:y1, x0:x1].astype(np.uint8),
                       radius, cv2.INPAINT_TELEA)
    out[y0:y1, x0:x1][hole[y0:y1, x0:x1]] = crop[hole[y0:y1, x0:x1]]
    return out


def _offsets(ww: int, hh: int, r: int) -> list[tuple[int, int]]:
    """Candidate source displacements for a hole of ``ww`` x ``hh`` (ring ``r``): beside it
    (left/right, a little up or down), then above/below; nearest first."""
    out = []
    for f in (1.0, 1.3, 1.7, 2.2):
        dx = round(f * (ww + r))
        for dy in (0, round(0.25 * hh), -round(0.25 * hh)):
            out += [(dy, dx), (dy, -dx)]
    for f in (1.0, 1.3, 1.7):
        dy = round(f * (hh + r))
        out += [(dy, 0), (-dy, 0)]
    return out


def texture_fill(image: Image, hole: Mask) -> Image:
    """Fill each piece of ``hole`` with real texture: the displaced copy of the picture whose ring
    around the piece best matches the ring around the hole, its colours corrected by the membrane
    (push-pull) interpolation of the mismatch at the border so the seam vanishes.  Pieces with no
    clean source nearby (or tiny ones) get Telea.  Only ``hole`` pixels change.

    Telea alone smooths a person-sized hole into a blurred silhouette (a ghost); a copy of the
    grass or wall beside it looks like the scene.  The copy is chosen per frame, but the engine
    carries a filled region forward by flow, so it stays put while the hole does."""
    if not hole.any():
        return image
    out = image.copy()
    img = image.astype(np.float32)
    h, w = hole.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    rest = np.zeros_like(hole)
    for k in range(1, n):
        x, y, ww, hh, area = (int(v) for v in stats[k])
        if area < 48 or min(ww, hh) < 4:
            rest |= labels == k
            continue
        r = max(3, round(0.2 * min(ww, hh)))
        y0, y1, x0, x1 = max(0, y - r), min(h, y + hh + r), max(0, x - r), min(w, x + ww + r)
        comp = labels[y0:y1, x0:x1] == k
        ring = (cv2.dilate(comp.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)) > 0)
        ring &= ~hole[y0:y1, x0:x1]
        if ring.sum() < 8:
            rest |= labels == k
            continue
        target = img[y0:y1, x0:x1]
        best, best_cost = None, np.inf
        for dy, dx in _offsets(ww, hh, r):
            sy0, sx0 = y0 + dy, x0 + dx
            if sy0 < 0 or sx0 < 0 or sy0 + (y1 - y0) > h or sx0 + (x1 - x0) > w:
                continue
            src_hole = hole[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0]
            if (src_hole & (comp | ring)).sum() > 0.02 * comp.sum():
                continue
            src = img[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0]
            cost = float(((src[ring] - target[ring]) ** 2).sum(axis=1).mean())
            cost *= 1.0 + 0.05 * np.hypot(dy, dx) / max(ww, hh)  # nearer sources are likelier the same surface
            if cost < best_cost:
                best, best_cost = (src, src_hole), cost
        if best is None:
            rest |= labels == k
            continue
        src, src_hole = best
        valid = ~hole[y0:y1, x0:x1] & ~src_hole
        correction = fill_invalid(np.where(valid[..., None], target - src, 0).astype(np.float32), valid)
        patch = np.clip(src + correction + 0.5, 0, 255).astype(np.uint8)
        out[y0:y1, x0:x1][comp] = patch[comp]
    if rest.any():
        out = spatial_fill(out, rest)
    return out


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at float positions (1-D arrays of any length)."""
    n = len(x)
    cols = 1024  # cv2.remap maps must stay under 32767 per side: lay the points out as rows
    rows = max(1, -(-n // cols))
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = x, y
    out = cv2.remap(image, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * cols, -1)[:n] if image.ndim == 3 else out.reshape(-1)[:n]


def _displacement(flow: np.ndarray, x: np.ndarray, y: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The flow (computed at ``scale``) at full-size positions, in full-size pixels."""
    return (_sample(flow[..., 0], x * scale, y * scale) / scale,
            _sample(flow[..., 1], x * scale, y * scale) / scale)


def _carry(fill: Image, offset: np.ndarray, inside: Mask, x: np.ndarray, y: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carry a fill to float positions ``x, y`` without resampling it: each position takes the pixel
    (of the 2x2 around it, inside ``inside``) whose content lies nearest to it, ``offset`` (HxWx2)
    telling where each pixel's content really is; returns the pixels taken (where some was), their
    colours and where their content now is relative to the positions.  A fill carried for a hundred
    frames of a slow pan stays as sharp as it was made; bilinear sampling would blur it a little at
    every frame.  The error stays under a pixel (a position takes no pixel whose content lies further):
    it does not add up."""
    h, w = inside.shape
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    best = np.full(len(x), np.inf)
    bx, by = np.zeros(len(x), np.int64), np.zeros(len(x), np.int64)
    for dy in (0, 1):
        for dx in (0, 1):
            qx, qy = np.clip(x0 + dx, 0, w - 1), np.clip(y0 + dy, 0, h - 1)
            ex, ey = qx + offset[qy, qx, 0] - x, qy + offset[qy, qx, 1] - y
            err = np.where(inside[qy, qx], ex * ex + ey * ey, np.inf)
            better = err < best
            best[better], bx[better], by[better] = err[better], qx[better], qy[better]
    ok = best <= 1.0
    bx, by = bx[ok], by[ok]
    moved = np.stack([bx + offset[by, bx, 0] - x[ok], by + offset[by, bx, 1] - y[ok]], axis=1)
    return ok, fill[by, bx].astype(np.float32), moved.astype(np.float32)


class FlowGuidedInpainter(Inpainter):
    name = "classical"

    def __init__(self, future: int = 5, past: int = 5, dilation: int = 4, feather: int = 2) -> None:
        self.future = future
        self.past = past
        self.dilation = dilation
        self.feather = feather
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._flows: dict[tuple[int, int], np.ndarray] = {}  # raw flow i -> j at flow size
        self._completed: collections.OrderedDict = collections.OrderedDict()  # (i, j, rev) -> completed flow
        self._gray: dict[int, np.ndarray] = {}
        self._holes: dict[tuple[int, int], Mask] = {}  # (i, rev) -> dilated hole (full size)
        # (i, rev) -> its fill before feathering, and where each filled pixel's content really is (px)
        self._fills: collections.OrderedDict = collections.OrderedDict()
        self._scale = 1.0
        # pixels filled so far from each source (diagnostics: how much was really seen, how much made up)
        self.filled = {"window": 0, "reference": 0, "previous": 0, "spatial": 0}

    def reset(self) -> None:
        self._flows.clear()
        self._completed.clear()
        self._gray.clear()
        self._holes.clear()
        self._fills.clear()

    # -- cached pieces ---------------------------------------------------------------------
    def _gray_of(self, entry: WindowEntry) -> np.ndarray:
        i = entry.frame.index
        if i not in self._gray:
            g = cv2.cvtColor(entry.frame.image, cv2.COLOR_RGB2GRAY)
            if self._scale != 1.0:
                g = cv2.resize(g, (round(g.shape[1] * self._scale), round(g.shape[0] * self._scale)),
                               interpolation=cv2.INTER_AREA)
            self._gray[i] = g
        return self._gray[i]

    def _hole_of(self, entry: WindowEntry) -> Mask:
        key = (entry.frame.index, entry.revision)
        if key not in self._holes:
            self._holes[key] = dilate_hole(entry.hole, self.dilation)
        return self._holes[key]

    def _flow(self, a: WindowEntry, b: WindowEntry) -> np.ndarray:
        """Flow from frame a to frame b (at flow size), completed inside a's hole; cached.

        Used for consecutive frames, for the previous output and for the (older) reference frames."""
        i, j = a.frame.index, b.frame.index
        key = (i, j, a.revision)
        if key in self._completed:
            self._completed.move_to_end(key)
            return self._completed[key]
        if (i, j) not in self._flows:
            self._flows[(i, j)] = self._dis.calc(self._gray_of(a), self._gray_of(b), None)
        flow = self._flows[(i, j)]
        hole = self._hole_of(a)
        if hole.any():
            small = cv2.resize(hole.astype(np.uint8), (flow.shape[1], flow.shape[0]), interpolation=cv2.INTER_NEAREST)
            small = cv2.dilate(small, np.ones((2 * HOLE_GROW + 1, 2 * HOLE_GROW + 1), np.uint8))
            flow = fill_invalid(flow, small == 0)
        self._completed[key] = flow
        while len(self._completed) > 8 * (self.past + self.future + 4):
            self._completed.popitem(last=False)
        return flow

    def _forget(self, oldest: int) -> None:
        for k in [k for k in self._flows if min(k) < oldest]:
            del self._flows[k]
        for k in [k for k in self._gray if k < oldest]:
            del self._gray[k]
        for k in [k for k in self._holes if k[0] < oldest]:
            del self._holes[k]

    # -- the fill ---------------------------------------------------------------------------
    def inpaint(self, request: InpaintRequest) -> Image:
        entries = request.entries
        t = request.target
        target = entries[t]
        image = target.frame.image
        hole = self._hole_of(target)
        if not hole.any():
            return image
        self._scale = min(1.0, FLOW_SIZE / max(image.shape[:2]))
        h, w = hole.shape
        ys, xs = np.nonzero(hole)
        n = ys.size
        colour = np.zeros((n, 3), np.float32)
        offset = np.zeros((n, 2), np.float32)  # where each filled pixel's content really is (carried ones)
        done = np.zeros(n, bool)

        def take(source: np.ndarray, px: np.ndarray, py: np.ndarray, alive: np.ndarray, src_hole: Mask | None):
            ok = alive & ~done & (px >= 0) & (py >= 0) & (px <= w - 1) & (py <= h - 1)
            if src_hole is not None and ok.any():
                ix = np.clip(np.rint(px[ok]).astype(int), 0, w - 1)
                iy = np.clip(np.rint(py[ok]).astype(int), 0, h - 1)
                seen = ~src_hole[iy, ix]
                idx = np.nonzero(ok)[0]
                ok[idx[~seen]] = False
            if ok.any():
                colour[ok] = _sample(source, px[ok], py[ok])
                done[ok] = True

        s = self._scale
        # walk forward and backward along the completed consecutive flows, nearest frames first
        walkers = []
        for direction in (1, -1):
            walkers.append({"dir": direction, "x": xs.astype(np.float32), "y": ys.astype(np.float32),
                            "alive": np.ones(n, bool), "at": t})
        limit = max(self.future, self.past)
        for d in range(1, limit + 1):
            if done.all():
                break
            for wk in walkers:
                j = t + wk["dir"] * d
                prev = wk["at"]
                if j not in entries or prev not in entries or not wk["alive"].any():
                    wk["alive"][:] = False
                    continue
                fx, fy = _displacement(self._flow(entries[prev], entries[j]), wk["x"], wk["y"], s)
                wk["x"], wk["y"], wk["at"] = wk["x"] + fx, wk["y"] + fy, j
                wk["alive"] &= (wk["x"] >= 0) & (wk["y"] >= 0) & (wk["x"] <= w - 1) & (wk["y"] <= h - 1)
                take(entries[j].frame.image, wk["x"], wk["y"], wk["alive"], self._hole_of(entries[j]))
        self.filled["window"] += int(done.sum())
        counted = int(done.sum())
        # past reference frames: a direct flow to each, newest first
        for ref in reversed(list(request.references)):
            if done.all():
                break
            fx, fy = _displacement(self._flow(target, ref), xs, ys, s)
            take(ref.frame.image, xs + fx, ys + fy, np.ones(n, bool), dilate_hole(ref.hole, self.dilation))
        self.filled["reference"] += int(done.sum()) - counted
        counted = int(done.sum())
        # the previous output's fill: keeps what was made up before stable.  Only its hole is
        # taken (outside it the previous frame showed its own pixels, which the walk above has
        # already offered, and where its mask missed a part of the object those pixels *are*
        # the object), and before the feathering blended the hole's edge with the original.
        # Carried without resampling (see _carry).
        if not done.all() and (t - 1) in entries:
            before = entries[t - 1]
            fill, moved = self._fills.get((t - 1, before.revision), (None, None))
            if fill is not None:
                inside = self._hole_of(before)
            elif (t - 1) in request.completed:
                fill = request.completed[t - 1]  # fill of a hurried frame: skip its feathered edge
                moved = np.zeros((h, w, 2), np.float32)
                dist = cv2.distanceTransform(self._hole_of(before).astype(np.uint8), cv2.DIST_L2, 3)
                inside = dist > self.feather
            if fill is not None:
                pending = np.nonzero(~done)[0]
                fx, fy = _displacement(self._flow(target, before), xs[pending], ys[pending], s)
                ok, carried, where = _carry(fill, moved, inside, xs[pending] + fx, ys[pending] + fy)
                colour[pending[ok]], offset[pending[ok]] = carried, where
                done[pending[ok]] = True
        self.filled["previous"] += int(done.sum()) - counted
        self.filled["spatial"] += n - int(done.sum())
        out = image.copy()
        out[ys[done], xs[done]] = np.clip(colour[done] + 0.5, 0, 255).astype(np.uint8)
        if not done.all():
            rest = np.zeros_like(hole)
            rest[ys[~done], xs[~done]] = True
            out = texture_fill(out, rest)
        moved = np.zeros((h, w, 2), np.float32)
        moved[ys, xs] = offset
        self._fills[(t, target.revision)] = (out, moved)
        while len(self._fills) > 2:
            self._fills.popitem(last=False)
        if self.feather > 0:
            out = self._feather(image, out, hole)
        oldest = min(entries)
        self._forget(oldest)
        return out

    def _feather(self, original: Image, filled: Image, hole: Mask) -> Image:
        """Blend the outermost ``feather`` pixels of the (dilated) hole; nothing outside it changes."""
        ys, xs = np.nonzero(hole)  # work on the hole's box (plus the ring of background around it)
        h, w = hole.shape
        y0, y1, x0, x1 = max(0, ys.min() - 1), min(h, ys.max() + 2), max(0, xs.min() - 1), min(w, xs.max() + 2)
        box = hole[y0:y1, x0:x1]
        dist = cv2.distanceTransform(box.astype(np.uint8), cv2.DIST_L2, 3)
        alpha = np.clip(dist / (self.feather + 1), 0, 1)[..., None]
        orig = original[y0:y1, x0:x1]
        blend = alpha * filled[y0:y1, x0:x1].astype(np.float32) + (1 - alpha) * orig.astype(np.float32)
        out = original.copy()
        out[y0:y1, x0:x1] = np.where(box[..., None], np.clip(blend + 0.5, 0, 255).astype(np.uint8), orig)
        return out

    def cheap(self, request: InpaintRequest) -> Image:
        """Degraded fill: the previous completed frame's pixels (still camera) or the texture fill."""
        target = request.entries[request.target]
        hole = self._hole_of(target)
        prev = request.completed.get(request.target - 1)
        if prev is not None:
            out = target.frame.image.copy()
            out[hole] = prev[hole]
            return out
        return texture_fill(target.frame.image, hole)


def create(variant: str | None, options: BackendOptions) -> FlowGuidedInpainter:
    return FlowGuidedInpainter(future=options.future, past=options.past, dilation=options.dilation)
