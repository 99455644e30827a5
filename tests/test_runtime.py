"""The stream runtime (engine/runtime.py): pipelined output == sequential output, bounded queues under a
slow sink and a slow stage, close() never flushes while a worker runs, and its parts."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from fractions import Fraction

import cv2
import numpy as np
import pytest

from unseen.engine.backends.registry import BackendOptions
from unseen.engine.media import Source
from unseen.engine.pipeline import OutputFrame, PipelineConfig, StageTimes
from unseen.engine.runtime import (BoundedQueue, DeviceContext, Mode, Policy, QueueSource, RuntimeConfig,
                                   SinkFanout, StepOnly, StreamSession, ThreadSettings)
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame

CLASSICAL = Backends("classical", "classical", "classical")


def until(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (a deadline, not a pause)."""
    deadline = time.monotonic() + timeout
    wake = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        wake.wait(0.002)
    return True


class ListSink:
    def __init__(self) -> None:
        self.outputs: list[OutputFrame] = []
        self.closed: list[bool] = []

    def write(self, output: OutputFrame) -> None:
        self.outputs.append(output)

    def close(self, *, keep: bool = True) -> None:
        self.closed.append(keep)


def frames_of(images, rate=Fraction(1, 25)) -> list[Frame]:
    return [Frame(i, img, pts=i, time_base=rate) for i, img in enumerate(images)]


def run_mode(images, mode: Mode, click, delay=None) -> list[OutputFrame]:
    pipeline = build_pipeline(CLASSICAL, BackendOptions(), PipelineConfig(delay=delay))
    future = pipeline.click(*click, frame_index=0)
    sink = ListSink()
    result = StreamSession(frames_of(images), pipeline, [sink], config=RuntimeConfig(mode=mode)).run(
        prompts=[future])
    assert future.result(timeout=0) == 1
    assert result.frames_in == result.frames_out == len(images) == len(sink.outputs)
    assert sink.closed == [True]
    return sink.outputs


def assert_identical(a: list[OutputFrame], b: list[OutputFrame]) -> None:
    assert [o.frame.index for o in a] == [o.frame.index for o in b] == list(range(len(a)))
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image), f"frame {x.frame.index} differs"
        assert x.masks.keys() == y.masks.keys()
        assert all(np.array_equal(x.masks[k], y.masks[k]) for k in x.masks)
        assert (x.degraded, x.tracking) == (y.degraded, y.tracking)


# ------------------------------------------------------------------------------ same output
def test_pipelined_output_equals_sequential_on_the_synthetic_clip(clip):
    click = clip.click(0)
    seq = run_mode(clip.frames[:30], Mode.SEQUENTIAL, click, delay=5)
    pip = run_mode(clip.frames[:30], Mode.PIPELINED, click, delay=5)
    assert sum(bool(o.masks.get(1, np.zeros(1)).any()) for o in seq) >= 25  # the object is tracked and removed
    assert_identical(seq, pip)


def test_pipelined_output_equals_sequential_on_a_real_clip(shared_data):
    video = shared_data / "dog-walk-720p" / "01_dog.mp4"
    if not video.exists():
        pytest.skip(f"{video} not found")
    with Source(video) as src:
        images = [cv2.resize(f.image, (432, 240), interpolation=cv2.INTER_AREA) for f, _ in zip(src, range(40))]
    click = (0.27 * 432, 0.55 * 240)  # the woman
    seq = run_mode(images, Mode.SEQUENTIAL, click, delay=12)
    pip = run_mode(images, Mode.PIPELINED, click, delay=12)
    assert sum(o.masks[1].mean() > 0.01 for o in seq) >= 30
    assert_identical(seq, pip)


def _band_threads(monkeypatch) -> list[str]:
    """The workers the band under an object (engine/holes.py) is searched on, one entry per search."""
    import unseen.engine.window as window

    threads: list[str] = []
    build = window.below_object

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name.split("-")[1])
        return build(*args, **kwargs)

    monkeypatch.setattr(window, "below_object", spy)
    return threads


def test_the_holes_are_built_on_the_emit_worker_while_it_keeps_up(clip, monkeypatch):
    """The band under a removed object and its missed rim cost a quarter of a tracked step: pipelined, they
    are built when the emitter first asks for a frame's hole, on its own worker (the same output: the
    tests above).  Here the tracker never runs more than two jobs ahead, so the queue between them never
    fills and the tracker never builds one."""
    from unseen.engine.pipeline import Pipeline

    threads = _band_threads(monkeypatch)
    in_flight = threading.Semaphore(2)
    track, emit = Pipeline.track, Pipeline.emit

    def paced_track(self, frame, **kwargs):
        jobs = track(self, frame, **kwargs)
        for _ in jobs:
            assert in_flight.acquire(timeout=30)
        return jobs

    def counted_emit(self, job):
        out = emit(self, job)
        in_flight.release()
        return out

    monkeypatch.setattr(Pipeline, "track", paced_track)
    monkeypatch.setattr(Pipeline, "emit", counted_emit)
    outputs = run_mode(clip.frames[:30], Mode.PIPELINED, clip.click(0), delay=5)
    assert sum(bool(o.masks.get(1, np.zeros(1)).any()) for o in outputs) >= 25
    assert len(threads) >= 25 and set(threads) == {"emit"}, sorted(set(threads))


def test_the_tracker_builds_the_holes_while_the_emitter_is_behind(clip, monkeypatch):
    """The emitter held back until the queue between it and the tracker is full: the tracker builds the
    holes of the job it would wait to hand over (``Pipeline.ahead``), and the output is still exactly the
    sequential one."""
    from unseen.engine.pipeline import Pipeline

    click = clip.click(0)
    seq = run_mode(clip.frames[:30], Mode.SEQUENTIAL, click, delay=5)
    threads = _band_threads(monkeypatch)
    release = threading.Event()
    ahead, emit = Pipeline.ahead, Pipeline.emit

    def ahead_then_release(self, job):
        ahead(self, job)
        release.set()  # the emitter goes on once the tracker has built one job's holes

    def held_emit(self, job):
        assert release.wait(30), "the tracker never built a job's holes ahead"
        return emit(self, job)

    monkeypatch.setattr(Pipeline, "ahead", ahead_then_release)
    monkeypatch.setattr(Pipeline, "emit", held_emit)
    pip = run_mode(clip.frames[:30], Mode.PIPELINED, click, delay=5)
    assert_identical(seq, pip)
    assert "track" in threads, sorted(set(threads))


# ------------------------------------------------------------------------------ stubs
class StubPhases:
    """A two-phase pipeline with a delay of ``delay`` frames; ``emit`` may wait on ``emit_gate``."""

    def __init__(self, delay: int = 2) -> None:
        self.delay = delay
        self.times = StageTimes()
        self.frames_in = self.frames_out = self.degraded = 0
        self.head = -1
        self.next_out = 0
        self.tracking = threading.Event()  # set while track() runs
        self.track_gate: threading.Event | None = None
        self.emit_gate: threading.Event | None = None
        self.finish_calls: list[bool] = []  # per call: was a track running?
        self.closed = 0

    def track(self, frame: Frame, *, hurry=False) -> list[int]:
        self.tracking.set()
        try:
            if self.track_gate is not None:
                self.track_gate.wait(30)
            self.head += 1
            frame.index = self.head  # the pipeline's own clock
            self.frames_in += 1
            jobs = []
            if self.head - self.next_out >= self.delay:
                jobs.append(self.next_out)
                self.next_out += 1
            return jobs
        finally:
            self.tracking.clear()

    def finish(self) -> list[int]:
        self.finish_calls.append(self.tracking.is_set())
        jobs = list(range(self.next_out, self.head + 1))
        self.next_out = self.head + 1
        return jobs

    def emit(self, index: int) -> OutputFrame:
        if self.emit_gate is not None:
            self.emit_gate.wait(30)
        self.frames_out += 1
        image = np.full((4, 4, 3), index % 256, np.uint8)
        return OutputFrame(Frame(index, image), image, {})

    def close(self) -> None:
        self.closed += 1


def endless():
    i = 0
    while True:
        yield Frame(i, np.zeros((4, 4, 3), np.uint8))
        i += 1


class CountingSource:
    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.pulled = 0
        self.closed = 0

    def __iter__(self):
        while self.n is None or self.pulled < self.n:
            self.pulled += 1
            yield Frame(self.pulled - 1, np.zeros((4, 4, 3), np.uint8))

    def close(self) -> None:
        self.closed += 1


class GatedSink(ListSink):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, output: OutputFrame) -> None:
        self.entered.set()
        self.gate.wait(30)
        super().write(output)


def queues(session: StreamSession):
    return (session.frames, session.jobs, session.outputs)


# ------------------------------------------------------------------------------ bounded queues
def test_every_queue_stays_bounded_under_a_slow_sink():
    source, sink = CountingSource(), GatedSink()
    session = StreamSession(source, StubPhases(), [sink], config=RuntimeConfig(queue_items=3)).start()
    assert sink.entered.wait(10)
    # back-pressure: every queue fills to its bound, then decoding stops
    assert until(lambda: all(len(q) == q.maxlen for q in queues(session)))
    held = 3 * 3 + 2 + 4  # three full queues, the delay line, one item in each of decode/track/emit/write
    assert until(lambda: source.pulled == held)
    assert not until(lambda: source.pulled > held, timeout=0.2)  # nothing more is decoded meanwhile
    sink.gate.set()
    session.close(timeout=10)
    assert all(q.high_water <= q.maxlen for q in queues(session))
    assert all(q.dropped == 0 for q in queues(session))  # block policy: nothing lost


def test_every_queue_stays_bounded_under_a_slow_stage():
    phases = StubPhases(delay=1)
    phases.emit_gate = threading.Event()
    source, sink = CountingSource(), ListSink()
    session = StreamSession(source, phases, [sink], config=RuntimeConfig(queue_items=2)).start()
    held = 2 + 2 + 1 + 3  # two full queues, the delay line, one item in each of decode/track/emit
    assert until(lambda: len(session.frames) == 2 and len(session.jobs) == 2 and source.pulled == held)
    assert not until(lambda: source.pulled > held, timeout=0.2)  # nothing more is decoded meanwhile
    assert len(sink.outputs) == 0 and len(session.outputs) == 0
    phases.emit_gate.set()
    assert until(lambda: len(sink.outputs) > 20)
    session.close(timeout=10)
    assert all(q.high_water <= q.maxlen for q in queues(session))


def test_a_live_source_drops_the_oldest_frames_and_counts_them():
    source = QueueSource(3)
    dropped = [source.push(Frame(-1, np.zeros((2, 2, 3), np.uint8), pts=i)) for i in range(5)]
    assert dropped == [False, False, False, True, True] and source.dropped == 2 and source.backlog == 3
    source.close()
    assert [f.pts for f in source] == [2, 3, 4]  # what was queued, then the end
    assert source.push(Frame(-1, np.zeros((2, 2, 3), np.uint8))) is False and source.backlog == 0


@pytest.mark.parametrize("mode", list(Mode))
def test_a_live_session_processes_pushed_frames_and_flushes_on_close(mode):
    source, sink = QueueSource(8), ListSink()
    phases = StubPhases(delay=2)
    session = StreamSession(source, phases, [sink], config=RuntimeConfig(mode=mode), name="cam").start()
    for i in range(5):
        source.push(Frame(-1, np.zeros((4, 4, 3), np.uint8), pts=i))
    assert until(lambda: phases.frames_in == 5)
    report = session.close(timeout=10)
    assert report.flushed == 2 and report.discarded == 0 and not report.abandoned
    assert [o.frame.index for o in sink.outputs] == [0, 1, 2, 3, 4] and sink.closed == [True]
    assert phases.finish_calls == [False] and phases.closed == 1


# ------------------------------------------------------------------------------ close
def _session_in_a_blocked_step(mode: Mode, delay: int):
    """A running session whose tracker is inside its first step, held there until ``phases.track_gate`` is set."""
    phases = StubPhases(delay=delay)
    phases.track_gate = threading.Event()
    source, sink = QueueSource(8), ListSink()
    session = StreamSession(source, phases, [sink], config=RuntimeConfig(mode=mode)).start()
    source.push(Frame(-1, np.zeros((4, 4, 3), np.uint8)))
    assert phases.tracking.wait(10)
    return phases, source, sink, session


@pytest.mark.parametrize("mode", list(Mode))
def test_close_waits_for_the_step_in_progress_then_flushes(mode):
    phases, source, sink, session = _session_in_a_blocked_step(mode, delay=2)
    source.push(Frame(-1, np.zeros((4, 4, 3), np.uint8)))  # queued when intake stops: not processed
    closer = threading.Thread(target=lambda: setattr(session, "report", session.close(timeout=30)))
    closer.start()
    assert until(lambda: session.stopping)
    assert phases.finish_calls == [] and not sink.closed  # nothing flushed or closed under the running step
    phases.track_gate.set()
    closer.join(10)
    assert phases.finish_calls == [False]  # the flush ran after the step, on the worker
    assert [o.frame.index for o in sink.outputs] == [0] and sink.closed == [True]
    assert session.report.flushed == 1 and session.report.discarded == 1 and not session.report.abandoned


@pytest.mark.parametrize("mode", list(Mode))
def test_close_abandons_a_step_that_outlasts_the_timeout_and_never_flushes(mode):
    phases, source, sink, session = _session_in_a_blocked_step(mode, delay=0)
    report = session.close(timeout=0.3)
    assert report.abandoned and sink.closed == [True] and phases.closed == 1
    phases.track_gate.set()  # the step finally ends: nothing is flushed or written after the close
    assert until(lambda: not session.running)
    assert phases.finish_calls == [] and sink.outputs == []
    assert session.close() is report  # idempotent


def test_a_failing_stage_fails_the_run_and_discards_the_output():
    class Failing(StubPhases):
        def emit(self, index):
            if index == 3:
                raise RuntimeError("inpainter exploded")
            return super().emit(index)

    sink = ListSink()
    with pytest.raises(RuntimeError, match="exploded"):
        StreamSession(CountingSource(10), Failing(), [sink]).run()
    assert sink.closed == [False]


# ------------------------------------------------------------------------------ parts
def test_bounded_queue_block_policy_waits_for_room_and_close_releases_the_producer():
    q: BoundedQueue[int] = BoundedQueue(2, Policy.BLOCK)
    q.put(0)
    q.put(1)
    done = threading.Event()
    producer = threading.Thread(target=lambda: (q.put(2), done.set()))
    producer.start()
    assert not done.wait(0.05) and len(q) == 2  # full: the producer waits
    assert q.get() == 0
    assert done.wait(10) and list(iter(lambda: q.get(0), None)) == [1, 2]
    q.put(3)
    q.put(4)
    late = threading.Thread(target=q.put, args=(5,))
    late.start()
    q.close()
    late.join(10)
    assert not late.is_alive() and q.high_water == 2 and q.dropped == 0
    assert [q.get(), q.get(), q.get()] == [3, 4, None]  # what was queued, then None (closed)


def test_bounded_queue_drop_oldest_counts_what_it_drops():
    q: BoundedQueue[int] = BoundedQueue(2, Policy.DROP_OLDEST)
    assert [q.put(i) for i in range(4)] == [False, False, True, True]
    assert q.dropped == 2 and q.high_water == 2 and [q.get(0), q.get(0), q.get(0)] == [2, 3, None]


def test_sink_fanout_writes_every_sink_in_order_and_closes_once():
    a, b = ListSink(), ListSink()
    fan = SinkFanout([a, b])
    outs = [StubPhases().emit(i) for i in range(3)]
    assert all(fan.write(o) for o in outs)
    fan.close(keep=False)
    fan.close(keep=True)
    assert a.outputs == b.outputs == outs and a.closed == b.closed == [False]
    assert fan.write(outs[0]) is False and len(a.outputs) == 3  # nothing after the close


def test_sink_fanout_closes_every_sink_and_raises_the_first_failure():
    class Broken(ListSink):
        def close(self, *, keep=True):
            super().close(keep=keep)
            raise OSError("disk full")

    a, b = Broken(), ListSink()
    with pytest.raises(OSError, match="disk full"):
        SinkFanout([a, b]).close()
    assert a.closed == b.closed == [True]


def test_tracer_writes_chrome_trace_events_and_busy_time(tmp_path):
    sink = ListSink()
    session = StreamSession(CountingSource(6), StubPhases(delay=1), [sink], config=RuntimeConfig(trace=True))
    result = session.run()
    path = tmp_path / "trace.json"
    session.tracer.write(path)
    events = json.loads(path.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in spans} >= {"decode", "track", "emit", "write", "flush"}
    assert all({"name", "ph", "ts", "dur", "pid", "tid"} <= e.keys() and e["dur"] >= 0 for e in spans)
    assert len({e["tid"] for e in spans}) == 4  # one thread per worker
    assert result.workers["emit"].calls == 6 and result.workers["track"].calls == 7  # 6 frames + the flush
    assert 0 <= result.workers["emit"].utilisation <= 1


class PreparingPhases(StubPhases):
    """Records which worker prepared each frame, and whether it was prepared before it was tracked."""

    def __init__(self) -> None:
        super().__init__(delay=1)
        self.prepared: list[tuple[int, str]] = []
        self.tracked_unprepared: list[int] = []

        self.work: list[bool] = []

    def prepare(self, frame: Frame, *, work: bool = True) -> None:
        self.prepared.append((id(frame), threading.current_thread().name))
        self.work.append(work)

    def track(self, frame: Frame, *, hurry=False) -> list[int]:
        if id(frame) not in {p for p, _ in self.prepared}:
            self.tracked_unprepared.append(frame.index)
        return super().track(frame, hurry=hurry)


@pytest.mark.parametrize("mode", list(Mode))
def test_each_frame_is_prepared_before_it_is_tracked_on_the_decoding_worker(mode):
    phases = PreparingPhases()
    session = StreamSession(CountingSource(8), phases, [ListSink()], config=RuntimeConfig(mode=mode, trace=True))
    result = session.run()
    assert len(phases.prepared) == 8 and phases.tracked_unprepared == []
    worker = "decode" if mode is Mode.PIPELINED else "sequential"
    assert {name.split("-")[1] for _, name in phases.prepared} == {worker}
    assert "prepare" in {e.name for e in session.tracer.events}
    if mode is Mode.PIPELINED:  # the decoding worker's busy time includes it; its calls are the frames
        assert result.workers["decode"].calls == 9  # 8 frames + the end of the source
    else:
        assert result.workers["prepare"].calls == 8


@pytest.mark.parametrize("mode", list(Mode))
def test_a_live_stream_behind_only_notes_the_frames_it_would_prepare(mode):
    """Paced (live): with PREPARE_BACKLOG or more frames waiting (the stale-mask level, whose steps read no
    flow) frames are only noted; with fewer they are prepared, so the cheap fill and the reduced step find
    their flows computed off the tracker; a file (no pace) prepares every frame."""
    from unseen.engine.degrade import LadderConfig, Level
    from unseen.engine.runtime import PREPARE_BACKLOG

    assert PREPARE_BACKLOG == LadderConfig().stale_masks.enter > LadderConfig().reduced_tracking.enter
    config = RuntimeConfig(mode=mode)
    n = PREPARE_BACKLOG + config.queue_items + 2
    source = QueueSource(2 * n)
    for i in range(n):  # queued before the session starts: frame i is decoded with n - 1 - i behind it in the source
        source.push(Frame(-1, np.zeros((4, 4, 3), np.uint8), pts=i))
    source.close()
    phases = PreparingPhases()
    StreamSession(source, phases, [ListSink()], config=config, pace=lambda backlog: Level.FULL).run()
    assert len(phases.work) == n and phases.tracked_unprepared == []
    behind = [i for i in range(n) if n - 1 - i >= PREPARE_BACKLOG]  # at least that many waiting
    # fewer waiting, even counting a full queue between the decoding worker and the tracker
    clear = [i for i in range(n) if n - 1 - i + config.queue_items < PREPARE_BACKLOG]
    assert behind and clear
    assert [phases.work[i] for i in behind] == [False] * len(behind)
    assert [phases.work[i] for i in clear] == [True] * len(clear)
    phases = PreparingPhases()  # a file: every frame
    StreamSession(CountingSource(6), phases, [ListSink()], config=RuntimeConfig(mode=mode)).run()
    assert phases.work == [True] * 6


def test_thread_settings_are_applied_and_stated():
    before, switch = cv2.getNumThreads(), sys.getswitchinterval()
    try:
        state = ThreadSettings(opencv=1, switch_interval=0.002).apply()
        assert state["opencv"] == cv2.getNumThreads() == 1
        assert state["switch_interval_ms"] == 2.0 and sys.getswitchinterval() == pytest.approx(0.002)
        sys.setswitchinterval(0.004)
        state = ThreadSettings(switch_interval=None).apply()  # None: left as it is
        assert state["switch_interval_ms"] == 4.0 and state["opencv"] == 1
    finally:
        cv2.setNumThreads(before)
        sys.setswitchinterval(switch)


def test_a_session_runs_with_the_stated_thread_settings():
    """Every stream applies the default settings: the GIL switch interval the tracker is tuned for, and
    OpenCV on one thread per call (the workers are the parallelism), in both modes."""
    from unseen.engine.streams import OPENCV_THREADS, SWITCH_INTERVAL

    switch, cv_threads = sys.getswitchinterval(), cv2.getNumThreads()
    try:
        for mode in Mode:
            sys.setswitchinterval(0.005)
            cv2.setNumThreads(2)
            session = StreamSession(CountingSource(3), StubPhases(), [ListSink()], config=RuntimeConfig(mode=mode))
            session.run()
            assert session.threads["switch_interval_ms"] == SWITCH_INTERVAL * 1000
            assert session.threads["opencv"] == OPENCV_THREADS == cv2.getNumThreads() == 1
            assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(switch)
        cv2.setNumThreads(cv_threads)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_workers_upstream_of_the_emitter_yield_the_cpu_to_it():
    """Drained downstream first: the decoder and the tracker run at a lower priority than the emitter and
    the writer (the emitter is the slowest worker; the others wait for room in its queue anyway).  The
    sequential mode's one thread keeps the process's priority; both modes state the table."""
    from unseen.engine.streams import WORKER_NICE

    class Phases(StubPhases):
        def track(self, frame, *, hurry=False):
            seen["track"] = _nice()
            return super().track(frame, hurry=hurry)

        def emit(self, index):
            seen["emit"] = _nice()
            return super().emit(index)

    class Source(CountingSource):
        def __iter__(self):
            for frame in super().__iter__():
                seen["decode"] = _nice()
                yield frame

    class Sink(ListSink):
        def write(self, output):
            seen["write"] = _nice()
            super().write(output)

    base = _nice()
    for mode in Mode:
        seen: dict[str, int] = {}
        session = StreamSession(Source(5), Phases(), [Sink()], config=RuntimeConfig(mode=mode))
        session.run()
        assert session.threads["worker_nice"] == dict(WORKER_NICE)
        if mode is Mode.SEQUENTIAL:
            assert set(seen.values()) == {base}, seen
        else:
            assert seen["emit"] == seen["write"] == base, seen
            assert base < seen["track"] < seen["decode"], seen
            assert {w: seen[w] - base for w in ("decode", "track")} == \
                {w: min(19 - base, inc) for w, inc in WORKER_NICE}
    assert _nice() == base  # the caller's thread is left as it was


def test_a_worker_whose_priority_cannot_be_lowered_runs_on(monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)  # (a sandbox's seccomp filter)
    sink = ListSink()
    session = StreamSession(CountingSource(5), StubPhases(), [sink], config=RuntimeConfig(mode=Mode.PIPELINED))
    session.run()
    assert session.error is None and len(sink.outputs) == 5


def test_the_cpu_device_context_is_a_no_op_on_the_same_path():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    with DeviceContext("cpu") as ctx:
        assert ctx.to_device(image) is image and ctx.stream is None
        ctx.handoff()


def test_a_step_only_pipeline_runs_through_the_same_runtime():
    class StepPipeline(StubPhases):
        def step(self, frame, hurry=False):
            return [self.emit(i) for i in self.track(frame)]

        def flush(self):
            return [self.emit(i) for i in self.finish()]

    stub = StepPipeline(delay=1)
    phases = StepOnly(stub)
    assert [o.frame.index for o in phases.track(Frame(0, np.zeros((4, 4, 3), np.uint8)))] == []
    sink = ListSink()
    StreamSession(CountingSource(5), StepPipeline(delay=1), [sink]).run()
    assert [o.frame.index for o in sink.outputs] == list(range(5))


class OnDevice:
    def __init__(self, device) -> None:
        self.device = device


@pytest.mark.parametrize("stages, config, expected", [
    (("cpu", "cpu", "cpu"), None, "cpu"),
    ((None, "cpu", "cuda:1"), None, "cuda:1"),  # a pipeline without a segmenter (given masks)
    (("cuda", "cuda", "cuda"), None, "cuda"),
    (("cuda", "cuda", "cuda"), "cpu", "cpu"),  # the config's device, when given, wins
])
def test_the_workers_run_where_the_pipelines_stages_run(stages, config, expected):
    """Each worker's device context follows the stages' device (a CUDA stream per worker on a GPU) unless
    the runtime's config names one: every entry point (file, live, API, benchmark) gets it without saying."""
    pipeline = build_pipeline(CLASSICAL, BackendOptions(), PipelineConfig())
    for attr, device in zip(("segmenter", "propagator", "inpainter"), stages):
        setattr(pipeline, attr, None if device is None else OnDevice(device))
    session = StreamSession([], pipeline, [], config=RuntimeConfig(device=config))
    assert session.device == expected


def test_classical_stages_run_on_the_cpu():
    pipeline = build_pipeline(CLASSICAL, BackendOptions(), PipelineConfig())
    assert pipeline.device == "cpu" and StreamSession([], pipeline, []).device == "cpu"


def test_the_cuda_device_context_runs_on_its_own_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    with DeviceContext("cuda") as ctx:
        assert torch.cuda.current_stream() == ctx.stream
        tensor = ctx.to_device(image)
        ctx.handoff()
        assert tensor.is_cuda and np.array_equal(tensor.cpu().numpy(), image)
    assert torch.cuda.current_stream() != ctx.stream


def test_pipelined_stages_overlap_so_the_slowest_sets_the_rate():
    """Frame t+1 is tracked while frame t-D is emitted: with two stages of one step each, both are busy at once
    (sequentially they never are)."""
    both = threading.Event()

    class Overlap(StubPhases):
        def __init__(self, wait: float):
            super().__init__(delay=0)
            self.emitting = threading.Event()
            self.wait = wait

        def track(self, frame, *, hurry=False):
            if frame.index == 1:  # pipelined, frame 1 is tracked while frame 0 is emitted (waited for, not raced)
                self.emitting.wait(self.wait)
            if self.emitting.is_set():
                both.set()
            return super().track(frame, hurry=hurry)

        def emit(self, index):
            self.emitting.set()
            try:
                if index == 0:
                    both.wait(self.wait)  # pipelined: the first emit waits for a track beside it
                return super().emit(index)
            finally:
                self.emitting.clear()

    for mode, overlap, wait in ((Mode.SEQUENTIAL, False, 0), (Mode.PIPELINED, True, 30)):
        both.clear()
        sink = ListSink()
        StreamSession(CountingSource(8), Overlap(wait), [sink], config=RuntimeConfig(mode=mode)).run()
        assert both.is_set() is overlap and len(sink.outputs) == 8
