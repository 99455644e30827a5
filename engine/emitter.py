"""The second phase of a frame: complete it (inpaint), composite the effects, let it leave.

The tracker (engine/pipeline.py) hands over an :class:`EmitJob`: an immutable snapshot of the held
frames around the one to emit, taken right after the tracker stepped the frame D later (and applied
the prompts due then), which is exactly what that frame sees when the two phases run one after the
other.  So the emitter may run on its own thread, behind the tracker, with the same output.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

from .degrade import DegradationCounts, Level
from .effects import Effect, apply_effect
from .stages import Frame, Image, InpaintRequest, Inpainter, Mask, WindowEntry
from .timing import StageTimes
from .window import Held, Reference

log = logging.getLogger("unseen.pipeline")


@dataclass
class OutputFrame:
    frame: Frame
    image: Image
    masks: Mapping[int, Mask]
    degraded: bool = False  # given the cheap fill
    tracking: Level = Level.FULL  # FULL, REDUCED_TRACKING or STALE_MASKS: how its masks were made


@dataclass(frozen=True)
class EmitJob:
    """Everything the emitter needs for frame ``index``; never changes after it is made."""

    index: int
    held: Mapping[int, Held]  # the held frames index - past .. index + delay
    references: tuple[Reference, ...]
    effects: Mapping[int, Effect]  # every object and its effect
    cheap: bool  # the live stream is behind: the cheap fill


class Emitter:
    """Completes the frames in order; owns the inpainter and the completed images it reuses (bounded:
    ``inpainter.past`` frames).  One thread at a time."""

    def __init__(self, inpainter: Inpainter, times: StageTimes) -> None:
        self.inpainter = inpainter
        self.times = times
        self.frames_out = 0
        self.degraded = 0
        self.degradation = DegradationCounts()  # output frames per degradation level
        # index -> (completed image, the window entry it was completed for): an output whose hole changed
        # since (an object was added after it left) still shows that object and is no source for fills
        self._completed: dict[int, tuple[Image, WindowEntry]] = {}
        #: masks of the frame that left last (what viewers see now); replaced, never mutated
        self.visible_masks: Mapping[int, Mask] = {}

    @property
    def completed_frames(self) -> int:
        """Completed images kept for the next frames' fills (at most ``inpainter.past``)."""
        return len(self._completed)

    def emit(self, job: EmitJob) -> OutputFrame:
        held = job.held[job.index]
        image, degraded = held.frame.image, False
        self.inpainter.observe(held.window, held.masks, hurried=held.tracking is Level.STALE_MASKS)
        if held.window.hole.any():
            image, degraded = self._fill(job, held)
        self._completed[job.index] = (image, held.window)
        for index in [i for i in self._completed if i <= job.index - self.inpainter.past]:
            del self._completed[index]
        for oid, mask in held.masks.items():
            effect = job.effects.get(oid)
            if effect is not None and effect is not Effect.REMOVE:
                image = apply_effect(image, mask, effect, object_id=oid)
        self.frames_out += 1
        self.visible_masks = dict(held.masks)
        for level in (Level.CHEAP_FILL,) * degraded + (held.tracking,):
            self.degradation.count(level)
        return OutputFrame(held.frame, image, dict(held.masks), degraded, held.tracking)

    def _fill(self, job: EmitJob, held: Held) -> tuple[Image, bool]:
        index, past = job.index, self.inpainter.past
        # a frame from before an object was clicked (or one a catch-up strode over) has no mask of it:
        # it shows that object as if it were background, so it is no source for this fill
        removed = {oid for oid, m in held.masks.items() if job.effects.get(oid) is Effect.REMOVE and m.any()}
        request = InpaintRequest(
            target=index,
            entries={i: h.window for i, h in job.held.items()
                     if i >= index - past and (i == index or removed <= h.masks.keys())},
            references=[cell.get() for cell, tracked in job.references if removed <= tracked],
            completed={i: img for i, (img, entry) in self._completed.items()
                       if i >= index - past and i in job.held and job.held[i].window is entry},
        )
        t0 = time.perf_counter()
        cheap = job.cheap
        image = held.frame.image
        if not cheap:
            try:
                image = self.inpainter.inpaint(request)
            except Exception:  # noqa: BLE001 - one frame's failure must not stop the stream
                log.exception("inpainter failed on frame %d; using the cheap fill", index)
                cheap = True
        if cheap:
            image = self.inpainter.cheap(request)
            self.degraded += 1
        self.times.add("inpaint", time.perf_counter() - t0)
        return image, cheap
