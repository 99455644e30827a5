"""The stream runtime's parts (engine/runtime.py): bounded queues with a named drop policy, the live
source, the sink fan-out, library thread settings, a worker's device context and the stage tracer."""
from __future__ import annotations

import collections
import contextlib
import enum
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Iterator, Protocol, Sequence, TypeVar

import numpy as np

from .audio import AudioChunk
from .emitter import OutputFrame
from .media import Truncation
from .stages import Frame

T = TypeVar("T")


# ----------------------------------------------------------------------------- queues
class Policy(enum.Enum):
    """What a full queue does with a new item."""

    BLOCK = "block"  # the producer waits for room: back-pressure (files, between stages)
    DROP_OLDEST = "drop-oldest"  # the oldest item is dropped and counted (live input)


class BoundedQueue(Generic[T]):
    """A bounded FIFO between threads with a named :class:`Policy`.  Once closed it takes nothing
    more (a blocked producer returns at once), and a reader gets what is left, then None."""

    def __init__(self, maxlen: int, policy: Policy = Policy.DROP_OLDEST) -> None:
        if maxlen < 1:
            raise ValueError("a queue holds at least one item")
        self.maxlen = maxlen
        self.policy = policy
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.high_water = 0  # the most items it ever held (never above maxlen)
        self.closed = False

    def put(self, item: T) -> bool:
        """Add an item (ignored once closed); True when an older one had to be dropped."""
        with self._cond:
            if self.policy is Policy.BLOCK:
                self._cond.wait_for(lambda: len(self._items) < self.maxlen or self.closed)
            if self.closed:
                return False
            dropped = len(self._items) >= self.maxlen
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
        return dropped

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout`` s (None: until one comes or the queue closes)."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self.closed, timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """Take no more items; wake every reader and blocked producer."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def drain(self) -> int:
        """Discard what is queued; returns how many items that was."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class QueueSource:
    """A live source: frames pushed from any thread (a reader, a browser track) into a bounded
    drop-oldest queue; iterating yields them until :meth:`close` (then what is left)."""

    live = True
    skipped = 0
    truncated: Truncation | None = None

    def __init__(self, maxlen: int) -> None:
        self.queue: BoundedQueue[Frame] = BoundedQueue(maxlen, Policy.DROP_OLDEST)
        self.on_audio = None

    def push(self, frame: Frame) -> bool:
        """True when the oldest queued frame had to be dropped for it."""
        return self.queue.put(frame)

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    @property
    def backlog(self) -> int:
        return len(self.queue)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.queue.get()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        self.queue.close()


class AudioLine:
    """A live stream's audio, held until the video it belongs with leaves the delay line: a bounded FIFO
    (policy: drop-oldest, counted) that the output's frames release, so the audio is delayed exactly like
    the video and never holds a frame back."""

    policy = Policy.DROP_OLDEST

    def __init__(self, maxlen: int = 512) -> None:
        self.maxlen = maxlen
        self._items: collections.deque[AudioChunk] = collections.deque()
        self._lock = threading.Lock()
        self.dropped = 0

    def push(self, chunk: AudioChunk) -> None:
        with self._lock:
            if len(self._items) >= self.maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(chunk)

    def release(self, before: int) -> list[AudioChunk]:
        """The chunks that start before stream time ``before`` (the end of the frame leaving now)."""
        with self._lock:
            out = []
            while self._items and self._items[0].pts < before:
                out.append(self._items.popleft())
            return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# ----------------------------------------------------------------------------- sinks
class Sink(Protocol):
    def write(self, output: OutputFrame) -> None: ...

    def close(self, *, keep: bool = True) -> None: ...


class SinkFanout:
    """Every output to every sink, in order; audio packets to the sinks that take them.  Writes and
    close are serialised (one lock): nothing is written while or after the sinks close."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self.written = 0
        self.closed = False
        self._lock = threading.Lock()

    def write(self, output: OutputFrame) -> bool:
        """False (nothing written) once closed."""
        with self._lock:
            if self.closed:
                return False
            for sink in self.sinks:
                sink.write(output)
            self.written += 1
            return True

    def write_audio(self, packet: Any) -> None:
        with self._lock:
            if self.closed:
                return
            for sink in self.sinks:
                write_audio = getattr(sink, "write_audio", None)
                if write_audio is not None:
                    write_audio(packet)

    def close(self, *, keep: bool = True) -> None:
        """Close every sink once (idempotent); ``keep=False`` discards what they wrote.  Raises the
        first failure (when keeping)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        errors = []
        for sink in self.sinks:
            try:
                sink.close(keep=keep)
            except Exception as exc:  # noqa: BLE001 - close every sink, report the first failure
                errors.append(exc)
        if errors and keep:
            raise errors[0]


# ----------------------------------------------------------------------------- settings, devices, traces
SWITCH_INTERVAL = 0.001  # s: Python's GIL switch interval while a stream runs (ThreadSettings)
OPENCV_THREADS = 1  # OpenCV's threads per call: the runtime's workers are the parallelism, and OpenCV's own pool
# on top of them slowed the pipelined run (dog-walk 854x480, the woman clicked, alternated: 15.09 / 14.54 s at
# one thread, 15.26 / 15.30 s at two on a 2-core machine); both modes use it, so --sequential runs the stages
# one after the other on one thread
PER_THREAD_NICE = sys.platform.startswith("linux")  # setpriority on a thread id sets that thread's alone
WORKER_NICE = (("decode", 10), ("track", 5))  # nice increments of the pipelined workers upstream of the emitter
# (Linux, per thread; the emitter and the writer keep the process's).  The emitter is the slowest worker and the
# others wait for room in its queue: at equal priority the decoder and tracker, woken together each time it took
# a job, took a share of its core, and the other core idled between those bursts.  Drained downstream first,
# `unseen run` dog-walk 854x480 (the woman clicked) took 16.1-17.3 s against 17.6-19.1 s, alternated, the same
# output (the CPU used 178-180% of the two cores instead of 170%)


@dataclass(frozen=True)
class ThreadSettings:
    """Library thread pools and Python's GIL switch interval, the same for every mode (None: leave the
    library's or Python's setting as it is; OpenCV's is process-wide, as torch's and the interval are).

    The switch interval is how long a thread running Python code keeps the GIL while another waits for it
    (Python's default: 5 ms).  The tracker is the serial stage, and each of its OpenCV and numpy calls gives
    the GIL up and takes it back, waiting behind the emitter's Python code each time: at 1 ms, ``bench live``
    432x240 gave the cheap fill to 283 frames a minute on average over five runs, against 461 over three at
    5 ms, and a tracked step took 1.5 ms less.  It is process-wide (every stream of a server shares it)."""

    opencv: int | None = OPENCV_THREADS
    torch: int | None = None
    switch_interval: float | None = SWITCH_INTERVAL
    worker_nice: tuple[tuple[str, int], ...] = WORKER_NICE  # (worker, nice increment): see WORKER_NICE

    def apply(self) -> dict[str, Any]:
        """Set them; returns what is in force (stated in benchmark output)."""
        import cv2

        if self.opencv is not None:
            cv2.setNumThreads(self.opencv)
        torch = sys.modules.get("torch")  # only when a backend loaded it: no import for the classical path
        if torch is not None and self.torch is not None:
            torch.set_num_threads(self.torch)
        if self.switch_interval is not None:
            sys.setswitchinterval(self.switch_interval)
        return {"opencv": cv2.getNumThreads(), "torch": torch.get_num_threads() if torch is not None else None,
                "switch_interval_ms": round(sys.getswitchinterval() * 1000, 3),
                "worker_nice": dict(self.worker_nice) if PER_THREAD_NICE else {}}

    def enter_worker(self, worker: str) -> None:
        """On the worker's own thread, as it starts: lower its priority by its nice increment (where the
        system has per-thread priorities; an increment is always allowed, and dies with the thread)."""
        increment = dict(self.worker_nice).get(worker, 0)
        if increment <= 0 or not PER_THREAD_NICE:
            return
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
        except OSError:  # (a sandbox that forbids it: the worker runs at its inherited priority)
            pass


class DeviceContext:
    """A worker's device context.  On CUDA: a stream of its own (entered for the worker's whole loop),
    pinned host buffers and non-blocking copies, and :meth:`handoff` synchronises the stream before a
    result goes to the next worker.  On CPU every call is a no-op on the same path."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        self.stream = None
        self._stack = contextlib.ExitStack()
        if self.cuda:
            import torch

            self.stream = torch.cuda.Stream(device=device)

    def __enter__(self) -> "DeviceContext":
        if self.stream is not None:
            import torch

            self._stack.enter_context(torch.cuda.stream(self.stream))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def to_device(self, array: np.ndarray) -> Any:
        """A host array on the device: pinned, copied without blocking (CPU: the array itself)."""
        if not self.cuda:
            return array
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).pin_memory().to(self.device, non_blocking=True)

    def handoff(self) -> None:
        """Wait for this worker's queued device work before its result leaves the worker."""
        if self.stream is not None:
            self.stream.synchronize()


@dataclass(frozen=True)
class TraceEvent:
    name: str
    tid: int
    ts_us: float
    dur_us: float

    def as_chrome(self, pid: int) -> dict:
        return {"name": self.name, "ph": "X", "ts": round(self.ts_us, 1), "dur": round(self.dur_us, 1),
                "pid": pid, "tid": self.tid}


class Tracer:
    """Stage calls as Chrome trace events (``ph: X``), at most ``limit`` (drop policy: newest not
    recorded, counted), and busy time per worker (always)."""

    def __init__(self, enabled: bool = False, limit: int = 200_000, *, one_thread: bool = False) -> None:
        self.enabled = enabled
        self.one_thread = one_thread  # sequential: every stage on thread 1
        self.limit = limit
        self.events: list[TraceEvent] = []
        self.dropped = 0
        self.busy: dict[str, float] = {}  # worker -> seconds busy
        self.calls: dict[str, int] = {}
        self.t0 = time.perf_counter()
        self._tids: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, worker: str, stage: str, start: float, end: float, *, call: bool = True) -> None:
        """``call=False``: time the worker spent on a side task of its call (busy, not another call)."""
        with self._lock:
            self.busy[worker] = self.busy.get(worker, 0.0) + end - start
            if call:
                self.calls[worker] = self.calls.get(worker, 0) + 1
            if not self.enabled:
                return
            if len(self.events) >= self.limit:
                self.dropped += 1
                return
            tid = 1 if self.one_thread else self._tids.setdefault(worker, len(self._tids) + 1)
            self.events.append(TraceEvent(stage, tid, (start - self.t0) * 1e6, (end - start) * 1e6))

    @contextlib.contextmanager
    def span(self, worker: str, stage: str, *, call: bool = True):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(worker, stage, start, time.perf_counter(), call=call)

    def chrome(self) -> dict:
        pid = os.getpid()
        with self._lock:
            tids = {"sequential": 1} if self.one_thread else self._tids
            names = [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": w}}
                     for w, tid in tids.items()]
            return {"traceEvents": names + [e.as_chrome(pid) for e in self.events], "displayTimeUnit": "ms"}

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.chrome()))
