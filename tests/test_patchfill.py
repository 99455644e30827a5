"""The made-up fill (engine/patchfill.py): patches of the allowed picture around a hole, never others."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from unseen.engine.fill import spatial_fill, texture_fill
from unseen.engine.patchfill import HOLE_PIXELS, made_up_fill
from unseen.engine.synthetic import psnr

RED = np.array([230, 20, 30], np.uint8)


def tiles(h: int = 96, w: int = 128, size: int = 8, seed: int = 0) -> np.ndarray:
    """A repeating 2x2 pattern of ``size``-px squares in four green-blue colours (none near RED)."""
    rng = np.random.default_rng(seed)
    colours = np.concatenate([rng.integers(20, 90, (2, 2, 1)), rng.integers(80, 220, (2, 2, 2))], axis=2)
    colours = colours.astype(np.uint8)
    ys, xs = np.mgrid[0:h, 0:w]
    return colours[(ys // size) % 2, (xs // size) % 2]


def box(shape: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    out = np.zeros(shape[:2], bool)
    out[y0:y1, x0:x1] = True
    return out


def texture_like(out: np.ndarray, img: np.ndarray, hole: np.ndarray, share: float) -> bool:
    """The fill is texture, not a smear: its contrast is at least 0.8x the truth's, and at least ``share``
    of its pixels are colours the picture shows around it (copied, not blended)."""
    palette = np.unique(img[~hole].reshape(-1, 3), axis=0).astype(int)
    nearest = np.abs(out[hole].astype(int)[:, None, :] - palette[None]).max(axis=2).min(axis=1)
    return out[hole].std() >= 0.8 * img[hole].std() and (nearest <= 10).mean() >= share


@pytest.mark.parametrize("where", [(29, 63, 43, 85), (0, 30, 0, 37), (63, 96, 89, 128)])  # inside, corners
def test_a_texture_continues_and_only_the_hole_changes(where):
    img = tiles()
    hole = box(img.shape, *where)
    out = made_up_fill(img, hole)
    assert np.array_equal(out[~hole], img[~hole])
    assert texture_like(out, img, hole, 0.4)
    assert not texture_like(spatial_fill(img, hole), img, hole, 0.2)  # Telea blends (what the test tells apart)


def striped_red_beside(img: np.ndarray, region: np.ndarray) -> None:
    img[region] = RED
    img[region & (np.indices(img.shape[:2])[1] % 4 < 2)] = (RED * 0.6).astype(np.uint8)


def reddish(out: np.ndarray, where: np.ndarray) -> int:
    near = [np.abs(out.astype(int) - c.astype(int)).max(axis=2) <= 60 for c in (RED, (RED * 0.6).astype(np.uint8))]
    return int(((near[0] | near[1]) & where).sum())


def test_nothing_is_taken_from_what_must_be_avoided():
    """A striped red object touching the hole is the nearest texture for the patches beside it: unmarked,
    it enters the fill; marked as avoid, none of it does."""
    img = tiles()
    hole = box(img.shape, 30, 60, 40, 70)
    other = box(img.shape, 30, 60, 70, 100)
    striped_red_beside(img, other)
    out = made_up_fill(img, hole, other)
    assert np.array_equal(out[~hole], img[~hole])
    assert reddish(out, hole) == 0
    assert reddish(made_up_fill(img, hole), hole) > 50  # (what the test tells apart)


def test_the_same_input_gives_the_same_fill():
    img = tiles(seed=3)
    hole = box(img.shape, 20, 50, 30, 80)
    assert np.array_equal(made_up_fill(img, hole), made_up_fill(img.copy(), hole.copy()))


def test_a_large_piece_is_made_up_at_a_reduced_scale():
    img = tiles(240, 320, size=8)
    hole = box(img.shape, 40, 200, 80, 240)  # 25,600 px > HOLE_PIXELS
    assert hole.sum() > HOLE_PIXELS
    out = made_up_fill(img, hole)
    assert np.array_equal(out[~hole], img[~hole])
    assert texture_like(out, img, hole, 0.3)  # (scaled back up: fewer pixels keep their exact colour)


def test_a_close_displaced_copy_is_taken_as_it_is():
    """Vertical stripes continue exactly through a copy from beside the hole; slivers get Telea."""
    rng = np.random.default_rng(1)
    stripes = np.repeat(rng.integers(30, 225, (33, 3)), 4, axis=0)[:128].astype(np.uint8)
    img = np.ascontiguousarray(np.broadcast_to(stripes[None], (96, 128, 3)))
    hole = box(img.shape, 40, 64, 50, 80)
    sliver = box(img.shape, 5, 7, 5, 7)
    out = made_up_fill(img, hole | sliver)
    assert psnr(out, img, hole) >= 40
    assert np.array_equal(out[~(hole | sliver)], img[~(hole | sliver)])


def test_a_piece_with_nothing_to_copy_from_gets_telea_not_black():
    img = tiles()
    hole = box(img.shape, 10, 80, 10, 110)
    avoid = ~hole
    avoid[0:3, 0:3] = False  # a corner too small for one patch
    out = made_up_fill(img, hole, avoid)
    assert np.array_equal(out[~hole], img[~hole])
    assert np.array_equal(out, spatial_fill(img, hole))  # (PatchMatch would have left it black)


def test_without_the_native_library_the_displaced_copy_serves(monkeypatch, caplog):
    unavailable = types.ModuleType("patchmatch")
    unavailable.patchmatch_available = False  # what PyPatchMatch reports when its library did not build
    monkeypatch.setitem(sys.modules, "patchmatch", unavailable)
    img = tiles()
    hole = box(img.shape, 30, 60, 40, 70)
    with caplog.at_level("WARNING", logger="unseen.patchfill"):
        out = made_up_fill(img, hole)
        again = made_up_fill(img, hole)
    assert np.array_equal(out, texture_fill(img, hole)) and np.array_equal(again, out)
    assert caplog.text.count("PyPatchMatch's native library is not available") == 1  # said once, not per frame
