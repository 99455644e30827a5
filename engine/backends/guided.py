"""The classical propagator guided by a learned box tracker (``classical+nanotrack``).

The flow propagator (:class:`~.classical_propagate.FlowPropagator`: DIS flow warp + GrabCut refinement) moves
every object's mask; one NanoTrack V2 per object follows its box.  Where the tracker's score trusts the box,
the box guides the mask, each step:
- on a panning camera, masked pixels that move with the background rather than with the box leave (what the
  warp dragged along where the camera and the object move apart: the trees behind a rider);
- the mask is bounded by the box grown by GROW x its size per side;
- a mask lost or shrunk (too little of it in the box against the area the object had for its box, most of it
  outside the box, or its own box far from the tracker's) is re-seeded by a GrabCut in the box with the object's
  own colour model (learned where it was seeded) against the background around the box now;
- an object not found (a full occlusion: the tracker stays on what hid it) is also looked for where it would be
  had it kept its motion from before it disappeared; found there, the tracker starts over on it.
A mask the guidance changed re-seeds the flow propagator on this frame, so the next step goes on from it.
A re-seed from outside (a user's correction, another object added) keeps an object's tracker and models where
the tracker trusted its box on that frame and the new mask's box overlaps it (IoU >= CORRECTION_AGREE); else the
tracker starts again there.
Masks are never opened or smoothed here: thin parts inside the box stay.

Memory: the flow propagator's, plus per object the tracker (fixed-size template), one colour model and the
boxes of the last COAST_BACK frames.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping

import cv2
import numpy as np

from unseen.weights.registry import WeightsError
from unseen.weights.store import installed

from ..flow import FlowCache, shared
from ..stages import Box, Frame, Image, Mask, Propagator, mask_box
from .classical_propagate import FlowPropagator, resolve_overlaps
from .nanotrack import NanoTracker, TrackedBox
from .registry import BackendError, BackendOptions

WEIGHTS = "nanotrack_v2"

MIN_SCORE = 0.6  # the tracker's score below which its box is not trusted (the flow alone goes on)
GROW = 0.35  # the box grown by this x its size per side bounds the mask
LOST = 0.35  # mask in the box below this x the area the object had for its box: re-seeded from the box ...
AWAY = 0.5  # ... as when less than this share of the mask lies in the grown box, or when the mask's own box
BOX_AGREE = 0.5  # overlaps the tracker's by less than this (IoU); the re-seeded mask is taken when larger than
# what is left of the mask in the grown box
CORRECTION_AGREE = 0.1  # a mask re-seeded from outside (a user's correction) whose box overlaps the trusted tracker's
# by at least this (IoU) keeps the tracker: the classical click segmenter's selection at a correction is often a
# part of the object or the background beside it, and a tracker started again on it follows that; below it the
# user has shown the object elsewhere
CLIP_MIN = 0.01  # a bound that takes away less than this share of the mask is not applied
RESEED = 0.1  # guidance that changes more than this share of a mask re-seeds the flow propagator with it
DENSITY_RATE = 0.1  # how fast the object's area per box area follows the accepted masks as they grow ...
DENSITY_DOWN = 0.02  # ... and as they shrink (slowly: a mask losing the object must not become the norm)
CUT_SIZE = 256  # long side of the region the re-seeding GrabCut runs at
CONTEXT = 0.5  # background around the box for that GrabCut, x the box's size per side
MIN_SEEDED = 0.1  # a re-seeded mask is taken when larger than this x the expected area and what is left
MAX_COAST = 50  # frames an object not found is looked for along its old motion (then it starts over)
VELOCITY_RATE = 0.3  # how fast the smoothed velocity follows the box
BOX_HISTORY = 64  # frames whose tracked box each object keeps (a re-seed goes back at most the held frames)
COAST_BACK = 8  # an object lost coasts from its box and velocity of this many frames before
KEEP_PART = 0.1  # parts of the re-seeded mask smaller than this x its largest part are dropped
SEPARATE = 6.0  # px (flow size): the box's motion this far from the background's tells them apart ...
BG_SHARE = 0.25  # ... and a masked pixel moving with the background (nearer it than the box, and within this x
# their difference of it) is background the warp dragged along: it leaves the mask, ...
PAN = 1.0  # ... where the background moves by this (px, flow size) or more: a panning camera.  On a still one the
# box moving against the background is as often the tracker's jitter over a still object (schoolgirls: a girl
# standing while another passes in front lost 80% of her mask to it), and the flow propagator's background
# model keeps dragged background out there


@dataclass
class _Guide:
    """One object's box tracker, its area per box area, and its colour model (GrabCut's foreground GMM)."""

    tracker: NanoTracker
    density: float
    colour: np.ndarray
    box: Box  # on the last frame
    velocity: tuple[float, float] = (0.0, 0.0)  # the box's motion per frame, smoothed
    past: deque = field(default_factory=lambda: deque(maxlen=COAST_BACK))  # (box, velocity) of the last frames
    lost: int = 0  # frames in a row the object was not found in the box (it coasts: see coasting)
    tracked: dict[int, TrackedBox] = field(default_factory=dict)  # frame index -> the tracker's box and score
    # there (the last BOX_HISTORY frames)

    def trusted(self, index: int, box: Box) -> Box | None:
        """The tracker's box on frame ``index`` where it trusted it (score) and ``box`` (a mask's, re-seeded
        there) overlaps it (CORRECTION_AGREE); else None.  A user's correction fixes the mask, not the box then:
        the tracker goes on with its template (started again on the corrected mask, often a part of the object,
        it took that part for the object: on bmx-trees a click's J&F with corrections fell below the one
        without)."""
        tracked = self.tracked.get(index)
        if tracked is None or tracked.score < MIN_SCORE or _box_iou(box, tracked.box) < CORRECTION_AGREE:
            return None
        return tracked.box

    def coasting(self) -> Box:
        """Where the object would be had it kept the motion it had COAST_BACK frames ago (the tracker's box
        and motion go wrong already while the object disappears, before it is lost)."""
        box, velocity = self.past[0]
        frames = len(self.past) + self.lost - 1
        return _shift(box, (velocity[0] * frames, velocity[1] * frames))


class GuidedPropagator(Propagator):
    name = "classical+nanotrack"
    reduced_step = True  # step_reduced(): the flow's, bounded by the boxes, without re-seeding

    def __init__(self, flow: FlowPropagator, flows: FlowCache, make_tracker: Callable[[], NanoTracker]) -> None:
        self._flow = flow
        self._flows = flows  # the flow propagator's cache: the flows it computed are found there
        self._make_tracker = make_tracker
        self._guides: dict[int, _Guide] = {}
        self._prev: Image | None = None
        self._epoch = 0  # the source's run of the last frame seen (Frame.epoch)
        self.recoveries = 0  # masks re-seeded from the box (diagnostics)

    @property
    def objects(self) -> list[int]:
        return self._flow.objects

    def memory_frames(self) -> int:
        return self._flow.memory_frames()

    def fork(self) -> "GuidedPropagator":
        return GuidedPropagator(self._flow.fork(), self._flows, self._make_tracker)

    def reset(self) -> None:
        self._flow.reset()
        self._guides.clear()
        self._prev = None

    def prepare(self, frame: Frame, before: Frame) -> None:
        self._flow.prepare(frame, before)

    def seed(self, frame: Frame, masks: Mapping[int, Mask]) -> None:
        self._flow.seed(frame, masks)
        guides = {}
        for oid, mask in masks.items():
            box = mask_box(mask)
            if box is None:
                continue
            guide = self._guides.get(oid)
            kept = guide.trusted(frame.index, box) if guide is not None else None
            if kept is not None:  # a correction of a well tracked object: its tracker goes on (see trusted)
                guide.box = kept
                guides[oid] = guide
                continue
            tracker = guide.tracker if guide is not None else self._make_tracker()
            tracker.start(frame.image, box)
            guides[oid] = _Guide(tracker, float(mask.sum()) / _area(box), _colour_model(frame.image, mask, box), box)
        self._guides = guides
        self._prev, self._epoch = frame.image, frame.epoch

    def step(self, frame: Frame) -> dict[int, Mask]:
        if self._broken(frame):
            return self._across_break(frame)
        return self._guided(frame, self._flow.step(frame), recover=True)

    def step_reduced(self, frame: Frame) -> dict[int, Mask]:
        """The flow's reduced step, bounded by the boxes; no re-seeding GrabCut (the costly part)."""
        if self._broken(frame):
            return self._across_break(frame)
        return self._guided(frame, self._flow.step_reduced(frame), recover=False)

    def _broken(self, frame: Frame) -> bool:
        """Whether ``frame`` follows a break in the source (another epoch than the last frame seen)."""
        return self._prev is not None and bool(self._guides) and frame.epoch != self._epoch

    def _across_break(self, frame: Frame) -> dict[int, Mask]:
        """After a break in the source the flow propagator finds the objects again, and each box tracker
        starts over on what it found (its search region is around the box it lost)."""
        masks = self._flow.step(frame)
        self.seed(frame, masks)  # (no tracker has a box on this frame to be trusted: each starts over)
        return masks

    def _guided(self, frame: Frame, masks: dict[int, Mask], recover: bool) -> dict[int, Mask]:
        changed = False
        flow = None if self._prev is None else self._flows.flow(frame.image, self._prev)
        self._prev, self._epoch = frame.image, frame.epoch
        for oid, guide in self._guides.items():
            mask = masks.get(oid)
            if mask is None:
                continue
            tracked = guide.tracker.update(frame.image)
            new = mask
            if flow is not None and tracked.score >= MIN_SCORE:
                new = _motion_gate(new, flow, self._flows.scale(frame.image), guide.box, tracked.box)
            new = self._guide(frame.image, guide, new, tracked, recover)
            if not guide.lost:
                guide.velocity = _velocity(guide.velocity, guide.box, tracked.box)
                guide.past.append((tracked.box, guide.velocity))
            guide.box = tracked.box
            guide.tracked[frame.index] = tracked
            while len(guide.tracked) > BOX_HISTORY:
                del guide.tracked[min(guide.tracked)]
            if new is not mask:
                changed |= int((new ^ mask).sum()) > RESEED * max(1, int(mask.sum()))
                masks[oid] = new
        resolve_overlaps(masks)
        if changed:  # the flow goes on from the guided masks (its colour models are learned again)
            self._flow.seed(frame, masks)
        return masks

    def _guide(self, image: Image, guide: _Guide, mask: Mask, tracked: TrackedBox, recover: bool) -> Mask:
        if tracked.score < MIN_SCORE:
            return mask
        h, w = mask.shape
        x0, y0, x1, y1 = _clip(_grow(tracked.box, GROW), w, h)
        area = int(mask.sum())
        inside = int(mask[y0:y1, x0:x1].sum())
        expected = guide.density * _area(tracked.box)
        lost = inside < LOST * expected
        if recover and (lost or inside < AWAY * area or _box_iou(mask_box(mask), tracked.box) < BOX_AGREE):
            seeded = self._recover(image, guide, tracked.box, max(inside, MIN_SEEDED * expected), expected)
            if seeded is not None:
                return seeded
        guide.lost = guide.lost + 1 if lost and recover and guide.lost < MAX_COAST else 0
        if area - inside > CLIP_MIN * area:
            bounded = np.zeros_like(mask)
            bounded[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
            mask = bounded
        density = inside / _area(tracked.box)
        guide.density += (DENSITY_RATE if density > guide.density else DENSITY_DOWN) * (density - guide.density)
        return mask

    def _recover(self, image: Image, guide: _Guide, box: Box, least: float, expected: float) -> Mask | None:
        """The object cut out of the tracker's box if more than ``least`` pixels; a lost object is also looked
        for where it would be had it kept its motion (the tracker may have stayed on what hid it), and the
        tracker starts over on it when it is found there."""
        seeded = _from_box(image, box, guide.colour)
        if seeded.sum() <= LOST * expected and guide.lost and guide.past:
            coasted = _from_box(image, guide.coasting(), guide.colour)
            if coasted.sum() > LOST * expected:
                guide.tracker.start(image, mask_box(coasted) or box)
                guide.past.clear()
                seeded = coasted
        if seeded.sum() <= least:
            return None
        self.recoveries += 1
        guide.lost = 0
        return seeded


def _motion_gate(mask: Mask, flow: np.ndarray, scale: float, before: Box, now: Box) -> Mask:
    """``mask`` without the pixels that move with the background rather than with the box (``flow``: for each
    pixel of the new frame at the flow's size, where it was on the previous one)."""
    if not mask.any():
        return mask
    h, w = mask.shape
    sh, sw = flow.shape[:2]
    box_motion = scale * np.array([(now[0] + now[2] - before[0] - before[2]) / 2,
                                   (now[1] + now[3] - before[1] - before[3]) / 2], np.float32)
    gx0, gy0, gx1, gy1 = _clip(_grow(now, GROW), w, h)
    outside = np.ones((sh, sw), bool)
    outside[int(gy0 * scale):int(np.ceil(gy1 * scale)), int(gx0 * scale):int(np.ceil(gx1 * scale))] = False
    sample = -flow[::4, ::4][outside[::4, ::4]]
    if len(sample) < 50:
        return mask
    bg_motion = np.median(sample, axis=0)
    gap = float(np.hypot(*(box_motion - bg_motion)))
    if float(np.hypot(*bg_motion)) < PAN or gap < SEPARATE:
        return mask
    x, y, bw, bh = cv2.boundingRect(mask.astype(np.uint8))
    sx0, sy0 = int(x * scale), int(y * scale)
    sx1, sy1 = min(sw, int(np.ceil((x + bw) * scale)) + 1), min(sh, int(np.ceil((y + bh) * scale)) + 1)
    motion = -flow[sy0:sy1, sx0:sx1]
    to_bg = np.hypot(*(motion - bg_motion).transpose(2, 0, 1))
    to_box = np.hypot(*(motion - box_motion).transpose(2, 0, 1))
    background = ((to_bg < to_box) & (to_bg < BG_SHARE * gap)).astype(np.uint8)
    if not background.any():
        return mask
    full_x0, full_y0 = int(sx0 / scale), int(sy0 / scale)
    full_x1, full_y1 = min(w, int(round(sx1 / scale))), min(h, int(round(sy1 / scale)))
    drop = np.zeros((h, w), bool)
    drop[full_y0:full_y1, full_x0:full_x1] = cv2.resize(
        background, (full_x1 - full_x0, full_y1 - full_y0), interpolation=cv2.INTER_NEAREST) > 0
    return mask & ~drop


def _shift(box: Box, by: tuple[float, float]) -> Box:
    return box[0] + by[0], box[1] + by[1], box[2] + by[0], box[3] + by[1]


def _velocity(velocity: tuple[float, float], before: Box, now: Box) -> tuple[float, float]:
    """The box centre's motion per frame, smoothed."""
    dx = (now[0] + now[2] - before[0] - before[2]) / 2
    dy = (now[1] + now[3] - before[1] - before[3]) / 2
    return (1 - VELOCITY_RATE) * velocity[0] + VELOCITY_RATE * dx, (1 - VELOCITY_RATE) * velocity[1] + VELOCITY_RATE * dy


def _box_iou(a: Box | None, b: Box) -> float:
    if a is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    return inter / (_area(a) + _area(b) - inter)


def _area(box: Box) -> float:
    return max(1.0, (box[2] - box[0]) * (box[3] - box[1]))


def _grow(box: Box, by: float) -> Box:
    dx, dy = by * (box[2] - box[0]), by * (box[3] - box[1])
    return box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy


def _clip(box: Box, w: int, h: int) -> tuple[int, int, int, int]:
    return (max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1]))),
            min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3]))))


def _region(image: Image, box: Box) -> tuple[tuple[int, int, int, int], float, np.ndarray]:
    """The box with its context, clipped to the frame; the scale to CUT_SIZE; that part of the image, scaled."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = _clip(_grow(box, CONTEXT), w, h)
    k = min(1.0, CUT_SIZE / max(1, x1 - x0, y1 - y0))
    size = (max(8, round((x1 - x0) * k)), max(8, round((y1 - y0) * k)))
    return (x0, y0, x1, y1), k, cv2.resize(image[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)


def _box_trimap(shape: tuple[int, int], box: Box, origin: tuple[int, int], k: float) -> np.ndarray:
    """Sure background in the region outside ``box``, probably the object inside it."""
    trimap = np.full(shape, cv2.GC_BGD, np.uint8)
    bx0, by0 = max(0, int((box[0] - origin[0]) * k)), max(0, int((box[1] - origin[1]) * k))
    bx1, by1 = int(np.ceil((box[2] - origin[0]) * k)), int(np.ceil((box[3] - origin[1]) * k))
    trimap[by0:by1, bx0:bx1] = cv2.GC_PR_FGD
    return trimap


def _colour_model(image: Image, mask: Mask, box: Box) -> np.ndarray:
    """GrabCut's foreground GMM learned on the object's pixels (its background around the box)."""
    (x0, y0, x1, y1), k, roi = _region(image, box)
    sub = cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), roi.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    trimap = np.where(sub > 0, cv2.GC_FGD, cv2.GC_BGD).astype(np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if trimap.min() == trimap.max():  # the object fills its region: no background to tell it from
        trimap[0, :] = cv2.GC_BGD
        trimap[-1, :] = cv2.GC_FGD
    cv2.setRNGSeed(0)
    cv2.grabCut(roi, trimap, None, background, foreground, 0, cv2.GC_INIT_WITH_MASK)
    return foreground


def _from_box(image: Image, box: Box, colour: np.ndarray) -> Mask:
    """The object in ``box``: one graph cut with its colour model held against the background around the box
    now; the small parts left over are dropped."""
    h, w = image.shape[:2]
    (x0, y0, x1, y1), k, roi = _region(image, box)
    trimap = _box_trimap(roi.shape[:2], box, (x0, y0), k)
    out = np.zeros((h, w), bool)
    if (trimap == cv2.GC_BGD).sum() < 16 or (trimap == cv2.GC_PR_FGD).sum() < 16:
        return out
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(roi, trimap, None, background, foreground, 0, cv2.GC_INIT_WITH_MASK)
    try:
        cv2.grabCut(roi, trimap, None, background, colour.copy(), 1, cv2.GC_EVAL_FREEZE_MODEL)
    except cv2.error:
        return out
    cut = ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cut, connectivity=8)
    if n <= 1:
        return out
    sizes = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], sizes >= KEEP_PART * sizes.max()])
    full = cv2.resize(keep[labels].astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out[y0:y1, x0:x1] = full > 0
    return out


def create(variant: str | None, options: BackendOptions) -> GuidedPropagator:
    """Factory for the registry (``classical+nanotrack``): the flow propagator of ``classical`` with the same
    options, guided by NanoTrack V2 from the weights folder (checked against its sha256 here)."""
    try:
        files = installed(WEIGHTS, options.weights_dir)
    except WeightsError as exc:
        raise BackendError(str(exc)) from None
    flows = options.flows if options.flows is not None else shared()
    flow = FlowPropagator(refine=bool(options.extra.get("refine", True)), flows=flows)
    return GuidedPropagator(flow, flows, lambda: NanoTracker(files))
