"""One stream runtime for files, live streams and benchmarks.

A :class:`StreamSession` owns a source, the pipeline and its sinks (anything with
``write(OutputFrame)`` / ``close(keep=)``: file encoder, RTSP publisher, WebRTC relay, recorder);
flush, close and fan-out exist here once.  A live source is a :class:`QueueSource` (frames pushed
by a reader thread or a browser track; bounded, drop-oldest, counted) like any other source.

Modes (:class:`Mode`):

* ``sequential``: one thread decodes, tracks, emits and writes each frame in turn (the sum of the
  stages sets the rate);
* ``pipelined``: decode (then prepare: the pipeline's mask-free work on the frame, such as its optical
  flows; a live stream behind only notes it), track (propagate frame t), emit (build the holes it reads,
  inpaint frame t-D and composite) and write (the sinks) each run on their own worker, joined by bounded
  queues (policy *block*: back-pressure), so the slowest stage sets the rate.  While the emitter is behind
  (its queue full), the tracker builds the holes of the job it hands over instead of waiting.  The tracker hands the emitter an
  immutable snapshot (:class:`~unseen.engine.emitter.EmitJob`) taken where the sequential order
  would emit, so the output is the same (for prompts given up front; a live prompt lands on the
  frame the tracker is at when it arrives).

Both modes apply the same :class:`ThreadSettings`; in the pipelined one the workers upstream of the
emitter run at a lower priority (drained downstream first: the emitter is the slowest).  Each worker
runs inside its own :class:`DeviceContext` (on CUDA: its own stream, pinned host buffers, non-blocking
copies; on CPU the same calls do nothing).  :class:`Tracer` records every stage call as Chrome trace
events.  Those parts (queues, the live source, the fan-out, settings, device context, tracer) live in
engine/streams.py.
"""
from __future__ import annotations

import concurrent.futures
import enum
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from .degrade import LadderConfig, Level
from .media import MediaError, Truncation
from .pipeline import OutputFrame
from .stages import Frame
from .streams import (BoundedQueue, DeviceContext, Policy, QueueSource, Sink, SinkFanout, ThreadSettings,
                      TraceEvent, Tracer)

__all__ = ["BoundedQueue", "CloseReport", "DeviceContext", "Mode", "Policy", "QueueSource", "RunResult",
           "RuntimeConfig", "Sink", "SinkFanout", "StepOnly", "StreamSession", "ThreadSettings", "TraceEvent",
           "Tracer", "TwoPhase", "WorkerStats", "two_phase"]

log = logging.getLogger("unseen.runtime")

STAGES = ("decode", "track", "emit", "write")
PREPARE_BACKLOG = LadderConfig().stale_masks.enter  # a paced (live) stream's frames are prepared ahead only
# while fewer than this many wait: the cheap fill and the reduced step still read the propagator's flow, so
# preparing it on the decoding worker keeps it off the tracker (the serial stage) until the stale-mask
# level, whose steps read no flow (at 2, the first level's threshold: 432x240 live 72% -> 26% degraded)
SINK_CLOSE_SHARE = 0.2  # of close()'s timeout, kept (up to 1 s) for the sinks after the workers


# ----------------------------------------------------------------------------- the two phases
class TwoPhase(Protocol):
    """What the runtime drives (engine/pipeline.py's Pipeline)."""

    def track(self, frame: Frame, *, hurry: bool | Level = False) -> list[Any]: ...

    def finish(self) -> list[Any]: ...

    def emit(self, job: Any) -> OutputFrame: ...


class StepOnly:
    """A pipeline with only ``step``/``flush`` (a test's stub) as a :class:`TwoPhase`: its outputs are
    the jobs, emitting passes them through."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def track(self, frame: Frame, *, hurry: bool | Level = False) -> list[OutputFrame]:
        return list(self.pipeline.step(frame, hurry=hurry))

    def finish(self) -> list[OutputFrame]:
        return list(self.pipeline.flush())

    def emit(self, job: OutputFrame) -> OutputFrame:
        return job


def two_phase(pipeline: Any) -> TwoPhase:
    return pipeline if hasattr(pipeline, "track") and hasattr(pipeline, "emit") else StepOnly(pipeline)


# ----------------------------------------------------------------------------- results
class Mode(enum.Enum):
    SEQUENTIAL = "sequential"
    PIPELINED = "pipelined"


@dataclass(frozen=True)
class RuntimeConfig:
    mode: Mode = Mode.PIPELINED
    queue_items: int = 4  # bound of each queue between two workers (policy: block)
    threads: ThreadSettings = ThreadSettings()
    device: str | None = None  # each worker's DeviceContext (None: where the pipeline's stages run)
    trace: bool = False  # record Chrome trace events (busy times are always kept)


@dataclass(frozen=True)
class WorkerStats:
    """One worker's (pipelined) or one stage's (sequential) share of the run."""

    name: str
    calls: int
    busy_s: float
    wall_s: float

    @property
    def ms_per_call(self) -> float:
        return 1000 * self.busy_s / self.calls if self.calls else 0.0

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.wall_s if self.wall_s > 0 else 0.0

    def describe(self) -> dict:
        return {"calls": self.calls, "busy_s": round(self.busy_s, 3), "ms_per_call": round(self.ms_per_call, 2),
                "utilisation": round(self.utilisation, 3)}


@dataclass
class RunResult:
    frames_in: int
    frames_out: int
    seconds: float
    degraded: int
    stage_ms: dict[str, float] = field(default_factory=dict)
    skipped: int = 0  # input frames that could not be decoded
    truncated: Truncation | None = None  # the input ended before the frame count it declares
    mode: str = Mode.SEQUENTIAL.value
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    queue_high_water: dict[str, int] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames_in / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class CloseReport:
    """What :meth:`StreamSession.close` did with the frames in flight."""

    flushed: int  # frames the flush of the delay line delivered to the sinks
    discarded: int  # frames received but not processed (queued when intake stopped)
    abandoned: bool  # a worker outlasted the timeout: no flush, the sinks were closed with what they had


# ----------------------------------------------------------------------------- the session
class StreamSession:
    """A stream being processed: source -> pipeline (track, emit) -> sinks, in either :class:`Mode`.

    ``pace(backlog)`` picks each frame's degradation level from the frames waiting (live; files: FULL).
    ``on_error(stage, exc)`` (live) reports a frame's failure and goes on; without it a failure ends the
    run.  ``on_failure(worker, exc)``: a worker died (the run ends).  ``on_tracked(frame)`` is called
    after each frame is tracked (live metrics)."""

    def __init__(self, source: Iterable[Frame], pipeline: Any, sinks: Sequence[Sink] = (), *,
                 config: RuntimeConfig | None = None, name: str = "file",
                 pace: Callable[[int], Level] | None = None,
                 on_error: Callable[[str, BaseException], None] | None = None,
                 on_failure: Callable[[str, BaseException], None] | None = None,
                 on_tracked: Callable[[Frame], None] | None = None) -> None:
        self.name = name
        self.source = source
        self.pipeline = pipeline
        self.phases = two_phase(pipeline)
        self.config = config or RuntimeConfig()
        #: each worker's device context: a CUDA stream of its own when the stages run on a GPU
        self.device = self.config.device or str(getattr(pipeline, "device", "cpu"))
        self.fanout = SinkFanout(sinks)
        self.pace = pace
        self.on_error = on_error
        self.on_failure = on_failure
        self.on_tracked = on_tracked
        self.tracer = Tracer(self.config.trace, one_thread=self.config.mode is Mode.SEQUENTIAL)
        self.threads: dict[str, Any] = {}
        n = self.config.queue_items
        self.frames: BoundedQueue[Frame] = BoundedQueue(n, Policy.BLOCK)
        self.jobs: BoundedQueue[Any] = BoundedQueue(n, Policy.BLOCK)
        self.outputs: BoundedQueue[OutputFrame] = BoundedQueue(n, Policy.BLOCK)
        self.prompts: Sequence[concurrent.futures.Future] = ()
        self.progress: Callable[[int], None] | None = None
        self.strict = False
        self.error: BaseException | None = None
        self.flushed = 0  # outputs of the final flush delivered to the sinks
        self.unprocessed = 0  # frames taken after intake stopped (not processed)
        self._jobs_made = 0  # jobs the tracker made (one output each)
        self._delivered = 0  # outputs written to the sinks
        self._flush_after: int | None = None  # jobs made before the final flush
        self._stop = threading.Event()
        self._abandoned = False
        self._no_flush = False
        self._closed = False
        self._report: CloseReport | None = None
        self._close_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._started: float | None = None
        self._ended: float | None = None
        if hasattr(source, "on_audio"):
            source.on_audio = self.fanout.write_audio

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "StreamSession":
        self.threads = self.config.threads.apply()
        self._started = time.perf_counter()
        self.tracer.t0 = self._started
        if self.config.mode is Mode.SEQUENTIAL:
            loops = [("sequential", self._sequential)]
        else:
            loops = [("decode", self._decode), ("track", self._track), ("emit", self._emit), ("write", self._write)]
        for worker, loop in loops:
            t = threading.Thread(target=self._guard, args=(worker, loop), name=f"unseen-{worker}-{self.name}",
                                 daemon=True)
            self._workers.append(t)
        for t in self._workers:
            t.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every worker to end (the source ended, or stop); True when they all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._workers:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not self.running
        if done and self._ended is None:
            self._ended = time.perf_counter()
        return done

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._workers)

    @property
    def stopping(self) -> bool:
        """Intake has stopped (:meth:`stop` or :meth:`close` was called)."""
        return self._stop.is_set()

    def stop(self, *, flush: bool = True) -> None:
        """Stop intake: frames not yet tracked are not processed; the tracker then flushes the delay line
        (``flush=False``: it does not, e.g. once the stream failed)."""
        if not flush:
            self._no_flush = True
        self._stop.set()
        if isinstance(self.source, QueueSource):
            self.source.close()  # wakes a worker waiting for a frame
        self._count_unprocessed(self.frames.drain())

    def run(self, *, prompts: Sequence[concurrent.futures.Future] = (),
            progress: Callable[[int], None] | None = None, stop: threading.Event | None = None,
            strict: bool = False) -> RunResult:
        """Process the whole source (files).  A failed prompt (or any error) discards the outputs; so
        does, with ``strict``, an input that is truncated or has frames that could not be decoded."""
        self.prompts, self.progress, self.strict = prompts, progress, strict
        ok = False
        try:
            self.start()
            while not self.wait(0.2 if stop is not None else None):
                if stop is not None and stop.is_set():
                    self.stop()
            if self.error is not None:
                raise self.error
            ok = True
        finally:
            self._abort()
            self.close(keep=ok)
        return self.result()

    def result(self) -> RunResult:
        p = self.pipeline
        end = self._ended or time.perf_counter()
        seconds = end - (self._started or end)
        return RunResult(p.frames_in, p.frames_out, seconds, p.degraded, p.times.means(),
                         getattr(self.source, "skipped", 0), getattr(self.source, "truncated", None),
                         self.config.mode.value, self.worker_stats(),
                         {"frames": self.frames.high_water, "jobs": self.jobs.high_water,
                          "outputs": self.outputs.high_water})

    def worker_stats(self) -> dict[str, WorkerStats]:
        end = self._ended or time.perf_counter()
        wall = end - (self._started or end)
        return {w: WorkerStats(w, self.tracer.calls.get(w, 0), busy, wall) for w, busy in self.tracer.busy.items()}

    def close(self, *, keep: bool = True, timeout: float | None = None) -> CloseReport:
        """Drain and close (idempotent): stop intake, let the workers finish (the tracker flushes the
        delay line, never while it still tracks), then close the sinks, the source and the pipeline.
        With ``timeout``: workers still busy then are abandoned (they deliver nothing more), nothing more
        is flushed, and the sinks close with what they have."""
        with self._close_lock:
            if self._closed:
                return self._report or CloseReport(0, 0, False)
            self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self.stop()
        if deadline is None:
            self.wait()
        else:
            self.wait(max(0.0, deadline - min(SINK_CLOSE_SHARE * timeout, 1.0) - time.monotonic()))
        abandoned = self.running
        if abandoned:
            self._abandoned = True
            self._abort()
            log.warning("%s: a worker is still busy; closing without flushing the delay line", self.name)
        try:
            self.fanout.close(keep=keep)
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            self.pipeline.close()
            discarded = self.unprocessed + getattr(self.source, "backlog", 0)  # taken after the stop, or still queued
            self._report = CloseReport(self.flushed, discarded, abandoned)
        return self._report

    # ------------------------------------------------------------------ workers
    def _guard(self, worker: str, loop: Callable[[DeviceContext], None]) -> None:
        try:
            self.config.threads.enter_worker(worker)
            with DeviceContext(self.device) as device:
                loop(device)
        except BaseException as exc:  # noqa: BLE001 - the run reports it; the other workers stop
            if self.error is None:
                self.error = exc
            if self.on_failure is not None:
                self.on_failure(worker, exc)
            else:
                log.debug("%s: worker %s failed", self.name, worker, exc_info=exc)
            self._abort()

    def _count_unprocessed(self, n: int) -> None:
        with self._close_lock:
            self.unprocessed += n

    def _abort(self) -> None:
        """Wake every worker: queues close (blocked producers return), intake stops."""
        self._stop.set()
        for q in (self.frames, self.jobs, self.outputs):
            q.close()
        if isinstance(self.source, QueueSource):
            self.source.close()

    def _backlog(self) -> int:
        return len(self.frames) + getattr(self.source, "backlog", 0)

    def _level(self) -> Level:
        return self.pace(self._backlog()) if self.pace is not None else Level.FULL

    def _decode(self, device: DeviceContext) -> None:
        it = iter(self.source)
        try:
            while not self._stop.is_set():
                with self.tracer.span("decode", "decode"):
                    frame = next(it, None)
                if frame is None:
                    break
                self._prepare(frame, "decode")
                self.frames.put(frame)
        finally:
            self.frames.close()

    def _prepare(self, frame: Frame, worker: str) -> None:
        """The pipeline's mask-free work on a frame (optional ``prepare``), ahead of its tracking; a live
        stream behind (PREPARE_BACKLOG) only notes the frame (the next one is prepared against it)."""
        prepare = getattr(self.phases, "prepare", None)
        if prepare is None:
            return
        work = self.pace is None or self._backlog() < PREPARE_BACKLOG
        with self.tracer.span(worker, "prepare", call=worker == "prepare"):
            try:
                prepare(frame, work=work)
            except Exception as exc:  # the frame's tracking meets (and reports) the same trouble
                log.debug("prepare of frame %s: %s", frame.index, exc)

    def _track(self, device: DeviceContext) -> None:
        try:
            while True:
                frame = self.frames.get()
                if frame is None:
                    break
                if self._stop.is_set():
                    self._count_unprocessed(1)  # intake stopped meanwhile: not processed
                    break
                for job in self._track_one(frame, device):
                    self._ahead(job)
                    self.jobs.put(job)
            if not (self._abandoned or self._no_flush) and self.error is None:
                for job in self._finish(device):
                    self.jobs.put(job)
        finally:
            self.jobs.close()

    def _track_one(self, frame: Frame, device: DeviceContext) -> list[Any]:
        level = self._level()
        with self.tracer.span("track", "track"):
            try:
                jobs = self.phases.track(frame, hurry=level)
            except Exception as exc:
                if self.on_error is None:
                    raise
                self.on_error("track", exc)  # one bad frame must not end a live stream
                jobs = []
            device.handoff()
        self._jobs_made += len(jobs)
        _raise_failed(self.prompts)
        if self.on_tracked is not None:
            self.on_tracked(frame)
        if self.progress is not None:
            self.progress(1)
        return jobs

    def _ahead(self, job: Any) -> None:
        """The emitter is behind (its queue is full): rather than wait, the tracker does the work of ``job``
        that either worker may do (the pipeline's optional ``ahead``), which the emitter then finds done."""
        ahead = getattr(self.phases, "ahead", None)
        if ahead is None or len(self.jobs) < self.jobs.maxlen:
            return
        with self.tracer.span("track", "ahead"):
            ahead(job)

    def _finish(self, device: DeviceContext) -> list[Any]:
        if self.strict:
            _raise_damaged(self.source)
        with self.tracer.span("track", "flush"):
            try:
                jobs = self.phases.finish()
            except Exception as exc:
                if self.on_error is None:
                    raise
                self.on_error("flush", exc)  # closing must finish
                jobs = []
            device.handoff()
        _raise_failed(self.prompts)
        self._flush_after = self._jobs_made
        self._jobs_made += len(jobs)
        return jobs

    def _emit(self, device: DeviceContext) -> None:
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    break
                out = self._emit_one(job, device)
                if out is not None:
                    self.outputs.put(out)
        finally:
            self.outputs.close()

    def _emit_one(self, job: Any, device: DeviceContext) -> OutputFrame | None:
        with self.tracer.span("emit", "emit"):
            try:
                out = self.phases.emit(job)
            except Exception as exc:
                if self.on_error is None:
                    raise
                self.on_error("emit", exc)
                return None
            device.handoff()
        return out

    def _write(self, device: DeviceContext) -> None:
        while True:
            out = self.outputs.get()
            if out is None:
                break
            self._deliver(out, "write")

    def _deliver(self, out: OutputFrame, worker: str) -> None:
        if self._abandoned:
            return  # close() gave up on the workers: the sinks are closed
        with self.tracer.span(worker, "write"):
            if self.fanout.write(out):
                self._delivered += 1
                if self._flush_after is not None and self._delivered > self._flush_after:
                    self.flushed += 1

    def _sequential(self, device: DeviceContext) -> None:
        """Today's order on one thread: decode, track, emit, write."""
        it = iter(self.source)
        while True:
            with self.tracer.span("decode", "decode"):
                frame = next(it, None) if not self._stop.is_set() else None
            if frame is None:
                break
            if self._stop.is_set():
                self._count_unprocessed(1)
                break
            self._prepare(frame, "prepare")
            for job in self._track_one(frame, device):
                self._emit_and_write(job, device)
        if not (self._abandoned or self._no_flush) and self.error is None:
            for job in self._finish(device):
                self._emit_and_write(job, device)

    def _emit_and_write(self, job: Any, device: DeviceContext) -> None:
        if self._abandoned:
            return
        out = self._emit_one(job, device)
        if out is not None:
            self._deliver(out, "write")


def _raise_damaged(source: Any) -> None:
    """--strict: a truncated input or undecodable frames fail the run (nothing is kept)."""
    uri = getattr(source, "uri", "input")
    truncated = getattr(source, "truncated", None)
    if truncated is not None:
        raise MediaError(f"{truncated.describe(uri)}; re-copy the file, or run without --strict "
                         f"to keep the frames that were decoded")
    if getattr(source, "skipped", 0):
        raise MediaError(f"{source.skipped} frames of input {uri!r} could not be decoded; repair or "
                         f"re-encode the input, or run without --strict to skip them")


def _raise_failed(prompts: Sequence[concurrent.futures.Future]) -> None:
    for future in prompts:
        if future.done() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
