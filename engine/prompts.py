"""Prompts (clicks and boxes, object removal, effect changes): submitted from any thread, applied by the tracker.

:class:`PromptQueue` is bounded (``limit`` prompts queued or waiting for their frame; drop policy:
refuse new ones with a :class:`PromptError`)."""
from __future__ import annotations

import collections
import concurrent.futures
import math
import numbers
import threading
from dataclasses import dataclass, field

from .effects import Effect
from .stages import Box, Click, Frame


class PromptError(ValueError):
    """A prompt cannot be applied (outside the frame, unknown object, ...)."""


def check_inside(x: float, y: float, width: int, height: int) -> None:
    """Raise :class:`PromptError` unless the click lies inside a ``width`` x ``height`` frame."""
    if not (0 <= x < width and 0 <= y < height):
        raise PromptError(f"click ({x:g},{y:g}) is outside the {width}x{height} frame; click inside the video")


def check_box(box: Box) -> Box:
    """``box`` as four floats, or :class:`PromptError` unless they are finite with x0 < x1 and y0 < y1."""
    values = tuple(box)
    if len(values) != 4 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in values):
        raise PromptError("the box is not 4 finite numbers; give x0, y0, x1, y1 in frame pixels")
    x0, y0, x1, y1 = (float(v) for v in values)
    if not (x0 < x1 and y0 < y1):
        raise PromptError(f"box ({x0:g},{y0:g},{x1:g},{y1:g}) is empty or reversed; give x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def clip_box(box: Box, width: int, height: int) -> Box:
    """The box clipped to a ``width`` x ``height`` frame (it spans 0..width, 0..height); a box that keeps
    less than one pixel of width or height inside the frame is refused with a :class:`PromptError`."""
    x0, y0, x1, y1 = check_box(box)
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise PromptError(f"box ({x0:g},{y0:g},{x1:g},{y1:g}) lies outside the {width}x{height} frame; "
                          f"give a box that overlaps the video")
    return clipped


@dataclass(frozen=True)
class FramePrompt:
    """An object's prompts on one frame: its clicks (positive and negative) and its box."""

    clicks: tuple[Click, ...] = ()
    box: Box | None = None


@dataclass(frozen=True)
class ObjectState:
    """An object and how it was prompted on ``prompt_frame`` (its clicks and box); replaced on change."""

    id: int
    effect: Effect
    clicks: tuple[Click, ...] = ()
    prompt_frame: int = -1
    box: Box | None = None

    def describe(self) -> dict:
        return {"id": self.id, "effect": self.effect.value, "clicks": len(self.clicks),
                "box": None if self.box is None else [round(v, 2) for v in self.box],
                "prompt_frame": self.prompt_frame}


@dataclass
class Action:
    """One prompt; its result comes back through ``future``."""

    kind: str  # prompt | remove | clear | effect
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    clicks: tuple[Click, ...] = ()  # a prompt's clicks, added to its object's on that frame
    box: Box | None = None  # a prompt's box, replacing its object's
    object_id: int | None = None
    frame_index: int | None = None
    pts: int | None = None
    effect: Effect | None = None
    segmentation: concurrent.futures.Future | None = None  # the running segmentation (async prompts)
    on_frame: Frame | None = None
    prompt: FramePrompt | None = None  # what is segmented on ``on_frame`` (async prompts)


class PromptQueue:
    """Prompts submitted (any thread) and those waiting for their frame (the tracker's thread)."""

    policy = "refuse-new"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._new: collections.deque[Action] = collections.deque()
        self.pending: list[Action] = []  # waiting for a frame that has not arrived (or a segmentation)
        self._lock = threading.Lock()

    def submit(self, action: Action) -> concurrent.futures.Future:
        with self._lock:
            if len(self._new) + len(self.pending) >= self.limit:
                raise PromptError(f"{self.limit} prompts are already waiting; try again in a moment")
            self._new.append(action)
        return action.future

    def take(self) -> list[Action]:
        """The pending prompts, then the new ones, in order; pending is emptied (the caller re-queues)."""
        with self._lock:
            new = list(self._new)
            self._new.clear()
        waiting, self.pending = self.pending + new, []
        return waiting

    def busy_frames(self) -> list[int]:
        """Frames a running segmentation still needs (kept held until its mask is placed)."""
        return [a.on_frame.index for a in self.pending if a.on_frame is not None]

    def segmenting(self) -> bool:
        return any(a.segmentation is not None for a in self.pending)
