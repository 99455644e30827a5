"""The Python API: a video processed from numpy frames by the runtime's :class:`StreamSession`, the
session ``unseen run`` and ``unseen serve`` drive.

    from unseen.engine import open_session

    with open_session(segmenter="classical", propagator="classical", inpainter="classical") as s:
        s.click(120, 86)                    # on the frame most recently passed in (none yet: frame 0)
        for out in s.process(frames):       # RGB uint8 HxWx3 arrays in, the same out, in order
            ...

:meth:`VideoSession.process` puts the caller's frames on the session's source (a bounded queue) and
yields each output as soon as the runtime has made it, the fixed delay D behind; when ``frames`` ends,
the delay line is flushed, so frames out = frames in.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from .backends.registry import BackendOptions
from .effects import Effect
from .pipeline import ObjectState, OutputFrame, Pipeline, PipelineConfig, check_inside
from .runtime import Mode, RuntimeConfig, StreamSession
from .session import Backends, build_pipeline
from .stages import Frame
from .streams import BoundedQueue, Policy, QueueSource

__all__ = ["VideoSession", "open_session"]

log = logging.getLogger("unseen.api")

_END = object()  # the caller's frames ran out


class FeedSource(QueueSource):
    """The caller's frames, queued for the runtime.  Policy *block*; :class:`VideoSession` never has
    more frames in flight than the queue holds, so a put never waits."""

    live = False

    def __init__(self, maxlen: int) -> None:
        super().__init__(maxlen)
        self.queue = BoundedQueue(maxlen, Policy.BLOCK)


class OutputQueue:
    """A sink that keeps the outputs until the caller takes them (bounded like :class:`FeedSource`)."""

    def __init__(self, maxlen: int) -> None:
        self.queue: BoundedQueue[OutputFrame] = BoundedQueue(maxlen, Policy.BLOCK)

    def write(self, output: OutputFrame) -> None:
        self.queue.put(output)

    def close(self, *, keep: bool = True) -> None:
        self.queue.close()


class VideoSession:
    """One video, frame by frame: clicks and boxes on the frames passed in, outputs D frames later."""

    def __init__(self, pipeline: Pipeline, *, config: RuntimeConfig | None = None, rate: Fraction = Fraction(25),
                 name: str = "api") -> None:
        self.pipeline = pipeline
        self.time_base = 1 / Fraction(rate)
        config = config or RuntimeConfig()
        # frames passed in and not given back yet: enough to keep every worker busy; more never wait
        self.limit = pipeline.delay + 4 * config.queue_items + 2
        self._source = FeedSource(self.limit)
        self._outputs = OutputQueue(self.limit)
        self._runtime = StreamSession(self._source, pipeline, [self._outputs], config=config, name=name,
                                      on_failure=lambda worker, exc: self._outputs.close())
        self._sent = 0  # frames passed in
        self._given = 0  # outputs given back
        self._size: tuple[int, int] | None = None  # (height, width) of the first frame
        self._prompts: list[concurrent.futures.Future] = []
        self._ended = False
        self._closed = False
        self._runtime.start()

    # ------------------------------------------------------------------ prompts
    def click(self, x: float, y: float, *, frame: int | None = None, object_id: int | None = None,
              positive: bool = True) -> concurrent.futures.Future:
        """Click on ``frame`` (default: the frame most recently passed in; before any, frame 0).  A positive
        click without ``object_id`` starts a new object; a negative one needs the ``object_id`` it corrects.
        The future gives the object's id once the click was applied (a few frames later)."""
        if not positive and object_id is None:
            raise ValueError("a negative click corrects an object; give its object_id (choose one with the "
                             "object's first click, e.g. click(x, y, object_id=1))")
        if self._size is not None:
            check_inside(x, y, self._size[1], self._size[0])
        return self._watch(self.pipeline.click(x, y, positive=positive, object_id=object_id,
                                               frame_index=self._frame_index(frame)))

    def box(self, x0: float, y0: float, x1: float, y1: float, *, frame: int | None = None,
            object_id: int | None = None) -> concurrent.futures.Future:
        """A box around an object (frame pixels; clipped to the frame), on ``frame`` like :meth:`click`;
        with ``object_id`` of an object it replaces that object's box on that frame."""
        return self._watch(self.pipeline.prompt((), (x0, y0, x1, y1), object_id=object_id,
                                                frame_index=self._frame_index(frame)))

    def _frame_index(self, frame: int | None) -> int:
        if frame is None:
            return max(0, self._sent - 1)
        if int(frame) < 0:
            raise ValueError(f"frame {frame} is negative; give the index of a frame passed in (0 is the first)")
        return int(frame)

    def _watch(self, future: concurrent.futures.Future) -> concurrent.futures.Future:
        self._prompts.append(future)
        return future

    # ------------------------------------------------------------------ frames
    def process(self, frames: Iterable[np.ndarray], *, end: bool = True) -> Iterator[np.ndarray]:
        """Process ``frames`` (RGB uint8 HxWx3, one size), yielding each output (RGB, the same size) as soon
        as it is ready, in order.  ``end`` (default): the video ends with these frames, the delay line is
        flushed, frames out = frames in.  ``end=False``: more frames follow in a later call (the last call
        ends the video; ``process([])`` does).  A failed click or box is raised here, once; the video goes
        on (call process again: ``process([])`` gives the rest after an error at the end)."""
        if self._ended or self._closed:
            raise RuntimeError("this session's video has ended; open a new session for another video")
        images = iter(frames)
        while True:
            while self._sent - self._given >= self.limit:  # room first: a frame is taken only when it can go in
                yield self._take(block=True)
            image = next(images, _END)
            if image is _END:
                break
            if self._source.queue.closed:
                raise RuntimeError("a frame after the end of the video (an earlier process() call ended it); "
                                   "open a new session for another video")
            self._source.push(self._frame(image))
            self._sent += 1
            while (out := self._take(block=False)) is not None:
                yield out
        if end:
            self._source.close()  # the end of the video: the runtime flushes the delay line
            while self._given < self._sent:
                yield self._take(block=True)
            self._ended = True
            self._runtime.close()

    def _frame(self, image: np.ndarray) -> Frame:
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"frame {self._sent} is a {a.dtype} array of shape {a.shape}, not an RGB image; pass "
                             f"HxWx3 uint8 arrays (OpenCV's BGR: cv2.cvtColor(img, cv2.COLOR_BGR2RGB))")
        if self._size is None:
            self._size = a.shape[:2]
        elif a.shape[:2] != self._size:
            raise ValueError(f"frame {self._sent} is {a.shape[1]}x{a.shape[0]}, not {self._size[1]}x{self._size[0]} "
                             f"like the first; pass frames of one size (resize them)")
        # a copy: the session holds frames for D frames, and a reader may reuse its buffer
        return Frame(index=self._sent, image=np.array(a, order="C", copy=True), pts=self._sent,
                     time_base=self.time_base, wallclock=time.monotonic())

    def _take(self, *, block: bool) -> np.ndarray | None:
        """The next output (None: not ready yet, when not blocking); raises what ended the runtime."""
        self._raise_failed_prompt()  # before taking an output: none is lost when it raises
        out = self._outputs.queue.get(None if block else 0)
        if out is None:
            if self._runtime.error is not None:
                raise self._runtime.error
            if block or self._outputs.queue.closed:
                raise RuntimeError(f"the session closed with {self._sent - self._given} frames still held; "
                                   f"close it only after process() has ended")
            return None
        self._given += 1
        return out.image

    def _raise_failed_prompt(self) -> None:
        for future in [f for f in self._prompts if f.done()]:
            self._prompts.remove(future)
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]

    # ------------------------------------------------------------------ state
    @property
    def delay(self) -> int:
        """D: frames between a frame passed in and its output."""
        return self.pipeline.delay

    @property
    def objects(self) -> Mapping[int, ObjectState]:
        """The objects by id (how each was prompted, its effect)."""
        return self.pipeline.objects

    @property
    def frames_in(self) -> int:
        return self._sent

    @property
    def frames_out(self) -> int:
        return self._given

    def close(self) -> None:
        """End the session (idempotent): the workers stop and the backends are released.  Frames of a video
        that process() did not end are dropped (and counted in the log)."""
        if self._closed:
            return
        self._closed = True
        held = self._sent - self._given
        if not self._ended:
            self._runtime.stop(flush=False)  # nobody takes the outputs any more
        self._runtime.close()
        if held and not self._ended:
            log.warning("session closed with %d frames passed in and not given back (process() did not end the "
                        "video)", held)

    def __enter__(self) -> "VideoSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_session(*, segmenter: str = "auto", propagator: str = "auto", inpainter: str = "auto",
                 effect: Effect | str = Effect.REMOVE, delay: int | None = None, device: str = "cpu",
                 precision: str = "fp32", weights_dir: str | os.PathLike | None = None, sequential: bool = False,
                 rate: float | Fraction = 25) -> VideoSession:
    """A :class:`VideoSession`.  Backends per stage: ``auto`` (neural when its weights are in ``weights_dir``
    or $UNSEEN_WEIGHTS, else classical), ``classical``, ``sam:vit_b``, ``aot:r50_deaotl``, ``e2fgvi:hq``.
    ``delay``: D in frames (None: what the inpainter needs).  ``sequential``: one worker thread (the same
    output).  ``rate``: the frames' rate (their timestamps)."""
    if delay is not None and int(delay) < 0:
        raise ValueError(f"delay {delay} is negative; give 0 or more frames, or None")
    if not Fraction(rate) > 0:
        raise ValueError(f"rate {rate} is not positive; give the frames per second, e.g. 25")
    options = BackendOptions(device=device, precision=precision,
                             weights_dir=None if weights_dir is None else Path(weights_dir))
    if delay is not None:
        options.future = min(options.future, int(delay))
    config = PipelineConfig(delay=delay, default_effect=Effect.parse(effect))
    pipeline = build_pipeline(Backends(segmenter, propagator, inpainter), options, config)
    mode = Mode.SEQUENTIAL if sequential else Mode.PIPELINED
    return VideoSession(pipeline, config=RuntimeConfig(mode=mode), rate=Fraction(rate))
