"""Headless Chromium for the page tests: the browser with a fake webcam of the still scene, and page helpers.

The fixture ``playwright_browser`` (tests/conftest.py) yields ``(browser, (frames, background, masks))``."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest

from support.live import static_scene

CHROMIUM = "/usr/bin/chromium"
W, H, FPS = 320, 192, 15  # the fake webcam's scene
ENV = {"UNSEEN_DEMO": "false", "UNSEEN_ICE__LOOPBACK": "true", "UNSEEN_BACKENDS__SEGMENTER": "classical",
       "UNSEEN_BACKENDS__PROPAGATOR": "classical", "UNSEEN_BACKENDS__INPAINTER": "classical", "UNSEEN_DELAY": "4"}


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """YUV4MPEG2 (4:2:0) by hand: a header, then 'FRAME' and the Y, U, V planes of each frame."""
    import cv2

    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for img in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420).tobytes())


def launch(tmp_path_factory):
    """Debian's Chromium, headless, its fake webcam playing the still scene; skips where it is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found; run tests/support/ci_services.sh (Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed; run tests/support/ci_services.sh (pip install playwright)")
    frames, background, masks = static_scene(W, H, FPS)
    y4m = tmp_path_factory.mktemp("cam") / "scene.y4m"
    write_y4m(y4m, frames, FPS)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, timeout=60000,
            args=["--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={y4m}",
                  "--allow-loopback-in-peer-connection", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--autoplay-policy=no-user-gesture-required"])  # a fresh profile: Playwright makes one
        try:
            yield browser, (frames, background, masks)
        finally:
            browser.close()


def grab(page) -> np.ndarray:
    g = page.evaluate("window.unseen.grab()")
    rgba = np.frombuffer(base64.b64decode(g["rgba"]), np.uint8).reshape(g["height"], g["width"], 4)
    return rgba[..., :3].copy()


def wait_for(page, expression: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        time.sleep(0.2)
    error = page.evaluate("(document.getElementById('error') || {}).textContent || ''")
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; page error: {error!r}; page stats: "
                         f"{json.dumps(page.evaluate('window.unseen.stats()'), default=str)[:800]}")


def click_frame_point(page, x: float, y: float) -> None:
    box = page.evaluate("""() => { const v = document.getElementById('video'); const r = v.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height, vw: v.videoWidth, vh: v.videoHeight}; }""")
    scale = min(box["width"] / box["vw"], box["height"] / box["vh"])
    ox, oy = (box["width"] - box["vw"] * scale) / 2, (box["height"] - box["vh"] * scale) / 2
    page.mouse.click(box["left"] + ox + (x + 0.5) * scale, box["top"] + oy + (y + 0.5) * scale)
