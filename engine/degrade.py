"""What a live stream gives up, and in which order, when its worker falls behind.

The **ladder** (:class:`Ladder`) turns the backlog (frames waiting in the live queue) into a
:class:`Level`, degrading one thing at a time:

===================  ==========================================================================
level                what the step does
===================  ==========================================================================
FULL                 propagate every object, inpaint with the full inpainter
CHEAP_FILL           the outgoing frame gets the inpainter's cheap fill (propagation unchanged)
REDUCED_TRACKING     cheap fill, and the propagator's cheaper step (``Propagator.step_reduced``)
STALE_MASKS          cheap fill, no propagation: each object's last *tracked* mask, moved by its
                     measured motion and grown by that motion's uncertainty (:class:`StaleMasks`)
===================  ==========================================================================

Thresholds (:class:`LadderConfig`, backlog in frames): a level is entered as soon as the backlog
reaches its ``enter`` value (levels may be skipped on the way up); it is left, one level per step,
once the backlog is below its ``leave`` value (hysteresis: no flapping around one threshold).  At
most ``max_stale_run`` stale frames follow each other: the next one is tracked (reduced), so a stale
mask is never more than that many frames away from a tracked one.

A stale mask for a frame ``k`` frames after the object's last tracked frame is that tracked mask
shifted by ``k`` x its smoothed velocity (centroid motion between tracked frames, px/frame) and
dilated by ``k`` x its uncertainty (the smoothed error of that velocity plus the bounding box's
deformation rate) plus a margin.  It never compounds (each stale mask starts from the tracked
one), and its area never exceeds ``area_cap`` x the tracked area: beyond that the ring around the
predicted position stops growing (the pixels nearest to it are kept).  Trade-off: an object whose
motion departs from the prediction by more than that ring's width (about ``0.5 * area / perimeter``
px for a cap of 1.5) starts to leave the mask at its leading edge; the stale run bound keeps that
departure short.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import cv2
import numpy as np

from .stages import Mask, mask_box


class Level(enum.IntEnum):
    """How degraded one step is (higher: cheaper)."""

    FULL = 0
    CHEAP_FILL = 1
    REDUCED_TRACKING = 2
    STALE_MASKS = 3

    @property
    def key(self) -> str:
        """The name counters use (``cheap_fill``, ...)."""
        return self.name.lower()


DEGRADED_LEVELS = (Level.CHEAP_FILL, Level.REDUCED_TRACKING, Level.STALE_MASKS)


@dataclass(frozen=True)
class Threshold:
    enter: int  # backlog (frames) at which the level is entered
    leave: int  # backlog below which it is left (one level per step)


@dataclass(frozen=True)
class LadderConfig:
    cheap_fill: Threshold = Threshold(enter=2, leave=1)
    reduced_tracking: Threshold = Threshold(enter=4, leave=2)
    stale_masks: Threshold = Threshold(enter=8, leave=4)
    max_stale_run: int = 3  # stale frames in a row at most; the next one is tracked (reduced)

    def threshold(self, level: Level) -> Threshold:
        return {Level.CHEAP_FILL: self.cheap_fill, Level.REDUCED_TRACKING: self.reduced_tracking,
                Level.STALE_MASKS: self.stale_masks}[level]


class Ladder:
    """Decides each step's :class:`Level` from the backlog (one per stream, on its worker thread)."""

    def __init__(self, config: LadderConfig | None = None) -> None:
        self.config = config or LadderConfig()
        self.level = Level.FULL  # the level held (hysteresis state)
        self._stale_run = 0

    def decide(self, backlog: int) -> Level:
        """The level of the next step, ``backlog`` frames waiting behind it."""
        self.level = self._held_level(backlog)
        if self.level is Level.STALE_MASKS and self._stale_run >= self.config.max_stale_run:
            self._stale_run = 0
            return Level.REDUCED_TRACKING  # a tracked frame now and then: stale masks start from it
        self._stale_run = self._stale_run + 1 if self.level is Level.STALE_MASKS else 0
        return self.level

    def _held_level(self, backlog: int) -> Level:
        entered = max((lv for lv in DEGRADED_LEVELS if backlog >= self.config.threshold(lv).enter),
                      default=Level.FULL)
        if entered > self.level:
            return entered
        if self.level > Level.FULL and backlog < self.config.threshold(self.level).leave:
            return Level(self.level - 1)
        return self.level


@dataclass
class DegradationCounts:
    """Output frames per degradation: given the cheap fill, tracked reduced, given stale masks."""

    cheap_fill: int = 0
    reduced_tracking: int = 0
    stale_masks: int = 0

    def count(self, level: Level) -> None:
        if level is not Level.FULL:
            setattr(self, level.key, getattr(self, level.key) + 1)

    def as_dict(self) -> dict[str, int]:
        return {"cheap_fill": self.cheap_fill, "reduced_tracking": self.reduced_tracking,
                "stale_masks": self.stale_masks}


# ------------------------------------------------------------------------------ stale masks
SMOOTHING = 0.5  # weight of a new velocity measurement
MIN_SPREAD = 0.5  # px/frame: the least uncertainty of a measured motion
MARGIN = 2  # px added to every stale mask's growth
PRIOR_SPREAD = 0.02  # x the frame's larger side, px/frame: the uncertainty before any motion was measured
AREA_CAP = 1.5  # a stale mask's area never exceeds this x the tracked area


@dataclass
class Track:
    """One object's last tracked mask and its measured motion."""

    mask: Mask
    index: int  # the frame it was tracked on
    area: int
    centre: np.ndarray  # (x, y)
    box: np.ndarray  # (x0, y0, x1, y1)
    velocity: np.ndarray | None = None  # px/frame (x, y), smoothed; None before a second tracked frame
    spread: float = 0.0  # px/frame, the velocity's uncertainty (smoothed), deformation included


@dataclass(frozen=True)
class Geometry:
    area: int
    centre: np.ndarray
    box: np.ndarray


def geometry(mask: Mask) -> Geometry | None:
    """Area, centroid and bounding box of a mask; None when it is empty."""
    box = mask_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    m = cv2.moments(np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8), binaryImage=True)
    return Geometry(int(round(m["m00"])), np.array([x0 + m["m10"] / m["m00"], y0 + m["m01"] / m["m00"]]),
                    np.array([x0, y0, x1 - 1, y1 - 1], float))


@dataclass
class StaleMasks:
    """Per object: the last tracked mask and its motion; predicts masks for frames not tracked."""

    area_cap: float = AREA_CAP
    margin: int = MARGIN
    tracks: dict[int, Track] = field(default_factory=dict)
    #: the largest stale mask made so far over its tracked mask's area (0 before the first): every frame's,
    #: for the live figure "no mask over 2x the tracked area" (a stale mask later re-tracked counts too)
    largest_growth: float = 0.0

    def tracked(self, index: int, masks: dict[int, Mask]) -> None:
        """Masks the propagator produced on frame ``index``; objects not in them are forgotten."""
        self.tracks = {oid: self._update(self.tracks.get(oid), index, m) for oid, m in masks.items()
                       if geometry(m) is not None}

    def forget(self) -> None:
        """Every object's track: the next frame does not continue the last tracked one (a break in the source)."""
        self.tracks = {}

    def covers(self, objects) -> bool:
        """Whether every object in ``objects`` has a tracked mask to predict from."""
        return all(oid in self.tracks for oid in objects)

    def predict(self, index: int, objects) -> dict[int, Mask]:
        """A stale mask on frame ``index`` for each object in ``objects`` that has a track."""
        return {oid: self._predict(self.tracks[oid], index) for oid in objects if oid in self.tracks}

    @staticmethod
    def _update(previous: Track | None, index: int, mask: Mask) -> Track:
        g = geometry(mask)
        assert g is not None
        track = Track(mask, index, g.area, g.centre, g.box)
        if previous is None or index <= previous.index:  # new, or re-tracked from an earlier frame
            return track
        gap = index - previous.index
        measured = (g.centre - previous.centre) / gap
        box_rate = (g.box - previous.box) / gap
        deformation = float(np.max(np.abs(box_rate - np.tile(measured, 2))))
        if previous.velocity is None:
            track.velocity = measured
            track.spread = max(MIN_SPREAD, deformation + 0.25 * float(np.hypot(*measured)))
        else:
            error = float(np.hypot(*(measured - previous.velocity)))
            track.velocity = previous.velocity + SMOOTHING * (measured - previous.velocity)
            track.spread = max(MIN_SPREAD, (1 - SMOOTHING) * previous.spread + SMOOTHING * (error + deformation))
        return track

    def _predict(self, track: Track, index: int) -> Mask:
        k = max(1, index - track.index)
        h, w = track.mask.shape
        if track.velocity is None:
            shift, spread = np.zeros(2), PRIOR_SPREAD * max(w, h)
        else:
            shift, spread = track.velocity * k, track.spread
        moved = shifted(track.mask, int(round(shift[0])), int(round(shift[1])))
        out = grown(moved, spread * k + self.margin, int(self.area_cap * track.area))
        self.largest_growth = max(self.largest_growth, int(out.sum()) / max(1, track.area))
        return out


def shifted(mask: Mask, dx: int, dy: int) -> Mask:
    """``mask`` moved by (dx, dy) px; what leaves the frame is lost."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
        mask[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
    return out


def grown(mask: Mask, radius: float, cap: int) -> Mask:
    """``mask`` dilated by ``radius`` px (Euclidean), keeping only the nearest pixels when that would
    exceed ``cap`` pixels in all."""
    if not mask.any() or radius <= 0:
        return mask
    budget = cap - int(mask.sum())
    if budget <= 0:
        return mask
    # the work is confined to the mask's box grown by the radius (the distance transform is the cost)
    x0, y0, x1, y1 = mask_box(mask, int(np.ceil(radius)) + 1)  # (not None: the mask has pixels)
    crop = mask[y0:y1, x0:x1]
    dist = cv2.distanceTransform((~crop).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ring = (dist > 0) & (dist <= radius)
    if int(ring.sum()) > budget:
        values = np.sort(dist[ring])
        ring &= dist < values[budget]  # the nearest ``budget`` pixels at most (ties at the edge left out)
    out = mask.copy()
    out[y0:y1, x0:x1] |= ring
    return out
