"""Audio beside a live stream's video, with PyAV.

A source's audio packets are decoded once (:class:`AudioInput`) into :class:`AudioChunk` objects on the
stream's clock; each output container writes them with :class:`AudioOut`: the coded packets copied when the
container takes the source's codec, otherwise the decoded samples encoded (16-bit PCM into Matroska for a PCM
source such as G.711, AAC otherwise).  Timestamps follow the video's output timestamps, so the audio keeps
its place beside the frames it came with.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

log = logging.getLogger("unseen.audio")

FALLBACK_CODEC = "aac"  # what an output gets when it cannot take the source's codec
PCM_FALLBACK = "pcm_s16le"  # Matroska: a PCM source (G.711) stays uncompressed rather than going to AAC
PCM_CONTAINERS = ("matroska",)


class AudioError(RuntimeError):
    """A source's audio cannot be used (one line: cause and fix); its video goes on."""


@dataclass(frozen=True)
class AudioFormat:
    """A source's audio: its codec, sample rate and the layout of the decoded samples (mono or stereo)."""

    codec: str  # the source's codec as PyAV names it ("aac", "opus", "pcm_mulaw", ...)
    rate: int  # samples per second
    layout: str  # "mono" or "stereo" (more channels are mixed down to stereo)
    template: Any = field(default=None, compare=False, repr=False)  # a stream with the coded parameters (copy)

    @property
    def channels(self) -> int:
        return 1 if self.layout == "mono" else 2

    @property
    def pcm(self) -> bool:
        return self.codec.startswith("pcm_")


@dataclass(frozen=True)
class AudioChunk:
    """One packet's audio on the stream clock: the decoded samples and, when there is one, the coded packet."""

    pts: int  # the first sample's time on the stream clock
    time_base: Fraction  # the stream clock's
    samples: np.ndarray  # s16 interleaved, shape (1, frames * channels)
    format: AudioFormat
    data: bytes | None = None  # the packet as received, for a stream copy (None: decoded audio only)

    @property
    def frames(self) -> int:
        """Samples per channel."""
        return self.samples.shape[1] // self.format.channels

    @property
    def seconds(self) -> Fraction:
        return self.pts * self.time_base


def _detached(stream: Any) -> Any:
    """A copy of ``stream``'s coded parameters that outlives its container (a reader that reconnects
    closes the container, and a publisher that reconnects needs them again)."""
    holder = av.open(io.BytesIO(), "w", format="nut")  # never written: it only keeps the parameters
    return holder.add_stream_from_template(stream)


class AudioInput:
    """A source's audio stream, each packet decoded to s16 (mono or stereo) as an :class:`AudioChunk`.

    Raises :class:`AudioError` when the codec has no decoder here.  A packet that fails to decode is
    dropped and counted (``errors``); the first failure is logged as one line."""

    def __init__(self, stream: Any, what: str) -> None:
        self.what = what
        ctx = stream.codec_context
        if ctx is None or not ctx.sample_rate:
            name = ctx.name if ctx is not None else _codec_name(stream)
            raise AudioError(f"{what}: its audio codec ({name}) cannot be decoded here; the video goes on without "
                             f"audio; send AAC, Opus or G.711 audio")
        layout = "mono" if ctx.layout.nb_channels == 1 else "stereo"
        self.format = AudioFormat(ctx.name, int(ctx.sample_rate), layout, template=_detached(stream))
        self._decoder = ctx
        self._resampler = av.AudioResampler(format="s16", layout=layout, rate=self.format.rate)
        self.errors = 0

    def decode(self, packet: av.Packet) -> np.ndarray | None:
        """The packet's samples (s16 interleaved, (1, n)); None when it does not decode."""
        try:
            frames = [f for frame in self._decoder.decode(packet) for f in self._resampler.resample(frame)]
        except (av.error.FFmpegError, ValueError) as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("%s: audio packets cannot be decoded (%s); they are dropped, the video goes on",
                            self.what, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
            return None
        if not frames:
            return np.zeros((1, 0), np.int16)
        return np.concatenate([f.to_ndarray().reshape(1, -1) for f in frames], axis=1)


def _codec_name(stream: Any) -> str:
    try:
        return str(stream.codec.name)
    except Exception:  # noqa: BLE001 - a stream without a codec PyAV knows
        return "unknown"


class AudioOut:
    """The audio stream of one output container (created before the container starts writing).

    ``write(chunk, seconds)`` writes a chunk at ``seconds`` on the output's timeline (the video's mapping of
    the chunk's stream time; None: before the first frame, dropped).  Timestamps are kept strictly increasing:
    a chunk that would overlap the last by more than half its length is dropped (``dropped``)."""

    def __init__(self, container: Any, fmt: AudioFormat) -> None:
        self.format = fmt
        self._out = container
        self.copy = fmt.template is not None and _accepts(container, fmt.codec)
        if self.copy:
            self.stream = container.add_stream_from_template(fmt.template)
        else:
            codec = PCM_FALLBACK if fmt.pcm and container.format.name in PCM_CONTAINERS else FALLBACK_CODEC
            self.stream = container.add_stream(codec, rate=fmt.rate, layout=fmt.layout)
        self.time_base = Fraction(1, fmt.rate)
        self.written = 0
        self.dropped = 0
        self._next: int | None = None  # the sample after the last one written

    def write(self, chunk: AudioChunk, seconds: Fraction | None) -> None:
        if seconds is None or seconds < 0 or chunk.format != self.format or (self.copy and chunk.data is None):
            self.dropped += 1  # before the first frame, or audio this stream was not set up for
            return
        pts, n = round(seconds * self.format.rate), chunk.frames
        if not n and not self.copy:
            return  # a packet that decoded to nothing: nothing to encode
        if self._next is not None and pts < self._next:
            if self._next - pts > max(1, n // 2):
                self.dropped += 1
                return
            pts = self._next  # rounding: the chunks are contiguous
        self._next = pts + n
        if self.copy:
            packet = av.Packet(chunk.data)
            packet.pts = packet.dts = pts
            packet.duration = n
            packet.time_base = self.time_base
            packet.stream = self.stream
            self._out.mux(packet)
        else:
            frame = av.AudioFrame.from_ndarray(chunk.samples, format="s16", layout=self.format.layout)
            frame.sample_rate = self.format.rate
            frame.pts, frame.time_base = pts, self.time_base
            self._out.mux(self.stream.encode(frame))
        self.written += 1

    def flush(self) -> None:
        if not self.copy:
            self._out.mux(self.stream.encode(None))


_ACCEPTS: dict[tuple[str, str], bool] = {}


def _accepts(container: Any, codec: str) -> bool:
    """Whether ``container``'s muxer takes ``codec`` as it is (PyAV's own check, asked once per pair)."""
    key = (container.format.name, codec)
    if key not in _ACCEPTS:
        probe = av.open(io.BytesIO(), "w", format=key[0])
        try:
            probe.add_stream(codec, rate=48000 if codec == "opus" else 8000)
            _ACCEPTS[key] = True
        except (ValueError, av.error.FFmpegError):
            _ACCEPTS[key] = False
        finally:
            probe.close()
    return _ACCEPTS[key]
