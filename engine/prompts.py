"""Prompts (clicks, object removal, effect changes): submitted from any thread, applied by the tracker.

:class:`PromptQueue` is bounded (``limit`` prompts queued or waiting for their frame; drop policy:
refuse new ones with a :class:`PromptError`)."""
from __future__ import annotations

import collections
import concurrent.futures
import threading
from dataclasses import dataclass, field

from .effects import Effect
from .stages import Click, Frame


class PromptError(ValueError):
    """A prompt cannot be applied (outside the frame, unknown object, ...)."""


def check_inside(x: float, y: float, width: int, height: int) -> None:
    """Raise :class:`PromptError` unless the click lies inside a ``width`` x ``height`` frame."""
    if not (0 <= x < width and 0 <= y < height):
        raise PromptError(f"click ({x:g},{y:g}) is outside the {width}x{height} frame; click inside the video")


@dataclass(frozen=True)
class ObjectState:
    """An object and how it was prompted; replaced on change."""

    id: int
    effect: Effect
    clicks: tuple[Click, ...] = ()
    prompt_frame: int = -1

    def describe(self) -> dict:
        return {"id": self.id, "effect": self.effect.value, "clicks": len(self.clicks),
                "prompt_frame": self.prompt_frame}


@dataclass
class Action:
    """One prompt; its result comes back through ``future``."""

    kind: str  # click | remove | clear | effect
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    click: Click | None = None
    object_id: int | None = None
    frame_index: int | None = None
    pts: int | None = None
    effect: Effect | None = None
    segmentation: concurrent.futures.Future | None = None  # the running segmentation (async prompts)
    on_frame: Frame | None = None
    clicks: list[Click] | None = None


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
