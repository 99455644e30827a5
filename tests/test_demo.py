"""`unseen demo`, the README's first command: the synthetic scene's object is tracked and removed."""
from __future__ import annotations

from unseen.engine.demo import run_demo
from unseen.engine.session import Backends


def test_the_demo_tracks_and_removes_its_object(tmp_path):
    """Measured 2026-12-03: mask IoU 0.975 mean / 0.963 min, region PSNR 32.96 dB (31.58 after H.264).  A
    segmenter change once took it to IoU 0.32 with every other test passing: this bounds it."""
    result = run_demo(tmp_path, quiet=True, backends=Backends("classical", "classical", "classical"))
    assert result["frames"] == result["frames_in"] == result["decoded_frames"] == 90
    assert result["iou_mean"] >= 0.9 and result["iou_min"] >= 0.85, result
    assert result["psnr_region"] >= 30.0 and result["psnr_region_encoded"] >= 29.0, result
