"""Suite *remove*: paste an object onto a background clip, click it, remove it, compare.

Protocol: pairs (object clip A, background clip B) are chosen deterministically
(``data.pairs``: every clip is a background once; its object clip is the next clip in
name order with tight masks).  A's frames and masks are resized to B's size; A's
largest object on its first mask is pasted frame by frame (its pixels under its mask)
onto B's frames, so B's original frames are the ground truth.  One positive click at
the pasted object's most interior pixel on frame 0, submitted once frame 2 has arrived
(as a live user clicks a frame already shown), then the whole pipeline (segmenter,
propagator, inpainter, fixed delay line).  Scores per frame, averaged over the frames:
PSNR and SSIM inside the pasted object's region dilated by the inpainter's dilation,
and over the whole frame; flicker = mean |frame t - frame t-1| inside the region (union
of t-1 and t), for the output and for the ground truth, and their difference.

Each pair runs twice: with the one click (the product's path: segmenter, tracker, hole, fill), and with
the pasted object's true masks as the removed object's masks (``gt_mask``: the hole is exactly that
mask, so what is left is the fill's own quality).  Pairs whose background clip's camera is still
(median global shift between consecutive frames under ``STILL_SHIFT`` px, measured on the ground truth)
are also averaged apart (``overall_still``): there the background seen over time may serve as a source.
"""
from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from unseen.engine.backends import registry
from unseen.engine.flow import FlowCache
from unseen.engine.pipeline import Pipeline, PipelineConfig
from unseen.engine.session import build_pipeline
from unseen.engine.stages import Frame, dilate_hole
from unseen.engine.synthetic import interior_point

from . import report
from .common import Context, run_frames
from .data import largest_object, pairs
from .metrics import detail, flicker, jaccard, mean, psnr, ssim

log = logging.getLogger("unseen.benchmarks")

QUICK_FRAMES = 16
FULL_FRAMES = 100  # cap per pair (dog-walk-720p has 289 frames)
STILL_SHIFT = 0.25  # px: a background clip whose median shift between frames is under this has a still camera
KEYS = ["psnr_region", "ssim_region", "psnr_frame", "ssim_frame", "psnr_region_input", "flicker_output",
        "flicker_gt", "flicker_diff", "mask_J", "detail_region"]


def composite(a, b, limit: int | None):
    """(composite frames, pasted masks, ground-truth frames, object id of A)."""
    size = (b.width, b.height)
    known = [x for x in (a.frames, b.frames, limit) if x is not None]
    n = min(known) if known else None
    gt = b.read_frames(n)
    obj_frames = a.read_frames(len(gt), size)
    labels = a.read_labels(len(obj_frames), size)
    n = min(len(gt), len(obj_frames), len(labels))
    oid = largest_object(labels[0])
    frames, masks = [], []
    for t in range(n):
        m = labels[t] == oid
        f = gt[t].copy()
        f[m] = obj_frames[t][m]
        frames.append(f)
        masks.append(m)
    return frames, masks, gt[:n], oid


def click_and_run(pipeline, frames: list[np.ndarray], x: int, y: int) -> tuple[list, object]:
    """Run ``frames`` through ``pipeline`` with one click on frame 0 (sent once frame 2 arrived)."""
    late = pipeline.delay >= 3 and len(frames) > 3
    futures = [] if late else [pipeline.click(x, y, object_id=1, frame_index=0)]

    def tracked(frame: Frame) -> None:
        if late and frame.index == 2:
            futures.append(pipeline.click(x, y, object_id=1, frame_index=0))

    outputs = run_frames(pipeline, frames, on_tracked=tracked)
    return outputs, futures[0] if futures else None


def camera_still(frames: list[np.ndarray]) -> bool:
    """Whether the camera is still: the median global shift (phase correlation) between consecutive frames."""
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
    shifts = [np.hypot(*cv2.phaseCorrelate(p, q)[0]) for p, q in zip(grey, grey[1:])]
    return bool(shifts) and float(np.median(shifts)) < STILL_SHIFT


def _gt_pipeline(ctx: Context, masks: list[np.ndarray]) -> Pipeline:
    """A pipeline whose removed object's masks are the pasted object's true masks (no segmenter, no tracker)."""
    options = ctx.options(flows=FlowCache())
    inpainter = registry.create("inpainter", ctx.backends.inpainter, options)
    return Pipeline(None, None, inpainter, PipelineConfig(), given_masks=lambda i: {1: masks[i]})


def _run_pair(ctx: Context, a, b, limit: int | None, gt_mask: bool = False) -> dict:
    frames, masks, gt, oid = composite(a, b, limit)
    x, y = interior_point(masks[0])
    t0 = time.perf_counter()
    error = None
    if gt_mask:
        pipeline = _gt_pipeline(ctx, masks)
        outputs = run_frames(pipeline, frames)
    else:
        pipeline = build_pipeline(ctx.backends, ctx.options(), PipelineConfig())
        outputs, future = click_and_run(pipeline, frames, x, y)
        try:
            future.result(timeout=0)
        except Exception as exc:  # noqa: BLE001 - a failed click is a result (nothing removed), not a crash
            error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    dil = pipeline.inpainter.dilation
    regions = [dilate_hole(m, dil) for m in masks]
    out = [o.image for o in outputs]
    n = min(len(out), len(gt))
    ious = [jaccard(outputs[t].masks.get(1, np.zeros_like(masks[t])), masks[t]) for t in range(n)]
    f_out, f_gt = flicker(out[:n], regions[:n]), flicker(gt[:n], regions[:n])
    return {
        "object_clip": a.name, "object_id": oid, "background_clip": b.name, "size": f"{b.width}x{b.height}",
        "frames": n, "click": [x, y], "click_error": error, "dilation": dil, "camera_still": camera_still(gt[:n]),
        "region_fraction": mean(r.mean() for r in regions[:n]),
        "mask_J": mean(ious),
        "mask_fraction": mean(outputs[t].masks.get(1, np.zeros_like(masks[t])).mean() for t in range(n)),
        "object_fraction": mean(m.mean() for m in masks[:n]),
        "psnr_region": mean(psnr(out[t], gt[t], regions[t]) for t in range(n)),
        "ssim_region": mean(ssim(out[t], gt[t], regions[t]) for t in range(n)),
        "psnr_frame": mean(psnr(out[t], gt[t]) for t in range(n)),
        "ssim_frame": mean(ssim(out[t], gt[t]) for t in range(n)),
        "psnr_region_input": mean(psnr(frames[t], gt[t], regions[t]) for t in range(n)),
        "detail_region": mean(detail(out[t], gt[t], regions[t]) for t in range(n)),
        "flicker_output": f_out, "flicker_gt": f_gt, "flicker_diff": f_out - f_gt,
        "fps": n / seconds if seconds > 0 else None,
        "stage_ms": pipeline.times.means(),
        "delay_frames": pipeline.delay,
        "backends": pipeline.describe()["backends"],
        "fill_sources": _fill_sources(pipeline.inpainter),
    }


def _fill_sources(inpainter) -> dict | None:
    """Where the filled pixels came from, as fractions (classical inpainter: the window's frames,
    the past references, the previous output, made up spatially); None for an inpainter without it."""
    filled = getattr(inpainter, "filled", None)
    total = sum(filled.values()) if filled else 0
    return {k: round(v / total, 4) for k, v in filled.items()} if total else None


def averages(rows_: list[dict]) -> dict:
    """The means over all pairs (``overall``) and over the still-camera and moving-camera pairs apart."""
    out = {}
    for name, chosen in (("overall", rows_), ("overall_still", [r for r in rows_ if r["camera_still"]]),
                         ("overall_moving", [r for r in rows_ if not r["camera_still"]])):
        out[name] = {k: mean(r[k] for r in chosen) for k in KEYS} if chosen else {}
        out[name]["pairs"] = len(chosen)
    return out


def _say(ctx: Context, mode: str, r: dict) -> None:
    ctx.say(f"[remove {mode}] {r['object_clip']} -> {r['background_clip']}"
            f"{' (still camera)' if r['camera_still'] else ''}: PSNR region {r['psnr_region']:.2f} dB "
            f"(input {r['psnr_region_input']:.2f}), SSIM region {r['ssim_region']:.3f}, "
            f"frame {r['psnr_frame']:.2f} dB, flicker {r['flicker_output']:.2f} vs {r['flicker_gt']:.2f}"
            + (", filled from " + ", ".join(f"{k} {v:.0%}" for k, v in r["fill_sources"].items())
               if r["fill_sources"] else "")
            + (f", click failed: {r['click_error']}" if r["click_error"] else ""))


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    result = ctx.header("remove")
    limit = ctx.cap(QUICK_FRAMES, FULL_FRAMES)
    result["frames_cap"] = limit
    result["protocol"] = __doc__.split("\n\n", 1)[1].strip()
    rows_, truth = [], []
    backends = None
    for a, b in pairs(ctx.clips):
        ctx.say(f"[remove] {a.name} -> {b.name} ...")
        r = _run_pair(ctx, a, b, limit)
        backends = backends or r["backends"]
        _say(ctx, "one click", r)
        rows_.append(r)
        r = _run_pair(ctx, a, b, limit, gt_mask=True)
        _say(ctx, "GT mask", r)
        truth.append(r)
    result["backends"] = backends or {}
    result["pairs"] = rows_
    result.update(averages(rows_))
    result["gt_mask"] = {"pairs": truth, **averages(truth)}
    ctx.finish("remove", result, started)
    print_table(result)
    chart(ctx, result)
    return result


HEADERS = ["object -> background", "camera", "size", "frames", "mask J", "PSNR region", "SSIM region", "detail region",
           "PSNR frame", "SSIM frame", "flicker out/GT"]


def _row(name: str, camera: str, size: str, frames, r: dict) -> list:
    return [name, camera, size, frames, r["mask_J"], report.fmt(r["psnr_region"], 2), r["ssim_region"],
            report.fmt(r["detail_region"], 3), report.fmt(r["psnr_frame"], 2), r["ssim_frame"],
            f"{report.fmt(r['flicker_output'], 2)} / {report.fmt(r['flicker_gt'], 2)}"]


def rows(result: dict) -> list[list]:
    """One row per pair, then the means: all pairs, the still-camera pairs, the moving-camera pairs."""
    out = [_row(f"{r['object_clip']} -> {r['background_clip']}", "still" if r["camera_still"] else "moving",
                r["size"], r["frames"], r) for r in result["pairs"]]
    for key, name in (("overall", "mean"), ("overall_still", "mean, still camera"),
                      ("overall_moving", "mean, moving camera")):
        o = result.get(key) or {}
        if o.get("pairs"):
            out.append(_row(name, "", "", o["pairs"], o))
    return out


def print_table(result: dict) -> None:
    b = result.get("backends", {})
    print(f"\nremove, one click ({b.get('segmenter')} / {b.get('propagator')} / {b.get('inpainter')}"
          f"{', quick' if result['quick'] else ''})")
    print(report.table(HEADERS, rows(result)))
    if result.get("gt_mask"):
        print(f"\nremove, the true masks as the removed object's masks ({b.get('inpainter')})")
        print(report.table(HEADERS, rows(result["gt_mask"])))


def chart(ctx: Context, result: dict) -> None:
    names = [f"{r['object_clip']}->{r['background_clip']}" for r in result["pairs"]]
    truth = result.get("gt_mask", {}).get("pairs", [])
    report.bar_chart(ctx.results / "remove.png", "remove: PSNR (dB) inside the dilated pasted region", names,
                     {"output (one click)": [r["psnr_region"] for r in result["pairs"]],
                      **({"output (true masks)": [r["psnr_region"] for r in truth]} if truth else {}),
                      "input (object still there)": [r["psnr_region_input"] for r in result["pairs"]]}, "PSNR (dB)")
