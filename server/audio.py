"""A live stream's audio: taken in beside the video, held until the frames it belongs with leave the
delay line, then handed to the publisher and recorder (each writes it on its own thread) and to every
WebRTC viewer's audio track.

* A pulled source (RTSP, file): its packets are decoded on the reader thread (engine/audio.py
  :class:`AudioInput`) and stamped on the stream clock with the same offset as the source's frames, so a
  beep and the frame it came with keep their distance exactly.
* A browser webcam: aiortc's decoded Opus frames, placed on the stream clock by their arrival beside the
  video (aiortc does not relate the two tracks' RTP clocks), then by their own timestamps.
* Every queue is bounded with a named policy (drop-oldest); audio never holds a frame back: when the video
  stalls, the held audio is dropped oldest first.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from fractions import Fraction
from typing import Any, Iterable

import numpy as np

from unseen.engine.audio import AudioChunk, AudioError, AudioFormat, AudioInput
from unseen.engine.streams import AudioLine, Policy

log = logging.getLogger("unseen.audio")

AUDIO_LINE_ITEMS = 1024  # chunks held for the delay line (about 20 s of 20 ms packets): drop-oldest
AUDIO_VIEWER_ITEMS = 50  # chunks waiting for one viewer (about 1 s): drop-oldest
EARLY_ITEMS = 256  # chunks that came before the video's first frames (a connection's start): drop-oldest
WEBRTC_AUDIO = AudioFormat("opus", 48000, "stereo")  # what aiortc's Opus decoder gives
WEBCAM_RESYNC = 0.25  # seconds: a browser's audio further than this from its video's clock is re-anchored


class AudioRelay:
    """The audio for every viewer's track: each subscriber has a bounded queue (drop-oldest, counted)."""

    policy = Policy.DROP_OLDEST

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int = AUDIO_VIEWER_ITEMS) -> None:
        self._loop = loop
        self.maxlen = maxlen
        self.subscribers: set[AudioSubscription] = set()
        self.closed = False

    def publish(self, chunk: AudioChunk | None) -> None:
        """Any thread: a chunk to every subscriber (None closes the relay)."""
        if not self.subscribers and chunk is not None:
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, chunk)
        except RuntimeError:  # the loop is closed: nobody is listening
            pass

    def _deliver(self, chunk: AudioChunk | None) -> None:
        if chunk is None:
            self.closed = True
        for sub in list(self.subscribers):
            sub.put(chunk)

    def subscribe(self) -> "AudioSubscription":
        sub = AudioSubscription(self, self.maxlen)
        if self.closed:
            sub.put(None)
        self.subscribers.add(sub)
        return sub


class AudioSubscription:
    """One viewer's queue of audio chunks (event loop only)."""

    def __init__(self, relay: AudioRelay, maxlen: int) -> None:
        self._relay = relay
        self._items: collections.deque[AudioChunk] = collections.deque()
        self.maxlen = maxlen
        self.dropped = 0
        self.closed = False
        self._event = asyncio.Event()

    def put(self, chunk: AudioChunk | None) -> None:
        if chunk is None:
            self.closed = True
        else:
            if len(self._items) >= self.maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(chunk)
        self._event.set()

    def drain(self) -> list[AudioChunk]:
        """Every chunk waiting now, oldest first (without waiting)."""
        items, self._items = list(self._items), collections.deque()
        return items

    async def next(self) -> AudioChunk | None:
        """The oldest waiting chunk; None once the relay closed (and nothing is left)."""
        while not self._items and not self.closed:
            self._event.clear()
            await self._event.wait()
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        self._relay.subscribers.discard(self)
        self.put(None)


class LiveAudio:
    """The audio of one live stream: intake on the stream clock, the delay line, the hand-out."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, time_base: Fraction) -> None:
        self.name = name
        self.time_base = time_base  # the stream clock's
        self.line = AudioLine(AUDIO_LINE_ITEMS)
        self.viewers = AudioRelay(loop)
        self.format: AudioFormat | None = None  # the latest source's (None: no audio so far)
        self.error: str | None = None  # why the source's audio is not used (one line)
        self.chunks_in = 0
        self.chunks_out = 0
        self._input: AudioInput | None = None
        self._offset: int | None = None  # stream ticks minus the source's ticks (None: not settled yet)
        self._first: int | None = None  # the offset the connection's first frame gave
        self._early: collections.deque[tuple[int, np.ndarray, bytes]] = collections.deque(maxlen=EARLY_ITEMS)

    # ---------------------------------------------------------------- a pulled source
    def open(self, source: Any) -> None:
        """A (re)opened source: decode its audio stream, if any, from now on (reader thread)."""
        self._input, self._offset, self._first = None, None, None
        self._early.clear()
        stream = getattr(source, "audio_stream", None)
        if stream is None:
            return
        try:
            self._input = AudioInput(stream, f"stream {self.name!r}")
        except AudioError as exc:
            if self.error != str(exc):
                log.warning("%s", exc)
            self.error = str(exc)
            return
        self.error = None
        self.format = self._input.format
        source.on_audio = self._packet

    def video(self, seconds: float | None, pts: int, step: int) -> None:
        """A frame of the source taken in at stream time ``pts``: the audio follows the same offset.  It is
        settled once two frames agree within ``step`` (a connection's first frame may lack a timestamp);
        the audio that came before goes out then."""
        if seconds is None:
            return
        offset = pts - round(Fraction(seconds) / self.time_base)
        if self._offset is None and (self._first is None or abs(offset - self._first) > step):
            self._first = offset
            return
        self._offset = offset
        while self._early:
            self._stamp(*self._early.popleft())

    def _packet(self, packet: Any) -> None:
        """An audio packet the source demuxed (reader thread); a failure here ends the audio, not the video."""
        try:
            self._take(packet)
        except Exception as exc:  # noqa: BLE001 - the reader must go on with the frames
            cause = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            self.error = (f"stream {self.name!r}: its audio failed ({cause}); the video goes on without audio "
                          f"until the source reconnects")
            log.warning("%s", self.error)
            self._input = None

    def _take(self, packet: Any) -> None:
        if self._input is None or packet.pts is None:
            return
        samples = self._input.decode(packet)
        if samples is None:
            return
        own = round(packet.pts * packet.time_base / self.time_base)
        if self._offset is None:
            self._early.append((own, samples, bytes(packet)))  # drop-oldest: before the video settles
        else:
            self._stamp(own, samples, bytes(packet))

    def _stamp(self, own: int, samples: np.ndarray, data: bytes) -> None:
        assert self._input is not None and self._offset is not None
        self._push(AudioChunk(own + self._offset, self.time_base, samples, self._input.format, data))

    # ---------------------------------------------------------------- a browser webcam
    def expect(self, fmt: AudioFormat = WEBRTC_AUDIO) -> None:
        """Audio that is coming (a publisher's track): outputs that start before its first chunk make room."""
        if self.format is None:
            self.format = fmt

    def feed(self, samples: np.ndarray, rate: int, layout: str, seconds: float | None, now: int) -> None:
        """Decoded webcam audio (s16 interleaved) whose track time is ``seconds``; ``now``: the stream
        clock's time at its arrival, from the video's."""
        fmt = self.format if self.format is not None and (self.format.rate, self.format.layout) == (rate, layout) \
            else AudioFormat("opus", rate, layout)
        self.format = fmt
        own = round(Fraction(seconds if seconds is not None else 0) / self.time_base)
        if self._offset is None or abs(own + self._offset - now) * self.time_base > WEBCAM_RESYNC:
            self._offset = now - own
        self._push(AudioChunk(own + self._offset, self.time_base, samples, fmt))

    # ---------------------------------------------------------------- out
    def _push(self, chunk: AudioChunk) -> None:
        self.chunks_in += 1
        self.line.push(chunk)

    def release(self, before: int, sinks: Iterable[Any]) -> None:
        """The audio that starts before stream time ``before`` to the sinks and viewers (the frame ending
        there is leaving now)."""
        for chunk in self.line.release(before):
            for sink in sinks:
                sink.write_audio(chunk)
            self.viewers.publish(chunk)
            self.chunks_out += 1

    @property
    def dropped(self) -> int:
        return self.line.dropped

    def close(self) -> None:
        self.viewers.publish(None)
