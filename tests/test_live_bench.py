"""The live suite's measure of what a removal changed outside the object (benchmarks/live.py)."""
from __future__ import annotations

import numpy as np
import pytest

from unseen.benchmarks.live import outside_mad


def _scene(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (120, 200, 3), dtype=np.uint8)


@pytest.mark.parametrize("case, expected", [
    ("same", 0.0),
    ("object replaced", 0.0),  # all of the change lies in the object's grown box
    # a smear of 20x40 px, +100 everywhere in it, outside the object's box (40 px grown by 5 a side: 50x50)
    ("object replaced + smear elsewhere", 20 * 40 * 100 / (120 * 200 - 50 * 50)),
    ("coding noise", 1.0),
])
def test_outside_mad(case, expected):
    source = _scene()
    output = source.copy()
    if "object" in case:
        output[40:80, 60:100] = 0  # the removed object's region
    if "smear" in case:
        source[0:20, 150:190] = np.minimum(source[0:20, 150:190], 155)
        output[0:20, 150:190] = source[0:20, 150:190] + 100
    if case == "coding noise":
        output = (source.astype(int) + np.where(np.arange(200) % 2 == 0, 1, -1)[None, :, None]).clip(0, 255)
        output = output.astype(np.uint8)
        expected = float(np.abs(output.astype(int) - source.astype(int)).mean())
    assert outside_mad(output, source) == pytest.approx(expected, abs=1e-6)
