"""The live stream runner: one :class:`LiveStream` (the session of a live stream) per stream.

A stream owns its source, its pipeline, its publisher/recorder and its viewers:

* a **reader** thread decodes the source (RTSP pull, file, URL, ``synthetic://``) into a
  bounded :class:`FrameQueue` (policy: *drop-oldest*, counted); a browser webcam feeds the
  same queue through :meth:`LiveStream.feed`.  An RTSP source that drops or stalls is
  reopened with capped exponential backoff; the pipeline (its objects, its frame clock)
  is never restarted.  Timestamps are re-based onto one continuous 90 kHz stream clock.
* a **worker** thread runs ``pipeline.step`` off the event loop, with ``hurry=True`` when
  more than one frame waits, so the output stays exactly D frames behind and frames
  out == frames in (drops happen before the pipeline and are counted separately).
* every output frame goes to the sinks (each on its own thread, see :class:`ThreadedSink`)
  and to a :class:`LatestRelay` from which every viewer takes the newest frame: a slow
  viewer skips frames, it never grows a queue or delays the others.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import re
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from unseen.engine.backends.registry import BackendOptions
from unseen.engine.effects import Effect
from unseen.engine.media import FileSink, MediaError, Source, StreamInfo, is_network
from unseen.engine.pipeline import OutputFrame, Pipeline, PipelineConfig, PromptError
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame

from .config import OutputConfig, Settings, SourceConfig
from .metrics import Metrics

log = logging.getLogger("unseen.live")

CLOCK = 90000  # the stream clock: 90 kHz, as RTP video
TIME_BASE = Fraction(1, CLOCK)
BACKOFF_START, BACKOFF_MAX = 0.5, 8.0
WALL_OFFSET = time.time() - time.monotonic()  # monotonic -> wall clock (for glass-to-glass stats)


class StreamError(RuntimeError):
    """A request on a stream cannot be served (one line: cause and fix); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def redact(uri: str) -> str:
    """Hide credentials in a URL (rtsp://user:pass@host -> rtsp://***@host)."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", uri)


# ----------------------------------------------------------------------------- queues/relays
class FrameQueue:
    """A bounded FIFO between reader and worker; when full the oldest frame is dropped (counted)."""

    policy = "drop-oldest"

    def __init__(self, maxlen: int) -> None:
        self._items: collections.deque[Frame] = collections.deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Add a frame; returns True when an older one had to be dropped."""
        with self._cond:
            dropped = len(self._items) >= self._maxlen
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify()
        return dropped

    def get(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


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

    The sink is created on that thread from the first frame's size and rate (``factory``)."""

    def __init__(self, name: str, factory: Callable[[StreamInfo], Any], maxlen: int = 30) -> None:
        self.name = name
        self._factory = factory
        self._queue = FrameQueue(maxlen)
        self._info: StreamInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sink: Any = None
        self.error: str | None = None
        self.written = 0

    def start(self, info: StreamInfo) -> None:
        self._info = info
        self._thread = threading.Thread(target=self._run, name=f"unseen-{self.name}", daemon=True)
        self._thread.start()

    def write(self, output: OutputFrame) -> None:
        self._queue.put(output)  # type: ignore[arg-type]

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def _run(self) -> None:
        assert self._info is not None
        try:
            self.sink = self._factory(self._info)
        except Exception as exc:  # noqa: BLE001 - report it in the stream state, keep streaming
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("%s: %s", self.name, self.error)
            return
        while True:
            item = self._queue.get(0.2)
            if item is None:
                if self._stop.is_set():
                    break
                continue
            try:
                self.sink.write(item)
                self.written += 1
            except Exception as exc:  # noqa: BLE001
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("%s: %s", self.name, self.error)

    def close(self, *, keep: bool = True, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.sink is not None:
            try:
                self.sink.close(keep=keep)
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: closing failed (%s)", self.name, exc)


# --------------------------------------------------------------------------------- sources
class SyntheticSource:
    """``synthetic://NAME``: the synthetic scene (ping-pong looped, so it never jumps), paced by the reader."""

    live = False

    def __init__(self, config: SourceConfig) -> None:
        from unseen.engine.synthetic import make_clip

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
    return Source(config.uri, open_timeout=config.open_timeout, read_timeout=config.read_timeout,
                  loop=config.loop)


# ----------------------------------------------------------------------------------- stream
class LiveStream:
    """The session of one live stream: source -> queue -> pipeline -> sinks and viewers."""

    def __init__(self, name: str, source: SourceConfig | None, settings: Settings, metrics: Metrics,
                 loop: asyncio.AbstractEventLoop, *, outputs: OutputConfig | None = None,
                 pipeline: Pipeline | None = None) -> None:
        self.name = name
        self.config = source
        self.kind = "webcam" if source is None else ("synthetic" if source.uri.startswith("synthetic://")
                                                     else "pull")
        self.settings = settings
        self.metrics = metrics
        self.loop = loop
        self.outputs = outputs or settings.outputs.get(name) or OutputConfig()
        effect = Effect.parse(source.effect if source else "remove")
        self.pipeline = pipeline or build_pipeline(
            Backends(settings.backends.segmenter, settings.backends.propagator, settings.backends.inpainter),
            BackendOptions(device=settings.device),
            PipelineConfig(delay=settings.delay, default_effect=effect, segment_async=True))
        self.queue = FrameQueue(settings.limits.queue_frames)
        self.relay = LatestRelay(loop)
        self.sinks: list[ThreadedSink] = []
        self.viewers: set[Any] = set()
        self.state = "starting"
        self.last_error: str | None = None
        self.reconnects = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the stream
        self.rate: Fraction = Fraction(source.fps if source and source.uri.startswith("synthetic://") else 25)
        self._clock = -1  # stream pts of the last frame (90 kHz)
        self._last_source_s: float | None = None
        self._gap = True  # the next frame follows a (re)connect: use the nominal step
        self._fps = 0.0
        self._last_out: float | None = None
        self._stop = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._stage_seen: dict[str, tuple[float, int]] = {}
        self._reader: threading.Thread | None = None
        self._worker = threading.Thread(target=self._work, name=f"unseen-worker-{name}", daemon=True)
        metrics.delay_frames.labels(name).set(self.pipeline.delay)
        for m in (metrics.frames_in, metrics.frames_out, metrics.dropped, metrics.degraded, metrics.reconnects):
            m.labels(name)
        metrics.stream_viewers.labels(name).set(0)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LiveStream":
        self._worker.start()
        if self.config is not None:
            self._reader = threading.Thread(target=self._read, name=f"unseen-reader-{self.name}", daemon=True)
            self._reader.start()
        else:
            self.state = "waiting"  # for the browser's first frame
        return self

    def close(self) -> None:
        """Stop reading and processing, flush the delay line into the sinks, close everything (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._reader is not None:
            self._reader.join((self.config.read_timeout if self.config else 0) + 2)
        self._worker.join(30)
        try:
            for out in self.pipeline.flush():
                for sink in self.sinks:
                    sink.write(out)
                self.metrics.frames_out.labels(self.name).inc()
        except Exception:  # noqa: BLE001 - closing must finish
            log.exception("%s: flushing the delay line failed", self.name)
        self.pipeline.close()
        for sink in self.sinks:
            sink.close()
        self.relay.publish(None)
        self.state = "closed"
        self.metrics.forget(self.name)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ input
    def _read(self) -> None:
        assert self.config is not None
        backoff = BACKOFF_START
        first = True
        while not self._stop.is_set():
            try:
                source = open_source(self.config)
            except MediaError as exc:
                self._source_down(str(exc), first)
                if self._stop.wait(backoff):
                    break
                backoff = min(BACKOFF_MAX, backoff * 2)
                first = False
                continue
            if not first:
                self.reconnects += 1
                self.metrics.reconnects.labels(self.name).inc()
                log.info("%s: source reconnected", self.name)
            first = False
            backoff = BACKOFF_START
            self.state = "running"
            self.last_error = None
            if self.size is None:
                self.rate = source.info.rate or self.rate
            self._gap = True
            paced = not getattr(source, "live", False)  # files play at their own rate, like a camera
            t0 = None
            try:
                for frame in source:
                    if self._stop.is_set():
                        break
                    if paced:
                        secs = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base \
                            else 0.0
                        if t0 is None or secs < self._paced_last:
                            t0 = time.monotonic() - secs
                        self._paced_last = secs
                        wait = t0 + secs - time.monotonic()
                        if wait > 0 and self._stop.wait(wait):
                            break
                    self._ingest(frame.image, frame.seconds, time.monotonic())
                else:
                    if not self._stop.is_set():
                        if is_network(self.config.uri) or self.config.loop:
                            self._source_down(f"source {redact(self.config.uri)!r} ended", False)
                        else:
                            self.state = "ended"
                            log.info("%s: source ended", self.name)
                            return
            except MediaError as exc:
                self._source_down(str(exc), False)
            except Exception as exc:  # noqa: BLE001 - a decoder hiccup must not end the stream
                log.exception("%s: reading failed", self.name)
                self._source_down(f"reading failed ({exc})", False)
            finally:
                source.close()
            if self._stop.wait(backoff):
                break

    _paced_last = 0.0

    def _source_down(self, message: str, first: bool) -> None:
        self.state = "connecting" if first else "reconnecting"
        self.last_error = message
        self._gap = True
        log.warning("%s: %s; retrying with backoff", self.name, message)

    def feed(self, image: np.ndarray, seconds: float | None) -> None:
        """A frame pushed by the stream's publisher (a browser webcam); any thread."""
        if self._closed:
            return
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)  # the browser adapted its size
        self.state = "running"
        self._ingest(image, seconds, time.monotonic())

    def _ingest(self, image: np.ndarray, seconds: float | None, arrived: float) -> None:
        step = 1.0 / float(self.rate) if self.rate else 1 / 25
        if self.size is None:
            self.size = (int(image.shape[1]), int(image.shape[0]))
        if self._gap or seconds is None or self._last_source_s is None:
            delta = step if self._clock >= 0 else 0.0
        else:
            delta = seconds - self._last_source_s
            if not 0 < delta < 2.0:  # a jump in the source's clock: keep ours steady
                delta = step
        self._gap = False
        self._last_source_s = seconds
        self._clock += max(1, round(delta * CLOCK)) if self._clock >= 0 else 1
        frame = Frame(index=-1, image=image, pts=self._clock, time_base=TIME_BASE, wallclock=arrived)
        if self.queue.put(frame):
            self.metrics.dropped.labels(self.name).inc()

    # ------------------------------------------------------------------ processing
    def _work(self) -> None:
        while not self._stop.is_set():
            frame = self.queue.get(0.2)
            if frame is None:
                continue
            hurry = len(self.queue) > 1
            try:  # the pipeline itself falls back to the previous masks / the cheap fill per stage
                outputs = self.pipeline.step(frame, hurry=hurry)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not end the stream
                log.exception("%s: processing frame failed", self.name)
                self.last_error = f"processing failed ({str(exc).strip().splitlines()[-1][:200]})"
                outputs = []
            self.metrics.frames_in.labels(self.name).inc()
            self._observe_stages()
            for out in outputs:
                self._deliver(out)

    def _observe_stages(self) -> None:
        times = self.pipeline.times
        counts = times.counts  # snapshots (replaced, never mutated); totals is updated first, so it
        totals = times.totals  # holds every stage that counts holds
        for stage, count in counts.items():
            total = totals[stage]
            seen_total, seen_count = self._stage_seen.get(stage, (0.0, 0))
            if count > seen_count:
                mean = (total - seen_total) / (count - seen_count)
                for _ in range(count - seen_count):
                    self.metrics.stage_ms.labels(stage).observe(mean)
                self._stage_seen[stage] = (total, count)

    def _deliver(self, out: OutputFrame) -> None:
        if not self.sinks and (self.outputs.publish or self.outputs.record):
            self._start_sinks(out.image)
        for sink in self.sinks:
            sink.write(out)
        now = time.monotonic()
        if self._last_out is not None:
            dt = now - self._last_out
            if dt > 0:
                self._fps = 1 / dt if self._fps == 0 else 0.9 * self._fps + 0.1 / dt
        self._last_out = now
        self.metrics.frames_out.labels(self.name).inc()
        self.metrics.fps.labels(self.name).set(round(self._fps, 2))
        if out.degraded:
            self.metrics.degraded.labels(self.name).inc()
        wall = (out.frame.wallclock or now) + WALL_OFFSET
        self.relay.publish(View(out.image, int(out.frame.pts or 0), out.frame.index, wall, out.degraded))

    def _start_sinks(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        info = StreamInfo(w, h, self.rate, TIME_BASE, None, False)
        if self.outputs.publish:
            from .rtsp import RtspPublisher

            url = self.outputs.publish
            sink = ThreadedSink(f"publisher-{self.name}", lambda i: RtspPublisher(url, i))
            sink.start(info)
            self.sinks.append(sink)
        if self.outputs.record:
            path = self.outputs.record
            sink = ThreadedSink(f"recorder-{self.name}", lambda i: FileSink(path, i, preset="veryfast", crf=20))
            sink.start(info)
            self.sinks.append(sink)

    # ------------------------------------------------------------------ prompts
    def _check_click(self, x: float, y: float) -> None:
        if self.size is None:
            raise StreamError(f"stream {self.name!r} has no frame yet; wait until its video plays, then click",
                              409)
        w, h = self.size
        if not (0 <= x < w and 0 <= y < h):
            raise StreamError(f"click ({x:g},{y:g}) is outside the {w}x{h} frame; click inside the video")

    async def _wait(self, future: concurrent.futures.Future, what: str, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise StreamError(f"{what} on stream {self.name!r} was not applied within {timeout:g} s (state "
                              f"{self.state}); check that the source is sending frames", 504) from None
        except (PromptError, ValueError, KeyError) as exc:
            raise StreamError(str(exc).strip("'\"")) from None

    async def click(self, x: float, y: float, *, positive: bool = True, object_id: int | None = None,
                    pts: int | None = None, frame: int | None = None, timeout: float = 60.0) -> int:
        """Add a click (on the source frame with ``pts``, the one the user saw); returns the object id."""
        self._check_click(x, y)
        if not positive and object_id is None:
            objects = [o["id"] for o in self.objects()]
            if not objects:
                raise StreamError("a negative click needs an object to correct; click the object first")
            object_id = objects[-1]
        if not positive and object_id not in [o["id"] for o in self.objects()]:
            raise StreamError(f"no object {object_id}; list the objects and use one of their ids")
        try:
            future = self.pipeline.click(x, y, positive=positive, object_id=object_id, frame_index=frame, pts=pts)
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
            "fps": round(self._fps, 2),
            "delay_frames": delay,
            "delay_seconds": round(delay / rate, 3) if rate else None,
            "objects": self.objects(),
            "backends": desc.get("backends", {}),
            "stage_ms": desc.get("stage_ms", {}),
            "frames_in": desc.get("frames_in", 0),
            "frames_out": desc.get("frames_out", 0),
            "dropped": self.queue.dropped,
            "degraded": desc.get("degraded", 0),
            "queue_policy": FrameQueue.policy,
            "reconnects": self.reconnects,
            "viewers": len(self.viewers),
            "outputs": {"publish": redact(self.outputs.publish) if self.outputs.publish else None,
                        "record": self.outputs.record,
                        "errors": {s.name: s.error for s in self.sinks if s.error}},
        }
