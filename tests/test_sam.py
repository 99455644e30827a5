"""The SAM segmenter backend, on a tiny randomly initialised SAM (fast on CPU).

Its masks are compared with ``segment_anything.SamPredictor`` on the same model, so the
prompt handling (coordinate scaling, labels, multimask choice) is the official one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from unseen.engine.backends import registry as backends
from unseen.engine.backends.registry import BackendError, BackendOptions
from unseen.engine.backends.sam import SamSegmenter, build_sam_from_config, create
from unseen.engine.pipeline import PipelineConfig
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Click, Frame, SelectionError

torch.set_num_threads(2)
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,), "img_size": 256,
        "prompt_dim": 32}


def image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A textured frame with a bright square object."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (220, 200, 40)
    return img


@pytest.fixture
def segmenter() -> SamSegmenter:
    torch.manual_seed(0)
    return create(None, BackendOptions(extra={"sam_config": TINY}))


def expected(seg: SamSegmenter, img: np.ndarray, clicks: list[Click], box=None, multimask: bool = False):
    predictor = SamPredictor(seg.model)
    predictor.set_image(img)
    coords = np.array([[c.x, c.y] for c in clicks], np.float32) if clicks else None
    labels = np.array([int(c.positive) for c in clicks]) if clicks else None
    masks, quality, _ = predictor.predict(coords, labels, box=None if box is None else np.array(box),
                                          multimask_output=multimask)
    return masks[int(np.argmax(quality))], quality


def test_embedding_computed_once_per_frame(segmenter: SamSegmenter) -> None:
    calls = []
    segmenter.model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    frame = Frame(index=3, image=image())
    segmenter.segment(frame, [Click(40, 30)])
    segmenter.segment(frame, [Click(40, 30), Click(10, 80, positive=False)])
    assert len(calls) == segmenter.encoder_runs == 1
    segmenter.segment(Frame(index=4, image=image(seed=1)), [Click(40, 30)])
    assert len(calls) == 2
    segmenter.segment(frame, [Click(50, 35)])  # frame 3 still cached
    assert len(calls) == 2
    segmenter.forget(4)
    segmenter.segment(frame, [Click(50, 35)])  # dropped: recomputed
    assert len(calls) == 3
    segmenter.segment(Frame(index=3, image=image(seed=7)), [Click(50, 35)])  # same index, new picture
    assert len(calls) == 4


def test_cache_is_bounded(segmenter: SamSegmenter) -> None:
    segmenter.cache_frames = 2
    frames = [Frame(index=i, image=image(seed=i)) for i in range(3)]
    for frame in frames:
        segmenter.segment(frame, [Click(40, 30)])
    assert sorted(segmenter._cache) == [1, 2]
    segmenter.segment(frames[0], [Click(40, 30)])
    assert segmenter.encoder_runs == 4


@pytest.mark.parametrize("h, w", [(96, 128), (97, 131), (150, 60)])
def test_single_click_picks_best_of_multimask(segmenter: SamSegmenter, h: int, w: int) -> None:
    img = image(h, w)
    click = Click(w * 0.35, h * 0.35)
    mask = segmenter.segment(Frame(index=0, image=img), [click])
    assert mask.dtype == bool and mask.shape == (h, w)
    best, quality = expected(segmenter, img, [click], multimask=True)
    assert len(quality) == 3
    assert np.array_equal(mask, best)


def test_several_clicks_and_box_single_mask(segmenter: SamSegmenter) -> None:
    img, frame = image(), Frame(index=0, image=image())
    clicks = [Click(40, 30), Click(90, 70, positive=False)]
    assert np.array_equal(segmenter.segment(frame, clicks), expected(segmenter, img, clicks)[0])
    box = (30.0, 20.0, 70.0, 50.0)
    assert np.array_equal(segmenter.segment(frame, [], box=box), expected(segmenter, img, [], box=box)[0])
    both = segmenter.segment(frame, [Click(40, 30)], box=box)
    assert np.array_equal(both, expected(segmenter, img, [Click(40, 30)], box=box)[0])


def test_pipeline_gives_sam_the_objects_box_and_clicks() -> None:
    """A box starts the object, a click on the same frame refines it: SAM gets both (as SamPredictor would)."""
    torch.manual_seed(0)
    p = build_pipeline(Backends("sam:vit_b", "classical", "classical"), BackendOptions(extra={"sam_config": TINY}),
                       PipelineConfig(delay=2))
    img, box = image(), (30.0, 20.0, 70.0, 50.0)
    futures = [p.prompt(box=box, frame_index=0), p.prompt([Click(40, 30)], object_id=1, frame_index=0)]
    outs = [o for i in range(4) for o in p.step(Frame(index=i, image=img.copy()))] + p.flush()
    assert [f.result(timeout=0) for f in futures] == [1, 1]
    assert np.array_equal(outs[0].masks[1], expected(p.segmenter, img, [Click(40, 30)], box=box)[0])
    assert p.describe()["objects"][0]["box"] == list(box)


def test_negative_click_changes_mask(segmenter: SamSegmenter) -> None:
    frame = Frame(index=0, image=image())
    positive = segmenter.segment(frame, [Click(40, 30)])
    with_negative = segmenter.segment(frame, [Click(40, 30), Click(45, 35, positive=False)])
    assert not np.array_equal(positive, with_negative)


def test_empty_selection_raises(segmenter: SamSegmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmenter.model, "mask_threshold", 1e9)
    frame = Frame(index=7, image=image())
    with pytest.raises(SelectionError) as err:
        segmenter.segment(frame, [Click(40.4, 30.2), Click(5, 5, positive=False)])
    assert str(err.value) == "click at (40,30) on frame 7 selected nothing; click inside the object"
    with pytest.raises(SelectionError, match="box"):
        segmenter.segment(frame, [], box=(1, 2, 30, 40))
    with pytest.raises(SelectionError, match="no click on frame 7"):
        segmenter.segment(frame, [])


def test_box_from_options() -> None:
    torch.manual_seed(0)
    box = (30.0, 20.0, 70.0, 50.0)
    seg = create("vit_b", BackendOptions(extra={"sam_config": TINY, "box": box}))
    img = image()
    assert np.array_equal(seg.segment(Frame(index=0, image=img), []), expected(seg, img, [], box=box)[0])


def test_reduced_precision_runs_on_cpu_too_and_keeps_the_mask(segmenter: SamSegmenter) -> None:
    """bf16 autocast takes the same path on CPU as on CUDA: the mask stays that of fp32 but for a few
    pixels on its outline."""
    frame = Frame(index=0, image=image())
    reference = segmenter.segment(frame, [Click(40, 30)])
    low = SamSegmenter(segmenter.model, precision="bf16").segment(frame, [Click(40, 30)])
    assert (low != reference).mean() <= 0.02


def test_backend_registry_name() -> None:
    seg = backends.create("segmenter", "sam:vit_l", BackendOptions(extra={"sam_config": TINY}))
    assert isinstance(seg, SamSegmenter) and seg.name == "sam:vit_l"
    with pytest.raises(BackendError, match="unknown SAM variant 'vit_x'"):
        create("vit_x", BackendOptions())


def test_missing_weights_is_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as err:
        create(None, BackendOptions(weights_dir=tmp_path))
    assert "`unseen weights fetch sam_vit_b`" in str(err.value)
    assert "`unseen weights import sam_vit_b FILE`" in str(err.value)


def test_loads_weights_from_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real path: sam_vit_b from the weights folder, strictly loaded (architecture shrunk to TINY)."""
    torch.manual_seed(1)
    source = build_sam_from_config(TINY)
    torch.save(source.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    monkeypatch.setitem(sam_model_registry, "vit_b", lambda checkpoint=None: build_sam_from_config(TINY))
    seg = create("vit_b", BackendOptions(weights_dir=tmp_path))
    for key, value in source.state_dict().items():
        assert torch.equal(seg.model.state_dict()[key], value)
    torch.save({"other": torch.zeros(1)}, tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(BackendError, match="does not fit vit_b"):
        create("vit_b", BackendOptions(weights_dir=tmp_path))


def test_random_weights_builds_registry_model(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    def fake(checkpoint=None):
        built.append(checkpoint)
        return build_sam_from_config(TINY)

    monkeypatch.setitem(sam_model_registry, "vit_h", fake)
    seg = create("vit_h", BackendOptions(extra={"random_weights": True}))
    assert built == [None] and isinstance(seg, SamSegmenter)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_autocast(precision: str) -> None:
    torch.manual_seed(0)
    seg = create(None, BackendOptions(device="cuda", precision=precision, extra={"sam_config": TINY}))
    mask = seg.segment(Frame(index=0, image=image()), [Click(40, 30)])
    assert mask.dtype == bool and mask.shape == (96, 128)
