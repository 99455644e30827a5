"""Making up what no frame saw: exemplar (PatchMatch) inpainting from the allowed pixels only.

Each piece of the hole is filled from patches of the picture around it by PyPatchMatch (Barnes et al.
2009: a randomised nearest-patch search, coarse to fine, with voting), told which pixels are no
source (``global_mask``): tracked objects, what moves, the removed object's remains.  A hedge stays a
hedge and a wall's courses continue behind the removed person, where Telea smears the border inwards
in streaks.  Where a displaced copy of what lies beside the piece continues the picture around it
closely (stripes, a regular structure across the hole), that copy is taken instead: it is exact there
and PatchMatch's local search may break such a pattern.

PatchMatch runs on a crop around the piece, scaled down so that the piece has at most HOLE_PIXELS
pixels (about 0.5 s for a person-sized hole at 854x480 on one core).  That is spent once per piece:
the inpainter carries a made-up fill forward along the flow from frame to frame.  Without the native
library (a platform without a wheel where the build failed) the displaced copy and Telea serve.
"""
from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

from .fill import displaced_copy, pieces, spatial_fill, texture_fill, tiny

log = logging.getLogger("unseen.patchfill")

CONTEXT = 0.75  # sources come from the piece's box grown by this x its long side per side
HOLE_PIXELS = 8000  # a larger piece is made up at a scale where it has this many pixels, then scaled back
PATCH_RADIUS = 3  # PyPatchMatch's patch radius (7x7 patches; its own coarse levels also try 11x11)
COPY_FIT = 1000.0  # a displaced copy whose ring differs from the piece's by at most this (mean squared colour
#                    distance, 0-255 per channel, summed over them) continues the picture: taken as it is
MAX_PIECES = 8  # pieces beyond the largest this many get the displaced copy or Telea (bounded cost)
MIN_SOURCES = 16  # whole patches to copy from, at least (else the displaced copy or Telea)
SEED = 0  # PatchMatch's random search is seeded: the same input gives the same fill

_lock = threading.Lock()  # the native library's random generator is one global: seeded and used under it
# (streams that make up fill at the same moment take turns)
_warned = False  # the missing library is said once per process


def _native():  # the PatchMatch module, or None when its library cannot be loaded here
    try:
        import patchmatch
    except ImportError:
        return None
    return patchmatch if patchmatch.patchmatch_available else None


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("PyPatchMatch's native library is not available: what no frame saw gets the displaced "
                    "copy or Telea; reinstall PyPatchMatch (pip install --force-reinstall PyPatchMatch)")


def made_up_fill(image: np.ndarray, hole: np.ndarray, avoid: np.ndarray | None = None) -> np.ndarray:
    """``image`` with each piece of ``hole`` made up from the pixels neither in ``hole`` nor in ``avoid``
    (see the module doc).  Only ``hole`` pixels change."""
    if not hole.any():
        return image
    native = _native()
    if native is None:
        _warn_once()
        return texture_fill(image, hole, avoid)
    out = image.copy()
    blocked = hole if avoid is None else hole | avoid
    labels, stats = pieces(hole)
    order = sorted(range(1, len(stats)), key=lambda k: -int(stats[k, cv2.CC_STAT_AREA]))
    left = np.zeros(len(stats), bool)
    for rank, k in enumerate(order):
        if tiny(stats[k]):
            left[k] = True
            continue
        copy = displaced_copy(image, labels, k, stats[k], blocked)
        close = copy is not None and copy.cost <= COPY_FIT
        if not close and rank < MAX_PIECES:
            piece = labels == k
            if _patch_match(native, out, piece, blocked & ~piece):
                continue
        if copy is not None:
            copy.paste(out)
        else:
            left[k] = True
    return spatial_fill(out, left[labels]) if left.any() else out


def _patch_match(native, out: np.ndarray, piece: np.ndarray, avoid: np.ndarray) -> bool:
    """Fill ``piece`` of ``out`` in place by PatchMatch on a crop around it, never from ``avoid``; False
    (nothing changed) when the crop holds fewer than MIN_SOURCES whole patches to copy from."""
    h, w = piece.shape
    x, y, bw, bh = cv2.boundingRect(piece.view(np.uint8))
    m = max(16, round(CONTEXT * max(bw, bh)))
    x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(w, x + bw + m), min(h, y + bh + m)
    crop, inside, never = out[y0:y1, x0:x1], piece[y0:y1, x0:x1], avoid[y0:y1, x0:x1]
    s = min(1.0, float(np.sqrt(HOLE_PIXELS / max(1, int(inside.sum())))))
    if s < 1.0:
        size = (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        fill = cv2.resize(inside.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0  # any part: hole
        no = (cv2.resize(never.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0) & ~fill
    else:
        small, fill, no = np.ascontiguousarray(crop), inside, never
    side = 2 * PATCH_RADIUS + 1
    sources = cv2.erode((~(fill | no)).astype(np.uint8), np.ones((side, side), np.uint8), borderValue=0)
    if cv2.countNonZero(sources) < MIN_SOURCES:  # (the library would fill the piece with black)
        return False
    with _lock:
        native.set_random_seed(SEED)
        done = native.inpaint(small, fill, global_mask=no if no.any() else None, patch_size=PATCH_RADIUS)
    if s < 1.0:
        done = cv2.resize(done, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    crop[inside] = done[inside]
    return True
