"""The live stream runner: one :class:`LiveStream` (the session of a live stream) per stream.

A stream owns its source, its pipeline, its publisher/recorder and its viewers:

* a **reader** thread decodes the source (RTSP pull, file, URL, ``synthetic://``) into a
  bounded :class:`FrameQueue` (policy: *drop-oldest*, counted); a browser webcam feeds the
  same queue through :meth:`LiveStream.feed`.  An RTSP source that drops or stalls is
  reopened with capped exponential backoff; the pipeline (its objects, its frame clock)
  is never restarted.  Timestamps are re-based onto one continuous 90 kHz stream clock.
* the frames go through engine/runtime.py's :class:`StreamSession` (the same runtime as files and
  benchmarks; pipelined: track and emit on their own workers, off the event loop), at the level of
  degradation engine/degrade.py's :class:`Ladder` picks from the frames waiting (cheap fill, then
  reduced tracking, then stale masks), so the output stays exactly D frames behind and frames
  out == frames in (drops happen before the pipeline and are counted separately).
* every output frame goes to :class:`LiveOutputs`: the sinks (each on its own thread, see
  :class:`ThreadedSink`) and a :class:`LatestRelay` from which every viewer takes the newest frame:
  a slow viewer skips frames, it never grows a queue or delays the others.
* the source's audio (server/audio.py :class:`LiveAudio`) is stamped on the same stream clock and held
  until the frame it belongs with is output: then it goes to the sinks (each writes it before its next
  frame, from its own drop-oldest queue) and to the viewers' audio tracks.  Audio never holds a frame back.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from unseen.engine.audio import AudioChunk
from unseen.engine.backends.registry import BackendOptions
from unseen.engine.degrade import DEGRADED_LEVELS, Ladder, Level
from unseen.engine.effects import Effect
from unseen.engine.media import RECONNECT_BACKOFF, FileSink, MediaError, Source, StreamInfo, is_network, redact
from unseen.engine.pipeline import OutputFrame, Pipeline, PipelineConfig, PromptError
from unseen.engine.runtime import BoundedQueue, CloseReport, Mode, QueueSource, RuntimeConfig, StreamSession
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Box, Click, Frame

from .audio import LiveAudio
from .config import OutputConfig, Settings, SourceConfig
from .metrics import Metrics

log = logging.getLogger("unseen.live")

CLOCK = 90000  # the stream clock: 90 kHz, as RTP video
TIME_BASE = Fraction(1, CLOCK)
READ_BACKOFF_MAX = 2.0  # a source's reopen backoff stays short: output is back within seconds of its return
AUDIO_SINK_ITEMS = 256  # audio chunks waiting for a publisher or recorder (about 5 s): drop-oldest
LIVE_QUEUE_ITEMS = 1  # between a live stream's workers: stages overlap, yet a frame waits behind one at most
WALL_OFFSET = time.time() - time.monotonic()  # monotonic -> wall clock (for glass-to-glass stats)
WHIP_URI = "whip://"  # a configured source that a WHIP publisher feeds (no reader; server/whip.py)


class StreamError(RuntimeError):
    """A request on a stream cannot be served (one line: cause and fix); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def frame_ticks(rate: Fraction | None) -> int:
    """One frame's length on the stream clock (25 fps when the rate is unknown)."""
    return round(CLOCK / rate) if rate else CLOCK // 25


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ----------------------------------------------------------------------------- queues/relays
FrameQueue = BoundedQueue  # bounded, drop-oldest by default (engine/runtime.py)


@dataclass
class View:
    """What a viewer gets for one output frame."""

    image: np.ndarray  # HxWx3 RGB
    pts: int  # stream pts (90 kHz) of the source frame: what a click on it refers to
    index: int  # the pipeline's frame index
    source_time: float  # wall clock (time.time()) when the source frame arrived
    degraded: bool


class LatestRelay:
    """Holds only the newest item; any number of asyncio readers wait for one newer than theirs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self.seq = 0
        self.item: View | None = None
        self.closed = False

    def publish(self, item: View | None) -> None:
        """Any thread: replace the newest item (None closes the relay)."""
        try:
            self._loop.call_soon_threadsafe(self._set, item)
        except RuntimeError:  # the loop is closed: nobody is watching
            pass

    def _set(self, item: View | None) -> None:
        if item is None:
            self.closed = True
        else:
            self.seq += 1
            self.item = item
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def next(self, after: int, timeout: float | None = None) -> tuple[int, View | None]:
        """The newest item with a sequence number above ``after``; (seq, None) once closed."""
        while self.seq <= after and not self.closed:
            await asyncio.wait_for(self._event.wait(), timeout)
        return self.seq, (None if self.closed else self.item)


# ----------------------------------------------------------------------------------- sinks
class ThreadedSink:
    """Runs a sink (publisher, recorder) on its own thread behind a small drop-oldest queue.

    The sink is created on that thread from the first frame's size and rate (``factory``), and
    closed on that thread too, once the queue is drained: never while a write is running.
    A write that raises is reported (``error``, the log) and the thread goes on."""

    def __init__(self, name: str, factory: Callable[[StreamInfo], Any], maxlen: int = 30) -> None:
        self.name = name
        self._factory = factory
        self._queue: FrameQueue[OutputFrame] = FrameQueue(maxlen)  # drop-oldest
        self._audio: FrameQueue[AudioChunk] = FrameQueue(AUDIO_SINK_ITEMS)  # drop-oldest: never holds a frame back
        self._info: StreamInfo | None = None
        self._keep = True
        self._thread: threading.Thread | None = None
        self.sink: Any = None
        self.error: str | None = None
        self.written = 0

    def start(self, info: StreamInfo) -> None:
        self._info = info
        self._thread = threading.Thread(target=self._run, name=f"unseen-{self.name}", daemon=True)
        self._thread.start()

    def write(self, output: OutputFrame) -> None:
        self._queue.put(output)

    def write_audio(self, chunk: AudioChunk) -> None:
        """Audio released beside the frames; written before the next frame (and at close)."""
        self._audio.put(chunk)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def _run(self) -> None:
        assert self._info is not None
        try:
            self.sink = self._factory(self._info)
        except Exception as exc:  # noqa: BLE001 - report it in the stream state, keep streaming
            self.error = _first_line(exc)
            log.error("%s: %s", self.name, self.error)
            return
        try:
            while True:
                item = self._queue.get(0.5)
                self._write_audio()
                if item is None:
                    if self._queue.closed:
                        break  # closed and drained
                    continue
                self._write(item)
        finally:
            self._close_sink()

    def _write(self, item: OutputFrame) -> None:
        try:
            self.sink.write(item)
            self.written += 1
        except Exception as exc:  # noqa: BLE001 - one failed write must not end the output
            self.error = _first_line(exc)
            log.warning("%s: %s", self.name, self.error)

    def _write_audio(self) -> None:
        write_audio = getattr(self.sink, "write_audio", None)
        while (chunk := self._audio.get(0)) is not None:
            if write_audio is None:
                continue
            try:
                write_audio(chunk)
            except Exception as exc:  # noqa: BLE001 - the audio must not end the output
                log.warning("%s: audio: %s", self.name, _first_line(exc))

    def _close_sink(self) -> None:
        try:
            self.sink.close(keep=self._keep)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: closing failed (%s)", self.name, exc)

    def close(self, *, keep: bool = True, timeout: float = 10.0) -> bool:
        """Take no more frames; the thread writes what is queued, then closes the sink.  Waits up to
        ``timeout`` s for that; True when it finished.  Otherwise the (daemon) thread finishes on its own:
        the sink is never closed under a write.  Idempotent."""
        self._keep = keep
        self._queue.close()
        self._audio.close()
        if self._thread is None:
            return True
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            log.warning("%s: still writing after %.1f s; it closes the sink once its queue is written",
                        self.name, timeout)
            return False
        return True

    @property
    def pending(self) -> int:
        """Frames queued, not written yet."""
        return len(self._queue)


# --------------------------------------------------------------------------------- sources
class SyntheticSource:
    """``synthetic://NAME``: the synthetic scene (ping-pong looped, so it never jumps), paced by the reader."""

    live = False

    def __init__(self, config: SourceConfig) -> None:
        from unseen.engine.synthetic import make_clip

        if not (config.fps > 0 and config.width > 0 and config.height > 0):
            raise ValueError(f"synthetic source {config.width}x{config.height} at {config.fps:g} fps: needs a "
                             f"positive size and rate; fix the stream settings")
        rate = Fraction(config.fps).limit_denominator(1001)
        self.clip = make_clip(60, config.width, config.height, seed=3, rate=rate)
        self.info = StreamInfo(config.width, config.height, rate, 1 / rate, None, False)
        self.loop = config.loop

    def __iter__(self) -> Iterator[Frame]:
        n = len(self.clip.frames)
        order = list(range(n)) + list(range(n - 2, 0, -1))
        i = 0
        while True:
            for k in order:
                yield Frame(i, self.clip.frames[k], pts=i, time_base=self.info.time_base, wallclock=time.monotonic())
                i += 1
            if not self.loop:
                return

    def close(self) -> None:
        pass


def open_source(config: SourceConfig) -> Source | SyntheticSource:
    if config.uri.startswith("synthetic://"):
        return SyntheticSource(config)
    # half the read timeout: a stalled RTSP read fails at the second expiry (the first returns what
    # ffmpeg buffered; measured 2.0 s with 1.0 s), so the stall is seen within read_timeout
    return Source(config.uri, open_timeout=config.open_timeout, read_timeout=config.read_timeout / 2,
                  loop=config.loop)


# ----------------------------------------------------------------------------------- stream
@dataclass(frozen=True)
class NewestFrame:
    """The newest frame a stream has received: the pipeline index it gets (once stepped) and its pts."""

    index: int
    pts: int


class LiveOutputs:
    """The runtime's sink for a live stream: the publisher and recorder (each a :class:`ThreadedSink`,
    started from the first output's size), the viewers' relay and the output metrics."""

    def __init__(self, name: str, outputs: OutputConfig, metrics: Metrics, relay: LatestRelay,
                 rate: Callable[[], Fraction], audio: LiveAudio | None = None) -> None:
        self.name = name
        self.audio = audio
        self.outputs = outputs
        self.metrics = metrics
        self.relay = relay
        self.rate = rate
        self.sinks: list[ThreadedSink] = []
        self.fps = 0.0
        self.deadline: float | None = None  # monotonic time by which close() must be done
        self._last_out: float | None = None

    def write(self, out: OutputFrame) -> None:
        if not self.sinks and (self.outputs.publish or self.outputs.record):
            self._start_sinks(out.image)
        if self.audio is not None:  # the audio up to this frame's end, before the frame (a sink writes it first)
            self.audio.release(int(out.frame.pts or 0) + frame_ticks(self.rate()), self.sinks)
        for sink in self.sinks:
            sink.write(out)
        now = time.monotonic()
        if self._last_out is not None:
            dt = now - self._last_out
            if dt > 0:
                self.fps = 1 / dt if self.fps == 0 else 0.9 * self.fps + 0.1 / dt
        self._last_out = now
        self.metrics.frames_out.labels(self.name).inc()
        self.metrics.fps.labels(self.name).set(round(self.fps, 2))
        if out.degraded:
            self.metrics.degraded.labels(self.name).inc()
        for level in (Level.CHEAP_FILL,) * out.degraded + (out.tracking,):
            if level is not Level.FULL:
                self.metrics.degraded_frames.labels(self.name, level.key).inc()
        wall = (out.frame.wallclock or now) + WALL_OFFSET
        self.relay.publish(View(out.image, int(out.frame.pts or 0), out.frame.index, wall, out.degraded))

    def _start_sinks(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        audio = self.audio.format if self.audio is not None else None
        info = StreamInfo(w, h, self.rate(), TIME_BASE, None, audio is not None)
        if self.outputs.publish:
            from .rtsp import RtspPublisher

            url = self.outputs.publish
            sink = ThreadedSink(f"publisher-{self.name}", lambda i: RtspPublisher(url, i, audio=audio))
            sink.start(info)
            self.sinks.append(sink)
        if self.outputs.record:
            path = self.outputs.record
            sink = ThreadedSink(f"recorder-{self.name}",
                                lambda i: FileSink(path, i, preset="veryfast", crf=20, audio_format=audio))
            sink.start(info)
            self.sinks.append(sink)

    def close(self, *, keep: bool = True) -> None:
        """Each sink writes what it has queued and closes (recordings end playable), by ``deadline``."""
        for sink in self.sinks:
            left = 10.0 if self.deadline is None else self.deadline - time.monotonic()
            sink.close(keep=keep, timeout=max(0.0, left))


class LiveStream:
    """The session of one live stream: source -> queue -> pipeline -> sinks and viewers."""

    def __init__(self, name: str, source: SourceConfig | None, settings: Settings, metrics: Metrics,
                 loop: asyncio.AbstractEventLoop, *, outputs: OutputConfig | None = None,
                 pipeline: Pipeline | None = None, mode: Mode | None = None) -> None:
        self.name = name
        self.config = source
        self.kind = "webcam" if source is None else ("synthetic" if source.uri.startswith("synthetic://")
                                                     else "whip" if source.uri.startswith(WHIP_URI) else "pull")
        self.settings = settings
        self.metrics = metrics
        self.loop = loop
        self.outputs = outputs or settings.outputs.get(name) or OutputConfig()
        effect = Effect.parse(source.effect if source else "remove")
        self.pipeline = pipeline or build_pipeline(
            Backends(settings.backends.segmenter, settings.backends.propagator, settings.backends.inpainter),
            BackendOptions(device=settings.device),
            PipelineConfig(delay=settings.delay, default_effect=effect, segment_async=True,
                           max_objects=settings.limits.max_objects))
        self.source = QueueSource(settings.limits.queue_frames)  # the reader or feed() pushes, drop-oldest
        self.queue: FrameQueue[Frame] = self.source.queue
        self.relay = LatestRelay(loop)
        self.audio = LiveAudio(name, loop, TIME_BASE)  # the source's audio, delayed like the frames
        self.out = LiveOutputs(name, self.outputs, metrics, self.relay, lambda: self.rate, self.audio)
        self.sinks = self.out.sinks
        self.viewers: set[Any] = set()
        self.state = "starting"
        self.last_error: str | None = None
        self.reconnects = 0
        self.skipped = 0  # input frames the source could not decode (skipped; frames out = frames decoded)
        self._skipped_counted = 0  # of the current source's skipped frames
        self.size: tuple[int, int] | None = None  # (width, height) of the stream
        self.rate: Fraction = Fraction(source.fps if source and source.uri.startswith("synthetic://") else 25)
        self._clock = -1  # stream pts of the last frame (90 kHz)
        self._last_arrival = 0.0  # monotonic time the last frame arrived
        self._received = 0  # frames put into the queue
        self._last_source_s: float | None = None
        self._gap = True  # the next frame follows a (re)connect: use the nominal step
        self._epoch = 0  # the source's unbroken run (Frame.epoch): one up at each reconnect or new publisher
        self._stop = threading.Event()  # intake stops (close, or a failure)
        self._closed = False
        self._report: CloseReport | None = None
        self._close_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.session = StreamSession(self.source, self.pipeline, [self.out], name=name,
                                     config=RuntimeConfig(mode=mode or Mode(settings.runtime),
                                                          queue_items=LIVE_QUEUE_ITEMS),
                                     pace=lambda backlog: self.ladder.decide(backlog),
                                     on_error=self._frame_failed, on_failure=self._worker_failed,
                                     on_tracked=self._tracked)
        metrics.delay_frames.labels(name).set(self.pipeline.delay)
        for m in (metrics.frames_in, metrics.frames_out, metrics.dropped, metrics.degraded, metrics.reconnects,
                  metrics.skipped):
            m.labels(name)
        for level in DEGRADED_LEVELS:
            metrics.degraded_frames.labels(name, level.key)
        self.ladder = Ladder()  # the worker's degradation level from the frames waiting
        metrics.stream_viewers.labels(name).set(0)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LiveStream":
        self.session.start()
        if self.config is not None and self.kind != "whip":
            self._reader = threading.Thread(target=self._read, name=f"unseen-reader-{self.name}", daemon=True)
            self._reader.start()
        else:
            self._set_state("waiting")  # for the browser's first frame
        return self

    def close(self, timeout: float = 10.0) -> CloseReport:
        """Drain and close (idempotent): stop intake (reader and :meth:`feed`), let the worker finish the
        step in progress and flush the delay line into the sinks, then close the sinks (recordings end
        as playable files).  All within ``timeout`` s: a worker still busy then is abandoned (a daemon
        thread), nothing is flushed, and the sinks are closed with what they have."""
        with self._close_lock:
            if self._closed:
                return self._report or CloseReport(0, 0, False)
            self._closed = True
        deadline = time.monotonic() + timeout
        self._stop.set()
        self.state = "closed"  # from now on: intake stopped, what is in flight drains
        self.out.deadline = deadline  # the sinks close within the time left
        # frames still queued are not processed; the step in progress ends, then the runtime flushes
        report = self.session.close(timeout=timeout)
        self._observe_stages()
        if self._reader is not None:
            self._reader.join(max(0.0, min(deadline - time.monotonic(), 1.0)))  # its source closes as it stops
        self.relay.publish(None)
        self.audio.close()
        self.metrics.forget(self.name)
        self._report = report
        log.info("%s: closed; the flush delivered %d frames, %d received frames were not processed%s",
                 self.name, report.flushed, report.discarded, " (worker abandoned)" if report.abandoned else "")
        return self._report

    async def aclose(self, timeout: float = 10.0) -> CloseReport:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.close(timeout))

    @property
    def closed(self) -> bool:
        return self._closed

    def _set_state(self, state: str) -> None:
        """Change the state, unless the stream failed or closed already (those are final)."""
        if self.state not in ("failed", "closed"):
            self.state = state

    def _fail(self, message: str, exc: BaseException) -> None:
        """A thread of the stream hit an unexpected error: the stream stops, its state says so."""
        log.error("%s: %s", self.name, message, exc_info=exc)
        self.last_error = message
        self._set_state("failed")
        self._stop.set()
        self.session.stop(flush=False)

    # ------------------------------------------------------------------ input
    def _read(self) -> None:
        try:
            self._read_loop()
        except Exception as exc:  # noqa: BLE001 - never die silently: the state says failed
            self._fail("source failed (reading); check the server log", exc)

    def _read_loop(self) -> None:
        assert self.config is not None
        backoff = RECONNECT_BACKOFF[0]
        first = True
        while not self._stop.is_set():
            try:
                source = open_source(self.config)
            except MediaError as exc:
                self._source_down("source unavailable (cannot open)", exc, first)
                if self._stop.wait(backoff):
                    break
                backoff = min(READ_BACKOFF_MAX, backoff * 2)
                first = False
                continue
            except Exception as exc:  # noqa: BLE001 - bad settings (a synthetic size, a path the OS refuses)
                self._fail("source failed (cannot open); check the stream settings and the server log", exc)
                return
            if not first:
                self.reconnects += 1
                self.metrics.reconnects.labels(self.name).inc()
                log.info("%s: source reconnected", self.name)
            first = False
            backoff = RECONNECT_BACKOFF[0]
            self._skipped_counted = 0
            self._set_state("running")
            self.last_error = None
            if self.size is None:
                self.rate = source.info.rate or self.rate
            self._gap = True
            try:
                if self._play(source):
                    return  # a file that ended
            except MediaError as exc:
                self._source_down("source dropped or stalled", exc, False)
            except Exception as exc:  # noqa: BLE001 - a decoder hiccup must not end the stream
                self._source_down("source read error", exc, False)
            finally:
                source.close()
            if self._stop.wait(backoff):
                break

    def _play(self, source: Source | SyntheticSource) -> bool:
        """Ingest the source's frames (files paced at their own rate); True when a file ended for good."""
        assert self.config is not None
        paced = not getattr(source, "live", False)  # files play at their own rate, like a camera
        t0 = None
        self.audio.open(source)
        for frame in source:
            if self._stop.is_set():
                return False
            if paced:
                secs = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else 0.0
                if t0 is None or secs < self._paced_last:
                    t0 = time.monotonic() - secs
                self._paced_last = secs
                wait = t0 + secs - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return False
            self._count_skipped(source)
            if self._ingest(frame.image, frame.seconds, time.monotonic()):
                self.audio.video(frame.seconds, self._clock, frame_ticks(self.rate))
        self._count_skipped(source)
        if self._stop.is_set():
            return False
        if is_network(self.config.uri) or self.config.loop:
            self._source_down("source ended", None, False)
            return False
        self._set_state("ended")
        log.info("%s: source ended", self.name)
        return True

    _paced_last = 0.0

    def _count_skipped(self, source: Source | SyntheticSource) -> None:
        """Frames the source could not decode (and skipped) since the last count, into the stream's total."""
        seen = getattr(source, "skipped", 0)
        if seen > self._skipped_counted:
            self.skipped += seen - self._skipped_counted
            self.metrics.skipped.labels(self.name).inc(seen - self._skipped_counted)
            self._skipped_counted = seen

    def _source_down(self, message: str, exc: BaseException | None, first: bool) -> None:
        """The source is away (retried with backoff).  API clients get the generic ``message``; the cause
        (which may tell whether a file or port exists) goes to the server log only."""
        self._set_state("connecting" if first else "reconnecting")
        self.last_error = f"{message}; retrying, check the server log"
        self._gap = True
        log.warning("%s: %s (%s); retrying with backoff", self.name, message,
                    _first_line(exc) if exc is not None else "no cause given")

    def feed(self, image: np.ndarray, seconds: float | None) -> None:
        """A frame pushed by the stream's publisher (a browser webcam); any thread.  Ignored once closing."""
        if self._stop.is_set():
            return
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)  # the browser adapted its size
        self._set_state("running")
        self._ingest(image, seconds, time.monotonic())

    def publisher_left(self) -> None:
        """The stream's publisher stopped sending (its track ended).  What the next one sends need not continue
        it: its frames start a new epoch (the objects are found again, not followed by motion) and the clock
        takes the nominal step across the gap."""
        self._gap = True

    def feed_audio(self, samples: np.ndarray, rate: int, layout: str, seconds: float | None) -> None:
        """Decoded audio (s16 interleaved) from the stream's publisher (a browser webcam), placed on the
        stream clock beside the video that arrived with it.  Ignored before the first frame and once closing."""
        if self._stop.is_set() or self._clock < 0:
            return
        now = self._clock + round((time.monotonic() - self._last_arrival) * CLOCK)
        self.audio.feed(samples, rate, layout, seconds, now)

    def _ingest(self, image: np.ndarray, seconds: float | None, arrived: float) -> bool:
        """Stamp a frame on the stream clock and queue it; False when intake has stopped."""
        if self._stop.is_set():
            return False
        step = 1.0 / float(self.rate) if self.rate else 1 / 25
        if self.size is None:
            self.size = (int(image.shape[1]), int(image.shape[0]))
        if self._gap and self._clock >= 0:  # a reconnect: what comes need not continue what came before
            self._epoch += 1
        if self._gap or seconds is None or self._last_source_s is None:
            delta = step if self._clock >= 0 else 0.0
        else:
            delta = seconds - self._last_source_s
            if not 0 < delta < 2.0:  # a jump in the source's clock: keep ours steady
                delta = step
        self._gap = False
        self._last_source_s = seconds
        pts = self._clock + max(1, round(delta * CLOCK)) if self._clock >= 0 else 0
        frame = Frame(index=-1, image=image, pts=pts, time_base=TIME_BASE, wallclock=arrived, epoch=self._epoch)
        if self.source.push(frame):
            self.metrics.dropped.labels(self.name).inc()
        self._received += 1
        self._clock = pts
        self._last_arrival = arrived
        return True

    @property
    def newest_frame(self) -> NewestFrame | None:
        """The newest frame received (None before the first).  Its index counts the frames that reach the
        pipeline (queue drops excluded); one still queued gets it when the worker steps it."""
        if self._clock < 0:
            return None
        return NewestFrame(self._received - self.queue.dropped - 1, self._clock)

    # ------------------------------------------------------------------ processing (the runtime's workers)
    def _tracked(self, frame: Frame) -> None:
        self.metrics.frames_in.labels(self.name).inc()
        self._observe_stages()

    def _frame_failed(self, stage: str, exc: BaseException) -> None:
        """One bad frame must not end the stream (the pipeline itself falls back per stage)."""
        log.error("%s: processing a frame failed (%s)", self.name, stage, exc_info=exc)
        self.last_error = f"processing a frame failed ({type(exc).__name__}); check the server log"

    def _worker_failed(self, worker: str, exc: BaseException) -> None:
        self._fail("processing failed; check the server log", exc)

    def _observe_stages(self) -> None:
        """Every stage call's own duration into the histogram (the pipeline keeps the latest, bounded)."""
        for sample in self.pipeline.times.drain():
            self.metrics.stage_ms.labels(sample.stage).observe(sample.ms)

    # ------------------------------------------------------------------ prompts
    def _check_click(self, x: float | None, y: float | None) -> None:
        if self.state in ("failed", "closed"):
            raise StreamError(f"stream {self.name!r} has {self.state}; remove it and add it again", 409)
        if self.size is None:
            raise StreamError(f"stream {self.name!r} has no frame yet; wait until its video plays, then click",
                              409)
        w, h = self.size
        if x is not None and y is not None and not (0 <= x < w and 0 <= y < h):
            raise StreamError(f"click ({x:g},{y:g}) is outside the {w}x{h} frame; click inside the video")

    def _check_received(self, frame: int | None, pts: int | None) -> None:
        """Refuse a click on a frame that has not arrived (it might never); one still queued has arrived.
        A frame that already left the history is fine: the pipeline moves the click to the oldest held."""
        newest = self.newest_frame
        if newest is None:
            return  # _check_click refused it already
        if frame is not None and frame > newest.index:
            raise StreamError(f"click on frame {frame} is beyond the newest frame ({newest.index}); click on a "
                              f"frame the video has shown")
        if frame is None and pts is not None and pts > newest.pts:
            raise StreamError(f"click on pts {pts} is beyond the newest frame's pts ({newest.pts}); send the pts "
                              f"of a frame the video has shown")

    async def _wait(self, future: concurrent.futures.Future, what: str, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise StreamError(f"{what} on stream {self.name!r} was not applied within {timeout:g} s (state "
                              f"{self.state}); check that the source is sending frames", 504) from None
        except (PromptError, ValueError, KeyError) as exc:
            raise StreamError(str(exc).strip("'\"")) from None

    async def click(self, x: float | None, y: float | None, *, positive: bool = True, object_id: int | None = None,
                    pts: int | None = None, frame: int | None = None, box: Box | None = None,
                    timeout: float = 60.0) -> int:
        """Add a click and/or a box (on the source frame with ``pts``, the one the user saw); returns the object
        id.  A box alone, or with a click, may start an object (Pipeline.prompt)."""
        self._check_click(x, y)
        self._check_received(frame, pts)
        clicks = [] if x is None or y is None else [Click(float(x), float(y), positive)]
        if not positive and box is None and object_id is None:
            objects = [o["id"] for o in self.objects()]
            if not objects:
                raise StreamError("a negative click needs an object to correct; click the object first")
            object_id = objects[-1]
        if not positive and box is None and object_id not in [o["id"] for o in self.objects()]:
            raise StreamError(f"no object {object_id}; list the objects and use one of their ids")
        try:
            future = self.pipeline.prompt(clicks, box, object_id=object_id, frame_index=frame, pts=pts)
        except PromptError as exc:
            raise StreamError(str(exc)) from None
        return int(await self._wait(future, "the click", timeout))

    async def remove_object(self, object_id: int, timeout: float = 30.0) -> int:
        return int(await self._wait(self.pipeline.remove_object(int(object_id)), "removing the object", timeout))

    async def clear(self, timeout: float = 30.0) -> None:
        await self._wait(self.pipeline.clear(), "clearing the objects", timeout)

    async def set_effect(self, object_id: int, effect: str, timeout: float = 30.0) -> int:
        try:
            Effect.parse(effect)
        except ValueError as exc:
            raise StreamError(str(exc)) from None
        return int(await self._wait(self.pipeline.set_effect(int(object_id), effect), "the effect change",
                                    timeout))

    # ------------------------------------------------------------------ state
    def _describe_audio(self) -> dict | None:
        """The source's audio (None: none so far) and why it is not used, if it is not."""
        fmt, audio = self.audio.format, self.audio
        if fmt is None and audio.error is None:
            return None
        return {"codec": fmt.codec if fmt else None, "rate": fmt.rate if fmt else None,
                "chunks_in": audio.chunks_in, "chunks_out": audio.chunks_out, "dropped": audio.dropped,
                "error": "the source's audio cannot be decoded; check the server log" if audio.error else None}

    def objects(self) -> list[dict]:
        p = self.pipeline  # objects and visible masks are replaced, never mutated: safe to read here
        masks = p.visible_masks  # the masks of the frame viewers see now
        return [dict(o.describe(), area=int(masks[o.id].sum()) if o.id in masks else None)
                for o in p.objects.values()]

    def describe(self) -> dict:
        desc = self.pipeline.describe()
        rate = float(self.rate) if self.rate else 0.0
        delay = self.pipeline.delay
        return {
            "name": self.name,
            "kind": self.kind,
            "source": redact(self.config.uri) if self.config else "webcam (WebRTC)",
            "state": self.state,
            "error": self.last_error,
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
            "rate": round(rate, 3),
            "fps": round(self.out.fps, 2),
            "delay_frames": delay,
            "delay_seconds": round(delay / rate, 3) if rate else None,
            "objects": self.objects(),
            "backends": desc.get("backends", {}),
            "stage_ms": desc.get("stage_ms", {}),
            "frames_in": desc.get("frames_in", 0),
            "frames_out": desc.get("frames_out", 0),
            "dropped": self.queue.dropped,
            "skipped": self.skipped,
            "degraded": desc.get("degraded", 0),
            "degradation": desc.get("degradation", {level.key: 0 for level in DEGRADED_LEVELS}),
            "stale_area_over_tracked_max": desc.get("stale_area_over_tracked_max", 0.0),
            "queue_policy": self.queue.policy.value,
            "reconnects": self.reconnects,
            "viewers": len(self.viewers),
            "audio": self._describe_audio(),
            "outputs": {"publish": redact(self.outputs.publish) if self.outputs.publish else None,
                        "record": self.outputs.record,
                        # the cause (it may tell whether a path or port exists) is in the server log
                        "errors": {s.name: "failed; check the server log" for s in self.sinks if s.error}},
        }
