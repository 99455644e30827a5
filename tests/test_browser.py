"""The browser client in a real headless Chromium (Debian's), driven by Playwright with ``executable_path``.

1. Webcam: a fake camera plays a y4m of the synthetic scene (still camera, one moving object);
   the page publishes it over WebRTC and shows the processed video; the test clicks the object
   in the page and reads canvas pixels: the object is gone, the background is intact.
   A screenshot goes to artifacts/.
2. Glass-to-glass at 854x480: a server-side synthetic source (its frames are stamped when they
   are produced) watched by the page; the page reports the delay from that stamp to the frame
   being shown, and the shown frame rate.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from support.browser import ENV, H, W, click_frame_point, grab, wait_for
from support.live import free_port, object_like, object_pixels, running, unseen_cmd

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(200)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
REMOVED = 0.02  # object pixels left after the click on any grabbed frame, as a fraction of its area


def test_webcam_click_removes_object_in_page(playwright_browser, tmp_path):
    browser, (frames, background, masks) = playwright_browser
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(unseen_cmd("serve", "--port", str(port)), tmp_path / "serve.log", env=ENV, port=port,
                 timeout=60):
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.on("console", lambda m: print("page:", m.text) if m.type == "error" else None)
        try:
            page.goto(f"{base}/?source=webcam&name=cam&width={W}&height={H}&autoplay=1", timeout=30000)
            wait_for(page, "window.unseen.stats().offset !== null && document.getElementById('video').videoWidth > 0",
                     40, "processed video with frame metadata")
            time.sleep(1.0)
            seen = grab(page)
            assert seen.shape == (H, W, 3), seen.shape
            obj = object_pixels(seen, background)  # (where it is clicked: as the RTSP test does)
            area = int(np.mean([m.sum() for m in masks]))
            assert obj.sum() > 0.5 * area, f"the object is not in the page's video ({obj.sum()} px of {area})"
            from unseen.engine.synthetic import interior_point
            x, y = interior_point(obj)
            click_frame_point(page, x, y)
            wait_for(page, "(window.unseen.state.objects || []).length > 0", 60, "the click to create an object")
            time.sleep(4.0)  # the delay line, the round trip, the propagator settling
            residual, differing, rest = [], [], []
            import cv2
            trail = cv2.dilate(np.logical_or.reduce(masks).astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
            for _ in range(10):
                img = grab(page)
                residual.append(int(object_like(img, background, frames, masks).sum()))
                differing.append(int(object_pixels(img, background).sum()))
                rest.append(float(np.abs(img.astype(int) - background.astype(int))[~trail].mean()))
                time.sleep(0.2)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_client.png"))
            stats = page.evaluate("window.unseen.stats()")
            print(f"\nbrowser webcam {W}x{H}: object px before {int(object_like(seen, background, frames, masks).sum())}"
                  f", after {residual} (area {area}; "
                  f"differing from the background {differing}); "
                  f"rest mean abs diff {max(rest):.2f}; shown fps {stats['fps']:.1f}; "
                  f"server->page delay median {stats['g2g_median']}; screenshot {ARTIFACTS / 'browser_client.png'}")
            # the object is gone from every grabbed frame.  Counted: what looks like the object (its colours,
            # off the background); a fill made up where the background was not seen yet differs from the
            # background too, and is not the object
            assert max(residual) <= REMOVED * area, f"the object is still in the page: {residual} of {area}"
            assert max(rest) < 12.0, f"the background changed: {rest}"
            assert stats["info"]["objects"] and stats["error"] == ""
        finally:
            page.close()


def test_glass_to_glass_854x480(playwright_browser, tmp_path):
    """Measured, printed: source stamp -> frame shown in the page, and the shown fps (classical backends)."""
    browser, _ = playwright_browser
    port = free_port()
    env = dict(ENV, UNSEEN_SOURCES=json.dumps([{"name": "big", "uri": "synthetic://big", "loop": True,
                                                "width": 854, "height": 480, "fps": 15}]))
    env.pop("UNSEEN_DELAY")
    with running(unseen_cmd("serve", "--port", str(port)), tmp_path / "serve.log", env=env, port=port,
                 timeout=60):
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        try:
            page.goto(f"http://127.0.0.1:{port}/?stream=big&autoplay=1", timeout=30000)
            wait_for(page, "window.unseen.stats().g2g_n > 10", 40, "frames with timestamps")
            from unseen.client.control import rest
            from unseen.engine.synthetic import make_clip
            from fractions import Fraction
            clip = make_clip(60, 854, 480, seed=3, rate=Fraction(15))
            x, y = clip.click(0)
            rest(f"http://127.0.0.1:{port}", "POST", "/api/streams/big/objects", {"x": x, "y": y}, timeout=60)
            time.sleep(3.0)
            page.evaluate("window.unseen.state.g2g = []")
            time.sleep(8.0)
            stats = page.evaluate("window.unseen.stats()")
            info = stats["info"]
            print(f"\nglass-to-glass 854x480 @15 fps, classical backends, delay {info['delay_frames']} frames "
                  f"({info['delay_seconds']} s): median {stats['g2g_median'] * 1000:.0f} ms over {stats['g2g_n']} "
                  f"frames; shown {stats['fps']:.1f} fps; server fps {info['fps']}; dropped {info['dropped']}, "
                  f"degraded {info['degraded']}; stage ms {info['stage_ms']}")
            assert stats["g2g_median"] is not None and 0 < stats["g2g_median"] < 10
        finally:
            page.close()
