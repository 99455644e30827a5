"""RTSP publisher (push) of a processed stream, with PyAV.

H.264 (libx264, ``zerolatency``) without B-frames, a keyframe at least every 2 s,
RTSP over TCP.  When the server goes away the publisher drops frames while it
reconnects with capped exponential backoff; timestamps (:class:`OutputTimestamps`,
in the RTP clock's 1/90000, never 1/rate) are strictly increasing within a connection
and start again at zero on the next one.  The source's audio goes along (engine/audio.py): copied when RTP
carries its codec (AAC, Opus, G.711), else encoded to AAC, at the output time of its stream time.
"""
from __future__ import annotations

import logging
import time
from fractions import Fraction

import av
import numpy as np

from unseen.engine.audio import AudioChunk, AudioFormat, AudioOut
from unseen.engine.media import MediaError, OutputTimestamps, RECONNECT_BACKOFF, StreamInfo, redact
from unseen.engine.pipeline import OutputFrame


log = logging.getLogger("unseen.rtsp")
RTP_TIME_BASE = Fraction(1, 90000)
INTERLEAVE = {"max_interleave_delta": "100000"}  # µs: a frame waits at most 0.1 s for audio to interleave with
MAX_GAP = 2.0  # seconds: a longer jump in the source's clock is bridged (readers would stall)


class RtspPublisher:
    """A :class:`~unseen.engine.session.Sink` that pushes frames to an RTSP server (RECORD)."""

    def __init__(self, url: str, info: StreamInfo, *, timeout: float = 5.0, preset: str = "ultrafast",
                 audio: AudioFormat | None = None) -> None:
        if not url.lower().startswith(("rtsp://", "rtsps://")):
            raise MediaError(f"publish URL {redact(url)!r} is not rtsp://; give the RTSP server's publish URL")
        self.url = url
        self.info = info
        self.timeout = timeout
        self.preset = preset
        self.width, self.height = info.width - info.width % 2, info.height - info.height % 2
        self.rate = Fraction(info.rate or 25).limit_denominator(1001)
        self.frames = 0
        self.connects = 0
        self.failed = 0  # frames the encoder or the server refused
        self.error: str | None = None
        self._out = None
        self._video = None
        self.audio_format = audio  # the source's audio (copied when RTP carries its codec, else AAC)
        self._audio: AudioOut | None = None
        self.audio_failed = 0  # audio chunks the muxer refused (the video goes on)
        self._timestamps = OutputTimestamps(RTP_TIME_BASE, self.rate, start=0, max_gap=MAX_GAP)
        self._retry_at = 0.0
        self._backoff = RECONNECT_BACKOFF[0]
        self._closed = False
        self._connect()

    def _connect(self) -> bool:
        try:
            out = av.open(self.url, "w", format="rtsp", options={"rtsp_transport": "tcp", **INTERLEAVE},
                          timeout=(self.timeout, self.timeout))
            video = out.add_stream("libx264", rate=self.rate)
            video.width, video.height = self.width, self.height
            video.pix_fmt = "yuv420p"
            video.time_base = RTP_TIME_BASE
            video.codec_context.time_base = RTP_TIME_BASE  # not 1/rate: jittered live pts would collide
            gop = max(1, min(int(round(float(self.rate) * 2)), 60))  # a keyframe at least every 2 s
            video.options = {"preset": self.preset, "tune": "zerolatency", "bf": "0", "g": str(gop),
                             "keyint_min": str(gop)}
            video.codec_context.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:bframes=0:scenecut=0"}
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self._failed(f"cannot publish to {redact(self.url)!r} ({_short(exc)}); check that the RTSP server "
                         f"is up and accepts RECORD on that path")
            return False
        self._out, self._video = out, video
        self._audio = self._add_audio(out)
        self._timestamps = OutputTimestamps(RTP_TIME_BASE, self.rate, start=0, max_gap=MAX_GAP)
        self._backoff = RECONNECT_BACKOFF[0]
        self.connects += 1
        self.error = None
        log.info("publishing to %s (%dx%d @ %s fps)", redact(self.url), self.width, self.height, self.rate)
        return True

    def _add_audio(self, out) -> AudioOut | None:
        if self.audio_format is None:
            return None
        try:
            return AudioOut(out, self.audio_format)
        except (av.error.FFmpegError, ValueError) as exc:
            log.warning("publishing to %s: the audio (%s) cannot be sent (%s); the video goes without it",
                        redact(self.url), self.audio_format.codec, _short(exc))
            return None

    def write_audio(self, chunk: AudioChunk) -> None:
        """A chunk of the source's audio at the output time of its stream time (dropped while reconnecting)."""
        if self._closed or self._out is None or self._audio is None:
            return
        try:
            self._audio.write(chunk, self._timestamps.seconds(chunk.pts, chunk.time_base))
        except (av.error.FFmpegError, OSError, ValueError) as exc:  # the next frame finds a broken connection
            self.audio_failed += 1
            if self.audio_failed == 1:
                log.warning("publishing to %s: an audio packet was refused (%s); the video goes on",
                            redact(self.url), _short(exc))

    def _failed(self, message: str) -> None:
        self.error = message
        log.warning("%s; retrying in %.1f s", message, self._backoff)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(RECONNECT_BACKOFF[1], self._backoff * 2)
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except Exception:  # noqa: BLE001 - the server is gone already
                pass
        self._out = self._video = self._audio = None

    def write(self, output: OutputFrame) -> None:
        if self._closed:
            return
        if self._out is None:
            if time.monotonic() < self._retry_at or not self._connect():
                return  # dropped while the server is away
        assert self._video is not None and self._out is not None
        image = np.ascontiguousarray(output.image[: self.height, : self.width])
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._timestamps(output.frame.pts, output.frame.time_base)
        frame.time_base = RTP_TIME_BASE
        try:
            for packet in self._video.encode(frame):
                self._out.mux(packet)
            self.frames += 1
        except av.error.ArgumentError as exc:  # EINVAL: this frame's data or timestamp, not the connection
            self.failed += 1
            log.warning("publishing to %s: a frame was refused (pts %s; %s); it is dropped, the connection kept",
                        redact(self.url), frame.pts, _short(exc))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.failed += 1
            self._failed(f"publishing to {redact(self.url)!r} failed ({_short(exc)}); reconnecting")

    def close(self, *, keep: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if self._out is not None and self._video is not None:
            try:
                if self._audio is not None:
                    self._audio.flush()
                for packet in self._video.encode(None):
                    self._out.mux(packet)
            except Exception:  # noqa: BLE001
                pass
        self._drop_connection()
        log.info("published %d frames to %s over %d connection(s), %d failed writes", self.frames,
                 redact(self.url), self.connects, self.failed)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
