"""Click segmentation with classical computer vision (the embedded default).

Candidate segments around the positive clicks: GrabCut (colour models learned in a margin around
the box; on RGB with the motion against the camera in place of blue when there are neighbour frames,
so that the parts of an object that moves as one go together) and marker watershed over rectangles
of several sizes and shapes, plus GrabCut seeded with the region beside the click that moves against
the camera (from the neighbour frames; when two movers touch, the part of it around the clicked one).  A candidate is scored by the contrast along its outline, the
colour difference between it and a ring around it, its agreement with the other candidates and, when
something moves there, with the moving region; the best one (or the moving region's segment, when
the best is a part of it) seeds a last GrabCut, whose result is taken unless it grew the seed by more
than half (then it leaked into background of like colour).  Negative clicks
then subtract through a GrabCut with sure background at them, and cut off at its narrowest neck the
part they still lie in.

A box is the object's extent: GrabCut inside it (the clicks in it sure object or sure background) on
two feature images (Lab, and RGB with the motion against the camera as a channel, so the colour
models separate what moves from what does not) and two context margins, a small box's crop solved
enlarged; the segment whose own bounding box fills the box best, weighted by its colour distinctness
and the contrast along its outline, wins.  Positive clicks outside the box add what they select on
their own.
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Sequence, TypeVar

import cv2
import numpy as np

from ..stages import Box, Click, Frame, Mask, Segmenter, SelectionError, neck_cut
from .registry import BackendOptions

WORK_SIZE = 480  # long side the segmentation runs at ...
BOX_WORK_SIZE = 960  # ... and with a box (its GrabCuts are few, and a box's object may be small)
MAX_NEIGHBOURS = 4  # frames compared for the motion cue
MOTION_MIN = 0.5  # px of flow, beyond the camera's own motion, that count as moving ...
MOTION_NOISE = 4.0  # ... and at least this many times the frame's median residual flow
MOTION_MIN_AREA = 1500  # px at work size: the flow is smoothed over 8-px patches, a smaller moving region
# is mostly that blur (a small object's region is several times the object), so it is not used
MOTION_REACH = 0.03  # a moving region this far from the click (x the long side) is still under it
MOTION_POWER = 2.0  # weight of a candidate's agreement with the moving region in the score ...
MOTION_FLOOR = 0.5  # ... which can change a score at most ((1 + floor) / floor) ** power times (a cue, not a veto)
WHOLE_COVER, WHOLE_GROWTH, WHOLE_SCORE = 0.9, 1.4, 0.5  # a winner inside the moving object's segment (see
# _whole_moving): the share of it that segment holds, its area at most, its score at least (x the winner's)
MAX_FRACTION = 0.25  # a click selects an object, not most of the frame
REFINE_GROWTH = 1.5  # the winner's re-solve may follow its outline, not grow it by more than this factor: beyond,
# it has leaked into background of like colour (dog-walk: the wall beside the woman, 1.66x; on the DAVIS objects
# the re-solves grew it 1.1-1.37x, and one 1.53x, a leak: that schoolgirls object's J rose without it)
MIN_CONTRAST = 4.0  # mean gradient along an outline below which there is no object to select
CROP_MARGIN = 0.5  # GrabCut's background model: a margin this fraction of the rectangle around it
GRABCUT_PIXELS = 40000  # larger GrabCut crops are solved downscaled to about this many pixels ...
BOX_PIXELS = 60000  # ... and with a box
BOX_UPSCALE = 4.0  # ... and a smaller box's crop enlarged to about that, by up to this factor: GrabCut's smoothing
# outweighs a region of a few hundred pixels (a far-away figure) at its own size
RECT_SCALES = (0.08, 0.13, 0.2, 0.3)  # half-sizes of the tried rectangles, x the long side
RECT_ASPECTS = ((1.0, 1.0), (0.55, 1.5), (1.5, 0.6))  # (width, height) factors: square, upright, lying
CANDIDATE_ITERATIONS = 3  # GrabCut iterations of the rectangles' candidates (the winner is re-solved)
RING_WIDTH = 0.15  # colour ring around a candidate, x the square root of its area
HIST_BINS = 8  # per Lab channel, for the inside/ring colour comparison
DISTINCTNESS_POWER = 2.0  # weight of the inside/ring colour difference in the score
AGREEMENT_STEP = 4  # candidates are compared at this subsampling
AREA_PRIOR = 0.2  # exponent of a mild preference for larger candidates (parts of an object are sharp too)
BOX_MARGINS = (0.5, 1.0)  # box mode: GrabCut's background context, x the box's long side
BOX_CONTRAST_POWER = 0.25  # weight of the outline's contrast in a box candidate's score: a candidate that follows
# the blurred motion channel beyond the object's edges (more so solved enlarged) has a weaker outline
MOTION_GAIN = 16.0  # residual flow, in multiples of the frame's median, to 0-255 for the motion channel
CUT_LEVELS = 24  # distance levels tried to part a negatively clicked part from the rest
MIN_FIT = 0.2  # a box's segment whose bounding box covers less of the box than this is no object in it
THREADS = min(4, os.cpu_count() or 1)  # the candidates' GrabCuts are independent (OpenCV releases the GIL, and
# GrabCut's k-means seed is per thread): solved side by side, a click's segmentation takes half the time on 2 cores

T = TypeVar("T")


def _in_parallel(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task's result, in order; run on up to THREADS threads."""
    if THREADS <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    with concurrent.futures.ThreadPoolExecutor(min(THREADS, len(tasks)), thread_name_prefix="unseen-segment") as pool:
        return list(pool.map(lambda task: task(), tasks))


def _scale(image: np.ndarray, size: int = WORK_SIZE) -> float:
    return min(1.0, size / max(image.shape[:2]))


def _disc(mask: np.ndarray, x: float, y: float, r: int, value: int) -> None:
    cv2.circle(mask, (int(round(x)), int(round(y))), max(1, r), value, -1)


def _residuals(frame: np.ndarray, neighbours: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per neighbour, the flow magnitude at each pixel of ``frame`` beyond the camera's own motion.

    Dense flow from the frame to the neighbour, less the camera's motion (an affine fit to the flow by
    RANSAC, identity for a still camera): what is left moves by itself.  The flow is defined on this
    frame's pixels, so the object shows where it is now, with no ghost where it was or will be."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    step = max(4, min(h, w) // 40)
    gy, gx = np.mgrid[step // 2:h:step, step // 2:w:step]
    points = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = []
    for other in neighbours:
        flow = dis.calc(gray, cv2.cvtColor(other, cv2.COLOR_RGB2GRAY), None)
        affine, _ = cv2.estimateAffine2D(points, points + flow[gy.ravel(), gx.ravel()],
                                         ransacReprojThreshold=1.0)
        if affine is None:
            continue
        camera_x = affine[0, 0] * xs + affine[0, 1] * ys + affine[0, 2] - xs
        camera_y = affine[1, 0] * xs + affine[1, 1] * ys + affine[1, 2] - ys
        out.append(cv2.magnitude(flow[..., 0] - camera_x, flow[..., 1] - camera_y))
    return out


def motion_region(residuals: Sequence[np.ndarray]) -> np.ndarray | None:
    """Pixels that move against the camera (in any neighbour's residual flow); None if none."""
    moving = None
    for residual in residuals:
        now = residual > max(MOTION_MIN, MOTION_NOISE * float(np.median(residual)))
        moving = now if moving is None else moving | now
    return moving if moving is not None and moving.any() else None


def motion_channel(residuals: Sequence[np.ndarray]) -> np.ndarray | None:
    """The largest residual flow, in multiples of each frame's median, as a uint8 image channel."""
    if not residuals:
        return None
    level = np.max([r / max(0.25, float(np.median(r))) for r in residuals], axis=0)
    return np.clip(MOTION_GAIN * level, 0, 255).astype(np.uint8)


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


def _distinctness(mask: np.ndarray, lab: np.ndarray) -> float:
    """Bhattacharyya distance between the Lab colours inside the mask and in a ring around it."""
    inside = mask.astype(np.uint8)
    r = max(3, int(RING_WIDTH * np.sqrt(inside.sum())))
    ring = cv2.dilate(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) - inside
    if not ring.any():
        return 0.0
    hists = []
    for region in (inside, ring):
        hist = cv2.calcHist([lab], [0, 1, 2], region, [HIST_BINS] * 3, [0, 256] * 3)
        hists.append(cv2.normalize(hist, None, 1, 0, cv2.NORM_L1))
    return float(cv2.compareHist(hists[0], hists[1], cv2.HISTCMP_BHATTACHARYYA))


def _core(blob: np.ndarray) -> np.ndarray:
    """The inside of a moving region (eroded by a fifth of its size): the flow's blur does not reach it."""
    r = max(2, int(0.2 * np.sqrt(blob.sum())))
    core = cv2.erode(blob.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    return core.astype(bool)


def clicked_part(blob: np.ndarray, core: np.ndarray, positives: Sequence[Click],
                 s: float) -> tuple[np.ndarray, np.ndarray]:
    """The moving region ``blob`` and its ``core`` cut to the piece of the core nearest the clicks (at scale
    ``s``).  Two movers that touch (a woman and the dog she holds) make one moving region whose core falls
    apart, one piece each: every pixel goes with its nearest piece, and the clicked pieces' are kept.  A
    core in one piece (one object), or a kept part under MOTION_MIN_AREA, leaves both as they are."""
    if cv2.connectedComponents(core.astype(np.uint8))[0] <= 2:
        return blob, core
    _, nearest = cv2.distanceTransformWithLabels((~core).astype(np.uint8), cv2.DIST_L2, 3,
                                                 labelType=cv2.DIST_LABEL_CCOMP)
    h, w = core.shape
    keep = np.isin(nearest, [nearest[min(h - 1, int(c.y * s)), min(w - 1, int(c.x * s))] for c in positives])
    part = blob & keep
    if part.sum() < MOTION_MIN_AREA:
        return blob, core
    return part, core & keep


def _agreement(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Each mask's mean IoU with the others: segments that many cues and boxes reproduce are trusted."""
    if len(masks) < 2:
        return np.ones(len(masks))
    flat = np.array([m[::AGREEMENT_STEP, ::AGREEMENT_STEP].ravel() for m in masks], np.float32)
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1.0)
    return (iou.sum(1) - 1.0) / (len(masks) - 1)


def _in_rect(click: Click, s: float, rect: tuple[int, int, int, int]) -> bool:
    return rect[0] <= click.x * s < rect[2] and rect[1] <= click.y * s < rect[3]


def _box_fit(mask: np.ndarray, rect: tuple[int, int, int, int]) -> float:
    """IoU of the mask's bounding box with the rectangle: a box is drawn around the whole object."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = rect
    ix = max(0, min(int(xs.max()) + 1, x1) - max(int(xs.min()), x0))
    iy = max(0, min(int(ys.max()) + 1, y1) - max(int(ys.min()), y0))
    own = (int(xs.max()) + 1 - int(xs.min())) * (int(ys.max()) + 1 - int(ys.min()))
    return ix * iy / float(own + (x1 - x0) * (y1 - y0) - ix * iy)


def _features(img: np.ndarray, lab: np.ndarray, motion: np.ndarray | None) -> list[np.ndarray]:
    """Images GrabCut models in turn: Lab, and RGB with motion as its blue channel (colour alone often
    fails) or, without motion, RGB."""
    return [lab, img if motion is None else _with_motion(img, motion)]


def _with_motion(img: np.ndarray, motion: np.ndarray) -> np.ndarray:
    return np.dstack([img[..., 0], img[..., 1], motion])


def _cut(mask: np.ndarray, positives: Sequence[Click], negatives: Sequence[Click], s: float) -> np.ndarray:
    """Cut off the part of the mask a negative click still lies in, at the narrowest neck between it
    and the rest (stages.neck_cut): for what colour does not separate."""
    h, w = mask.shape
    shape = mask.astype(np.uint8)
    for c in negatives:  # the clicked pixels were cleared: close those small holes first
        if cv2.dilate(shape, np.ones((9, 9), np.uint8))[min(h - 1, int(c.y * s)), min(w - 1, int(c.x * s))]:
            cv2.circle(shape, (int(c.x * s), int(c.y * s)), 3, 1, -1)
    keep = [(p.x * s, p.y * s) for p in positives]
    for c in negatives:
        kept = neck_cut(shape, c.x * s, c.y * s, keep, CUT_LEVELS)
        if kept is not None:
            mask = mask & kept
            shape = mask
    return mask


class ClassicalSegmenter(Segmenter):
    name = "classical"

    def __init__(self, iterations: int = 5) -> None:
        self.iterations = iterations

    def segment(self, frame: Frame, clicks: Sequence[Click], *, neighbours: Sequence[Frame] = (),
                box: Box | None = None) -> Mask:
        positives = [c for c in clicks if c.positive]
        negatives = [c for c in clicks if not c.positive]
        if not positives and box is None:
            raise SelectionError(f"no positive click on frame {frame.index}; click inside the object first "
                                 f"(or draw a box around it)")
        full_h, full_w = frame.image.shape[:2]
        s = _scale(frame.image, WORK_SIZE if box is None else BOX_WORK_SIZE)
        img = frame.image if s == 1.0 else cv2.resize(frame.image, (round(full_w * s), round(full_h * s)),
                                                        interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        seed = max(2, round(min(h, w) / 80))
        residuals = _residuals(img, [cv2.resize(n.image, (w, h), interpolation=cv2.INTER_AREA)
                                     for n in neighbours[:MAX_NEIGHBOURS]])
        if box is None:
            result = self._from_clicks(img, positives, negatives, residuals, s, seed)
        else:
            result = self._from_box(img, box, positives, negatives, residuals, s, seed)
        if result is None or not result.any():
            prompt = "click" if box is None else "box"
            raise SelectionError(f"the {prompt} on frame {frame.index} selected nothing; "
                                 f"{'click inside' if box is None else 'draw the box around'} the object")
        return self._finish(result, s, full_w, full_h)

    def _from_clicks(self, img: np.ndarray, positives: Sequence[Click], negatives: Sequence[Click],
                     residuals: Sequence[np.ndarray], s: float, seed: int) -> np.ndarray | None:
        h, w = img.shape[:2]
        motion = motion_channel(residuals)
        feature = img if motion is None else _with_motion(img, motion)
        moving = motion_region(residuals)
        blob = self._moving_blob(moving, positives, s)
        grad = _gradient(img)
        core = None
        if blob is not None:  # the clicked object moves against the (still or followed) background
            blob, core = clicked_part(blob, _core(blob), positives, s)
        # Rectangles of growing size and three shapes around the clicks each give a GrabCut and a
        # watershed segment; the motion cue adds one more.  The rectangles come from the positive
        # clicks alone, so that a negative click only ever subtracts.
        smooth = cv2.cvtColor(cv2.GaussianBlur(img, (5, 5), 0), cv2.COLOR_RGB2BGR)
        rects = [self._rect(positives, s, frac * max(h, w) * ax, frac * max(h, w) * ay, w, h)
                 for frac in RECT_SCALES for ax, ay in RECT_ASPECTS]
        tasks: list[Callable[[], np.ndarray | None]] = []
        if blob is not None:
            tasks.append(lambda core=core: self._grabcut_moving(img, blob, core, positives, negatives, s, seed))
        for rect in rects:
            tasks.append(lambda rect=rect: self._grabcut(feature, rect, positives, (), s, seed,
                                                         iterations=CANDIDATE_ITERATIONS))
            tasks.append(lambda rect=rect: self._watershed(smooth, rect, positives, (), s, seed))
        solved = _in_parallel(tasks)
        motion_mask = solved.pop(0) if blob is not None else None
        if core is not None and not core.any():
            core = blob
        candidates: list[tuple[np.ndarray | None, tuple[int, int, int, int] | None]] = [
            (candidate, rects[i // 2]) for i, candidate in enumerate(solved)]
        candidates.append((motion_mask, None))
        candidates = [(c, r) for c, r in candidates
                      if c is not None and c.any() and c.mean() <= MAX_FRACTION]  # a click selects an object
        best, best_rect, best_score, whole = None, None, 0.0, None
        motion_score = 0.0  # the moving region's segment's, when it is a candidate
        if candidates:
            lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
            agreement = _agreement([c for c, _ in candidates])
            for (candidate, rect), agree in zip(candidates, agreement):
                contrast = _outline_contrast(candidate, grad)
                score = (contrast * _distinctness(candidate, lab) ** DISTINCTNESS_POWER * agree
                         * candidate.mean() ** AREA_PRIOR)
                if core is not None:  # an object moves as one: a part of it leaves some of the core out
                    score *= (MOTION_FLOOR + float(candidate[core].mean())) ** MOTION_POWER
                if candidate is motion_mask and contrast >= MIN_CONTRAST:
                    motion_score = score
                if contrast >= MIN_CONTRAST and score > best_score:
                    best, best_rect, best_score = candidate, rect, score
            whole = self._whole_moving(best, best_score, motion_mask, motion_score)
            if whole is not None:
                best = whole
        # re-solve with the winner as the object's seed; on RGB with motion when the winner is the moving
        # region's segment (its parts go together by their motion), else on RGB (on the demo's panning scene
        # the motion channel took 0.97 IoU to 0.32)
        if best is not None and best_rect is not None:
            refined = self._grabcut_seeded(img if whole is None else feature, best, positives, (), s, seed)
            if (refined is not None and refined.any() and refined.mean() <= MAX_FRACTION
                    and refined.sum() <= REFINE_GROWTH * best.sum()):
                best = refined
        result = best
        if result is not None and negatives and best_rect is not None:
            corrected = self._grabcut(img, best_rect, positives, negatives, s, seed)
            result = None if corrected is None else _cut(corrected & best, positives, negatives, s)
        return result

    @staticmethod
    def _whole_moving(best: np.ndarray | None, best_score: float, motion_mask: np.ndarray | None,
                      motion_score: float) -> np.ndarray | None:
        """The moving region's segment in place of a winner that is a part of it (a girl's bright
        backpack rather than the girl): it holds nearly all of the winner, is not much larger, and
        scores not far below it (0 when it was no candidate)."""
        if best is None or motion_mask is None or best is motion_mask:
            return None
        area = float(best.sum())
        if (motion_score < WHOLE_SCORE * best_score or motion_mask[best].sum() < WHOLE_COVER * area
                or motion_mask.sum() > WHOLE_GROWTH * area):
            return None
        return motion_mask

    def _from_box(self, img: np.ndarray, box: Box, positives: Sequence[Click], negatives: Sequence[Click],
                  residuals: Sequence[np.ndarray], s: float, seed: int) -> np.ndarray | None:
        """The best GrabCut inside the box over feature images and margins (see the module doc)."""
        h, w = img.shape[:2]
        rect = (max(0, int(box[0] * s)), max(0, int(box[1] * s)),
                min(w, int(np.ceil(box[2] * s))), min(h, int(np.ceil(box[3] * s))))
        if rect[2] - rect[0] < 3 or rect[3] - rect[1] < 3:
            return None
        inside = [c for c in positives if _in_rect(c, s, rect)]
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        grad = _gradient(img)
        best, best_score = None, 0.0
        tasks = [lambda feature=feature, margin=margin: self._grabcut(feature, rect, inside, negatives, s, seed,
                                                                      margin=margin, largest=True, pixels=BOX_PIXELS,
                                                                      upscale=BOX_UPSCALE)
                 for feature in _features(img, lab, motion_channel(residuals)) for margin in BOX_MARGINS]
        for candidate in _in_parallel(tasks):
            if candidate is None or not candidate.any():
                continue
            fit = _box_fit(candidate, rect)
            contrast = _outline_contrast(candidate, grad)
            if fit < MIN_FIT or contrast < MIN_CONTRAST:
                continue
            score = fit * _distinctness(candidate, lab) ** 0.5 * contrast ** BOX_CONTRAST_POWER
            if score > best_score:
                best, best_score = candidate, score
        if best is not None and negatives:
            best = _cut(best, inside, negatives, s)
        for click in positives:  # a positive click outside the box adds what it selects by itself
            at = min(h - 1, int(click.y * s)), min(w - 1, int(click.x * s))
            if not _in_rect(click, s, rect) and (best is None or not best[at]):
                extra = self._from_clicks(img, [click], negatives, residuals, s, seed)
                if extra is not None:
                    best = extra if best is None else best | extra
        return best

    @staticmethod
    def _finish(mask: np.ndarray, s: float, full_w: int, full_h: int) -> Mask:
        if s != 1.0:
            mask = cv2.resize(mask.astype(np.uint8), (full_w, full_h), interpolation=cv2.INTER_LINEAR) > 0
        return mask

    @staticmethod
    def _moving_blob(moving: np.ndarray | None, positives: Sequence[Click], s: float) -> np.ndarray | None:
        """The moving region under (or just beside) the clicks, if it is a plausible object."""
        if moving is None:
            return None
        h, w = moving.shape
        m = cv2.morphologyEx(moving.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
        _, labels = cv2.connectedComponents(m)
        ys, xs = np.nonzero(labels)
        if not ys.size:
            return None
        reach = MOTION_REACH * max(h, w)
        blob = np.zeros((h, w), bool)
        for c in positives:
            d2 = (xs - c.x * s) ** 2 + (ys - c.y * s) ** 2
            i = int(np.argmin(d2))
            if d2[i] <= reach ** 2:
                blob |= labels == labels[ys[i], xs[i]]
        area = blob.sum()
        if area < MOTION_MIN_AREA or area > MAX_FRACTION * h * w:
            return None
        return blob

    def _grabcut_moving(self, img: np.ndarray, blob: np.ndarray, core: np.ndarray, positives: Sequence[Click],
                        negatives: Sequence[Click], s: float, seed: int) -> np.ndarray | None:
        """GrabCut around the moving region: its core is the object, the rest of it probably, a ring
        around it maybe, everything further away not."""
        ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(0.25 * np.sqrt(blob.sum())) + 1,) * 2)
        init = np.full(blob.shape, cv2.GC_BGD, np.uint8)
        init[cv2.dilate(blob.astype(np.uint8), ring) > 0] = cv2.GC_PR_BGD
        init[blob] = cv2.GC_PR_FGD
        init[core] = cv2.GC_FGD
        return self._solve(img, init, positives, negatives, s, seed)

    def _grabcut_seeded(self, img: np.ndarray, blob: np.ndarray, positives: Sequence[Click],
                        negatives: Sequence[Click], s: float, seed: int) -> np.ndarray | None:
        """GrabCut around the best candidate: its core is the object, its surroundings probably not."""
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
    def _rect(positives: Sequence[Click], s: float, half_w: float, half_h: float, w: int,
              h: int) -> tuple[int, int, int, int]:
        xs = [c.x * s for c in positives]
        ys = [c.y * s for c in positives]
        x0, x1 = max(0, int(min(xs) - half_w)), min(w, int(max(xs) + half_w) + 1)
        y0, y1 = max(0, int(min(ys) - half_h)), min(h, int(max(ys) + half_h) + 1)
        return x0, y0, x1, y1

    def _grabcut(self, img: np.ndarray, rect: tuple[int, int, int, int], positives: Sequence[Click],
                 negatives: Sequence[Click], s: float, seed: int, *, margin: float = CROP_MARGIN,
                 largest: bool = False, iterations: int | None = None,
                 pixels: int = GRABCUT_PIXELS, upscale: float = 1.0) -> np.ndarray | None:
        """GrabCut inside the rectangle, its colour models learned from a margin around it only
        (``largest``: the largest segment is kept besides the clicked ones).

        Large crops are solved at a reduced size (GrabCut's cost grows with the pixel count), small ones
        enlarged by up to ``upscale``."""
        h, w = img.shape[:2]
        x0, y0, x1, y1 = rect
        m = max(8, int(margin * max(x1 - x0, y1 - y0)))
        cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
        cw, ch = cx1 - cx0, cy1 - cy0
        f = min(upscale, float(np.sqrt(pixels / (cw * ch))))
        size = (max(1, round(cw * f)), max(1, round(ch * f)))
        init = np.full((ch, cw), cv2.GC_BGD, np.uint8)
        init[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = cv2.GC_PR_FGD
        crop = np.ascontiguousarray(img[cy0:cy1, cx0:cx1])
        if f != 1.0:
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if f < 1.0 else cv2.INTER_LINEAR)
            init = cv2.resize(init, size, interpolation=cv2.INTER_NEAREST)
        shift = [Click(c.x - cx0 / s, c.y - cy0 / s, c.positive) for c in (*positives, *negatives)]
        solved = self._solve(crop, init, [c for c in shift if c.positive], [c for c in shift if not c.positive],
                             s * f, max(1, round(seed * f)), largest=largest, iterations=iterations)
        if solved is None:
            return None
        if f < 1.0:
            solved = cv2.resize(solved.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_LINEAR) > 0
        elif f > 1.0:  # each pixel is the object where most of its enlarged area is
            solved = cv2.resize(solved.astype(np.float32), (cw, ch), interpolation=cv2.INTER_AREA) >= 0.5
        out = np.zeros((h, w), bool)
        out[cy0:cy1, cx0:cx1] = solved
        return out

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
               s: float, seed: int, *, largest: bool = False, iterations: int | None = None) -> np.ndarray | None:
        for c in positives:
            _disc(init, c.x * s, c.y * s, seed, cv2.GC_FGD)
        for c in negatives:
            _disc(init, c.x * s, c.y * s, 2 * seed, cv2.GC_BGD)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means start: same input, same mask
        try:
            cv2.grabCut(img, init, None, bgd, fgd, iterations or self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate colour model (e.g. a flat image)
            return None
        fg = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
        return self._keep_clicked(fg, positives, negatives, s, largest=largest)

    @staticmethod
    def _keep_clicked(mask: np.ndarray, positives: Sequence[Click], negatives: Sequence[Click],
                      s: float, *, largest: bool = False) -> np.ndarray:
        h, w = mask.shape
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        keep = {1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))} if largest and n > 1 else set()
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
