"""The classical segmenter's box prompt (clicks as hard seeds in it) on scenes with known truth, and
first-frame J on a real clip (skips without the shared data)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from unseen.benchmarks.data import discover
from unseen.benchmarks.segment import gt_box, prompts
from unseen.engine.backends import classical_segment
from unseen.engine.backends.classical_segment import ClassicalSegmenter
from unseen.engine.pipeline import NEIGHBOUR_OFFSETS
from unseen.engine.stages import Click, Frame, SelectionError
from unseen.engine.synthetic import iou, make_clip

W, H = 320, 192


def _background(seed: int) -> np.ndarray:
    """A quiet, smoothly varying green-grey ground (nothing on it stands out)."""
    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.random((12, 20, 3)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    img = np.array([110, 130, 105], np.float32) + 30 * (noise - 0.5) + rng.normal(0, 3, (H, W, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _disc(img: np.ndarray, centre: tuple[int, int], radius: int, colour: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    img[mask > 0] = colour
    return mask > 0


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    return gt_box(mask, 0.08)


def test_box_alone_selects_the_object_in_it():
    clip = make_clip(10, W, H, seed=4)
    for index in (0, 6):
        truth = clip.masks[index]
        mask = ClassicalSegmenter().segment(Frame(index, clip.frames[index]), [], box=_box(truth))
        assert mask.dtype == bool and mask.shape == truth.shape
        assert iou(mask, truth) >= 0.85


@pytest.mark.parametrize("seed", range(4))
def test_box_around_a_small_object_selects_it_thin_part_included(seed):
    """A 5-px disc with a 1-px arm (a far-away figure): solved at its own size, GrabCut's smoothness
    outweighs so small a region and nothing is selected; the box's crop is solved enlarged."""
    img = _background(seed)
    body, arm = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    cx = 100 + 30 * seed
    cv2.circle(body, (cx, 90), 5, 1, -1)
    cv2.line(arm, (cx, 90), (cx + 15, 105), 1, 1)
    truth = (body | arm) > 0
    img[truth] = (0.3 * img[truth] + 0.7 * np.array([170, 90, 80])).astype(np.uint8)
    mask = ClassicalSegmenter().segment(Frame(0, img), [], box=_box(truth))
    assert iou(mask, truth) >= 0.9
    assert mask[(arm > 0) & (body == 0)].mean() >= 0.9


def test_negative_click_removes_a_region_the_box_included():
    img = _background(1)
    lower = _disc(img, (160, 120), 36, (200, 40, 60))
    upper = _disc(img, (160, 62), 24, (200, 40, 60)) & ~lower  # a snowman: one colour, two parts
    seg = ClassicalSegmenter()
    both = seg.segment(Frame(0, img), [], box=_box(lower | upper))
    assert iou(both, lower | upper) >= 0.85
    corrected = seg.segment(Frame(0, img), [Click(160, 58, positive=False)], box=_box(lower | upper))
    assert corrected[upper].mean() < 0.2
    assert iou(corrected, lower) >= 0.8


def test_positive_click_outside_the_box_adds_what_it_selects():
    img = _background(2)
    inside = _disc(img, (100, 96), 34, (40, 60, 190))
    beside = _disc(img, (240, 90), 26, (230, 200, 40))
    seg = ClassicalSegmenter()
    alone = seg.segment(Frame(0, img), [], box=_box(inside))
    assert iou(alone, inside) >= 0.85 and not alone[beside].any()
    added = seg.segment(Frame(0, img), [Click(240, 90)], box=_box(inside))
    assert iou(added, inside | beside) >= 0.85


@pytest.mark.parametrize("prompt", ["click", "click and negative", "box", "box and click"])
def test_candidates_solved_side_by_side_give_the_same_mask_as_one_by_one(monkeypatch, prompt):
    """The candidates' GrabCuts run on several threads; each seeds its own k-means (OpenCV's RNG is per
    thread), so the mask is the one a single thread gives, bit for bit."""
    clip = make_clip(8, W, H, seed=5)
    frame, truth = Frame(3, clip.frames[3]), clip.masks[3]
    neighbours = [Frame(i, clip.frames[i]) for i in (1, 2, 4, 5)]
    x, y = clip.click(3)
    clicks = {"click": [Click(x, y)], "click and negative": [Click(x, y), Click(10, 10, positive=False)],
              "box": [], "box and click": [Click(x, y)]}[prompt]
    box = _box(truth) if prompt.startswith("box") else None
    masks = []
    for threads in (1, 4):
        monkeypatch.setattr(classical_segment, "THREADS", threads)
        masks.append(ClassicalSegmenter().segment(frame, clicks, neighbours=neighbours, box=box))
    assert masks[0].any() and np.array_equal(masks[0], masks[1])


def _two_movers(bridge: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A moving region of two discs joined by a bridge ``bridge`` px tall, and its core: the discs' insides."""
    left, right = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    cv2.circle(left, (100, 96), 44, 1, -1)
    cv2.circle(right, (210, 96), 44, 1, -1)
    blob = (left | right).astype(bool)
    blob[96 - bridge // 2:96 + bridge // 2 + 1, 100:210] = True
    core = np.zeros((H, W), np.uint8)
    cv2.circle(core, (100, 96), 24, 1, -1)
    cv2.circle(core, (210, 96), 24, 1, -1)
    return blob, core.astype(bool), left.astype(bool), right.astype(bool)


@pytest.mark.parametrize("clicks,keeps", [
    ([Click(90, 100)], "left"),
    ([Click(225, 80)], "right"),
    ([Click(150, 96)], "left"),  # on the bridge, nearer the left piece (x 124 vs 186 at their edges)
    ([Click(90, 100), Click(225, 80)], "both"),
])
def test_a_moving_region_of_two_touching_movers_is_cut_to_the_clicked_one(clicks, keeps):
    blob, core, left, right = _two_movers(bridge=30)
    part, part_core = classical_segment.clicked_part(blob, core, clicks, 1.0)
    if keeps == "both":
        assert np.array_equal(part, blob) and np.array_equal(part_core, core)
        return
    kept, cut = (left, right) if keeps == "left" else (right, left)
    assert part[kept].all() and not part[cut].any() and not (part & ~blob).any()
    assert np.array_equal(part_core, core & kept)


def test_a_moving_region_in_one_piece_or_a_tiny_clicked_part_is_left_whole():
    blob, core, left, _ = _two_movers(bridge=30)
    one = core & left
    assert classical_segment.clicked_part(blob, one, [Click(90, 100)], 1.0)[0] is blob  # one piece: one object
    small = cv2.resize(blob.astype(np.uint8), (W // 4, H // 4), interpolation=cv2.INTER_NEAREST) > 0
    small_core = cv2.resize(core.astype(np.uint8), (W // 4, H // 4), interpolation=cv2.INTER_NEAREST) > 0
    part, _ = classical_segment.clicked_part(small, small_core, [Click(90, 100)], 0.25)
    assert part is small  # the clicked part is under MOTION_MIN_AREA: no evidence of two objects


def test_box_wholly_off_the_object_is_refused():
    img = _background(3)
    _disc(img, (250, 100), 30, (200, 40, 60))
    with pytest.raises(SelectionError, match="box on frame 4 selected nothing") as info:
        ClassicalSegmenter().segment(Frame(4, img), [], box=(20.0, 30.0, 120.0, 150.0))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_first_frame_j_on_blackswan(shared_data):
    """As the product prompts frame 0 of a file: the frames 3, 6 and 12 after it are its motion neighbours."""
    clip = next(c for c in discover(shared_data) if c.name == "blackswan")
    frames, truth = clip.read_frames(max(NEIGHBOUR_OFFSETS) + 1), clip.read_labels(1)[0] == 1
    neighbours = [Frame(k, frames[k]) for k in NEIGHBOUR_OFFSETS if k > 0]
    given = prompts(truth)
    seg = ClassicalSegmenter()
    by_box = seg.segment(Frame(0, frames[0]), [], neighbours=neighbours, box=given["box"].box)
    by_click = seg.segment(Frame(0, frames[0]), list(given["click"].clicks), neighbours=neighbours)
    assert iou(by_box, truth) >= 0.62  # measured 0.681 (2026-12-03)
    assert iou(by_click, truth) >= 0.52  # measured 0.689 (2026-12-04)


@pytest.mark.parametrize("leak,taken", [(0.3, True), (1.2, False)])
def test_a_re_solve_that_grows_the_winner_by_more_than_half_is_not_taken(monkeypatch, leak, taken):
    """The winner is solved again with itself as the seed; that re-solve may follow the object's outline,
    but one that adds more than half the winner's area again has leaked into a background of like colour
    (dog-walk: the gabion wall beside the woman).  The re-solve is scripted here: the winner plus a block
    of background in the winner's rows, ``leak`` times the winner's area."""
    clip = make_clip(8, W, H, seed=5)
    frame, truth = Frame(3, clip.frames[3]), clip.masks[3]
    x, y = clip.click(3)
    seen: dict[str, np.ndarray] = {}
    resolve = ClassicalSegmenter._grabcut_seeded

    def leaking(self, img, winner, *args, **kwargs):
        solved = resolve(self, img, winner, *args, **kwargs)
        block = np.zeros_like(winner)
        near = cv2.dilate(winner.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        free = np.nonzero(~near.any(axis=0))[0]  # columns clear of the winner
        rows = np.nonzero(winner.any(axis=1))[0]
        cols = free[:max(1, int(leak * winner.sum() / len(rows)))]
        assert len(cols) < len(free)  # the block fits beside the winner
        block[rows.min():rows.max() + 1, cols] = True
        seen["winner"], seen["block"] = winner, block
        return solved | block

    monkeypatch.setattr(ClassicalSegmenter, "_grabcut_seeded", leaking)
    mask = ClassicalSegmenter().segment(frame, [Click(x, y)], neighbours=[Frame(i, clip.frames[i]) for i in (1, 5, 7)])
    block = cv2.resize(seen["block"].astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0
    if taken:  # a re-solve that stays near the winner's size is the result
        assert mask[block].mean() > 0.9 and iou(mask, truth | block) >= 0.8
    else:
        assert not mask[block].any() and iou(mask, truth) >= 0.8
