"""Click segmentation with classical computer vision (the embedded default).

GrabCut seeded at the clicks: sure foreground discs at positive clicks, sure
background discs at negative ones, a probable-foreground region grown from the
click in colour space, and, where the camera is still, the moving region around
the click.  Colour models are learned per click; the component connected to the
positive clicks is kept and its holes filled.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..stages import Click, Frame, Mask, Segmenter, SelectionError
from .registry import BackendOptions

WORK_SIZE = 480  # long side the segmentation runs at
MAX_NEIGHBOURS = 4  # frames compared for the motion cue
MAX_FRACTION = 0.25  # a click selects an object, not most of the frame
MIN_CONTRAST = 4.0  # mean gradient along an outline below which there is no object to select
RECT_SCALES = (0.08, 0.13, 0.2, 0.3, 0.45)  # half-sizes of the tried rectangles, x the long side


def _scale(image: np.ndarray) -> float:
    return min(1.0, WORK_SIZE / max(image.shape[:2]))


def _disc(mask: np.ndarray, x: float, y: float, r: int, value: int) -> None:
    cv2.circle(mask, (int(round(x)), int(round(y))), max(1, r), value, -1)


def motion_region(frame: np.ndarray, neighbours: Sequence[np.ndarray]) -> np.ndarray | None:
    """Pixels that move relative to the (globally aligned) neighbours; None if nothing usable."""
    if not neighbours:
        return None
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    votes = np.zeros(gray.shape, np.float32)
    for other in neighbours:
        og = cv2.cvtColor(other, cv2.COLOR_RGB2GRAY)
        warp = np.eye(2, 3, dtype=np.float32)
        try:  # compensate a camera pan/zoom (affine); a still camera converges at identity
            _, warp = cv2.findTransformECC(gray, og, warp, cv2.MOTION_AFFINE,
                                           (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4), None, 5)
        except cv2.error:
            continue
        aligned = cv2.warpAffine(og, warp, gray.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE)
        diff = cv2.GaussianBlur(cv2.absdiff(gray, aligned).astype(np.float32), (0, 0), 2)
        votes += diff > 18
    if not votes.any():
        return None
    # the object at this frame shows in every comparison; its ghost at another frame's position in one
    n = len(neighbours)
    return votes >= (n if n <= 2 else n - 1)


def _gradient(img: np.ndarray) -> np.ndarray:
    gray = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (3, 3), 0).astype(np.float32)
    return cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))


def _outline_contrast(mask: np.ndarray, grad: np.ndarray) -> float:
    """Mean image gradient along the mask's outline (object boundaries are strong edges)."""
    m = mask.astype(np.uint8)
    edge = (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)
    h, w = mask.shape
    edge[0, :] = edge[-1, :] = False  # the image border is no evidence either way
    edge[:, 0] = edge[:, -1] = False
    return float(grad[edge].mean()) if edge.any() else 0.0


class ClassicalSegmenter(Segmenter):
    name = "classical"

    def __init__(self, iterations: int = 5) -> None:
        self.iterations = iterations

    def segment(self, frame: Frame, clicks: Sequence[Click], *, neighbours: Sequence[Frame] = ()) -> Mask:
        positives = [c for c in clicks if c.positive]
        if not positives:
            raise SelectionError(f"no positive click on frame {frame.index}; click inside the object first")
        full_h, full_w = frame.image.shape[:2]
        s = _scale(frame.image)
        img = frame.image if s == 1.0 else cv2.resize(frame.image, (round(full_w * s), round(full_h * s)),
                                                        interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        seed = max(2, round(min(h, w) / 80))
        negatives = [c for c in clicks if not c.positive]
        moving = motion_region(img, [cv2.resize(n.image, (w, h), interpolation=cv2.INTER_AREA)
                                     for n in neighbours[:MAX_NEIGHBOURS]])
        blob = self._moving_blob(moving, positives, s)
        grad = _gradient(img)
        motion_mask = None
        if blob is not None:  # the clicked object moves against a still (or aligned) background
            motion_mask = self._grabcut_seeded(img, blob, positives, negatives, s, seed)
        # Rectangles of growing size around the clicks each give a GrabCut segment.  The one kept
        # has the strongest contrast along its outline, halved when it runs into its rectangle's
        # sides (cut off by a too small box).  The rectangle is chosen from the positive clicks
        # alone, so that a negative click only ever subtracts.
        best, best_rect, best_score = None, None, -1.0
        smooth = cv2.cvtColor(cv2.GaussianBlur(img, (5, 5), 0), cv2.COLOR_RGB2BGR)
        for frac in RECT_SCALES:
            rect = self._rect(positives, s, frac * max(h, w), w, h)
            for candidate in (self._grabcut(img, rect, positives, (), s, seed),
                              self._watershed(smooth, rect, positives, (), s, seed)):
                if candidate is None or not candidate.any() or candidate.mean() > MAX_FRACTION:
                    continue  # nothing, or most of the frame: not an object a click selects
                score = _outline_contrast(candidate, grad) * (0.5 if self._touches(candidate, rect, w, h) else 1.0)
                if score > best_score:
                    best, best_rect, best_score = candidate, rect, score
        if motion_mask is not None and motion_mask.any():  # the motion cue competes on the same score
            score = _outline_contrast(motion_mask, grad)
            if score > best_score:
                best, best_rect, best_score = motion_mask, None, score
        if best_score < MIN_CONTRAST:
            best = None  # no visible outline: nothing was selected
        result = best
        if result is not None and negatives and best_rect is not None:
            corrected = self._grabcut(img, best_rect, positives, negatives, s, seed)
            result = None if corrected is None else corrected & best
        if result is None or not result.any():
            raise SelectionError(f"the click on frame {frame.index} selected nothing; click inside the object")
        return self._finish(result, s, full_w, full_h)

    @staticmethod
    def _finish(mask: np.ndarray, s: float, full_w: int, full_h: int) -> Mask:
        if s != 1.0:
            mask = cv2.resize(mask.astype(np.uint8), (full_w, full_h), interpolation=cv2.INTER_LINEAR) > 0
        return mask

    @staticmethod
    def _moving_blob(moving: np.ndarray | None, positives: Sequence[Click], s: float) -> np.ndarray | None:
        """The moving region under the clicks, if it is a plausible object (not most of the frame)."""
        if moving is None:
            return None
        h, w = moving.shape
        m = cv2.morphologyEx(moving.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
        _, labels = cv2.connectedComponents(m)
        blob = np.zeros((h, w), bool)
        for c in positives:
            lab = labels[min(h - 1, int(c.y * s)), min(w - 1, int(c.x * s))]
            if lab:
                blob |= labels == lab
        area = blob.sum()
        if area < 64 or area > 0.3 * h * w:
            return None
        return blob

    def _grabcut_seeded(self, img: np.ndarray, blob: np.ndarray, positives: Sequence[Click],
                        negatives: Sequence[Click], s: float, seed: int) -> np.ndarray | None:
        """GrabCut around a moving blob: its core is the object, its surroundings probably not."""
        h, w = blob.shape
        ys, xs = np.nonzero(blob)
        pad = max(8, int(0.25 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
        init = np.full((h, w), cv2.GC_BGD, np.uint8)
        init[max(0, ys.min() - pad):ys.max() + pad + 1, max(0, xs.min() - pad):xs.max() + pad + 1] = cv2.GC_PR_BGD
        init[blob] = cv2.GC_PR_FGD
        core = cv2.erode(blob.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        init[core] = cv2.GC_FGD
        return self._solve(img, init, positives, negatives, s, seed)

    @staticmethod
    def _rect(positives: Sequence[Click], s: float, half: float, w: int, h: int) -> tuple[int, int, int, int]:
        xs = [c.x * s for c in positives]
        ys = [c.y * s for c in positives]
        x0, x1 = max(0, int(min(xs) - half)), min(w, int(max(xs) + half) + 1)
        y0, y1 = max(0, int(min(ys) - half)), min(h, int(max(ys) + half) + 1)
        return x0, y0, x1, y1

    @staticmethod
    def _touches(mask: np.ndarray, rect: tuple[int, int, int, int], w: int, h: int) -> bool:
        """Does the segment press against a rectangle side that is not the image border?"""
        x0, y0, x1, y1 = rect
        sides = []
        if x0 > 0:
            sides.append(mask[y0:y1, x0 + 1])
        if x1 < w:
            sides.append(mask[y0:y1, x1 - 2])
        if y0 > 0:
            sides.append(mask[y0 + 1, x0:x1])
        if y1 < h:
            sides.append(mask[y1 - 2, x0:x1])
        return any(side.mean() > 0.08 for side in sides if side.size)

    def _grabcut(self, img: np.ndarray, rect: tuple[int, int, int, int], positives: Sequence[Click],
                 negatives: Sequence[Click], s: float, seed: int) -> np.ndarray | None:
        h, w = img.shape[:2]
        x0, y0, x1, y1 = rect
        init = np.full((h, w), cv2.GC_BGD, np.uint8)
        init[y0:y1, x0:x1] = cv2.GC_PR_FGD
        return self._solve(img, init, positives, negatives, s, seed)

    def _watershed(self, smooth_bgr: np.ndarray, rect: tuple[int, int, int, int], positives: Sequence[Click],
                   negatives: Sequence[Click], s: float, seed: int) -> np.ndarray | None:
        """Marker watershed: the region the clicks reach before the rectangle's border does."""
        h, w = smooth_bgr.shape[:2]
        x0, y0, x1, y1 = rect
        markers = np.ones((h, w), np.int32)
        markers[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = 0
        for c in negatives:
            cv2.circle(markers, (int(c.x * s), int(c.y * s)), 2 * seed, 1, -1)
        for c in positives:
            cv2.circle(markers, (int(c.x * s), int(c.y * s)), seed, 2, -1)
        cv2.watershed(smooth_bgr, markers)
        return self._keep_clicked(markers == 2, positives, negatives, s)

    def _solve(self, img: np.ndarray, init: np.ndarray, positives: Sequence[Click], negatives: Sequence[Click],
               s: float, seed: int) -> np.ndarray | None:
        for c in positives:
            _disc(init, c.x * s, c.y * s, seed, cv2.GC_FGD)
        for c in negatives:
            _disc(init, c.x * s, c.y * s, 2 * seed, cv2.GC_BGD)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means start: same input, same mask
        try:
            cv2.grabCut(img, init, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate colour model (e.g. a flat image)
            return None
        fg = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
        return self._keep_clicked(fg, positives, negatives, s)

    @staticmethod
    def _keep_clicked(mask: np.ndarray, positives: Sequence[Click], negatives: Sequence[Click],
                      s: float) -> np.ndarray:
        h, w = mask.shape
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        n, labels = cv2.connectedComponents(mask)
        keep = set()
        for c in positives:
            lab = labels[min(h - 1, int(c.y * s)), min(w - 1, int(c.x * s))]
            if lab:
                keep.add(int(lab))
            else:  # the click fell on a thin gap: take the nearest component
                ys, xs = np.nonzero(labels)
                if ys.size:
                    i = int(np.argmin((ys - c.y * s) ** 2 + (xs - c.x * s) ** 2))
                    keep.add(int(labels[ys[i], xs[i]]))
        for c in negatives:  # a component holding only negative clicks is dropped
            lab = int(labels[min(h - 1, int(c.y * s)), min(w - 1, int(c.x * s))])
            if lab and not any(labels[min(h - 1, int(p.y * s)), min(w - 1, int(p.x * s))] == lab for p in positives):
                keep.discard(lab)
        out = np.isin(labels, list(keep)) if keep else np.zeros_like(mask, bool)
        # fill holes enclosed by the object
        inv = (~out).astype(np.uint8)
        n, lab2 = cv2.connectedComponents(inv)
        border = set(np.unique(np.concatenate([lab2[0], lab2[-1], lab2[:, 0], lab2[:, -1]])).tolist())
        holes = ~np.isin(lab2, list(border)) & (inv > 0)
        out = (out | holes).astype(np.uint8)
        for c in negatives:  # the negatively clicked pixel never belongs to the object
            cv2.circle(out, (int(c.x * s), int(c.y * s)), 2, 0, -1)
        return out.astype(bool)


def create(variant: str | None, options: BackendOptions) -> ClassicalSegmenter:
    return ClassicalSegmenter(iterations=int(options.extra.get("grabcut_iterations", 5)))
