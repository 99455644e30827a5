"""Per-object effects, composited only inside the object's mask.

``remove`` is handled by the inpainter (it needs the delay window); the other
effects are instant and suit live privacy masking.
"""
from __future__ import annotations

import enum

import cv2
import numpy as np

from .stages import mask_box


class Effect(str, enum.Enum):
    REMOVE = "remove"
    BLUR = "blur"
    PIXELATE = "pixelate"
    FILL = "fill"
    OVERLAY = "overlay"

    @classmethod
    def parse(cls, value: "str | Effect") -> "Effect":
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise ValueError(f"unknown effect {value!r}; use one of: {', '.join(e.value for e in cls)}") from None


# A palette for overlays and mask export (object id -> RGB), DAVIS-like.
def palette_color(object_id: int) -> tuple[int, int, int]:
    bits = object_id
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= (bits & 1) << shift
        g |= ((bits >> 1) & 1) << shift
        b |= ((bits >> 2) & 1) << shift
        bits >>= 3
    return r, g, b


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    box = mask_box(mask, margin)
    return None if box is None else (slice(box[1], box[3]), slice(box[0], box[2]))


def apply_effect(image: np.ndarray, mask: np.ndarray, effect: Effect, *, object_id: int = 1,
                 color: tuple[int, int, int] = (0, 0, 0), strength: int = 0) -> np.ndarray:
    """Return ``image`` with ``effect`` applied inside ``mask`` (``remove`` is not handled here)."""
    if effect is Effect.REMOVE or not mask.any():
        return image
    out = image.copy()
    if effect is Effect.FILL:
        out[mask] = color
        return out
    if effect is Effect.OVERLAY:
        tint = np.array(palette_color(object_id), np.float32)
        out[mask] = (0.5 * out[mask].astype(np.float32) + 0.5 * tint).astype(np.uint8)
        edge = mask.astype(np.uint8) - cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
        out[edge.astype(bool)] = tint.astype(np.uint8)
        return out
    h, w = image.shape[:2]
    scale = max(h, w)
    margin = strength or max(8, scale // 40)
    box = _bbox(mask, margin)  # (the mask is the image's size)
    assert box is not None
    roi = image[box]
    if effect is Effect.BLUR:
        k = (strength or max(15, scale // 25)) | 1
        done = cv2.GaussianBlur(roi, (k, k), 0)
    else:  # PIXELATE
        block = strength or max(8, scale // 60)
        small = cv2.resize(roi, (max(1, roi.shape[1] // block), max(1, roi.shape[0] // block)),
                           interpolation=cv2.INTER_AREA)
        done = cv2.resize(small, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_NEAREST)
    m = mask[box]
    out[box][m] = done[m]
    return out
