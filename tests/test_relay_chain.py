"""Outputs behind a real relay chain: ffmpeg -> RTSP relay A -> ``unseen serve`` -> record + relay B.

ffmpeg (Debian's CLI) publishes an H.264 mp4 without B-frames (``-re -stream_loop -1 -c copy``) to
GStreamer's RECORD->PLAY relay; ``unseen serve`` pulls the relay's /out (the relay stamps frames on
arrival, so timestamps jitter) and records it and republishes it to a second relay.  Readers of the
second relay get frames; the recording is a playable mp4 with every frame the stream put out; no
write failed and the publisher never reconnected.  The table has the clip as written, and the same
clip whose H.264 timing info (VUI) claims half its rate, as some cameras' does: the relay then
reports 12 fps for a 24 fps stream.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import av
import pytest

from conftest import write_av
from support.live import SYSTEM_PYTHON, Proc, free_port, gst_missing, running, unseen_cmd, wait_state
from unseen.client.control import rest
from unseen.engine.media import probe
from unseen.engine.synthetic import make_clip

FFMPEG = "/usr/bin/ffmpeg"
SERVER = Path(__file__).parent / "support" / "rtsp_server.py"
PYAV_RTSP = {"rtsp_transport": "tcp", "probesize": "32768", "analyzeduration": "0", "fflags": "nobuffer"}

pytestmark = [pytest.mark.rtsp, pytest.mark.slow, pytest.mark.timeout(120)]


def _missing() -> str | None:
    if not Path(FFMPEG).exists():
        return f"{FFMPEG} not found; install Debian's ffmpeg"
    return gst_missing()


@pytest.fixture(scope="module")
def tools():
    reason = _missing()
    if reason:
        pytest.skip(reason)


def make_source_clip(folder: Path, vui_tick_rate: int | None) -> Path:
    """48 synthetic frames at 24 fps, H.264 without B-frames; optionally with a rewritten VUI tick rate."""
    clip = write_av(folder / "clip.mp4", make_clip(48, 160, 96, seed=2).frames, rate=24)
    if vui_tick_rate is None:
        return clip
    out = folder / "clip-vui.mp4"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", str(clip), "-c", "copy",
                    "-bsf:v", f"h264_metadata=tick_rate={vui_tick_rate}", str(out)], check=True, timeout=30)
    return out


def read_back(url: str, n: int, timeout: float = 15.0) -> int:
    """How many of ``n`` frames a reader of ``url`` decodes within ``timeout`` s."""
    got, deadline = 0, time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        try:
            with av.open(url, options=PYAV_RTSP, timeout=(5, 3)) as c:
                for _ in c.decode(video=0):
                    got += 1
                    if got >= n or time.monotonic() > deadline:
                        break
        except av.error.FFmpegError:
            time.sleep(0.3)  # the relay has no publisher yet
    return got


@pytest.mark.parametrize("vui_tick_rate", [None, 24], ids=["vui-as-written", "vui-claims-half-rate"])
def test_relay_chain_record_and_republish(tools, tmp_path, vui_tick_rate):
    clip = make_source_clip(tmp_path, vui_tick_rate)
    port_a, port_b, http = free_port(), free_port(), free_port()
    record = tmp_path / "rec.mp4"
    config = tmp_path / "unseen.toml"
    config.write_text(f"""
demo = false
delay = 2
[[sources]]
name = "cam"
uri = "rtsp://127.0.0.1:{port_a}/out"
open_timeout = 3
read_timeout = 1.5
[backends]
segmenter = "classical"
propagator = "classical"
inpainter = "classical"
[outputs.cam]
record = "{record}"
publish = "rtsp://127.0.0.1:{port_b}/in"
""")
    relay = [SYSTEM_PYTHON, str(SERVER), "--relay", "--port"]
    base = f"http://127.0.0.1:{http}"
    with running(relay + [str(port_a)], tmp_path / "relay-a.log", port=port_a), \
            running(relay + [str(port_b)], tmp_path / "relay-b.log", port=port_b):
        publisher = Proc([FFMPEG, "-hide_banner", "-loglevel", "warning", "-re", "-stream_loop", "-1",
                          "-i", str(clip), "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp",
                          f"rtsp://127.0.0.1:{port_a}/in"], tmp_path / "ffmpeg.log")
        try:
            with running(unseen_cmd("serve", "--config", str(config), "--port", str(http)),
                         tmp_path / "serve.log", port=http, timeout=60) as serve:
                wait_state(base, lambda s: s["frames_out"] >= 24, 30, "the first processed frames")
                got = read_back(f"rtsp://127.0.0.1:{port_b}/out", 24)
                assert got == 24, f"relay B gave {got} of 24 frames; serve log:\n{serve.tail()}"

                publisher.stop()  # the source ends; what the stream took in is all there is
                s = wait_state(base, lambda s: s["state"] in ("reconnecting", "connecting"), 15,
                               "the source to stop")
                frames_in = s["frames_in"]
                rest(base, "DELETE", "/api/streams/cam")  # drains: the delay line is flushed into the sinks
            log = (tmp_path / "serve.log").read_text(errors="replace")
        finally:
            publisher.stop()

    warnings = (len(re.findall(r"writing .* failed", log)), len(re.findall(r"publishing to rtsp://", log)))
    print(f"\nlog: {warnings[0]} failed-write warnings, {warnings[1]} publisher connects")
    assert record.exists(), f"no finished recording; files {sorted(p.name for p in tmp_path.iterdir())}"
    assert not list(tmp_path.glob(".*partial*"))
    recorded = probe(record)["frames"]
    finished = re.findall(r"recorded (\d+) frames to .*?, (\d+) failed writes", log)
    published = re.findall(r"published (\d+) frames to .*? over (\d+) connection\(s\), (\d+) failed writes", log)
    print(f"relay chain ({'VUI tick rate ' + str(vui_tick_rate) if vui_tick_rate else 'VUI as written'}): "
          f"frames in {frames_in}, recorded {recorded}, recorder {finished}, publisher {published}")
    assert finished and published, f"no close report in the serve log:\n{log[-2000:]}"
    assert recorded == frames_in == int(finished[0][0])
    assert finished[0][1] == "0", "failed writes to the recording"
    assert published[0][1:] == ("1", "0"), "the publisher reconnected or a frame was refused"
