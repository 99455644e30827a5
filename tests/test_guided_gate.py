"""The NanoTrack-guided propagator's motion gate: on a panning camera, what the mask dragged along with the
background leaves it; on a still camera a box that jitters over a still object takes nothing from its mask.
A scripted tracker stands in for NanoTrack (no weights needed)."""
from __future__ import annotations

import cv2
import numpy as np

from unseen.engine.backends.classical_propagate import FlowPropagator
from unseen.engine.backends.guided import GuidedPropagator
from unseen.engine.backends.nanotrack import TrackedBox
from unseen.engine.flow import FlowCache
from unseen.engine.stages import Frame

H, W = 144, 192
SIZE = 32  # the object: a textured square


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Blotchy texture the flow can follow."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    return cv2.resize(small, ((w // 8 + 2) * 8, (h // 8 + 2) * 8), interpolation=cv2.INTER_CUBIC)[:h, :w]


BACKGROUND = texture(H, W + 200, 1)
OBJECT = texture(SIZE, SIZE, 2) // 2 + np.array([120, 0, 0], np.uint8)


class Scene:
    """The background pans ``pan`` px a frame to the left; the object moves ``move`` px a frame to the right."""

    def __init__(self, pan: int, move: int) -> None:
        self.pan, self.move = pan, move

    def corner(self, t: int) -> tuple[int, int]:
        return 60 + self.move * t, 56

    def frame(self, t: int) -> Frame:
        image = BACKGROUND[:, self.pan * t:self.pan * t + W].copy()
        x, y = self.corner(t)
        image[y:y + SIZE, x:x + SIZE] = OBJECT
        return Frame(t, np.ascontiguousarray(image))

    def truth(self, t: int) -> np.ndarray:
        m = np.zeros((H, W), bool)
        x, y = self.corner(t)
        m[y:y + SIZE, x:x + SIZE] = True
        return m


class Scripted:
    """The object's box, shifted by ``jitter`` px, alternately left-down and right-up, each frame."""

    def __init__(self, scene: Scene, jitter: int) -> None:
        self.scene, self.jitter, self.t = scene, jitter, 0

    def start(self, image, box) -> None:
        pass

    def update(self, image) -> TrackedBox:
        self.t += 1
        x, y = self.scene.corner(self.t)
        d = self.jitter * (1 if self.t % 2 else -1)
        return TrackedBox((float(x - d), float(y + d), float(x - d + SIZE), float(y + d + SIZE)), 0.99)


def track(scene: Scene, jitter: int, seed_mask: np.ndarray, steps: int) -> list[np.ndarray]:
    flows = FlowCache()
    p = GuidedPropagator(FlowPropagator(refine=False, flows=flows), flows, lambda: Scripted(scene, jitter))
    p.seed(scene.frame(0), {1: seed_mask})
    return [p.step(scene.frame(t))[1] for t in range(1, steps + 1)]


def test_still_camera_a_jittering_box_takes_nothing_from_a_still_object():
    scene = Scene(pan=0, move=0)
    masks = track(scene, jitter=5, seed_mask=scene.truth(0), steps=6)
    for t, m in enumerate(masks, 1):
        assert (m & scene.truth(t)).sum() >= 0.9 * scene.truth(t).sum(), t


def test_what_the_mask_dragged_along_leaves_on_a_panning_camera():
    """A strip of background beside the object was taken into the seed mask; the camera pans one way, the object
    moves the other: the strip moves with the background, and the gate takes it out of the mask."""
    scene = Scene(pan=4, move=4)
    strip = np.zeros((H, W), bool)
    x, y = scene.corner(0)
    strip[y:y + SIZE, x - 10:x] = True  # 10 px of background to the object's left
    masks = track(scene, jitter=0, seed_mask=scene.truth(0) | strip, steps=3)
    truth = scene.truth(len(masks))
    # measured: 147 px of the 320 px strip's worth left beside the object (386 with the gate off: the
    # flow, smooth across the object's edge, carries part of the strip along within the box's bound), 78% of the
    # object kept (82% with the gate off: the flow of this synthetic texture loses its edges)
    assert (masks[-1] & ~truth).sum() <= 0.5 * strip.sum()
    assert (masks[-1] & truth).sum() >= 0.7 * truth.sum()
