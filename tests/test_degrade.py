"""Falling behind degrades one thing at a time and never stops the tracker (engine/degrade.py):
the ladder's order and hysteresis, stale masks that follow a moving object within 1.5x of its tracked
area over a simulated slow stream (a fake clock: stage costs are counted, nothing sleeps), and the
per-level counters in describe() and /metrics."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from support.app_client import SYNTH, client, run, settings, wait_frames
from support.stages import KeepInpainter

from unseen.engine.degrade import AREA_CAP, Ladder, LadderConfig, Level, StaleMasks, Threshold, geometry, grown
from unseen.engine.effects import Effect
from unseen.engine.pipeline import Pipeline, PipelineConfig
from unseen.engine.stages import Frame, Propagator, Segmenter
from unseen.engine.synthetic import make_clip
from unseen.server.app import SERVER

F, C, R, S = Level.FULL, Level.CHEAP_FILL, Level.REDUCED_TRACKING, Level.STALE_MASKS


# ------------------------------------------------------------------------------ the ladder
@pytest.mark.parametrize("backlogs, levels", [
    ([0, 1, 1, 0], [F, F, F, F]),  # keeping up
    ([2, 2, 1, 0, 0], [C, C, C, F, F]),  # the fill degrades first; left below 1
    ([4, 3, 2, 1, 0], [R, R, R, C, F]),  # then tracking; down one level per step
    ([8, 0, 0, 0, 0], [S, R, C, F, F]),  # stale only from 8 frames behind; recovers one level at a time
    ([2, 9], [C, S]),  # a jump skips levels on the way up
    ([4, 3, 4, 3, 4], [R] * 5),  # hysteresis: no flapping around a threshold
    ([2, 1, 2, 1], [C] * 4),
    ([8, 7, 6, 5, 4, 3], [S, S, S, R, S, R]),  # at most 3 stale frames in a row, then a tracked one
    ([9] * 9, [S, S, S, R, S, S, S, R, S]),
])
def test_the_ladder_degrades_in_order_with_hysteresis(backlogs, levels):
    ladder = Ladder()
    assert [ladder.decide(b) for b in backlogs] == levels


# ------------------------------------------------------------------------------ a slow stream, simulated
PERIOD = 1.0  # the source's frame interval, in the fake clock's units
COST = {"step": 1.3, "step_reduced": 0.5, "stall": 14.0, "other": 0.1}  # x PERIOD; "stall": every 60th step


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0


class TruthPropagator(Propagator):
    """Ground-truth masks of the clip (reduced: a half-resolution version), at a cost on the fake clock.
    Records what it returned, and checks it is stepped forwards only (catching up over skipped frames)."""

    name = "truth"

    def __init__(self, clip, clock: FakeClock) -> None:
        self.clip, self.clock = clip, clock
        self.ids: list[int] = []
        self.last = -1
        self.areas: dict[int, int] = {}  # frame -> area it returned (the tracked area)
        self.calls = 0

    def seed(self, frame, masks):
        self.ids, self.last = list(masks), frame.index
        self.areas[frame.index] = int(sum(m.sum() for m in masks.values()))

    def _run(self, frame, cost: float, mask: np.ndarray) -> dict:
        assert frame.index > self.last, "the propagator is stepped forwards only"
        self.calls += 1
        self.clock.now += COST["stall"] if self.calls % 60 == 0 else cost
        self.last = frame.index
        self.areas[frame.index] = int(mask.sum()) * len(self.ids)
        return {oid: mask for oid in self.ids}

    def step(self, frame):
        return self._run(frame, COST["step"], self.clip.masks[frame.index])

    def step_reduced(self, frame):
        mask = self.clip.masks[frame.index].astype(np.float32)
        h, w = mask.shape
        small = cv2.resize(mask, (w // 2, h // 2), interpolation=cv2.INTER_AREA) > 0.25
        coarse = cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        return self._run(frame, COST["step_reduced"], coarse)

    def reset(self):
        self.ids = []


class TruthSegmenter(Segmenter):
    def __init__(self, clip) -> None:
        self.clip = clip

    def segment(self, frame, clicks, *, neighbours=(), box=None):
        return self.clip.masks[frame.index]


def simulate(clip, frames: int):
    """Frames arrive every PERIOD; the worker steps each one at the level the ladder picks from the
    frames waiting behind it (the live worker's rule).  Returns the outputs, the propagator, the levels
    and the largest backlog."""
    clock = FakeClock()
    propagator = TruthPropagator(clip, clock)
    pipeline = Pipeline(TruthSegmenter(clip), propagator, KeepInpainter(),
                        PipelineConfig(delay=2, click_lookahead=0, default_effect=Effect.BLUR))
    pipeline.click(*clip.click(0), frame_index=0)
    ladder, outs, levels, worst = Ladder(), [], [], 0
    for i in range(frames):
        clock.now = max(clock.now, i * PERIOD)  # the worker waits for frame i if it is early
        backlog = min(frames - 1, int(clock.now / PERIOD)) - i  # frames arrived behind frame i
        worst = max(worst, backlog)
        levels.append(ladder.decide(backlog))
        clock.now += COST["other"]
        outs += pipeline.step(Frame(i, clip.frames[i]), hurry=levels[-1])
    return outs + pipeline.flush(), propagator, levels, worst, pipeline


@pytest.mark.parametrize("width", [320, 1280])  # the object moves ~1 and ~2.5 px/frame (and wobbles)
def test_stale_masks_cover_a_moving_object_within_the_area_cap(width):
    clip = make_clip(300, width, 192, seed=1)
    outs, propagator, levels, worst, pipeline = simulate(clip, 300)
    assert worst < 32  # the ladder kept the backlog under the live queue (32 frames): nothing was dropped
    assert {C, R, S} <= set(levels)
    assert sum(o.tracking is S for o in outs) >= 10
    tracked = sorted(propagator.areas)
    growth = []
    for o in outs:
        i, mask = o.frame.index, o.masks[1]
        last = max(t for t in tracked if t <= i)  # the last frame the propagator actually ran on
        assert mask.sum() <= AREA_CAP * propagator.areas[last] + 1, (i, o.tracking, int(mask.sum()))
        if o.tracking is S:
            growth.append(mask.sum() / propagator.areas[last])
        coverage = (mask & clip.masks[i]).sum() / clip.masks[i].sum()
        assert coverage >= 0.95, (i, o.tracking, round(float(coverage), 3))
        if o.tracking is S:  # what the viewer gets: the blur covers the object
            assert not np.array_equal(o.image[clip.masks[i]], clip.frames[i][clip.masks[i]])
    # the largest growth the stream reports bounds every stale mask sent (it counts those re-tracked later too)
    reported = pipeline.describe()["stale_area_over_tracked_max"]
    assert 1.0 < max(growth) <= reported + 1e-4 and reported <= AREA_CAP + 1e-4
    counts = pipeline.describe()["degradation"]
    assert counts["stale_masks"] == sum(o.tracking is S for o in outs) == pipeline.propagation_skipped
    assert counts["reduced_tracking"] == sum(o.tracking is R for o in outs)
    assert counts["cheap_fill"] == 0  # blurred, not removed: nothing was filled


@pytest.mark.parametrize("k", [1, 3, 8])
def test_a_stale_mask_starts_from_the_tracked_one_and_never_compounds(k):
    """However many frames a mask is stale, it is the tracked mask moved and grown once, within the cap."""
    mask = np.zeros((100, 200), bool)
    mask[40:60, 20:40] = True
    stale = StaleMasks()
    for index, dx in ((0, 0), (1, 3), (2, 6)):  # 3 px/frame to the right
        stale.tracked(index, {1: np.roll(mask, dx, axis=1)})
    assert stale.largest_growth == 0.0  # no stale mask made yet
    predicted = stale.predict(2 + k, [1])[1]
    xs = np.nonzero(predicted.any(axis=0))[0]
    assert abs((xs.min() + xs.max()) / 2 - (29.5 + 6 + 3 * k)) <= 1  # moved by k x its velocity
    assert predicted.sum() <= AREA_CAP * mask.sum()
    assert stale.largest_growth == predicted.sum() / mask.sum()


# ------------------------------------------------------------------------------ counters
ALWAYS = LadderConfig(Threshold(0, 0), Threshold(0, 0), Threshold(0, 0), max_stale_run=1)  # stale, reduced, ...


def _metric(text: str, level: str) -> float:
    found = re.search(rf'unseen_stream_degraded_frames_total{{level="{level}",stream="cam"}} (\S+)', text)
    assert found, f"no {level} counter in /metrics"
    return float(found.group(1))


def test_degradation_counts_reach_describe_and_metrics():
    async def body():
        async with client(settings(sources=[SYNTH])) as c:
            state = await wait_frames(c, "cam", 3)
            assert state["degradation"] == {"cheap_fill": 0, "reduced_tracking": 0, "stale_masks": 0}
            assert _metric(await (await c.get("/metrics")).text(), "stale_masks") == 0
            stream = c.server.app[SERVER].streams["cam"]
            stream.ladder = Ladder(ALWAYS)  # the worker degrades every step from now on
            assert (await c.post("/api/streams/cam/objects", json={"x": 50, "y": 50})).status == 200
            state = await wait_frames(c, "cam", state["frames_out"] + 12)
            while min(state["degradation"].values()) == 0:
                state = await wait_frames(c, "cam", state["frames_out"] + 1)
            text = await (await c.get("/metrics")).text()
            for level, n in state["degradation"].items():
                assert n > 0 and _metric(text, level) > 0, level
            assert 1.0 <= state["stale_area_over_tracked_max"] <= AREA_CAP + 1e-4  # stale masks were made
    run(body())


def _masks_table():
    """Masks of every shape the stale path meets: one pixel, at each border, thin, large, scattered."""
    rng = np.random.default_rng(7)
    one = np.zeros((40, 60), bool)
    one[20, 30] = True
    corner = np.zeros((40, 60), bool)
    corner[:3, :5] = corner[-2:, -4:] = True
    thin = np.zeros((40, 60), bool)
    thin[5:35, 29] = True
    large = np.zeros((40, 60), bool)
    large[4:36, 6:54] = True
    return [one, corner, thin, large, rng.random((40, 60)) > 0.97]


@pytest.mark.parametrize("radius,cap", [(1.0, 10**6), (3.5, 10**6), (6.0, 400), (30.0, 10**6), (2.0, 1)])
@pytest.mark.parametrize("case", range(5))
def test_grown_is_the_euclidean_dilation_within_the_cap(case, radius, cap):
    """grown() works on the mask's box only: it must equal the rule over the whole frame: every pixel
    within ``radius`` (Euclidean) of the mask, the nearest first when that would pass ``cap``."""
    mask = _masks_table()[case]
    out = grown(mask, radius, cap)
    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ring = (dist > 0) & (dist <= radius)
    budget = cap - int(mask.sum())
    if budget <= 0:
        expected = mask
    else:
        if ring.sum() > budget:
            ring &= dist < np.sort(dist[ring])[budget]
        expected = mask | ring
    assert np.array_equal(out, expected)
    assert not (mask & ~out).any()


@pytest.mark.parametrize("case", range(5))
def test_geometry_is_area_centroid_and_box(case):
    mask = _masks_table()[case]
    ys, xs = np.nonzero(mask)
    g = geometry(mask)
    assert g is not None and g.area == xs.size
    assert np.allclose(g.centre, [xs.mean(), ys.mean()], atol=1e-9)
    assert g.box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert geometry(np.zeros_like(mask)) is None


def test_cheap_filled_frames_on_a_panning_camera_show_the_background_where_it_is_now():
    """Every third step full, the others given the cheap fill (a live stream a little behind), on a camera
    panning 3 px a frame: the cheap fill moves the previous output with the camera (the flow the tracker
    computed), so the removed object's place shows the background that is there now.  (The plain copy of
    the previous output, misplaced by the pan, scored 26 dB on average here, against 44.)"""
    from unseen.engine.session import Backends, build_pipeline
    from unseen.engine.synthetic import interior_point, psnr

    clip = make_clip(40, 320, 192, pan=(3.0, 1.0), seed=4)
    pipeline = build_pipeline(Backends("classical", "classical", "classical"), config=PipelineConfig(delay=4))
    pipeline.click(*interior_point(clip.masks[0]), frame_index=0)
    outputs = []
    for t, image in enumerate(clip.frames):
        outputs += pipeline.step(Frame(t, image), hurry=Level.CHEAP_FILL if t % 3 else Level.FULL)
    outputs += pipeline.flush()
    cheap = [o for o in outputs if o.degraded]
    assert len(outputs) == 40 and len(cheap) >= 20
    # (frames 1 and 2 copy frame 0's fill, made up where nothing behind the object had been seen yet)
    scores = [psnr(o.image, clip.backgrounds[o.frame.index], clip.masks[o.frame.index]) for o in cheap
              if o.frame.index >= 3]
    assert np.mean(scores) > 38 and np.median(scores) > 40, [round(s, 1) for s in scores]  # (the copy: 27, 26)
