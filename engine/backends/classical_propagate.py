"""Mask propagation by dense optical flow (the embedded default).

Each step computes DIS optical flow from the new frame back to the previous one, warps every
object's soft mask along it and refines the warped mask with a narrow-band GrabCut whose colour
models come from the object itself, so masks neither drift off nor erode away.

While the camera is still, three more checks keep a mask on its object:
- pixels just disoccluded (the forward flow does not confirm their backward flow, they show
  something else than where it points, they do not move with the object) take nothing from the
  warp: the background a moving object uncovers, or another object coming out from behind it;
- a background model is learned where no object is: masked pixels that show that known background
  leave the object, and pixels just outside it that are known not to be background and move with
  it join it (a limb the flow lost);
- each object's look is carried along the flow with its mask: masked pixels that have not looked
  like it for several frames in a row leave it (a mask left behind by a slow object).

Flows come from a :class:`~unseen.engine.flow.FlowCache` (``BackendOptions.flows``, else the process's):
the inpainter then finds the flows between consecutive frames already computed.  The warp is
computed on each object's box (grown by the motion), GrabCut on its region at a working size
(REFINE_SIZE): their cost stays with the object, not the frame.

Memory: the previous frame, the background model, one look and one mask per object (constant on
an endless stream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import cv2
import numpy as np

from ..flow import FlowCache, shared, squared_speed, to_working
from ..stages import Frame, Mask, Propagator, mask_box
from .registry import BackendOptions

REFINE_SIZE = 256  # long side of the region the refinement runs at (192 and 224: blackswan tracked from its true
# first mask runs away, IoU 0.64 / 0.68 against 0.90)
REFINE_ITERATIONS = 1  # GrabCut's: a second one changed 0.01% of the pixels and track J&F by 0.002, for 45% more
REFINE_BACKOFF = 3  # refinements of an object rejected in a row (below) after which it is tried ...
REFINE_EVERY = 4  # ... only every this many frames at first, twice as many after each try rejected there ...
REFINE_EVERY_MAX = 32  # ... up to this many, until one is taken again: on most clips the colour models keep
# disagreeing with the motion (DAVIS from the true first masks: bmx-trees, drift-chicane and schoolgirls
# rejected on every frame, blackswan on 2 of 39; dog-walk, the woman clicked: every try after frame 22), and
# a GrabCut costs more than the rest of a step (dog-walk 432x240: 31 ms against 12)
MIN_AGREEMENT = 0.8  # IoU the refined mask must keep with the warped one to be used ...
MAX_GROWTH = 1.1  # ... and the area ratio it may change by in one frame ...
MAX_DRIFT = 1.3  # ... and by against the object's slowly adapting area (seeded on the reference frame)
AREA_ADAPT = 0.05  # how fast that area follows the object (scale changes as it comes closer or leaves)
STILL_FLOW = 0.3  # px (flow size): median flow below this means a still camera, and a background model is kept
BG_RATE = 0.1  # how fast the background model follows the background where no object is
BG_SEEN = 5  # frames a pixel must be seen free of objects before its background is trusted
BG_MATCH = 14  # colour difference (0-255) under which a masked pixel is the known background: dropped
BG_DIFF = 40  # colour difference over which a pixel next to an object is not background: joined
BG_BAND = 0.06  # how far from an object (x its size) such pixels join it
FB_RATIO, FB_SLACK = 0.01, 0.5  # forward-backward check (Sundaram et al. 2010): |b + f(p + b)|^2 over
# FB_RATIO (|b|^2 + |f|^2) + FB_SLACK px^2 means the backward flow b at p is not confirmed: p was not visible
COHERENCE = 1.0  # px (flow size): a pixel whose flow is this far (or half the object's speed) from the
# object's own (median) flow does not move with it: it is not disoccluded object, nor may it join the object
CHANGED = 10  # grey levels: a disoccluded pixel also shows something else than what was where it comes from
LOOK_DIFF = 45  # colour levels (0-255, max over channels) by which a masked pixel may differ from the
# object's look carried along the flow ...
LOOK_PERSIST = 6  # ... for this many frames in a row before it leaves the object (a mask left behind
# by a slow or badly tracked object: its look there is gone)
LOOK_RATE = 0.2  # how fast the carried look follows the object where they agree (pose, light)
LOOK_MAX_DROP = 0.3  # more of a mask than this leaving at once is the flow failing: nothing leaves
MAX_DISOCCLUDED = 0.05  # more of the mask than this unconfirmed in one frame is the flow failing, not a
# disocclusion (motion blur, a fast turn): then the warp is kept as it is
# After a break in the source (Frame.epoch), each object is looked for again by its colours:
FIND_BINS = 8  # histogram bins per RGB channel of the object's colours against the rest of the last frame
FIND_LIKELY = 0.5  # share of a colour's pixels on the last frame that were the object's, for a pixel to be it
FIND_AREA = (0.25, 3.0)  # a found region's area against the object's last
FIND_BETTER = 1.2  # how much more like the object a region must look than the flow's mask, to replace it
SAME_VIEW = 0.5  # share of the known background that must still match for the background model to hold


def _channel_max(image: np.ndarray) -> np.ndarray:
    """The largest of the three channels at each pixel (numpy's max over a short last axis is slow)."""
    return np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2])


@dataclass
class _Tries:
    rejected: int = 0  # refinements rejected in a row
    untried: int = 0  # frames since the refinement was last tried
    every: int = REFINE_EVERY  # frames between tries once backing off


class RefineBackoff:
    """When each object's GrabCut refinement is tried: on every frame until REFINE_BACKOFF of them in a row
    were rejected, then every REFINE_EVERY frames, twice as many after each of those tries that is rejected
    (up to REFINE_EVERY_MAX), until one is taken."""

    def __init__(self) -> None:
        self._tries: dict[int, _Tries] = {}  # object id -> its record

    def due(self, oid: int) -> bool:
        """Whether object ``oid`` is refined on this frame (called once a frame per object)."""
        tries = self._tries.setdefault(oid, _Tries())
        tries.untried += 1
        due = tries.rejected < REFINE_BACKOFF or tries.untried >= tries.every
        if due:
            tries.untried = 0
        return due

    def record(self, oid: int, *, taken: bool) -> None:
        """The outcome of a refinement of ``oid`` that was tried."""
        tries = self._tries.setdefault(oid, _Tries())
        if taken:
            tries.rejected, tries.every = 0, REFINE_EVERY
            return
        tries.rejected += 1
        if tries.rejected > REFINE_BACKOFF:  # a try while backing off, rejected too
            tries.every = min(2 * tries.every, REFINE_EVERY_MAX)

    def clear(self) -> None:
        self._tries.clear()


class FlowPropagator(Propagator):
    name = "classical"
    reduced_step = True  # step_reduced(): the flow alone, without the refinement

    def __init__(self, refine: bool = True, band: int | None = None, flows: FlowCache | None = None) -> None:
        self.refine = refine
        self.band = band
        self._flows = flows if flows is not None else shared()
        self._prev: np.ndarray | None = None  # the previous frame's image (its flows and grey are cached)
        self._look: dict[int, np.ndarray] = {}  # object id -> its look, carried along the flow (flow size)
        self._stale: dict[int, np.ndarray] = {}  # object id -> frames in a row each pixel differed from it
        self._soft: dict[int, np.ndarray] = {}  # object id -> float32 mask at full size
        self._area: dict[int, float] = {}  # slowly adapting area per object, to catch runaway growth
        self._backoff = RefineBackoff()
        self._bg: np.ndarray | None = None  # still camera: background colour per pixel (flow size)
        self._seen: np.ndarray | None = None  # frames each pixel was seen free of objects (capped)
        self._epoch = 0  # the source's run of the last frame seen (Frame.epoch)

    @property
    def objects(self) -> list[int]:
        return sorted(self._soft)

    def memory_frames(self) -> int:
        """The previous frame, the background model (one frame's worth) while the camera is still, and
        each object's carried look (one frame's worth at flow size each)."""
        return (self._prev is not None) + (self._bg is not None) + len(self._look)

    def fork(self) -> "FlowPropagator":
        return FlowPropagator(refine=self.refine, band=self.band, flows=self._flows)

    def reset(self) -> None:
        self._prev = None
        self._soft.clear()
        self._area.clear()
        self._backoff.clear()
        self._look.clear()
        self._stale.clear()
        self._bg = self._seen = None

    def prepare(self, frame: Frame, before: Frame) -> None:
        """The flow from ``frame`` back to ``before``, into the cache step() reads: on a pipelined stream the
        worker that decodes computes it while this one refines the frame before."""
        self._flows.flow(frame.image, before.image)

    def seed(self, frame: Frame, masks: Mapping[int, Mask]) -> None:
        self._scale = self._flows.scale(frame.image)
        self._prev = frame.image
        self._area = {oid: float(m.sum()) for oid, m in masks.items()}
        self._new_reference(frame.epoch, self._small(frame.image), masks)

    def _new_reference(self, epoch: int, small: np.ndarray, masks: Mapping[int, Mask]) -> None:
        """Continue from ``masks`` as from a new start (a seed, or the objects found again across a break):
        every refinement is tried again and each object's look is this frame."""
        self._soft = {oid: m.astype(np.float32) for oid, m in masks.items()}
        self._epoch = epoch
        self._backoff.clear()
        self._restart_looks(small, masks)

    def step(self, frame: Frame) -> dict[int, Mask]:
        if self._prev is None or not self._soft:
            self.seed(frame, {})
            return {}
        if frame.epoch != self._epoch:
            return self._across_break(frame)
        return self._step(frame)

    def _step(self, frame: Frame, small: np.ndarray | None = None) -> dict[int, Mask]:
        small = self._small(frame.image) if small is None else small  # (the frame at the flow size)
        flow = self._flows.flow(frame.image, self._prev)  # for each new pixel: where it was before
        still = float(np.median(cv2.magnitude(flow[..., 0], flow[..., 1]))) < STILL_FLOW
        # still camera: what moving objects uncover (disocclusions) is told apart; a moving camera's
        # clips (DAVIS) were tracked as well or better without it
        unconfirmed = self._unconfirmed(flow, frame.image) if still else None
        small_flow = flow
        out: dict[int, Mask] = {}
        for oid, soft in self._soft.items():
            warped = self._warp(soft, small_flow)
            apart = None if unconfirmed is None else self._apart(small_flow, unconfirmed, warped > 0.5)
            if apart is not None:
                uncovered = apart[1] & (warped > 0.5)  # disoccluded and not moving with it: not the object
                if uncovered.sum() <= MAX_DISOCCLUDED * (warped > 0.5).sum():
                    warped[uncovered] = 0
            mask = warped > 0.5
            soft = warped  # carried unthresholded: thresholding every step would bias the edges
            if self.refine and mask.any():
                refined = self._refine(frame.image, mask, oid) if self._backoff.due(oid) else mask
                area = float(refined.sum())
                anchor = self._area.get(oid, area)
                # the refinement may follow the object's outline, but not creep out over many frames
                if refined is not mask and anchor / MAX_DRIFT <= area <= anchor * MAX_DRIFT:
                    mask, soft = refined, refined.astype(np.float32)
                if still and self._bg is not None and self._bg.shape == small.shape:
                    gated = self._gate(small, mask, None if apart is None else apart[0])
                    if gated is not mask and gated.sum() <= anchor * MAX_DRIFT:  # shrinking to the known
                        # background is always right; growing only as far as the refinement may
                        mask, soft = gated, gated.astype(np.float32)
                self._area[oid] = (1 - AREA_ADAPT) * anchor + AREA_ADAPT * float(mask.sum())
            out[oid] = mask
            self._soft[oid] = soft
        resolve_overlaps(out)
        self._prev = frame.image
        self._learn_background(small, out, still)  # before the look check: what it takes away is not
        # learned as background on the frame it leaves the object
        if still:  # (on the moving-camera clips it took more of the object than it gave back)
            self._check_looks(small, small_flow, out)
        else:  # the looks start over from this frame, as the background model does
            self._restart_looks(small, out)
        return out

    def step_reduced(self, frame: Frame) -> dict[int, Mask]:
        """The cheaper step of a live stream that is behind: the masks follow the (cached) flow alone, without
        the GrabCut refinement (most of a step's time), the disocclusion check and the background model.
        The objects' looks are carried along the flow as in a full step, so the next one goes on from here."""
        if self._prev is None or not self._soft or frame.epoch != self._epoch:
            return self.step(frame)
        flow = self._flows.flow(frame.image, self._prev)
        out: dict[int, Mask] = {}
        for oid, soft in self._soft.items():
            warped = self._warp(soft, flow)
            out[oid] = warped > 0.5
            self._soft[oid] = warped
        resolve_overlaps(out)
        self._prev = frame.image
        self._carry_looks(flow)
        return out

    def _across_break(self, frame: Frame) -> dict[int, Mask]:
        """The step onto a frame that follows a break in the source (a reconnect: the objects may be
        anywhere).  The flow's step goes first (DIS reaches a moderate move; on DAVIS 15-30 frames apart it
        kept 0.35 IoU on average where a search by colour alone found 0.15).  Then each object is looked
        for again: the region of about its size most like it in colour (against the rest of the last
        frame), while the camera keeps the view the background model knows only among what is not known
        to be background, replaces the flow's mask where it looks clearly more like the object."""
        assert self._prev is not None
        small, before = self._small(frame.image), self._small(self._prev)
        allowed = self._not_background(small)
        last = {oid: self._at(soft > 0.5, before.shape) for oid, soft in self._soft.items()}
        out = self._step(frame, small)
        bins_before, bins_now = _colour_bins(before), _colour_bins(small)
        for oid, mask in out.items():
            found = _found_again(bins_before, last[oid], bins_now, self._at(mask, small.shape), allowed)
            if found is not None:
                out[oid] = self._grabcut(frame.image, self._at(found, mask.shape)) if self.refine \
                    else self._at(found, mask.shape)
        resolve_overlaps(out)
        self._new_reference(frame.epoch, small, out)  # (each object's area anchor is kept)
        return out

    def _not_background(self, small: np.ndarray) -> Mask | None:
        """Pixels (flow size) not known to be the background (it differs there, or is not known), while most
        of the known background still matches (the camera kept its view across the break); None, and the
        model starts over, otherwise."""
        if self._bg is None or self._seen is None or self._bg.shape != small.shape:
            return None
        diff = self._difference(small)
        known = self._seen >= BG_SEEN
        if not known.any() or (diff[known] < BG_MATCH).mean() < SAME_VIEW:
            self._bg = self._seen = None
            return None
        return ~known | (diff > BG_DIFF)

    @staticmethod
    def _at(mask: Mask, shape: tuple[int, ...]) -> Mask:
        """``mask`` at another size (H, W)."""
        if mask.shape == shape[:2]:
            return mask
        return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0

    def _carry_looks(self, flow: np.ndarray) -> None:
        """Each object's look and its count of differing frames moved along ``flow``, unchecked."""
        if not self._look:
            return
        sh, sw = flow.shape[:2]
        gx, gy = np.meshgrid(np.arange(sw, dtype=np.float32), np.arange(sh, dtype=np.float32))
        map_x, map_y = gx + flow[..., 0], gy + flow[..., 1]
        for oid in list(self._look):
            if self._look[oid].shape[:2] != (sh, sw):
                continue
            self._look[oid] = cv2.remap(self._look[oid], map_x, map_y, cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE)
            self._stale[oid] = cv2.remap(self._stale[oid], map_x, map_y, cv2.INTER_NEAREST,
                                         borderMode=cv2.BORDER_CONSTANT)

    def _warp(self, soft: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """``soft`` (full size) moved along ``flow`` (flow size, from the new frame to the previous one).
        Only its box grown by the largest motion is computed: nothing lands elsewhere."""
        h, w = soft.shape
        out = np.zeros_like(soft)
        x, y, bw, bh = cv2.boundingRect((soft > 0).astype(np.uint8))
        if bw == 0:
            return out
        reach = int(np.ceil(np.abs(flow).max() / self._scale)) + 2
        x0, y0, x1, y1 = max(0, x - reach), max(0, y - reach), min(w, x + bw + reach), min(h, y + bh + reach)
        gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        # the flow at these pixels, as a linear resize of the whole flow to full size would give it
        sx, sy = flow.shape[1] / w, flow.shape[0] / h
        f = cv2.remap(flow, (gx + 0.5) * sx - 0.5, (gy + 0.5) * sy - 0.5, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE) / self._scale
        out[y0:y1, x0:x1] = cv2.remap(soft, gx + f[..., 0], gy + f[..., 1], cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out

    def _restart_looks(self, small: np.ndarray, ids) -> None:
        """Each object's look is this frame (blurred as it is compared), differing nowhere yet."""
        look = cv2.GaussianBlur(small, (5, 5), 0).astype(np.float32)
        self._look = {oid: look.copy() for oid in ids}
        self._stale = {oid: np.zeros(small.shape[:2], np.uint8) for oid in ids}

    def _check_looks(self, small: np.ndarray, flow: np.ndarray, masks: dict[int, Mask]) -> None:
        """Each object's look is carried along the flow with its mask; masked pixels that have differed from
        it for LOOK_PERSIST frames in a row leave the object (where the mask stayed behind, or slid onto
        something else, the object's look is gone; a pose or light change is followed, LOOK_RATE a frame).

        Outside its mask an object's look is the frame and its count 0, so the work is done on the mask's box
        (padded for the 3x3 opening) and the rest is the frame: the same result as over the whole frame."""
        sh, sw = small.shape[:2]
        now = cv2.GaussianBlur(small, (5, 5), 0).astype(np.float32)
        for oid, mask in masks.items():
            if oid not in self._look or self._look[oid].shape != now.shape:
                self._look[oid], self._stale[oid] = now.copy(), np.zeros((sh, sw), np.uint8)
                continue
            m = mask if mask.shape == (sh, sw) else cv2.resize(mask.astype(np.uint8), (sw, sh),
                                                              interpolation=cv2.INTER_NEAREST_EXACT) > 0
            look, stale = now.copy(), np.zeros((sh, sw), np.uint8)
            box = mask_box(m, 2)
            if box is not None:
                x0, y0, x1, y1 = box
                crop = (slice(y0, y1), slice(x0, x1))
                gone = self._check_look(oid, now, flow, m, look, stale, crop)
                if gone is not None:
                    full = gone if gone.shape == mask.shape else cv2.resize(
                        gone.astype(np.uint8), (mask.shape[1], mask.shape[0]),
                        interpolation=cv2.INTER_NEAREST_EXACT) > 0
                    masks[oid] = mask & ~full
                    self._soft[oid] = np.minimum(self._soft[oid], masks[oid].astype(np.float32))
            self._look[oid], self._stale[oid] = look, stale

    def _check_look(self, oid: int, now: np.ndarray, flow: np.ndarray, m: Mask, look: np.ndarray,
                    stale: np.ndarray, crop: tuple[slice, slice]) -> Mask | None:
        """Object ``oid``'s look and count carried to ``crop`` of ``look`` and ``stale`` (flow size), and
        followed there; the masked pixels that leave it (flow size, whole frame), or None."""
        ys, xs = crop
        gx, gy = np.meshgrid(np.arange(xs.start, xs.stop, dtype=np.float32),
                             np.arange(ys.start, ys.stop, dtype=np.float32))
        map_x, map_y = gx + flow[crop][..., 0], gy + flow[crop][..., 1]
        carried = cv2.remap(self._look[oid], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        count = cv2.remap(self._stale[oid], map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
        here, mm = now[crop], m[crop]
        differs = _channel_max(cv2.absdiff(carried, here)) > LOOK_DIFF
        count = np.where(mm & differs, np.minimum(count.astype(np.int16) + 1, 255), 0).astype(np.uint8)
        gone = (count >= LOOK_PERSIST).astype(np.uint8)
        gone = cv2.morphologyEx(gone, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        out = None
        if gone.any() and gone.sum() < LOOK_MAX_DROP * m.sum():
            out = np.zeros(m.shape, bool)
            out[crop] = gone
            mm = mm & ~gone
            count[gone] = 0
        cv2.accumulateWeighted(here, carried, LOOK_RATE, mask=(mm & ~differs).astype(np.uint8))  # follows it
        np.copyto(carried, here, where=~mm[..., None])  # outside the object: what is there now, for a part that joins it
        look[crop], stale[crop] = carried, count
        return out

    def _unconfirmed(self, backward: np.ndarray, image: np.ndarray) -> np.ndarray:
        """Pixels (flow size) just disoccluded: the forward flow does not confirm their backward flow, and
        what was where it points is not what they show (a part that moves fast but is tracked is not).

        Only around the objects (their box, padded by the motion): the forward flow costs as much as
        the backward one over the whole frame, and nowhere else is it needed."""
        assert self._prev is not None
        h, w = backward.shape[:2]
        out = np.zeros((h, w), bool)
        points = [np.argwhere(soft[::4, ::4] > 0.5) * 4 for soft in self._soft.values()]  # (y, x), full size
        points = np.concatenate(points) if points else np.zeros((0, 2), int)
        if not len(points):
            return out
        k = h / next(iter(self._soft.values())).shape[0]  # full size -> flow size
        pad = 16 + 2 * int(np.ceil(np.abs(backward).max()))
        (ty, tx), (by, bx) = points.min(axis=0), points.max(axis=0) + 4
        y0, y1 = max(0, int(ty * k) - pad), min(h, int(by * k) + pad)
        x0, x1 = max(0, int(tx * k) - pad), min(w, int(bx * k) + pad)
        if y1 - y0 < 16 or x1 - x0 < 16:
            return out
        b = np.ascontiguousarray(backward[y0:y1, x0:x1])
        now = np.ascontiguousarray(self._flows.gray(image)[y0:y1, x0:x1])
        before = np.ascontiguousarray(self._flows.gray(self._prev)[y0:y1, x0:x1])
        forward = self._flows.dis().calc(before, now, None)  # on the crop: the whole frame's flow, from the
        # cache, took 0.007 of J&F on schoolgirls (DIS smooths differently over a larger image)
        gx, gy = np.meshgrid(np.arange(x1 - x0, dtype=np.float32), np.arange(y1 - y0, dtype=np.float32))
        map_x, map_y = gx + b[..., 0], gy + b[..., 1]
        there = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR)
        error = squared_speed(b + there)
        unconfirmed = error > FB_RATIO * (squared_speed(b) + squared_speed(there)) + FB_SLACK
        was = cv2.remap(cv2.GaussianBlur(before, (3, 3), 0), map_x, map_y, cv2.INTER_LINEAR).astype(np.int16)
        changed = np.abs(cv2.GaussianBlur(now, (3, 3), 0).astype(np.int16) - was) > CHANGED
        out[y0:y1, x0:x1] = unconfirmed & changed
        return out

    def _apart(self, flow: np.ndarray, unconfirmed: np.ndarray,
               mask: Mask) -> tuple[Mask, Mask] | None:
        """Full-size masks of the pixels that do not move with the object, and of those of them that were
        just disoccluded; None for an object too small to have a flow of its own."""
        sh, sw = flow.shape[:2]
        m = cv2.resize(mask.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST_EXACT) > 0
        inner = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        sure = inner & ~unconfirmed
        if sure.sum() < 10:
            sure = m
            if sure.sum() < 10:
                return None
        own = np.median(flow[sure], axis=0)
        off = np.sqrt(squared_speed(flow, own)) > max(COHERENCE, 0.5 * float(np.hypot(*own)))
        # a thin rim along the outline is the flow's blur at a fast edge, not a disocclusion: only a
        # region of some width (what comes out from behind, or the background a moving object leaves) is
        uncovered = cv2.morphologyEx((off & unconfirmed).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        apart = np.stack([off.astype(np.uint8), uncovered])
        h, w = mask.shape
        if (sh, sw) != (h, w):
            apart = np.stack([cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST_EXACT) for a in apart])
        return apart[0] > 0, apart[1] > 0

    def _small(self, image: np.ndarray) -> np.ndarray:
        return to_working(image, self._scale)

    def _difference(self, small: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """How far each pixel (flow size) is from the background model, blurred; on ``box`` (x0, y0, x1, y1)
        only, computed with the blur's reach around it: the same values as over the whole frame."""
        assert self._bg is not None
        if box is None:
            return cv2.GaussianBlur(_channel_max(cv2.absdiff(small.astype(np.float32), self._bg)), (5, 5), 0)
        x0, y0, x1, y1 = box
        sh, sw = small.shape[:2]
        px0, py0, px1, py1 = max(0, x0 - 2), max(0, y0 - 2), min(sw, x1 + 2), min(sh, y1 + 2)
        region = (slice(py0, py1), slice(px0, px1))
        diff = _channel_max(cv2.absdiff(small[region].astype(np.float32), self._bg[region]))
        return cv2.GaussianBlur(diff, (5, 5), 0)[y0 - py0:y1 - py0, x0 - px0:x1 - px0]

    def _gate(self, small: np.ndarray, mask: Mask, apart: Mask | None = None) -> Mask:
        """Still camera: masked pixels that show the known background leave the object; pixels just
        outside it that are known not to be background, and that move with it, join it.  Worked out on the
        mask's box grown by the band, the opening and the difference's blur: the same as over the frame."""
        assert self._seen is not None
        h, w = mask.shape
        sh, sw = small.shape[:2]
        m = self._at(mask, small.shape)
        box = mask_box(m)
        if box is None:  # smaller than one pixel at the flow's size: nothing to gate
            return mask
        size = max(box[2] - box[0], box[3] - box[1])
        r = max(1, int(BG_BAND * size))
        x0, y0, x1, y1 = mask_box(m, r + 2)  # (the band, and the opening's reach beyond it)
        crop = (slice(y0, y1), slice(x0, x1))
        diff = self._difference(small, (x0, y0, x1, y1))
        known = self._seen[crop] >= BG_SEEN
        mc = m[crop]
        near = cv2.dilate(mc.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)) > 0
        # only what the model has evidence for changes (an opening of the whole mask would cut off
        # its thin parts, legs and straps, where nothing is known yet); specks of either are ignored
        speck = np.ones((3, 3), np.uint8)
        drop = cv2.morphologyEx((mc & known & (diff < BG_MATCH)).astype(np.uint8), cv2.MORPH_OPEN, speck) > 0
        join = cv2.morphologyEx((near & ~mc & known & (diff > BG_DIFF)).astype(np.uint8), cv2.MORPH_OPEN, speck) > 0
        if not drop.any() and not join.any():
            return mask
        part = ((mc & ~drop) | join).astype(np.uint8)
        n, labels = cv2.connectedComponents(part)  # the parts that keep most of the object
        if n <= 1:
            return mask
        counts = np.bincount(labels[mc].ravel(), minlength=n)
        counts[0] = 0
        keep = counts >= 0.1 * max(1, counts.max())
        gated = np.zeros((sh, sw), bool)
        gated[crop] = keep[labels]
        if (sh, sw) != (h, w):
            gated = cv2.resize(gated.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR) > 0
        if apart is not None:  # another object passing by is not background either: it must not join
            gated &= mask | ~apart
        return gated

    def _learn_background(self, small: np.ndarray, masks: Mapping[int, Mask], still: bool) -> None:
        """Follow the background where no object is (still camera only; a moving camera starts it over)."""
        sh, sw = small.shape[:2]
        frame = small.astype(np.float32)
        if not still or self._bg is None or self._seen is None or self._bg.shape != frame.shape:
            self._bg, self._seen = frame, np.zeros((sh, sw), np.uint16)
            if not still:
                return
        taken = np.zeros((sh, sw), np.uint8)
        for mask in masks.values():
            if mask.any():
                taken |= cv2.resize(mask.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST)
        free = cv2.dilate(taken, np.ones((7, 7), np.uint8)) == 0
        first = free & (self._seen == 0)
        np.copyto(self._bg, frame, where=first[..., None])
        follow = (free & ~first).astype(np.uint8)
        cv2.accumulateWeighted(frame, self._bg, BG_RATE, mask=follow)  # bg += BG_RATE (frame - bg) there
        cv2.add(self._seen, free.astype(np.uint16), dst=self._seen)
        np.minimum(self._seen, 1000, out=self._seen)

    def _refine(self, image: np.ndarray, mask: Mask, oid: int | None = None) -> Mask:
        """Narrow-band GrabCut around the warped outline: sure inside, sure outside, unsure in the band.
        Returns ``mask`` itself where the refinement is rejected (counted for object ``oid``)."""
        out = self._grabcut(image, mask)
        if oid is not None:
            self._backoff.record(oid, taken=out is not mask)
        return out

    def _grabcut(self, image: np.ndarray, mask: Mask) -> Mask:
        bx0, by0, bx1, by1 = mask_box(mask)  # (not None: the caller refines a mask with pixels)
        size = max(by1 - by0, bx1 - bx0)
        band = self.band or int(np.clip(size * 0.08, 3, 24))
        x0, y0, x1, y1 = mask_box(mask, 3 * band)
        # GrabCut runs on the region scaled to at most REFINE_SIZE px: cost stays flat with object size
        k = min(1.0, REFINE_SIZE / max(y1 - y0, x1 - x0))
        sw, sh = max(8, round((x1 - x0) * k)), max(8, round((y1 - y0) * k))
        sub = cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST)
        roi = cv2.resize(image[y0:y1, x0:x1], (sw, sh), interpolation=cv2.INTER_AREA)
        b = max(1, round(band * k))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * b + 1, 2 * b + 1))
        inner = cv2.erode(sub, kernel).astype(bool)
        outer = cv2.dilate(sub, kernel).astype(bool)
        if not inner.any() or outer.all():
            return mask
        trimap = np.full(sub.shape, cv2.GC_BGD, np.uint8)
        trimap[outer] = cv2.GC_PR_BGD
        trimap[sub.astype(bool)] = cv2.GC_PR_FGD
        trimap[inner] = cv2.GC_FGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means start: same input, same mask
        try:
            cv2.grabCut(roi, trimap, None, bgd, fgd, REFINE_ITERATIONS, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return mask
        refined_small = ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)) & outer
        refined = cv2.resize(refined_small.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0
        # keep the refinement only where it is plausible: no more than the band away from the warp
        out = np.zeros_like(mask)
        out[y0:y1, x0:x1] = refined
        overlap = np.logical_and(out, mask).sum() / max(1, np.logical_or(out, mask).sum())
        growth = out.sum() / max(1, mask.sum())
        if overlap < MIN_AGREEMENT or not 1 / MAX_GROWTH <= growth <= MAX_GROWTH:
            return mask  # the colour models disagree with the motion: trust the flow (no runaway growth)
        return out


def _found_again(before: np.ndarray, mask: Mask, now: np.ndarray, carried: Mask,
                 allowed: Mask | None) -> Mask | None:
    """The object ``mask`` of the last frame in the new one (their colour bins ``before`` and ``now``, see
    _colour_bins; all at one size), where a region there looks more like it than ``carried``, the flow's
    answer, does (FIND_BETTER); None where none does.  A region's look: the summed likelihood of its pixels'
    colours being the object's (a histogram of the object against the rest of the last frame), scaled down
    for a region larger than the object."""
    area = int(mask.sum())
    if area == 0 or mask.all():
        return None
    inside = np.bincount(before[mask], minlength=FIND_BINS ** 3).astype(np.float32)
    outside = np.bincount(before[~mask], minlength=FIND_BINS ** 3).astype(np.float32)
    outside *= area / max(1, mask.size - area)  # as many as the object's: a colour is its as often as not at 0.5
    likely = inside / np.maximum(inside + outside, 1e-6)
    p = cv2.GaussianBlur(likely[now], (5, 5), 0)
    candidate = p > FIND_LIKELY
    if allowed is not None:
        candidate &= allowed
    candidate = cv2.morphologyEx(candidate.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidate, connectivity=8)
    if n <= 1:
        return None
    sizes = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    scores = np.bincount(labels.ravel(), weights=p.ravel(), minlength=n) * np.minimum(1.0, area / sizes)
    fits = (sizes >= FIND_AREA[0] * area) & (sizes <= FIND_AREA[1] * area)
    fits[0] = False
    if not fits.any():
        return None
    best = int(np.argmax(np.where(fits, scores, -1.0)))
    kept = float(p[carried].sum()) * min(1.0, area / max(1, int(carried.sum())))
    return labels == best if scores[best] > FIND_BETTER * kept else None


def _colour_bins(image: np.ndarray) -> np.ndarray:
    """Each pixel's bin in a FIND_BINS^3 RGB histogram."""
    q = (image // (256 // FIND_BINS)).astype(np.intp)
    return (q[..., 0] * FIND_BINS + q[..., 1]) * FIND_BINS + q[..., 2]


def resolve_overlaps(masks: dict[int, Mask]) -> None:
    """A pixel belongs to one object: where masks overlap, the newer object (higher id) wins."""
    taken = None
    for oid in sorted(masks, reverse=True):
        if taken is None:
            taken = masks[oid].copy()
            continue
        masks[oid] = masks[oid] & ~taken
        taken |= masks[oid]


def create(variant: str | None, options: BackendOptions) -> FlowPropagator:
    return FlowPropagator(refine=bool(options.extra.get("refine", True)), flows=options.flows)
