"""`unseen run` with all three neural stages (SAM, DeAOT, E2FGVI-HQ) on random weights, end to end."""
from __future__ import annotations

import pytest
import torch

from unseen.engine.media import probe
from unseen.engine.synthetic import make_clip
from unseen.server.cli import main

from conftest import write_av

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_neural_pipeline_keeps_every_frame(tmp_path, capsys):
    clip = make_clip(8, 160, 96, seed=1)
    src = write_av(tmp_path / "in.mp4", clip.frames)
    out = tmp_path / "out.mp4"
    torch.manual_seed(0)  # random weights, but the same ones every run
    x, y = clip.click(0)
    code = main(["-q", "run", str(src), str(out), "--click", f"{x},{y}", "--segmenter", "sam:vit_b",
                 "--propagator", "aot:deaott", "--inpainter", "e2fgvi:hq", "--random-weights"])
    assert code == 0, capsys.readouterr().err
    info = probe(out)
    assert info["frames"] == 8 and (info["width"], info["height"]) == (160, 96)
