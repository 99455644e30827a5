"""Media I/O with PyAV: sources (files, URLs, RTSP, frame folders) and the file sink.

Resources are explicit (``open``/``close``, context managers) and every network
open/read has a timeout, as PyAV recommends.  Errors are :class:`MediaError` with
a one-line message that names the cause and the fix.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import cv2
import numpy as np

from .audio import AudioChunk, AudioFormat, AudioOut
from .stages import Frame

log = logging.getLogger("unseen.media")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_FOLDER_RATE = Fraction(24)  # DAVIS-style frame folders carry no rate; 24 fps is the usual one
MIN_RATE, MAX_RATE = Fraction(1), Fraction(240)  # a frame rate outside this is a container's guess, not a rate
RECONNECT_BACKOFF = (0.5, 8.0)  # seconds: first wait and cap of a network peer's capped exponential backoff
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class MediaError(RuntimeError):
    """A source or sink cannot be opened, read or written (one-line message with the fix)."""


@dataclass
class StreamInfo:
    width: int
    height: int
    rate: Fraction  # nominal frame rate
    time_base: Fraction
    frames: int | None  # known frame count, when the container says
    audio: bool


@dataclass(frozen=True)
class Truncation:
    """A container that ended before the frame count its header declares."""

    read: int  # video frames (packets) the container gave
    declared: int  # video frames its header declares

    def describe(self, uri: str) -> str:
        return (f"input {uri!r} ended after {self.read} of the {self.declared} frames its container declares; "
                f"the file looks truncated")


class DecodeTally:
    """Counts the video packets the decoder never turned into a picture (data it refused, a missing
    reference frame).  Pictures come out in pts order, so a packet whose pts is below a picture's and
    that has not come out never will; at the end of the stream every packet still out is counted."""

    LIMIT = 256  # pending packets; a decoder holds far fewer, so older ones are counted as lost

    def __init__(self) -> None:
        self.packets = 0
        self.pictures = 0
        self.skipped = 0
        self._pending: deque[int] = deque()

    def sent(self, pts: int | None) -> None:
        self.packets += 1
        if pts is None:
            return
        if len(self._pending) >= self.LIMIT:
            self._pending.popleft()
            self.skipped += 1
        self._pending.append(pts)

    def received(self, pts: int | None) -> None:
        self.pictures += 1
        if pts is None or not self._pending:
            return
        later = [p for p in self._pending if p > pts]
        matched = pts in self._pending
        self.skipped += len(self._pending) - len(later) - matched
        self._pending = deque(later)

    def ended(self) -> None:
        """The stream ended and the decoder was flushed: what has not come out never will."""
        self.skipped = max(self.skipped, self.packets - self.pictures)
        self._pending.clear()


def is_network(uri: str) -> bool:
    return uri.lower().startswith(NETWORK_SCHEMES)


def redact(uri: str) -> str:
    """Hide credentials in a URL (rtsp://user:pass@host -> rtsp://***@host)."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", uri)


def _numbered(path: Path) -> list[Path]:
    files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]

    def key(p: Path):
        digits = re.findall(r"\d+", p.stem)
        return (int(digits[-1]) if digits else -1, p.name)

    return sorted(files, key=key)


class Source:
    """A video source: anything PyAV opens, or a folder of numbered frames.

    Iterating yields :class:`Frame` objects (RGB, in decode order == presentation
    order) with their pts and time base.  Audio packets, if any, go to
    ``on_audio`` (for pass-through) as they are demuxed.  Frames that fail to decode
    are skipped and counted (``skipped``); a container that ends before the frame
    count it declares is logged and noted (``truncated``).
    """

    def __init__(self, uri: str | os.PathLike, *, open_timeout: float = 10.0, read_timeout: float = 10.0,
                 loop: bool = False, rate: Fraction | None = None, live: bool | None = None) -> None:
        self.uri = str(uri)
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.loop = loop
        self.live = is_network(self.uri) if live is None else live
        self.on_audio: Callable[[av.Packet], None] | None = None
        self._container: av.container.InputContainer | None = None
        self._files: list[Path] | None = None
        self._rate_override = rate
        self._skipped = 0  # in passes already ended (looped files)
        self._tally: DecodeTally | None = None
        self._audio_shift = Fraction(0)  # seconds the audio of a looped pass is moved by
        self.truncated: Truncation | None = None
        self.info = self._open()

    @property
    def skipped(self) -> int:
        """Frames that could not be decoded and were skipped, so far."""
        return self._skipped + (self._tally.skipped if self._tally is not None else 0)

    # -- opening --------------------------------------------------------------------------
    def _open(self) -> StreamInfo:
        path = Path(self.uri)
        if not is_network(self.uri):
            if not path.exists():
                raise MediaError(f"input {self.uri!r} does not exist; check the path")
            if path.is_dir():
                return self._open_folder(path)
            if not os.access(path, os.R_OK):
                raise MediaError(f"input {self.uri!r} is not readable; check its permissions")
        options = {}
        if self.uri.lower().startswith(("rtsp://", "rtsps://")):
            options = {"rtsp_transport": "tcp", "probesize": "32768", "analyzeduration": "0", "fflags": "nobuffer"}
        try:
            self._container = av.open(self.uri, options=options, timeout=(self.open_timeout, self.read_timeout))
        except av.error.ExitError as exc:  # timeouts surface as immediate-exit errors
            raise MediaError(f"input {self.uri!r} did not answer within {self.open_timeout:g} s; "
                             f"check the URL and that the source is up") from exc
        except (av.error.FFmpegError, OSError) as exc:
            hint = "check the URL and that the source is up" if is_network(self.uri) else \
                "the file is not a video PyAV can read; re-encode it (e.g. to H.264 mp4)"
            raise MediaError(f"cannot open input {self.uri!r} ({_short(exc)}); {hint}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(f"input {self.uri!r} has no video stream; give a video file or stream")
        vs = self._container.streams.video[0]
        vs.thread_type = "AUTO"
        rate = self._rate_override or self._nominal_rate(vs)
        tb = vs.time_base or Fraction(1, 90000)
        frames = int(vs.frames) if vs.frames else None
        if frames is None and vs.duration and vs.time_base and not self.live:
            frames = None  # a duration alone is not a reliable frame count
        cc = vs.codec_context
        return StreamInfo(cc.width, cc.height, Fraction(rate), Fraction(tb), frames,
                          bool(self._container.streams.audio))

    def _nominal_rate(self, vs) -> Fraction:
        """The container's average rate (for RTSP: the H.264 timing info) if plausible; live, the rate of
        the timestamps instead when the two differ by more than a quarter (timing info that lies)."""
        rates = [Fraction(r) for r in (vs.average_rate, vs.base_rate, vs.guessed_rate)
                 if r and MIN_RATE <= Fraction(r) <= MAX_RATE]
        if not rates:
            return Fraction(25)
        rate, stamped = rates[0], Fraction(vs.base_rate or 0)
        if self.live and MIN_RATE <= stamped <= MAX_RATE and abs(stamped / rate - 1) > Fraction(1, 4):
            log.warning("input %s says %s fps but its timestamps run at %.3g fps; using the timestamps' rate",
                        self.uri.split("@")[-1], rate, float(stamped))
            rate = stamped.limit_denominator(1001)
        return rate

    def _open_folder(self, path: Path) -> StreamInfo:
        files = _numbered(path)
        if not files:
            raise MediaError(f"input folder {self.uri!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                             f"give a folder of numbered frames")
        first = _read_image(files[0])
        self._files = files
        rate = self._rate_override or DEFAULT_FOLDER_RATE
        tb = 1 / rate
        return StreamInfo(first.shape[1], first.shape[0], rate, tb, len(files), False)

    @property
    def audio_stream(self):
        if self._container is not None and self._container.streams.audio:
            return self._container.streams.audio[0]
        return None

    # -- reading --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        index = 0
        offset = 0  # pts offset added on each loop so timestamps keep increasing
        while True:
            last_pts = None
            for frame in (self._folder_frames() if self._files is not None else self._decode()):
                pts = frame.pts
                if pts is None:  # the first frame of an RTSP stream may have none
                    pts = last_pts + self._step() if last_pts is not None else 0
                last_pts = pts
                frame.pts = pts + offset
                frame.index = index
                index += 1
                yield frame
            if not self.loop or index == 0:
                return
            offset = frame.pts + self._step()  # type: ignore[possibly-undefined]
            self._audio_shift = offset * self.info.time_base  # the audio of the next pass follows too
            self._rewind()

    def _step(self) -> int:
        return max(1, round(1 / (self.info.rate * self.info.time_base)))

    def _folder_frames(self) -> Iterator[Frame]:
        assert self._files is not None
        step = self._step()
        for i, p in enumerate(self._files):
            img = _read_image(p)
            if img.shape[:2] != (self.info.height, self.info.width):
                raise MediaError(f"frame {p.name} is {img.shape[1]}x{img.shape[0]}, not "
                                 f"{self.info.width}x{self.info.height} like the first; resize the folder's frames")
            yield Frame(index=i, image=img, pts=i * step, time_base=self.info.time_base,
                        wallclock=time.monotonic())

    def _decode(self) -> Iterator[Frame]:
        assert self._container is not None
        vs = self._container.streams.video[0]
        streams = [vs] + ([self.audio_stream] if self.audio_stream is not None else [])
        tally = self._tally = DecodeTally()
        try:
            for packet in self._container.demux(*streams):
                if packet.stream.type == "audio":
                    if self.on_audio is not None and packet.dts is not None:
                        self.on_audio(self._shifted(packet))
                    continue
                if packet.size:
                    tally.sent(packet.pts)
                for vf in self._pictures(packet):
                    tally.received(vf.pts)
                    yield Frame(index=-1, image=vf.to_ndarray(format="rgb24"), pts=vf.pts,
                                time_base=Fraction(vf.time_base or vs.time_base), wallclock=time.monotonic())
        except av.error.ExitError as exc:
            raise MediaError(f"input {self.uri!r} stopped sending for {self.read_timeout:g} s; "
                             f"check that the source is up") from exc
        except av.error.FFmpegError as exc:
            raise MediaError(f"reading {self.uri!r} failed ({_short(exc)}); check the source") from exc
        self._ended(tally)

    def _shifted(self, packet: av.Packet) -> av.Packet:
        """An audio packet of a looped pass, moved after the passes before it like the frames."""
        if self._audio_shift and packet.time_base:
            shift = round(self._audio_shift / packet.time_base)
            packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift
        return packet

    def _pictures(self, packet: av.Packet) -> list:
        """The pictures a packet completes; none (counted by the tally) when the decoder refuses its data."""
        try:
            return packet.decode()
        except av.error.FFmpegError as exc:  # bad data in this packet: the decoder goes on with the next
            log.debug("input %s: a frame could not be decoded (%s); skipped", self.uri, _short(exc))
            return []

    def _ended(self, tally: DecodeTally) -> None:
        """The end of one pass over the input: settle the skipped frames, notice a truncated container."""
        tally.ended()
        self._skipped += tally.skipped
        self._tally = None
        if tally.skipped:
            log.warning("input %r: %d frames could not be decoded and were skipped", self.uri, tally.skipped)
        declared = self.info.frames
        if self.truncated is None and declared is not None and tally.packets < declared:
            self.truncated = Truncation(tally.packets, declared)
            log.warning("%s", self.truncated.describe(self.uri))

    def _rewind(self) -> None:
        if self._container is not None:
            self._container.seek(0)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MediaError(f"cannot read image {str(path)!r}; check the file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# ------------------------------------------------------------------------------------------
@dataclass
class OutputTimestamps:
    """Strictly increasing timestamps for an encoder, from whatever a live source brings.

    Maps each frame's ``(pts, time_base)`` onto ``time_base``.  A frame whose timestamp is missing,
    repeats, goes back (a restart at 0) or jumps ahead by more than ``max_gap`` seconds follows the
    previous output by the nominal frame step instead, and later frames continue from there.
    ``start``: the first output timestamp (None: the first frame's own, so files keep their timing).
    """

    time_base: Fraction
    rate: Fraction
    start: int | None = None
    max_gap: float = 2.0
    bridged: int = field(default=0, init=False)  # frames whose timestamp was replaced by the nominal step
    _last: int | None = field(default=None, init=False, repr=False)
    _offset: int | None = field(default=None, init=False, repr=False)  # output - input, in output ticks

    @property
    def step(self) -> int:
        """The nominal frame step in output ticks (at least 1; 25 fps when the rate is unknown)."""
        return max(1, round(1 / (Fraction(self.rate or 25) * self.time_base)))

    def __call__(self, pts: int | None, time_base: Fraction | None = None) -> int:
        ticks = None if pts is None else round(Fraction(pts) * Fraction(time_base or self.time_base) / self.time_base)
        if self._last is None:
            out = self.start if self.start is not None else (ticks if ticks is not None else 0)
        else:
            out = ticks + self._offset if ticks is not None and self._offset is not None else None
            if out is None or out <= self._last or (out - self._last) * self.time_base > self.max_gap:
                out = self._last + self.step
                self.bridged += 1
        if ticks is not None and (self._offset is None or out != ticks + self._offset):
            self._offset = out - ticks
        self._last = out
        return out

    def seconds(self, pts: int, time_base: Fraction) -> Fraction | None:
        """The output time of an input timestamp under the current mapping, without taking a frame (audio
        beside the video); None before the first frame."""
        if self._offset is None:
            return None
        return (Fraction(pts) * Fraction(time_base) / self.time_base + self._offset) * self.time_base


class FileSink:
    """Encodes frames (H.264/yuv420p, no B-frames) to a file, with audio passed through.

    The file is written under a temporary name next to the target and renamed when :meth:`close`
    completes, so a failed run never leaves a half-written output.  Timestamps go through
    :class:`OutputTimestamps` (the encoder runs in the stream's own time base, not 1/rate), so a live
    source's jitter, repeats and restarts never reach the muxer as a step back.  A write that fails
    is counted (``failed``) and reported; ``close`` still finishes the file with every frame written.
    """

    def __init__(self, path: str | os.PathLike, info: StreamInfo, *, audio_template=None,
                 audio_format: AudioFormat | None = None,
                 codec: str = "libx264", crf: int = 18, preset: str = "veryfast", max_gap: float = 10.0) -> None:
        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise MediaError(f"output folder {str(parent)!r} does not exist; create it or choose another output")
        if not os.access(parent, os.W_OK):
            raise MediaError(f"output folder {str(parent)!r} is not writable; choose another output")
        suffix = self.path.suffix or ".mp4"
        self.tmp = parent / f".{self.path.stem}.partial{suffix}"
        try:
            self.tmp.open("wb").close()  # PyAV opens lazily: find an unwritable target now, not mid-run
        except OSError as exc:
            raise MediaError(f"cannot write {str(self.path)!r} ({_short(exc)}); choose a writable output path") from exc
        try:
            self._out = av.open(str(self.tmp), "w")
        except (av.error.FFmpegError, ValueError) as exc:
            self.tmp.unlink(missing_ok=True)
            raise MediaError(f"cannot write {str(self.path)!r} ({_short(exc)}); use a .mp4 or .mkv output") from exc
        self.info = info
        width, height = info.width - info.width % 2, info.height - info.height % 2
        self._video = self._out.add_stream(codec, rate=info.rate)
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = info.time_base
        self._video.codec_context.time_base = info.time_base  # not 1/rate: jittered live pts would collide
        gop = max(1, int(round(float(info.rate) * 2)))  # a keyframe at least every 2 s
        self._video.options = {"crf": str(crf), "preset": preset, "bf": "0", "g": str(gop)}
        self._audio = None
        if audio_template is not None:
            try:
                self._audio = self._out.add_stream_from_template(audio_template)
            except (av.error.FFmpegError, ValueError) as exc:
                log.warning("audio stream cannot be copied into %s (%s); output has no audio", self.path, exc)
        self._live_audio: AudioOut | None = None  # a live stream's decoded audio (AudioChunk)
        if audio_format is not None:
            try:
                self._live_audio = AudioOut(self._out, audio_format)
            except (av.error.FFmpegError, ValueError) as exc:
                log.warning("audio cannot be written into %s (%s); the recording has no audio", self.path, _short(exc))
        try:
            self._out.start_encoding()  # the muxer fixes its time base now (mkv: 1/1000)
        except (av.error.FFmpegError, ValueError) as exc:
            self._out.close()
            self.tmp.unlink(missing_ok=True)
            raise MediaError(f"cannot write {str(self.path)!r} ({_short(exc)}); use a .mp4 or .mkv output") from exc
        # timestamps in the muxer's own time base, so no two frames can share a tick in the file
        self.timestamps = OutputTimestamps(Fraction(self._video.time_base), info.rate, max_gap=max_gap)
        self.frames = 0  # frames handed to the encoder
        self.written = 0  # video packets in the file (one per frame: no B-frames)
        self.failed = 0  # frames or packets the encoder or muxer refused
        self._closed = False

    def write(self, output) -> None:
        """Encode one :class:`~unseen.engine.pipeline.OutputFrame` with its source timestamp."""
        image = output.image
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: self._video.height, : self._video.width]),
                                        format="rgb24")
        vf.pts = self.timestamps(output.frame.pts, output.frame.time_base)
        vf.time_base = self.timestamps.time_base
        self.frames += 1
        try:
            packets = self._video.encode(vf)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.failed += 1
            raise MediaError(f"encoding frame {self.frames - 1} for {str(self.path)!r} failed "
                             f"({_short(exc)}); {_write_fix(exc)}") from exc
        self._mux(packets)

    def _mux(self, packets) -> None:
        error = None
        for packet in packets:
            try:
                self._out.mux(packet)
                self.written += 1
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                self.failed += 1
                error = error or MediaError(f"writing {str(self.path)!r} failed at pts {packet.pts} "
                                            f"(time base {packet.time_base}; {_short(exc)}); {_write_fix(exc)}")
        if error is not None:
            raise error

    def write_audio(self, packet: av.Packet | AudioChunk) -> None:
        """A file's audio packet (copied as it is) or a live stream's :class:`AudioChunk` (at the output time
        of its stream time, like the frames)."""
        if isinstance(packet, AudioChunk):
            if self._live_audio is not None:
                self._live_audio.write(packet, self.timestamps.seconds(packet.pts, packet.time_base))
            return
        if self._audio is None:
            return
        packet.stream = self._audio
        self._out.mux(packet)

    def close(self, *, keep: bool = True) -> None:
        """Finish the file with every frame written and move it into place (``keep=False`` discards it)."""
        if self._closed:
            return
        self._closed = True
        error: MediaError | None = None
        if keep:
            try:
                if self._live_audio is not None:
                    self._live_audio.flush()
                self._mux(self._video.encode(None))
            except MediaError as exc:  # counted; the frames written still make a file
                error = exc
            except av.error.FFmpegError as exc:
                error = MediaError(f"finishing {str(self.path)!r} failed ({_short(exc)}); {_write_fix(exc)}")
        try:
            self._out.close()
        except (av.error.FFmpegError, OSError) as exc:
            keep = False  # no trailer: the file cannot be played
            error = MediaError(f"finishing {str(self.path)!r} failed ({_short(exc)}); {_write_fix(exc)}")
        if keep and self.written > 0:
            os.replace(self.tmp, self.path)
            log.info("recorded %d frames to %s, %d failed writes", self.written, self.path, self.failed)
        else:
            self.tmp.unlink(missing_ok=True)
        if error is not None:
            raise error


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EBADF)


def _write_fix(exc: BaseException) -> str:
    """The fix for a failed encode/mux: out of space or a closed file is the disk; anything else is ours."""
    if getattr(exc, "errno", None) in _DISK_ERRORS:
        return "check the disk space and that the output is still writable"
    return ("the encoder or muxer refused the frame's data or timestamp, not the disk; report it with the "
            "source's details (unseen -v)")


def probe(path: str | os.PathLike) -> dict:
    """Frame count, rate, duration and streams of a media file (decodes every video frame)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        pts = [f.pts for f in c.decode(vs)]
        return {
            "frames": len(pts),
            "rate": Fraction(vs.average_rate) if vs.average_rate else None,
            "time_base": Fraction(vs.time_base),
            "first_pts": pts[0] if pts else None,
            "last_pts": pts[-1] if pts else None,
            "width": vs.codec_context.width,
            "height": vs.codec_context.height,
            "audio": bool(c.streams.audio),
            "duration": float(c.duration / 1e6) if c.duration else None,
        }
