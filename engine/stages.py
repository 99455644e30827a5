"""The three stages of the engine, as small interfaces.

Every backend (classical or neural) implements one of these.  Images are numpy
``HxWx3 uint8`` RGB arrays, masks are ``HxW bool`` arrays at the frame's size.
Backends hold no I/O: the session hands them frames and takes masks/images back.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np

from .fill import texture_fill

Mask = np.ndarray  # HxW bool
Image = np.ndarray  # HxWx3 uint8, RGB
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels (x0 < x1, y0 < y1)


@dataclass(frozen=True)
class Click:
    """A point prompt in frame pixel coordinates (x to the right, y down)."""

    x: float
    y: float
    positive: bool = True


@dataclass
class Frame:
    """One decoded video frame, in input order."""

    index: int  # 0-based position in the stream (the session's frame clock)
    image: Image
    pts: int | None = None
    time_base: Fraction | None = None
    wallclock: float | None = None  # time.monotonic() when it was decoded (live sources)
    #: the unbroken run of the source it belongs to: a live source counts one up each time it reconnects (or its
    #: publisher leaves).  Frames of different runs need not continue one another (the objects may be anywhere):
    #: motion does not lead across
    epoch: int = 0

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def seconds(self) -> float | None:
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)


class SelectionError(ValueError):
    """A prompt selected nothing (or something unusable)."""


class Segmenter(abc.ABC):
    """Frame + prompts (clicks and/or a box) -> mask of one object."""

    name: str = "segmenter"
    #: where its work runs ("cpu", "cuda", "cuda:1"): the stream runtime gives its worker a context there
    device: str = "cpu"

    @abc.abstractmethod
    def segment(self, frame: Frame, clicks: Sequence[Click], *, neighbours: Sequence[Frame] = (),
                box: Box | None = None) -> Mask:
        """Return the mask of the object the clicks and ``box`` select on ``frame``.

        ``box`` (may be None) bounds the object; the clicks then refine it (positive: part of it,
        negative: not).  ``neighbours`` are nearby frames (may be empty) that a backend may use for
        motion cues.  Raises :class:`SelectionError` when the prompts select nothing.
        """

    def forget(self, before_index: int) -> None:  # pragma: no cover - optional
        """Drop any per-frame cache for frames older than ``before_index``."""


class Propagator(abc.ABC):
    """Per-frame mask propagation of every tracked object (a sam2-style step).

    The session calls :meth:`seed` when prompts change the objects on a frame
    (that frame may be older than the last stepped one: the session then steps
    the frames after it again), and :meth:`step` once per frame in order.
    Memory is bounded by ``memory_cap`` whatever the stream length.
    """

    name: str = "propagator"
    #: where its work runs ("cpu", "cuda", "cuda:1"): the stream runtime gives its worker a context there
    device: str = "cpu"

    @abc.abstractmethod
    def seed(self, frame: Frame, masks: Mapping[int, Mask]) -> None:
        """Make ``frame`` a reference frame on which the objects are exactly ``masks``.

        Objects missing from ``masks`` are no longer tracked.  The next :meth:`step`
        continues from this frame.
        """

    @abc.abstractmethod
    def step(self, frame: Frame) -> dict[int, Mask]:
        """Propagate every tracked object to ``frame`` (the frame after the last one seen).  A frame of
        another ``epoch`` than the last one seen follows a break in the source: the objects are found
        again on it, not followed there by their motion (the classical propagators look for them by
        colour; AOT matches every frame against its long-term memory anyway)."""

    reduced_step: bool = False  # whether step_reduced() is cheaper than step() (a backend that overrides it)

    def step_reduced(self, frame: Frame) -> dict[int, Mask]:
        """A cheaper :meth:`step` (same contract), used while a live stream is behind (see
        engine/degrade.py) and to catch up through frames already sent after a late click: e.g. flow at a
        lower working resolution.  The default is :meth:`step`."""
        return self.step(frame)

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every object and all memory."""

    def prepare(self, frame: Frame, before: Frame) -> None:
        """Work on ``frame`` that needs no masks, done ahead of :meth:`step`: e.g. its optical flow back to
        ``before``, the frame prepared before it (of the same size).  The pipeline calls it in frame order,
        on the decoding worker when pipelined, and skips it for a live stream that is behind.  It must
        change no result, only when the work is done.  Default: nothing."""

    @property
    def objects(self) -> list[int]:  # pragma: no cover - informational
        return []

    def memory_frames(self) -> int:
        """Number of frames currently held in memory (for metrics and tests)."""
        return 0

    def fork(self) -> "Propagator | None":
        """A new propagator with these settings and no objects or memory (sharing only read-only
        resources such as weights), for a one-off pass: the session propagates a clicked object
        backwards through the frames it holds from before the click, so they become sources for its
        fill.  None where that is not offered (those frames are then no sources)."""
        return None


@dataclass(frozen=True)
class WindowEntry:
    """A frame and its hole as the inpainter sees it; replaced (never changed) when the hole changes."""

    frame: Frame
    hole: Mask  # union of the masks of objects whose effect is ``remove`` (not dilated)
    revision: int = 0  # the replaced entry's + 1: backends key their caches on (frame index, revision)


@dataclass
class InpaintRequest:
    """What an inpainter gets to complete frame ``target``.

    ``entries`` maps frame index -> entry for every frame the session still holds
    around the target: past neighbours, the target, and up to ``future`` frames after it.
    ``references`` are older frames kept at a stride (bounded), oldest first.
    ``completed`` maps frame index -> already completed output image for recent past frames.
    """

    target: int
    entries: Mapping[int, WindowEntry]
    references: Sequence[WindowEntry] = ()
    completed: Mapping[int, Image] = field(default_factory=dict)


class Inpainter(abc.ABC):
    """Fills the hole of a frame from its window of neighbours and past references."""

    name: str = "inpainter"
    #: where its work runs ("cpu", "cuda", "cuda:1"): the stream runtime gives its worker a context there
    device: str = "cpu"
    #: frames after the target the inpainter wants to see (its share of the fixed delay)
    future: int = 0
    #: frames before the target it wants to see
    past: int = 0
    #: dilation (pixels, 3x3-cross iterations) applied to the hole before filling
    dilation: int = 4

    @abc.abstractmethod
    def inpaint(self, request: InpaintRequest) -> Image:
        """Return the completed image of ``request.target``; only the dilated hole may change."""

    def observe(self, entry: WindowEntry, masks: Mapping[int, Mask], *, hurried: bool = False) -> None:
        """See each frame as it leaves (``entry``: the frame and its hole, maybe empty) with every tracked
        object's mask (all effects), before it is completed: a backend may learn from it (a still
        camera's background).  ``hurried``: a live stream behind skipped the frame's propagation; what
        that saved (its optical flow) should not be spent here.  Default: nothing."""

    def prepare(self, frame: Frame, before: Frame) -> None:
        """As :meth:`Propagator.prepare`: mask-free work on each new frame, ahead of its completion (e.g.
        the flow from ``before`` to it).  Default: nothing."""

    def cheap(self, request: InpaintRequest) -> Image:
        """A fast fallback used when the session is behind its deadline (counted as degraded)."""
        entry = request.entries[request.target]
        return texture_fill(entry.frame.image, dilate_hole(entry.hole, self.dilation))

    def reset(self) -> None:
        """Forget any cached state."""


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def mask_box(mask: Mask, margin: int = 0) -> tuple[int, int, int, int] | None:
    """The bounding box (x0, y0, x1, y1; ends exclusive) of a mask's pixels, grown by ``margin`` px on each
    side within the mask's frame; None when it has none.  OpenCV's: numpy's ``nonzero`` over a whole frame
    costs about 30 times more."""
    import cv2

    m = mask if mask.dtype in (np.bool_, np.uint8) else mask != 0
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(m).view(np.uint8))
    if w == 0:
        return None
    height, width = mask.shape[:2]
    return max(0, x - margin), max(0, y - margin), min(width, x + w + margin), min(height, y + h + margin)


def mask_area(mask: Mask) -> int:
    """The number of a mask's pixels."""
    import cv2

    m = mask if mask.dtype in (np.bool_, np.uint8) else mask != 0
    return int(cv2.countNonZero(np.ascontiguousarray(m).view(np.uint8)))


def neck_cut(mask: Mask, x: float, y: float, keep: Sequence[tuple[float, float]] = (),
             levels: int = 24) -> Mask | None:
    """Where ``mask`` is kept when the part holding (x, y) is cut off at its narrowest neck to the rest (the
    highest level of the distance to the mask's edge that parts them): the pixels nearer the rest than that
    part.  None when nothing parts them, (x, y) lies outside the mask, or the part holds a ``keep`` point."""
    import cv2

    h, w = mask.shape
    px, py = min(w - 1, int(x)), min(h - 1, int(y))
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    if dist[py, px] <= 0:
        return None
    for level in np.linspace(float(dist.max()), 0, levels, endpoint=False)[1:]:
        _, labels = cv2.connectedComponents((dist > level).astype(np.uint8))
        own = labels[py, px]
        rest = (labels > 0) & (labels != own)
        if not own or not rest.any():
            continue
        if any(labels[min(h - 1, int(ky)), min(w - 1, int(kx))] == own for kx, ky in keep):
            return None
        to_own = cv2.distanceTransform((labels != own).astype(np.uint8), cv2.DIST_L2, 3)
        to_rest = cv2.distanceTransform((~rest).astype(np.uint8), cv2.DIST_L2, 3)
        return to_rest <= to_own
    return None


def dilate_hole(hole: Mask, iterations: int) -> Mask:
    """Dilate a hole as the reference video inpainters do (3x3 cross, ``iterations`` times)."""
    import cv2

    if iterations <= 0 or not hole.any():
        return hole.astype(bool, copy=False)
    return cv2.dilate(hole.astype(np.uint8), _CROSS, iterations=iterations).astype(bool)
