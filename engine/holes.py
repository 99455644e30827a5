"""The hole a removed object leaves: its mask, and what hangs below it.

Removing an object but leaving its feet or its shadow on the ground looks worse than not removing
it.  A mask often stops above them: thin legs and shoes are closer in colour to the ground than to
the rest of the object, and a shadow is not part of the object at all.  So the hole of a removed
object also takes the pixels in a band under the object that the ground beside them, at the same
height, does not explain, where they hang from the object (connected to it); what is surely not
ground a little further down (feet under legs the colour of the ground) joins with the columns
between; a leg the mask misses may hang from higher up, from the object's lower part, under it.
The ground is modelled per row from two strips left and right of the band (the ground changes with
depth, that is with the row, much more than along it), keeping the colours both strips show (another
figure standing beside the band, on one side, is not ground); a pixel is explained when some ground
pixel in the nearby rows has its colour.

A mask also often stops short of the object's edge (a backpack's rim, a sleeve): the hole then
takes the pixels in a thin band around the mask that look like the object and not like the
background beyond the band, near them (nearest colour with a little weight on distance), where
they touch the mask.  Left in, such a rim shows beside the fill, and the fill copies it from one
frame into the next.

The tracked masks are not changed (exported masks and segmentation metrics stay the object's
own): only the hole is.
"""
from __future__ import annotations

import cv2
import numpy as np

from .stages import Image, Mask, mask_area, mask_box

BELOW_REACH = 0.3  # how far under the object the band reaches (x the object's height)
FOOT_ROWS = 0.15  # the object's lowest rows (x its height) whose columns the band spans ...
LOWER = 0.4  # ... and its lower part (x its height), under which a leg the mask misses may hang
FOOT_PAD = 0.15  # ... widened by this fraction of their span on each side
BAND_WIDTH = 48  # px: the band is examined at a scale where it is at most this wide (cost stays flat)
STRIP = 0.3  # width of each ground strip beside the band (x the band's width) ...
STRIP_GAP = 2  # ... this many px away from it
ROW_SPAN = 2  # ground pixels from this many rows above and below a pixel's row explain it
WEAK = 8.0  # Lab distance to the nearest ground colour over which a pixel may be the object's ...
STRONG = 24.0  # ... and over which it surely is not the ground
SHARED = STRONG  # a strip's colour is ground when the other strip shows one this close (Lab)
MIN_STRONG = 3  # a hanging part needs this many sure pixels
MAX_ADDED = 0.6  # the band adds at most this fraction of the object's area (else: no evidence, nothing)
EDGE_BAND = 0.12  # how far beyond a mask a part it missed is looked for (x the root of its area) ...
EDGE_MIN = 3  # ... at least this many px
EDGE_SIZE = 96  # px: the object's surroundings are examined at a scale where they are at most this big
EDGE_MARGIN = 12.0  # a band pixel is the object's when its nearest object sample is this much nearer
#                     than its nearest background sample (Lab units, plus one per px of distance)
EDGE_SAMPLES = 200  # object and background samples each (spread evenly over them)


def below_object(image: Image, mask: Mask, reach: float = BELOW_REACH) -> Mask:
    """Pixels under ``mask`` that hang from it and differ from the ground beside them (not in ``mask``)."""
    h, w = mask.shape
    empty = np.zeros((h, w), bool)
    area = mask_area(mask)
    if reach <= 0 or area < 16:
        return empty
    _, y_top, _, y_end = mask_box(mask)  # (not None: the mask has pixels)
    height = y_end - y_top
    bottom = y_end - 1
    top = max(0, bottom - max(2, int(FOOT_ROWS * height)))
    upper = max(0, bottom - max(2, int(LOWER * height)))
    cols = np.nonzero(mask[upper:bottom + 1].any(axis=0))[0]
    pad = max(2, int(FOOT_PAD * (np.ptp(cols) + 1)))
    c0, c1 = max(0, int(cols.min()) - pad), min(w, int(cols.max()) + pad + 1)
    y1 = min(h, bottom + 1 + int(reach * height))
    if y1 <= bottom + 1 or c1 - c0 < 2:
        return empty
    # the region: the band with its ground strips beside it, scaled so the band is at most BAND_WIDTH wide
    k = min(1.0, BAND_WIDTH / (c1 - c0))
    strip = max(3, round(STRIP * (c1 - c0)))
    rx0, rx1 = max(0, c0 - STRIP_GAP - strip), min(w, c1 + STRIP_GAP + strip)
    ry0, ry1 = upper, y1
    size = (max(1, round((rx1 - rx0) * k)), max(1, round((ry1 - ry0) * k)))
    crop = cv2.GaussianBlur(np.ascontiguousarray(image[ry0:ry1, rx0:rx1]), (3, 3), 0)
    lab = cv2.cvtColor(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2LAB).astype(np.float32)
    obj = cv2.resize(mask[ry0:ry1, rx0:rx1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT) > 0
    sh, sw = obj.shape
    if not obj.any():  # the object's lowest rows are thinner than a pixel at this scale: nothing to hang from
        return empty
    b0, b1 = round((c0 - rx0) * k), max(round((c0 - rx0) * k) + 1, round((c1 - rx0) * k))
    left = slice(0, max(0, round((c0 - STRIP_GAP - rx0) * k)))
    right = slice(min(sw, round((c1 + STRIP_GAP - rx0) * k)), sw)
    if left.stop - left.start + right.stop - right.start < 2:
        return empty  # no ground beside the band (the object spans the frame): no evidence
    dist = np.zeros((sh, sw), np.float32)
    for y in range(sh):
        r0, r1 = max(0, y - ROW_SPAN), min(sh, y + ROW_SPAN + 1)
        ground = _shared_ground(lab[r0:r1, left][~obj[r0:r1, left]], lab[r0:r1, right][~obj[r0:r1, right]])
        if len(ground) < 4:
            continue
        dist[y, b0:b1] = _nearest(lab[y, b0:b1], ground)
    # above the foot rows, only what is under the object in its column may hang from it (a leg the mask
    # misses), not what stands beside it
    rows = np.arange(sh)[:, None]
    env = np.where(obj.any(axis=0), sh - 1 - np.argmax(obj[::-1], axis=0), sh)
    dist[(rows < round((top - ry0) * k)) & (rows <= env[None])] = 0
    # the object's own edge, blurred by the resampling, is not a part of it: a pixel ring is ignored
    edge = cv2.dilate(obj.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    dist[edge] = 0
    # hanging parts are upright (legs, the shadow's edge): close vertical gaps before joining them up
    weak = (dist > WEAK).astype(np.uint8)
    tall = max(3, round(0.08 * height * k)) | 1  # odd kernels: no shift
    weak = cv2.morphologyEx(weak, cv2.MORPH_CLOSE, np.ones((tall, 1), np.uint8))
    weak = cv2.morphologyEx(weak, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels = cv2.connectedComponents(weak)
    sure = np.bincount(labels[dist > STRONG], minlength=n)
    keep = np.zeros(n, bool)
    touch = cv2.dilate(obj.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # across the ignored ring
    keep[np.unique(labels[touch])] = True  # hangs from the object ...
    keep &= sure >= MIN_STRONG  # ... and surely is not the ground
    keep[0] = False  # (label 0 is what is not weak: every labelled pixel is)
    added = keep[labels]
    added |= edge & ~obj & (cv2.dilate(added.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)  # where it hangs
    # what stands under it with a gap of ground-coloured legs between (feet, seen sure, under the legs the
    # colour of the ground) joins with the gap: the columns it spans, from the object's bottom down to it
    lowest = int(np.nonzero(obj.any(axis=1))[0].max())
    standing = ~keep & (sure >= 2 * MIN_STRONG)
    standing[0] = False
    for i in np.nonzero(standing)[0]:
        part = labels == i
        py, px = np.nonzero(part)
        if py.min() > lowest:
            added[lowest + 1:py.min(), px.min():px.max() + 1] = True
            added |= part
    if not added.any() or added.sum() > MAX_ADDED * area * k * k:
        return empty
    out = empty
    out[ry0:ry1, rx0:rx1] = cv2.resize(added.astype(np.uint8), (rx1 - rx0, ry1 - ry0),
                                       interpolation=cv2.INTER_NEAREST_EXACT) > 0
    return out & ~mask


def missed_edge(image: Image, mask: Mask, band: float = EDGE_BAND) -> Mask:
    """Pixels in a thin band around ``mask`` that look like the object rather than the background
    beyond the band, and touch the mask: a rim of the object the mask missed (not in ``mask``)."""
    h, w = mask.shape
    empty = np.zeros((h, w), bool)
    area = mask_area(mask)
    if band <= 0 or area < 16:
        return empty
    width = max(EDGE_MIN, round(band * np.sqrt(area)))
    x0, y0, x1, y1 = mask_box(mask, 3 * width)  # (not None: the mask has pixels)
    k = min(1.0, EDGE_SIZE / max(y1 - y0, x1 - x0))
    size = (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k)))
    lab = cv2.cvtColor(cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA),
                       cv2.COLOR_RGB2LAB).astype(np.float32)
    obj = cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT)
    wk = max(2, round(width * k))
    rim = _grow(obj, wk) & ~(obj > 0)
    beyond = _grow(obj, 3 * wk) & ~_grow(obj, wk + 1)
    inside = cv2.erode(obj, np.ones((3, 3), np.uint8)) > 0  # the object's outermost pixels mix with the background
    if inside.sum() < 8 or beyond.sum() < 8 or not rim.any():
        return empty
    gy, gx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    feature = np.concatenate([lab, gx[..., None], gy[..., None]], axis=2)  # colour, and 1 per px of distance

    def samples(where: np.ndarray) -> np.ndarray:
        f = feature[where]
        return f[::max(1, len(f) // EDGE_SAMPLES)]

    points = feature[rim]
    looks = _nearest(points, samples(beyond)) - _nearest(points, samples(inside)) > EDGE_MARGIN
    candidate = np.zeros(rim.shape, np.uint8)
    candidate[rim] = looks
    n, labels = cv2.connectedComponents(candidate, connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[_grow(obj, 1) & (candidate > 0)])] = True  # touches the mask
    keep[0] = False
    if not keep.any():
        return empty
    out = empty
    out[y0:y1, x0:x1] = cv2.resize(keep[labels].astype(np.uint8), (x1 - x0, y1 - y0),
                                   interpolation=cv2.INTER_NEAREST_EXACT) > 0
    return out & ~mask


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1,) * 2)) > 0


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point of ``a`` to the nearest point of ``b`` (rows of features).

    OpenCV's brute-force search, exact to float32: a numpy matrix product would wake OpenBLAS's
    threads, whose spinning afterwards slowed the optical flow running next by half on two cores."""
    if not len(a):
        return np.zeros(0, np.float32)
    dist, _ = cv2.batchDistance(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
                                cv2.CV_32F, normType=cv2.NORM_L2, K=1)
    return dist.reshape(-1)


def _shared_ground(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The ground colours of two strips: those the other strip also shows.  Something standing beside
    the band on one side only (another person's shoes) is not ground; with one strip, it is all there is."""
    if len(left) < 4 or len(right) < 4:
        return np.concatenate([left, right])
    ground = np.concatenate([left[_nearest(left, right) <= SHARED], right[_nearest(right, left) <= SHARED]])
    return ground if len(ground) >= 4 else np.concatenate([left, right])


def removal_hole(image: Image, mask: Mask, reach: float = BELOW_REACH, band: float = EDGE_BAND) -> Mask:
    """The hole removing one object leaves: its mask, what hangs below it and the rim it missed."""
    if (reach <= 0 and band <= 0) or not mask.any():
        return mask.astype(bool, copy=False)
    return mask | below_object(image, mask, reach) | missed_edge(image, mask, band)
