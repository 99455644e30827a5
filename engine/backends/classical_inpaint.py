"""Flow-guided temporal fill plus spatial inpainting (the embedded default).

To complete frame t, the hole (dilated as the reference video inpainters do) is
traced through the window along optical flow that was itself completed inside the
holes (push-pull interpolation from the surrounding background motion).  Each hole
pixel takes its colour from the nearest frame in which that point of the scene is
visible; then from past reference frames; then from the previous output's fill
(inside its hole, before feathering: it keeps what was made up stable instead of
flickering, and never takes back a part of the object a mask missed); what no frame
saw is made up from patches of the picture around the hole (engine/patchfill.py), never from a tracked
object, from something moving, or from what is left of the removed object.  Only the dilated hole is
replaced.

On a still camera a long-term background model (engine/background.py, fed every frame that leaves
through :meth:`observe`) is the first source: what each pixel showed while calm and free of every
object.  It also measures what the masks missed: pixels beside a hole that differ from the known
background and touch it are the removed object's remains (hair, shoes, a shadow) and join its hole.

Flows are computed once per frame pair at a reduced size, in a
:class:`~unseen.engine.flow.FlowCache` shared with the classical propagator (which has already
computed each frame's flow back to the previous one when that frame arrived: the backward walk and
the previous fill take them from there, and the forward walk their inverses), so the cost per frame
is one flow inversion plus sampling, whatever the window length (and, when the window never saw part
of the hole, one flow to a reference frame).  The flows are completed inside the holes over the whole
frame: completing them on the hole's box (padded by up to 3x its size) lost 0.04-0.5 dB on
`unseen demo`, as the push-pull's coarse levels then no longer see the whole frame's motion.
"""
from __future__ import annotations

import collections
import cv2
import numpy as np

from typing import Mapping

from ..background import CLEARANCE, BackgroundModel
from ..fill import fill_invalid, texture_fill
from ..patchfill import made_up_fill
from ..flow import FlowCache, shared, squared_speed
from ..stages import Frame, Image, InpaintRequest, Inpainter, Mask, WindowEntry, dilate_hole, mask_area, mask_box
from .registry import BackendOptions

HOLE_GROW = 6  # extra dilation (px at flow size) of holes where flow is untrusted
REMAIN_DIFF = 30  # colour difference from the known background over which a pixel beside a hole is a remain ...
REMAIN_REACH = 0.35  # ... within this distance of the hole (x the root of its area) ...
REMAIN_MAX = 1.0  # ... adding at most this fraction of the hole (more: the light changed, not the object)
REFERENCE_FLOWS = 1  # direct flows to past reference frames per frame, newest first: the older ones' pixels
# have reached the target through the previous fills (3 flows: dog-walk 854x480 12 ms more a frame, remove
# suite the same to 0.01 dB)
RING = 10  # px (flow size): the band around a hole whose median motion moves the cheap fill's previous output
MOVING = 0.5  # px (flow size) of motion against the camera's over which a pixel is no source for made-up fill


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


def _camera(flow: np.ndarray) -> np.ndarray:
    """The camera's motion in a flow: its median (objects cover less than half the frame), on every 4th pixel."""
    return np.median(flow[::4, ::4].reshape(-1, 2), axis=0)


class _Walker:
    """Points of a hole walked from frame ``at`` along the flows, one frame at a time in ``direction``:
    their indices into the hole's pixels and where they are now (full-size px)."""

    def __init__(self, direction: int, at: int, pending: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
        self.direction, self.at = direction, at
        self.points = np.nonzero(pending)[0]
        self.x, self.y = xs[self.points].astype(np.float32), ys[self.points].astype(np.float32)

    def keep(self, which: np.ndarray) -> None:
        if not which.all():
            self.points, self.x, self.y = self.points[which], self.x[which], self.y[which]

    def stop(self) -> None:
        self.keep(np.zeros(len(self.points), bool))


class FlowGuidedInpainter(Inpainter):
    name = "classical"

    def __init__(self, future: int = 5, past: int = 5, dilation: int = 4, feather: int = 2,
                 flows: FlowCache | None = None) -> None:
        self.future = future
        self.past = past
        self.dilation = dilation
        self.feather = feather
        self._flows = flows if flows is not None else shared()  # raw flows (and grey frames) at flow size, shared with the propagator
        self._completed: collections.OrderedDict = collections.OrderedDict()  # (i, j, rev) -> completed flow
        self._holes: dict[tuple[int, int], tuple[Mask, bool]] = {}  # (i, rev) -> dilated hole (full size),
        # and whether the frames before and after it were both there to measure its remains
        # (i, rev) -> its fill before feathering, and where each filled pixel's content really is (px)
        self._fills: collections.OrderedDict = collections.OrderedDict()
        self._scale = 1.0
        # pixels filled so far from each source (diagnostics: how much was really seen, how much made up)
        self.filled = {"background": 0, "window": 0, "reference": 0, "previous": 0, "spatial": 0}
        self.background = BackgroundModel()
        self._objects: set[int] = set()  # the objects with a mask in the frame observed last
        self._occupied: tuple[int, Mask] | None = None  # (frame index, its tracked objects and hole)
        self._entries: Mapping[int, WindowEntry] = {}  # the window of the frame being completed
        self._still_since: int | None = None  # the first frame of the background model's still run

    def reset(self) -> None:
        self._completed.clear()
        self._holes.clear()
        self._fills.clear()
        self.background.reset()
        self._still_since = None
        self._objects.clear()
        self._occupied = None

    def prepare(self, frame: Frame, before: Frame) -> None:
        """While objects are tracked: the forward flow from ``before`` to ``frame``, which the fill walks along
        (the inverse of the propagator's backward one), computed ahead on the worker that decodes."""
        if self._objects:
            self._flows.forward(before.image, frame.image)

    def observe(self, entry: WindowEntry, masks: Mapping[int, Mask], *, hurried: bool = False) -> None:
        """Learn the still camera's background from the frame leaving; an object tracked from now on is
        forgotten where the model learned it (it stood still before it was clicked)."""
        image = entry.frame.image
        occupied = entry.hole.copy() if entry.hole.shape == image.shape[:2] else np.zeros(image.shape[:2], bool)
        present = set()
        for oid, m in masks.items():
            if m.any():
                occupied |= m
                present.add(oid)
        self.background.update(image, occupied, None if hurried else self._moved(image, self.background.previous))
        if self.background.known is None:  # the camera moved (or the scene changed): the model starts again
            self._still_since = None
        elif self._still_since is None:  # the model starts on the frame after the one the run starts with
            self._still_since = entry.frame.index - 1
        for oid in present - self._objects:
            grown = cv2.dilate(masks[oid].astype(np.uint8), np.ones((4 * CLEARANCE + 1,) * 2, np.uint8)) > 0
            self.background.forget(grown, image)
        self._objects = present
        self._occupied = (entry.frame.index, occupied)

    def _moved(self, image: Image, before: Image | None) -> Mask | None:
        """Pixels that moved against the camera since ``before``, dilated; None without a previous frame of
        this size.  The flow is the propagator's (found in the cache; a hurried frame, whose propagation
        was skipped, is not asked: computing it here would cost what the step saved, and the tracked
        objects are kept out of the model anyway, its calm test still holds for the rest)."""
        if before is None or before.shape != image.shape:
            return None
        flow = self._flows.flow(image, before)
        camera = _camera(flow)
        moving = (squared_speed(flow, camera) > MOVING ** 2).astype(np.uint8)
        moving = cv2.dilate(moving, np.ones((5, 5), np.uint8))
        return cv2.resize(moving, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST) > 0

    # -- cached pieces ---------------------------------------------------------------------
    def _hole_of(self, entry: WindowEntry) -> Mask:
        """The dilated hole with the remains; made again once both frames beside it are in the window (the
        remains' motion is measured towards both)."""
        i = entry.frame.index
        key = (i, entry.revision)
        both = i - 1 in self._entries and i + 1 in self._entries
        if key not in self._holes or (both and not self._holes[key][1]):
            hole = entry.hole
            if hole.any():
                hole = hole | self._remains(entry, hole)
            self._holes[key] = (dilate_hole(hole, self.dilation), both)
        return self._holes[key][0]

    def _neighbour(self, entry: WindowEntry) -> WindowEntry | None:
        """The frame before ``entry`` in the window (its flow is the propagator's, cached), else the one after."""
        i = entry.frame.index
        return self._entries.get(i - 1) or self._entries.get(i + 1)

    def _with_object(self, entry: WindowEntry, hole: Mask, box: tuple[int, int, int, int]) -> Mask | None:
        """In ``box`` (y0, y1, x0, x1) of ``entry``'s frame, the pixels that move as the hole's object does (its
        flow's median; a still one's stay still) towards the frames before and after it in the window; None
        without a neighbour frame, or when the camera moves (its parallax: no evidence)."""
        i = entry.frame.index
        y0, y1, x0, x1 = box
        along = None
        for near in (self._entries.get(i - 1), self._entries.get(i + 1)):
            if near is None:
                continue
            flow = self._raw(entry.frame, near.frame)
            k = flow.shape[0] / hole.shape[0]
            fy0, fy1 = int(y0 * k), max(int(y0 * k) + 1, int(np.ceil(y1 * k)))
            fx0, fx1 = int(x0 * k), max(int(x0 * k) + 1, int(np.ceil(x1 * k)))
            crop = flow[fy0:fy1, fx0:fx1]
            small = cv2.resize(hole[y0:y1, x0:x1].astype(np.uint8), (crop.shape[1], crop.shape[0]),
                               interpolation=cv2.INTER_NEAREST) > 0
            camera = _camera(flow)
            if small.sum() < 8 or np.hypot(*camera) > MOVING:
                return None
            own = np.median(crop[small], axis=0)
            limit = max(MOVING, 0.5 * float(np.hypot(*(own - camera))))
            with_it = squared_speed(crop, own) < limit ** 2
            along = with_it if along is None else along & with_it
        if along is None:
            return None
        return cv2.resize(along.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) > 0

    def _remains(self, entry: WindowEntry, hole: Mask) -> Mask:
        """Pixels beside ``hole`` that touch it, differ from the known background and do not move otherwise
        than its object: what the mask missed.  (Pixels moving with the object where no background is known
        were tried too: DIS carries the object's motion several pixels over its edge, and they cost 0.5 dB
        with the true masks and 0.3 dB with one click on schoolgirls -> drift-chicane.)"""
        image = entry.frame.image
        out = np.zeros_like(hole)
        if not self.background.ready:
            return out
        area = mask_area(hole)
        reach = max(4, round(REMAIN_REACH * np.sqrt(area)))
        x0, y0, x1, y1 = mask_box(hole, reach)  # (not None: the caller has a hole)
        box = hole[y0:y1, x0:x1].astype(np.uint8)
        near = cv2.distanceTransform((box == 0).astype(np.uint8), cv2.DIST_L2, 3) <= reach  # a disc, in O(n)
        sub = self.background.differs(np.ascontiguousarray(image[y0:y1, x0:x1]), REMAIN_DIFF,
                                      (slice(y0, y1), slice(x0, x1)))
        along = self._with_object(entry, hole, (y0, y1, x0, x1))
        if along is not None:  # what moves otherwise than the object beside it is something else
            sub &= along
        if not sub.any():
            return out
        candidate = cv2.morphologyEx((sub & near & (box == 0)).astype(np.uint8), cv2.MORPH_OPEN,
                                     np.ones((3, 3), np.uint8))
        n, labels = cv2.connectedComponents(candidate | box, connectivity=8)
        touching = np.unique(labels[box > 0])
        keep = np.zeros(n, bool)
        keep[touching] = True
        keep[0] = False
        added = keep[labels] & (box == 0)
        if added.sum() > REMAIN_MAX * area:
            return out
        out[y0:y1, x0:x1] = added
        return out

    def _avoid(self, entries: Mapping[int, WindowEntry], t: int) -> Mask:
        """Pixels of frame ``t`` that are no source for made-up fill: tracked objects, what moves against the
        camera, and on a still camera what differs from the known background (remains, other objects)."""
        image = entries[t].frame.image
        h, w = image.shape[:2]
        avoid = np.zeros((h, w), bool)
        if self._occupied is not None and self._occupied[0] == entries[t].frame.index \
                and self._occupied[1].shape == (h, w):
            avoid |= self._occupied[1]
        near = self._neighbour(entries[t])
        if near is not None:
            flow = self._raw(entries[t].frame, near.frame)
            own = _camera(flow)
            limit = max(MOVING, 0.3 * float(np.hypot(*own)))  # (parallax of a moving camera is not motion)
            moving = (squared_speed(flow, own) > limit ** 2).astype(np.uint8)
            moving = cv2.dilate(moving, np.ones((5, 5), np.uint8))
            avoid |= cv2.resize(moving, (w, h), interpolation=cv2.INTER_NEAREST) > 0
        if self.background.ready:
            avoid |= self.background.differs(image, REMAIN_DIFF)
        return avoid

    def _raw(self, a: Frame, b: Frame) -> np.ndarray:
        """The flow from ``a`` to ``b`` at flow size; forward in time, the inverse of the backward one."""
        if a.index < b.index:
            return self._flows.forward(a.image, b.image)
        return self._flows.flow(a.image, b.image)

    def _flow(self, a: WindowEntry, b: WindowEntry) -> np.ndarray:
        """Flow from frame a to frame b (at flow size), completed inside a's hole; cached.

        Used for consecutive frames, for the previous output and for the (older) reference frames."""
        i, j = a.frame.index, b.frame.index
        key = (i, j, a.revision)
        if key in self._completed:
            self._completed.move_to_end(key)
            return self._completed[key]
        flow = self._raw(a.frame, b.frame)
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
        for k in [k for k in self._holes if k[0] < oldest]:
            del self._holes[k]

    # -- the fill ---------------------------------------------------------------------------
    def inpaint(self, request: InpaintRequest) -> Image:
        entries = request.entries
        t = request.target
        target = entries[t]
        image = target.frame.image
        self._entries = entries
        hole = self._hole_of(target)
        if not hole.any():
            return image
        self._scale = self._flows.scale(image)
        h, w = hole.shape
        ys, xs = np.nonzero(hole)
        n = ys.size
        colour = np.zeros((n, 3), np.float32)
        offset = np.zeros((n, 2), np.float32)  # where each filled pixel's content really is (carried ones)
        done = np.zeros(n, bool)

        def take(source: np.ndarray, points: np.ndarray, px: np.ndarray, py: np.ndarray, src_hole: Mask | None):
            """Points (indices) not done yet at positions ``px, py`` of ``source`` take its colour there, where
            it is inside the frame and outside ``src_hole``."""
            ok = ~done[points] & (px >= 0) & (py >= 0) & (px <= w - 1) & (py <= h - 1)
            if src_hole is not None and ok.any():
                ix = np.clip(np.rint(px[ok]).astype(int), 0, w - 1)
                iy = np.clip(np.rint(py[ok]).astype(int), 0, h - 1)
                at = np.nonzero(ok)[0]
                ok[at[src_hole[iy, ix]]] = False
            if ok.any():
                colour[points[ok]] = _sample(source, px[ok], py[ok])
                done[points[ok]] = True

        # a still camera's background, where it was seen calm and free of every object: first, as the window's
        # frames show what the masks missed of the object (its remains) where the model shows the background
        if self.background.ready:
            assert self.background.known is not None and self.background.image is not None
            known = self.background.known[ys, xs]
            colour[known] = self.background.image[ys[known], xs[known]]
            done |= known
        self.filled["background"] += int(done.sum())
        counted = int(done.sum())
        s = self._scale
        # walk forward and backward along the completed consecutive flows, nearest frames first; a walker
        # carries only the points still to fill (each point's path is its own: dropping the others changes
        # nothing), and drops those that leave the frame
        walkers = [_Walker(direction, t, ~done, xs, ys) for direction in (1, -1)]
        limit = max(self.future, self.past)
        for d in range(1, limit + 1):
            if done.all():
                break
            for wk in walkers:
                j = t + wk.direction * d
                wk.keep(~done[wk.points])
                if j not in entries or wk.at not in entries or not len(wk.points):
                    wk.stop()
                    continue
                fx, fy = _displacement(self._flow(entries[wk.at], entries[j]), wk.x, wk.y, s)
                wk.x, wk.y, wk.at = wk.x + fx, wk.y + fy, j
                wk.keep((wk.x >= 0) & (wk.y >= 0) & (wk.x <= w - 1) & (wk.y <= h - 1))
                take(entries[j].frame.image, wk.points, wk.x, wk.y, self._hole_of(entries[j]))
        self.filled["window"] += int(done.sum()) - counted
        counted = int(done.sum())
        # past reference frames, newest first: a direct flow to each (a new one for every target: at most
        # REFERENCE_FLOWS of them); one from the still camera's present run (its background model is kept
        # while the camera stays still) shows the background where it is in the target
        flows = 0
        for ref in reversed(list(request.references)):
            if done.all():
                break
            if self.background.ready and self._still_since is not None and ref.frame.index >= self._still_since:
                px, py = xs.astype(np.float32), ys.astype(np.float32)
            else:
                if flows == REFERENCE_FLOWS:
                    break
                flows += 1
                fx, fy = _displacement(self._flow(target, ref), xs, ys, s)
                px, py = xs + fx, ys + fy
            take(ref.frame.image, np.arange(n), px, py, dilate_hole(ref.hole, self.dilation))
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
            out = made_up_fill(out, rest, self._avoid(entries, t) & ~hole)
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
        x0, y0, x1, y1 = mask_box(hole, 1)  # work on the hole's box (plus the ring of background around it)
        box = hole[y0:y1, x0:x1]
        dist = cv2.distanceTransform(box.astype(np.uint8), cv2.DIST_L2, 3)
        alpha = np.clip(dist / (self.feather + 1), 0, 1)[..., None]
        orig = original[y0:y1, x0:x1]
        blend = alpha * filled[y0:y1, x0:x1].astype(np.float32) + (1 - alpha) * orig.astype(np.float32)
        out = original.copy()
        out[y0:y1, x0:x1] = np.where(box[..., None], np.clip(blend + 0.5, 0, 255).astype(np.uint8), orig)
        return out

    def cheap(self, request: InpaintRequest) -> Image:
        """Degraded fill: the previous completed frame's pixels (still camera) or the texture fill; the
        still camera's background where known."""
        target = request.entries[request.target]
        made = self._holes.get((target.frame.index, target.revision))  # with the remains, when a full step made it
        hole = made[0] if made is not None else dilate_hole(target.hole, self.dilation)  # (the remains cost what
        # the degraded step saves)
        prev = request.completed.get(request.target - 1)
        before = request.entries.get(request.target - 1)
        if prev is not None and before is not None:
            prev = self._follow_camera(prev, target.frame.image, before.frame.image, hole)
        hole_u8 = np.ascontiguousarray(hole).view(np.uint8)  # masked copies by OpenCV: whole-frame boolean
        # indexing costs several times more on this degraded (hurried) path
        if prev is not None:
            out = cv2.copyTo(prev, hole_u8, target.frame.image.copy())
        else:
            out = texture_fill(target.frame.image, hole)
        if self.background.ready:
            assert self.background.known is not None and self.background.image is not None
            cv2.copyTo(self.background.image, cv2.bitwise_and(hole_u8, self.background.known.view(np.uint8)), out)
        return out

    def _follow_camera(self, prev: Image, image: Image, before: Image, hole: Mask) -> Image:
        """The previous output moved as the background around the hole moved since (the median of the flow in
        a band around it: a panning camera's view, or one following a subject); as it is on a still camera, or
        when the tracker computed no flow for the pair (a stale step: computing it here would cost what the
        degraded step saves).  complete suite, each frame's cheap fill from the true frame before, PSNR in
        the hole: 22.24 -> 23.80 dB against the plain copy, bmx-trees' fast pan 15.53 -> 23.95 dB."""
        flow = self._flows.cached(image, before)
        if flow is None or np.hypot(*_camera(flow)) <= MOVING:
            return prev
        h, w = hole.shape
        fh, fw = flow.shape[:2]
        small = cv2.resize(hole.astype(np.uint8), (fw, fh), interpolation=cv2.INTER_NEAREST)
        box = mask_box(small > 0, RING + 2)
        if box is None:
            return prev
        x0, y0, x1, y1 = box
        crop = small[y0:y1, x0:x1]
        band = (cv2.dilate(crop, np.ones((2 * RING + 1,) * 2, np.uint8)) > 0) & \
            (cv2.dilate(crop, np.ones((5, 5), np.uint8)) == 0)  # (beside the hole DIS carries the object's motion)
        motion = np.median(flow[y0:y1, x0:x1][band], axis=0) if band.sum() >= 20 else _camera(flow)
        dx, dy = motion / self._flows.scale(image)
        shift = np.float32([[1, 0, dx], [0, 1, dy]])  # each pixel x of the frame was at x + (dx, dy) before
        return cv2.warpAffine(prev, shift, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)


def create(variant: str | None, options: BackendOptions) -> FlowGuidedInpainter:
    return FlowGuidedInpainter(future=options.future, past=options.past, dilation=options.dilation,
                               flows=options.flows)
