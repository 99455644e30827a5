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
size, and the three neural stages together with every stage running but the inpainter filling
those holes (benchmarks/given.py: the end-to-end figure of a realistic run; ``hole_fraction``
says how much of the frame each run had to fill).  On a GPU the neural runs are at 854x480,
1280x720 and 1920x1080 (holes resized from the largest classical run), plus 4 streams at once
at 854x480 in one process (models shared), each stream's fps reported.
Every run goes through the stream runtime (engine/runtime.py).  At each size the classical
backends run side by side on the same clip: the pass-through (decode and encode only: the limit
of this machine), the sequential order (one thread) and the pipelined runtime (decode, track, emit
and write workers; the run listed in ``runs``), with the same thread settings (stated), their fps
ratio, and each worker's busy ms per frame and utilisation; ``--trace FILE`` writes every run's
stage calls as a Chrome trace.
Long run (first, in a fresh process): the clip at the first resolution (432x240) looped for at least 3,000 frames
with the classical backends (decode and pipeline, no encoder), sampling RSS, held frames
and propagator memory.
The machine's load average is recorded: other work on the machine slows every figure.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from unseen.engine.backends import registry
from unseen.engine.media import FileSink, Source, StreamInfo
from unseen.engine.pipeline import OutputFrame, Pipeline, PipelineConfig, StageTimes
from unseen.engine.runtime import Mode, RuntimeConfig, StreamSession, ThreadSettings
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Frame

from . import report
from .common import Context
from .given import GivenPropagator, GivenSegmenter, Holes
from .gpu_busy import GpuBusy
from .data import Clip

log = logging.getLogger("unseen.benchmarks")

RESOLUTIONS = [(432, 240), (854, 480), (1280, 720)]
CLICK_REL = (0.27, 0.55)  # the woman on frame 0 of dog-walk-720p
NEURAL = Backends("sam:vit_b", "aot:r50_deaotl", "e2fgvi:hq")
FRAMES = {"classical": (12, 100), "neural": (6, 8)}  # (quick, full) frames per resolution
NEURAL_BUDGET_S = 150.0  # neural on CPU: stop feeding frames after this long (per resolution)
LONG_FRAMES = (200, 3000)
CUDA_RESOLUTIONS = [(854, 480), (1280, 720), (1920, 1080)]  # the neural runs on a GPU
STREAMS = (4, (854, 480))  # streams served at once by one process (the neural runs on a GPU)


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


def threads(ctx: Context) -> ThreadSettings:
    """The same in every mode: ``--threads N`` for OpenCV and torch, else the runtime's defaults."""
    return ThreadSettings() if ctx.threads is None else ThreadSettings(opencv=ctx.threads, torch=ctx.threads)


class PassThrough:
    """Decode -> encode only (no tracking, no inpainting): the limit of this machine for the clip."""

    delay = 0

    def __init__(self) -> None:
        self.times = StageTimes()
        self.frames_in = self.frames_out = self.degraded = 0

    def track(self, frame: Frame, *, hurry=False) -> list[Frame]:
        self.frames_in += 1
        return [frame]

    def finish(self) -> list[Frame]:
        return []

    def emit(self, frame: Frame) -> OutputFrame:
        self.frames_out += 1
        return OutputFrame(frame, frame.image, {})

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"backends": {"segmenter": None, "propagator": None, "inpainter": None}}


class Limited:
    """The first ``frames`` frames of a source; with ``budget_s``, none after that many seconds (at least 2)."""

    def __init__(self, source: Source, frames: int, budget_s: float | None = None) -> None:
        self.source = source
        self.frames = frames
        self.budget_s = budget_s
        self.count = 0
        self.uri = source.uri
        self.on_audio = None

    def __iter__(self):
        start = time.perf_counter()
        for frame in self.source:
            if self.count >= self.frames or (self.budget_s is not None and self.count >= 2
                                             and time.perf_counter() - start > self.budget_s):
                return
            self.count += 1
            yield frame

    @property
    def skipped(self) -> int:
        return self.source.skipped

    @property
    def truncated(self):
        return self.source.truncated

    def close(self) -> None:
        self.source.close()


class Probe:
    """A sink that keeps each output's masks and samples the peak RSS (cheap: the hole is computed later)."""

    def __init__(self) -> None:
        self.masks: list = []
        self.peak = report.rss_mb()

    def write(self, output: OutputFrame) -> None:
        self.masks.append((output.image.shape[:2], list(output.masks.values())))
        self.peak = max(self.peak, report.rss_mb())

    def close(self, *, keep: bool = True) -> None:
        pass


def measure(ctx: Context, backends: Backends | None, opts, path: Path, frames: int, label: str,
            budget_s: float | None = None, given: list | None = None, keep: list | None = None, *,
            mode: Mode = Mode.PIPELINED, traces: list | None = None, through: list | None = None) -> dict:
    """Decode -> pipeline (one click) -> encode for ``frames`` frames on the runtime in ``mode``.

    ``backends`` None: the pass-through (decode and encode only).  With ``budget_s``, no new frame is
    fed once that many seconds have passed (at least 2 frames are fed); the frames still held are then
    flushed (inpainted) as at the end of a stream.  With ``given`` (per-frame holes), only the inpainter
    runs, on those holes (no click).  With ``through`` (per-frame holes), every stage runs (one click,
    segmented; every frame propagated) but the inpainter fills those holes (benchmarks/given.py).  ``keep`` receives the output holes (to give them to another
    inpainter at the same size).  ``traces`` receives (label, Chrome trace) of the run."""
    rss0 = report.rss_mb()
    t_build = time.perf_counter()
    if backends is None:
        pipeline = PassThrough()
    elif given is not None:
        inpainter = registry.create("inpainter", backends.inpainter, opts)
        pipeline = Pipeline(None, None, inpainter, PipelineConfig(),
                            given_masks=lambda i: {1: given[min(i, len(given) - 1)]})
    elif through is not None:
        holes = Holes(through)
        pipeline = Pipeline(GivenSegmenter(registry.create("segmenter", backends.segmenter, opts), holes),
                            GivenPropagator(registry.create("propagator", backends.propagator, opts), holes),
                            registry.create("inpainter", backends.inpainter, opts), PipelineConfig())
    else:
        pipeline = build_pipeline(backends, opts, PipelineConfig())
    build_s = time.perf_counter() - t_build
    src = Source(path)
    info = src.info
    out_path = ctx.results / "_cache" / f"speed-out-{os.getpid()}-{threading.get_ident()}.mp4"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    probe = Probe()
    future = None
    if backends is not None and given is None:
        future = pipeline.click(CLICK_REL[0] * info.width, CLICK_REL[1] * info.height, object_id=1, frame_index=0)
    source = Limited(src, frames, budget_s)
    session = StreamSession(source, pipeline, [FileSink(out_path, info), probe],
                            config=RuntimeConfig(mode=mode, threads=threads(ctx), trace=traces is not None))
    try:
        with GpuBusy.on(ctx.device) as busy:
            result = session.run()
    finally:
        out_path.unlink(missing_ok=True)
    if traces is not None:
        traces.append((f"{label} {mode.value} {info.width}x{info.height}", session.tracer.chrome()))
    holes = [_hole(shape, masks) for shape, masks in probe.masks]
    count, total = source.count, result.seconds
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
    workers = result.workers
    return {
        "label": label, "mode": mode.value, "size": f"{info.width}x{info.height}", "frames": count,
        "frames_requested": frames,
        "stopped_by_budget": count < frames and budget_s is not None and (info.frames is None or count < info.frames),
        "backends": pipeline.describe()["backends"],
        "ms": {"decode": 1000 * workers["decode"].busy_s / max(1, count) if "decode" in workers else None,
               "segment_per_click": times.mean_ms("segment"),
               "propagate": times.mean_ms("propagate"),
               "inpaint": times.mean_ms("inpaint"),
               "encode": 1000 * workers["write"].busy_s / max(1, count) if "write" in workers else None},
        "counts": dict(times.counts),
        "workers": {name: dict(w.describe(), ms_per_frame=round(1000 * w.busy_s / max(1, count), 2))
                    for name, w in workers.items()},
        "queue_high_water": result.queue_high_water, "queue_items": RuntimeConfig().queue_items,
        "threads": session.threads,
        "device_context": session.device,  # where the workers' device contexts are (a CUDA stream each there)
        "gpu_busy_pct": busy.percent,  # NVML utilisation, mean of samples over the run (None: CPU, no NVML)
        "hole_fraction": float(sum(h.mean() for h in holes) / len(holes)) if holes else 0.0,
        "masks": "none (pass-through)" if backends is None else
                 "given (the classical run's holes at this size)" if given is not None else
                 "click, then every stage runs but the inpainter fills the classical run's holes at this size"
                 if through is not None else "click",
        "warning": ("the hole covers under 1% of the frame (the tracker lost or barely selected the object): "
                    "little to inpaint, so this fps is optimistic") if backends is not None and holes and
                   sum(h.mean() for h in holes) / len(holes) < 0.01 else None,
        "fps": count / steady if steady > 0 else None,
        "fps_with_click": count / total if total > 0 else None,
        "seconds": total, "build_s": build_s,
        "delay_frames": pipeline.delay, "delay_s": pipeline.delay / rate if rate else None,
        "rate": rate,
        "rss_before_mb": rss0, "peak_rss_mb": max(probe.peak, report.rss_mb()), "click_error": click_error,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def concurrent(ctx: Context, backends: Backends, opts, path: Path, frames: int, label: str, streams: int,
               through: list | None = None) -> dict:
    """``streams`` streams of the same clip at once in one process (threads; the models shared as ``unseen
    serve`` shares them), each measured as :func:`measure` does: every stream's fps, and the slowest."""
    with ThreadPoolExecutor(streams, thread_name_prefix="speed-stream") as pool:
        runs = list(pool.map(lambda i: measure(ctx, backends, opts, path, frames, f"{label} #{i + 1}",
                                               through=through), range(streams)))
    fps = [r["fps"] for r in runs]
    return {"label": label, "streams": streams, "size": runs[0]["size"], "frames": frames,
            "fps_each": fps, "fps_min": min((f for f in fps if f is not None), default=None), "runs": runs}


def resized(holes: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Holes brought to ``size`` = (w, h) (nearest neighbour): a size the classical runs did not cover."""
    return [cv2.resize(h.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for h in holes]


def _hole(shape: tuple[int, int], masks: list) -> np.ndarray:
    if not masks:
        return np.zeros(shape, bool)
    return np.logical_or.reduce(masks)


def compare(runs: list[dict]) -> dict:
    """The pass-through, sequential and pipelined runs of one size: fps, their ratio, each worker's share."""
    def kind(r: dict, i: int) -> str:
        return ("pass-through", "sequential", "pipelined")[i] if len(runs) == 3 else str(r.get("mode"))

    by = {kind(r, i): r for i, r in enumerate(runs)}
    fps = {k: r.get("fps") for k, r in by.items()}
    errors = {k: r["error"] for k, r in by.items() if "error" in r}
    seq, pip = fps.get("sequential"), fps.get("pipelined")
    return {"size": runs[-1].get("size"), "frames": runs[-1].get("frames"), "fps": fps,
            "pipelined_over_sequential": pip / seq if pip and seq else None,
            "pipelined_over_pass_through": pip / fps["pass-through"] if pip and fps.get("pass-through") else None,
            "workers": {k: r.get("workers", {}) for k, r in by.items()},
            "threads": runs[-1].get("threads"), "errors": errors}


def write_trace(path: Path, traces: list[tuple[str, dict]]) -> None:
    """Every run's stage calls in one Chrome trace (one process per run, one thread per worker)."""
    events = []
    for pid, (label, trace) in enumerate(traces, 1):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}})
        events += [dict(e, pid=pid) for e in trace["traceEvents"]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))


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
    """The looped clip on the runtime (sequential: memory is sampled on the tracker's thread after each frame)."""
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
                "held_frames": pipeline.held_frames, "references": pipeline.references,
                "completed": pipeline.emitter.completed_frames,
                "propagator_memory_frames": pipeline.propagator.memory_frames() if pipeline.propagator else None,
                "inpainter_cache": sum(len(v) for v in vars(inp).values() if isinstance(v, (dict, list)))}

    def tracked(frame: Frame) -> None:
        nonlocal count
        count += 1
        if count == 1 or count % every == 0:
            samples.append(sample())

    StreamSession(Limited(src, frames), pipeline, config=RuntimeConfig(mode=Mode.SEQUENTIAL, threads=threads(ctx)),
                  on_tracked=tracked).run()
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

    traces: list | None = [] if ctx.trace is not None else None
    modes: list[dict] = []
    result["modes"] = modes

    def one(label, backends, opts, n, size, budget=None, given=None, keep=None, mode=Mode.PIPELINED, into=runs,
            through=None):
        path = scaled(ctx, clip, size, None if not ctx.quick else max(n, 12))
        ctx.say(f"[speed] {label} ({mode.value}) at {size[0]}x{size[1]}, {n} frames ...")
        try:
            r = measure(ctx, backends, opts, path, n, label, budget, given, keep, mode=mode, traces=traces,
                        through=through)
        except Exception as exc:  # noqa: BLE001 - one failing configuration must not hide the others
            log.exception("speed run failed")
            r = {"label": label, "size": f"{size[0]}x{size[1]}", "error": f"{type(exc).__name__}: {exc}"[:400]}
            ctx.say(f"[speed] {label} at {size[0]}x{size[1]} failed: {r['error']}")
        else:
            ctx.say(f"[speed] {label} ({mode.value}) {r['size']}: {r['fps']:.3g} fps over {r['frames']} frames ("
                    f"{', '.join(f'{k} {v:.1f}' for k, v in r['ms'].items() if v is not None)} ms), peak RSS "
                    f"{r['peak_rss_mb']:.0f} MiB")
        into.append(r)
        report.write_json(json_path, result)  # partial results survive an interrupted run
        return r

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
        # side by side on the same clip: the pass-through (decode + encode: this machine's limit), the
        # sequential order and the pipelined runtime (the run kept in ``runs``)
        side: list[dict] = []
        one("pass-through", None, None, n_classical, size, into=side)
        one("classical", classical, ctx.options(), n_classical, size, mode=Mode.SEQUENTIAL, into=side)
        holes_at[size] = []
        pipelined = one("classical", classical, ctx.options(), n_classical, size, keep=holes_at[size])
        modes.append(compare(side + [pipelined]))
        report.write_json(json_path, result)
    if traces:
        write_trace(ctx.trace, traces)
        result["trace"] = str(ctx.trace)

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
            res_neural = (resolutions[:1] if ctx.quick else CUDA_RESOLUTIONS if not on_cpu and not ctx.resolutions
                          else resolutions)
            result["neural"].update(
                frames_cap=n_neural, budget_s=budget, resolutions=[f"{w}x{h}" for w, h in res_neural],
                note=f"random weights (same compute, meaningless output); at most {n_neural} frames per resolution"
                     + (f", and no new frame fed after {budget:g} s (CPU), the held ones then flushed" if budget else ""))
            tag = f"{ctx.device}" + (f" {ctx.precision}" if ctx.precision != "fp32" else "")
            for size in res_neural:
                if holes_at and not holes_at.get(size):
                    holes_at[size] = resized(max(holes_at.values(), key=lambda h: h[0].size if h else 0), size)
                one(f"neural (random weights, {tag})", neural, ctx.options(random_weights=True), n_neural, size, budget)
                # random weights give arbitrary masks (often empty: nothing to inpaint), so the neural
                # inpainter is also timed on the hole the classical backends found at this size
                if neural.inpainter != "classical" and holes_at.get(size):
                    one(f"{neural.inpainter} on the classical holes ({tag})", neural, ctx.options(random_weights=True),
                        n_neural, size, budget, given=holes_at[size][:n_neural])
                    # the end-to-end figure of a realistic run: all three stages, holes of a real size
                    one(f"neural, every stage, on the classical holes ({tag})", neural,
                        ctx.options(random_weights=True), n_neural, size, budget, through=holes_at[size][:n_neural])
            count, size = STREAMS
            if not on_cpu and holes_at.get(size):
                path = scaled(ctx, clip, size, None)
                ctx.say(f"[speed] {count} neural streams at once at {size[0]}x{size[1]} ...")
                result["neural"]["streams"] = concurrent(
                    ctx, neural, ctx.options(random_weights=True), path, n_neural,
                    f"neural, every stage, on the classical holes ({tag})", count, through=holes_at[size][:n_neural])
                report.write_json(json_path, result)
    result["complete"] = True
    ctx.finish("speed", result, started)
    print_table(result)
    chart(ctx, result)
    return result


HEADERS = ["backends", "size", "frames", "hole %", "decode", "segment/click", "propagate", "inpaint", "encode",
           "fps", "delay", "peak RSS", "GPU busy"]


def rows(result: dict) -> list[list]:
    out = []
    for r in result["runs"]:
        if "error" in r:
            out.append([r["label"], r["size"], "-", "-", "-", "-", "-", "-", "-", "failed", "-", "-", "-"])
            continue
        ms = r["ms"]
        out.append([r["label"], r["size"], r["frames"], report.fmt(100 * r.get("hole_fraction", 0.0), 1),
                    report.fmt(ms["decode"], 1),
                    report.fmt(ms["segment_per_click"], 0), report.fmt(ms["propagate"], 1),
                    report.fmt(ms["inpaint"], 1), report.fmt(ms["encode"], 1), report.fmt(r["fps"], 2),
                    f"{r['delay_frames']} fr / {report.fmt(r['delay_s'], 2)} s", f"{r['peak_rss_mb']:.0f} MiB",
                    "-" if r.get("gpu_busy_pct") is None else f"{r['gpu_busy_pct']:.0f}%"])
    return out


MODE_HEADERS = ["size", "frames", "pass-through fps", "sequential fps", "pipelined fps", "pipelined / sequential",
                "pipelined workers: ms/frame (busy %)", "sequential stages: ms/frame"]
WORKERS = ("decode", "track", "emit", "write")


def mode_rows(result: dict) -> list[list]:
    out = []
    for m in result.get("modes", []):
        fps, workers = m["fps"], m["workers"]
        pip = workers.get("pipelined", {})
        seq = workers.get("sequential", {})
        out.append([m["size"], m["frames"], report.fmt(fps.get("pass-through"), 2), report.fmt(fps.get("sequential"), 2),
                    report.fmt(fps.get("pipelined"), 2), report.fmt(m["pipelined_over_sequential"], 2),
                    ", ".join(f"{w} {pip[w]['ms_per_frame']:.1f} ({100 * pip[w]['utilisation']:.0f}%)"
                              for w in WORKERS if w in pip),
                    ", ".join(f"{w} {seq[w]['ms_per_frame']:.1f}" for w in WORKERS if w in seq)])
    return out


def print_table(result: dict) -> None:
    print(f"\nspeed (ms per frame; segment ms per click; load average {result['loadavg_start']}"
          f"{', quick' if result['quick'] else ''})")
    print(report.table(HEADERS, rows(result)))
    if result.get("modes"):
        threads = result["modes"][0].get("threads")
        print(f"\nsequential vs pipelined on the same clip (threads in both: {threads}; track = propagate + hole + "
              f"clicks, emit = inpaint + effects, write = encode)")
        print(report.table(MODE_HEADERS, mode_rows(result)))
    for r in result["runs"]:
        if r.get("warning"):
            print(f"  {r['label']} {r['size']}: {r['warning']}")
    if result["neural"].get("skipped"):
        print(f"  neural backends skipped: {result['neural']['skipped']}")
    for stage, note in result["neural"].get("backends", {}).items():
        if note["status"] != "ok (random weights)":
            print(f"  neural {stage} {note['name']} skipped: {note.get('reason')}")
    streams = result["neural"].get("streams")
    if streams:
        print(f"{streams['streams']} streams at once at {streams['size']} ({streams['label']}): fps each "
              f"{', '.join(report.fmt(f, 1) for f in streams['fps_each'])}; slowest {report.fmt(streams['fps_min'], 1)}")
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
