"""The shared flow cache (engine/flow.py) and the propagator's warp confined to the object's box."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from unseen.engine.backends.classical_inpaint import FlowGuidedInpainter
from unseen.engine.backends.classical_propagate import FlowPropagator
from unseen.engine.flow import FlowCache, invert, squared_speed, working_scale
from unseen.engine.stages import Frame, InpaintRequest, WindowEntry


def _texture(h: int = 120, w: int = 200, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC), (3, 3), 0)


def _shifted(image: np.ndarray, dx: int) -> np.ndarray:
    return np.ascontiguousarray(np.roll(image, dx, axis=1))


def test_each_flow_is_computed_once_per_pair_and_direction():
    cache = FlowCache()
    a = _texture()
    b = _shifted(a, 3)
    first = cache.flow(a, b)
    assert cache.flow(a, b) is first and cache.computed == 1
    cache.flow(b, a)
    assert cache.computed == 2  # the other direction is another flow
    cache.flow(a.copy(), b)
    assert cache.computed == 3  # the same content in another image is another frame


def test_a_flow_is_the_motion_at_the_working_size():
    a = _texture(240, 640)
    b = _shifted(a, 8)  # content moves 8 px to the right
    cache = FlowCache(size=320)
    flow = cache.flow(a, b)
    assert cache.scale(a) == working_scale(a.shape, 320) == 0.5
    assert flow.shape == (120, 320, 2)
    inner = flow[20:-20, 20:-20]
    assert np.median(inner[..., 0]) == pytest.approx(4.0, abs=0.2) and abs(np.median(inner[..., 1])) < 0.2


def test_least_recently_used_flows_are_evicted_first():
    cache = FlowCache(capacity=2)
    frames = [_texture(seed=i) for i in range(4)]
    cache.flow(frames[0], frames[1])
    cache.flow(frames[1], frames[2])
    cache.flow(frames[0], frames[1])  # used again: now the most recent
    cache.flow(frames[2], frames[3])  # evicts (1, 2)
    assert len(cache) == 2 and cache.computed == 3
    cache.flow(frames[0], frames[1])
    assert cache.computed == 3
    cache.flow(frames[1], frames[2])
    assert cache.computed == 4


def test_the_cache_keeps_no_frame_alive():
    import gc
    import weakref

    cache = FlowCache()
    a, b = _texture(seed=1), _texture(seed=2)
    refs = [weakref.ref(a), weakref.ref(b)]
    cache.flow(a, b)
    del a, b
    gc.collect()
    assert all(r() is None for r in refs)  # the cache held the frames weakly


def test_the_inpainter_takes_the_propagators_flows():
    """The propagator computes each new frame's flow back to the previous one; the inpainter, a few
    frames later, walks back along the same flows and forward along their inverses: it computes none."""
    cache = FlowCache()
    base = _texture(160, 240)
    frames = [Frame(i, _shifted(base, 2 * i)) for i in range(7)]
    mask = np.zeros((160, 240), bool)
    mask[60:100, 80:120] = True
    propagator = FlowPropagator(refine=False, flows=cache)
    propagator.seed(frames[0], {1: mask})
    for f in frames[1:]:
        propagator.step(f)
    assert cache.computed == 6
    inpainter = FlowGuidedInpainter(future=3, past=3, flows=cache)
    entries = {f.index: WindowEntry(f, mask) for f in frames}
    inpainter.inpaint(InpaintRequest(3, entries))
    assert cache.computed == 6


def test_prepared_frames_flows_are_found_and_the_masks_are_the_same():
    """prepare() (run ahead, on the worker that decodes) computes the flows step() and the fill read; the
    masks are those of a propagator that computed them itself."""
    base = _texture(160, 240)
    images = [_shifted(base, 2 * i) for i in range(6)]
    mask = np.zeros((160, 240), bool)
    mask[60:100, 80:120] = True
    runs = []
    for ahead in (False, True):
        cache = FlowCache()
        propagator = FlowPropagator(flows=cache)
        inpainter = FlowGuidedInpainter(flows=cache)
        frames = [Frame(i, im) for i, im in enumerate(images)]
        propagator.seed(frames[0], {1: mask})
        inpainter.observe(WindowEntry(frames[0], mask), {1: mask})  # an object is tracked: forward flows too
        if ahead:
            for before, f in zip(frames, frames[1:]):
                propagator.prepare(f, before)
                inpainter.prepare(f, before)
            assert cache.computed == 5  # backward between each pair; forward is its inverse
        before = cache.computed
        runs.append([propagator.step(f)[1] for f in frames[1:]])
        if ahead:
            assert cache.computed == before  # every flow the steps needed was there
            inverted = cache.forward(images[2], images[3])
            assert cache.forward(images[2], images[3]) is inverted  # the fill's forward ones were made ahead too
            assert cache.computed == before
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("hurried", [False, True])
def test_a_hurried_frame_costs_the_background_model_no_flow(hurried):
    """A live stream behind skipped the frame's propagation (and its flow): observing it computes none; a
    frame tracked in full has its flow taken (from the cache, else computed: the same either way)."""
    cache = FlowCache()
    inpainter = FlowGuidedInpainter(flows=cache)
    base = _texture(160, 240)
    mask = np.zeros((160, 240), bool)
    mask[60:100, 80:120] = True
    inpainter.observe(WindowEntry(Frame(0, base), mask), {1: mask})
    inpainter.observe(WindowEntry(Frame(1, _shifted(base, 1)), mask), {1: mask}, hurried=hurried)
    assert cache.computed == (0 if hurried else 1)


@pytest.mark.parametrize("scale", [1.0, 0.5625])
def test_the_warp_on_the_objects_box_equals_the_whole_frames(scale):
    h, w = 120, 200
    soft = np.zeros((h, w), np.float32)
    soft[40:80, 60:110] = 1.0
    soft = cv2.GaussianBlur(soft, (7, 7), 0)
    sh, sw = round(h * scale), round(w * scale)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    flow = np.stack([3 * np.sin(xx / 17) + 1.5, 2 * np.cos(yy / 11) - 1], axis=2).astype(np.float32)
    propagator = FlowPropagator()
    propagator._scale = scale
    boxed = propagator._warp(soft, flow)
    full = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) / scale if scale != 1.0 else flow
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    whole = cv2.remap(soft, gx + full[..., 0], gy + full[..., 1], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert np.abs(boxed - whole).max() < 0.05
    assert ((boxed > 0.5) != (whole > 0.5)).sum() <= 4


@pytest.mark.parametrize("shape,against", [
    ((27, 48, 2), None),
    ((27, 48, 2), np.array([0.25, -1.5], np.float32)),  # a camera's motion: a float32 median
    ((5, 3, 2), np.array([3.0, 0.0], np.float64)),  # a float64 vector promotes, as numpy's would
    ((1, 1, 2), np.array([-7.5, 2.25], np.float32)),
])
def test_squared_speed_equals_numpys_sum_of_squares(shape, against):
    flow = np.random.default_rng(3).normal(0, 4, shape).astype(np.float32)
    expected = (flow ** 2).sum(axis=2) if against is None else ((flow - against) ** 2).sum(axis=2)
    got = squared_speed(flow, against)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_a_hole_no_neighbour_saw_takes_one_new_flow_to_a_reference_the_newest():
    """Pixels the window never saw come from past reference frames along a direct flow each (a new flow
    per frame and reference): one is computed per frame, to the newest reference; what the older ones
    showed reaches the target through the previous fills."""
    cache = FlowCache()
    base = _texture(160, 240)
    images = [_shifted(base, i) for i in range(30)]  # a slow pan: no still background model
    hole = np.zeros((160, 240), bool)
    hole[50:110, 90:150] = True  # the same place in every frame of the window: 1 px a frame reveals little
    newest = np.zeros_like(hole)
    newest[50:80, 80:160] = True  # the newest reference did not see the hole's top half either
    entries = {i: WindowEntry(Frame(i, images[i]), hole) for i in range(22, 29)}
    free = np.zeros_like(hole)
    references = [WindowEntry(Frame(i, images[i]), m) for i, m in ((0, free), (10, free), (20, newest))]
    for i in range(22, 28):  # the window's flows, both ways (the propagator's and the prepared ones)
        cache.flow(images[i], images[i + 1])
        cache.flow(images[i + 1], images[i])
    inpainter = FlowGuidedInpainter(future=3, past=3, flows=cache)
    before = cache.computed
    out = inpainter.inpaint(InpaintRequest(25, entries, references))
    assert cache.computed - before == 1
    cache.flow(images[25], images[20])
    assert cache.computed - before == 1  # the one computed was the newest reference's
    assert inpainter.filled["reference"] > 0 and inpainter.filled["spatial"] > 0  # the older ones not asked
    seen = hole.copy()
    seen[:85] = False  # what the newest reference saw (its hole, moved by the pan and dilated, stays above)
    seen[:, 145:] = False  # (the window's walk takes the hole's right edge from frame 28)
    err = np.abs(out[seen].astype(int) - _shifted(base, 25)[seen].astype(int))
    assert np.median(err) <= 3  # the true background, moved with the pan


def test_the_pipeline_pairs_each_prepared_frame_with_the_one_before_even_one_only_noted():
    """Pipeline.prepare hands each stage the frame prepared before; a frame only noted (a live stream behind)
    costs no flow, and the next one pairs with it."""
    from unseen.engine.pipeline import Pipeline

    cache = FlowCache()
    pipeline = Pipeline(None, FlowPropagator(flows=cache), FlowGuidedInpainter(flows=cache))
    base = _texture(160, 240)
    frames = [Frame(i, _shifted(base, 2 * i)) for i in range(4)]
    for f in frames:
        pipeline.prepare(f, work=f.index != 2)
    assert cache.computed == 2  # 1 -> 0 and 3 -> 2 (no object yet: no forward flow for the fill)
    cache.flow(frames[1].image, frames[0].image)
    cache.flow(frames[3].image, frames[2].image)
    assert cache.computed == 2


def test_an_inverted_flow_is_the_forward_motion():
    """A backward flow that is affine (a little zoom, rotation and shift) has an affine forward flow, known
    in closed form: the inverse matches it to a hundredth of a pixel."""
    h, w = 90, 160
    a = np.array([[0.03, -0.02], [0.015, 0.02]], np.float32)  # later pixel y was at y + a @ y + c
    c = np.array([-2.5, 1.75], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    points = np.stack([xx, yy], axis=2)
    back = points @ a.T + c
    forward = (points - c) @ np.linalg.inv(np.eye(2, dtype=np.float32) + a).T - points
    inverse = invert(back)
    inner = (slice(10, -10), slice(10, -10))  # (near the border the later frame does not show the point)
    assert np.abs(inverse[inner] - forward[inner]).max() < 0.01


def test_an_inverted_flow_is_completed_where_the_point_is_hidden():
    """The right part moved 6 px left over the left one: the 6 columns it covered map nowhere.  Elsewhere the
    inverse is the motion itself; there it is completed from around (between the two motions), not made up."""
    h, w = 40, 120
    back = np.zeros((h, w, 2), np.float32)
    back[:, 50:, 0] = 6.0  # later pixels from column 50 on were 6 px further right
    inverse = invert(back)
    assert np.abs(inverse[:, :44]).max() < 1e-4  # the left part stays
    assert np.abs(inverse[:, 60:, 0] + 6).max() < 1e-4 and np.abs(inverse[:, 60:, 1]).max() < 1e-4
    hidden = inverse[:, 50:56]
    assert (hidden[..., 0] > -5.9).all() and (hidden[..., 0] < -0.1).all()  # neither motion: completed
    assert (np.diff(hidden[..., 0], axis=1) < 0).all()  # from one to the other
    assert np.abs(hidden[..., 1]).max() < 1e-4


def test_a_stream_given_the_cheap_fill_prepares_no_fill_flow_and_fills_the_same_later():
    """While a live stream's steps get the cheap fill, preparing a frame computes the propagator's flow
    only, not the fill's inverse of it; a full fill afterwards computes what it needs itself: the same
    output as when every frame was prepared in full."""
    from unseen.engine.degrade import Level
    from unseen.engine.pipeline import Pipeline, PipelineConfig
    from unseen.engine.stages import Segmenter

    base = _texture(160, 240)
    images = [_shifted(base, 2 * i) for i in range(10)]
    mask = np.zeros((160, 240), bool)
    mask[60:100, 80:120] = True

    class Given(Segmenter):
        def segment(self, frame, clicks, *, neighbours=(), box=None):
            return mask

    levels = [Level.FULL] * 3 + [Level.CHEAP_FILL] * 3 + [Level.FULL] * 4
    runs = []
    for ahead in (False, True):  # True: every forward flow made ahead anyway, as before
        cache = FlowCache()
        pipeline = Pipeline(Given(), FlowPropagator(refine=False, flows=cache), FlowGuidedInpainter(flows=cache),
                            PipelineConfig(delay=2, click_lookahead=0))
        pipeline.click(100, 80, frame_index=0)
        outs, inverted = [], []
        for i, level in enumerate(levels):
            frame = Frame(i, images[i])
            before = cache.inverted
            pipeline.prepare(frame)
            inverted.append(cache.inverted - before)
            if ahead and i:
                cache.forward(images[i - 1], images[i])
            outs += pipeline.step(frame, hurry=level)
        runs.append((outs + pipeline.flush(), inverted))
    (mixed, inverted_mixed), (ahead, _) = runs
    # from frame 3 on the fill has seen the object (frame 0 has left): its flow is prepared, except after a
    # step given the cheap fill
    assert inverted_mixed[3:] == [1, 0, 0, 0, 1, 1, 1]
    assert any(o.degraded for o in mixed) and not all(o.degraded for o in mixed)
    assert len(mixed) == len(ahead) == 10
    assert all(np.array_equal(a.image, b.image) for a, b in zip(mixed, ahead))
