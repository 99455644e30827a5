"""AOT/DeAOT: official key layout, forward passes, bounded memory, local attention, backend."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from unseen.engine.backends.registry import BackendError, BackendOptions, create
from unseen.engine.models import aot_layers
from unseen.engine.models.aot import AOT2021_MISSING_KEYS, VARIANTS, aot_config, aot_input_size, build_aot
from unseen.engine.models.aot_memory import AOTInference
from unseen.engine.stages import Frame



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs: one thread is fastest and does not fight other jobs for the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


KEYS_DIR = Path(__file__).parent / "reference_keys"
AOT_ONLY = [v for v in VARIANTS if not VARIANTS[v].deaot]


def read_keys(name: str) -> dict[str, tuple]:
    """``key -> (shape, dtype, P|B)`` from a reference list (the 2021 lists give the shape only)."""
    entries = {}
    for line in (KEYS_DIR / f"{name}.txt").read_text().splitlines():
        key, shape, *rest = line.split("\t")
        entries[key] = (tuple(ast.literal_eval(shape)), *rest)
    return entries


def model_keys(variant: str) -> dict[str, tuple[tuple[int, ...], str, str]]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_aot(variant)
    params = {name for name, _ in model.named_parameters()}
    return {key: (tuple(t.shape), str(t.dtype).removeprefix("torch."), "P" if key in params else "B")
            for key, t in model.state_dict().items()}


# ----------------------------------------------------------------------------- key layout


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_matches_official_keys(variant):
    ours, ref = model_keys(variant), read_keys(variant)
    assert sorted(set(ref) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(ref)) == [], "unexpected keys"
    assert {k: v for k, v in ours.items() if v != ref[k]} == {}, "shape, dtype or parameter/buffer mismatch"


@pytest.mark.parametrize("variant", AOT_ONLY)
def test_2021_aot_keys_are_current_minus_mask_token(variant):
    current, old = read_keys(variant), read_keys(f"aot2021_{variant}")
    assert set(current) - set(old) == set(AOT2021_MISSING_KEYS)
    assert set(old) <= set(current)
    assert all(old[k][0] == current[k][0] for k in old)


def test_strict_load_roundtrip_and_frozen_bn():
    model = build_aot("deaott")
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())
    build_aot("deaott").load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("h, w, variant, expected", [
    (480, 854, "r50_deaotl", (481, 849)), (480, 854, "swinb_deaotl", (480, 848)),
    (720, 1280, "deaott", (577, 1041)), (720, 1280, "swinb_aotl", (592, 1040)),
    (1080, 1920, "aotl", (577, 1041)), (1080, 1920, "swinb_deaotl", (592, 1040)),
    (240, 432, "deaott", (241, 433)), (65, 65, "aott", (65, 65)),
])
def test_input_size(h, w, variant, expected):
    assert aot_input_size(h, w, variant) == expected


def test_configs():
    assert aot_config("r50_deaotl").long_term_gap == 5 and aot_config("deaott").long_term_gap == 9999
    assert aot_config("swinb_aotl").id_kernel == 16 and not aot_config("swinb_aotl").align_corners
    assert aot_config("aotb").num_layers == 3 and aot_config("aott").heads == 8 and aot_config("deaotl").heads == 1


# ----------------------------------------------------------------------------- forward passes


def _label(size: int, num_objects: int) -> torch.Tensor:
    label = torch.zeros(1, 1, size, size)
    for i in range(num_objects):
        label[..., 8 + 20 * i: 24 + 20 * i, 10:40] = i + 1
    return label


@pytest.mark.parametrize("variant, size, frames", [
    ("aott", 129, 3), ("deaott", 129, 3), ("r50_deaotl", 129, 3), ("swinb_deaotl", 128, 1),
])
def test_forward_reference_then_propagate(variant, size, frames):
    torch.manual_seed(0)
    engine = AOTInference(build_aot(variant), long_term_gap=1)
    image = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        engine.add_reference_frame(image, _label(size, 2), num_objects=2)
        for i in range(frames):
            logits = engine.propagate(image + 0.1 * (i + 1), output_size=(50, 70))
            assert logits.shape == (1, 11, 50, 70)
            assert torch.isfinite(logits[:, :3]).all()
            assert (logits[:, 3:] < -1e9).all()  # unused identities are masked out
            engine.update_memory(_label(size, 2))
    assert len(engine.entries) == 1 + frames


# ----------------------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("variant", ["aott", "deaott"])
def test_memory_stays_at_cap_over_500_frames(variant):
    torch.manual_seed(0)
    cap, refs = 4, 2
    engine = AOTInference(build_aot(variant), long_term_gap=3, memory_cap=cap, max_references=refs)
    image, label = torch.randn(1, 3, 65, 65), _label(65, 1)
    shapes = None
    with torch.inference_mode():
        engine.add_reference_frame(image, label, 1, tag=0)
        for step in range(1, 501):
            if step % 97 == 0:  # a re-seed now and then: references are capped too
                engine.add_reference_frame(image, label, 1, tag=step)
            else:
                engine.step(image, (65, 65))
            assert len(engine.entries) <= cap
            assert engine.memory_frames <= cap + 1  # long-term entries + the short-term frame
            assert sum(e.reference for e in engine.entries) <= refs
            if len(engine.entries) == cap:
                current = [tuple(t.shape) for layer in engine.long_term_memory() for t in layer]
                assert shapes is None or current == shapes
                shapes = current
    assert shapes is not None
    tags = [e.tag for e in engine.entries if e.reference]
    assert tags == [485, 388]  # the newest references, newest first


def test_reference_with_same_tag_is_replaced():
    engine = AOTInference(build_aot("deaott"), memory_cap=4)
    image, label = torch.randn(1, 3, 33, 33), _label(33, 1)
    with torch.inference_mode():
        engine.add_reference_frame(image, label, 1, tag=5)
        engine.add_reference_frame(image, label, 1, tag=5)
    assert len(engine.entries) == 1 and engine.memory_frames == 2


# ----------------------------------------------------------------------------- local attention


def naive_correlation(q: torch.Tensor, k: torch.Tensor, m: int) -> torch.Tensor:
    n, c, h, w = q.shape
    out = torch.zeros(n, (2 * m + 1) ** 2, h * w, dtype=q.dtype)
    for y in range(h):
        for x in range(w):
            for i in range(2 * m + 1):
                for j in range(2 * m + 1):
                    ky, kx = y + i - m, x + j - m
                    if 0 <= ky < h and 0 <= kx < w:
                        out[:, i * (2 * m + 1) + j, y * w + x] = (q[:, :, y, x] * k[:, :, ky, kx]).sum(1)
    return out


def naive_local_attention(module: aot_layers.MultiheadLocalAttention, q, k, v) -> torch.Tensor:
    """AOT short-term attention by the formula, as a dense masked softmax."""
    b, c, h, w = v.shape
    heads, m = module.num_heads, module.max_dis
    d = c // heads
    bias = module.relative_emb_k(q).view(b, heads, 2 * m + 1, 2 * m + 1, h, w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]  # [query, key]
    inside = (dy.abs() <= m) & (dx.abs() <= m)
    qs, ks, vs = (t.reshape(b, heads, d, h * w) for t in (q, k, v))
    logits = torch.einsum("bhdq,bhdk->bhqk", qs, ks) / d ** 0.5
    rel = bias[:, :, (dy + m).clamp(0, 2 * m), (dx + m).clamp(0, 2 * m), ys[:, None], xs[:, None]]
    logits = (logits + rel).masked_fill(~inside, float("-inf"))
    attn = logits.softmax(-1)
    value_bias = module.relative_emb_v[:, :, ((dy + m).clamp(0, 2 * m) * (2 * m + 1) + (dx + m).clamp(0, 2 * m))]
    out = torch.einsum("bhqk,bhdk->bhqd", attn, vs) + torch.einsum("bhqk,hdqk->bhqd", attn, value_bias)
    return module.projection(out.permute(2, 0, 1, 3).reshape(h * w, b, c))


def test_local_correlation_matches_naive_formula():
    torch.manual_seed(0)
    q, k = torch.randn(2, 8, 9, 11), torch.randn(2, 8, 9, 11)
    ours = aot_layers.local_correlation(q, k, 3, use_sampler=False)
    torch.testing.assert_close(ours, naive_correlation(q, k, 3), atol=1e-5, rtol=1e-5)


def test_local_attention_module_matches_naive_formula():
    torch.manual_seed(0)
    module = aot_layers.MultiheadLocalAttention(64, 4, max_dis=3)
    torch.nn.init.normal_(module.relative_emb_v)
    q, k, v = (torch.randn(2, 64, 6, 10) for _ in range(3))
    with torch.inference_mode():
        torch.testing.assert_close(module(q, k, v), naive_local_attention(module, q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not aot_layers.correlation_sampler_available(), reason="spatial_correlation_sampler not installed")
def test_local_correlation_pure_torch_matches_sampler():
    torch.manual_seed(0)
    q, k = torch.randn(8, 32, 13, 17), torch.randn(8, 32, 13, 17)
    torch.testing.assert_close(aot_layers.local_correlation(q, k, use_sampler=False),
                               aot_layers.local_correlation(q, k, use_sampler=True), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- propagator backend


def _frames(n: int, h: int = 48, w: int = 64) -> list[Frame]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [Frame(i, np.roll(base, i, axis=1)) for i in range(n)]


def _masks(h: int = 48, w: int = 64, ids=(3, 1000)) -> dict[int, np.ndarray]:
    masks = {}
    for i, object_id in enumerate(ids):
        mask = np.zeros((h, w), bool)
        mask[5 + 8 * i: 12 + 8 * i, 10:30] = True
        masks[object_id] = mask
    return masks


@pytest.fixture(scope="module")
def propagator():
    return create("propagator", "aot:deaott", BackendOptions(memory_cap=3, extra={"random_weights": True,
                                                                                    "memory_gap": 2}))


def test_propagator_seed_and_step(propagator):
    frames = _frames(12)
    propagator.reset()
    propagator.seed(frames[0], _masks())
    assert sorted(propagator.objects) == [3, 1000]
    for frame in frames[1:8]:
        out = propagator.step(frame)
        assert set(out) == {3, 1000}
        assert all(m.shape == (48, 64) and m.dtype == bool for m in out.values())
        assert not (out[3] & out[1000]).any()
        assert propagator.memory_frames() <= 3 + 1
    # re-seed mid-stream with one object dropped and one added
    propagator.seed(frames[8], _masks(ids=(1000, -7)))
    assert sorted(propagator.objects) == [-7, 1000]
    for frame in frames[9:]:
        assert set(propagator.step(frame)) == {-7, 1000}
    propagator.reset()
    assert propagator.memory_frames() == 0 and propagator.step(frames[0]) == {}


def test_propagator_rejects_more_than_ten_objects(propagator):
    frame = _frames(1)[0]
    with pytest.raises(ValueError, match="at most 10 objects"):
        propagator.seed(frame, _masks(ids=tuple(range(11))))


def test_propagator_missing_weights(tmp_path):
    with pytest.raises(BackendError, match="unseen weights (fetch|import) deaott"):
        create("propagator", "aot:deaott", BackendOptions(weights_dir=tmp_path))


def test_propagator_memory_gap_defaults():
    t = create("propagator", "aot:deaott", BackendOptions(extra={"random_weights": True}))
    assert t.engine.long_term_gap == 9999 and t.engine.memory_cap == 8
    big = create("propagator", "aot:deaotl", BackendOptions(memory_gap=7, extra={"random_weights": True}))
    assert big.engine.long_term_gap == 7


def test_streams_on_a_device_share_one_model():
    """Several streams in one process hold one copy of a model per device (and free it with the last one)."""
    import gc

    from unseen.engine.backends import registry
    from unseen.engine.backends.neural import MODELS

    options = registry.BackendOptions(extra={"random_weights": True})
    built = MODELS.builds
    a = registry.create("propagator", "aot:aott", options)
    b = registry.create("propagator", "aot:aott", registry.BackendOptions(extra={"random_weights": True}))
    assert a.model is b.model and MODELS.builds == built + 1
    other = registry.create("propagator", "aot:aott", registry.BackendOptions(extra={"random_weights": True},
                                                                               precision="bf16"))
    assert other.model is not a.model  # another precision is another copy
    del a, b, other
    gc.collect()
    c = registry.create("propagator", "aot:aott", options)  # all gone: built anew
    assert MODELS.builds == built + 3 and c.model is not None


def test_fork_steps_backwards_on_the_shared_model_without_disturbing_the_tracker():
    """fork(): the same weights (not a copy), no objects, its own memory.  Stepped backwards from a later
    frame it gives what a new propagator with these settings gives, and the forward tracker's next masks
    are those of a twin that was never forked."""
    options = BackendOptions(memory_cap=3, extra={"random_weights": True, "memory_gap": 2})
    tracker, twin, fresh = (create("propagator", "aot:deaott", options) for _ in range(3))
    frames, masks = _frames(10), _masks()
    for p in (tracker, twin):
        p.seed(frames[0], masks)
        for frame in frames[1:5]:
            p.step(frame)
    back = tracker.fork()
    assert back.model is tracker.model and back.objects == [] and back.memory_frames() == 0
    later = {0: masks[3]}
    back.seed(frames[5], later)
    fresh.seed(frames[5], later)
    for frame in reversed(frames[1:5]):  # newest first, as the session hands the held frames
        got, want = back.step(frame), fresh.step(frame)
        assert set(got) == {0} and np.array_equal(got[0], want[0]), frame.index
    for frame in frames[5:]:
        got, want = tracker.step(frame), twin.step(frame)
        assert set(got) == {3, 1000} and all(np.array_equal(got[k], want[k]) for k in got), frame.index
