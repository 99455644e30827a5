"""Suite *track*: objects prompted once, tracked on the stream runtime, with and without corrections.

Protocol: for every clip whose masks are segmentation ground truth (dilated inpainting holes
are skipped) and every object id in its first mask, one prompt on frame 0: a positive click
at the object's most interior pixel (maximum of the distance transform), or its ground-truth
box padded by 5% on each side.  The frames go through the product's runtime (a StreamSession,
sequential mode, over the pipeline ``unseen serve`` builds: delay = the inpainter's, 30 frames
of history; the effect is ``fill``, so nothing is inpainted) and the prompts through the
pipeline's click API with a frame index; the masks scored are those the pipeline emits (what
``--masks-out`` writes).
Corrections: a simulated user watches the emitted frames; when an object's J on a frame drops
below 0.5, at most once per 10 frames per object, the user clicks that frame (the pipeline
re-segments there and re-propagates the held frames after it): a positive click at the most
interior pixel of the largest missed region, or a negative one at the most interior pixel of
the largest false region, whichever region is larger.  The first prompt is no correction.
J is the IoU, F the DAVIS boundary F-measure; "first J" is J on frame 0; J, F and J&F are means
over frames 1..N-1, per object.  Per clip: the mean over its objects; overall: the mean over all
objects (DAVIS) and over clips.  Runs: each tracker (the classical one, and the NanoTrack-guided
one when it can be built) x each prompt (click, box) x without/with corrections.
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from unseen.engine.backends.registry import BackendError
from unseen.engine.effects import Effect
from unseen.engine.pipeline import OutputFrame, Pipeline, PipelineConfig
from unseen.engine.runtime import Mode, RuntimeConfig, StreamSession
from unseen.engine.session import Backends, build_pipeline
from unseen.engine.stages import Box, Frame
from unseen.engine.synthetic import interior_point

from . import report
from .common import Context
from .data import segmentation_clips
from .metrics import f_measure, jaccard, mean

log = logging.getLogger("unseen.benchmarks")

QUICK_FRAMES = 20
J_THRESHOLD = 0.5  # the simulated user corrects a frame whose J is below this ...
SPACING = 10  # ... at most once per this many frames per object
BOX_PAD = 0.05  # the box prompt: the first ground-truth box grown by this fraction of its size per side
PROMPTS = ("click", "box")
NANOTRACK = "classical+nanotrack"


# ----------------------------------------------------------------------------- the simulated user
@dataclass(frozen=True)
class Correction:
    """One corrective click of the simulated user."""

    frame: int
    object_id: int
    x: int
    y: int
    positive: bool
    region_px: int  # the area of the region it corrects


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of ``mask`` (empty if the mask is)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def correction_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, bool, int] | None:
    """(x, y, positive, region area): at the most interior pixel of the larger of the largest missed
    region (positive) and the largest false region (negative); None when the masks agree."""
    missed = largest_region(gt & ~pred)
    false = largest_region(pred & ~gt)
    n_missed, n_false = int(missed.sum()), int(false.sum())
    if n_missed == 0 and n_false == 0:
        return None
    region, positive = (missed, True) if n_missed >= n_false else (false, False)
    x, y = interior_point(region)
    return x, y, positive, max(n_missed, n_false)


class SimulatedUser:
    """Looks at each emitted mask; clicks where J < ``threshold``, at most once per ``spacing`` frames per
    object (the first prompt is not a correction and does not count)."""

    def __init__(self, threshold: float = J_THRESHOLD, spacing: int = SPACING) -> None:
        self.threshold = threshold
        self.spacing = spacing
        self._last: dict[int, int] = {}  # object id -> frame of its last correction

    def look(self, frame: int, object_id: int, pred: np.ndarray, gt: np.ndarray) -> Correction | None:
        if jaccard(pred, gt) >= self.threshold:
            return None
        last = self._last.get(object_id)
        if last is not None and frame - last < self.spacing:
            return None
        click = correction_click(pred, gt)
        if click is None:
            return None
        self._last[object_id] = frame
        return Correction(frame, object_id, *click)


# ----------------------------------------------------------------------------- prompts
def padded_box(mask: np.ndarray, pad: float = BOX_PAD) -> Box:
    """The mask's bounding box (x0, y0, x1, y1, pixel edges) grown by ``pad`` x its size per side,
    clipped to the frame."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    dx, dy = pad * (x1 - x0), pad * (y1 - y0)
    h, w = mask.shape
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(w), x1 + dx), min(float(h), y1 + dy)


def first_prompt(pipeline: Pipeline, kind: str, object_id: int, gt0: np.ndarray) -> concurrent.futures.Future:
    """The object's first prompt on frame 0: a click at its most interior pixel, or its padded box alone."""
    if kind == "click":
        x, y = interior_point(gt0)
        return pipeline.click(x, y, object_id=object_id, frame_index=0)
    return pipeline.prompt((), box=padded_box(gt0), object_id=object_id, frame_index=0)


# ----------------------------------------------------------------------------- scoring on the runtime
@dataclass
class ObjectScore:
    """One object's scores over the emitted frames, and the user's corrections."""

    id: int
    J: list[float] = field(default_factory=list)  # per frame, frame 0 first
    F: list[float] = field(default_factory=list)
    corrections: list[tuple[Correction, concurrent.futures.Future]] = field(default_factory=list)


class Scorer:
    """A sink: scores each emitted frame's masks against the ground truth; with a user, passes the user's
    corrective clicks to the pipeline on the frame they saw."""

    def __init__(self, labels: list[np.ndarray], ids: list[int], pipeline: Pipeline,
                 user: SimulatedUser | None) -> None:
        self.labels = labels
        self.pipeline = pipeline
        self.user = user
        self.objects = {oid: ObjectScore(oid) for oid in ids}

    def write(self, output: OutputFrame) -> None:
        t = output.frame.index
        for oid, score in self.objects.items():
            gt = self.labels[t] == oid
            pred = np.asarray(output.masks.get(oid, np.zeros(gt.shape, bool)), bool)
            score.J.append(jaccard(pred, gt))
            score.F.append(f_measure(pred, gt))
            c = self.user.look(t, oid, pred, gt) if self.user is not None else None
            if c is not None:
                future = self.pipeline.click(c.x, c.y, positive=c.positive, object_id=oid, frame_index=t)
                score.corrections.append((c, future))

    def close(self, *, keep: bool = True) -> None:
        pass


@dataclass(frozen=True)
class Run:
    """One configuration of the suite."""

    tracker: str
    prompt: str  # click | box
    corrections: bool

    @property
    def label(self) -> str:
        return f"{self.prompt}{' + corrections' if self.corrections else ''}"


@dataclass
class ObjectResult:
    """One object's scores (J, F, J&F: means over frames 1..N-1) and the corrections the pipeline received."""

    id: int
    area0: int  # its ground-truth area on frame 0
    first_J: float
    J: float
    F: float
    error: str | None  # why its first prompt failed
    applied: list[Correction]
    refused: list[tuple[Correction, str]]
    late: int  # given during the final flush: never applied, not counted

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2

    @property
    def corrections(self) -> int:
        return len(self.applied) + len(self.refused)

    @classmethod
    def of(cls, score: ObjectScore, first: concurrent.futures.Future, area0: int) -> "ObjectResult":
        done = [(c, f) for c, f in score.corrections if f.done()]
        return cls(score.id, area0, score.J[0] if score.J else float("nan"), mean(score.J[1:]), mean(score.F[1:]),
                   str(first.exception()) if first.done() and first.exception() else None,
                   [c for c, f in done if f.exception() is None],
                   [(c, str(f.exception())) for c, f in done if f.exception() is not None],
                   len(score.corrections) - len(done))

    def describe(self) -> dict:
        return {"id": self.id, "area0": self.area0, "first_J": self.first_J, "J": self.J, "F": self.F,
                "JF": self.JF, "error": self.error, "corrections": self.corrections,
                "corrections_refused": len(self.refused), "corrections_late": self.late,
                "clicks": [asdict(c) for c in self.applied] + [{**asdict(c), "refused": why} for c, why in self.refused]}


@dataclass
class ClipResult:
    """One clip under one run: its objects, the tracker that ran (as the registry named it), stage times."""

    clip: str
    size: str
    frames: int
    objects: list[ObjectResult]
    propagator: str
    segment_ms: float | None
    propagate_ms: float | None
    seconds: float

    def mean(self, key: str) -> float:
        return mean(getattr(o, key) for o in self.objects)

    def describe(self) -> dict:
        return {"clip": self.clip, "size": self.size, "frames": self.frames, "propagator": self.propagator,
                "objects": [o.describe() for o in self.objects], **_means(self.objects),
                "max_corrections": max((o.corrections for o in self.objects), default=0),
                "segment_ms": self.segment_ms, "propagate_ms": self.propagate_ms, "seconds": round(self.seconds, 2)}


def track_clip(ctx: Context, run: Run, name: str, frames: list[np.ndarray], labels: list[np.ndarray]) -> ClipResult:
    """One clip through the runtime under ``run``; per-object scores."""
    ids = [int(i) for i in np.unique(labels[0]) if i != 0]
    pipeline = build_pipeline(Backends(ctx.backends.segmenter, run.tracker, "classical"), ctx.options(),
                              PipelineConfig(default_effect=Effect.FILL))
    firsts = {oid: first_prompt(pipeline, run.prompt, oid, labels[0] == oid) for oid in ids}
    scorer = Scorer(labels, ids, pipeline, SimulatedUser() if run.corrections else None)
    t0 = time.perf_counter()
    StreamSession([Frame(t, img) for t, img in enumerate(frames)], pipeline, [scorer], name="track",
                  config=RuntimeConfig(mode=Mode.SEQUENTIAL)).run()
    seconds = time.perf_counter() - t0
    stage_ms = pipeline.times.means()
    return ClipResult(name, f"{frames[0].shape[1]}x{frames[0].shape[0]}", len(frames),
                      [ObjectResult.of(scorer.objects[oid], firsts[oid], int((labels[0] == oid).sum())) for oid in ids],
                      pipeline.describe()["backends"]["propagator"], stage_ms.get("segment"),
                      stage_ms.get("propagate"), seconds)


def _means(objects: list[ObjectResult]) -> dict:
    """Means over objects (DAVIS); ``corrections``: per object."""
    return {k: mean(getattr(o, k) for o in objects) for k in ("first_J", "J", "F", "JF", "corrections")}


# ----------------------------------------------------------------------------- the suite
def trackers(ctx: Context) -> list[str]:
    """The tracker asked for, and the NanoTrack-guided one beside it (tried; skipped when it cannot be built)."""
    base = ctx.backends.propagator
    return [base] if base == NANOTRACK else [base, NANOTRACK]


def _unusable(ctx: Context, tracker: str) -> str | None:
    """None when a pipeline with ``tracker`` can be built, else why not (missing weights, unknown name)."""
    try:
        build_pipeline(Backends(ctx.backends.segmenter, tracker, "classical"), ctx.options())
    except (BackendError, ImportError, FileNotFoundError, ValueError) as exc:
        return str(exc)
    return None


def runs_for(ctx: Context) -> tuple[list[Run], list[dict]]:
    """The runs to make, and those that cannot be made (with the reason)."""
    runs, missing = [], []
    for tracker in trackers(ctx):
        why = _unusable(ctx, tracker)
        if why is not None:
            missing.append({"tracker": tracker, "reason": why})
            continue
        for prompt in PROMPTS:
            runs += [Run(tracker, prompt, False), Run(tracker, prompt, True)]
    return runs, missing


def _overall(clips: list[ClipResult]) -> dict:
    objects = [o for c in clips for o in c.objects]
    return {"objects": len(objects), "clips": len(clips), **_means(objects),
            "JF_clip_mean": mean(c.mean("JF") for c in clips),
            "max_corrections": max((o.corrections for o in objects), default=0)}


def _load(ctx: Context, limit: int | None) -> tuple[list, list[dict]]:
    """(name, frames, labels) of every clip with segmentation ground truth; the skipped clips."""
    loaded = []
    tight, skipped = segmentation_clips(ctx.clips)
    for clip in tight:
        frames = clip.read_frames(limit)
        labels = clip.read_labels(len(frames))
        n = min(len(frames), len(labels))
        loaded.append((clip.name, frames[:n], labels[:n]))
    return loaded, skipped


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    result = ctx.header("track")
    limit = ctx.cap(QUICK_FRAMES)
    result["frames_cap"] = limit
    result["protocol"] = __doc__.split("\n\n", 1)[1].strip()
    clips, result["skipped"] = _load(ctx, limit)
    runs, result["unavailable"] = runs_for(ctx)
    result["runs"] = []
    for r in runs:
        scored = []
        for name, frames, labels in clips:
            ctx.say(f"[track] {r.tracker}, {r.label}: {name} ...")
            c = track_clip(ctx, r, name, frames, labels)
            ctx.say(f"[track] {r.tracker}, {r.label}: {name}: first J {c.mean('first_J'):.3f}, "
                    f"J&F {c.mean('JF'):.3f}, {sum(o.corrections for o in c.objects)} corrections")
            scored.append(c)
        result["runs"].append({**asdict(r), "label": r.label, "clips": [c.describe() for c in scored],
                               "overall": _overall(scored)})
    first = result["runs"][0] if result["runs"] else {"clips": [], "overall": _overall([]), "tracker": None}
    # the headline (what the summary table reads): the first tracker, one click, no corrections
    result["clips"], result["overall"] = first["clips"], first["overall"]
    result["backends"] = {"segmenter": ctx.backends.segmenter, "propagator": first["tracker"],
                          "trackers": sorted({r.tracker for r in runs})}
    ctx.finish("track", result, started)
    print_table(result)
    chart(ctx, result)
    return result


# ----------------------------------------------------------------------------- output
HEADERS = ["tracker", "prompt", "clip", "frames", "objects", "first-frame J", "J", "F", "J&F",
           "corrections / object", "max / object"]


def rows(result: dict) -> list[list]:
    out = []
    for r in result["runs"]:
        o = r["overall"]
        lines = [(c["clip"], c["frames"], len(c["objects"]), c) for c in r["clips"]] + [("mean", "", o["objects"], o)]
        for clip, frames, objects, c in lines:
            extra = [c["corrections"], c["max_corrections"]] if r["corrections"] else ["-", "-"]
            out.append([r["tracker"], r["label"], clip, frames, objects, c["first_J"], c["J"], c["F"], c["JF"], *extra])
    return out


def print_table(result: dict) -> None:
    print(f"\ntrack ({result['backends']['segmenter']} segmenter; {report.machine_line(result['machine'])}"
          f"{'; quick' if result['quick'] else ''})")
    print(report.table(HEADERS, rows(result)))
    for s in result["skipped"]:
        print(f"  skipped {s['clip']}: {s['reason']}")
    for u in result["unavailable"]:
        print(f"  not run: {u['tracker']}{' ' + u['prompt'] if 'prompt' in u else ''}: {u['reason']}")


def chart(ctx: Context, result: dict) -> None:
    runs = result["runs"]
    if not runs:
        return
    names = [c["clip"] for c in runs[0]["clips"]] + ["mean"]
    series = {f"{r['tracker']}, {r['label']}": [c["JF"] for c in r["clips"]] + [r["overall"]["JF"]] for r in runs}
    report.bar_chart(ctx.results / "track.png", f"track: J&F ({result['backends']['segmenter']} segmenter)",
                     names, series, "J&F (0-1)")
