"""Suite *track*: one click per object, segment, propagate; J on the first frame, J/F/J&F after.

Protocol: for every clip whose masks are segmentation ground truth (dilated inpainting
holes are skipped) and every object id in its first mask, one positive click at the
object's most interior pixel (maximum of the distance transform of the first mask).
All objects of a clip are clicked on frame 0 and propagated together, as the product
does.  The click reaches the segmenter as it does in the live product, where the user
clicks a frame already shown: the frame 2 later is given as a motion neighbour.
J is the IoU, F the DAVIS boundary F-measure; "first J" scores the segmentation alone
on frame 0; J, F and J&F are means over frames 1..N-1, per object.  Per clip: the mean
over its objects; overall: the mean over all objects (DAVIS) and over clips.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from unseen.engine.backends import registry
from unseen.engine.stages import Click, Frame, SelectionError
from unseen.engine.synthetic import interior_point

from . import report
from .common import Context
from .metrics import f_measure, jaccard, mean

log = logging.getLogger("unseen.benchmarks")

QUICK_FRAMES = 20


def _track_clip(ctx: Context, clip, segmenter, propagator, limit: int | None) -> dict:
    frames = clip.read_frames(limit)
    labels = clip.read_labels(len(frames))
    n = min(len(frames), len(labels))
    frames, labels = frames[:n], labels[:n]
    ids = [int(i) for i in np.unique(labels[0]) if i != 0]
    f0 = Frame(0, frames[0])
    neighbours = [Frame(2, frames[2])] if n > 2 else []
    first: dict[int, np.ndarray] = {}
    clicks, errors = {}, {}
    t0 = time.perf_counter()
    for oid in ids:
        gt0 = labels[0] == oid
        x, y = interior_point(gt0)
        clicks[oid] = (x, y)
        try:
            first[oid] = segmenter.segment(f0, [Click(float(x), float(y), True)], neighbours=neighbours)
        except SelectionError as exc:
            errors[oid] = str(exc)
            first[oid] = np.zeros_like(gt0)
    segment_s = time.perf_counter() - t0
    propagator.reset()
    propagator.seed(f0, first)
    per_obj = {oid: {"J": [], "F": []} for oid in ids}
    t0 = time.perf_counter()
    for t in range(1, n):
        pred = propagator.step(Frame(t, frames[t]))
        for oid in ids:
            p = pred.get(oid, np.zeros(labels[t].shape, bool))
            g = labels[t] == oid
            per_obj[oid]["J"].append(jaccard(p, g))
            per_obj[oid]["F"].append(f_measure(p, g))
    propagate_s = time.perf_counter() - t0
    objects = []
    for oid in ids:
        j, f = mean(per_obj[oid]["J"]), mean(per_obj[oid]["F"])
        objects.append({"id": oid, "click": list(clicks[oid]), "first_J": jaccard(first[oid], labels[0] == oid),
                        "J": j, "F": f, "JF": (j + f) / 2, "area0": int((labels[0] == oid).sum()),
                        "error": errors.get(oid)})
    return {
        "clip": clip.name, "size": f"{clip.width}x{clip.height}", "frames": n, "objects": objects,
        "first_J": mean(o["first_J"] for o in objects), "J": mean(o["J"] for o in objects),
        "F": mean(o["F"] for o in objects), "JF": mean(o["JF"] for o in objects),
        "segment_ms_per_click": 1000 * segment_s / max(1, len(ids)),
        "propagate_ms_per_frame": 1000 * propagate_s / max(1, n - 1),
    }


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    result = ctx.header("track")
    opts = ctx.options()
    segmenter = registry.create("segmenter", ctx.backends.segmenter, opts)
    propagator = registry.create("propagator", ctx.backends.propagator, opts)
    result["backends"] = {"segmenter": segmenter.name, "propagator": propagator.name}
    limit = ctx.cap(QUICK_FRAMES)
    result["frames_cap"] = limit
    result["protocol"] = __doc__.split("\n\n", 1)[1].strip()
    clips, skipped = [], []
    for clip in ctx.clips:
        if not clip.has_masks:
            continue
        if clip.dilated:
            skipped.append({"clip": clip.name, "reason": "masks are dilated inpainting holes, not segmentation GT"})
            continue
        ctx.say(f"[track] {clip.name} ...")
        r = _track_clip(ctx, clip, segmenter, propagator, limit)
        ctx.say(f"[track] {clip.name}: {len(r['objects'])} object(s), first J {r['first_J']:.3f}, "
                f"J {r['J']:.3f}, F {r['F']:.3f}, J&F {r['JF']:.3f}")
        clips.append(r)
    result["clips"] = clips
    result["skipped"] = skipped
    objects = [o for c in clips for o in c["objects"]]
    result["overall"] = {
        "objects": len(objects), "clips": len(clips),
        "first_J": mean(o["first_J"] for o in objects), "J": mean(o["J"] for o in objects),
        "F": mean(o["F"] for o in objects), "JF": mean(o["JF"] for o in objects),
        "JF_clip_mean": mean(c["JF"] for c in clips),
    }
    ctx.finish("track", result, started)
    print_table(result)
    chart(ctx, result)
    return result


def rows(result: dict) -> list[list]:
    out = [[c["clip"], c["size"], c["frames"], len(c["objects"]), c["first_J"], c["J"], c["F"], c["JF"]]
           for c in result["clips"]]
    o = result["overall"]
    out.append(["overall (objects)", "", "", o["objects"], o["first_J"], o["J"], o["F"], o["JF"]])
    return out


HEADERS = ["clip", "size", "frames", "objects", "first-frame J", "J", "F", "J&F"]


def print_table(result: dict) -> None:
    b = result["backends"]
    print(f"\ntrack ({b['segmenter']} segmenter, {b['propagator']} propagator"
          f"{', quick' if result['quick'] else ''})")
    print(report.table(HEADERS, rows(result)))
    for s in result["skipped"]:
        print(f"  skipped {s['clip']}: {s['reason']}")


def chart(ctx: Context, result: dict) -> None:
    names = [c["clip"] for c in result["clips"]] + ["overall"]
    o = result["overall"]
    report.bar_chart(ctx.results / "track.png", f"track: {result['backends']['segmenter']} + "
                     f"{result['backends']['propagator']}", names,
                     {"first-frame J": [c["first_J"] for c in result["clips"]] + [o["first_J"]],
                      "J": [c["J"] for c in result["clips"]] + [o["J"]],
                      "F": [c["F"] for c in result["clips"]] + [o["F"]],
                      "J&F": [c["JF"] for c in result["clips"]] + [o["JF"]]}, "score (0-1)")
