"""Suite *complete*: video completion with given masks, in the protocol of E2FGVI / FuseFormer.

Protocol: every clip is completed once.  Its frames are resized to 432x240; the hole of
frame t is the union of the objects of another clip's mask t (the same deterministic
pairing as *remove*: the next clip in name order with tight masks), resized to 432x240
with nearest neighbour and dilated as E2FGVI's ``test.py`` does (3x3 cross, 4
iterations), so the hole covers true background.  The inpainter's own dilation is set
to 0, so it fills exactly that hole; it runs in the pipeline with ``given_masks``.
PSNR and SSIM over the whole frame against the resized original, averaged over the
frames of a clip, then over clips; detail = gradient energy in the hole, output over
original (1: as detailed as the truth, under 1: a smear).  The degraded live step's fill
is scored apart: each frame's ``cheap`` fill given the true previous frame as the previous
output and the optical flow a tracker would have computed for the pair (PSNR in the hole;
a panning camera's clips show whether it follows the camera).  E2FGVI reports 33.01 dB /
0.9721 on DAVIS (50 clips, its own random object masks); the masks here differ, so the
figures are only indicative.
"""
from __future__ import annotations

import logging
import time


from unseen.engine.backends import registry
from unseen.engine.flow import FlowCache
from unseen.engine.pipeline import Pipeline, PipelineConfig
from unseen.engine.stages import Frame, InpaintRequest, WindowEntry, dilate_hole

from . import report
from .common import Context, run_frames
from .data import pairs
from .metrics import detail, mean, psnr, ssim

log = logging.getLogger("unseen.benchmarks")

SIZE = (432, 240)
MASK_DILATION = 4
E2FGVI_DAVIS = {"psnr": 33.01, "ssim": 0.9721, "source": "E2FGVI (CVPR 2022), Table 1, DAVIS"}
QUICK_FRAMES = 20


def _complete_clip(ctx: Context, a, b, limit: int | None) -> dict:
    known = [x for x in (a.frames, b.frames, limit) if x is not None]
    n = min(known) if known else None
    gt = b.read_frames(n, SIZE)
    labels = a.read_labels(len(gt), SIZE)
    n = min(len(gt), len(labels))
    holes = [dilate_hole(labels[t] > 0, MASK_DILATION) for t in range(n)]
    inpainter = registry.create("inpainter", ctx.backends.inpainter, ctx.options(dilation=0))
    inpainter.dilation = 0
    pipeline = Pipeline(None, None, inpainter, PipelineConfig(), given_masks=lambda i: {1: holes[min(i, n - 1)]})
    t0 = time.perf_counter()
    outputs = run_frames(pipeline, gt[:n])
    seconds = time.perf_counter() - t0
    out = [o.image for o in outputs][:n]
    return {
        "clip": b.name, "mask_clip": a.name, "frames": n, "size": f"{SIZE[0]}x{SIZE[1]}",
        "hole_fraction": mean(h.mean() for h in holes),
        "psnr": mean(psnr(out[t], gt[t]) for t in range(n)),
        "ssim": mean(ssim(out[t], gt[t]) for t in range(n)),
        "psnr_hole": mean(psnr(out[t], gt[t], holes[t]) for t in range(n)),
        "detail_hole": mean(detail(out[t], gt[t], holes[t]) for t in range(n)),
        "cheap_psnr_hole": _cheap_fill_psnr(ctx, gt[:n], holes),
        "fps": n / seconds if seconds > 0 else None,
        "inpaint_ms": round(pipeline.times.mean_ms("inpaint"), 2),
        "inpainter": inpainter.name,
    }


def _cheap_fill_psnr(ctx: Context, frames: list, holes: list) -> float:
    """Mean PSNR in the hole of the inpainter's cheap fill of frames 1.., each given the true frame before
    it as the previous output, with the backward flow of the pair computed first (as the tracker does)."""
    flows = FlowCache()
    inpainter = registry.create("inpainter", ctx.backends.inpainter, ctx.options(dilation=0, flows=flows))
    inpainter.dilation = 0
    scores = []
    for t in range(1, len(frames)):
        if not holes[t].any():
            continue
        flows.flow(frames[t], frames[t - 1])
        entries = {i: WindowEntry(Frame(i, frames[i]), holes[i]) for i in (t - 1, t)}
        filled = inpainter.cheap(InpaintRequest(t, entries, (), {t - 1: frames[t - 1]}))
        scores.append(psnr(filled, frames[t], holes[t]))
    return mean(scores)  # (NaN without a hole to fill)


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    result = ctx.header("complete")
    limit = ctx.cap(QUICK_FRAMES)
    result["frames_cap"] = limit
    result["protocol"] = __doc__.split("\n\n", 1)[1].strip()
    result["reference"] = dict(E2FGVI_DAVIS, note="published on DAVIS with different (random object) masks "
                               "and all 50 clips; not directly comparable")
    rows_ = []
    for a, b in pairs(ctx.clips):
        ctx.say(f"[complete] {b.name} (masks of {a.name}) ...")
        r = _complete_clip(ctx, a, b, limit)
        ctx.say(f"[complete] {b.name}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} (hole {100 * r['hole_fraction']:.1f}%)")
        rows_.append(r)
    result["backends"] = {"inpainter": rows_[0]["inpainter"] if rows_ else ctx.backends.inpainter}
    result["clips"] = rows_
    result["overall"] = {"psnr": mean(r["psnr"] for r in rows_), "ssim": mean(r["ssim"] for r in rows_),
                         "psnr_hole": mean(r["psnr_hole"] for r in rows_),
                         "detail_hole": mean(r["detail_hole"] for r in rows_),
                         "cheap_psnr_hole": mean(r["cheap_psnr_hole"] for r in rows_),
                         "hole_fraction": mean(r["hole_fraction"] for r in rows_), "clips": len(rows_)}
    ctx.finish("complete", result, started)
    print_table(result)
    chart(ctx, result)
    return result


HEADERS = ["clip (masks from)", "frames", "hole %", "PSNR", "SSIM", "PSNR in hole", "detail in hole",
           "cheap fill from the true frame before: PSNR in hole"]


def rows(result: dict) -> list[list]:
    out = [[f"{r['clip']} ({r['mask_clip']})", r["frames"], report.fmt(100 * r["hole_fraction"], 1),
            report.fmt(r["psnr"], 2), report.fmt(r["ssim"], 4), report.fmt(r["psnr_hole"], 2),
            report.fmt(r["detail_hole"], 3), report.fmt(r.get("cheap_psnr_hole"), 2)] for r in result["clips"]]
    o = result["overall"]
    out.append(["mean", "", report.fmt(100 * o["hole_fraction"], 1), report.fmt(o["psnr"], 2),
                report.fmt(o["ssim"], 4), report.fmt(o["psnr_hole"], 2), report.fmt(o["detail_hole"], 3),
                report.fmt(o.get("cheap_psnr_hole"), 2)])
    ref = result["reference"]
    out.append(["E2FGVI published (DAVIS, other masks)", "", "", report.fmt(ref["psnr"], 2),
                report.fmt(ref["ssim"], 4), "", "", ""])
    return out


def print_table(result: dict) -> None:
    print(f"\ncomplete ({result['backends']['inpainter']} inpainter, 432x240"
          f"{', quick' if result['quick'] else ''}; masks differ from E2FGVI's)")
    print(report.table(HEADERS, rows(result)))


def chart(ctx: Context, result: dict) -> None:
    names = [r["clip"] for r in result["clips"]] + ["mean"]
    ref = result["reference"]
    report.bar_chart(ctx.results / "complete.png", "complete: whole-frame PSNR at 432x240 "
                     "(dashed: E2FGVI on DAVIS, other masks)", names,
                     {"PSNR": [r["psnr"] for r in result["clips"]] + [result["overall"]["psnr"]]}, "PSNR (dB)",
                     extra=lambda ax: ax.axhline(ref["psnr"], ls="--", color="grey"))
