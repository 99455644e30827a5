"""classical+nanotrack: the flow propagator guided by NanoTrack V2 (skipped without the NanoTrack files).

Synthetic scenes with known masks: a textured background panning left, a striped object with a thin leg moving
right, a look-alike moving against it, and (for the occlusion) a wall fixed in the scene that hides the object."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from support.nanotrack import nanotrack_folder
from unseen.engine.backends import registry
from unseen.engine.backends.registry import BackendError, BackendOptions
from unseen.engine.flow import FlowCache
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame
from unseen.weights import store


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A weights folder holding nanotrack_v2, imported from the shared folder."""
    folder = tmp_path / "weights"
    store.import_file("nanotrack_v2", nanotrack_folder(), folder)
    return folder


def make(kind: str, weights: Path):
    return registry.create("propagator", kind, BackendOptions(weights_dir=weights, flows=FlowCache()))


def _texture(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    coarse = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(-25, 25, (h, w, 3))
    return cv2.GaussianBlur(np.clip(coarse.astype(int) // 2 + 64 + fine, 0, 255).astype(np.uint8), (0, 0), 1.0)


def _sprite(colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    size = 40
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = (np.sin((xx + 2 * yy) / 2.5) > 0)[..., None]
    image = np.where(stripes, np.array(colour), np.array(colour) // 2).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (20, 20), (19, 13), 0, 0, 360, 1, -1)
    cv2.rectangle(mask, (18, 20), (22, 39), 1, -1)  # a thin leg
    return image, mask.astype(bool)


def scene(n: int, *, wall: int | None = None, w: int = 320, h: int = 192, pan: float = 3.0):
    """Frames and the object's masks."""
    texture = _texture(h, w + int(pan * n) + 8)
    obj, obj_mask = _sprite((230, 60, 50))
    twin, twin_mask = _sprite((225, 65, 55))
    frames, masks = [], []
    for t in range(n):
        x = int(round(pan * t))
        frame = texture[:, x:x + w].copy()
        mask = np.zeros((h, w), bool)
        tx, ox, oy = int(w - 80 - 2.0 * t), int(40 + 4.0 * t), int(70 + 0.5 * t)
        frame[110:150, tx:tx + 40][twin_mask] = twin[twin_mask]
        frame[oy:oy + 40, ox:ox + 40][obj_mask] = obj[obj_mask]
        mask[oy:oy + 40, ox:ox + 40] = obj_mask
        if wall is not None and wall - x < w and wall - x + 50 > 0:
            cols = slice(max(0, wall - x), max(0, wall - x + 50))
            frame[:, cols] = (40, 40, 200)
            mask[:, cols] = False
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def jaccards(propagator, frames: list[np.ndarray], masks: list[np.ndarray]) -> list[float]:
    """J on every frame after the first (an empty truth scores 1 for an empty mask)."""
    propagator.seed(Frame(0, frames[0]), {1: masks[0]})
    out = []
    for t in range(1, len(frames)):
        got = propagator.step(Frame(t, frames[t])).get(1, np.zeros(masks[t].shape, bool))
        union = (got | masks[t]).sum()
        out.append(float((got & masks[t]).sum() / union) if union else 1.0)
    return out


def test_guided_keeps_the_object_where_the_flow_loses_it(weights: Path) -> None:
    frames, masks = scene(40)
    plain = np.mean(jaccards(make("classical", weights), frames, masks))
    guided = np.mean(jaccards(make("classical+nanotrack", weights), frames, masks))
    assert guided > 0.65 and guided > plain + 0.25, (plain, guided)  # measured 0.78 against 0.29


def test_recovers_after_a_full_occlusion(weights: Path) -> None:
    frames, masks = scene(50, wall=200)
    hidden = [t for t in range(50) if not masks[t].any()]
    assert hidden and hidden[-1] < 40  # the wall hides it fully, then it comes out whole
    plain = jaccards(make("classical", weights), frames, masks)
    guided = jaccards(make("classical+nanotrack", weights), frames, masks)
    tail = slice(-6, None)  # the last frames, well after it came out
    assert np.mean(guided[tail]) > 0.8 and np.mean(plain[tail]) < 0.2, (guided[tail], plain[tail])


def test_memory_bounded(weights: Path) -> None:
    frames, masks = scene(30)
    loop = frames + frames[-2:0:-1]  # forth and back: an endless stream without cuts
    propagator = make("classical+nanotrack", weights)
    propagator.seed(Frame(0, frames[0]), {1: masks[0]})
    held, sizes = [], []
    tracemalloc.start()
    try:
        # from the second time round the loop on, every flow is in the cache (its 58 pairs are fewer than the
        # cache's capacity): what the propagator holds may not grow
        start = len(loop) + 2
        for t in range(1, start + 80):
            propagator.step(Frame(t, loop[t % len(loop)]))
            held.append(propagator.memory_frames())
            if t in (start, start + 79):
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert max(held) <= 3 and held[-1] == held[20]
    assert sizes[1] - sizes[0] < 2 << 20, sizes  # bytes held after 80 more frames


def test_fork_is_fresh_and_independent(weights: Path) -> None:
    frames, masks = scene(8)
    original, reference = make("classical+nanotrack", weights), make("classical+nanotrack", weights)
    for p in (original, reference):
        p.seed(Frame(0, frames[0]), {1: masks[0]})
        for t in range(1, 4):
            p.step(Frame(t, frames[t]))
    fork = original.fork()
    assert type(fork) is type(original) and fork.objects == [] and fork.memory_frames() == 0
    fork.seed(Frame(3, frames[3]), {2: np.roll(masks[3], 30, axis=1)})
    fork.step(Frame(2, frames[2]))
    for t in range(4, 8):
        assert np.array_equal(original.step(Frame(t, frames[t]))[1], reference.step(Frame(t, frames[t]))[1])


def test_auto_and_the_name_reported(weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="unseen.backends"):
        pipeline = build_pipeline(Backends("classical", "auto", "classical"), BackendOptions(weights_dir=weights))
    assert pipeline.describe()["backends"]["propagator"] == "classical+nanotrack (auto)"
    assert "propagator backend: classical+nanotrack (auto)" in caplog.text and "weights fetch" not in caplog.text
    empty = BackendOptions(weights_dir=tmp_path / "empty")
    assert registry.create("propagator", "auto", empty).name == "classical (auto)"
    with pytest.raises(BackendError, match="`unseen weights import nanotrack_v2 DIR`") as err:
        registry.create("propagator", "classical+nanotrack", empty)
    assert "\n" not in str(err.value)


def test_corrupt_weights_refused_in_one_line(weights: Path) -> None:
    head = weights / "nanotrack_v2" / "nanotrack_head_sim.onnx"
    body = bytearray(head.read_bytes())
    body[1000] ^= 0x01
    head.write_bytes(bytes(body))
    with pytest.raises(BackendError, match="nanotrack_head_sim.onnx has sha256") as err:
        make("classical+nanotrack", weights)
    assert "\n" not in str(err.value) and "`unseen weights fetch nanotrack_v2`" in str(err.value)


def test_no_opencv_warning_on_the_console(weights: Path, capfd: pytest.CaptureFixture) -> None:
    """OpenCV's note that its new DNN engine ignores the CPU target is not printed at each tracker's start."""
    frames, masks = scene(3)
    level = cv2.utils.logging.getLogLevel()
    jaccards(make("classical+nanotrack", weights), frames, masks)
    assert "WARN" not in capfd.readouterr().err
    assert cv2.utils.logging.getLogLevel() == level  # OpenCV's log level is given back
