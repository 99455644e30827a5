"""The per-frame step: delay line, prompts on held frames, objects, effects, degraded frames."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from support.live import static_scene
from support.stages import KeepInpainter

from unseen.engine.backends.registry import BackendOptions
from unseen.engine.effects import Effect, apply_effect
from unseen.engine.pipeline import Pipeline, PipelineConfig, PromptError
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame, Propagator, Segmenter, SelectionError, dilate_hole
from unseen.engine.synthetic import interior_point, iou, psnr


def _pipeline(delay=None, **config):
    return build_pipeline(Backends("classical", "classical", "classical"), BackendOptions(),
                          PipelineConfig(delay=delay, **config))


def _feed(pipeline, clip, frames=None):
    outs = []
    for i, img in enumerate(clip.frames[:frames]):
        outs += pipeline.step(Frame(i, img, pts=1000 + 7 * i))
    return outs + pipeline.flush()


@pytest.mark.parametrize("delay", [0, 1, 5, 8])
def test_one_output_per_input_in_order_after_exactly_delay_frames(clip, delay):
    p = _pipeline(delay)
    emitted_at = []
    for i, img in enumerate(clip.frames[:20]):
        for out in p.step(Frame(i, img, pts=1000 + 7 * i)):
            emitted_at.append((i, out.frame.index, out.frame.pts))
    rest = p.flush()
    assert [i - idx for i, idx, _ in emitted_at] == [delay] * (20 - delay)
    indices = [idx for _, idx, _ in emitted_at] + [o.frame.index for o in rest]
    assert indices == list(range(20))
    assert [pts for *_, pts in emitted_at] + [o.frame.pts for o in rest] == [1000 + 7 * i for i in range(20)]
    assert p.frames_in == p.frames_out == 20


def test_click_removes_the_object(clip):
    p = _pipeline()
    oid = p.click(*clip.click(0), frame_index=0)
    outs = _feed(p, clip, 30)
    assert oid.result(timeout=0) == 1
    for o in outs:
        i = o.frame.index
        assert iou(o.masks[1], clip.masks[i]) > 0.85
        region = dilate_hole(clip.masks[i], 4)
        assert psnr(o.image, clip.backgrounds[i], region) > psnr(clip.frames[i], clip.backgrounds[i], region) + 10


def test_click_on_a_held_past_frame_reaches_the_frames_after_it(clip):
    """A live click carries the frame the viewer saw; the object leaves every frame not yet sent."""
    p = _pipeline(delay=5)
    outs = []
    for i in range(12):
        outs += p.step(Frame(i, clip.frames[i], pts=i))
    assert len(outs) == 7  # frames 0..6 were sent
    future = p.click(*clip.click(4), pts=4)  # the user saw frame 4
    for i in range(12, 20):
        outs += p.step(Frame(i, clip.frames[i], pts=i))
    assert future.result(timeout=0) == 1
    assert p.objects[1].prompt_frame == 4
    first_after = [o for o in outs if o.frame.index >= 7]
    assert first_after[0].frame.index == 7
    for o in first_after:
        assert iou(o.masks[1], clip.masks[o.frame.index]) > 0.85
    assert all(1 not in o.masks for o in outs if o.frame.index < 7)


def test_click_on_a_future_frame_waits_for_it(clip):
    p = _pipeline()
    future = p.click(*clip.click(15), frame_index=15)
    outs = _feed(p, clip, 25)
    assert future.result(timeout=0) == 1
    assert all(1 not in o.masks for o in outs if o.frame.index < 15)
    assert all(iou(o.masks[1], clip.masks[o.frame.index]) > 0.85 for o in outs if o.frame.index >= 15)


def test_click_beyond_the_last_frame_fails_at_the_end(clip):
    p = _pipeline()
    future = p.click(*clip.click(0), frame_index=99)
    _feed(p, clip, 10)
    with pytest.raises(PromptError, match="beyond the last frame"):
        future.result(timeout=0)


def test_click_outside_the_frame_is_refused_at_once(clip):
    p = _pipeline()
    p.step(Frame(0, clip.frames[0]))
    with pytest.raises(PromptError, match="outside the 320x192 frame"):
        p.click(500, 10)


def test_click_that_selects_nothing_reports_it(clip):
    p = _pipeline()
    future = p.click(10, 10, frame_index=0)
    for i in range(p.delay + 1):  # the click waits (within the delay) for later frames: motion cues
        p.step(Frame(i, np.full_like(clip.frames[0], 90)))
    with pytest.raises(SelectionError):
        future.result(timeout=0)
    assert p.objects == {}


def test_objects_remove_clear_and_effects(clip):
    p = _pipeline(delay=2, click_lookahead=0)
    a = p.click(*clip.click(0), frame_index=0)
    p.step(Frame(0, clip.frames[0]))
    assert a.result(timeout=0) == 1
    b = p.click(290, 20, frame_index=0, object_id=7)  # a second object with the caller's id
    p.step(Frame(1, clip.frames[1]))
    assert b.result(timeout=0) == 7 and sorted(p.objects) == [1, 7]
    p.set_effect(1, "fill")
    outs = p.step(Frame(2, clip.frames[2]))
    assert p.objects[1].effect is Effect.FILL
    filled = outs[0]
    assert (filled.image[filled.masks[1]] == 0).all()  # black fill inside the mask
    remove = p.remove_object(7)
    p.step(Frame(3, clip.frames[3]))
    assert remove.result(timeout=0) == 7 and sorted(p.objects) == [1]
    with pytest.raises(PromptError, match="no object 42"):
        fut = p.remove_object(42)
        p.step(Frame(4, clip.frames[4]))
        fut.result(timeout=0)
    p.clear()
    outs = p.step(Frame(5, clip.frames[5]))
    assert p.objects == {} and outs[0].masks == {}
    assert np.array_equal(outs[0].image, clip.frames[3])  # frame 3 leaves unchanged after clear


def test_object_ids_stay_within_max_objects_on_an_endless_stream(clip):
    """New objects take the smallest free id, so ids never leave 1..max_objects however many come and go."""
    p = _pipeline(delay=1, click_lookahead=0, max_objects=2)
    frames = iter(range(len(clip.frames)))

    def settle(future):
        i = next(frames)
        p.step(Frame(i, clip.frames[i]))
        return future.result(timeout=0)

    assert settle(p.click(*clip.click(0), frame_index=0)) == 1
    assert settle(p.click(290, 20)) == 2
    with pytest.raises(PromptError, match="already has 2 objects"):
        settle(p.click(200, 100))
    assert settle(p.remove_object(1)) == 1
    with pytest.raises(PromptError, match="run from 1 to 2, not 3"):
        settle(p.click(200, 100, object_id=3))
    assert settle(p.click(*clip.click(0))) == 1
    for _ in range(3):  # remove and add again: the freed id comes back
        assert settle(p.remove_object(1)) == 1
        assert settle(p.click(*clip.click(0))) == 1
    assert sorted(p.objects) == [1, 2]


def test_hurry_uses_the_cheap_fill_and_counts_it(clip):
    p = _pipeline(delay=1, click_lookahead=0)
    p.click(*clip.click(0), frame_index=0)
    p.step(Frame(0, clip.frames[0]))
    out = p.step(Frame(1, clip.frames[1]), hurry=True)
    assert out[0].degraded and p.degraded == 1
    out = p.step(Frame(2, clip.frames[2]))
    assert not out[0].degraded and p.degraded == 1
    # frame 1 was tracked cheaply: the last masks, grown, still cover the moving object
    assert p.propagation_skipped == 1
    covered = (out[0].masks[1] & clip.masks[1]).sum() / clip.masks[1].sum()
    assert covered > 0.99
    out = p.step(Frame(3, clip.frames[3]))  # the propagator catches up from frame 0
    assert iou(out[0].masks[1], clip.masks[2]) > 0.85


def test_memory_stays_bounded_on_a_long_stream(clip):
    p = _pipeline(delay=3, history=8, ref_stride=5, ref_count=2)
    p.click(*clip.click(0), frame_index=0)
    for i in range(300):
        p.step(Frame(i, clip.frames[i % 60]))
        assert p.held_frames <= 3 + 8 + 1
    d = p.describe()
    assert d["references"] == 2 and d["frames_in"] == 300 and d["frames_out"] == 297


def test_given_masks_replace_clicks(clip):
    p = Pipeline(None, None, build_pipeline(Backends("classical", "classical", "classical")).inpainter,
                 given_masks=lambda i: {3: clip.masks[i]})
    outs = _feed(p, clip, 10)
    assert [sorted(o.masks) for o in outs] == [[3]] * 10
    with pytest.raises(PromptError, match="masks from files"):
        f = p.click(10, 10, frame_index=0)
        p.step(Frame(10, clip.frames[10]))
        f.result(timeout=0)


@pytest.mark.parametrize("effect", [Effect.BLUR, Effect.PIXELATE, Effect.FILL, Effect.OVERLAY])
def test_effects_change_only_inside_the_mask(clip, effect):
    img, mask = clip.frames[10], clip.masks[10]
    out = apply_effect(img, mask, effect, object_id=2, color=(255, 0, 255))
    assert np.array_equal(out[~mask], img[~mask])
    assert not np.array_equal(out[mask], img[mask])


def test_unknown_effect_names_the_choices():
    with pytest.raises(ValueError, match="remove, blur, pixelate, fill, overlay"):
        Effect.parse("sparkle")


def test_a_click_waits_for_later_frames_within_the_delay(clip):
    p = _pipeline(delay=4)
    future = p.click(*clip.click(0), frame_index=0)
    for i in range(4):
        p.step(Frame(i, clip.frames[i]))
        assert not future.done()
    out = p.step(Frame(4, clip.frames[4]))  # frame 0 leaves now: the click is applied first
    assert future.result(timeout=0) == 1 and 1 in out[0].masks


def test_async_segmentation_lets_frames_flow_and_then_applies(clip):
    """Live streams segment a click on a prompt thread; frames keep leaving meanwhile."""
    p = _pipeline(delay=3, segment_async=True, click_lookahead=0)
    outs = []
    for i in range(3):
        outs += p.step(Frame(i, clip.frames[i]))
    future = p.click(*clip.click(2), frame_index=2)
    def bounce(i):  # play the clip forwards and backwards: the motion stays continuous
        return i % 118 if i % 118 < 60 else 117 - i % 118

    i, deadline = 3, time.monotonic() + 60
    while not future.done() and time.monotonic() < deadline:
        outs += p.step(Frame(i, clip.frames[bounce(i)]))
        i += 1
        time.sleep(0.01)
    assert future.result(timeout=0) == 1
    assert i > 4  # frames were processed while the click was being segmented
    outs += p.step(Frame(i, clip.frames[bounce(i)]))
    assert iou(outs[-1].masks[1], clip.masks[bounce(outs[-1].frame.index)]) > 0.85
    assert p.visible_masks.keys() == {1}
    p.close()
    p.close()


def test_a_failing_inpainter_degrades_the_frame_instead_of_stopping(clip):
    p = _pipeline(delay=1, click_lookahead=0)

    def broken(request):
        raise RuntimeError("boom")

    p.inpainter.inpaint = broken
    p.click(*clip.click(0), frame_index=0)
    p.step(Frame(0, clip.frames[0]))
    out = p.step(Frame(1, clip.frames[1]))
    assert out[0].degraded and p.degraded == 1 and p.frames_out == 1


def test_outputs_sent_before_an_object_was_known_are_no_fill_source(clip):
    """A frame that left with the object in it must not paint the object back (cheap fill, live)."""
    p = _pipeline(delay=2, click_lookahead=0)
    outs = []
    for i in range(6):
        outs += p.step(Frame(i, clip.frames[i]))
    p.click(*clip.click(3), frame_index=3)  # frame 3 already left, with the object in it
    for i in range(6, 16):
        outs += p.step(Frame(i, clip.frames[i]), hurry=True)  # every later frame gets the cheap fill
    for o in outs[6:]:
        region = dilate_hole(clip.masks[o.frame.index], 4)
        # the object's colours are gone from its region: much closer to the background than the input
        assert psnr(o.image, clip.backgrounds[o.frame.index], region) > \
            psnr(clip.frames[o.frame.index], clip.backgrounds[o.frame.index], region) + 6, o.frame.index


@pytest.mark.parametrize("click_at", [9, 29])
def test_frames_from_before_a_click_do_not_paint_the_object_back(click_at):
    """Still camera, an object moving to and fro: the frames held from before the click (and the past
    references) show it where it will be again, unmasked.  They are no source for its fill, so none of
    it comes back (each of these frames painted up to all of it back, 100-380 px of 619 on average)."""
    frames, _, masks = static_scene(240, 144, 15, frames=30)
    pipeline = build_pipeline(Backends("classical", "classical", "classical"), None, PipelineConfig(delay=4))
    outs = []
    for i in range(click_at + 25):
        if i == click_at:
            pipeline.click(*interior_point(masks[i % len(frames)]), frame_index=i)
        outs += pipeline.step(Frame(i, frames[i % len(frames)].copy()))
    outs += pipeline.flush()
    for o in outs[click_at:]:
        k = o.frame.index % len(frames)
        left = (np.abs(o.image.astype(int) - frames[k].astype(int)).max(axis=2) < 25) & masks[k]
        assert left.sum() <= 0.02 * masks[k].sum(), (o.frame.index, int(left.sum()), int(masks[k].sum()))


def test_a_click_is_propagated_back_over_the_frames_held_before_it(clip):
    """The frames held from before a click get the clicked object's mask, propagated backwards by a fork
    of the propagator (so they are sources for its fill); the forward tracker is not disturbed."""
    pipeline = build_pipeline(Backends("classical", "classical", "classical"), None, PipelineConfig(delay=3))
    click_at = 12
    for i in range(click_at + 4):
        if i == click_at:
            pipeline.click(*clip.click(click_at), frame_index=click_at)
        pipeline.step(Frame(i, clip.frames[i]))
    earlier = [i for i in sorted(pipeline._held) if i < click_at]
    assert len(earlier) == click_at  # all of them are still held (history)
    scores = [iou(pipeline._held[i].masks[1], clip.masks[i]) for i in earlier]
    assert min(scores) >= 0.7, [round(s, 2) for s in scores]
    assert pipeline.propagator.objects == [1]


class _Recording(Propagator):
    """Keeps the seeded masks; records which step each frame got."""

    name = "recording"

    def __init__(self, reduced_step: bool) -> None:
        self.reduced_step = reduced_step
        self.calls: list[tuple[str, int]] = []
        self._masks: dict = {}

    def seed(self, frame, masks):
        self.calls.append(("seed", frame.index))
        self._masks = dict(masks)

    def step(self, frame):
        self.calls.append(("full", frame.index))
        return dict(self._masks)

    def step_reduced(self, frame):
        self.calls.append(("reduced", frame.index))
        return dict(self._masks)

    def reset(self):
        self._masks = {}


class _Gated(Segmenter):
    """Segments (the given mask) only once released: a slow live segmentation, controlled by the test."""

    def __init__(self, mask) -> None:
        self.mask, self.release, self.started = mask, threading.Event(), threading.Event()

    def segment(self, frame, clicks, *, neighbours=(), box=None):
        self.started.set()
        assert self.release.wait(30)
        return self.mask


@pytest.mark.parametrize("reduced_step", [True, False])
def test_a_late_click_catches_up_through_the_frames_already_sent(clip, reduced_step):
    """A click segmented while frames kept leaving re-propagates from its frame: through the frames already
    sent with the propagator's cheaper step (a full one every 3rd), or, without one, every 2nd frame in
    full; then every frame not yet sent in full."""
    from unseen.engine.pipeline import CATCHUP_FULL_EVERY

    propagator = _Recording(reduced_step)
    segmenter = _Gated(clip.masks[2])
    p = Pipeline(segmenter, propagator, KeepInpainter(), PipelineConfig(delay=2, segment_async=True, click_lookahead=0))
    for i in range(3):
        p.step(Frame(i, clip.frames[i]))
    future = p.click(*clip.click(2), frame_index=2)
    p.step(Frame(3, clip.frames[3]))  # the click is taken up: its segmentation starts
    assert segmenter.started.wait(30)
    for i in range(4, 15):  # frames keep leaving while the click is segmented
        p.step(Frame(i, clip.frames[i]))
    segmenter.release.set()
    i = 15
    while not future.done():  # applied on the first step after the segmentation is done
        p.step(Frame(i, clip.frames[i % len(clip.frames)]))
        i += 1
        assert i < 10_000
    assert future.result(timeout=0) == 1
    calls = propagator.calls
    start = calls.index(("seed", 2))
    catchup = calls[start + 1:]
    head = max(index for _, index in catchup)
    unsent = [c for c in catchup if c[1] >= head - p.delay]  # (the frames held after the output point)
    sent = catchup[:len(catchup) - len(unsent)]
    assert [kind for kind, _ in unsent] == ["full"] * len(unsent) and len(unsent) >= 1
    assert len(sent) >= 5
    if reduced_step:
        assert [index for _, index in sent] == list(range(3, 3 + len(sent)))  # every frame, in order
        assert [kind for kind, _ in sent] == ["full" if n % CATCHUP_FULL_EVERY == 0 else "reduced"
                                              for n in range(1, len(sent) + 1)]
    else:
        assert [index for _, index in sent] == list(range(4, 4 + 2 * len(sent), 2))  # every 2nd frame
        assert {kind for kind, _ in sent} == {"full"}
    p.close()
