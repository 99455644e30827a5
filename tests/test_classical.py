"""The embedded classical backends on synthetic scenes with known ground truth."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from unseen.engine.backends.classical_inpaint import FlowGuidedInpainter, _carry
from unseen.engine.backends.classical_propagate import FlowPropagator
from unseen.engine.backends.classical_segment import ClassicalSegmenter
from unseen.engine.fill import fill_invalid, spatial_fill, texture_fill
from unseen.engine.flow import FlowCache
from unseen.engine.stages import Click, Frame, InpaintRequest, SelectionError, WindowEntry, dilate_hole
from unseen.engine.synthetic import iou, make_clip, psnr


@pytest.mark.parametrize("seed,size,index", [
    (0, (320, 192), 0),
    (0, (320, 192), 30),
    (3, (480, 288), 10),
    (7, (256, 160), 45),
])
def test_one_click_segments_the_object(seed, size, index):
    clip = make_clip(60, *size, seed=seed)
    mask = ClassicalSegmenter().segment(Frame(index, clip.frames[index]), [Click(*clip.click(index))])
    assert mask.dtype == bool and mask.shape == clip.masks[index].shape
    assert iou(mask, clip.masks[index]) >= 0.9


def test_negative_click_excludes_a_region(clip):
    seg = ClassicalSegmenter()
    frame = Frame(0, clip.frames[0])
    ys, xs = np.nonzero(clip.masks[0])
    head = (int(xs.max()) - 4, int(ys[xs.argmax()]))  # the right-most part of the object
    first = seg.segment(frame, [Click(*clip.click(0))])
    assert first[head[1], head[0]]
    corrected = seg.segment(frame, [Click(*clip.click(0)), Click(*head, positive=False)])
    assert not corrected[head[1], head[0]]
    assert corrected[clip.click(0)[1], clip.click(0)[0]]
    assert corrected.sum() < first.sum()


def test_one_click_is_deterministic(clip):
    frame = Frame(5, clip.frames[5])
    first = ClassicalSegmenter().segment(frame, [Click(*clip.click(5))])
    assert np.array_equal(first, ClassicalSegmenter().segment(frame, [Click(*clip.click(5))]))


def test_flat_frame_selects_nothing():
    with pytest.raises(SelectionError, match="selected nothing"):
        ClassicalSegmenter().segment(Frame(3, np.full((64, 64, 3), 128, np.uint8)), [Click(32, 32)])


def test_negative_only_is_refused():
    with pytest.raises(SelectionError, match="positive click"):
        ClassicalSegmenter().segment(Frame(0, np.zeros((8, 8, 3), np.uint8)), [Click(1, 1, positive=False)])


def test_propagation_iou_every_frame_of_a_panning_sequence(clip):
    prop = FlowPropagator()
    prop.seed(Frame(0, clip.frames[0]), {1: clip.masks[0]})
    for i in range(1, 60):
        masks = prop.step(Frame(i, clip.frames[i]))
        assert iou(masks[1], clip.masks[i]) >= 0.85, f"frame {i}"
        # constant memory: the previous frame, a background model (still camera), the object's look
        assert prop.memory_frames() <= 3


def test_propagation_of_two_objects_and_reseed(clip):
    h, w = clip.masks[0].shape
    second = np.zeros((h, w), bool)
    second[10:40, 250:300] = True  # a static patch of background, moving with the camera
    prop = FlowPropagator(refine=False)  # pure flow: the background patch has no outline to refine to
    prop.seed(Frame(0, clip.frames[0]), {1: clip.masks[0], 2: second})
    masks = {}
    for i in range(1, 20):
        masks = prop.step(Frame(i, clip.frames[i]))
    assert set(masks) == {1, 2}
    assert not np.logical_and(masks[1], masks[2]).any()
    # the patch moved with the camera pan (scene content moves 1.7 px left, 0.4 px up per frame)
    expected = np.zeros((h, w), bool)
    expected[round(10 - 0.4 * 19):round(40 - 0.4 * 19), round(250 - 1.7 * 19):round(300 - 1.7 * 19)] = True
    assert iou(masks[2], expected) >= 0.7
    prop.seed(Frame(19, clip.frames[19]), {1: clip.masks[19]})  # object 2 dropped
    assert set(prop.step(Frame(20, clip.frames[20]))) == {1}
    prop.reset()
    assert prop.step(Frame(21, clip.frames[21])) == {}


def _visible(clip, t, radius, pan=(1.7, 0.4), dilation=4):
    """Pixels of t's dilated hole whose background shows in some frame of the window (known pan)."""
    h, w = clip.masks[0].shape
    region = dilate_hole(clip.masks[t], dilation)
    seen = np.zeros_like(region)
    for j in range(max(0, t - radius), min(len(clip.frames), t + radius + 1)):
        if j == t:
            continue
        shift = np.float32([[1, 0, -pan[0] * (j - t)], [0, 1, -pan[1] * (j - t)]])
        covered = cv2.warpAffine(dilate_hole(clip.masks[j], dilation).astype(np.uint8), shift, (w, h),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=1)
        seen |= covered == 0
    return region & seen


def _run_inpainter(clip, inpainter, ground_truth_masks=True):
    entries = {i: WindowEntry(Frame(i, f), m) for i, (f, m) in enumerate(zip(clip.frames, clip.masks))}
    completed = {}
    for t in range(len(clip.frames)):
        window = {i: entries[i] for i in range(t - inpainter.past, t + inpainter.future + 1) if i in entries}
        completed[t] = inpainter.inpaint(InpaintRequest(t, window, (), {t - 1: completed[t - 1]} if t else {}))
    return completed


def test_inpainting_psnr_where_the_background_was_seen(clip):
    inp = FlowGuidedInpainter(future=5, past=5)
    out = _run_inpainter(clip, inp)
    scores = [psnr(out[t], clip.backgrounds[t], _visible(clip, t, 5)) for t in range(60)]
    assert min(scores) >= 30.0, [round(s, 1) for s in scores]


def test_inpainting_changes_only_the_dilated_hole(clip):
    inp = FlowGuidedInpainter(future=3, past=3)
    out = _run_inpainter(make_clip(12, 320, 192, seed=2), inp)
    c2 = make_clip(12, 320, 192, seed=2)
    for t, img in out.items():
        outside = ~dilate_hole(c2.masks[t], inp.dilation)
        assert np.array_equal(img[outside], c2.frames[t][outside])
        assert not np.array_equal(img, c2.frames[t])


def test_empty_hole_returns_the_frame_unchanged(clip):
    inp = FlowGuidedInpainter()
    entry = WindowEntry(Frame(0, clip.frames[0]), np.zeros_like(clip.masks[0]))
    assert inp.inpaint(InpaintRequest(0, {0: entry})) is clip.frames[0]


def test_cheap_fill_uses_the_previous_output_or_telea(clip):
    inp = FlowGuidedInpainter()
    entry = WindowEntry(Frame(5, clip.frames[5]), clip.masks[5])
    telea = inp.cheap(InpaintRequest(5, {5: entry}))
    hole = dilate_hole(clip.masks[5], inp.dilation)
    assert np.array_equal(telea[~hole], clip.frames[5][~hole])
    prev = np.full_like(clip.frames[4], 7)
    copied = inp.cheap(InpaintRequest(5, {5: entry}, (), {4: prev}))
    assert (copied[hole] == 7).all()


@pytest.mark.parametrize("pan", [(4.0, -2.0), (-3.0, 0.0), (0.0, 0.0)])
def test_the_cheap_fill_follows_the_camera_with_the_trackers_flow(pan):
    """A degraded step's fill takes the previous output from where the background around the hole was: on
    a panning camera moved by that motion (the flow the tracker computed for the pair); on a still camera,
    or when no flow was computed (a stale step computes none), the plain copy."""
    clip = make_clip(8, 320, 192, pan=pan, seed=3)
    t = 6
    hole = dilate_hole(clip.masks[t], 4)
    entries = {i: WindowEntry(Frame(i, clip.frames[i]), clip.masks[i]) for i in (t - 1, t)}
    request = InpaintRequest(t, entries, (), {t - 1: clip.backgrounds[t - 1]})
    copied = FlowGuidedInpainter(flows=FlowCache()).cheap(request)
    assert np.array_equal(copied[hole], clip.backgrounds[t - 1][hole])
    flows = FlowCache()
    flows.flow(clip.frames[t], clip.frames[t - 1])  # as the tracker's step does
    followed = FlowGuidedInpainter(flows=flows).cheap(request)
    assert np.array_equal(followed[~hole], clip.frames[t][~hole])
    truth = clip.backgrounds[t]
    if pan == (0.0, 0.0):
        assert np.array_equal(followed, copied)
    else:
        assert psnr(followed, truth, hole) > psnr(copied, truth, hole) + 6, \
            (psnr(followed, truth, hole), psnr(copied, truth, hole))
        assert psnr(followed, truth, hole) > 30


def test_fill_invalid_interpolates_smoothly():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    field = np.dstack([0.1 * xx, 0.05 * yy + 2])
    valid = np.ones((64, 64), bool)
    valid[20:40, 25:45] = False
    filled = fill_invalid(np.where(valid[..., None], field, 1000).astype(np.float32), valid)
    assert np.abs(filled - field).max() < 1.0  # a linear field is recovered closely



def _push_pull_textbook(field: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Push-pull as usually written (each level's normalised average blended with the coarser estimate by
    the level's weight), for fill_invalid to be checked against."""
    levels, f, w = [], field * valid[..., None], valid.astype(np.float32)
    while True:
        levels.append((f, w))
        if (w > 0).all() or min(w.shape) <= 2:
            break
        size = ((w.shape[1] + 1) // 2, (w.shape[0] + 1) // 2)
        f, w = cv2.resize(f, size, interpolation=cv2.INTER_AREA), cv2.resize(w, size, interpolation=cv2.INTER_AREA)
        f = f[..., None] if f.ndim == 2 else f
    est = levels[-1][0] / np.maximum(levels[-1][1], 1e-6)[..., None]
    for f, w in reversed(levels[:-1]):
        up = cv2.resize(est, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        up = up[..., None] if up.ndim == 2 else up
        alpha = np.clip(w, 0, 1)[..., None]
        est = np.where(alpha > 0, f / np.maximum(w, 1e-6)[..., None], 0) * alpha + up * (1 - alpha)
    return np.where(valid[..., None], field, est)


@pytest.mark.parametrize("shape,channels,holes", [
    ((270, 480), 2, [(100, 200, 150, 230)]),
    ((271, 481), 2, [(0, 271, 0, 100)]),  # odd sizes; a hole on the border
    ((33, 47), 1, [(5, 9, 5, 40), (20, 30, 2, 6)]),
    ((64, 64), 3, [(0, 64, 0, 63)]),  # one valid column
])
def test_fill_invalid_equals_the_textbook_push_pull(shape, channels, holes):
    rng = np.random.default_rng(7)
    field = (5 * rng.normal(size=(*shape, channels))).astype(np.float32)
    valid = rng.random(shape) > 0.05
    for y0, y1, x0, x1 in holes:
        valid[y0:y1, x0:x1] = False
    got, expected = fill_invalid(field, valid), _push_pull_textbook(field, valid)
    assert got.shape == field.shape and np.array_equal(got[valid], field[valid])
    assert np.abs(got - expected).max() <= 1e-5 * (1 + np.abs(expected).max())

def test_spatial_fill_only_touches_the_hole():
    img = np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)
    hole = np.zeros((50, 60), bool)
    hole[20:30, 25:35] = True
    out = spatial_fill(img, hole)
    assert np.array_equal(out[~hole], img[~hole])
    assert not np.array_equal(out[hole], img[hole])


def _stripes(h=120, w=160, seed=0):
    """Vertical stripes of random widths and colours, with a vertical brightness ramp: the content
    above and below a hole continues through it; Telea's smooth fill cannot make stripes."""
    rng = np.random.default_rng(seed)
    cols = np.repeat(rng.integers(30, 225, (w // 4 + 1, 3)), 4, axis=0)[:w].astype(np.float32)
    ramp = np.linspace(0.85, 1.15, h, dtype=np.float32)[:, None, None]
    return np.clip(cols[None] * ramp, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box", [(40, 70, 60, 90), (0, 25, 10, 40), (95, 120, 130, 160)])  # inside, corners
def test_texture_fill_continues_texture_and_touches_only_the_hole(box):
    img = _stripes()
    y0, y1, x0, x1 = box
    hole = np.zeros(img.shape[:2], bool)
    hole[y0:y1, x0:x1] = True
    out = texture_fill(img, hole)
    assert np.array_equal(out[~hole], img[~hole])
    telea = spatial_fill(img, hole)
    ours, smooth = psnr(out, img, hole), psnr(telea, img, hole)
    assert ours >= 30 and ours > smooth + 8, (ours, smooth)
    # texture, not a smear: the fill varies across the stripes as much as the truth does
    assert out[hole].astype(float).std() > 0.8 * img[hole].astype(float).std()


def test_texture_fill_without_a_clean_source_falls_back_to_telea():
    img = _stripes(60, 80)
    hole = np.ones(img.shape[:2], bool)
    hole[:3] = False  # almost the whole frame: no displaced copy fits
    out = texture_fill(img, hole)
    assert out.shape == img.shape and np.array_equal(out[~hole], img[~hole])
    tiny = np.zeros(img.shape[:2], bool)
    tiny[30, 40] = True
    assert np.array_equal(texture_fill(img, tiny)[~tiny], img[~tiny])


def test_large_holes_are_filled():
    """A hole of more than 32767 pixels (cv2.remap's map limit per side) is sampled in rows."""
    clip = make_clip(8, 640, 384, seed=5, object_size=300)
    assert clip.masks[3].sum() > 33000
    inp = FlowGuidedInpainter(future=2, past=2)
    entries = {i: WindowEntry(Frame(i, f), m) for i, (f, m) in enumerate(zip(clip.frames, clip.masks))}
    out = inp.inpaint(InpaintRequest(3, entries))
    assert out.shape == clip.frames[3].shape
    hole = dilate_hole(clip.masks[3], inp.dilation)
    assert psnr(out, clip.backgrounds[3], hole) > psnr(clip.frames[3], clip.backgrounds[3], hole)



@pytest.fixture(scope="module")
def still_clip():
    return make_clip(40, pan=(0.0, 0.0), seed=5)


def _block_beside(mask, size=24):
    """A block of background to the right of the object's box (never covered by the object later on)."""
    ys, xs = np.nonzero(mask)
    block = np.zeros_like(mask)
    block[ys.min():ys.min() + size, xs.max() + 4:xs.max() + 4 + size] = True
    return block & ~mask


@pytest.mark.parametrize("case", ["leak", "lost part"])
def test_still_camera_background_model_mends_a_wrong_mask(still_clip, case):
    """Still camera: pixels known to be background leave an object; object pixels beside it join."""
    frames, masks = still_clip.frames, still_clip.masks
    prop = FlowPropagator()
    prop.seed(Frame(0, frames[0]), {1: masks[0]})
    for i in range(1, 12):  # the background model learns the scenery around the moving object
        prop.step(Frame(i, frames[i]))
    assert prop.memory_frames() == 3  # the previous frame, the background model and the object's look
    truth = masks[12]
    if case == "leak":  # the mask took in background the camera saw free before
        wrong = truth | _block_beside(truth)
    else:  # the mask lost the object's lower part
        ys, _ = np.nonzero(truth)
        wrong = truth.copy()
        wrong[ys.min() + int(0.7 * np.ptp(ys)):] = False
    assert iou(wrong, truth) < 0.8
    prop.seed(Frame(12, frames[12]), {1: wrong})  # a re-seed keeps the background model
    scores = [iou(prop.step(Frame(i, frames[i]))[1], masks[i]) for i in range(13, 20)]
    assert scores[-1] >= 0.85 and max(scores[-3:]) >= 0.85, np.round(scores, 2)


def test_still_camera_object_smaller_than_a_flow_pixel_is_tracked_not_an_error():
    """A 1-pixel object on a frame larger than the flow size vanishes at flow size: no crash
    (seen on a GPU run: the gate failed on every frame of a lost object)."""
    clip = make_clip(6, 960, 540, pan=(0.0, 0.0), seed=3)
    prop = FlowPropagator()
    tiny = np.zeros(clip.frames[0].shape[:2], bool)
    tiny[301, 501] = True
    prop.seed(Frame(0, clip.frames[0]), {1: tiny})
    for i in range(1, 6):
        out = prop.step(Frame(i, clip.frames[i]))
        assert set(out) == {1} and out[1].shape == tiny.shape and out[1].sum() <= 4


def test_still_camera_gate_changes_only_what_the_background_model_knows():
    """Thin parts (legs, straps) where no background is known yet are kept as the flow carried
    them (an opening of the whole mask used to cut them off at frame 2 of schoolgirls); a part
    over known, matching background is dropped."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (90, 120, 3)).astype(np.uint8)
    body = np.zeros((90, 120), bool)
    body[20:50, 40:70] = True
    legs = np.zeros_like(body)
    legs[50:75, 45:47] = legs[50:75, 62:64] = True  # two legs, 2 px wide
    prop = FlowPropagator()
    prop._bg = small.astype(np.float32)
    prop._seen = np.zeros(body.shape, np.uint16)  # nothing known yet
    mask = body | legs
    assert np.array_equal(prop._gate(small, mask), mask)
    # a slab over the background the model knows well is dropped; the unknown legs stay
    slab = np.zeros_like(body)
    slab[20:50, 70:90] = True
    prop._seen[20:50, 70:90] = 100
    gated = prop._gate(small, mask | slab)
    assert not gated[slab].any() and gated[legs].all() and gated[body].all()


def _texture(h, w, seed):
    blocks = np.random.default_rng(seed).integers(0, 255, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    return cv2.GaussianBlur(cv2.resize(blocks, (w, h), interpolation=cv2.INTER_CUBIC), (3, 3), 0)[:h, :w]


@pytest.mark.parametrize("look_alike,tracked_speed", [
    (True, -1),  # a look-alike (same uniform) walks behind the tracked one, which walks the other way
    (True, 0),  # ... behind a tracked one standing still
    pytest.param(False, -1, marks=pytest.mark.xfail(strict=True, reason=(
        "known limit: here DIS smooths the tracked object's flow over the thin strip of the other one "
        "coming out, so the strip is confirmed and moves with the mask: it is taken (up to 2,300 px)"))),
])
def test_an_object_passing_behind_is_not_taken(look_alike, tracked_speed):
    """Another object (the same uniform, or not) walks behind the tracked one and comes out on the
    other side: where it comes out, the backward flow points into the tracked mask, but the forward
    flow does not confirm it and it does not move with the tracked object, so the mask stays its
    own (before: the look-alike was taken, 2,579 px of it, mask IoU 0.36 by frame 44, when the tracked one walks)."""
    h, w = 160, 256
    background = _texture(h, w, 0)
    tracked = _texture(70, 40, 1)
    other = cv2.resize(tracked, (50, 60)) if look_alike else _texture(60, 50, 2)

    def scene(t):
        img = background.copy()
        bx = 40 + 3 * t  # the other object, behind, walking right
        x0, x1 = max(0, bx), min(w, bx + 50)
        img[60:120, x0:x1] = other[:, x0 - bx:x1 - bx]
        ax = 150 + tracked_speed * t  # the tracked one, in front
        img[50:120, ax:ax + 40] = tracked
        mine = np.zeros((h, w), bool)
        mine[50:120, ax:ax + 40] = True
        theirs = np.zeros((h, w), bool)
        theirs[60:120, x0:x1] = True
        return img, mine, theirs & ~mine

    prop = FlowPropagator()
    img, mine, _ = scene(0)
    prop.seed(Frame(0, img), {1: mine})
    scores, taken = [], []
    for t in range(1, 60):  # it has come out by frame 52
        img, mine, theirs = scene(t)
        mask = prop.step(Frame(t, img))[1]
        scores.append(iou(mask, mine))
        taken.append(int((mask & theirs).sum()))
    # while it comes out, a strip may be taken for a frame or two (measured: 300 px); then none is
    assert min(scores) >= 0.85 and max(taken) <= 400, (np.round(scores, 2), taken)
    assert min(scores[-10:]) >= 0.95 and max(taken[-10:]) <= 20, (np.round(scores, 2), taken)


@pytest.mark.parametrize("change,leaves_after", [
    ("part shows something else", 6),  # where the mask stayed behind, the object's look is gone
    ("light changes", None),  # the whole object 20 levels brighter: the look follows, nothing leaves
    ("nothing", None),
])
def test_masked_pixels_that_stop_looking_like_the_object_leave_it(change, leaves_after):
    """Still camera: each object's look is carried with its mask; a masked part that has not looked like
    it for LOOK_PERSIST frames in a row leaves (schoolgirls: the mask left where a girl stood)."""
    from unseen.engine.backends.classical_propagate import LOOK_PERSIST
    assert leaves_after in (None, LOOK_PERSIST)
    rng = np.random.default_rng(1)
    frame = rng.integers(60, 200, (120, 160, 3)).astype(np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[30:90, 50:110] = True
    part = np.zeros_like(mask)
    part[30:90, 98:110] = True  # a fifth of the mask
    prop = FlowPropagator()
    prop.seed(Frame(0, frame), {1: mask})
    later = frame.copy()
    if change == "part shows something else":
        later[part] = (20, 160, 40)
    elif change == "light changes":
        later = np.clip(frame.astype(int) + 20, 0, 255).astype(np.uint8)
    still = np.zeros((120, 160, 2), np.float32)
    for n in range(1, 12):
        masks = {1: mask.copy()}
        prop._check_looks(later, still, masks)
        left = mask & ~masks[1]
        if leaves_after is not None and n >= leaves_after:
            assert left[part].mean() > 0.8 and not left[~part].any(), n
            break
        assert not left.any(), n


def test_previous_fill_carries_no_object_from_a_feathered_edge():
    """A still object (nothing behind it is ever seen, so its hole is made up and carried from the
    previous output) whose mask misses its right edge by the dilation on every other frame: there the
    fill reaches the object's edge and the feathering blends it with the original.  The carry takes
    the previous fill before feathering, only inside its hole, so frames whose mask covers the whole
    object show none of it (the old carry of the finished output brought 42-82 px of it back)."""
    rng = np.random.default_rng(3)
    h, w, n = 96, 128, 12
    grass = np.stack([rng.integers(40, 90, (h, w)), rng.integers(90, 160, (h, w)),
                      rng.integers(30, 80, (h, w))], -1).astype(np.uint8)
    obj = np.zeros((h, w), bool)
    obj[30:70, 50:80] = True
    frame = grass.copy()
    frame[obj] = (230, 40, 200)
    inp = FlowGuidedInpainter(future=0, past=2)
    entries, completed = {}, {}
    for t in range(n):
        hole = obj.copy()
        if t % 2:
            hole[:, 80 - inp.dilation:] = False
        entries[t] = WindowEntry(Frame(t, frame), hole)
        window = {i: entries[i] for i in range(t - 2, t + 1) if i in entries}
        completed[t] = inp.inpaint(InpaintRequest(t, window, (), {t - 1: completed[t - 1]} if t else {}))
    for t in range(2, n, 2):
        out = completed[t][dilate_hole(entries[t].hole, inp.dilation)].astype(int)
        magenta = (out[:, 0] > 150) & (out[:, 2] > 120) & (out[:, 1] < 110)
        assert magenta.sum() == 0, (t, int(magenta.sum()))


def test_a_made_up_fill_carried_through_a_pan_keeps_its_detail():
    """A still object over a textured background that pans by a fraction of a pixel per frame: nothing
    behind the object is ever seen, so its fill is made up once and carried.  Carried without resampling
    (nearest pixel, its sub-pixel offset kept), it is as detailed after 60 frames as when it was made;
    sampled bilinearly from each output, as before, 25% of its gradient energy was left."""
    rng = np.random.default_rng(5)
    h, w, n = 200, 320, 60
    texture = cv2.resize(rng.integers(0, 255, (h // 3 + 20, w // 3 + 40, 3)).astype(np.uint8), None, fx=3, fy=3,
                         interpolation=cv2.INTER_CUBIC)
    obj = np.zeros((h, w), bool)
    obj[70:130, 140:180] = True
    inner = cv2.erode(obj.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0

    def energy(img):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))[inner].mean())

    entries = {}
    for t in range(n):
        pan = np.float32([[1, 0, -0.37 * t], [0, 1, -0.11 * t]])
        img = cv2.warpAffine(texture, pan, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        img[obj] = (200, 30, 30)
        entries[t] = WindowEntry(Frame(t, img), obj)
    inp = FlowGuidedInpainter(future=2, past=2)
    completed, energies = {}, []
    for t in range(n - 2):
        window = {i: entries[i] for i in range(t - 2, t + 3) if i in entries}
        completed[t] = inp.inpaint(InpaintRequest(t, window, (), {t - 1: completed[t - 1]} if t else {}))
        energies.append(energy(completed[t]))
    background = energy(np.ascontiguousarray(texture[:h, :w]))
    assert energies[0] > 0.8 * background  # made up as texture, not a smear
    assert min(energies) > 0.85 * energies[0], [round(e) for e in energies[::6]]
    assert inp.filled["previous"] > inp.filled["window"]  # it was carried, not seen


def test_carry_back_and_forth_neither_blurs_nor_drifts():
    """300 carries of a noise texture by (0.3, 0.1) px, back and forth every 10: where it returns it
    matches the original (no drift), as detailed (no blur), with offsets under a pixel."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (80, 80, 3)).astype(np.uint8), (3, 3), 0)
    ys, xs = (a.ravel().astype(np.float32) for a in np.mgrid[0:80, 0:80])
    inside = np.ones((80, 80), bool)
    cur, offset = img.copy(), np.zeros((80, 80, 2), np.float32)
    for k in range(1, 301):
        dx, dy = (0.3, 0.1) if (k // 10) % 2 == 0 else (-0.3, -0.1)
        ok, colours, moved = _carry(cur, offset, inside, np.clip(xs + dx, 0, 79), np.clip(ys + dy, 0, 79))
        cur, offset = cur.copy(), np.zeros_like(offset)
        cur.reshape(-1, 3)[ok] = np.clip(colours + 0.5, 0, 255).astype(np.uint8)
        offset.reshape(-1, 2)[ok] = moved
    assert np.abs(offset).max() <= 1.0
    core = (slice(10, -10), slice(10, -10))
    assert psnr(cur[core], img[core]) > 35
    assert cur[core].astype(float).std() == pytest.approx(img[core].astype(float).std(), rel=0.02)


def test_the_reduced_step_follows_the_object_cheaply_and_a_full_step_goes_on_from_it(clip):
    """step_reduced (a live stream that is behind) warps the masks along the flow without refining them: the
    object is still followed, and full steps after reduced ones track as well as before."""
    from unseen.engine.backends.registry import BackendOptions, create
    from unseen.engine.stages import Frame
    from unseen.engine.synthetic import iou

    prop = create("propagator", "classical", BackendOptions())
    prop.seed(Frame(0, clip.frames[0]), {1: clip.masks[0]})
    for i in range(1, 30):
        kind = "reduced" if i % 3 else "full"
        step = prop.step_reduced if kind == "reduced" else prop.step
        masks = step(Frame(i, clip.frames[i]))
        assert iou(masks[1], clip.masks[i]) > 0.8, (i, kind)
    assert prop.memory_frames() <= 3  # no state added by the reduced steps


class _GrabCut:
    """cv2.grabCut stand-in that counts its calls and either keeps the unsure band as it is (the refinement
    is taken: the same outline) or clears it (rejected: the object would lose the band)."""

    def __init__(self) -> None:
        self.calls = 0
        self.agree = False

    def __call__(self, roi, trimap, rect, bgd, fgd, iterations, mode):
        self.calls += 1
        if not self.agree:
            trimap[trimap == cv2.GC_PR_FGD] = cv2.GC_PR_BGD


def _backoff_schedule(frames: int, taken_from: int | None = None) -> list[bool]:
    """The frames (1..frames) on which the refinement is due by the stated rule: every frame until
    REFINE_BACKOFF tries in a row were rejected, then after REFINE_EVERY frames, doubling after each try
    rejected there up to REFINE_EVERY_MAX; every frame again once a try (from frame ``taken_from`` on) is taken."""
    from unseen.engine.backends import classical_propagate as cp

    due, rejected, gap, since = [], 0, cp.REFINE_EVERY, 0
    for i in range(1, frames + 1):
        since += 1
        d = rejected < cp.REFINE_BACKOFF or since >= gap
        due.append(d)
        if not d:
            continue
        since = 0
        if taken_from is not None and i >= taken_from:
            rejected, gap = 0, cp.REFINE_EVERY
        else:
            rejected += 1
            if rejected > cp.REFINE_BACKOFF:
                gap = min(2 * gap, cp.REFINE_EVERY_MAX)
    return due


def test_the_backoff_schedule_doubles_up_to_its_cap_and_restarts_when_a_try_is_taken():
    from unseen.engine.backends import classical_propagate as cp

    due = _backoff_schedule(400)
    tried = [i + 1 for i, d in enumerate(due) if d]
    gaps = [b - a for a, b in zip(tried, tried[1:])]
    n = cp.REFINE_BACKOFF
    assert tried[:n] == list(range(1, n + 1))
    assert gaps[n - 1:n + 3] == [cp.REFINE_EVERY, 2 * cp.REFINE_EVERY, 4 * cp.REFINE_EVERY, 8 * cp.REFINE_EVERY]
    assert max(gaps) == cp.REFINE_EVERY_MAX and gaps[-1] == cp.REFINE_EVERY_MAX
    again = _backoff_schedule(200, taken_from=100)
    first = next(i for i in range(99, 200) if again[i])  # the first try from frame 100 on is taken ...
    assert all(again[first:])  # ... and every frame is tried again


@pytest.mark.parametrize("taken_from", [None, 60])
def test_refine_backoff_follows_the_schedule(taken_from):
    from unseen.engine.backends.classical_propagate import RefineBackoff

    backoff, due = RefineBackoff(), []
    for i in range(1, 201):
        due.append(backoff.due(1))
        if due[-1]:
            backoff.record(1, taken=taken_from is not None and i >= taken_from)
    assert due == _backoff_schedule(200, taken_from)


def test_a_refinement_rejected_again_and_again_is_tried_less_often(clip, monkeypatch):
    from unseen.engine.backends import classical_propagate as cp

    grabcut = _GrabCut()
    monkeypatch.setattr(cp.cv2, "grabCut", grabcut)
    prop = FlowPropagator()
    prop.seed(Frame(0, clip.frames[0]), {1: clip.masks[0]})
    tried = []
    for i in range(1, len(clip.frames)):
        before = grabcut.calls
        prop.step(Frame(i, clip.frames[i]))
        tried.append(grabcut.calls - before == 1)
    assert tried == _backoff_schedule(len(clip.frames) - 1)
    assert sum(tried) < cp.REFINE_BACKOFF + len(tried) // cp.REFINE_EVERY  # fewer than at a fixed interval
    prop.seed(Frame(30, clip.frames[30]), {1: clip.masks[30]})  # a new reference starts the count again
    before = grabcut.calls
    for i in range(31, 31 + cp.REFINE_BACKOFF):
        prop.step(Frame(i, clip.frames[i]))
    assert grabcut.calls - before == cp.REFINE_BACKOFF


def test_refine_backoff_counts_each_object_on_its_own():
    from unseen.engine.backends.classical_propagate import REFINE_BACKOFF, REFINE_EVERY, RefineBackoff

    backoff = RefineBackoff()
    due = {1: [], 2: []}
    for _ in range(REFINE_BACKOFF + 3 * REFINE_EVERY):
        for oid in (1, 2):
            due[oid].append(backoff.due(oid))
            if due[oid][-1]:
                backoff.record(oid, taken=oid == 2)  # object 1's refinements are all rejected, 2's taken
    assert all(due[2])
    assert due[1] == _backoff_schedule(REFINE_BACKOFF + 3 * REFINE_EVERY)
    backoff.clear()
    assert backoff.due(1)
