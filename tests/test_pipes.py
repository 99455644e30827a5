"""`unseen run - -`: y4m (or raw frames) on stdin and stdout, between real ffmpeg processes."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from unseen.engine.media import MediaError, StreamInfo
from unseen.engine.pipeline import OutputFrame
from unseen.engine.pipes import PipeSink, RawFormat, open_pipe_source
from unseen.engine.stages import Frame
from unseen.engine.synthetic import make_clip

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
needs_ffmpeg = pytest.mark.skipif(not Path(FFMPEG).exists(), reason="ffmpeg not found; run tests/support/ci_services.sh")
W, H, N = 160, 96, 20
UNSEEN = [sys.executable, "-m", "unseen.server.cli", "-q", "run", "-", "-", "--segmenter", "classical",
          "--propagator", "classical", "--inpainter", "classical"]


@pytest.fixture(scope="module")
def small():
    return make_clip(N, W, H, seed=0)


def _ffmpeg(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", *args], input=data, capture_output=True,
                          check=True).stdout


def _frames(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(-1, H, W, 3)


def _y4m(frames: list[np.ndarray], pix_fmt: str = "yuv420p") -> bytes:
    """RGB frames as ffmpeg's y4m."""
    return _ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", "25", "-i", "-",
                   "-pix_fmt", pix_fmt, "-f", "yuv4mpegpipe", "-", data=b"".join(f.tobytes() for f in frames))


def _decode_y4m(data: bytes) -> np.ndarray:
    return _frames(_ffmpeg("-f", "yuv4mpegpipe", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-", data=data))


def _changes(out: np.ndarray, before: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean absolute change inside the object, median change outside it (beyond a 15 px margin; the hole
    of a removed object also takes what hangs below it, so not all of the rest stays as it was)."""
    diff = np.abs(out.astype(int) - before.astype(int)).mean(axis=2)
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    return float(diff[mask].mean()), float(np.median(diff[far]))


@needs_ffmpeg
def test_ffmpeg_to_unseen_to_ffmpeg_removes_the_object(tmp_path, small):
    source = tmp_path / "in.y4m"
    source.write_bytes(_y4m(small.frames))
    out, log = tmp_path / "out.rgb", tmp_path / "unseen.log"
    x, y = small.click(0)
    with log.open("wb") as err:
        up = subprocess.Popen([FFMPEG, "-loglevel", "error", "-f", "yuv4mpegpipe", "-i", str(source),
                               "-f", "yuv4mpegpipe", "-"], stdout=subprocess.PIPE)
        mid = subprocess.Popen([*UNSEEN, "--click", f"{x},{y}"], stdin=up.stdout, stdout=subprocess.PIPE, stderr=err)
        down = subprocess.Popen([FFMPEG, "-loglevel", "error", "-f", "yuv4mpegpipe", "-i", "-", "-f", "rawvideo",
                                 "-pix_fmt", "rgb24", "-y", str(out)], stdin=mid.stdout)
        up.stdout.close()
        mid.stdout.close()
        codes = down.wait(), mid.wait(), up.wait()
    assert codes == (0, 0, 0), log.read_text()
    frames, seen = _frames(out.read_bytes()), _decode_y4m(source.read_bytes())
    assert len(frames) == len(seen) == N
    once_more = _decode_y4m(_y4m(list(seen)))  # what a y4m hop alone does to the frames unseen saw
    for i in range(N):  # each frame in its place: the rest of it as a y4m hop leaves it
        inside, outside = _changes(frames[i], seen[i], small.masks[i])
        assert inside > 30, f"frame {i}: the object is still there"
        assert outside <= _changes(once_more[i], seen[i], small.masks[i])[1] + 1, f"frame {i} changed beyond the object"
    assert "wrote -: 20 frames" in log.read_text()  # the summary went to stderr


def test_raw_frames_in_and_out(tmp_path, small):
    source = tmp_path / "in.rgb"
    source.write_bytes(b"".join(f[..., ::-1].tobytes() for f in small.frames))  # BGR in
    x, y = small.click(0)
    with source.open("rb") as stdin:
        done = subprocess.run([*UNSEEN, "--click", f"{x},{y}", "--raw-in", f"{W}x{H}:bgr24", "--rate", "30",
                               "--raw-out"], stdin=stdin, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) == N * W * H * 3  # nothing but the frames on stdout
    frames = _frames(done.stdout)
    for i in range(N):
        inside, outside = _changes(frames[i], small.frames[i], small.masks[i])
        assert inside > 30 and outside == 0, f"frame {i}"


def _damaged(kind: str, frames: list[np.ndarray]) -> bytes:
    data = io.BytesIO()
    sink = PipeSink(data, StreamInfo(W, H, Fraction(25), Fraction(1, 25), None, False))
    for i, f in enumerate(frames):
        sink.write(OutputFrame(Frame(i, f), f, {}))
    sink.close()
    whole = data.getvalue()
    frame_size = len(b"FRAME\n") + W * H * 3 // 2
    header = whole[: len(whole) - len(frames) * frame_size]
    return {"truncated": whole[: len(header) + 2 * frame_size + 6 + 5000],
            "garbled": whole[: len(header) + frame_size] + b"FRAMX" + whole[len(header) + frame_size + 5:],
            "not y4m": b"\x00\x01junk" * 1000,
            "empty": b""}[kind]


@pytest.mark.parametrize("kind, words", [("truncated", "ended 5000 bytes into frame 2"),
                                         ("garbled", "frame 1 of the y4m stream"),
                                         ("not y4m", "is not a y4m stream"), ("empty", "stdin is empty")])
def test_a_damaged_y4m_stream_ends_in_one_line(kind, words, small):
    done = subprocess.run([*UNSEEN, "--click", "20,20"], input=_damaged(kind, small.frames[:4]), capture_output=True)
    err = done.stderr.decode()
    assert done.returncode == 2
    assert err.count("\n") == 1 and err.startswith("unseen: error: ") and words in err, err
    assert "Traceback" not in err


@needs_ffmpeg
@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p", "yuv444p", "gray"])
def test_y4m_from_ffmpeg_reads_as_ffmpeg_decodes_it(small, pix_fmt):
    data = _y4m(small.frames[:2], pix_fmt)
    source = open_pipe_source(io.BytesIO(data))
    frames = [f.image for f in source]
    assert (source.info.width, source.info.height, source.info.rate) == (W, H, 25)
    assert np.array_equal(np.stack(frames), _decode_y4m(data))  # the same conversion as ffmpeg's, exactly


@needs_ffmpeg
def test_y4m_written_reads_back_in_ffmpeg(small):
    source = open_pipe_source(io.BytesIO(_y4m(small.frames[:3])))
    frames = [f.image for f in source]
    out = io.BytesIO()
    sink = PipeSink(out, source.info)
    for i, f in enumerate(frames):
        sink.write(OutputFrame(Frame(i, f), f, {}))
    sink.close()
    assert out.getvalue().startswith(b"YUV4MPEG2 W160 H96 F25:1 ")  # the input's size and rate
    again = _decode_y4m(out.getvalue())
    assert len(again) == 3 and np.abs(again.astype(int) - np.stack(frames)).mean() < 3  # one 4:2:0 hop


@pytest.mark.parametrize("pix_fmt", ["rgb24", "bgr24", "yuv420p", "gray"])
def test_raw_formats_round_trip_at_odd_sizes(pix_fmt):
    yy, xx = np.mgrid[0:33, 0:47]  # smooth colours: 4:2:0 keeps them but for rounding
    img = np.stack([40 + 4 * xx, 200 - 5 * yy, 90 + 2 * xx + 2 * yy], axis=2).astype(np.uint8)
    if pix_fmt == "gray":
        img = np.repeat(img[..., :1], 3, axis=2)
    out = io.BytesIO()
    info = StreamInfo(47, 33, Fraction(25), Fraction(1, 25), None, False)
    sink = PipeSink(out, info, raw=pix_fmt)
    sink.write(OutputFrame(Frame(0, img), img, {}))
    fmt = RawFormat.parse(f"47x33:{pix_fmt}")
    assert len(out.getvalue()) == fmt.frame_bytes
    back = [f.image for f in open_pipe_source(io.BytesIO(out.getvalue()), raw=fmt)]
    assert len(back) == 1 and back[0].shape == img.shape
    error = np.abs(back[0].astype(int) - img)
    assert error.max() <= (0 if pix_fmt.endswith("24") else 8) and error.mean() < 2  # odd last row and column included


def test_bad_pipe_arguments_are_named():
    with pytest.raises(ValueError, match="write WIDTHxHEIGHT:FORMAT"):
        RawFormat.parse("640x360:rgb48")
    with pytest.raises(MediaError, match="C420p10 .* not supported"):
        open_pipe_source(io.BytesIO(b"YUV4MPEG2 W8 H8 F25:1 C420p10\n"))
    done = subprocess.run([*UNSEEN[:5], "in.mp4", "-", "--click", "1,1", "--raw-in", "8x8"], capture_output=True)
    assert done.returncode == 2 and done.stderr.decode().strip() == \
        "unseen: error: --raw-in describes frames on stdin; give - as the input"
