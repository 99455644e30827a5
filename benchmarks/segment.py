"""Suite *segment*: first-frame J of one prompt per object, a click or a box, and the time it takes.

Protocol: for every clip whose masks are segmentation ground truth (dilated inpainting holes are
skipped) and every object id in its first mask, two prompts on frame 0, each segmented on its own:
one positive click at the object's most interior pixel (maximum of the distance transform), and a
box, the object's ground-truth bounding box padded by 5% of its width and height on each side
(clipped to the frame).  As in the product (``unseen run``: a prompt waits for the frames after it), the
frames 3, 6 and 12 later are given as motion neighbours (engine/pipeline.py NEIGHBOUR_OFFSETS).
J is the IoU with the first mask; a prompt that selects nothing scores 0.  Overall: the mean over
all objects; time: the mean wall and CPU (this process) time of one segmentation.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from unseen.engine.backends import registry
from unseen.engine.pipeline import NEIGHBOUR_OFFSETS
from unseen.engine.stages import Box, Click, Frame, SelectionError
from unseen.engine.synthetic import interior_point

from . import report
from .common import Context
from .data import segmentation_clips
from .metrics import jaccard, mean

log = logging.getLogger("unseen.benchmarks")

BOX_PAD = 0.05  # of the object's box width and height, on each side


@dataclass(frozen=True)
class Prompt:
    clicks: tuple[Click, ...]
    box: Box | None


def gt_box(mask: np.ndarray, pad: float = BOX_PAD) -> Box:
    """The mask's bounding box (x0, y0, x1, y1, exclusive ends) padded by ``pad`` of its size, in the frame."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    h, w = mask.shape
    return max(0.0, x0 - px), max(0.0, y0 - py), min(float(w), x1 + px), min(float(h), y1 + py)


def prompts(mask: np.ndarray) -> dict[str, Prompt]:
    x, y = interior_point(mask)
    return {"click": Prompt((Click(float(x), float(y), True),), None), "box": Prompt((), gt_box(mask))}


def _score(segmenter, frame: Frame, neighbours: list[Frame], prompt: Prompt, gt: np.ndarray) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        mask = segmenter.segment(frame, list(prompt.clicks), neighbours=neighbours, box=prompt.box)
        error = None
    except SelectionError as exc:
        mask, error = np.zeros_like(gt), str(exc)
    return {"J": jaccard(mask, gt), "s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "error": error}


def _segment_clip(clip, segmenter) -> dict:
    frames = clip.read_frames(max(NEIGHBOUR_OFFSETS) + 1)
    labels = clip.read_labels(1)[0]
    f0 = Frame(0, frames[0])
    neighbours = [Frame(k, frames[k]) for k in NEIGHBOUR_OFFSETS if 0 < k < len(frames)]
    objects = []
    for oid in (int(i) for i in np.unique(labels) if i != 0):
        gt = labels == oid
        row: dict = {"id": oid, "area": int(gt.sum())}
        given = prompts(gt)
        for kind, prompt in given.items():
            row.update({f"{kind}_{k}": v for k, v in _score(segmenter, f0, neighbours, prompt, gt).items()})
        row["click"] = [given["click"].clicks[0].x, given["click"].clicks[0].y]
        row["box"] = list(given["box"].box)
        objects.append(row)
    return {"clip": clip.name, "size": f"{clip.width}x{clip.height}", "objects": objects,
            "click_J": mean(o["click_J"] for o in objects), "box_J": mean(o["box_J"] for o in objects),
            **_times(objects)}


def _times(objects: list[dict]) -> dict:
    """Mean and largest wall time, and mean CPU time, per click and per box, in ms."""
    out = {}
    for kind in ("click", "box"):
        out[f"{kind}_ms"] = 1000 * mean(o[f"{kind}_s"] for o in objects)
        out[f"{kind}_ms_max"] = 1000 * max((o[f"{kind}_s"] for o in objects), default=0.0)
        out[f"{kind}_cpu_ms"] = 1000 * mean(o[f"{kind}_cpu_s"] for o in objects)
    return out


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    result = ctx.header("segment")
    segmenter = registry.create("segmenter", ctx.backends.segmenter, ctx.options())
    result["backends"] = {"segmenter": segmenter.name}
    result["protocol"] = __doc__.split("\n\n", 1)[1].strip()
    clips = []
    tight, skipped = segmentation_clips(ctx.clips)
    for clip in tight:
        r = _segment_clip(clip, segmenter)
        ctx.say(f"[segment] {clip.name}: {len(r['objects'])} object(s), click J {r['click_J']:.3f} "
                f"({r['click_ms']:.0f} ms), box J {r['box_J']:.3f} ({r['box_ms']:.0f} ms)")
        clips.append(r)
    result["clips"], result["skipped"] = clips, skipped
    objects = [o for c in clips for o in c["objects"]]
    result["overall"] = {
        "objects": len(objects), "clips": len(clips),
        "click_J": mean(o["click_J"] for o in objects), "box_J": mean(o["box_J"] for o in objects),
        "click_J_clip_mean": mean(c["click_J"] for c in clips), "box_J_clip_mean": mean(c["box_J"] for c in clips),
        **_times(objects),
    }
    ctx.finish("segment", result, started)
    print_table(result)
    chart(ctx, result)
    return result


HEADERS = ["clip", "size", "object", "area (px)", "click J", "box J", "click ms (CPU)", "box ms (CPU)"]


def rows(result: dict) -> list[list]:
    ms = lambda wall, cpu: f"{1000 * wall:.0f} ({1000 * cpu:.0f})"  # noqa: E731
    out = []
    for c in result["clips"]:
        for o in c["objects"]:
            out.append([c["clip"], c["size"], o["id"], o["area"], o["click_J"], o["box_J"],
                        ms(o["click_s"], o["click_cpu_s"]), ms(o["box_s"], o["box_cpu_s"])])
    o = result["overall"]
    out.append(["overall (objects)", "", o["objects"], "", o["click_J"], o["box_J"],
                ms(o["click_ms"] / 1000, o["click_cpu_ms"] / 1000), ms(o["box_ms"] / 1000, o["box_cpu_ms"] / 1000)])
    return out


def print_table(result: dict) -> None:
    print(f"\nsegment ({result['backends']['segmenter']} segmenter, frame 0, one prompt per object)")
    print(report.table(HEADERS, rows(result)))
    for s in result["skipped"]:
        print(f"  skipped {s['clip']}: {s['reason']}")


def chart(ctx: Context, result: dict) -> None:
    names = [c["clip"] for c in result["clips"]] + ["overall"]
    o = result["overall"]
    report.bar_chart(ctx.results / "segment.png", f"segment: {result['backends']['segmenter']}, first-frame J",
                     names, {"one click": [c["click_J"] for c in result["clips"]] + [o["click_J"]],
                             "box": [c["box_J"] for c in result["clips"]] + [o["box_J"]]}, "J (0-1)")
