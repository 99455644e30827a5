"""Media faults: live timestamps the outputs must survive, a failed write that must not lose the
recording, truncated containers and undecodable frames.

OutputTimestamps is checked on a table of what live sources bring (repeats, jumps, steps back,
restarts, None, other time bases); FileSink and RtspPublisher are fed the same sequences and must
write every frame.  The publisher pushes to Debian's ffmpeg listening as an RTSP server (RECORD).
"""
from __future__ import annotations

import errno
import socket
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from unseen.engine.media import FileSink, MediaError, OutputTimestamps, StreamInfo, probe
from unseen.engine.pipeline import OutputFrame
from unseen.engine.stages import Frame

pytestmark = pytest.mark.timeout(60)

FFMPEG = "/usr/bin/ffmpeg"
K90 = Fraction(1, 90000)
W, H = 64, 48

# name, output (time base, rate, start, max_gap), input [(pts, time base)], expected output
TIMESTAMP_CASES = [
    ("steady 90 kHz", (K90, 25, None, 2.0), [(0, K90), (3600, K90), (7200, K90)], [0, 3600, 7200]),
    ("jitter kept", (K90, 25, None, 2.0), [(0, K90), (2900, K90), (7300, K90)], [0, 2900, 7300]),
    ("duplicate", (K90, 25, None, 2.0), [(0, K90), (3600, K90), (3600, K90), (7200, K90)],
     [0, 3600, 7200, 10800]),
    ("jump ahead 10 s", (K90, 25, None, 2.0), [(0, K90), (3600, K90), (903600, K90), (907200, K90)],
     [0, 3600, 7200, 10800]),
    ("jump ahead within max_gap", (K90, 25, None, 2.0), [(0, K90), (90000, K90)], [0, 90000]),
    ("backwards", (K90, 25, None, 2.0), [(0, K90), (3600, K90), (7200, K90), (1800, K90), (5400, K90)],
     [0, 3600, 7200, 10800, 14400]),
    ("restart at 0", (K90, 25, None, 2.0), [(90000, K90), (93600, K90), (0, K90), (3600, K90)],
     [90000, 93600, 97200, 100800]),
    ("None", (K90, 25, None, 2.0), [(None, None), (None, K90), (3600, K90), (None, K90), (14400, K90)],
     [0, 3600, 7200, 10800, 18000]),
    ("start at 0", (K90, 25, 0, 2.0), [(176777, K90), (180444, K90)], [0, 3667]),
    ("1/25 in, 90 kHz out", (K90, 25, None, 2.0), [(0, Fraction(1, 25)), (1, Fraction(1, 25))], [0, 3600]),
    ("ms in, 90 kHz out", (K90, 25, None, 2.0), [(40, Fraction(1, 1000)), (80, Fraction(1, 1000))],
     [3600, 7200]),
    ("mixed time bases", (K90, 25, None, 2.0), [(0, K90), (1, Fraction(1, 25)), (80, Fraction(1, 1000))],
     [0, 3600, 7200]),
    ("missing time base: the output's", (Fraction(1, 24), 24, None, 2.0), [(0, None), (1, None)], [0, 1]),
    ("jitter onto a coarse 1/24 clock", (Fraction(1, 24), 24, None, 2.0),
     [(0, K90), (3000, K90), (4000, K90), (7500, K90)], [0, 1, 2, 3]),
]


@pytest.mark.parametrize("out, given, expected", [c[1:] for c in TIMESTAMP_CASES],
                         ids=[c[0] for c in TIMESTAMP_CASES])
def test_output_timestamps(out, given, expected):
    tb, rate, start, max_gap = out
    clock = OutputTimestamps(tb, Fraction(rate), start=start, max_gap=max_gap)
    assert [clock(pts, base) for pts, base in given] == expected


def test_output_timestamps_strictly_increase_on_any_input():
    rng = np.random.default_rng(7)
    clock = OutputTimestamps(K90, Fraction(30000, 1001))
    out = []
    for _ in range(2000):
        kind = rng.integers(5)
        pts = None if kind == 0 else int(rng.integers(-10**6, 10**7))
        base = [K90, Fraction(1, 1000), Fraction(1001, 30000), None][rng.integers(4)]
        out.append(clock(pts, base))
    assert all(b > a for a, b in zip(out, out[1:]))
    assert clock.bridged > 0


# ------------------------------------------------------------------------------------- sinks
def live_sequence() -> list[tuple[int | None, Fraction | None]]:
    """34 frames stamped the way live sources stamp them: every case of the table, one after another."""
    seq: list[tuple[int | None, Fraction | None]] = []
    for _, _, given, _ in TIMESTAMP_CASES:
        seq += given
    return seq


def outputs(seq):
    rng = np.random.default_rng(1)
    for i, (pts, base) in enumerate(seq):
        image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        yield OutputFrame(Frame(i, image, pts=pts, time_base=base), image, {})


def file_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [p.pts for p in c.demux(video=0) if p.size]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_file_sink_writes_every_frame_of_live_timestamps(tmp_path, suffix):
    seq = live_sequence()
    sink = FileSink(tmp_path / f"rec{suffix}", StreamInfo(W, H, Fraction(25), K90, None, False))
    for out in outputs(seq):
        sink.write(out)
    sink.close()
    pts = file_pts(tmp_path / f"rec{suffix}")
    assert (sink.failed, sink.written, probe(tmp_path / f"rec{suffix}")["frames"]) == (0, len(seq), len(seq))
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert not list(tmp_path.glob(".*partial*"))


class RefusingMuxer:
    """Stands in for the sink's output container: refuses the muxing of the packets numbered in ``refuse``
    (as a disk that fills up, or a muxer that rejects a timestamp, would)."""

    def __init__(self, container, refuse: set[int], error: Exception) -> None:
        self._container, self._refuse, self._error, self._n = container, refuse, error, 0

    def mux(self, packet) -> None:
        self._n += 1
        if self._n in self._refuse:
            raise self._error
        self._container.mux(packet)

    def close(self) -> None:
        self._container.close()


@pytest.mark.parametrize("error, cause", [
    (av.error.ArgumentError(errno.EINVAL, "Invalid argument"), "not the disk"),
    (OSError(errno.ENOSPC, "No space left on device"), "check the disk space"),
], ids=["einval", "enospc"])
def test_failed_writes_are_named_and_the_recording_is_finished(tmp_path, error, cause):
    sink = FileSink(tmp_path / "rec.mp4", StreamInfo(W, H, Fraction(25), K90, None, False))
    sink._out = RefusingMuxer(sink._out, {3, 4, 9}, error)  # fault injection: the container's mux fails
    messages = []
    for out in outputs([(i * 3600, K90) for i in range(20)]):
        try:
            sink.write(out)
        except MediaError as exc:
            messages.append(str(exc))
    sink.close()
    assert len(messages) == 3 and all(cause in m and "\n" not in m for m in messages), messages
    assert (sink.failed, sink.written, probe(tmp_path / "rec.mp4")["frames"]) == (3, 17, 17)
    assert not list(tmp_path.glob(".*partial*"))


# ------------------------------------------------------------------------------------ publisher
def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.mark.skipif(not Path(FFMPEG).exists(), reason=f"{FFMPEG} not found; install Debian's ffmpeg")
def test_rtsp_publisher_sends_every_frame_of_live_timestamps(tmp_path):
    from support.live import free_port
    from unseen.server.rtsp import RtspPublisher

    port, received = free_port(), tmp_path / "received.ts"  # 90 kHz, as sent
    server = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-rtsp_flags", "listen",
                               "-timeout", "20", "-i", f"rtsp://127.0.0.1:{port}/live", "-c", "copy", "-y",
                               str(received)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _port_taken(port):  # binding, not connecting: ffmpeg accepts one connection only
            assert server.poll() is None and time.monotonic() < deadline, "ffmpeg did not listen"
            time.sleep(0.05)
        seq = live_sequence()
        publisher = RtspPublisher(f"rtsp://127.0.0.1:{port}/live", StreamInfo(W, H, Fraction(25), K90, None, False))
        for out in outputs(seq):
            publisher.write(out)
        publisher.close()
        _, err = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert (publisher.connects, publisher.failed, publisher.frames) == (1, 0, len(seq)), err
    assert probe(received)["frames"] == len(seq)
    pts = file_pts(received)
    assert all(b > a for a, b in zip(pts, pts[1:]))


# ------------------------------------------------------------------- truncated and damaged input
N = 60


@pytest.fixture(scope="module")
def scene():
    from unseen.engine.synthetic import make_clip

    return make_clip(N, 128, 80, seed=4)


@pytest.fixture(scope="module")
def faststart(tmp_path_factory, scene) -> Path:
    """60 frames, H.264 without B-frames, a keyframe every 15, the index (moov) at the front."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        vs = out.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = 128, 80, "yuv420p"
        vs.options = {"bf": "0", "g": "15", "keyint_min": "15", "sc_threshold": "0", "crf": "20"}
        for i, img in enumerate(scene.frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 24)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
    return path


def truncated(src: Path, dst: Path) -> Path:
    """The file cut at 30% of its bytes (it still opens: its index is at the front)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.3)])
    return dst


def damaged(src: Path, dst: Path) -> Path:
    """Flipped bits at the start of two non-key packets' data (the decoder refuses them) and the keyframe
    at frame 30 dropped (the frames after it lose their reference)."""
    with av.open(str(src)) as c, av.open(str(dst), "w") as out:
        vs = c.streams.video[0]
        o = out.add_stream_from_template(vs)
        for i, p in enumerate(c.demux(vs)):
            if p.dts is None or (i == 30 and p.is_keyframe):
                continue
            if i in (10, 40):
                data = bytearray(bytes(p))
                data[4:12] = bytes(b ^ 0xFF for b in data[4:12])
                q = av.Packet(bytes(data))
                q.pts, q.dts, q.time_base = p.pts, p.dts, p.time_base
                p = q
            p.stream = o
            out.mux(p)
    return dst


def decodable(path: Path) -> tuple[int, int]:
    """(packets, frames PyAV decodes) of a file, a packet the decoder refuses skipped: the ground truth."""
    packets = frames = 0
    with av.open(str(path)) as c:
        for p in c.demux(video=0):
            packets += bool(p.size)
            try:
                frames += len(p.decode())
            except av.error.FFmpegError:
                pass
    return packets, frames


INPUTS = {"intact": lambda src, dst: src, "truncated": truncated, "damaged": damaged}


@pytest.mark.parametrize("kind, truncated_expected, skips", [
    ("intact", False, False), ("truncated", True, True), ("damaged", False, True)])
def test_source_counts_skipped_frames_and_notices_truncation(faststart, tmp_path, kind, truncated_expected,
                                                            skips):
    from unseen.engine.media import Source, Truncation

    path = INPUTS[kind](faststart, tmp_path / f"{kind}.mp4")
    packets, frames = decodable(path)
    with Source(path) as source:
        got = sum(1 for _ in source)
        assert (got, source.skipped) == (frames, packets - frames)
        assert source.truncated == (Truncation(packets, N) if truncated_expected else None)
    assert (source.skipped > 0) == skips


def run_cli(*argv) -> int:
    from unseen.server.cli import main

    return main(["-q", "run", *map(str, argv), "--segmenter", "classical", "--propagator", "classical",
                 "--inpainter", "classical", "--delay", "4"])


@pytest.mark.parametrize("kind, strict, warning, error", [
    ("truncated", False, r"ended after \d+ of the 60 frames its container declares; the file looks truncated",
     None),
    ("truncated", True, None, r"ended after \d+ of the 60 frames its container declares; the file looks "
                              r"truncated; re-copy the file, or run without --strict"),
    ("damaged", False, r"\d+ frames could not be decoded and were skipped", None),
    ("damaged", True, None, r"\d+ frames of input .* could not be decoded; repair or re-encode the input, or "
                            r"run without --strict"),
], ids=["truncated", "truncated-strict", "damaged", "damaged-strict"])
def test_run_on_truncated_and_damaged_input(faststart, scene, tmp_path, capsys, caplog, kind, strict, warning,
                                            error):
    import re

    path = INPUTS[kind](faststart, tmp_path / f"{kind}.mp4")
    packets, frames = decodable(path)
    out = tmp_path / "out.mp4"
    x, y = scene.click(0)
    with caplog.at_level("WARNING", logger="unseen.media"):
        code = run_cli(path, out, "--click", f"{x},{y}", *(["--strict"] if strict else []))
    captured = capsys.readouterr()
    if error:
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("unseen: error: "), captured.err
        assert re.search(error, lines[0]), lines[0]
        assert not out.exists() and not list(tmp_path.glob(".*partial*"))
        return
    assert code == 0, captured.err
    assert any(re.search(warning, r.getMessage()) for r in caplog.records), caplog.text
    assert probe(out)["frames"] == frames < packets
    summary = re.search(r"wrote .*: (\d+) frames \((\d+) in(.*?)\)", captured.out)
    assert summary and (int(summary[1]), int(summary[2])) == (frames, frames), captured.out
    said = {"truncated": f"input truncated: {packets} of {N} frames",
            "damaged": f"{packets - frames} undecodable input frames skipped"}[kind]
    assert said in summary[3], captured.out


def test_a_live_stream_counts_the_frames_it_could_not_decode(faststart, tmp_path):
    """A live stream of damaged input goes on and says how many frames it skipped (REST and /metrics)."""
    import asyncio

    from support.app_client import client, run, settings

    bad = damaged(faststart, tmp_path / "damaged.mp4")
    packets, frames = decodable(bad)

    async def body():
        async with client(settings(sources=[{"name": "cam", "uri": str(bad)}])) as c:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                state = await (await c.get("/api/streams/cam")).json()
                if state["state"] == "ended":
                    break
                assert asyncio.get_running_loop().time() < deadline, state
                await asyncio.sleep(0.1)
            metrics = await (await c.get("/metrics")).text()
            return state, metrics

    state, metrics = run(body())
    assert state["skipped"] == packets - frames > 0 and state["frames_in"] == frames
    assert f'unseen_stream_skipped_total{{stream="cam"}} {float(packets - frames)}' in metrics
