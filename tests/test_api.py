"""The Python API (unseen.engine.open_session): numpy frames in, the same frames out, D frames later."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from unseen.engine import open_session
from unseen.engine.pipeline import PromptError
from unseen.engine.stages import SelectionError
from unseen.engine.synthetic import make_clip

N, W, H = 20, 160, 96
CLASSICAL = {"segmenter": "classical", "propagator": "classical", "inpainter": "classical"}


@pytest.fixture(scope="module")
def small():
    return make_clip(N, W, H, seed=0)


def _removed(out: np.ndarray, before: np.ndarray, mask: np.ndarray) -> bool:
    """The object changed a lot; most of the frame beyond it not at all."""
    diff = np.abs(out.astype(int) - before.astype(int)).mean(axis=2)
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    return diff[mask].mean() > 30 and np.median(diff[far]) == 0


def test_the_readme_example():
    from unseen.engine import open_session
    from unseen.engine.synthetic import make_clip

    clip = make_clip(30, 320, 192)  # a synthetic scene: a textured background, a moving object
    x, y = clip.click(0)  # a point on the object in frame 0
    with open_session(segmenter="classical", propagator="classical", inpainter="classical") as s:
        s.click(x, y)  # on the frame most recently passed in (none yet: the first)
        outputs = list(s.process(clip.frames))  # RGB uint8 HxWx3 in and out
    assert len(outputs) == len(clip.frames)
    assert all(_removed(o, f, m) for o, f, m in zip(outputs, clip.frames, clip.masks))


@pytest.mark.parametrize("sequential", [False, True])
def test_outputs_come_as_they_are_ready_and_the_end_flushes(small, sequential):
    video, masks = small.frames + small.frames[::-1], small.masks + small.masks[::-1]  # there and back: 40 frames
    pulled = 0

    def frames():
        nonlocal pulled
        for f in video:
            pulled += 1
            yield f

    with open_session(**CLASSICAL, delay=3, sequential=sequential) as s:
        s.click(*small.click(0))
        at = []  # frames pulled when each output came
        outputs = []
        for out in s.process(frames()):
            at.append(pulled)
            outputs.append(out)
        assert (s.delay, s.frames_in, s.frames_out) == (3, 2 * N, 2 * N)
    assert s.limit < 2 * N
    for k, n in enumerate(at):  # D frames behind at least, never more than the session's limit
        assert min(k + s.delay + 1, 2 * N) <= n <= k + s.limit, f"output {k} came after {n} frames in"
    assert all(_removed(outputs[i], video[i], masks[i]) for i in range(12))  # the tracker holds it that long here


def test_a_click_lands_on_the_frame_most_recently_passed_in(small):
    with open_session(**CLASSICAL, delay=4) as s:
        first = list(s.process(small.frames[:8], end=False))
        oid = s.click(*small.click(7))
        box = s.box(*_box(small.masks[12]), frame=12)
        rest = list(s.process(small.frames[8:]))
    assert len(first) + len(rest) == N
    assert oid.result() == 1 and box.result() == 2
    assert (s.objects[1].prompt_frame, s.objects[2].prompt_frame) == (7, 12)
    outputs = first + rest
    assert all(_removed(outputs[i], small.frames[i], small.masks[i]) for i in range(7, 12))


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()) - 2, int(ys.min()) - 2, int(xs.max()) + 3, int(ys.max()) + 3


def test_leaving_early_and_close_are_clean(small):
    with open_session(**CLASSICAL) as s:
        for i, _ in enumerate(s.process(small.frames)):
            if i == 1:
                break
    s.close()  # again: nothing happens
    with pytest.raises(RuntimeError, match="open a new session"):
        next(s.process(small.frames))


def test_a_click_that_selects_nothing_is_raised_and_the_video_goes_on():
    black = [np.zeros((64, 96, 3), np.uint8)] * 12
    with open_session(**CLASSICAL) as s:
        s.click(30, 30)
        outputs = []
        with pytest.raises(SelectionError, match="selected nothing; click inside the object"):
            outputs += s.process(black)
        outputs += s.process(black[s.frames_in:])  # the frames not passed in when it was raised, if any
        assert len(outputs) == s.frames_out == 12


def test_bad_input_is_named(small):
    with open_session(**CLASSICAL) as s:
        with pytest.raises(ValueError, match="not an RGB image; pass HxWx3 uint8"):
            list(s.process([small.frames[0].astype(np.float32)], end=False))
        list(s.process(small.frames[:1], end=False))
        with pytest.raises(ValueError, match="not 160x96 like the first"):
            list(s.process([small.frames[0][:50]], end=False))
        with pytest.raises(ValueError, match="give its object_id"):
            s.click(10, 10, positive=False)
        with pytest.raises(PromptError, match="outside the 160x96 frame"):
            s.click(400, 10)
    with pytest.raises(ValueError, match="unknown effect"):
        open_session(**CLASSICAL, effect="vanish")


def test_importing_the_models_does_not_load_the_engine():
    code = ("import sys, unseen.engine.models; print('unseen.engine.runtime' in sys.modules); "
            "from unseen.engine import open_session; print('unseen.engine.runtime' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
