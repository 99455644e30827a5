"""A still camera's long-term background: what each pixel showed while it was calm and free of every object.

A person walking through a still scene uncovers the background behind him over time; a model of it is
a fill source for a hole nothing in the window saw behind.  A pixel is learned only once it has been
calm (unchanged from one frame to the next) and away from every tracked object for ``STABLE`` frames
in a row: something moving through (tracked or not) is not learned.  The model is dropped as soon as
the light changes over much of the scene, or the camera moves (the median optical flow between consecutive frames, at a small size, over STILL_SHIFT).

Memory: the model image, one counter and one flag per pixel, the previous frame (a reference to it)
and its small grey image: constant on an endless stream.  Imports only numpy and OpenCV.
"""
from __future__ import annotations

import cv2
import numpy as np

STABLE = 8  # frames in a row a pixel must be calm and free before it is learned
CALM = 10  # colour change (0-255, largest channel, 3x3 mean) between consecutive frames under which a pixel is calm
CLEARANCE = 8  # px: pixels this near a tracked object are not free (its blurred edge, a part its mask missed)
SHIFT_SIZE = 240  # long side (px) the camera's motion is measured at ...
STILL_SHIFT = 0.25  # ... over which (px at that size, about 1 px at 854x480) the camera moved: the model is dropped
CHANGED = 0.4  # fraction of the known background that differs from it over which the scene changed: dropped
LEARN_RATE = 0.25  # a learned pixel follows what it shows while calm and free (slow light changes)


def _colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest channel difference between two RGB uint8 images, averaged over 3x3 (noise), as uint8."""
    d = cv2.absdiff(a, b)
    return cv2.blur(np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]), (3, 3))


class BackgroundModel:
    """The background of a still camera, learned where it was seen calm and free of objects."""

    def __init__(self, stable: int = STABLE) -> None:
        self.stable = stable
        self.image: np.ndarray | None = None  # HxWx3 uint8: the background where ``known``
        self.known: np.ndarray | None = None  # HxW bool
        self._calm: np.ndarray | None = None  # HxW uint8: frames in a row calm and free (capped)
        self._prev: np.ndarray | None = None
        self._grey: np.ndarray | None = None  # the previous frame, small and grey (camera shift)
        self.drops = 0  # times the camera moved and the model was dropped (diagnostics, tests)
        self._dis: cv2.DISOpticalFlow | None = None  # the camera's motion at a small size

    @property
    def ready(self) -> bool:
        """Whether the camera is still now and some background is known."""
        return self.known is not None and bool(self.known.any())

    def reset(self) -> None:
        self.image = self.known = self._calm = self._prev = self._grey = None

    @property
    def previous(self) -> np.ndarray | None:
        """The frame learned from last."""
        return self._prev

    def update(self, image: np.ndarray, occupied: np.ndarray | None, moving: np.ndarray | None = None) -> None:
        """Learn from the next frame; ``occupied`` (HxW bool or None) are the tracked objects' pixels,
        ``moving`` (or None) those measured moving since the previous frame (a flat object's inside does
        not change colour as it moves: it is not calm)."""
        grey = self._small_grey(image)
        moved = self._grey is not None and (self._grey.shape != grey.shape or self._shift(grey) > STILL_SHIFT)
        prev = self._prev
        self._prev, self._grey = image, grey
        if not moved and self.known is not None and self._scene_changed(image):
            moved = True  # the light changed, or the stream cut to another scene: what was learned is wrong now
        if moved or prev is None or prev.shape != image.shape:
            if self.known is not None and moved:
                self.drops += 1
            self.image = self.known = self._calm = None
            return
        if self.image is None:
            h, w = image.shape[:2]
            self.image = np.zeros_like(image)
            self.known = np.zeros((h, w), bool)
            self._calm = np.zeros((h, w), np.uint8)
        # 0/1 uint8 masks and OpenCV's operations throughout: numpy's boolean indexing and masked copies
        # over whole frames cost several times more, on the emitting worker's every frame
        calm = (_colour_distance(image, prev) < CALM).view(np.uint8)
        if moving is not None:
            calm = cv2.bitwise_and(calm, (~moving).view(np.uint8))
        if occupied is not None and occupied.any():
            near = cv2.dilate(occupied.view(np.uint8), np.ones((2 * CLEARANCE + 1,) * 2, np.uint8))
            calm = cv2.bitwise_and(calm, cv2.bitwise_xor(near, 1))
        assert self._calm is not None and self.known is not None and self.image is not None
        self._calm = cv2.multiply(cv2.add(self._calm, 1, mask=calm), calm)  # (saturates at 255); 0 where not calm
        learn = (self._calm >= self.stable).view(np.uint8)
        if not cv2.countNonZero(learn):
            return
        known = self.known.view(np.uint8)
        follow = cv2.bitwise_and(learn, known)
        if cv2.countNonZero(follow):
            mixed = cv2.addWeighted(self.image, 1 - LEARN_RATE, image, LEARN_RATE, 0)
            cv2.copyTo(mixed, follow, self.image)
        cv2.copyTo(image, cv2.bitwise_and(learn, cv2.bitwise_xor(known, 1)), self.image)  # newly learned
        np.bitwise_or(known, learn, out=known)

    def forget(self, region: np.ndarray, image: np.ndarray, tolerance: int = 2 * CALM) -> None:
        """Forget what was learned in ``region`` that looks like ``image`` there: an object that stood still
        before it was tracked was learned as background; it must never be painted back."""
        if self.known is None or self.image is None or self.image.shape != image.shape:
            return
        same = _colour_distance(self.image, image) < tolerance
        self.known &= ~(region & same)
        if self._calm is not None:
            self._calm[region] = 0

    def differs(self, image: np.ndarray, threshold: int, region: tuple[slice, slice] | None = None) -> np.ndarray:
        """Known pixels whose colour differs from the background by more than ``threshold``; ``image`` is
        the frame, or its crop at ``region`` (rows, columns)."""
        if self.known is None or self.image is None:
            return np.zeros(image.shape[:2], bool)
        region = region or (slice(None), slice(None))
        model, known = self.image[region], self.known[region]
        if model.shape != image.shape:
            return np.zeros(image.shape[:2], bool)
        return known & (_colour_distance(np.ascontiguousarray(model), image) > threshold)

    def _scene_changed(self, image: np.ndarray) -> bool:
        """More than CHANGED of the known background (every 4th pixel) differs from it by over 3 CALM."""
        assert self.known is not None and self.image is not None
        known = self.known[::4, ::4]
        if known.sum() < 64 or self.image.shape != image.shape:
            return False
        d = _colour_distance(np.ascontiguousarray(self.image[::4, ::4]), np.ascontiguousarray(image[::4, ::4]))
        return float((d[known] > 3 * CALM).mean()) > CHANGED

    def _small_grey(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        k = min(1.0, SHIFT_SIZE / max(h, w))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if k < 1.0:
            grey = cv2.resize(grey, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        return grey

    def _shift(self, grey: np.ndarray) -> float:
        assert self._grey is not None
        if min(grey.shape) < 8:
            return 0.0
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        flow = self._dis.calc(self._grey, grey, None)
        dx, dy = np.median(flow.reshape(-1, 2), axis=0)  # the camera's: objects cover less than half the frame
        return float(np.hypot(dx, dy))
