"""RTSP in and out against a real RTSP server (GStreamer's, from Debian's packages).

A PLAY mount serves a looped synthetic scene (still camera, one moving object); ``unseen serve``
(a subprocess) pulls it, a click arrives over the WebSocket (the Python client), the processed
stream is pushed to a RECORD->PLAY relay and read back with PyAV: the frame rate matches, the
object is gone and the rest of the frame is unchanged.  Then the source server is killed and
restarted: the output resumes, the session keeps its object, and the object, which jumped with the
restarted clip, stays removed.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import av
import numpy as np
import pytest

from support.live import (SYSTEM_PYTHON, Proc, free_port, object_like, object_pixels, running, static_scene,
                          unseen_cmd, wait_port, wait_state, write_pngs)
from unseen.client.control import Control, rest
from unseen.server.live import LIVE_QUEUE_ITEMS
from unseen.engine.synthetic import interior_point

pytestmark = [pytest.mark.rtsp, pytest.mark.slow, pytest.mark.timeout(240)]

W, H, FPS = 320, 192, 15
SERVER = Path(__file__).parent / "support" / "rtsp_server.py"
LEFT = 0.02  # object pixels left on any frame after the click, as a fraction of its area
PYAV_RTSP = {"rtsp_transport": "tcp", "probesize": "32768", "analyzeduration": "0", "fflags": "nobuffer"}


def read_frames(url: str, n: int, timeout: float = 20.0) -> tuple[list[np.ndarray], list[float]]:
    """``n`` decoded frames (RGB) of an RTSP stream and their arrival times."""
    frames, times = [], []
    deadline = time.monotonic() + timeout
    with av.open(url, options=PYAV_RTSP, timeout=(10, 5)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(time.monotonic())
            if len(frames) >= n or time.monotonic() > deadline:
                break
    return frames, times


def state(base: str) -> dict:
    return rest(base, "GET", "/api/streams/cam")


def test_rtsp_pull_click_republish_and_reconnect(gst, tmp_path):
    frames, background, masks = static_scene(W, H, FPS)
    pattern = write_pngs(tmp_path / "frames", frames)
    src_port, relay_port, http_port = free_port(), free_port(), free_port()
    source_args = [SYSTEM_PYTHON, str(SERVER), "--port", str(src_port), "--frames", pattern, "--fps", str(FPS)]
    base = f"http://127.0.0.1:{http_port}"
    out_url = f"rtsp://127.0.0.1:{relay_port}/out"
    env = {
        "UNSEEN_SOURCES": json.dumps([{"name": "cam", "uri": f"rtsp://127.0.0.1:{src_port}/clip",
                                       "open_timeout": 3, "read_timeout": 2}]),
        "UNSEEN_OUTPUTS__CAM__PUBLISH": f"rtsp://127.0.0.1:{relay_port}/in",
        "UNSEEN_BACKENDS__SEGMENTER": "classical", "UNSEEN_BACKENDS__PROPAGATOR": "classical",
        "UNSEEN_BACKENDS__INPAINTER": "classical", "UNSEEN_DELAY": "4",
    }
    with running([SYSTEM_PYTHON, str(SERVER), "--port", str(relay_port), "--relay"], tmp_path / "relay.log",
                 port=relay_port), \
            running(unseen_cmd("serve", "--port", str(http_port)), tmp_path / "serve.log", env=env,
                    port=http_port, timeout=60) as serve:
        source = Proc(source_args, tmp_path / "source.log")
        try:
            wait_port(src_port, 30)
            wait_state(base, lambda s: s["frames_out"] > 10, 40, "the first processed frames")

            # before the click: the object is in the republished stream
            before, times = read_frames(out_url, 30)
            assert len(before) == 30, serve.tail()
            fps = (len(times) - 1) / (times[-1] - times[0])
            assert abs(fps - FPS) < 3, f"republished at {fps:.1f} fps, source {FPS}"
            assert all(object_like(f, background, frames, masks).sum() > 300 for f in before[-5:])

            # click the object where the newest republished frame shows it
            x, y = interior_point(object_pixels(before[-1], background))

            async def click():
                async with Control(base, timeout=60) as c:
                    return await c.click("cam", x, y)
            oid = asyncio.run(click())["object"]
            after, _ = read_frames(out_url, 45)
            late = after[15:]
            # what looks like the object (its colours, off the background): a fill made up where nothing
            # showed the background differs from it too, and is not the object
            gone = [int(object_like(f, background, frames, masks).sum()) for f in late]
            area = int(np.mean([m.sum() for m in masks]))
            # little of the object left on every frame, degraded steps included (the failure message carries
            # the stream's degradation counts)
            assert max(gone) <= LEFT * area, \
                f"object pixels after removal {gone}, object area {area}; stream state {json.dumps(state(base))[:800]}"
            trail = np.logical_or.reduce([m for m in masks])
            trail = np.pad(trail, 12)[:H + 12, :W + 12][6:H + 6, 6:W + 6] | trail  # a margin around its path
            import cv2
            trail = cv2.dilate(trail.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
            rest_diff = [float(np.abs(f.astype(int) - background.astype(int))[~trail].mean()) for f in late]
            assert max(rest_diff) < 6.0, f"the rest of the frame changed: mean abs diff {rest_diff}"

            s = state(base)
            assert s["delay_frames"] == 4
            # D held, plus what is between the workers now: one frame in each hand-off and one being emitted
            # (pipelined), or the frame in the worker (sequential)
            assert 0 <= s["frames_in"] - s["frames_out"] - 4 <= LIVE_QUEUE_ITEMS + 2
            assert [o["id"] for o in s["objects"]] == [oid]

            # kill the source server; the stream waits and reconnects; the session keeps its object
            source.stop(sig=9)
            wait_state(base, lambda s: s["state"] in ("reconnecting", "connecting"), 20, "the source to drop")
            frames_before_restart = state(base)["frames_out"]
            source = Proc(source_args, tmp_path / "source2.log")
            wait_port(src_port, 30)
            s = wait_state(base, lambda s: s["reconnects"] >= 1 and s["frames_out"] > frames_before_restart + 20,
                           40, "the output to resume after the source came back")
            assert [o["id"] for o in s["objects"]] == [oid], "the session lost its object"
            resumed, _ = read_frames(out_url, 20)
            assert len(resumed) == 20
            # the source starts its clip again: the object jumps to where it was on frame 0.  The stream
            # counts a new epoch, and the object is found again there instead of being lost
            back = [int(object_like(f, background, frames, masks).sum()) for f in resumed]
            assert max(back) <= LEFT * area, (f"object pixels after the source came back {back}, object area {area}; "
                                              f"stream state {json.dumps(state(base))[:800]}")
            print(f"\nrtsp: republished {fps:.1f} fps; object pixels after removal max {max(gone)} of {area}; "
                  f"rest mean abs diff max {max(rest_diff):.2f}; after restart object pixels max {max(back)}")
        finally:
            source.stop()
