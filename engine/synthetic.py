"""A synthetic scene with known ground truth: textured background, panning camera, a moving object.

Used by ``unseen demo``, the tests and the quick benchmarks.  The background is
rendered from one large texture through the camera's (sub-pixel) pan, so the
clean background of every frame is known exactly, as is the object's mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np


@dataclass
class SyntheticClip:
    frames: list[np.ndarray]  # HxWx3 uint8 RGB, with the object
    backgrounds: list[np.ndarray]  # the same frames without the object (ground truth of removal)
    masks: list[np.ndarray]  # HxW bool, the object
    rate: Fraction

    def click(self, index: int = 0) -> tuple[int, int]:
        """The object's most interior pixel on frame ``index`` (max of the distance transform)."""
        return interior_point(self.masks[index])


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, colourful natural-looking texture (multi-octave noise plus soft shapes)."""
    tex = np.zeros((height, width, 3), np.float32)
    for octave, amp in ((8, 0.55), (24, 0.3), (64, 0.15)):
        cells = (max(2, octave * height // max(height, width)), max(2, octave * width // max(height, width)))
        small = rng.random((cells[0], cells[1], 3))
        tex += amp * cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    tex = (tex - tex.min()) / (tex.max() - tex.min() + 1e-6)
    base = np.array([90, 140, 110], np.float32) + 110 * (tex - 0.5) * np.array([1.0, 0.8, 1.2], np.float32)
    img = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(40):  # soft blobs and lines: structure the flow can lock on to
        c = tuple(int(v) for v in rng.integers(40, 220, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(img, center, int(rng.integers(6, 30)), c, -1, cv2.LINE_AA)
        else:
            end = (center[0] + int(rng.integers(-80, 80)), center[1] + int(rng.integers(-80, 80)))
            cv2.line(img, center, end, c, int(rng.integers(2, 6)), cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 1.2)


def _sprite(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured object (a rounded blob with stripes) and its alpha mask."""
    sprite = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = (np.sin((xx + yy) / 3.0) > 0).astype(np.float32)
    sprite[..., 0] = (200 + 40 * stripes).astype(np.uint8)
    sprite[..., 1] = (40 + 30 * stripes).astype(np.uint8)
    sprite[..., 2] = (60 + 20 * (1 - stripes)).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    r = size // 2
    cv2.ellipse(mask, (r, r), (int(r * 0.9), int(r * 0.65)), 20, 0, 360, 1, -1)
    cv2.circle(mask, (int(r * 1.3), int(r * 0.55)), int(r * 0.3), 1, -1)  # a "head"
    return sprite, mask.astype(bool)


def make_clip(frames: int = 60, width: int = 320, height: int = 192, *, seed: int = 0,
              pan: tuple[float, float] = (1.7, 0.4), object_size: int | None = None,
              rate: Fraction = Fraction(24)) -> SyntheticClip:
    """Render ``frames`` frames of the scene; camera pans by ``pan`` px/frame, the object moves on its own."""
    rng = np.random.default_rng(seed)
    margin = int(max(abs(pan[0]), abs(pan[1])) * frames) + 8
    tex = _texture(height + 2 * margin, width + 2 * margin, rng)
    size = object_size or max(24, min(width, height) // 4)
    sprite, smask = _sprite(size, rng)
    out = SyntheticClip([], [], [], rate)
    x0, y0 = width * 0.2, height * 0.35
    vx, vy = (width * 0.5) / max(1, frames), (height * 0.15) / max(1, frames)
    for t in range(frames):
        # camera: the visible window moves over the texture (sub-pixel, bilinear)
        cam = np.float32([[1, 0, margin + pan[0] * t], [0, 1, margin + pan[1] * t]])
        bg = cv2.warpAffine(tex, cam, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REFLECT)
        frame = bg.copy()
        mask = np.zeros((height, width), bool)
        ox = int(round(x0 + vx * t + 6 * np.sin(t / 7.0)))
        oy = int(round(y0 + vy * t + 4 * np.cos(t / 9.0)))
        ys, xs = slice(max(0, oy), min(height, oy + size)), slice(max(0, ox), min(width, ox + size))
        sy, sx = slice(ys.start - oy, ys.stop - oy), slice(xs.start - ox, xs.stop - ox)
        m = smask[sy, sx]
        frame[ys, xs][m] = sprite[sy, sx][m]
        mask[ys, xs] = m
        out.frames.append(frame)
        out.backgrounds.append(bg)
        out.masks.append(mask)
    return out


PSNR_CAP = 100.0  # dB reported for identical images (an infinite PSNR would break the means)


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """PSNR (dB, peak 255) between uint8 images, optionally inside a boolean region; capped at 100.

    An empty region gives NaN (nothing was measured)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    if region is not None:
        diff = diff[region.astype(bool)]
    if diff.size == 0:
        return float("nan")
    mse = float(np.mean(diff * diff))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * np.log10(255.0 ** 2 / mse))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks score 1 (as in DAVIS)."""
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
