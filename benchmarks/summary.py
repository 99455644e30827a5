"""The README's Benchmarks table, built from the suites' JSON files in a results folder."""
from __future__ import annotations

import json
from pathlib import Path

from . import report


def _load(results: Path, suite: str) -> dict | None:
    path = results / f"{suite}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def markdown(results: Path) -> str:
    """One table of the headline figures, the machine named, plus one line per suite's setup."""
    data = {s: _load(results, s) for s in ("track", "segment", "remove", "complete", "speed")}
    present = [d for d in data.values() if d]
    if not present:
        return f"(no results in {results})"
    machine = present[0]["machine"]
    rows: list[list[str]] = []
    notes: list[str] = []
    f = report.fmt
    t = data["track"]
    if t:
        o = t["overall"]
        per_clip = ", ".join(f"{c['clip']} {f(c['JF'], 3)}" for c in t["clips"])
        rows.append(["track: J&F (DAVIS mean over objects)", f(o["JF"], 3),
                     f"J {f(o['J'], 3)}, F {f(o['F'], 3)}, first-frame J {f(o['first_J'], 3)}; per clip: {per_clip}"])
        notes.append(f"track: {t['backends']['segmenter']} segmenter + {t['backends']['propagator']} propagator, "
                     f"{o['objects']} objects in {o['clips']} clips" + (" (--quick)" if t["quick"] else ""))
    g = data["segment"]
    if g:
        o = g["overall"]
        rows.append(["segment: first-frame J, one click / box", f"{f(o['click_J'], 3)} / {f(o['box_J'], 3)}",
                     f"{o['objects']} objects; per clip (click/box): " + ", ".join(
                         f"{c['clip']} {f(c['click_J'], 2)}/{f(c['box_J'], 2)}" for c in g["clips"])
                     + f"; ms per click {f(o['click_ms'], 0)}, per box {f(o['box_ms'], 0)}"])
    r = data["remove"]
    if r:
        o = r["overall"]
        rows.append(["remove: PSNR inside the dilated region", f"{f(o['psnr_region'], 2)} dB",
                     f"SSIM {f(o['ssim_region'], 3)}; detail {f(o.get('detail_region'), 3)}; "
                     f"input (object left in) {f(o['psnr_region_input'], 2)} dB; "
                     f"whole frame {f(o['psnr_frame'], 2)} dB / {f(o['ssim_frame'], 3)}; flicker "
                     f"{f(o['flicker_output'], 2)} vs GT {f(o['flicker_gt'], 2)}; mask J {f(o['mask_J'], 3)}"])
        notes.append(f"remove: {o['pairs']} pasted-object pairs" + (" (--quick)" if r["quick"] else ""))
    c = data["complete"]
    if c:
        o = c["overall"]
        rows.append(["complete: PSNR / SSIM at 432x240", f"{f(o['psnr'], 2)} dB / {f(o['ssim'], 4)}",
                     f"{o['clips']} clips, holes {f(100 * o['hole_fraction'], 1)}% of the frame; detail in the hole "
                     f"{f(o.get('detail_hole'), 3)} (1: as detailed as the truth); E2FGVI publishes "
                     f"{c['reference']['psnr']} dB / {c['reference']['ssim']} on DAVIS with other masks"])
    s = data["speed"]
    if s:
        for run in s["runs"]:
            if "error" in run:
                rows.append([f"speed: {run['label']} {run['size']}", "failed", run["error"][:80]])
                continue
            ms = run["ms"]
            flag = " (object lost: optimistic)" if run.get("warning") else ""
            rows.append([f"speed: {run['label']} {run['size']}", f"{f(run['fps'], 2)} fps{flag}",
                         f"hole {f(100 * run.get('hole_fraction', 0.0), 1)}% of the frame; "
                         f"ms/frame: decode {f(ms['decode'], 1)}, propagate {f(ms['propagate'], 1)}, inpaint "
                         f"{f(ms['inpaint'], 1)}, encode {f(ms['encode'], 1)}; segment {f(ms['segment_per_click'], 0)} "
                         f"ms/click; delay {run['delay_frames']} frames ({f(run['delay_s'], 2)} s); peak RSS "
                         f"{run['peak_rss_mb']:.0f} MiB; {run['frames']} frames"])
        lr = s.get("long_run")
        if lr:
            if lr.get("warning"):
                notes.append(f"long run: {lr['warning']}")
            rows.append([f"speed: long run, {lr['frames']} frames at {lr['size']}",
                         f"RSS {lr['rss_start_mb']:.0f} -> {lr['rss_end_mb']:.0f} MiB",
                         f"max {lr['rss_max_mb']:.0f} MiB; held frames {lr['held_frames_end']} (max "
                         f"{lr['held_frames_max']}); propagator memory {lr['propagator_memory_frames_end']} frame(s); "
                         f"{lr.get('inpainted_frames', '?')} of {lr['frames']} frames had a hole to fill; {f(lr['fps'], 1)} fps"])
        notes.append(f"speed: load average {s['loadavg_start']} at the start (other work shared the CPU)")
    out = [f"Machine: {report.machine_line(machine)}; {machine.get('platform', '')}",
           "", report.table(["measure", "value", "details"], rows), ""]
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write(results: Path) -> Path:
    path = results / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(results))
    return path
