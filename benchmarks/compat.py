"""Work-arounds for engine defects found by the benchmarks, applied only when detected.

Each one is numerically identical to the engine's intent, logged, and recorded in every
suite's JSON (``engine_patches``) so a reader knows the numbers needed it.  Remove an
entry once the engine is fixed (the detection then finds nothing to patch).
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("unseen.benchmarks")

_applied: list[str] = []


def _patch_classical_sample() -> str | None:
    """``classical_inpaint._sample`` remaps an Nx1 map: OpenCV refuses N >= 32767 points
    (holes of more than ~32k pixels, e.g. a large object at 854x480).  Same samples, laid out
    as rows of 1024."""
    import cv2

    from unseen.engine.backends import classical_inpaint as ci

    probe = np.zeros((4, 4), np.float32)
    pts = np.zeros(40000, np.float32)
    try:
        ci._sample(probe, pts, pts)
        return None
    except cv2.error:
        pass

    def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = len(x)
        cols = 1024
        rows = max(1, -(-n // cols))
        pad = rows * cols - n
        mx = np.pad(x.astype(np.float32), (0, pad)).reshape(rows, cols)
        my = np.pad(y.astype(np.float32), (0, pad)).reshape(rows, cols)
        out = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(rows * cols, -1)[:n] if out.ndim == 3 else out.reshape(-1)[:n]

    ci._sample = _sample
    return ("engine/backends/classical_inpaint.py _sample: cv2.remap on an Nx1 map fails for holes of "
            ">= 32767 pixels (SHRT_MAX); the benchmarks remap the same points as rows of 1024")


def apply() -> list[str]:
    """Apply the needed work-arounds once; returns what was patched (for the JSON)."""
    if not _applied:
        for patch in (_patch_classical_sample,):
            try:
                note = patch()
            except ImportError:
                note = None
            if note:
                log.warning("engine work-around: %s", note)
                _applied.append(note)
        _applied.append("")  # marks 'checked'
    return [n for n in _applied if n]
