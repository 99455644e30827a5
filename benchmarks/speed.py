"""Suite *speed*: per-stage time, end-to-end fps, delay, memory, and a long run.

Protocol: the clip ``dog-walk-720p`` (else the data folder's largest clip) is decoded
from a file at 432x240, 854x480 and 1280x720 (the smaller ones are re-encoded once into
``<results>/_cache``: H.264 CRF 18).  One positive click on the woman (relative position
0.27, 0.55 of the frame, on frame 0, sent before the first frame as ``unseen run
--click`` does; the classical segmenter selects her, about 4% of the frame: a realistic hole —
the dog, white and brown on light concrete, was selected only in part and lost, so there was
nothing to inpaint and the fps was optimistic), then decode -> pipeline -> H.264 encode, frame by frame.  Per stage:
ms per frame for decode, propagate, inpaint and encode, and ms per click for segment.
``fps`` is end to end (decode to encoded frame) without the one-off click;
``fps_with_click`` counts it.  Output delay in frames and in seconds at the clip's rate.
Peak RSS is sampled every frame.  Backends: classical always; the neural ones with
random weights (same compute as trained ones) where they import, on fewer frames (CPU).
Random weights give arbitrary masks (often empty, so nothing to inpaint): the neural
inpainter is therefore also timed alone on the holes the classical run found at the same
size (``hole_fraction`` says how much of the frame each run had to fill).
Long run (first, in a fresh process): the clip at the first resolution (432x240) looped for at least 3,000 frames
with the classical backends (decode and pipeline, no encoder), sampling RSS, held frames
and propagator memory.
The machine's load average is recorded: other work on the machine slows every figure.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from unseen.engine.backends import registry
from unseen.engine.media import FileSink, Source, StreamInfo
from unseen.engine.pipeline import OutputFrame, Pipeline, PipelineConfig
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame

from . import report
from .common import Context
from .data import Clip

log = logging.getLogger("unseen.benchmarks")

RESOLUTIONS = [(432, 240), (854, 480), (1280, 720)]
CLICK_REL = (0.27, 0.55)  # the woman on frame 0 of dog-walk-720p
NEURAL = Backends("sam:vit_b", "aot:r50_deaotl", "e2fgvi:hq")
FRAMES = {"classical": (12, 100), "neural": (6, 8)}  # (quick, full) frames per resolution
NEURAL_BUDGET_S = 150.0  # neural on CPU: stop feeding frames after this long (per resolution)
LONG_FRAMES = (200, 3000)


def source_clip(ctx: Context) -> Clip:
    clips = ctx.clips
    for c in clips:
        if c.name == "dog-walk-720p":
            return c
    return max(clips, key=lambda c: (c.width * c.height, c.name))


def scaled(ctx: Context, clip: Clip, size: tuple[int, int], frames: int | None) -> Path:
    """A video file of ``clip`` at ``size`` (the original when it already is one at that size)."""
    if (clip.width, clip.height) == tuple(size) and clip.source.is_file():
        return clip.source
    n = frames if frames is not None else clip.frames
    cache = ctx.results / "_cache"
    path = cache / f"{clip.name}-{size[0]}x{size[1]}-{n or 'all'}.mp4"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    images = clip.read_frames(n, size)
    with Source(clip.source) as src:
        rate = src.info.rate
    info = StreamInfo(size[0], size[1], rate, 1 / rate, len(images), False)
    sink = FileSink(path, info, crf=18)
    for i, img in enumerate(images):
        sink.write(OutputFrame(Frame(i, img, pts=i, time_base=1 / rate), img, {}))
    sink.close()
    return path


def measure(ctx: Context, backends: Backends, opts, path: Path, frames: int, label: str,
            budget_s: float | None = None, given: list | None = None, keep: list | None = None) -> dict:
    """Decode -> pipeline (one click) -> encode for ``frames`` frames; times and memory.

    With ``budget_s``, no new frame is fed once that many seconds have passed (at least 2
    frames are fed); the frames still held are then flushed (inpainted) as at the end of a stream.
    With ``given`` (per-frame holes), only the inpainter runs, on those holes (no click).  ``keep``
    receives the output holes (to give them to another inpainter at the same size)."""
    rss0 = report.rss_mb()
    t_build = time.perf_counter()
    if given is not None:
        inpainter = registry.create("inpainter", backends.inpainter, opts)
        pipeline = Pipeline(None, None, inpainter, PipelineConfig(),
                            given_masks=lambda i: {1: given[min(i, len(given) - 1)]})
    else:
        pipeline = build_pipeline(backends, opts, PipelineConfig())
    build_s = time.perf_counter() - t_build
    src = Source(path)
    info = src.info
    out_path = ctx.results / "_cache" / f"speed-out-{os.getpid()}.mp4"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sink = FileSink(out_path, info)
    future = None
    if given is None:
        future = pipeline.click(CLICK_REL[0] * info.width, CLICK_REL[1] * info.height, object_id=1, frame_index=0)
    holes: list = []
    decode_s = encode_s = 0.0
    count = 0
    peak = report.rss_mb()
    it = iter(src)
    start = time.perf_counter()
    try:
        while count < frames:
            if budget_s is not None and count >= 2 and time.perf_counter() - start > budget_s:
                break
            t0 = time.perf_counter()
            frame = next(it, None)
            decode_s += time.perf_counter() - t0
            if frame is None:
                break
            count += 1
            outs = pipeline.step(frame)
            t0 = time.perf_counter()
            for o in outs:
                sink.write(o)
            encode_s += time.perf_counter() - t0
            holes += [_hole(o) for o in outs]
            peak = max(peak, report.rss_mb())
        outs = pipeline.flush()
        t0 = time.perf_counter()
        for o in outs:
            sink.write(o)
        sink.close()
        holes += [_hole(o) for o in outs]
        encode_s += time.perf_counter() - t0
    finally:
        src.close()
        out_path.unlink(missing_ok=True)
    total = time.perf_counter() - start
    peak = max(peak, report.rss_mb())
    click_error = None
    if keep is not None:
        keep[:] = holes
    try:
        if future is not None:
            future.result(timeout=0)
    except Exception as exc:  # noqa: BLE001 - recorded, the timing still stands
        click_error = f"{type(exc).__name__}: {exc}"
    times = pipeline.times
    segment_total = times.totals.get("segment", 0.0) / 1000.0
    steady = total - segment_total
    rate = float(info.rate)
    return {
        "label": label, "size": f"{info.width}x{info.height}", "frames": count, "frames_requested": frames,
        "stopped_by_budget": count < frames and budget_s is not None and (info.frames is None or count < info.frames),
        "backends": pipeline.describe()["backends"],
        "ms": {"decode": 1000 * decode_s / max(1, count),
               "segment_per_click": times.mean_ms("segment"),
               "propagate": times.mean_ms("propagate"),
               "inpaint": times.mean_ms("inpaint"),
               "encode": 1000 * encode_s / max(1, count)},
        "counts": dict(times.counts),
        "hole_fraction": float(sum(h.mean() for h in holes) / len(holes)) if holes else 0.0,
        "masks": "given (the classical run's holes at this size)" if given is not None else "click",
        "warning": ("the hole covers under 1% of the frame (the tracker lost or barely selected the object): "
                    "little to inpaint, so this fps is optimistic") if holes and
                   sum(h.mean() for h in holes) / len(holes) < 0.01 else None,
        "fps": count / steady if steady > 0 else None,
        "fps_with_click": count / total if total > 0 else None,
        "seconds": total, "build_s": build_s,
        "delay_frames": pipeline.delay, "delay_s": pipeline.delay / rate if rate else None,
        "rate": rate,
        "rss_before_mb": rss0, "peak_rss_mb": peak, "click_error": click_error,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _hole(output) -> np.ndarray:
    masks = list(output.masks.values())
    if not masks:
        return np.zeros(output.image.shape[:2], bool)
    return np.logical_or.reduce(masks)


def neural_backends(ctx: Context) -> tuple[Backends | None, dict]:
    """The neural backend of each stage that can be created with random weights (else classical)."""
    chosen, notes = {}, {}
    opts = ctx.options(random_weights=True)
    base = ctx.backends
    wanted = {"segmenter": base.segmenter if base.segmenter != "classical" else NEURAL.segmenter,
              "propagator": base.propagator if base.propagator != "classical" else NEURAL.propagator,
              "inpainter": base.inpainter if base.inpainter != "classical" else NEURAL.inpainter}
    for stage, name in wanted.items():
        try:
            registry.create(stage, name, opts)
            chosen[stage] = name
            notes[stage] = {"name": name, "status": "ok (random weights)"}
        except Exception as exc:  # noqa: BLE001 - a backend being written may not import yet
            chosen[stage] = "classical"
            notes[stage] = {"name": name, "status": "skipped", "reason": f"{type(exc).__name__}: {exc}"[:400]}
    if all(v == "classical" for v in chosen.values()):
        return None, notes
    return Backends(chosen["segmenter"], chosen["propagator"], chosen["inpainter"]), notes


def long_run(ctx: Context, path: Path, frames: int) -> dict:
    pipeline = build_pipeline(Backends("classical", "classical", "classical"), ctx.options(), PipelineConfig())
    src = Source(path, loop=True)
    info = src.info
    pipeline.click(CLICK_REL[0] * info.width, CLICK_REL[1] * info.height, object_id=1, frame_index=0)
    every = max(1, frames // 30)
    samples = []
    start = time.perf_counter()
    count = 0

    def sample() -> dict:
        inp = pipeline.inpainter
        return {"frame": count, "t_s": round(time.perf_counter() - start, 2), "rss_mb": round(report.rss_mb(), 1),
                "held_frames": pipeline.held_frames, "references": len(pipeline._references),
                "completed": len(pipeline._completed),
                "propagator_memory_frames": pipeline.propagator.memory_frames() if pipeline.propagator else None,
                "inpainter_cache": sum(len(v) for v in vars(inp).values() if isinstance(v, (dict, list)))}

    try:
        for frame in src:
            pipeline.step(frame)
            count += 1
            if count == 1 or count % every == 0:
                samples.append(sample())
            if count >= frames:
                break
        pipeline.flush()
    finally:
        src.close()
    samples.append(sample())
    seconds = time.perf_counter() - start
    warm = samples[min(len(samples) - 1, max(1, len(samples) // 10))]
    return {"size": f"{info.width}x{info.height}", "frames": count, "clip_frames": info.frames,
            "loops": count / info.frames if info.frames else None, "seconds": seconds,
            "fps": count / seconds if seconds > 0 else None,
            "rss_start_mb": samples[0]["rss_mb"], "rss_warm_mb": warm["rss_mb"], "rss_warm_frame": warm["frame"],
            "rss_end_mb": samples[-1]["rss_mb"], "rss_max_mb": max(s["rss_mb"] for s in samples),
            "rss_growth_after_warmup_mb": samples[-1]["rss_mb"] - warm["rss_mb"],
            "held_frames_end": samples[-1]["held_frames"], "held_frames_max": max(s["held_frames"] for s in samples),
            "propagator_memory_frames_end": samples[-1]["propagator_memory_frames"],
            "inpainted_frames": pipeline.times.counts.get("inpaint", 0),
            "warning": ("the object was lost early (fewer than half the frames had a hole): memory was measured "
                        "mostly without a tracked object; rerun with --resolutions 854x480,... for a long run "
                        "that keeps it") if pipeline.times.counts.get("inpaint", 0) < count / 2 else None,
            "samples": samples, "backends": pipeline.describe()["backends"], "encoder": False}


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    result = ctx.header("speed")
    result["protocol"] = __doc__.split("\n\n", 1)[1].strip()
    result["complete"] = False
    clip = source_clip(ctx)
    result["clip"] = clip.describe()
    resolutions = ctx.resolutions or RESOLUTIONS
    q = 0 if ctx.quick else 1
    n_classical = ctx.frames or FRAMES["classical"][q]
    runs: list[dict] = []
    result["runs"] = runs
    json_path = ctx.results / "speed.json"

    holes_at: dict = {}  # size -> the classical run's output holes (for the neural inpainter)

    def one(label, backends, opts, n, size, budget=None, given=None, keep=None):
        path = scaled(ctx, clip, size, None if not ctx.quick else max(n, 12))
        ctx.say(f"[speed] {label} at {size[0]}x{size[1]}, {n} frames ...")
        try:
            r = measure(ctx, backends, opts, path, n, label, budget, given, keep)
        except Exception as exc:  # noqa: BLE001 - one failing configuration must not hide the others
            log.exception("speed run failed")
            r = {"label": label, "size": f"{size[0]}x{size[1]}", "error": f"{type(exc).__name__}: {exc}"[:400]}
            ctx.say(f"[speed] {label} at {size[0]}x{size[1]} failed: {r['error']}")
        else:
            ctx.say(f"[speed] {label} {r['size']}: {r['fps']:.3g} fps over {r['frames']} frames "
                    f"({', '.join(f'{k} {v:.1f}' for k, v in r['ms'].items())} ms), peak RSS {r['peak_rss_mb']:.0f} MiB")
        runs.append(r)
        report.write_json(json_path, result)  # partial results survive an interrupted run

    # the long run first: its RSS at the start is then not inflated by the larger frames of the runs below
    long_n = ctx.long_frames if ctx.long_frames is not None else LONG_FRAMES[q]
    if long_n > 0:
        size = resolutions[0]
        path = scaled(ctx, clip, size, None if not ctx.quick else max(n_classical, 12))
        ctx.say(f"[speed] long run: {long_n} frames at {size[0]}x{size[1]}, classical, clip looped ...")
        lr = long_run(ctx, path, long_n)
        ctx.say(f"[speed] long run: RSS {lr['rss_start_mb']:.0f} MiB at frame 1, {lr['rss_warm_mb']:.0f} MiB at frame "
                f"{lr['rss_warm_frame']}, {lr['rss_end_mb']:.0f} MiB at frame {lr['frames']}; held frames "
                f"{lr['held_frames_end']}; {lr['inpainted_frames']} frames had a hole; {lr['fps']:.1f} fps")
        result["long_run"] = lr
        report.write_json(json_path, result)

    classical = Backends("classical", "classical", "classical")
    for size in resolutions if ctx.classical else []:
        holes_at[size] = []
        one("classical", classical, ctx.options(), n_classical, size, keep=holes_at[size])

    result["neural"] = {"requested": ctx.neural}
    on_cpu = ctx.device == "cpu"
    if ctx.neural and ctx.quick and on_cpu:
        result["neural"]["skipped"] = ("--quick on CPU: one neural click alone (SAM ViT-B at 1024 px) takes about "
                                       "a minute on this class of machine; run speed without --quick, or with --device cuda")
    elif ctx.neural:
        neural, notes = neural_backends(ctx)
        result["neural"]["backends"] = notes
        if neural is not None:
            n_neural = ctx.frames or FRAMES["neural"][q]
            budget = NEURAL_BUDGET_S if on_cpu else None
            res_neural = resolutions[:1] if ctx.quick else resolutions
            result["neural"].update(
                frames_cap=n_neural, budget_s=budget, resolutions=[f"{w}x{h}" for w, h in res_neural],
                note=f"random weights (same compute, meaningless output); at most {n_neural} frames per resolution"
                     + (f", and no new frame fed after {budget:g} s (CPU), the held ones then flushed" if budget else ""))
            tag = f"{ctx.device}" + (f" {ctx.precision}" if ctx.precision != "fp32" else "")
            for size in res_neural:
                one(f"neural (random weights, {tag})", neural, ctx.options(random_weights=True), n_neural, size, budget)
                # random weights give arbitrary masks (often empty: nothing to inpaint), so the neural
                # inpainter is also timed on the hole the classical backends found at this size
                if neural.inpainter != "classical" and holes_at.get(size):
                    one(f"{neural.inpainter} on the classical holes ({tag})", neural, ctx.options(random_weights=True),
                        n_neural, size, budget, given=holes_at[size][:n_neural])
    result["complete"] = True
    ctx.finish("speed", result, started)
    print_table(result)
    chart(ctx, result)
    return result


HEADERS = ["backends", "size", "frames", "hole %", "decode", "segment/click", "propagate", "inpaint", "encode",
           "fps", "delay", "peak RSS"]


def rows(result: dict) -> list[list]:
    out = []
    for r in result["runs"]:
        if "error" in r:
            out.append([r["label"], r["size"], "-", "-", "-", "-", "-", "-", "-", "failed", "-", "-"])
            continue
        ms = r["ms"]
        out.append([r["label"], r["size"], r["frames"], report.fmt(100 * r.get("hole_fraction", 0.0), 1),
                    report.fmt(ms["decode"], 1),
                    report.fmt(ms["segment_per_click"], 0), report.fmt(ms["propagate"], 1),
                    report.fmt(ms["inpaint"], 1), report.fmt(ms["encode"], 1), report.fmt(r["fps"], 2),
                    f"{r['delay_frames']} fr / {report.fmt(r['delay_s'], 2)} s", f"{r['peak_rss_mb']:.0f} MiB"])
    return out


def print_table(result: dict) -> None:
    print(f"\nspeed (ms per frame; segment ms per click; load average {result['loadavg_start']}"
          f"{', quick' if result['quick'] else ''})")
    print(report.table(HEADERS, rows(result)))
    for r in result["runs"]:
        if r.get("warning"):
            print(f"  {r['label']} {r['size']}: {r['warning']}")
    if result["neural"].get("skipped"):
        print(f"  neural backends skipped: {result['neural']['skipped']}")
    for stage, note in result["neural"].get("backends", {}).items():
        if note["status"] != "ok (random weights)":
            print(f"  neural {stage} {note['name']} skipped: {note.get('reason')}")
    lr = result.get("long_run")
    if lr:
        print(f"long run: {lr['frames']} frames at {lr['size']} (classical, clip looped {lr['loops']:.1f}x): "
              f"RSS {lr['rss_start_mb']:.0f} MiB at start, {lr['rss_end_mb']:.0f} MiB at end "
              f"(max {lr['rss_max_mb']:.0f}); held frames {lr['held_frames_end']} (max {lr['held_frames_max']}), "
              f"propagator memory {lr['propagator_memory_frames_end']} frame(s); {lr['fps']:.1f} fps")
        if lr.get("warning"):
            print(f"  long run: {lr['warning']}")


def chart(ctx: Context, result: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    import numpy as np

    ok = [r for r in result["runs"] if "error" not in r]
    labels = sorted({r["label"] for r in ok}, key=lambda s: (s != "classical", s))
    sizes = [s for s in dict.fromkeys(r["size"] for r in ok)]
    lr = result.get("long_run")
    fig, axes = plt.subplots(1, 2 if lr else 1, figsize=(11 if lr else 6, 4.2))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    x = np.arange(len(sizes))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        vals = [next((r["fps"] for r in ok if r["label"] == label and r["size"] == s), 0.0) or 0.0 for s in sizes]
        bars = ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=label)
        ax.bar_label(bars, fmt="%.2g", fontsize=7)
    ax.set_xticks(x, sizes)
    ax.set_ylabel("end-to-end fps")
    ax.set_title(f"speed (load avg {result['loadavg_start'][0]})", fontsize=10)
    ax.legend(fontsize=8)
    if lr:
        ax2 = axes[1]
        fr = [s["frame"] for s in lr["samples"]]
        ax2.plot(fr, [s["rss_mb"] for s in lr["samples"]], marker=".", label="RSS (MiB)")
        ax2.set_xlabel("frame")
        ax2.set_ylabel("RSS (MiB)")
        ax2.set_ylim(0, max(s["rss_mb"] for s in lr["samples"]) * 1.2)
        ax3 = ax2.twinx()
        ax3.plot(fr, [s["held_frames"] for s in lr["samples"]], color="tab:orange", label="held frames")
        ax3.set_ylabel("held frames")
        ax3.set_ylim(0, max(1, max(s["held_frames"] for s in lr["samples"])) * 1.5)
        ax2.set_title(f"long run: {lr['frames']} frames at {lr['size']}, classical", fontsize=10)
    fig.tight_layout()
    ctx.results.mkdir(parents=True, exist_ok=True)
    fig.savefig(ctx.results / "speed.png", dpi=110)
    plt.close(fig)
