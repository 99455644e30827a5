"""A break in the source (a live camera that reconnects): frames of a new ``Frame.epoch`` need not continue
the frames before, and the objects are found again on the first of them instead of being followed there
by their motion.  Synthetic scenes with known truth: the object jumps far beyond what the flow reaches."""
from __future__ import annotations

import numpy as np
import pytest

from unseen.engine.backends.classical_propagate import FlowPropagator
from unseen.engine.backends.guided import GuidedPropagator
from unseen.engine.backends.nanotrack import TrackedBox
from unseen.engine.degrade import Level
from unseen.engine.backends.registry import BackendOptions
from unseen.engine.flow import FlowCache
from unseen.engine.pipeline import PipelineConfig
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame
from unseen.engine.synthetic import make_clip

from test_guided_reseed import frame as square_frame, mask as square_mask, square

JUMP = 60  # frames skipped at the break: the object is 50-70 px away, several times its own size


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def track_across_a_break(pan: tuple[float, float], epoch_after: int) -> list[float]:
    """Seed on frame 0, step 1-19, then frames 20+JUMP... as the next ones, of ``epoch_after``: IoU after it."""
    clip = make_clip(100, 320, 192, pan=pan, seed=5)
    p = FlowPropagator(flows=FlowCache())
    p.seed(Frame(0, clip.frames[0]), {1: clip.masks[0]})
    for t in range(1, 20):
        assert iou(p.step(Frame(t, clip.frames[t]))[1], clip.masks[t]) > 0.9  # tracked before the break
    out = []
    for k in range(6):
        t = 20 + JUMP + k
        out.append(iou(p.step(Frame(20 + k, clip.frames[t], epoch=epoch_after))[1], clip.masks[t]))
    return out


@pytest.mark.parametrize("pan", [(0.0, 0.0), (1.7, 0.4)], ids=["still", "panning"])
def test_the_object_is_found_again_after_a_break_and_tracked_on(pan):
    assert min(track_across_a_break(pan, epoch_after=1)) > 0.9


@pytest.mark.parametrize("pan", [(0.0, 0.0), (1.7, 0.4)], ids=["still", "panning"])
def test_without_the_break_stated_the_flow_cannot_follow_such_a_jump(pan):
    """What the epoch is for: the same frames as one unbroken run lose the object."""
    assert max(track_across_a_break(pan, epoch_after=0)) < 0.1


def test_an_object_that_did_not_move_keeps_its_mask_across_a_break():
    clip = make_clip(40, 320, 192, pan=(0.0, 0.0), seed=5)
    p = FlowPropagator(flows=FlowCache())
    p.seed(Frame(0, clip.frames[0]), {1: clip.masks[0]})
    for t in range(1, 20):
        p.step(Frame(t, clip.frames[t]))
    assert iou(p.step(Frame(20, clip.frames[19], epoch=1))[1], clip.masks[19]) > 0.9  # the same frame again
    assert iou(p.step(Frame(21, clip.frames[20], epoch=1))[1], clip.masks[20]) > 0.9


class Scripted:
    """A box tracker that reports the square where it was when it started (it lost the jump); counts starts."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, ...]] = []
        self.box = (0.0, 0.0, 1.0, 1.0)

    def start(self, image, box) -> None:
        self.starts.append(tuple(round(v) for v in box))
        self.box = tuple(float(v) for v in box)

    def update(self, image) -> TrackedBox:
        return TrackedBox(self.box, 0.9)


def test_the_box_tracker_starts_over_on_the_object_found_after_a_break():
    trackers: list[Scripted] = []

    def make() -> Scripted:
        trackers.append(Scripted())
        return trackers[-1]

    flows = FlowCache()
    p = GuidedPropagator(FlowPropagator(flows=flows), flows, make)
    p.seed(square_frame(0), {1: square_mask(0)})
    p.step(square_frame(1))
    after = square_frame(25)  # 48 px further, from a new run of the source
    after.epoch = 1
    masks = p.step(after)
    assert iou(masks[1], square_mask(25)) > 0.8
    assert len(trackers) == 1 and len(trackers[0].starts) == 2
    x, y = square(25)
    assert np.allclose(trackers[0].starts[-1], (x, y, x + 20, y + 20), atol=2)


def test_the_first_frame_after_a_break_is_tracked_even_when_the_stream_is_far_behind():
    """Far behind, frames get stale masks moved by each object's measured motion; across a break no motion
    leads, so the first frame after it is tracked (the cheaper step: the object found again) however far behind
    the stream is, and the stale
    masks after it start from there, not from a motion measured across the jump."""
    clip = make_clip(100, 320, 192, pan=(0.0, 0.0), seed=5)
    p = build_pipeline(Backends("classical", "classical", "classical"), BackendOptions(),
                       PipelineConfig(delay=1, click_lookahead=0))
    p.click(*clip.click(0), frame_index=0)
    outs = []
    for t in range(10):
        outs += p.step(Frame(t, clip.frames[t]))
    far = [10 + JUMP + k for k in range(3)]  # the frames of the new run
    for k, t in enumerate(far):
        outs += p.step(Frame(10 + k, clip.frames[t], epoch=1), hurry=Level.STALE_MASKS)
    outs += p.flush()
    after = outs[10:]
    assert [o.tracking for o in after] == [Level.REDUCED_TRACKING, Level.STALE_MASKS, Level.STALE_MASKS]
    assert p.propagation_skipped == 2
    assert iou(after[0].masks[1], clip.masks[far[0]]) > 0.8  # found again
    for o, t in zip(after[1:], far[1:]):  # stale masks from the found one still cover the object
        assert (o.masks[1] & clip.masks[t]).sum() >= 0.95 * clip.masks[t].sum()
