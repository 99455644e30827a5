"""Shared fixtures: synthetic clips with ground truth, videos on disk, the real-data folder."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from support.browser import launch
from support.live import gst_missing
from unseen.engine.synthetic import make_clip

SHARED = Path(os.environ.get("UNSEEN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def empty_weights_folder(tmp_path_factory):
    """Every test starts from an empty weights folder, whatever the machine's ``~/.cache/unseen/weights``
    holds: ``auto`` then resolves the same way everywhere, and a test that needs weights puts them there or
    in a folder of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNSEEN_WEIGHTS", str(tmp_path_factory.mktemp("no-weights")))
        yield


@pytest.fixture(scope="session")
def clip():
    """60 frames, 320x192, panning camera, one moving object (IoU/PSNR ground truth)."""
    return make_clip(60, 320, 192, seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real clips not found at {SHARED} (set UNSEEN_SHARED_DATA)")
    return SHARED


def write_av(path: Path, frames: list[np.ndarray], rate: int = 24, *, audio: bool = False,
             codec: str = "libx264") -> Path:
    """Write RGB frames (and optionally a 440 Hz AAC tone of the same length) to ``path``."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height = frames[0].shape[1], frames[0].shape[0]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "10", "bf": "0"} if codec == "libx264" else {}
        a = None
        if audio:
            a = out.add_stream("aac", rate=48000)
            a.layout = "mono"
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, rate)
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if a is not None:
            samples = int(48000 * len(frames) / rate)
            t = np.arange(samples) / 48000.0
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start:start + 1024]
                af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
                af.sample_rate = 48000
                af.pts = start
                af.time_base = Fraction(1, 48000)
                for p in a.encode(af):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)
    return path


@pytest.fixture(scope="session")
def clip_video(tmp_path_factory, clip) -> Path:
    """The synthetic clip as an H.264 mp4 with an AAC audio track."""
    return write_av(tmp_path_factory.mktemp("video") / "clip.mp4", clip.frames, audio=True)


@pytest.fixture(scope="module")
def playwright_browser(tmp_path_factory):
    """A headless Chromium with a fake webcam of the still scene: ``(browser, (frames, background, masks))``."""
    yield from launch(tmp_path_factory)


@pytest.fixture(scope="module")
def gst():
    """Skips unless Debian's GStreamer RTSP server runs here (tests/support/ci_services.sh installs it)."""
    reason = gst_missing()
    if reason:
        pytest.skip(reason)
