"""``unseen serve`` drains on SIGTERM: intake stopped, the step in progress finished, the delay line
flushed, recordings closed playable with every frame they received; a step that outlasts the deadline
is abandoned and the recording is closed with what it has."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from unseen.engine.media import probe
from unseen.server import config as cfg
from unseen.server.commands import drain_streams
from unseen.server.live import LiveStream
from unseen.server.metrics import Metrics

from support.live import free_port, running, unseen_cmd

pytestmark = pytest.mark.timeout(120)

SYNTH = {"name": "cam", "uri": "synthetic://cam", "loop": True, "width": 192, "height": 112, "fps": 15}
CLASSICAL = {"segmenter": "classical", "propagator": "classical", "inpainter": "classical"}


def _http(port: int, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _poll(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.1)


def test_sigterm_under_load_drains_and_exits_0(tmp_path):
    record = tmp_path / "cam.mp4"
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"demo": False, "backends": CLASSICAL, "sources": [SYNTH],
                                  "outputs": {"cam": {"record": str(record)}}}))
    port = free_port()
    log = tmp_path / "serve.log"
    with running(unseen_cmd("serve", "--config", str(config), "--port", str(port)), log, port=port) as proc:
        _poll(lambda: _http(port, "/api/streams/cam")["frames_out"] >= 30, 60, "30 frames out")
        clicked = _http(port, "/api/streams/cam/objects", {"x": 50, "y": 50})
        assert clicked["object"] >= 1
        last_out = _http(port, "/api/streams/cam")["frames_out"]
        sent = time.monotonic()
        proc.p.send_signal(signal.SIGTERM)
        try:
            rc = proc.p.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within 10 s of SIGTERM; log:\n{proc.tail(30)}")
        took = time.monotonic() - sent
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert record.is_file() and not list(tmp_path.glob(".cam.partial*")), "the recording is under its final name"
    info = probe(record)
    assert (info["width"], info["height"]) == (192, 112)
    assert info["frames"] >= last_out, f"recording holds {info['frames']} frames, {last_out} were out before"
    m = re.search(r"stream cam drained in [\d.]+ s: (\d+) frames flushed, \d+ received frames not processed; "
                  r"recording \S+ closed with (\d+) frames", text)
    assert m, f"the log says what the drain flushed; log:\n{text[-2000:]}"
    assert int(m.group(1)) >= 1 and int(m.group(2)) == info["frames"]
    print(f"drain: exit after {took:.2f} s, {m.group(1)} frames flushed, recording {info['frames']} frames "
          f"(last frames_out read {last_out})")


def test_a_step_outlasting_the_deadline_is_abandoned_and_the_recording_closed(tmp_path):
    """The worker's step blocks past the deadline: the drain gives up on it and closes the recording with
    the frames it had (playable, under its final name)."""
    record = tmp_path / "cam.mp4"
    settings = cfg.Settings(backends=CLASSICAL, demo=False, delay=3)
    source = cfg.SourceConfig(**SYNTH)
    blocking, entered, release = threading.Event(), threading.Event(), threading.Event()

    async def body():
        loop = asyncio.get_running_loop()
        stream = await loop.run_in_executor(None, lambda: LiveStream(
            "cam", source, settings, Metrics(), loop, outputs=cfg.OutputConfig(record=str(record))))
        real_track = stream.pipeline.track  # the runtime's first phase of a frame

        def track(frame, hurry=False):
            if blocking.is_set():
                entered.set()
                release.wait(60)
            return real_track(frame, hurry=hurry)

        stream.pipeline.track = track
        stream.start()
        try:
            await loop.run_in_executor(None, _poll, lambda: stream.pipeline.frames_out >= 10, 60, "10 frames out")
            blocking.set()
            await loop.run_in_executor(None, entered.wait, 30)
            out_before = stream.pipeline.frames_out
            [report] = await drain_streams([stream], timeout=0.5)
            return stream, report, out_before
        finally:
            release.set()

    stream, report, out_before = asyncio.run(asyncio.wait_for(body(), 90))
    assert not report.drained and report.frames_flushed == 0
    assert "abandoned" in report.line()
    info = probe(record)
    assert report.recordings == {str(record): info["frames"]}
    # every frame out before the step that hung (and those the emitter finished meanwhile, before the close)
    assert out_before <= info["frames"] <= stream.pipeline.frames_out
    _poll(lambda: stream.state == "closed", 30, "the abandoned close finishes once the step returns")
