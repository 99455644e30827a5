"""The made-up fill takes only background; a still camera's background model is a fill source.

Synthetic still scenes with known truth: a muted textured background, flat-coloured moving objects, the
removed object's masks given (the fill is tested, not the segmentation)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from unseen.engine.background import STABLE, BackgroundModel
from unseen.engine.backends.classical_inpaint import FlowGuidedInpainter
from unseen.engine.flow import FlowCache
from unseen.engine.pipeline import Pipeline, PipelineConfig
from unseen.engine.stages import Frame

H, W = 96, 160
FUR = np.array([150, 80, 30], np.uint8)  # the other object's colour, and the removed one's remains
RED = np.array([220, 30, 40], np.uint8)  # the removed object


def background(seed: int = 1, width: int = W) -> np.ndarray:
    """Blue-grey structured texture: no pixel near FUR or RED."""
    rng = np.random.default_rng(seed)
    tex = cv2.resize(rng.random((12, width // 8)).astype(np.float32), (width, H), interpolation=cv2.INTER_CUBIC)
    img = np.stack([70 + 40 * tex, 100 + 40 * tex, 150 + 50 * tex], axis=2)
    for _ in range(25):
        c = (int(rng.integers(60, 110)), int(rng.integers(90, 140)), int(rng.integers(140, 200)))
        cv2.circle(img, (int(rng.integers(0, width)), int(rng.integers(0, H))), int(rng.integers(3, 9)), c, -1)
    return cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (3, 3), 0)


def paint(image: np.ndarray, box: tuple[int, int, int, int], colour: np.ndarray) -> np.ndarray:
    """A flat-coloured block with a darker checker moving with it (structure the flow can follow); its mask."""
    x, y, w, h = box
    mask = np.zeros(image.shape[:2], bool)
    mask[max(0, y):y + h, max(0, x):x + w] = True
    stripes = (((np.arange(W)[None, :] - x) // 3 + (np.arange(H)[:, None] - y) // 3) % 2 == 0) & mask
    image[mask] = colour
    image[stripes] = (colour * 0.7).astype(np.uint8)
    return mask


def run(frames: list[np.ndarray], masks: list[dict], delay: int = 5) -> tuple[list[np.ndarray], FlowGuidedInpainter]:
    inpainter = FlowGuidedInpainter(flows=FlowCache())
    pipeline = Pipeline(None, None, inpainter, PipelineConfig(delay=delay), given_masks=lambda i: masks[i])
    out = []
    for t, img in enumerate(frames):
        out += [o.image for o in pipeline.step(Frame(t, img))]
    out += [o.image for o in pipeline.flush()]
    return out, inpainter


def near(image: np.ndarray, colour: np.ndarray, region: np.ndarray, tolerance: int = 40) -> int:
    """Pixels of ``region`` within ``tolerance`` (largest channel) of ``colour`` or its stripe shade."""
    found = np.zeros(image.shape[:2], bool)
    for c in (colour, (colour * 0.7).astype(np.uint8)):
        found |= np.abs(image.astype(int) - c.astype(int)).max(axis=2) <= tolerance
    return int((found & region).sum())


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1,) * 2, np.uint8)) > 0


@pytest.mark.parametrize("side", [-1, 1])
def test_made_up_fill_takes_no_other_object_and_no_remains(side):
    """The removed object walks slowly (the window saw little behind it: most of its hole is made up),
    with a part its mask misses the colour of a second, untracked object walking beside it: neither is
    copied into the fill."""
    bg = background()
    frames, masks, remains = [], [], []
    for t in range(24):
        img = bg.copy()
        hole = paint(img, (60 + t // 2, 30, 28, 40), RED)
        rest = paint(img, (60 + t // 2, 22, 28, 8), FUR)  # its head: the mask misses it
        paint(img, (64 + side * 44, 20 + t, 24, 30), FUR)  # the other object walks down beside it
        frames.append(img)
        masks.append({1: hole})
        remains.append(rest)
    out, inpainter = run(frames, masks)
    assert inpainter.filled["spatial"] > 0  # the hole was made up
    for t, image in enumerate(out):
        region = grow(masks[t][1], inpainter.dilation) & ~grow(remains[t], 1)
        assert near(image, RED, region) == 0
        assert near(image, FUR, region) <= 3, t  # (the stripes' blurred edge may graze a pixel)


def walk_scene(stands: int, pan_from: int | None = None) -> tuple[list, list, list, list]:
    """Object A (untracked) walks across a still scene; later object R walks in, stands still for ``stands``
    frames untracked, then is removed (its masks given) while it keeps standing.  From ``pan_from`` on the
    camera pans (2 px a frame).  Frames, given masks, true backgrounds, A's masks."""
    wide = background(seed=3, width=W + 160)
    arrive = 50
    frames, masks, truths, others = [], [], [], []
    for t in range(arrive + stands + 24):
        shift = 0 if pan_from is None or t < pan_from else 2 * (t - pan_from)
        bg = np.ascontiguousarray(wide[:, shift:shift + W])
        img = bg.copy()
        a = paint(img, (-30 + 5 * t, 50, 24, 30), FUR) if t < 40 else np.zeros((H, W), bool)
        r = paint(img, (max(70, 130 - 5 * (t - arrive + 12)), 20, 26, 36), RED) if t >= arrive - 12 else None
        frames.append(img)
        truths.append(bg)
        others.append(a)
        masks.append({1: r} if r is not None and t >= arrive + stands else {})
    return frames, masks, truths, others


def test_background_model_fills_the_hole_where_the_background_was_seen():
    """The background behind R was seen free of every object (before R came, after A passed): the model
    fills R's hole with it exactly, though R never moves once removed; A never appears in the fill."""
    frames, masks, truths, others = walk_scene(stands=3)
    out, inpainter = run(frames, masks)
    assert inpainter.filled["background"] > 0
    removed = [t for t, m in enumerate(masks) if m]
    for t in removed[6:]:  # (the first frames' neighbours still show R walking in)
        hole = masks[t][1]
        diff = np.abs(out[t].astype(int) - truths[t].astype(int)).max(axis=2)
        assert diff[hole].max() <= 2, t
        assert near(out[t], FUR, grow(hole, inpainter.dilation)) == 0


def test_an_object_that_stood_still_before_its_click_is_not_painted_back():
    """R stood still (untracked) long enough to be learned as background before it was clicked: what the
    model learned of it is forgotten, so R is never painted back into its own hole."""
    frames, masks, truths, _ = walk_scene(stands=20)
    out, inpainter = run(frames, masks)
    for t in [t for t, m in enumerate(masks) if m]:
        assert near(out[t], RED, masks[t][1], tolerance=30) == 0, t


def test_a_panning_camera_drops_the_model():
    """While the camera pans the model is dropped (nothing learned, nothing filled from it); a still
    camera's model fills from it before."""
    frames, masks, truths, _ = walk_scene(stands=3, pan_from=62)
    inpainter = FlowGuidedInpainter(flows=FlowCache())
    pipeline = Pipeline(None, None, inpainter, PipelineConfig(delay=5), given_masks=lambda i: masks[i])
    from_model = []
    for t, img in enumerate(frames):
        pipeline.step(Frame(t, img))
        from_model.append(inpainter.filled["background"])
    assert from_model[62] > 0  # emitted up to frame 57: still camera, filled from the model
    assert inpainter.background.drops == 1 and not inpainter.background.ready
    assert from_model[-1] == from_model[67]  # frames emitted after the pan began: nothing from the model


def test_model_learns_calm_free_pixels_and_drops_on_a_light_change():
    """Pixels are learned after STABLE calm frames away from the objects, never under an object; a light
    change over the whole scene drops the model."""
    bg = background()
    model = BackgroundModel()
    occupied = np.zeros((H, W), bool)
    occupied[30:60, 60:100] = True
    for t in range(STABLE + 1):
        img = bg.copy()
        paint(img, (60, 30, 40, 30), RED)
        model.update(img, occupied)
    assert model.ready and model.known is not None and model.image is not None
    assert not model.known[30:60, 60:100].any()
    assert np.array_equal(model.image[model.known], bg[model.known])
    model.update(np.clip(bg.astype(int) + 60, 0, 255).astype(np.uint8), occupied)
    assert model.drops == 1 and not model.ready
