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


def _sample(t: float, area: int):
    from unseen.benchmarks.live import Sample

    return Sample(t, int(25 * t), int(25 * t), 0, 0, {}, area, 25.0, 5)


def test_summary_reports_the_stale_growth_of_every_frame_beside_the_sampled_areas():
    """The per-frame figure comes from the stream (largest stale mask over its tracked mask); the sampled
    one divides the largest sample by their median, so a bent-over start counts there and not here."""
    from unseen.benchmarks.live import summarise

    samples = [_sample(1, 30_000), _sample(2, 16_000), _sample(3, 15_000), _sample(4, 14_000)]
    final = {"frames_in": 100, "frames_out": 98, "dropped": 0, "degraded": 10, "delay_frames": 5, "rate": 25.0,
             "degradation": {"cheap_fill": 6, "reduced_tracking": 2, "stale_masks": 2},
             "stale_area_over_tracked_max": 1.41, "stage_ms": {"propagate": 30.5, "inpaint": 12.0}}
    r = summarise(samples, final, [1.0, 2.0], 2, 0, 2, 4.0)
    assert r.stale_area_over_tracked_max == 1.41 and r.stage_ms == {"propagate": 30.5, "inpaint": 12.0}
    assert r.area_over_median_max == pytest.approx(30_000 / 15_500, abs=1e-3)
    assert r.propagated_fraction == pytest.approx(1 - 2 / 96, abs=1e-4)
    assert (r.outside_mad_mean, r.outside_mad_max) == (1.5, 2.0)
