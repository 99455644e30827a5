"""The hole a removed object leaves: its mask and what hangs below it (feet, shadow), nothing else."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from unseen.engine.holes import EDGE_BAND, EDGE_MIN, EDGE_SIZE, below_object, missed_edge, removal_hole
from unseen.engine.backends.classical_inpaint import FlowGuidedInpainter
from unseen.engine.pipeline import Pipeline, PipelineConfig
from unseen.engine.stages import Frame, Propagator, Segmenter, dilate_hole, mask_area, mask_box

H, W = 240, 320
BODY = (slice(60, 150), slice(140, 190))  # the mask: a standing figure's body, without its legs
LEGS = [(slice(150, 172), slice(148, 155)), (slice(150, 172), slice(174, 181))]  # thin, down to the ground
FEET = [(slice(168, 174), slice(145, 158)), (slice(168, 174), slice(171, 184))]


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def _ground(seed: int = 0) -> np.ndarray:
    """Rows of ground whose colour changes with depth (the row), plus pixel noise."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(70, 150, H)[:, None, None] * np.array([1.0, 0.8, 0.55])
    img = rows + rng.normal(0, 6, (H, W, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _scene(parts: dict[str, tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, the body mask and the true hanging parts (legs/feet/shadow painted with the given colours)."""
    img = _ground()
    img[BODY] = (40, 60, 160)
    truth = np.zeros((H, W), bool)
    for name, colour in parts.items():
        regions = {"legs": LEGS, "feet": FEET, "shadow": [(slice(150, 165), slice(137, 193))],
                   "apart": [(slice(215, 235), slice(150, 180))]}[name]
        for r in regions:
            img[r] = colour
            if name != "apart":
                truth[r] = True
    mask = np.zeros((H, W), bool)
    mask[BODY] = True
    return img, mask, truth


@pytest.mark.parametrize("parts,expect", [
    ({"legs": (200, 160, 140), "feet": (235, 235, 235)}, "all"),  # skin legs, white shoes
    ({"shadow": (25, 22, 18)}, "all"),  # a dark shadow under it
    ({}, "none"),  # nothing hangs below: ground only
    ({"apart": (235, 235, 235)}, "none"),  # something distinct below, but not hanging from it
])
def test_what_hangs_below_joins_the_hole(parts, expect):
    img, mask, truth = _scene(parts)
    added = below_object(img, mask)
    assert not (added & mask).any()
    if expect == "all":
        assert (added & truth).sum() >= 0.9 * truth.sum()
        # the ground beside them stays: at most a rim of the image's blur around them
        assert not (added & ~_grow(truth, 3)).any()
    else:
        assert not added.any()


def test_feet_under_legs_the_colour_of_the_ground_join_with_the_legs():
    """Legs the ground explains (they are its colour) leave a gap; the feet under them are sure: they
    join the hole with the gap's columns (schoolgirls: the girl's feet while she walks)."""
    img, mask, _ = _scene({"feet": (235, 235, 235)})
    legs = np.zeros_like(mask)
    for r in LEGS:
        legs[r] = True
    img[legs] = _ground()[legs]  # the legs look like the ground beside them
    feet = np.zeros_like(mask)
    for r in FEET:
        feet[r] = True
    added = below_object(img, mask)
    replaced = dilate_hole(mask | added, 4)  # what the inpainter replaces
    assert (added & feet).sum() >= 0.8 * feet.sum() and replaced[feet].all() and replaced[legs].all()
    span = np.zeros_like(mask)
    span[150:174, 145:184] = True  # from the body down to the feet, over the feet's columns
    assert not (added & ~_grow(span, 3)).any()


def test_feet_join_when_another_figure_stands_beside_them():
    """The ground is what both strips beside the band show: another figure's white shoes in one strip
    (schoolgirls: the girl stops beside a classmate) do not explain the object's own white shoes."""
    img, mask, truth = _scene({"legs": (200, 160, 140), "feet": (235, 235, 235)})
    img[150:168, 205:210] = (30, 30, 60)  # the other figure's dark legs, beside the band ...
    img[168:174, 201:214] = (235, 235, 235)  # ... and its shoes, the same white
    added = below_object(img, mask)
    assert (added & truth).sum() >= 0.9 * truth.sum()
    assert not (added & ~_grow(truth, 3)).any()  # the other figure stays


def test_a_leg_the_mask_misses_hangs_from_above_its_lowest_rows():
    """The mask has one leg down to the shoe and misses the other (schoolgirls: her back leg while
    she walks): that leg hangs from higher up than the mask's lowest rows, and still joins."""
    img, mask, _ = _scene({"legs": (200, 160, 140), "feet": (235, 235, 235)})
    mask[LEGS[1]] = mask[FEET[1]] = True  # the front leg and shoe are the object's own
    back = np.zeros_like(mask)
    back[LEGS[0]] = back[FEET[0]] = True
    added = below_object(img, mask)
    assert (added & back).sum() >= 0.9 * back.sum()
    assert not (added & ~_grow(back, 3)).any()


@pytest.mark.parametrize("case", ["empty", "tiny", "bottom", "off", "sparse"])
def test_no_band_no_change(case):
    img, mask, _ = _scene({"legs": (200, 160, 140)})
    reach = 0.3
    if case == "empty":
        mask[:] = False
    elif case == "tiny":
        mask[:] = False
        mask[100:103, 100:103] = True
    elif case == "bottom":  # nothing under an object that reaches the frame's lower edge
        mask[:] = False
        mask[150:, 140:190] = True
    elif case == "sparse":  # wide and made of thin pieces (seen in the remove suite): at the band's scale
        # none of it is left
        img = np.random.default_rng(1).integers(0, 255, (480, 854, 3)).astype(np.uint8)
        mask = np.zeros((480, 854), bool)
        mask[240:267, 0:400:3] = True
    else:
        reach = 0.0
    assert np.array_equal(removal_hole(img, mask, reach, band=0.0 if case == "off" else EDGE_BAND), mask)


class _Body(Segmenter, Propagator):
    """Segments and tracks the body only (as a colour model that misses the legs would)."""
    name = "body"

    def __init__(self, mask: np.ndarray) -> None:
        self.mask, self.ids = mask, []

    def segment(self, frame, clicks, *, neighbours=(), box=None):
        return self.mask.copy()

    def seed(self, frame, masks):
        self.ids = list(masks)

    def step(self, frame):
        return {oid: self.mask.copy() for oid in self.ids}

    def reset(self):
        self.ids = []


class _Recording(FlowGuidedInpainter):
    """Records the hole of every frame it fills."""

    def __init__(self) -> None:
        super().__init__()
        self.holes: dict[int, np.ndarray] = {}

    def inpaint(self, request):
        self.holes[request.target] = request.entries[request.target].hole.copy()
        return super().inpaint(request)


def _run_body(img, mask, how: str, inpainter, config, frames: int) -> list:
    """``frames`` copies of ``img`` through the pipeline: the body clicked and tracked as ``mask``, or
    (``how`` "masks-in") ``mask`` given as the user's, taken as it is.  The masks stay the body's."""
    if how == "masks-in":
        pipeline = Pipeline(None, None, inpainter, config, given_masks=lambda i: {1: mask})
    else:
        body = _Body(mask)
        pipeline = Pipeline(body, body, inpainter, config)
        pipeline.click(165, 100, frame_index=0)
    outs = []
    for i in range(frames):
        outs += pipeline.step(Frame(i, img.copy()))
    outs += pipeline.flush()
    assert len(outs) == frames and all(np.array_equal(o.masks[1], mask) for o in outs)
    return outs


@pytest.mark.parametrize("how,gone", [("click", True), ("click, hole_below=0", False), ("masks-in", False)])
def test_a_clicked_object_leaves_with_its_legs(how, gone):
    skin = np.array([200, 160, 140])
    img, mask, _ = _scene({"legs": tuple(skin), "feet": (235, 235, 235)})
    legs = np.zeros_like(mask)
    for r in LEGS:
        legs[r] = True
    config = PipelineConfig(delay=2, hole_below=0.0 if "=0" in how else PipelineConfig.hole_below)
    for o in _run_body(img, mask, how, FlowGuidedInpainter(), config, 4):
        left = np.abs(o.image[legs].astype(int) - skin).sum(axis=1)
        assert (np.median(left) > 60) if gone else (np.median(left) < 10)


@pytest.mark.parametrize("seed", range(40))
def test_any_mask_gives_a_hole_never_an_error(seed):
    """Fuzzed masks (specks, slivers, frame-wide, at the borders) on noise: the hole always contains
    the mask, has its shape, and what it adds is under the mask or in a rim around it."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(8, 200)), int(rng.integers(8, 300))
    img = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        mask[y0:y0 + int(rng.integers(1, h)), x0:x0 + int(rng.integers(1, max(2, w // int(rng.integers(1, 40)))))] = True
    hole = removal_hole(img, mask, float(rng.choice([0.0, 0.3, 1.0])), float(rng.choice([0.0, EDGE_BAND, 0.5])))
    assert hole.shape == mask.shape and hole.dtype == bool and not (mask & ~hole).any()
    if mask.any():
        top = int(np.nonzero(mask.any(axis=1))[0].min())
        rim = max(EDGE_MIN, round(0.5 * np.sqrt(mask.sum()))) + -(-max(h, w) // EDGE_SIZE) + 1
        assert not (hole & ~mask & ~_grow(mask, rim))[:top].any()


def test_what_hangs_below_in_the_frames_next_to_one_is_removed_there_too():
    """Feet found under the object in the frames before and after a frame (not in it: there the ground
    beside them hid them) are in that frame's hole too, so they neither show nor are copied from it."""
    img, mask, truth = _scene({"legs": (200, 160, 140), "feet": (235, 235, 235)})
    hidden = img.copy()
    hidden[truth] = _ground()[truth]  # frame 1: nothing under the body differs from the ground
    assert not below_object(hidden, mask).any() and below_object(img, mask).any()
    recording = _Recording()
    holes = recording.holes
    body = _Body(mask)
    pipeline = Pipeline(body, body, recording, PipelineConfig(delay=2))
    pipeline.click(165, 100, frame_index=0)
    for i, image in enumerate([img, hidden, img, hidden]):
        pipeline.step(Frame(i, image.copy()))
    pipeline.flush()
    expected = mask | below_object(img, mask)
    assert np.array_equal(holes[0], expected) and np.array_equal(holes[2], expected)
    assert np.array_equal(holes[1], expected) and np.array_equal(holes[3], expected)  # from 2 (3: the last)


def _rim_scene(case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The body on the ground; the mask and the rim of the body it misses, by case."""
    img = _ground()
    img[BODY] = (150, 40, 170)  # a backpack's magenta
    body = np.zeros((H, W), bool)
    body[BODY] = True
    mask = body.copy()
    if case == "missed":  # the mask stops short of the body's top and right edges
        mask[:63] = False
        mask[:, 186:] = False
    elif case == "near":  # another thing of the body's colour in the band, not touching it
        img[60:150, 194:199] = (150, 40, 170)
    elif case == "apart":  # ... and beyond the band
        img[60:150, 215:225] = (150, 40, 170)
    elif case == "alike":  # the mask misses a rim the colour of the ground: nothing tells it apart
        mask[:, 186:] = False
        img[60:150, 186:190] = _ground()[60:150, 186:190]
    return img, mask, body & ~mask


@pytest.mark.parametrize("case", ["missed", "exact", "near", "apart", "alike"])
def test_a_rim_the_mask_missed_joins_the_hole(case):
    img, mask, rim = _rim_scene(case)
    added = missed_edge(img, mask)
    assert not (added & mask).any()
    if case == "missed":
        assert (added & rim).sum() >= 0.9 * rim.sum(), ((added & rim).sum(), rim.sum())
    # the ground around it stays (up to the pixel or two where the examined scale blends the edge)
    assert (added & ~_grow(mask | rim, 2)).sum() == 0, int((added & ~_grow(mask | rim, 2)).sum())
    assert added.sum() <= rim.sum() + 0.1 * mask.sum() ** 0.5 * 4


@pytest.mark.parametrize("how,taken", [("click", True), ("click, hole_edge=0", False), ("masks-in", False)])
def test_the_pipeline_hole_takes_the_rim_a_mask_missed(how, taken):
    img, mask, rim = _rim_scene("missed")
    recording = _Recording()
    _run_body(img, mask, how, recording,
              PipelineConfig(delay=2, hole_edge=0.0 if "=0" in how else PipelineConfig.hole_edge), 3)
    top = rim.copy()
    top[63:] = False  # (the rim's lowest rows stand beside the body's feet: what is below may take them)
    for hole in recording.holes.values():
        assert ((hole & rim).sum() >= 0.9 * rim.sum()) if taken else not (hole & top).any()


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int32])
@pytest.mark.parametrize("where", [(), ((0, 0),), ((39, 59),), ((3, 7), (20, 41)), ((slice(5, 30), slice(2, 58)),)])
def test_mask_box_and_area_agree_with_numpy(where, dtype):
    mask = np.zeros((40, 60), dtype)
    for at in where:
        mask[at] = 1
    ys, xs = np.nonzero(mask)
    assert mask_area(mask) == xs.size
    assert mask_box(mask) == (None if not xs.size else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert mask_box(mask[:, ::2]) == (None if not xs.size else mask_box(np.ascontiguousarray(mask[:, ::2])))
    # grown by a margin, within the frame
    assert mask_box(mask, 5) == (None if not xs.size else (max(0, xs.min() - 5), max(0, ys.min() - 5),
                                                           min(60, xs.max() + 6), min(40, ys.max() + 6)))
