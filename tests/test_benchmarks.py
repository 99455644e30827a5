"""Benchmarks: metric unit tests (table-driven) and every suite's --quick form on synthetic data."""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from unseen.benchmarks import commands, data, metrics
from unseen.benchmarks.gpu_busy import GpuBusy
from unseen.engine.synthetic import make_clip


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


S = (100, 100)
SQUARE = _rect(S, 20, 40, 20, 40)

# (name, pred, gt, expected J, expected F)
MASK_CASES = [
    ("identical", SQUARE, SQUARE, 1.0, 1.0),
    ("disjoint", SQUARE, _rect(S, 60, 80, 60, 80), 0.0, 0.0),
    ("shifted 5 px", _rect(S, 20, 40, 25, 45), SQUARE, 300 / 500, None),
    ("both empty", np.zeros(S, bool), np.zeros(S, bool), 1.0, 1.0),
    ("empty prediction", np.zeros(S, bool), SQUARE, 0.0, 0.0),
    # left half vs left half moved by 2 px: boundaries within the tolerance (ceil(0.008*141.4) = 2 px)
    ("edge moved within tolerance", _rect(S, 0, 100, 0, 52), _rect(S, 0, 100, 0, 50), 50 / 52, 1.0),
    ("edge moved beyond tolerance", _rect(S, 0, 100, 0, 53), _rect(S, 0, 100, 0, 50), 50 / 53, 0.0),
    # hand computed: GT boundary = column 49 (100 px); prediction (top-left quadrant) boundary =
    # column 49 rows 0-49 plus row 49 columns 0-48 (99 px).  Matched within 2 px: 52 of the
    # prediction's (column 49 + columns 47, 48 of row 49) and 52 of the GT's (rows 0-51), so
    # P = 52/99, R = 52/100 and F = 2PR/(P+R) = 104/199.
    ("quadrant vs half (hand computed)", _rect(S, 0, 50, 0, 50), _rect(S, 0, 100, 0, 50), 0.5, 104 / 199),
]


@pytest.mark.parametrize("name,pred,gt,j,f", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_j_and_f(name, pred, gt, j, f):
    assert metrics.jaccard(pred, gt) == pytest.approx(j, abs=1e-9)
    if f is not None:
        assert metrics.f_measure(pred, gt) == pytest.approx(f, abs=1e-9)
    else:
        assert 0.0 < metrics.f_measure(pred, gt) < 1.0


def test_boundary_map_and_tolerance():
    b = metrics.seg2bmap(_rect(S, 0, 100, 0, 50))
    assert b.sum() == 100 and b[:, 49].all()
    assert metrics.boundary_tolerance((480, 854)) == math.ceil(0.008 * math.hypot(480, 854)) == 8
    assert metrics.disk(2).sum() == 13  # skimage.morphology.disk(2)


RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
FLAT100 = np.full((40, 50, 3), 100, np.uint8)
FLAT110 = np.full((40, 50, 3), 110, np.uint8)
C1 = (0.01 * 255) ** 2

# (name, a, b, expected PSNR, expected SSIM)
IMAGE_CASES = [
    ("identical noise", NOISE, NOISE, metrics.PSNR_CAP, 1.0),
    ("flat, off by 10", FLAT100, FLAT110, 10 * math.log10(255 ** 2 / 100), (2 * 100 * 110 + C1) / (100 ** 2 + 110 ** 2 + C1)),
    ("black vs white", np.zeros((40, 50), np.uint8), np.full((40, 50), 255, np.uint8), 0.0, None),
]


@pytest.mark.parametrize("name,a,b,p,s", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_psnr_ssim(name, a, b, p, s):
    assert metrics.psnr(a, b) == pytest.approx(p, abs=1e-6)
    if s is not None:
        assert metrics.ssim(a, b) == pytest.approx(s, abs=1e-6)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(b, a), abs=1e-12)
    assert metrics.ssim(a, b) <= 1.0 + 1e-12


def test_region_metrics_and_flicker():
    region = _rect(NOISE.shape[:2], 10, 20, 10, 20)
    other = NOISE.copy()
    other[~region] = 0  # differences outside the region do not count inside it
    assert metrics.psnr(other, NOISE, region) == metrics.PSNR_CAP
    assert metrics.ssim(other, NOISE, region) < 1.0  # the window sees the changed surroundings
    noisy = np.clip(NOISE.astype(int) + 20, 0, 255).astype(np.uint8)
    assert metrics.ssim(noisy, NOISE) < 1.0 and metrics.psnr(noisy, NOISE) < 30
    assert metrics.flicker([NOISE] * 3, [region] * 3) == 0.0
    assert metrics.flicker([FLAT100, FLAT110], [region] * 2) == pytest.approx(10.0)


def test_detail_is_one_for_the_truth_and_falls_for_a_blur():
    region = _rect(NOISE.shape[:2], 10, 40, 10, 40)
    blurred = NOISE.copy()
    blurred[region] = cv2.GaussianBlur(NOISE, (9, 9), 3)[region]
    assert metrics.detail(NOISE, NOISE, region) == pytest.approx(1.0)
    assert metrics.detail(blurred, NOISE, region) < 0.6
    busier = NOISE.copy()
    busier[region] = np.clip((NOISE[region].astype(int) - 128) * 2 + 128, 0, 255).astype(np.uint8)
    assert metrics.detail(busier, NOISE, region) > 1.2
    assert np.isnan(metrics.detail(FLAT100, FLAT100, region))  # no detail in the truth: no ratio


def test_ssim_matches_scipy_gaussian_reference():
    """The cv2 Gaussian window equals scikit-image's (scipy gaussian_filter, truncate 3.5, reflect)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    a = NOISE[..., 0].astype(np.float64)
    b = cv2.GaussianBlur(NOISE[..., 0], (5, 5), 2).astype(np.float64)
    f = lambda x: ndimage.gaussian_filter(x, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    ux, uy = f(a), f(b)
    vx, vy, vxy = f(a * a) - ux * ux, f(b * b) - uy * uy, f(a * b) - ux * uy
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    assert metrics.ssim(NOISE[..., 0], b.astype(np.uint8)) == pytest.approx(m[5:-5, 5:-5].mean(), abs=1e-9)


# ------------------------------------------------------------------------------ synthetic data folder
def _write_clip(folder: Path, seed: int, frames: int, *, palette: bool, pan=(1.0, 0.3), flip: int | None = None) -> None:
    """A synthetic clip; ``flip`` (cv2 flip code) moves its object elsewhere than the other clips'."""
    clip = make_clip(frames, 160, 96, seed=seed, pan=pan)
    (folder / "frames").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, (img, m) in enumerate(zip(clip.frames, clip.masks)):
        if flip is not None:
            img, m = cv2.flip(img, flip), cv2.flip(m.astype(np.uint8), flip).astype(bool)
        cv2.imwrite(str(folder / "frames" / f"{i:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if palette:
            lab = Image.fromarray(m.astype(np.uint8) * 2, mode="P")  # object id 2
            lab.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
            lab.save(folder / "masks" / f"{i:05d}.png")
        else:
            Image.fromarray(m.astype(np.uint8) * 255).save(folder / "masks" / f"{i:05d}.png")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-data")
    _write_clip(root / "alpha", 1, 14, palette=False)
    _write_clip(root / "beta", 2, 14, palette=True, pan=(0.0, 0.0), flip=1)
    _write_clip(root / "holes", 3, 14, palette=False, flip=0)
    (root / "PROVENANCE.md").write_text("| clip | masks |\n|---|---|\n| data/holes | binary, **dilated** |\n"
                                        "| data/alpha | tight (not dilated) |\n")
    (root / "notaclip").mkdir()
    return root


def test_discovery_and_pairing(data_dir):
    clips = data.discover(data_dir)
    assert [c.name for c in clips] == ["alpha", "beta", "holes"]
    assert [c.dilated for c in clips] == [False, False, True]
    assert clips[1].read_labels(1)[0].max() == 2  # palette index, not RGB
    pairs = [(a.name, b.name) for a, b in data.pairs(clips)]
    assert pairs == [("beta", "alpha"), ("alpha", "beta"), ("alpha", "holes")]
    assert pairs == [(a.name, b.name) for a, b in data.pairs(data.discover(data_dir))]  # deterministic


def test_every_suite_quick(data_dir, tmp_path):
    results = tmp_path / "results"
    rc = commands.main(["-q", "--data", str(data_dir), "--results", str(results), "--quick", "--no-neural",
                        "--long-frames", "40", "--resolutions", "160x96,320x192"])
    assert rc == 0
    for suite in commands.SUITES:
        assert (results / f"{suite}.png").stat().st_size > 1000
        r = json.loads((results / f"{suite}.json").read_text())
        assert r["suite"] == suite and r["quick"] is True
        assert r["machine"]["logical_cores"] >= 1 and "opencv" in r["machine"]["versions"]
        assert len(r["loadavg_start"]) == 3 and r["elapsed_s"] > 0

    track = json.loads((results / "track.json").read_text())
    assert [c["clip"] for c in track["clips"]] == ["alpha", "beta"]  # 'holes' is dilated: never scored
    assert track["skipped"][0]["clip"] == "holes"
    assert track["clips"][1]["objects"][0]["id"] == 2
    o = track["overall"]
    for key in ("first_J", "J", "F", "JF"):
        assert 0.0 <= o[key] <= 1.0
    assert o["first_J"] > 0.5  # the synthetic object is easy to segment
    assert o["JF"] == pytest.approx(np.mean([c["objects"][0]["JF"] for c in track["clips"]]))
    runs = {(r["tracker"], r["prompt"], r["corrections"]): r for r in track["runs"]}
    assert {("classical", p, c) for p in ("click", "box") for c in (False, True)} <= set(runs)
    assert runs["classical", "click", False]["clips"] == track["clips"]  # the headline: one click, no corrections
    assert all(r["overall"]["corrections"] == 0 for (_, _, c), r in runs.items() if not c)
    assert {t for t, _, _ in runs} | {u["tracker"] for u in track["unavailable"]} == {"classical", "classical+nanotrack"}

    remove = json.loads((results / "remove.json").read_text())
    assert len(remove["pairs"]) == 3
    for p in remove["pairs"]:
        assert p["click_error"] is None and p["frames"] == 14
        assert 10 < p["psnr_region"] < 100 and 0 < p["ssim_region"] <= 1
        assert p["psnr_frame"] > p["psnr_region"]  # outside the region the frame is untouched
        assert p["psnr_region_input"] < 40  # the pasted object is visible in the input
        assert 0 < p["object_fraction"] < 0.2 and 0 <= p["mask_J"] <= 1
        assert p["flicker_diff"] == pytest.approx(p["flicker_output"] - p["flicker_gt"], abs=2e-6)  # each rounded to 1e-6
        assert 0 < p["detail_region"] < float("inf")  # (the synthetic truth is smooth: any fill is busier)
        sources = p["fill_sources"]  # where the fill came from: fractions of every filled pixel
        assert set(sources) == {"background", "window", "reference", "previous", "spatial"}
        assert sum(sources.values()) == pytest.approx(1.0, abs=1e-3) and sources["window"] > 0
    assert remove["backends"]["inpainter"] == "classical"
    truth = remove["gt_mask"]  # the same pairs with the true masks removed: the fill alone
    assert len(truth["pairs"]) == 3 and all(p["mask_J"] == 1.0 for p in truth["pairs"])
    assert remove["overall_still"]["pairs"] + remove["overall_moving"]["pairs"] == 3

    complete = json.loads((results / "complete.json").read_text())
    assert complete["reference"]["psnr"] == 33.01 and complete["reference"]["ssim"] == 0.9721
    for c in complete["clips"]:
        assert c["size"] == "432x240" and 15 < c["psnr"] < 100 and 0.5 < c["ssim"] <= 1
        assert 0 < c["hole_fraction"] < 0.5
        assert 0 < c["detail_hole"] < float("inf")
        assert 10 < c["cheap_psnr_hole"] < 100  # the degraded step's fill, from the true previous frame

    speed = json.loads((results / "speed.json").read_text())
    runs = speed["runs"]
    assert [r["size"] for r in runs] == ["160x96", "320x192"]
    for r in runs:
        assert "error" not in r, r
        assert r["fps"] > 0 and r["frames"] == 12 and r["delay_frames"] >= 0 and r["peak_rss_mb"] > 0
        assert set(r["ms"]) == {"decode", "segment_per_click", "propagate", "inpaint", "encode"}
        assert r["ms"]["segment_per_click"] > 0 and r["ms"]["inpaint"] > 0
    lr = speed["long_run"]
    assert lr["frames"] == 40 and lr["loops"] > 1
    assert lr["rss_end_mb"] > 0 and lr["held_frames_max"] <= 40
    assert speed["neural"]["requested"] is False and speed["complete"] is True
    assert (results / "summary.md").read_text().count("| speed:") == 3  # two sizes and the long run


def test_speed_measure_with_given_holes(data_dir, tmp_path):
    """The inpainter-alone timing (used for neural inpainters) on the holes of a click run."""
    from unseen.benchmarks import speed
    from unseen.benchmarks.common import Context
    from unseen.engine.session import Backends

    ctx = Context(data=data_dir, results=tmp_path, quick=True, quiet=True)
    clip = speed.source_clip(ctx)
    path = speed.scaled(ctx, clip, (160, 96), 12)
    holes: list = []
    b = Backends("classical", "classical", "classical")
    first = speed.measure(ctx, b, ctx.options(), path, 8, "click", keep=holes)
    assert len(holes) == 8 and first["hole_fraction"] > 0 and first["masks"] == "click"
    again = speed.measure(ctx, b, ctx.options(), path, 8, "given", given=holes)
    assert again["hole_fraction"] == pytest.approx(first["hole_fraction"])
    assert again["counts"].get("segment", 0) == 0 and again["counts"]["inpaint"] == 8
    # every stage runs (a click segmented, every later frame propagated), the inpainter fills the given holes
    shifted = [np.roll(h, 7, axis=1) for h in holes]
    through = speed.measure(ctx, b, ctx.options(), path, 8, "through", through=shifted)
    assert through["counts"]["segment"] == 1 and through["counts"]["propagate"] >= 7
    assert through["counts"]["inpaint"] == 8 and through["masks"].startswith("click, then every stage runs")
    assert through["hole_fraction"] == pytest.approx(float(np.mean([h.mean() for h in shifted])))
    # several streams at once in one process: each measured, the slowest named
    both = speed.concurrent(ctx, b, ctx.options(), path, 6, "two", 2, through=shifted)
    assert both["streams"] == 2 and len(both["fps_each"]) == 2 and both["fps_min"] == min(both["fps_each"])
    assert all(r["frames"] == 6 and r["counts"]["inpaint"] == 6 for r in both["runs"])
    big = speed.resized(holes, (320, 192))
    assert big[0].shape == (192, 320) and big[0].mean() == pytest.approx(holes[0].mean(), abs=0.01)


def test_quick_speed_skips_neural_on_cpu(data_dir, tmp_path):
    trace = tmp_path / "trace.json"
    rc = commands.main(["-q", "--data", str(data_dir), "--results", str(tmp_path), "--quick", "speed",
                        "--long-frames", "0", "--resolutions", "160x96", "--trace", str(trace)])
    assert rc == 0
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert "long_run" not in speed and len(speed["runs"]) == 1
    assert "--quick on CPU" in speed["neural"]["skipped"]
    # side by side: pass-through, sequential, pipelined on the same clip, with each worker's share
    (modes,) = speed["modes"]
    assert modes["size"] == "160x96" and set(modes["fps"]) == {"pass-through", "sequential", "pipelined"}
    assert all(v > 0 for v in modes["fps"].values()) and modes["pipelined_over_sequential"] > 0
    assert set(modes["workers"]["pipelined"]) == {"decode", "track", "emit", "write"}
    assert all(0 <= w["utilisation"] <= 1 and w["ms_per_frame"] >= 0 for w in modes["workers"]["pipelined"].values())
    assert speed["runs"][0]["mode"] == "pipelined" and "opencv" in modes["threads"]
    assert all(v <= speed["runs"][0]["queue_items"] for v in speed["runs"][0]["queue_high_water"].values())
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {1, 2, 3} and {"decode", "track", "emit", "write"} <= {e["name"] for e in spans}
    assert all({"name", "ph", "ts", "dur", "pid", "tid"} <= e.keys() for e in spans)


def test_unseen_bench_command_is_registered():
    from unseen.server import cli

    args = cli.build_parser().parse_args(["bench", "track", "--quick", "--data", "x"])
    assert args.suites == ["track"] and args.quick and args.func is commands.cmd_bench


def test_gpu_busy_averages_the_samples_taken_during_the_run():
    values, enough = [20.0, 40.0, 90.0], threading.Event()
    sampler = None

    def read() -> float:
        i = read.calls
        read.calls += 1
        if i < len(values):
            return values[i]
        enough.set()  # the run ends while this read is in flight: its value is not counted
        sampler.stopped.wait(10)
        return 1000.0
    read.calls = 0

    sampler = GpuBusy(read, period=0)
    with sampler:
        assert enough.wait(10)
    assert sampler.samples == values and sampler.percent == 50.0


def test_gpu_busy_samples_nothing_on_the_cpu():
    with GpuBusy.on("cpu") as busy:
        pass
    assert busy.read is None and busy.samples == [] and busy.percent is None
