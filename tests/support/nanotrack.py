"""The NanoTrack V2 files of the shared folder (``$UNSEEN_NANOTRACK``, else ``../shared/weights/nanotrack-v2``):
tests that need them skip cleanly when they are absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

FOLDER = Path(os.environ.get("UNSEEN_NANOTRACK",
                             Path(__file__).resolve().parents[2].parent / "shared" / "weights" / "nanotrack-v2"))
FILES = ("nanotrack_backbone_sim.onnx", "nanotrack_head_sim.onnx")


def nanotrack_folder() -> Path:
    """The folder holding both files, or a skip."""
    if not all((FOLDER / f).is_file() for f in FILES):
        pytest.skip(f"NanoTrack V2 files not found in {FOLDER} (set UNSEEN_NANOTRACK)")
    return FOLDER
