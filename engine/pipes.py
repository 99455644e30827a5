"""Video on pipes: y4m (YUV4MPEG2) or raw frames of a stated size and pixel format, read from a binary
stream (stdin) as a runtime source and written to one (stdout) as a runtime sink.

The y4m framing is parsed here, exactly: ffmpeg's demuxer (PyAV) ends a stream quietly at a partial
frame, so a truncated stream could not be told from a complete one.  Pixels are converted by PyAV
(swscale: BT.601, the range the header names), as for every other input.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Iterable, Iterator

import av
import numpy as np

from .media import MediaError, StreamInfo
from .stages import Frame

__all__ = ["PIPE", "PipeSink", "PipeSource", "RawFormat", "RawReader", "Y4mHeader", "Y4mReader", "claim_stdout",
           "open_pipe_source"]

log = logging.getLogger("unseen.pipes")

PIPE = "-"  # the path that means stdin (input) or stdout (output)
DEFAULT_RATE = Fraction(25)  # raw frames carry no rate; nor may a y4m header
MAX_LINE = 1024  # bytes: a longer y4m header or frame line is not y4m
Y4M_MAGIC = b"YUV4MPEG2"
FRAME_MAGIC = b"FRAME"
Y4M_PIXELS = {"420jpeg": "yuv420p", "420mpeg2": "yuv420p", "420paldv": "yuv420p", "420": "yuv420p",
              "422": "yuv422p", "444": "yuv444p", "mono": "gray"}
RAW_PIXELS = ("rgb24", "bgr24", "gray", "yuv420p")
CONVERT_HINT = "convert it first, e.g. ffmpeg -i IN -pix_fmt yuv420p -f yuv4mpegpipe -"


# ----------------------------------------------------------------------------- pixel layouts
def plane_shapes(pix_fmt: str, width: int, height: int) -> list[tuple[int, int]]:
    """(rows, bytes per row) of each plane; chroma planes of odd sizes round up, as y4m and ffmpeg do."""
    cw, ch = math.ceil(width / 2), math.ceil(height / 2)
    return {"rgb24": [(height, 3 * width)], "bgr24": [(height, 3 * width)], "gray": [(height, width)],
            "yuv420p": [(height, width), (ch, cw), (ch, cw)], "yuv422p": [(height, width), (height, cw), (height, cw)],
            "yuv444p": [(height, width)] * 3}[pix_fmt]


def frame_bytes(pix_fmt: str, width: int, height: int) -> int:
    return sum(r * c for r, c in plane_shapes(pix_fmt, width, height))


def _range(full: bool) -> str:
    return "JPEG" if full else "MPEG"


def to_rgb(data: bytes | bytearray, pix_fmt: str, width: int, height: int, *, full_range: bool = False) -> np.ndarray:
    """One frame's bytes as an RGB array (height x width x 3, uint8)."""
    flat = np.frombuffer(data, np.uint8)
    if pix_fmt == "rgb24":
        return flat.reshape(height, width, 3).copy()
    if pix_fmt == "bgr24":
        return np.ascontiguousarray(flat.reshape(height, width, 3)[..., ::-1])
    planes, at = [], 0
    for rows, cols in plane_shapes(pix_fmt, width, height):
        planes.append(flat[at: at + rows * cols].reshape(rows, cols))
        at += rows * cols
    w2, h2 = width + width % 2, height + height % 2  # swscale wants even sizes: pad by the edge, crop after
    if pix_fmt == "yuv444p":
        frame = av.VideoFrame.from_ndarray(np.stack([_pad(p, h2, w2) for p in planes]), format=pix_fmt)
    elif pix_fmt == "gray":
        frame = av.VideoFrame.from_ndarray(_pad(planes[0], h2, w2), format=pix_fmt)
    else:  # yuv420p / yuv422p: the planes one after another, in rows of the padded width
        chroma_rows = h2 // 2 if pix_fmt == "yuv420p" else h2
        stacked = np.concatenate([_pad(planes[0], h2, w2).ravel()] +
                                 [_pad(p, chroma_rows, w2 // 2).ravel() for p in planes[1:]])
        frame = av.VideoFrame.from_ndarray(stacked.reshape(-1, w2), format=pix_fmt)
    rgb = frame.to_ndarray(format="rgb24", src_color_range=_range(full_range))
    return np.ascontiguousarray(rgb[:height, :width])


def from_rgb(image: np.ndarray, pix_fmt: str) -> bytes:
    """An RGB array as one frame's bytes (``yuv420p``: BT.601, limited range, chroma rounded up)."""
    height, width = image.shape[:2]
    if pix_fmt == "rgb24":
        return np.ascontiguousarray(image).tobytes()
    if pix_fmt == "bgr24":
        return np.ascontiguousarray(image[..., ::-1]).tobytes()
    w2, h2 = width + width % 2, height + height % 2
    padded = np.ascontiguousarray(_pad(image, h2, w2))
    frame = av.VideoFrame.from_ndarray(padded, format="rgb24").reformat(  # bicubic, as the ffmpeg CLI scales
        format=pix_fmt, dst_color_range="MPEG", interpolation="BICUBIC")
    flat = frame.to_ndarray().ravel()
    if pix_fmt == "gray":
        return np.ascontiguousarray(flat.reshape(h2, w2)[:height, :width]).tobytes()
    luma = flat[: h2 * w2].reshape(h2, w2)[:height, :width]
    chroma = flat[h2 * w2:].reshape(2, h2 // 2, w2 // 2)  # yuv420p: U, V (already rounded up)
    return b"".join(np.ascontiguousarray(p).tobytes() for p in (luma, chroma[0], chroma[1]))


def _pad(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if a.shape[0] == rows and a.shape[1] == cols:
        return a
    pad = [(0, rows - a.shape[0]), (0, cols - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, mode="edge")


# ----------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class RawFormat:
    """Raw frames: ``WIDTHxHEIGHT:PIX_FMT`` (e.g. ``640x360:rgb24``)."""

    width: int
    height: int
    pix_fmt: str = "rgb24"

    @classmethod
    def parse(cls, text: str) -> "RawFormat":
        m = re.fullmatch(r"\s*(\d+)x(\d+)(?::(\w+))?\s*", text)
        if not m or int(m[1]) < 1 or int(m[2]) < 1 or (m[3] or "rgb24") not in RAW_PIXELS:
            raise ValueError(f"bad raw format {text!r}; write WIDTHxHEIGHT:FORMAT, e.g. 640x360:rgb24 "
                             f"(formats: {', '.join(RAW_PIXELS)})")
        return cls(int(m[1]), int(m[2]), m[3] or "rgb24")

    @property
    def frame_bytes(self) -> int:
        return frame_bytes(self.pix_fmt, self.width, self.height)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}:{self.pix_fmt}"


@dataclass(frozen=True)
class Y4mHeader:
    """The stream header: ``YUV4MPEG2 W H F A I C X`` (aspect, interlacing and unknown tags are ignored)."""

    width: int
    height: int
    rate: Fraction | None
    colorspace: str = "420jpeg"
    full_range: bool = False  # ffmpeg's XCOLORRANGE=FULL

    @classmethod
    def parse(cls, line: bytes, name: str) -> "Y4mHeader":
        fields = line.split()
        if not fields or fields[0] != Y4M_MAGIC:
            raise MediaError(f"{name} is not a y4m stream (it starts with {line[:20]!r}); pipe y4m in, e.g. "
                             f"ffmpeg -i IN -f yuv4mpegpipe -, or give --raw-in WIDTHxHEIGHT:FORMAT")
        tags = {}
        for f in fields[1:]:
            text = f.decode("ascii", "replace")
            tags.setdefault(text if text.startswith("X") else text[:1], text[1:])
        try:
            width, height = int(tags["W"]), int(tags["H"])
            rate = None
            if "F" in tags:
                num, den = tags["F"].split(":")
                rate = Fraction(int(num), int(den)) if int(num) > 0 and int(den) > 0 else None
        except (KeyError, ValueError, ZeroDivisionError) as exc:
            raise MediaError(f"the y4m header of {name} is damaged ({line[:80]!r}); check the command writing "
                             f"the stream") from exc
        colorspace = tags.get("C", "420jpeg")
        if colorspace not in Y4M_PIXELS:
            raise MediaError(f"y4m colour space C{colorspace} on {name} is not supported (only 8-bit "
                             f"{', '.join(Y4M_PIXELS)}); {CONVERT_HINT}")
        if width < 1 or height < 1:
            raise MediaError(f"the y4m header of {name} gives a {width}x{height} frame; check the command writing it")
        return cls(width, height, rate, colorspace, "XCOLORRANGE=FULL" in tags)

    @property
    def pix_fmt(self) -> str:
        return Y4M_PIXELS[self.colorspace]

    def line(self) -> bytes:
        rate = Fraction(self.rate or DEFAULT_RATE)
        extra = " XYSCSS=420JPEG" if self.colorspace == "420jpeg" else ""
        rng = " XCOLORRANGE=FULL" if self.full_range else " XCOLORRANGE=LIMITED"
        return (f"YUV4MPEG2 W{self.width} H{self.height} F{rate.numerator}:{rate.denominator} Ip A1:1 "
                f"C{self.colorspace}{extra}{rng}\n").encode("ascii")


# ----------------------------------------------------------------------------- readers
def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the stream."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_line(stream: BinaryIO, name: str, what: str) -> bytes:
    """One ``\\n``-ended line (without it); b"" at the end of the stream."""
    line = bytearray()
    while len(line) <= MAX_LINE:
        byte = stream.read(1)
        if not byte:
            if line:
                raise MediaError(f"{name} ended inside the {what} line; the y4m stream is truncated; check the "
                                 f"command writing it")
            return b""
        if byte == b"\n":
            return bytes(line)
        line += byte
    raise MediaError(f"the {what} line of {name} runs past {MAX_LINE} bytes ({bytes(line[:20])!r}...); the stream "
                     f"is damaged or not y4m; check the command writing it")


class Y4mReader:
    """The frames of a y4m stream as RGB arrays; the header is read when it is made."""

    def __init__(self, stream: BinaryIO, name: str = "stdin") -> None:
        self.stream = stream
        self.name = name
        magic = _read_exact(stream, len(Y4M_MAGIC))
        if not magic:
            raise MediaError(f"{name} is empty (no y4m header); pipe a video in, e.g. ffmpeg -i IN -f yuv4mpegpipe - "
                             f"| unseen run - OUT ...")
        line = magic + (_read_line(stream, name, "y4m header") if magic == Y4M_MAGIC else b"")
        self.header = Y4mHeader.parse(line, name)
        self.width, self.height, self.rate = self.header.width, self.header.height, self.header.rate
        self.frame_bytes = frame_bytes(self.header.pix_fmt, self.width, self.height)

    def __iter__(self) -> Iterator[np.ndarray]:
        h = self.header
        for index in itertools.count():
            line = _read_line(self.stream, self.name, f"frame {index} header")
            if not line:
                return
            if line.split(b" ", 1)[0] != FRAME_MAGIC:
                raise MediaError(f"frame {index} of the y4m stream on {self.name} starts with {line[:20]!r}, not "
                                 f"FRAME; the stream is damaged; check the command writing it")
            data = _read_exact(self.stream, self.frame_bytes)
            if len(data) < self.frame_bytes:
                raise MediaError(f"the y4m stream on {self.name} ended {len(data)} bytes into frame {index} (of "
                                 f"{self.frame_bytes}); it is truncated; check the command writing it")
            yield to_rgb(data, h.pix_fmt, self.width, self.height, full_range=h.full_range)


class RawReader:
    """Raw frames of a stated :class:`RawFormat`, back to back, as RGB arrays."""

    rate = None

    def __init__(self, stream: BinaryIO, fmt: RawFormat, name: str = "stdin") -> None:
        self.stream = stream
        self.format = fmt
        self.name = name
        self.width, self.height = fmt.width, fmt.height

    def __iter__(self) -> Iterator[np.ndarray]:
        size = self.format.frame_bytes
        for index in itertools.count():
            data = _read_exact(self.stream, size)
            if not data:
                return
            if len(data) < size:
                raise MediaError(f"the raw stream on {self.name} ended {len(data)} bytes into frame {index} (of "
                                 f"{size} for {self.format}); it is truncated, or --raw-in does not state its "
                                 f"size and format")
            yield to_rgb(data, self.format.pix_fmt, self.width, self.height)


class PipeSource:
    """A runtime source over a reader: :class:`Frame` objects numbered from 0, timestamps ``index / rate``."""

    live = False
    skipped = 0
    truncated = None
    audio_stream = None

    def __init__(self, reader: Y4mReader | RawReader, rate: Fraction, name: str = "stdin") -> None:
        self.reader = reader
        self.uri = name
        rate = Fraction(rate)
        self.info = StreamInfo(reader.width, reader.height, rate, 1 / rate, None, False)

    def __iter__(self) -> Iterator[Frame]:
        for index, image in enumerate(self.reader):
            yield Frame(index=index, image=image, pts=index, time_base=self.info.time_base,
                        wallclock=time.monotonic())

    def close(self) -> None:
        pass  # the stream belongs to the caller (stdin stays open)


def open_pipe_source(stream: BinaryIO, *, raw: RawFormat | None = None, rate: Fraction | float | None = None,
                     name: str = "stdin") -> PipeSource:
    """y4m (the default) or ``raw`` frames from ``stream``; ``rate`` overrides the y4m header's (raw: 25)."""
    if rate is not None and not rate > 0:
        raise MediaError(f"frame rate {rate} is not positive; give --rate FPS, e.g. --rate 25")
    reader = RawReader(stream, raw, name) if raw is not None else Y4mReader(stream, name)
    chosen = Fraction(rate).limit_denominator(1001) if rate is not None else reader.rate or DEFAULT_RATE
    return PipeSource(reader, chosen, name)


# ----------------------------------------------------------------------------- the sink
class PipeSink:
    """Output frames to a binary stream (stdout): y4m (4:2:0, BT.601 limited range) or raw ``pix_fmt``.

    Each frame is flushed as it is written, so the reader downstream has it at once.  A reader that
    closes its end ends the run with a one-line error."""

    def __init__(self, stream: BinaryIO, info: StreamInfo, *, raw: str | None = None, name: str = "stdout") -> None:
        if raw is not None and raw not in RAW_PIXELS:
            raise MediaError(f"raw output format {raw!r} is not one of {', '.join(RAW_PIXELS)}; choose one of them")
        self.stream = stream
        self.name = name
        self.raw = raw
        self.header = None if raw else Y4mHeader(info.width, info.height, info.rate).line()
        self.frames = 0
        self._closed = False

    def write(self, output) -> None:
        """Write one :class:`~unseen.engine.pipeline.OutputFrame`."""
        body = from_rgb(output.image, self.raw or "yuv420p")
        self._send([self._take_header(), b"" if self.raw else FRAME_MAGIC + b"\n", body])
        self.frames += 1

    def close(self, *, keep: bool = True) -> None:
        """Flush; a y4m stream gets its header even with no frame.  Written frames cannot be taken back."""
        if self._closed:
            return
        self._closed = True
        self._send([self._take_header()])

    def _take_header(self) -> bytes:
        header, self.header = self.header or b"", None
        return header

    def _send(self, parts: Iterable[bytes]) -> None:
        try:
            for part in parts:
                if part:
                    self.stream.write(part)
            self.stream.flush()
        except BrokenPipeError as exc:
            _quiet(self.stream)
            raise MediaError(f"the reader of {self.name} closed the pipe after {self.frames} frames; keep the "
                             f"command reading unseen's output running to the end") from exc


def claim_stdout() -> BinaryIO:
    """Standard output for the video alone: a stream on a duplicate of descriptor 1, which then points at
    standard error, so a stray print or a library's write goes there instead of into the video."""
    sys.stdout.flush()
    video = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return video


def _quiet(stream: BinaryIO) -> None:
    """Point a broken stream's descriptor at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
