"""The track suite's correction protocol: the simulated user's clicks on synthetic masks, and an end-to-end
run on the stream runtime over a synthetic clip with known truth."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from unseen.benchmarks import track
from unseen.benchmarks.common import Context
from unseen.engine.synthetic import make_clip

S = (80, 120)


def _rect(y0, y1, x0, x1):
    m = np.zeros(S, bool)
    m[y0:y1, x0:x1] = True
    return m


GT = _rect(10, 41, 10, 41)  # a 31x31 object, its most interior pixel (25, 25)
FAR = _rect(30, 63, 70, 103)  # 33x33, nowhere near it: centre (86, 46)

# (name, prediction, ground truth, expected (x, y, positive) or None); odd-sized regions have one most interior pixel
CLICK_CASES = [
    ("larger missed region: positive at its most interior pixel", GT & ~_rect(13, 38, 13, 38), GT, (25, 25, True)),
    ("larger false region: negative at its most interior pixel", _rect(10, 41, 10, 20) | FAR, GT, (86, 46, False)),
    ("object lost: positive in the larger of its two parts", np.zeros(S, bool),
     _rect(10, 25, 10, 25) | _rect(30, 51, 40, 61), (50, 40, True)),
    ("J exactly 0.5: no click", GT | _rect(40, 71, 80, 111), GT, None),
    ("perfect: no click", GT, GT, None),
]


@pytest.mark.parametrize("name,pred,gt,expected", CLICK_CASES, ids=[c[0] for c in CLICK_CASES])
def test_the_user_clicks_the_larger_error_region(name, pred, gt, expected):
    c = track.SimulatedUser().look(5, 1, pred, gt)
    if expected is None:
        assert c is None
        return
    assert c is not None and (c.x, c.y, c.positive) == expected
    assert c.frame == 5 and c.object_id == 1
    assert (gt if c.positive else pred)[c.y, c.x] and not (pred if c.positive else gt)[c.y, c.x]


def test_the_click_is_the_most_interior_pixel_of_an_irregular_region():
    gt = np.zeros(S, bool)
    cv2.circle(gt.view(np.uint8), (50, 30), 15, 1, -1)
    gt |= _rect(28, 32, 5, 50)  # a thin arm: its pixels lie close to the edge
    x, y, positive, area = track.correction_click(np.zeros(S, bool), gt)
    assert positive and area == int(gt.sum())
    assert abs(x - 50) <= 1 and abs(y - 30) <= 1  # the disc's centre, not the arm


def test_at_most_one_correction_per_ten_frames_per_object():
    user = track.SimulatedUser()
    bad = np.zeros(S, bool)
    clicked = {oid: [t for t in range(35) if user.look(t, oid, bad, GT) is not None] for oid in (1, 2)}
    assert clicked[1] == [0, 10, 20, 30]
    assert clicked[2] == [0, 10, 20, 30]  # each object on its own


def test_good_frames_between_do_not_reset_the_spacing():
    user = track.SimulatedUser()
    looks = [(t, GT if t % 3 else np.zeros(S, bool)) for t in range(25)]
    assert [t for t, pred in looks if user.look(t, 1, pred, GT) is not None] == [0, 12, 24]


def test_padded_box_grows_the_ground_truth_box_five_percent_per_side():
    assert track.padded_box(_rect(10, 30, 20, 60)) == pytest.approx((18.0, 9.0, 62.0, 31.0))
    assert track.padded_box(_rect(0, 80, 0, 120)) == (0.0, 0.0, 120.0, 80.0)  # clipped to the frame


# ------------------------------------------------------------------------------ end to end, on the runtime
def _cut_clip(frames: int, cut: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A synthetic clip whose scene is rolled by half its width from frame ``cut`` on (a cut: the object jumps
    80 px, over three times its size); object id 1, known masks."""
    clip = make_clip(frames, 160, 96, seed=4, pan=(0.5, 0.2))
    images, labels = [], []
    for t, (img, m) in enumerate(zip(clip.frames, clip.masks)):
        if t >= cut:
            img, m = np.roll(img, 80, axis=1), np.roll(m, 80, axis=1)
        images.append(img)
        labels.append(m.astype(np.uint8))
    return images, labels


@pytest.fixture(scope="module")
def cut_runs():
    images, labels = _cut_clip(30, 8)
    ctx = Context(data=Path("."), results=Path("."))
    return {corrections: track.track_clip(ctx, track.Run("classical", "click", corrections), "cut", images, labels)
            for corrections in (False, True)}


def test_corrections_on_the_runtime_raise_j(cut_runs):
    plain, corrected = cut_runs[False].objects[0], cut_runs[True].objects[0]
    assert plain.first_J > 0.8 and plain.first_J == corrected.first_J  # frame 0 leaves before any correction
    assert plain.corrections == 0 and plain.applied == []
    assert plain.J < 0.5  # the tracker loses the object at the cut
    assert 1 <= corrected.corrections <= 2 and min(c.frame for c in corrected.applied) >= 8  # none before the cut
    assert corrected.refused == []  # a negative click on a tracked frame cuts from its mask
    assert corrected.J > plain.J + 0.2


def test_no_correction_while_the_track_holds():
    images, labels = _cut_clip(30, 8)
    images, labels = images[:8], labels[:8]  # before the cut
    ctx = Context(data=Path("."), results=Path("."))
    r = track.track_clip(ctx, track.Run("classical", "click", True), "easy", images, labels).objects[0]
    assert r.first_J > 0.8 and r.J > 0.8
    assert r.corrections == 0  # the first prompt is no correction
