"""The live runtime's parts, each on its own: the frame queue, the latest-frame relay, the threaded
sink, the stage histogram, a stream's failure states, clicks on frames that never arrived, and
close()'s drain (flush, abandon).  Event waits, no sleeps; stages that block wait on events."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from unseen.engine.backends.registry import BackendOptions
from unseen.engine.media import StreamInfo
from unseen.engine.pipeline import OutputFrame, PipelineConfig, StageTimes
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame
from unseen.engine.synthetic import interior_point, make_clip
from unseen.server import config as cfg
from unseen.server.live import FrameQueue, LatestRelay, LiveStream, StreamError, ThreadedSink, View
from unseen.server.metrics import Metrics

pytestmark = pytest.mark.timeout(60)

W, H = 192, 112
CLASSICAL = {"segmenter": "classical", "propagator": "classical", "inpainter": "classical"}


def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll a state another thread changes (no event to wait on), up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.01)


def settings(**kw) -> cfg.Settings:
    return cfg.Settings(**{"backends": CLASSICAL, "demo": False, "delay": 2, **kw})


INFO = StreamInfo(4, 4, Fraction(25), Fraction(1, 90000), None, False)


@pytest.fixture(autouse=True)
def loop():
    """The event loop a stream publishes its views to (nobody runs it here); closed after the test."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def output(i: int) -> OutputFrame:
    frame = Frame(i, np.zeros((4, 4, 3), np.uint8), pts=i, time_base=Fraction(1, 90000))
    return OutputFrame(frame, frame.image, {})


class StubPipeline:
    """What LiveStream needs of a pipeline; ``step`` is given per test.  No delay line (D = 0)."""

    delay = 0

    def __init__(self, step) -> None:
        self._step = step
        self.times = StageTimes()
        self.objects: dict = {}
        self.visible_masks: dict = {}
        self.frames_out = 0

    def step(self, frame: Frame, hurry: bool = False) -> list[OutputFrame]:
        outs = self._step(self, frame)
        self.frames_out += len(outs)
        return outs

    def flush(self) -> list[OutputFrame]:
        return []

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"frames_out": self.frames_out}


def webcam(loop, pipeline=None) -> LiveStream:
    """A stream fed through ``feed`` (not started: the test decides when the worker runs)."""
    return LiveStream("cam", None, settings(), Metrics(), loop, pipeline=pipeline)


# ------------------------------------------------------------------------------ FrameQueue
@pytest.mark.parametrize("maxlen, puts, kept, dropped", [(3, 2, [0, 1], 0), (3, 3, [0, 1, 2], 0),
                                                         (3, 5, [2, 3, 4], 2), (1, 4, [3], 3)])
def test_frame_queue_is_bounded_and_drops_the_oldest(maxlen, puts, kept, dropped):
    q: FrameQueue[int] = FrameQueue(maxlen)
    flags = [q.put(i) for i in range(puts)]
    assert len(q) == len(kept) and q.dropped == dropped and sum(flags) == dropped
    assert [q.get(0) for _ in kept] == kept
    assert q.get(0.01) is None  # empty: None once the timeout passed


def test_frame_queue_close_wakes_a_waiting_reader_and_refuses_more():
    q: FrameQueue[int] = FrameQueue(2)
    got, waiting = [], threading.Event()

    def reader():
        waiting.set()
        got.append(q.get(30))

    t = threading.Thread(target=reader)
    t.start()
    waiting.wait(5)
    q.close()
    t.join(5)
    assert not t.is_alive() and got == [None]
    assert q.put(1) is False and len(q) == 0  # closed: takes nothing


def test_frame_queue_close_keeps_what_is_queued():
    q: FrameQueue[int] = FrameQueue(3)
    q.put(1)
    q.close()
    assert q.get(5) == 1 and q.get(5) is None


# ------------------------------------------------------------------------------ LatestRelay
def view(i: int) -> View:
    return View(np.zeros((2, 2, 3), np.uint8), i, i, 0.0, False)


def test_latest_relay_a_slow_reader_skips_to_the_newest_and_close_wakes_readers():
    async def body():
        relay = LatestRelay(asyncio.get_running_loop())
        for i in range(1, 4):
            relay.publish(view(i))
        seq, item = await asyncio.wait_for(relay.next(0), 5)
        assert (seq, item.index) == (3, 3)  # the newest only: 1 and 2 skipped
        waiting = asyncio.ensure_future(relay.next(seq))
        await asyncio.sleep(0)  # let it start waiting
        assert not waiting.done()
        relay.publish(None)
        seq, item = await asyncio.wait_for(waiting, 5)
        assert item is None and relay.closed
        assert (await asyncio.wait_for(relay.next(0), 5))[1] is None  # closed: every reader returns at once
    asyncio.run(body())


# ------------------------------------------------------------------------------ ThreadedSink
class FakeSink:
    """Records writes; a write can block on ``gate``; ``fail`` holds indices whose write raises."""

    def __init__(self, gate: threading.Event | None = None, fail: tuple[int, ...] = ()) -> None:
        self.gate, self.fail = gate, fail
        self.entered = threading.Event()
        self.written: list[int] = []
        self.writing = False
        self.closed_while_writing: bool | None = None

    def write(self, out: OutputFrame) -> None:
        self.writing = True
        self.entered.set()
        try:
            if self.gate is not None:
                self.gate.wait(30)
            if out.frame.index in self.fail:
                raise OSError(f"disk full at frame {out.frame.index}")
            self.written.append(out.frame.index)
        finally:
            self.writing = False

    def close(self, keep: bool = True) -> None:
        self.closed_while_writing = self.writing


def test_threaded_sink_bounded_under_a_slow_sink_and_never_closed_under_a_write():
    gate = threading.Event()
    fake = FakeSink(gate)
    sink = ThreadedSink("slow", lambda info: fake, maxlen=3)
    sink.start(INFO)
    sink.write(output(0))
    assert fake.entered.wait(5)  # frame 0 is being written, the sink blocks
    for i in range(1, 10):
        sink.write(output(i))
    assert sink.pending == 3 and sink.dropped == 6  # frames 1-6 dropped, the newest 7-9 kept
    assert sink.close(timeout=0.05) is False  # still writing: not closed under it
    assert fake.closed_while_writing is None
    gate.set()
    assert sink.close(timeout=10) is True
    assert fake.written == [0, 7, 8, 9] and sink.written == 4
    assert fake.closed_while_writing is False  # closed once, after its last write


def test_threaded_sink_a_failing_write_is_reported_and_the_thread_goes_on():
    fake = FakeSink(fail=(1,))
    sink = ThreadedSink("rec", lambda info: fake)
    sink.start(INFO)
    for i in range(4):
        sink.write(output(i))
    assert sink.close(timeout=10) is True
    assert fake.written == [0, 2, 3] and sink.written == 3
    assert sink.error == "disk full at frame 1"


def test_threaded_sink_a_failing_factory_is_reported():
    def factory(info):
        raise ValueError("cannot write /nowhere/x.mp4")

    sink = ThreadedSink("rec", factory)
    sink.start(INFO)
    sink.write(output(0))
    assert sink.close(timeout=10) is True
    assert sink.error == "cannot write /nowhere/x.mp4"


# ------------------------------------------------------------------------------ stage histogram
def test_stage_times_keep_each_call_bounded_and_drain():
    times = StageTimes()
    for ms in (0.5, 900.0, 3.0):
        times.add("inpaint", ms / 1000)
    assert [(s.stage, round(s.ms, 6)) for s in times.drain()] == [("inpaint", 0.5), ("inpaint", 900.0),
                                                                   ("inpaint", 3.0)]
    assert times.drain() == [] and times.counts["inpaint"] == 3
    for _ in range(times.recent.maxlen + 10):
        times.add("segment", 0.001)
    assert len(times.drain()) == times.recent.maxlen  # bounded: the oldest dropped


def test_the_stage_histogram_records_each_calls_own_time(loop):
    """Calls of 0.5 ms and 900 ms: each lands in its own bucket (averages would put all near 450 ms)."""
    n = 6
    stepped = threading.Event()

    def step(p, frame):
        p.times.add("inpaint", 0.0005 if p.times.counts.get("inpaint", 0) % 2 == 0 else 0.9)
        if p.times.counts["inpaint"] == n:
            stepped.set()
        return []

    stream = webcam(loop, StubPipeline(step))
    for _ in range(n):
        stream.feed(np.zeros((H, W, 3), np.uint8), None)
    stream.start()
    assert stepped.wait(10)
    stream.close()
    value = stream.metrics.registry.get_sample_value
    assert value("unseen_stage_ms_bucket", {"stage": "inpaint", "le": "1.0"}) == n / 2
    assert value("unseen_stage_ms_bucket", {"stage": "inpaint", "le": "500.0"}) == n / 2
    assert value("unseen_stage_ms_count", {"stage": "inpaint"}) == n
    assert value("unseen_stage_ms_sum", {"stage": "inpaint"}) == pytest.approx(n / 2 * 900.5)


# ------------------------------------------------------------------------------ failures
LEAKS = ("does not exist", "File name too long", "Errno", "ZeroDivision", "positive size")


@pytest.mark.parametrize("fields, state", [
    ({"uri": "synthetic://cam", "fps": 0}, "failed"),
    ({"uri": "synthetic://cam", "width": -10}, "failed"),
    ({"uri": "synthetic://cam", "width": 0}, "failed"),
    ({"uri": "/" + "x" * 65000}, "failed"),  # the OS refuses the path: not a MediaError
    ({"uri": "/no/such/file.mp4"}, "connecting"),  # retried; the reply does not say the file is missing
])
def test_a_source_that_cannot_start_reports_it_generically(loop, fields, state, caplog):
    # model_construct: the stream must not depend on the config's bounds
    source = cfg.SourceConfig.model_construct(**{**cfg.SourceConfig(name="cam", uri="x").model_dump(), **fields})
    stream = LiveStream("cam", source, settings(), Metrics(), loop,
                        pipeline=StubPipeline(lambda p, f: []))
    with caplog.at_level(logging.WARNING, logger="unseen.live"):
        stream.start()
        try:
            wait_until(lambda: stream.state == state, 10, f"state {state}")
            error = stream.describe()["error"]
            assert error and "server log" in error and ";" in error and "\n" not in error
            assert not any(leak in error for leak in LEAKS), error
            assert any("cam" in r.getMessage() or r.exc_info for r in caplog.records)  # the cause is logged
        finally:
            stream.close(timeout=5)
    assert stream.state == "closed"


def test_an_error_escaping_the_worker_loop_fails_the_stream(loop):
    stream = webcam(loop, StubPipeline(lambda p, f: [object()]))  # an output the worker cannot deliver
    stream.start()
    stream.feed(np.zeros((H, W, 3), np.uint8), None)
    wait_until(lambda: stream.state == "failed", 10, "state failed")
    assert stream.describe()["error"] == "processing failed; check the server log"
    with pytest.raises(StreamError, match="has failed; remove it") as info:
        asyncio.run(stream.click(5, 5))
    assert info.value.status == 409
    stream.close(timeout=5)


def test_a_failing_frame_is_skipped_and_the_stream_goes_on(loop):
    def step(p, frame):
        if frame.pts == 0:
            raise ValueError("bad frame")
        return [OutputFrame(frame, frame.image, {})]

    stream = webcam(loop, StubPipeline(step))
    stream.start()
    for _ in range(3):
        stream.feed(np.zeros((H, W, 3), np.uint8), None)
    wait_until(lambda: stream.pipeline.frames_out == 2, 10, "two frames out")
    assert stream.state == "running" and "processing a frame failed (ValueError)" in stream.last_error
    stream.close(timeout=5)


# ------------------------------------------------------------------------------ clicks on future frames
@pytest.fixture(scope="module")
def scene():
    return make_clip(40, W, H, seed=3, pan=(0.0, 0.0), rate=Fraction(15))


async def play(stream: LiveStream, frames: list, start: int, done) -> None:
    """Feed the scene (ping-pong) at about 50 fps from frame ``start`` until ``done()``."""
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    i = start
    while not done():
        stream.feed(frames[order[i % len(order)]], None)
        i += 1
        await asyncio.sleep(0.02)


def test_clicks_on_frames_not_received_are_refused_at_once_queued_ones_wait(loop, scene):
    pipeline = build_pipeline(Backends("classical", "classical", "classical"), BackendOptions(),
                              PipelineConfig(delay=2, history=2, segment_async=True))
    stream = webcam(loop, pipeline)
    for image in scene.frames[:6]:
        stream.feed(image, None)  # queued: the worker has not started
    newest = stream.newest_frame
    assert (newest.index, pipeline.head) == (5, -1)

    async def body():
        for kw, fragment in [({"frame": 10 ** 12}, "frame 1000000000000 is beyond the newest frame (5)"),
                             ({"frame": 6}, "beyond the newest frame (5)"),
                             ({"pts": 10 ** 30}, f"beyond the newest frame's pts ({newest.pts})")]:
            with pytest.raises(StreamError) as info:
                await stream.click(*interior_point(scene.masks[5]), **kw)
            assert info.value.status == 400 and fragment in str(info.value) and "\n" not in str(info.value)
        # frame 5 was received, not stepped: the click waits for it, and is applied once it is stepped
        queued = asyncio.ensure_future(stream.click(*interior_point(scene.masks[5]), frame=5, timeout=30))
        await asyncio.sleep(0)
        assert not queued.done()
        stream.start()
        await play(stream, scene.frames, 6, queued.done)
        first = await queued
        # frame 0 left the history (2 frames, the inpainter's past): the click moves to the oldest held frame
        await play(stream, scene.frames, 12, lambda: pipeline.head >= 30)
        late = asyncio.ensure_future(stream.click(*interior_point(scene.masks[31]), frame=0, object_id=first,
                                                  timeout=30))
        await play(stream, scene.frames, 31, late.done)
        return first, await late

    first, late = asyncio.run(asyncio.wait_for(body(), 50))
    assert first == late == 1 and pipeline.objects[1].prompt_frame > 0
    stream.close(timeout=5)


# ------------------------------------------------------------------------------ close: drain and abandon
def test_close_flushes_the_delay_line_into_a_playable_recording(loop, tmp_path):
    from unseen.engine.media import probe

    record = tmp_path / "cam.mp4"
    source = cfg.SourceConfig(name="cam", uri="synthetic://cam", loop=True, width=W, height=H, fps=30)
    stream = LiveStream("cam", source, settings(delay=3), Metrics(), loop,
                        outputs=cfg.OutputConfig(record=str(record))).start()
    wait_until(lambda: stream.pipeline.frames_out >= 8, 30, "8 frames out")
    report = stream.close(timeout=10)
    assert not report.abandoned and report.flushed == 3  # the D frames held
    assert stream.close() == report  # idempotent
    assert probe(record)["frames"] == stream.pipeline.frames_out == stream.pipeline.frames_in
    stream.feed(np.zeros((H, W, 3), np.uint8), None)  # intake stopped: ignored
    assert stream.pipeline.frames_in == stream.pipeline.frames_out


def test_close_abandons_a_step_that_outlasts_the_timeout(loop, tmp_path):
    from unseen.engine.media import probe

    record = tmp_path / "cam.mp4"
    entered, release = threading.Event(), threading.Event()

    def step(p, frame):
        if frame.pts > 0:  # the second frame's step hangs
            entered.set()
            release.wait(30)
        return [OutputFrame(frame, frame.image, {})]

    stream = LiveStream("cam", None, settings(), Metrics(), loop, pipeline=StubPipeline(step),
                        outputs=cfg.OutputConfig(record=str(record))).start()
    try:
        for i in range(2):
            stream.feed(np.full((H, W, 3), 40 * i, np.uint8), None)
        assert entered.wait(10)
        t0 = time.monotonic()
        report = stream.close(timeout=1.0)
        took = time.monotonic() - t0
    finally:
        release.set()
    assert report.abandoned and report.flushed == 0 and took < 3.0
    assert stream.state == "closed"
    assert probe(record)["frames"] == 1  # what it had: the frame out before the step that hung


@pytest.mark.parametrize("runtime", ["pipelined", "sequential"])
def test_a_stream_runs_on_the_runtime_in_either_mode(loop, runtime):
    stream = LiveStream("cam", None, settings(runtime=runtime), Metrics(), loop,
                        pipeline=StubPipeline(lambda p, f: [OutputFrame(f, f.image, {})])).start()
    assert stream.session.config.mode.value == runtime
    for i in range(3):
        stream.feed(np.full((H, W, 3), i, np.uint8), None)
    wait_until(lambda: stream.pipeline.frames_out == 3, 10, "three frames out")
    report = stream.close(timeout=5)
    assert not report.abandoned and report.discarded == 0 and stream.state == "closed"
    assert stream.describe()["queue_policy"] == "drop-oldest"


def test_frames_after_the_publisher_left_start_a_new_epoch(loop):
    """A publisher that leaves and one that comes (the same stream): the pipeline sees the break as a new
    Frame.epoch, so the objects are found again instead of followed by motion across it."""
    epochs = []

    def step(p, frame):
        epochs.append(frame.epoch)
        return [OutputFrame(frame, frame.image, {})]

    stream = webcam(loop, StubPipeline(step)).start()
    try:
        for i in range(2):
            stream.feed(np.full((H, W, 3), i, np.uint8), None)
        stream.publisher_left()
        for i in range(3):
            stream.feed(np.full((H, W, 3), i, np.uint8), None)
        wait_until(lambda: len(epochs) == 5, 10, "five frames through the pipeline")
        assert epochs == [0, 0, 1, 1, 1]
    finally:
        stream.close(timeout=5)
