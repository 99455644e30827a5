"""Real clips from ../shared/data (DAVIS and others); every test skips when the folder is absent."""
from __future__ import annotations

import glob
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from unseen.engine.backends.classical_inpaint import FlowGuidedInpainter
from unseen.engine.backends.classical_propagate import FlowPropagator
from unseen.engine.holes import removal_hole
from unseen.engine.media import Source, probe
from unseen.engine.pipeline import Pipeline, PipelineConfig
from unseen.engine.stages import Frame, dilate_hole
from unseen.engine.synthetic import interior_point, iou, psnr
from unseen.server.cli import main
from unseen.weights import store
from support.nanotrack import nanotrack_folder

pytestmark = pytest.mark.slow


def _frames(folder):
    return [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in sorted(glob.glob(str(folder / "*.jpg")))]


def _masks(folder):
    return [np.array(Image.open(p).convert("L")) > 127 for p in sorted(glob.glob(str(folder / "*.png")))]


# the least share of her the replaced region covers on one frame.  With NanoTrack frame 48 falls to 80%: behind the
# pot, the tracker's box holds her upper body and its bound cuts her legs (the mask holds 80-86% of her on frames
# 44-51); the band under the mask adds them back on every one of those frames but 48, where it finds more than legs
# could be (988 px against 947 allowed) and adds nothing.
LEAST_COVERED = {"classical": 0.93, "nanotrack": 0.75}


@pytest.mark.parametrize("tracker", ["classical", "nanotrack"])
def test_schoolgirls_one_click_removes_most_of_a_girl(shared_data, tmp_path, tracker):
    """`unseen run schoolgirls.mp4 out.mp4 --click X,Y` on the girl at the right (id 7, her backpack 6), with the
    default tracker (``auto``) of an empty weights folder and of one holding NanoTrack V2."""
    weights = tmp_path / "weights"
    if tracker == "nanotrack":
        store.import_file("nanotrack_v2", nanotrack_folder(), weights)
    clip = shared_data / "schoolgirls"
    labels = [np.array(Image.open(p)) for p in sorted((clip / "masks").glob("*.png"))]
    her = [(lab == 7) | (lab == 6) for lab in labels]  # DAVIS labels her backpack as an object of its own
    x, y = interior_point(labels[0] == 7)
    out = tmp_path / "out.mp4"
    assert main(["-q", "run", str(clip / "schoolgirls.mp4"), str(out), "--click", f"{x},{y}",
                 "--masks-out", str(tmp_path / "masks"), "--weights-dir", str(weights)]) == 0
    src, dst = probe(clip / "schoolgirls.mp4"), probe(out)
    assert dst["frames"] == src["frames"] == 80
    assert dst["last_pts"] * dst["time_base"] == src["last_pts"] * src["time_base"]
    exported = [np.array(Image.open(tmp_path / "masks" / f"{i:05d}.png")) > 0 for i in range(80)]
    # the one click selects her with her backpack (measured IoU 0.76), not a part of her
    assert iou(exported[0], her[0]) >= 0.7
    with av.open(str(clip / "schoolgirls.mp4")) as c:
        original = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    # the replaced region (her mask with what hangs below it, dilated) covers her on every frame: measured
    # 99.6% on average, 95.1% at worst; with NanoTrack 99.3%, 80% (see LEAST_COVERED)
    holes = [dilate_hole(removal_hole(img, m), 4) for img, m in zip(original, exported)]
    covered = [(hole & h).sum() / h.sum() for hole, h in zip(holes, her)]
    assert np.mean(covered) >= 0.98 and min(covered) >= LEAST_COVERED[tracker], np.round(covered, 2)
    with av.open(str(out)) as c:
        result = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for i in (0, 40, 79):  # where she was the picture changed; far from the hole it did not
        change = np.abs(result[i].astype(int) - original[i].astype(int)).max(axis=2)
        far = ~dilate_hole(holes[i], 8)
        assert change[her[i] & holes[i]].mean() > 5 * max(1.0, change[far].mean()), i


def test_blackswan_propagation_from_the_first_mask(shared_data):
    frames, masks = _frames(shared_data / "blackswan" / "frames"), _masks(shared_data / "blackswan" / "masks")
    prop = FlowPropagator()
    prop.seed(Frame(0, frames[0]), {1: masks[0]})
    ious = [iou(prop.step(Frame(i, frames[i]))[1], masks[i]) for i in range(1, len(frames))]
    assert np.mean(ious) >= 0.8, np.round(ious, 2)


def test_completion_of_a_real_clip_with_another_clips_masks(shared_data):
    """The video-inpainting protocol: holes from another clip's objects cover true background."""
    size = (432, 240)
    frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in _frames(shared_data / "blackswan" / "frames")]
    holes = [dilate_hole(cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0, 4)
             for m in _masks(shared_data / "drift-chicane" / "masks")][:len(frames)]
    pipeline = Pipeline(None, None, FlowGuidedInpainter(), PipelineConfig(), given_masks=lambda i: {1: holes[i]})
    outs = []
    for i, img in enumerate(frames[:len(holes)]):
        outs += pipeline.step(Frame(i, img))
    outs += pipeline.flush()
    scores = [psnr(o.image, frames[o.frame.index]) for o in outs]
    assert len(outs) == len(holes) and np.mean(scores) >= 28.0, np.round(scores, 1)


def test_the_720p_clip_decodes_every_frame_with_its_rate(shared_data):
    with Source(shared_data / "dog-walk-720p" / "01_dog.mp4") as src:
        assert (src.info.width, src.info.height, src.info.rate) == (1280, 720, Fraction(30000, 1001))
        count = sum(1 for _ in src)
    assert count == 289
