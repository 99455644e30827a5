"""The engine's core: one stream's tracker, and the per-frame step shared by every runner.

A frame goes through two phases.  :meth:`Pipeline.track` takes the next input frame (propagate
every object, record what its hole is made of, apply the prompts due) and returns an :class:`EmitJob` for the frame
that leaves the fixed delay line now: an immutable snapshot of the frames around it.
:meth:`Pipeline.emit` completes that frame (inpaint, effects; engine/emitter.py).  The runtime
(engine/runtime.py) may run the two on different threads; :meth:`Pipeline.step` runs them one after
the other (exactly one output per input once the line is full; :meth:`Pipeline.flush` empties it at
the end of a stream).  Prompts (clicks and boxes, object removal, effect changes) may be submitted from any
thread; they are applied on the tracker's thread at the next frame, on the frame the user saw when
that frame is still held, and their result comes back through a :class:`concurrent.futures.Future`.

Parts: engine/prompts.py (the prompt queue, objects), engine/window.py (the frame store, holes),
engine/emitter.py (the second phase), engine/timing.py (stage times).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

from .degrade import Level, StaleMasks
from .effects import Effect
from .emitter import EmitJob, Emitter, OutputFrame
from .holes import BELOW_REACH, EDGE_BAND
from .prompts import Action, FramePrompt, ObjectState, PromptError, PromptQueue, check_box, check_inside, clip_box
from .stages import Box, Click, Frame, Inpainter, Mask, Propagator, Segmenter, SelectionError, mask_area, neck_cut
from .timing import RECENT_STAGE_SAMPLES, StageSample, StageTimes
from .window import FrameStore, HoleBuilder

__all__ = ["EmitJob", "OutputFrame", "Pipeline", "PipelineConfig", "PromptError", "StageSample", "StageTimes",
           "FramePrompt", "ObjectState", "check_box", "check_inside", "clip_box", "RECENT_STAGE_SAMPLES"]

log = logging.getLogger("unseen.pipeline")
NEIGHBOUR_OFFSETS = (12, -12, 6, -6, 3, -3)  # frames around a prompt's frame given to the segmenter (motion cues)

TOUCH = 0.02  # x the frame's long side: a positive correction's selection this near the tracked mask adds to it
CUT_MAX = 0.5  # x the tracked mask: a negative correction's selection holding more of it took the object along
# with the clicked region; the mask is cut at its narrowest neck to the click instead
MAX_CATCHUP_STRIDE = 2  # frames skipped at most when re-propagating through frames already sent, by a
# propagator without a cheaper step; one with it steps each of them, the cheaper step but on every
CATCHUP_FULL_EVERY = 3  # ... this many-th frame: a 30-frame catch-up on blackswan then tracks the next 14
# frames at J 0.894 (every frame in full: 0.893, every 2nd frame in full: 0.786, the cheaper step but on every
# 5th: 0.423) for the cost of the stride (0.87 s against 0.93 s; in full 1.92 s)
MAX_PENDING_PROMPTS = 32  # prompts queued or being segmented per stream (drop policy: refuse new ones)


@dataclass
class PipelineConfig:
    delay: int | None = None  # output delay D in frames; None -> what the inpainter needs
    history: int = 30  # frames kept before the output point, for clicks on a frame the user saw
    ref_stride: int = 10  # keep one past reference frame every `ref_stride` frames ...
    ref_count: int = 3  # ... and at most this many
    default_effect: Effect = Effect.REMOVE
    max_objects: int = 20
    click_lookahead: int = 12  # a click waits (within the delay) for this many later frames: motion cues
    segment_async: bool = False  # live: segment clicks on a prompt thread while frames keep flowing
    hole_below: float = BELOW_REACH  # a removed object's hole also takes what hangs below it (feet, shadow)
    hole_edge: float = EDGE_BAND  # ... and a rim of it its mask missed (width x the root of the mask's area)
    # this far under it (x its height); 0: the hole is the mask.  Never applied to given masks (--masks-in)


class Pipeline:
    """Segmenter -> propagator -> (emitter: inpainter -> effects) -> fixed delay line, for one stream."""

    def __init__(self, segmenter: Segmenter | None, propagator: Propagator | None, inpainter: Inpainter,
                 config: PipelineConfig | None = None, *,
                 given_masks: Callable[[int], dict[int, Mask]] | None = None) -> None:
        self.segmenter = segmenter
        self.propagator = propagator
        self.inpainter = inpainter
        self.config = config or PipelineConfig()
        self.delay = int(self.config.delay if self.config.delay is not None else inpainter.future)
        if self.delay < 0:
            raise ValueError("delay must be >= 0 frames")
        self.given_masks = given_masks
        self.objects: dict[int, ObjectState] = {}  # replaced on change (copy-on-write): safe to read anywhere
        self.times = StageTimes()
        self.frames_in = 0
        self.propagation_skipped = 0
        self._stale = StaleMasks()  # each object's last tracked mask and motion (stale masks)
        self._epoch = 0  # the source's run of the last frame tracked (Frame.epoch)
        given = given_masks is not None
        holes = HoleBuilder(0.0 if given else self.config.hole_below, 0.0 if given else self.config.hole_edge)
        self._held = FrameStore(holes, self.config.ref_count, self.config.ref_stride)
        self.prompts = PromptQueue(MAX_PENDING_PROMPTS)
        self.emitter = Emitter(inpainter, self.times)
        self._head = -1
        self._next_out = 0  # the next frame to hand to the emitter
        self._size: tuple[int, int] | None = None  # (width, height) once the first frame arrived
        self._prepared: Frame | None = None  # the frame prepare() saw last (the next one pairs with it)
        self._cheap_fill = False  # whether the last step was given the cheap fill (read by prepare())
        self._prompt_thread = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="unseen-prompt")
                               if self.config.segment_async else None)

    @property
    def device(self) -> str:
        """Where the stages' work runs: the first stage not on the CPU (the runtime's worker contexts)."""
        for stage in (self.segmenter, self.propagator, self.inpainter):
            where = str(getattr(stage, "device", "cpu"))
            if where != "cpu":
                return where
        return "cpu"

    # ------------------------------------------------------------------ what the emitter counts
    @property
    def frames_out(self) -> int:
        return self.emitter.frames_out

    @property
    def degraded(self) -> int:
        return self.emitter.degraded

    @property
    def degradation(self):
        return self.emitter.degradation

    @property
    def visible_masks(self) -> Mapping[int, Mask]:
        """Masks of the frame that left the delay line last (what viewers see now)."""
        return self.emitter.visible_masks

    # ------------------------------------------------------------------ control (any thread)
    def click(self, x: float, y: float, *, positive: bool = True, object_id: int | None = None,
              frame_index: int | None = None, pts: int | None = None) -> concurrent.futures.Future:
        """Add a click to ``object_id`` (a new id, or None for the next free one, starts an object).

        The future resolves to the object id once the click was applied on its frame."""
        return self.prompt([Click(float(x), float(y), positive)], object_id=object_id, frame_index=frame_index,
                           pts=pts)

    def prompt(self, clicks: Sequence[Click] = (), box: Box | None = None, *, object_id: int | None = None,
               frame_index: int | None = None, pts: int | None = None) -> concurrent.futures.Future:
        """Prompt ``object_id`` (a new id, or None for the next free one, starts an object) with clicks and/or
        a box (x0, y0, x1, y1, frame pixels; clipped to the frame).  On the frame the object was last prompted
        on, the clicks add to its clicks and a box replaces its box; on another frame its clicks start afresh
        and its box, if it has one, follows it (the box around its tracked mask there).

        The future resolves to the object id once the prompt was applied on its frame."""
        clicks = tuple(clicks)
        if not clicks and box is None:
            raise PromptError("a prompt needs a click or a box; give x, y or x0, y0, x1, y1")
        box = check_box(box) if box is not None else None
        if self._size is not None:
            for c in clicks:
                self._check_inside(c.x, c.y)
            box = clip_box(box, *self._size) if box is not None else None
        return self.prompts.submit(Action("prompt", clicks=clicks, box=box, object_id=object_id,
                                          frame_index=frame_index, pts=pts))

    def remove_object(self, object_id: int) -> concurrent.futures.Future:
        return self.prompts.submit(Action("remove", object_id=object_id))

    def clear(self) -> concurrent.futures.Future:
        return self.prompts.submit(Action("clear"))

    def set_effect(self, object_id: int, effect: Effect | str) -> concurrent.futures.Future:
        return self.prompts.submit(Action("effect", object_id=object_id, effect=Effect.parse(effect)))

    def _check_inside(self, x: float, y: float) -> None:
        assert self._size is not None
        check_inside(x, y, *self._size)

    # ------------------------------------------------------------------ the two phases
    def step(self, frame: Frame, *, hurry: bool | Level = False) -> list[OutputFrame]:
        """Feed the next frame; returns the frame leaving the delay line (if any): :meth:`track`, then
        :meth:`emit`.

        ``hurry`` (the live runner sets it when processing falls behind) is a :class:`Level` of
        engine/degrade.py's ladder: from CHEAP_FILL on the outgoing frame gets the inpainter's cheap
        fill, REDUCED_TRACKING also propagates with the propagator's cheaper step, STALE_MASKS skips
        propagation (each object's last tracked mask moved by its measured motion).  ``True`` means
        STALE_MASKS, ``False`` FULL.  So the delay never grows and no frame has to be dropped.
        """
        return [self.emit(job) for job in self.track(frame, hurry=hurry)]

    def flush(self) -> list[OutputFrame]:
        """Emit every frame still held (end of stream)."""
        return [self.emit(job) for job in self.finish()]

    def emit(self, job: EmitJob) -> OutputFrame:
        """Phase two: complete the job's frame.  Jobs must be emitted in order, one thread at a time."""
        return self.emitter.emit(job)

    def ahead(self, job: EmitJob) -> None:
        """What emitting ``job`` would build first, built now: each held frame's hole parts (the band under
        each removed object, its missed rim).  The runtime's tracker calls it while the emitter is the
        slower worker (the queue between them is full) instead of waiting.  Changes no result: each part
        is built once, by whichever worker asks first."""
        for held in job.held.values():
            held.parts.get()

    def prepare(self, frame: Frame, *, work: bool = True) -> None:
        """Phase zero (any one thread, in frame order, before :meth:`track` of the frame): the stages' mask-free
        work on it (see :meth:`Propagator.prepare`).  Changes no result, only which worker does the work."""
        if self._size is not None and (frame.width, frame.height) != self._size:
            return  # track() refuses it
        before, self._prepared = self._prepared, frame
        if not work or before is None or before.image.shape != frame.image.shape:
            return  # (a live stream behind only notes the frame: the next one pairs with it)
        if self.propagator is not None and self.given_masks is None:
            self.propagator.prepare(frame, before)
        if not self._cheap_fill:  # (a stream given the cheap fill would not use it; a full fill later
            self.inpainter.prepare(frame, before)  # computes what it needs itself)

    def track(self, frame: Frame, *, hurry: bool | Level = False) -> list[EmitJob]:
        """Phase one: the masks of the next frame (its hole is built when the emitter first reads it), the
        prompts due; the job of the frame leaving."""
        level = hurry if isinstance(hurry, Level) else Level.STALE_MASKS if hurry else Level.FULL
        self._cheap_fill = level >= Level.CHEAP_FILL
        if self._size is None:
            self._size = (frame.width, frame.height)
        elif (frame.width, frame.height) != self._size:
            raise ValueError(f"frame {frame.index} is {frame.width}x{frame.height}, the stream is "
                             f"{self._size[0]}x{self._size[1]}")
        if frame.index != self._head + 1:
            frame.index = self._head + 1  # the pipeline's own clock: strictly consecutive
        self._head = frame.index
        self.frames_in += 1
        if frame.epoch != self._epoch:  # the source broke off: no motion carries a mask over, so the first
            self._stale.forget()  # frame after it is tracked whatever the level (the propagator finds the
            self._epoch = frame.epoch  # objects again), and stale masks start from it
        masks, tracking = self._track(frame, level)
        self._held.add(frame, masks, tracking, self._removes)
        self._apply_actions()
        jobs = []
        if self._head - self._next_out >= self.delay:
            jobs.append(self._job(self._next_out, level >= Level.CHEAP_FILL))
        self._trim()
        return jobs

    def finish(self) -> list[EmitJob]:
        """The end of the stream: the jobs of every frame still held."""
        self._apply_actions(final=True)
        jobs = []
        while self._next_out <= self._head:
            jobs.append(self._job(self._next_out, False))
        self._trim()
        return jobs

    def _job(self, index: int, cheap: bool) -> EmitJob:
        """Frame ``index`` leaves: a snapshot of what its completion sees."""
        job = EmitJob(index, self._held.window(index - self.inpainter.past, index + self.delay),
                      tuple(self._held.references), {oid: o.effect for oid, o in self.objects.items()}, cheap)
        self._next_out = index + 1
        return job

    def _track(self, frame: Frame, level: Level = Level.FULL) -> tuple[dict[int, Mask], Level]:
        """The masks of ``frame`` and how they were made (FULL, REDUCED_TRACKING or STALE_MASKS)."""
        t0 = time.perf_counter()
        if self.given_masks is not None:
            masks = self.given_masks(frame.index)
            for oid in masks:
                if oid not in self.objects:
                    self.objects = {**self.objects, oid: ObjectState(oid, self.config.default_effect)}
            masks = {k: v for k, v in masks.items() if k in self.objects}
        elif self.propagator is not None and self.objects and level is Level.STALE_MASKS \
                and self._stale.covers(self.objects):
            # far behind: the last tracked masks, moved by each object's motion (engine/degrade.py);
            # the propagator catches up from its last frame on the next tracked step
            self.propagation_skipped += 1
            return self._stale.predict(frame.index, self.objects), Level.STALE_MASKS
        elif self.propagator is not None and self.objects:
            reduced = level >= Level.REDUCED_TRACKING
            try:
                masks = self.propagator.step_reduced(frame) if reduced else self.propagator.step(frame)
                self._stale.tracked(frame.index, masks)
            except Exception:  # noqa: BLE001 - keep masking with the last masks rather than leak the object
                log.exception("propagator failed on frame %d; keeping the previous masks", frame.index)
                previous = self._held.get(frame.index - 1)
                masks = dict(previous.masks) if previous is not None else {}
            self.times.add("propagate", time.perf_counter() - t0)
            return masks, Level.REDUCED_TRACKING if reduced else Level.FULL
        else:
            return {}, Level.FULL
        self.times.add("propagate", time.perf_counter() - t0)
        return masks, Level.FULL

    def _removes(self, oid: int) -> bool:
        """Whether object ``oid`` exists and is removed (inpainted), not masked by another effect."""
        obj = self.objects.get(oid)
        return obj is not None and obj.effect is Effect.REMOVE

    def _set_masks(self, index: int, masks: dict[int, Mask], tracking: Level | None = None) -> None:
        self._held.set_masks(index, masks, self._removes, tracking)

    def _refresh_holes(self) -> None:
        for index in list(self._held):
            self._set_masks(index, self._held[index].masks)

    # ------------------------------------------------------------------ prompts
    def _apply_actions(self, final: bool = False) -> None:
        segmenting = False  # a prompt on a named object waits for earlier segmentations: its prompts add to theirs
        for action in self.prompts.take():
            if action.future.done():
                continue
            if segmenting and action.kind == "prompt" and action.segmentation is None and action.object_id is not None:
                self.prompts.pending.append(action)
                continue
            try:
                done, result = self._apply(action, final)
            except (PromptError, SelectionError, KeyError, ValueError) as exc:
                action.future.set_exception(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a backend failure must not stop the stream
                log.exception("prompt failed")
                action.future.set_exception(exc)
                continue
            if done:
                action.future.set_result(result)
            elif final:
                where = f"pts {action.pts}" if action.frame_index is None and action.pts is not None \
                    else f"frame {action.frame_index}"
                action.future.set_exception(PromptError(
                    f"click on {where} is beyond the last frame ({self._head}); click on a frame of the video"))
            else:
                self.prompts.pending.append(action)
                segmenting = segmenting or action.segmentation is not None

    def _frame_for(self, action: Action, final: bool = False) -> int | None:
        """The held frame a prompt applies to; None while that frame has not arrived."""
        if action.frame_index is not None:
            index = action.frame_index
        elif action.pts is not None:
            index = self._index_of_pts(action.pts)
            if index is None:
                return None
        else:
            # live default: the frame the viewer is seeing now, i.e. the last one output
            index = max(self._next_out - 1, min(self._held, default=0))
        if index > self._head:
            return None
        lookahead = min(self.config.click_lookahead, self.delay)
        if index >= self._next_out and self._head < index + lookahead and not final:
            return None  # still in time for this frame: let the segmenter see the frames after it
        oldest = min(self._held)
        if index < oldest:
            log.info("prompt for frame %d, which is no longer held; applying it on frame %d", index, oldest)
            index = oldest
        return index

    def _index_of_pts(self, pts: int) -> int | None:
        best = None
        for index, held in self._held.items():
            if held.frame.pts is not None and held.frame.pts <= pts:
                if best is None or index > best:
                    best = index
        if best is None:
            newest = self._held[self._head].frame.pts if len(self._held) else None
            if newest is not None and pts > newest:
                return None
            return min(self._held)
        return best

    def _apply(self, action: Action, final: bool = False) -> tuple[bool, object]:
        if action.kind == "clear":
            self.objects = {}
            if self.propagator is not None:
                self.propagator.reset()
            for index in self._held:
                self._set_masks(index, {})
            return True, None
        if action.kind == "effect":
            obj = dataclasses.replace(self._object(action.object_id), effect=action.effect or Effect.REMOVE)
            self.objects = {**self.objects, obj.id: obj}
            self._refresh_holes()
            return True, obj.id
        if action.kind == "remove":
            obj = self._object(action.object_id)
            self.objects = {k: v for k, v in self.objects.items() if k != obj.id}
            for index, held in self._held.items():
                self._set_masks(index, {k: v for k, v in held.masks.items() if k != obj.id})
            if self.propagator is not None and self.given_masks is None:
                if self.objects:
                    head = self._held[self._head]
                    self.propagator.seed(head.frame, head.masks)
                else:
                    self.propagator.reset()
            return True, obj.id
        return self._apply_prompt(action, final)

    def _object(self, object_id: int | None) -> ObjectState:
        if object_id is None or object_id not in self.objects:
            raise PromptError(f"no object {object_id}; list the objects and use one of their ids")
        return self.objects[object_id]

    def _apply_prompt(self, action: Action, final: bool = False) -> tuple[bool, object]:
        if action.segmentation is not None:
            if final:
                action.segmentation.result()  # the stream ends: wait for it
            return self._finish_segmentation(action)
        if self.given_masks is not None or self.segmenter is None or self.propagator is None:
            raise PromptError("this stream takes its masks from files; clicks and boxes are not used")
        index = self._frame_for(action, final)
        if index is None:
            return False, None
        for c in action.clicks:
            self._check_inside(c.x, c.y)
        assert self._size is not None
        box = clip_box(action.box, *self._size) if action.box is not None else None
        held = self._held[index]
        oid = self._target(action.object_id)
        prompt = _merged(self.objects.get(oid), index, action.clicks, box, held.masks.get(oid))
        tracked = _to_correct(self.objects.get(oid), index, prompt, held.masks.get(oid))
        neighbours = [self._held[index + k].frame for k in NEIGHBOUR_OFFSETS if index + k in self._held]
        earlier = [self._held[i].frame for i in sorted(self._held, reverse=True) if i < index][:self.config.history]
        others = _union([m for k, m in held.masks.items() if k != oid])
        if self._prompt_thread is not None and not final:  # live: segment off the frame path, apply when done
            action.on_frame, action.prompt = held.frame, prompt
            action.segmentation = self._prompt_thread.submit(self._segment, held.frame, prompt, neighbours, earlier,
                                                             tracked, others)
            return False, None
        mask, before = self._segment(held.frame, prompt, neighbours, earlier, tracked, others)
        return True, self._place(oid, held.frame, prompt, mask, before)

    def _segment(self, frame: Frame, prompt: FramePrompt, neighbours: list[Frame], earlier: list[Frame],
                 tracked: Mask | None = None, others: Mask | None = None) -> tuple[Mask, dict[int, Mask]]:
        """The prompted object's mask on ``frame`` (``tracked`` corrected, when given), and on the held frames
        before it (see _propagate_back).  ``others``: the other objects' masks there, which a selection leaves
        to them (see _leave_others)."""
        assert self.segmenter is not None
        t0 = time.perf_counter()
        if tracked is not None:
            mask = self._correct(frame, prompt.clicks, tracked, neighbours, others)
        else:
            mask = self.segmenter.segment(frame, list(prompt.clicks), neighbours=neighbours, box=prompt.box)
            mask = _leave_others(mask, others, prompt)
        self.times.add("segment", time.perf_counter() - t0)
        return mask, self._propagate_back(frame, mask, earlier)

    def _correct(self, frame: Frame, clicks: Sequence[Click], tracked: Mask, neighbours: list[Frame],
                 others: Mask | None = None) -> Mask:
        """``tracked`` corrected by clicks on a frame where the object is tracked but was not prompted: what the
        segmenter selects at a positive click is added where it touches the mask (a part the tracker missed) and
        replaces it where it does not (the tracker lost the object); what it selects at a negative click is cut
        off (where it selects nothing: the part of the mask connected to the click; where it selects most of
        the mask: the part its narrowest neck parts from the rest, if any).  Additions come first."""
        assert self.segmenter is not None
        mask = tracked.copy()
        reach = max(2, round(TOUCH * max(mask.shape)))
        for c in sorted(clicks, key=lambda c: not c.positive):
            try:
                part = self.segmenter.segment(frame, [Click(c.x, c.y, True)], neighbours=neighbours)
                if c.positive:
                    part = _leave_others(part, others, FramePrompt((c,)))
            except SelectionError:
                if c.positive:
                    continue  # nothing to add there
                part = _component_at(mask, c.x, c.y)
            if not c.positive:
                mask = _cut_off(mask, part, c)
            elif (part & _grown_by(mask, reach)).any():
                mask |= part
            else:
                mask = part
        return mask

    def _propagate_back(self, frame: Frame, mask: Mask, earlier: list[Frame]) -> dict[int, Mask]:
        """Frame index -> the clicked object's mask, on the ``earlier`` frames (newest first), by a fork
        of the propagator stepped backwards from ``frame``.  Without them the frames from before the
        click show the object unmasked and are no sources for its fill (see _emit); with them the
        background they saw behind it fills its hole at once.  Empty where the propagator has no fork."""
        back = self.propagator.fork() if self.propagator is not None and earlier and mask.any() else None
        if back is None:
            return {}
        t0 = time.perf_counter()
        back.seed(frame, {0: mask})
        masks = {}
        for f in earlier:
            m = back.step(f).get(0)
            if m is None:
                break
            masks[f.index] = m
        log.debug("propagated the clicked object back over %d frames in %.0f ms", len(masks),
                  1000 * (time.perf_counter() - t0))
        return masks

    def _finish_segmentation(self, action: Action) -> tuple[bool, object]:
        """Apply an async segmentation once it is done (on the engine's thread)."""
        assert action.segmentation is not None and action.on_frame is not None and action.prompt is not None
        if not action.segmentation.done():
            return False, None
        mask, before = action.segmentation.result()  # re-raises the segmenter's error
        oid = self._target(action.object_id)  # checked again: objects may have changed meanwhile
        action.object_id = oid
        return True, self._place(oid, action.on_frame, action.prompt, mask, before)

    def _target(self, object_id: int | None) -> int:
        """The id a click adds to: an existing object, or a new one within the limit."""
        if object_id is not None and int(object_id) in self.objects:
            return int(object_id)
        if len(self.objects) >= self.config.max_objects:
            raise PromptError(f"this stream already has {len(self.objects)} objects (the limit); remove one first")
        limit = self.config.max_objects
        if object_id is not None and not 1 <= int(object_id) <= limit:
            raise PromptError(f"object ids run from 1 to {limit}, not {object_id}; give one of them or none")
        if object_id is None:  # the smallest free id, so ids stay within 1..max_objects on an endless stream
            return next(i for i in range(1, limit + 1) if i not in self.objects)
        return int(object_id)

    def _place(self, oid: int, frame: Frame, prompt: FramePrompt, mask: Mask, before: Mapping[int, Mask]) -> int:
        """Record the object's mask on ``frame``, propagate it through the held frames after it, and place
        its masks on the held frames ``before`` it (propagated back: they are sources for its fill)."""
        obj = self.objects.get(oid) or ObjectState(oid, self.config.default_effect)
        obj = dataclasses.replace(obj, clicks=prompt.clicks, box=prompt.box, prompt_frame=frame.index)
        self.objects = {**self.objects, obj.id: obj}
        start = frame.index if frame.index in self._held else min(self._held)
        masks = dict(self._held[start].masks)
        masks[obj.id] = mask
        self._reseed(frame, masks)
        for index, earlier in before.items():
            held = self._held.get(index)
            if held is not None:
                self._set_masks(index, {**held.masks, obj.id: earlier})
        log.info("object %d: prompted on frame %d with %d clicks (%d negative) and %s", obj.id, frame.index,
                 len(prompt.clicks), sum(not c.positive for c in prompt.clicks),
                 "no box" if prompt.box is None else "box (%g,%g,%g,%g)" % prompt.box)
        return obj.id

    def _reseed(self, frame: Frame, masks: dict[int, Mask]) -> None:
        """Seed the propagator on ``frame`` and step it again through the held frames after it.

        Frames already sent only carry the propagator to the first unsent one, so a click that
        landed long ago (a slow live segmentation) takes the propagator's cheaper step through them (a full
        one every ``CATCHUP_FULL_EVERY``-th frame), or without one strides through them (every
        ``MAX_CATCHUP_STRIDE``-th frame at most), then steps every unsent frame: the stream is held up less.
        """
        assert self.propagator is not None
        if frame.index in self._held:
            self._set_masks(frame.index, masks)
        self.propagator.seed(frame, masks)
        self._stale.tracked(frame.index, masks)  # stale masks start from the re-tracked frames
        sent = [i for i in range(frame.index + 1, self._next_out) if i in self._held]
        unsent = [i for i in range(max(frame.index + 1, self._next_out), self._head + 1) if i in self._held]
        if self.propagator.reduced_step:
            steps = [(i, Level.FULL if n % CATCHUP_FULL_EVERY == 0 else Level.REDUCED_TRACKING)
                     for n, i in enumerate(sent, 1)]
        else:
            stride = min(MAX_CATCHUP_STRIDE, max(1, -(-len(sent) // max(1, self.delay))))
            steps = [(i, Level.FULL) for i in sent[stride - 1::stride]]
        for i, level in steps + [(i, Level.FULL) for i in unsent]:
            t0 = time.perf_counter()
            frame_i = self._held[i].frame
            step = self.propagator.step if level is Level.FULL else self.propagator.step_reduced
            self._set_masks(i, step(frame_i), level)
            self._stale.tracked(i, self._held[i].masks)
            self.times.add("propagate", time.perf_counter() - t0)

    # ------------------------------------------------------------------ memory
    def _trim(self) -> None:
        """Drop frames nobody needs any more; keep references at a stride (bounded)."""
        keep_from = self._next_out - max(self.inpainter.past, self.config.history)
        for index in self.prompts.busy_frames():  # a frame being segmented stays until its mask is placed on it
            keep_from = min(keep_from, index)
        self._held.drop_before(keep_from)
        if self.segmenter is not None and len(self._held) and not self.prompts.segmenting():
            self.segmenter.forget(min(self._held))  # unless the prompt thread uses the segmenter

    def close(self) -> None:
        """Stop the prompt thread (idempotent); a segmentation still running is abandoned."""
        if self._prompt_thread is not None:
            self._prompt_thread.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ state
    @property
    def held_frames(self) -> int:
        return len(self._held)

    @property
    def references(self) -> int:
        return len(self._held.references)

    @property
    def head(self) -> int:
        """Index of the newest frame stepped (-1 before the first); a prompt on a later frame waits for it."""
        return self._head

    def describe(self) -> dict:
        return {
            "objects": [o.describe() for o in self.objects.values()],
            "delay_frames": self.delay,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "degraded": self.degraded,
            "propagation_skipped": self.propagation_skipped,
            "degradation": self.degradation.as_dict(),
            "stale_area_over_tracked_max": round(self._stale.largest_growth, 4),
            "held_frames": len(self._held),
            "references": self.references,
            "backends": {
                "segmenter": getattr(self.segmenter, "name", None) if self.given_masks is None else "masks-in",
                "propagator": getattr(self.propagator, "name", None) if self.given_masks is None else "masks-in",
                "inpainter": self.inpainter.name,
            },
            "stage_ms": self.times.means(),
        }


def _merged(obj: ObjectState | None, index: int, clicks: tuple[Click, ...], box: Box | None,
            tracked: Mask | None) -> FramePrompt:
    """The object's prompts on frame ``index`` with these added.  On its prompt frame the clicks add up and a new
    box replaces the old.  On another frame (the object has moved) the clicks start afresh, and an object that
    has a box keeps one: the box around its ``tracked`` mask there, grown to take the new positive clicks."""
    if obj is None:
        return FramePrompt(clicks, box)
    if obj.prompt_frame == index:
        return FramePrompt(obj.clicks + clicks, box if box is not None else obj.box)
    if box is None and obj.box is not None:
        box = _box_around(tracked, [c for c in clicks if c.positive])
    return FramePrompt(clicks, box)


def _box_around(mask: Mask | None, clicks: Sequence[Click]) -> Box | None:
    """The box around ``mask`` and ``clicks`` (each a pixel); None where the mask is missing or empty."""
    if mask is None or not mask.any():
        return None
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    x0, y0, x1, y1 = float(x), float(y), float(x + w), float(y + h)
    for c in clicks:
        x0, y0, x1, y1 = min(x0, c.x), min(y0, c.y), max(x1, c.x + 1), max(y1, c.y + 1)
    return x0, y0, min(x1, float(mask.shape[1])), min(y1, float(mask.shape[0]))


def _to_correct(obj: ObjectState | None, index: int, prompt: FramePrompt, tracked: Mask | None) -> Mask | None:
    """The tracked mask a prompt corrects: clicks alone, on a frame where the object is tracked but was not
    prompted (they add to and cut from what the user sees, see Pipeline._correct); else None (segment afresh:
    an object with a box is segmented in the box around its tracked mask)."""
    if obj is None or obj.prompt_frame == index or prompt.box is not None or tracked is None or not tracked.any():
        return None
    return tracked


def _union(masks: Sequence[Mask]) -> Mask | None:
    """The pixels of any of ``masks``; None when there are none."""
    return np.logical_or.reduce(masks) if any(m.any() for m in masks) else None


def _leave_others(mask: Mask, others: Mask | None, prompt: FramePrompt) -> Mask:
    """``mask`` without the pixels of the other objects (``others``) on its frame: a selection that spills onto
    an object already tracked there does not take it from that object.  Unless the prompt points into one (its
    positive clicks, or its box's centre without them): the user says that this object is there (a part of
    an object, the backpack on a girl, becomes an object of its own), and the selection is kept whole; so is
    one that nothing would be left of."""
    if others is None or not mask.any():
        return mask
    points = [(c.x, c.y) for c in prompt.clicks if c.positive]
    if not points and prompt.box is not None:
        points = [((prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2)]
    h, w = others.shape
    if any(others[min(h - 1, int(y)), min(w - 1, int(x))] for x, y in points):
        return mask
    left = mask & ~others
    return left if left.any() else mask


def _grown_by(mask: Mask, px: int) -> Mask:
    """``mask`` dilated by ``px`` pixels (a square)."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def _cut_off(mask: Mask, part: Mask, click: Click) -> Mask:
    """``mask`` without what a negative ``click`` selected (``part``), unless that is most of it (see CUT_MAX)."""
    if mask_area(part & mask) <= CUT_MAX * mask_area(mask):
        return mask & ~part
    kept = neck_cut(mask, click.x, click.y)
    return mask if kept is None else mask & kept


def _component_at(mask: Mask, x: float, y: float) -> Mask:
    """The 8-connected part of ``mask`` under (x, y); empty when (x, y) lies outside it."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    label = labels[int(y), int(x)]
    return labels == label if label else np.zeros(mask.shape, bool)
