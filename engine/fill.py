"""Filling a hole in one image from the image itself: push-pull interpolation of a field, Telea,
and a seam-corrected copy of the texture beside the hole.

Used by the classical inpainter and by every inpainter's cheap (degraded) fill; imports only
numpy and OpenCV, so any module of the engine may use it.  Images are HxWx3 uint8, holes HxW bool.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np


def fill_invalid(field: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Push-pull interpolation: fill ``field`` (HxWxC float32) where ``valid`` is False."""
    if valid.all() or not valid.any():
        return field
    levels = []
    mask = np.ascontiguousarray(valid, dtype=bool).view(np.uint8)  # OpenCV's masked copies: numpy's
    # broadcast boolean ones cost ten times more at full size
    f = cv2.copyTo(field, mask, np.zeros_like(field))  # field * valid
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
    for f, w in reversed(levels[1:-1]):
        est = _pull(est, f, w)
    # at full size only the invalid pixels are needed, and there the weight is 0: the coarser estimate
    out = _upsampled(est, valid.shape)
    return cv2.copyTo(field, mask, out)


def _upsampled(est: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    up = cv2.resize(est, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return up[..., None] if up.ndim == 2 else up


def _pull(est: np.ndarray, f: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One level up: the level's own average (f / w) where it has weight, blended by that weight (w <= 1:
    area averages of 0/1) with the coarser estimate; (f / w) * w is f, so the blend is f + (1 - w) * up."""
    up = _upsampled(est, w.shape)
    return f + up * (1 - np.minimum(w, 1))[..., None]


def spatial_fill(image: np.ndarray, hole: np.ndarray, radius: int = 5) -> np.ndarray:
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


@dataclasses.dataclass(frozen=True)
class Copy:
    """A piece of a hole filled by a displaced, seam-corrected copy of the picture beside it."""

    box: tuple[int, int, int, int]  # y0, y1, x0, x1: the piece's box with its ring
    piece: np.ndarray  # the piece, on the box
    patch: np.ndarray  # the box's pixels as the copy fills them (uint8)
    cost: float  # mean squared colour difference (sum over channels) between the copy's ring and the hole's

    def paste(self, out: np.ndarray) -> None:
        y0, y1, x0, x1 = self.box
        out[y0:y1, x0:x1][self.piece] = self.patch[self.piece]


def pieces(hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hole's 8-connected pieces: labels (HxW, 0 outside) and OpenCV's stats per label."""
    h, w = hole.shape
    bx0, by0, bw, bh = cv2.boundingRect(np.ascontiguousarray(hole, dtype=bool).view(np.uint8))
    n, box_labels, stats, _ = cv2.connectedComponentsWithStats(  # labelled on the hole's box only
        np.ascontiguousarray(hole[by0:by0 + bh, bx0:bx0 + bw]).astype(np.uint8), connectivity=8)
    stats[:, 0] += bx0
    stats[:, 1] += by0
    labels = np.zeros((h, w), box_labels.dtype)
    labels[by0:by0 + bh, bx0:bx0 + bw] = box_labels
    return labels, stats


def tiny(stats: np.ndarray) -> bool:
    """A piece too small to copy texture into (left to Telea)."""
    return int(stats[cv2.CC_STAT_AREA]) < 48 or min(int(stats[cv2.CC_STAT_WIDTH]), int(stats[cv2.CC_STAT_HEIGHT])) < 4


def displaced_copy(image: np.ndarray, labels: np.ndarray, k: int, stats: np.ndarray,
                   blocked: np.ndarray) -> Copy | None:
    """Piece ``k``'s best displaced copy: beside, above or below it, clean of ``blocked``, its ring the
    nearest match to the piece's ring; None when no clean source fits."""
    h, w = labels.shape
    x, y, ww, hh = (int(v) for v in stats[:4])
    r = max(3, round(0.2 * min(ww, hh)))
    y0, y1, x0, x1 = max(0, y - r), min(h, y + hh + r), max(0, x - r), min(w, x + ww + r)
    comp = labels[y0:y1, x0:x1] == k
    ring = (cv2.dilate(comp.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)) > 0)
    ring &= ~blocked[y0:y1, x0:x1]
    if ring.sum() < 8:
        return None
    target = image[y0:y1, x0:x1].astype(np.float32)
    target_ring = target[ring]
    best, best_cost, best_fit = None, np.inf, np.inf
    for dy, dx in _offsets(ww, hh, r):
        sy0, sx0 = y0 + dy, x0 + dx
        if sy0 < 0 or sx0 < 0 or sy0 + (y1 - y0) > h or sx0 + (x1 - x0) > w:
            continue
        src_hole = blocked[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0]
        if (src_hole & (comp | ring)).sum() > 0.02 * comp.sum():
            continue
        src_ring = image[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0][ring].astype(np.float32)
        fit = float(((src_ring - target_ring) ** 2).sum(axis=1).mean())
        cost = fit * (1.0 + 0.05 * np.hypot(dy, dx) / max(ww, hh))  # nearer sources are likelier the same surface
        if cost < best_cost:
            best, best_cost, best_fit = (sy0, sx0, src_hole), cost, fit
    if best is None:
        return None
    sy0, sx0, src_hole = best
    src = image[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0].astype(np.float32)
    valid = ~blocked[y0:y1, x0:x1] & ~src_hole
    correction = fill_invalid(np.where(valid[..., None], target - src, 0).astype(np.float32), valid)
    return Copy((y0, y1, x0, x1), comp, np.clip(src + correction + 0.5, 0, 255).astype(np.uint8), best_fit)


def texture_fill(image: np.ndarray, hole: np.ndarray, avoid: np.ndarray | None = None) -> np.ndarray:
    """Fill each piece of ``hole`` with real texture: the displaced copy of the picture whose ring
    around the piece best matches the ring around the hole, its colours corrected by the membrane
    (push-pull) interpolation of the mismatch at the border so the seam vanishes.  Pieces with no
    clean source nearby (or tiny ones) get Telea.  Only ``hole`` pixels change.  ``avoid`` (HxW bool,
    optional) is what must never be copied, nor matched against: other objects, what moves, what is
    left of the removed object.

    Telea alone smooths a person-sized hole into a blurred silhouette (a ghost); a copy of the
    grass or wall beside it looks like the scene.  Cheap enough for every degraded frame; the full
    fill makes up what no frame saw with patches (engine/patchfill.py)."""
    if not hole.any():
        return image
    out = image.copy()
    blocked = hole if avoid is None else hole | avoid
    labels, stats = pieces(hole)
    left = np.zeros(len(stats), bool)  # pieces left to Telea
    for k in range(1, len(stats)):
        copy = None if tiny(stats[k]) else displaced_copy(image, labels, k, stats[k], blocked)
        if copy is None:
            left[k] = True
        else:
            copy.paste(out)
    if left.any():
        out = spatial_fill(out, left[labels])
    return out
