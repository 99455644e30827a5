"""A re-seed of the NanoTrack-guided propagator (a user's correction, another object added) and the box trackers:
an object whose tracker trusted its box on the re-seeded frame, and whose new mask overlaps that box (a part of the
object, or it with background beside it, as a classical correction often selects), keeps its tracker; one whose
tracker was unsure there, or whose new mask lies elsewhere, starts it again on the new mask.
A scripted tracker stands in for NanoTrack (no weights needed): it puts the object where the scene has it."""
from __future__ import annotations

import numpy as np
import pytest

from unseen.engine.backends.classical_propagate import FlowPropagator
from unseen.engine.backends.guided import GuidedPropagator
from unseen.engine.backends.nanotrack import TrackedBox
from unseen.engine.flow import FlowCache
from unseen.engine.stages import Frame

H, W = 96, 128


def square(t: int) -> tuple[int, int]:
    """Top-left corner of the object (a 20 px square) on frame ``t``: 2 px to the right a frame."""
    return 20 + 2 * t, 30


def frame(t: int) -> Frame:
    rng = np.random.default_rng(t)
    image = np.full((H, W, 3), 90, np.uint8) + rng.integers(0, 20, (H, W, 3), dtype=np.uint8)
    x, y = square(t)
    image[y:y + 20, x:x + 20] = (220, 60, 40)
    return Frame(t, image)


def mask(t: int, dx: int = 0) -> np.ndarray:
    m = np.zeros((H, W), bool)
    x, y = square(t)
    m[y:y + 20, x + dx:x + dx + 20] = True
    return m


class Scripted:
    """Puts the object where ``square`` has it on each frame given, with score ``score``; counts its starts."""

    def __init__(self, score: float) -> None:
        self.score, self.starts, self.t = score, [], 0

    def start(self, image, box) -> None:
        self.starts.append(tuple(round(v) for v in box))

    def update(self, image) -> TrackedBox:
        self.t += 1
        x, y = square(self.t)
        return TrackedBox((float(x), float(y), float(x + 20), float(y + 20)), self.score)


def run(score: float, reseed: np.ndarray) -> Scripted:
    """Seed on frame 0, step 1-4, re-seed on frame 2 with ``reseed``; the tracker the object had."""
    trackers: list[Scripted] = []

    def make() -> Scripted:
        trackers.append(Scripted(score))
        return trackers[-1]

    flows = FlowCache()
    p = GuidedPropagator(FlowPropagator(flows=flows), flows, make)
    p.seed(frame(0), {1: mask(0)})
    for t in range(1, 5):
        p.step(frame(t))
    trackers[0].t = 2  # the re-stepped frames come again: the script follows (a tracker started again does too)
    p.seed(frame(2), {1: reseed})
    p.step(frame(3))
    assert len(trackers) == 1  # one tracker per object, started again or not
    return trackers[0]


def part(t: int) -> np.ndarray:
    """A corner of the object (a fifth of it: its box overlaps the object's at IoU 0.2)."""
    m = np.zeros((H, W), bool)
    x, y = square(t)
    m[y:y + 8, x:x + 10] = True
    return m


def beside(t: int) -> np.ndarray:
    """The object and as much background again beside it (box IoU 0.49)."""
    m = mask(t)
    x, y = square(t)
    m[y:y + 20, x + 20:x + 41] = True
    return m


@pytest.mark.parametrize("score,reseed,starts", [
    (0.9, mask(2, dx=3), 1),  # trusted, the corrected mask agrees: the tracker goes on
    (0.9, part(2), 1),  # a correction that selected a part of the object: the tracker keeps the whole
    (0.9, beside(2), 1),  # ... or the background beside it too
    (0.3, mask(2, dx=3), 2),  # the tracker was unsure there: it starts again on the corrected mask
    (0.9, mask(2, dx=60), 2),  # the corrected mask is elsewhere (the tracker had lost it): it starts again
], ids=["trusted", "a part", "with background beside", "unsure", "elsewhere"])
def test_a_reseed_keeps_a_trusted_tracker(score, reseed, starts):
    tracker = run(score, reseed)
    assert len(tracker.starts) == starts
    if starts == 2:
        ys, xs = np.nonzero(reseed)
        assert tracker.starts[-1] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
