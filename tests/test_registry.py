"""Backend registry: names, the `auto` choice (neural when its weights are present), clear errors."""
from __future__ import annotations

import pytest

from unseen.engine.backends import registry
from unseen.engine.backends.registry import BackendError, BackendOptions
from unseen.weights import registry as weights_registry


@pytest.mark.parametrize("stage,files,expected", [
    ("segmenter", [], "classical"),
    ("segmenter", ["sam_vit_b"], "sam:vit_b"),
    ("segmenter", ["sam_vit_b", "sam_vit_h"], "sam:vit_h"),
    ("propagator", [], "classical"),
    ("propagator", ["deaott"], "aot:deaott"),
    ("propagator", ["deaott", "r50_deaotl"], "aot:r50_deaotl"),
    ("inpainter", [], "classical"),
    ("inpainter", ["e2fgvi"], "e2fgvi:e2fgvi"),
    ("inpainter", ["e2fgvi", "e2fgvi_hq"], "e2fgvi:hq"),
])
def test_auto_prefers_the_neural_backend_whose_weights_are_present(tmp_path, stage, files, expected):
    for name in files:
        (tmp_path / weights_registry.get(name).filename).write_bytes(b"x")
    assert registry.resolve_auto(stage, BackendOptions(weights_dir=tmp_path)) == expected


def test_every_auto_candidate_names_a_registered_checkpoint():
    for stage, (_, candidates) in registry.AUTO_NEURAL.items():
        for _, weights_name in candidates:
            assert weights_registry.get(weights_name).name == weights_name


@pytest.mark.parametrize("stage,name,message", [
    ("inpainter", "magic", "unknown inpainter backend 'magic'; use one of: auto, classical, e2fgvi"),
    ("segmenter", "sam:vit_q", "unknown SAM variant"),
    ("propagator", "aot:nope", "nope"),
    ("inpainter", "e2fgvi:hq", "unseen weights fetch e2fgvi_hq"),
    ("propagator", "aot:deaott", "unseen weights fetch deaott"),
    ("segmenter", "sam:vit_b", "unseen weights fetch sam_vit_b"),
])
def test_bad_backend_names_and_missing_weights_say_how_to_fix_it(tmp_path, stage, name, message):
    with pytest.raises(BackendError, match=message.replace("(", r"\(")):
        registry.create(stage, name, BackendOptions(weights_dir=tmp_path))


def test_the_choice_is_logged(caplog, tmp_path):
    with caplog.at_level("INFO", logger="unseen.backends"):
        backend = registry.create("inpainter", "auto", BackendOptions(weights_dir=tmp_path))
    assert backend.name == "classical (auto)"
    assert "inpainter backend: classical (auto)" in caplog.text


@pytest.mark.parametrize("stage,name,hint", [
    ("propagator", "auto", True),  # auto without NanoTrack's weights: says how to add them
    ("propagator", "classical", False),  # asked for by name: nothing to suggest
    ("inpainter", "auto", False),  # no learned guide for this stage
])
def test_auto_without_the_guides_weights_says_how_to_add_them(caplog, tmp_path, stage, name, hint):
    with caplog.at_level("INFO", logger="unseen.backends"):
        registry.create(stage, name, BackendOptions(weights_dir=tmp_path))
    lines = [r.getMessage() for r in caplog.records if f"{stage} backend:" in r.getMessage()]
    assert len(lines) == 1
    assert ("`unseen weights fetch nanotrack_v2` adds NanoTrack V2" in lines[0]) is hint
