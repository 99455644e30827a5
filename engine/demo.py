"""``unseen demo``: a synthetic scene with ground truth, processed by the real file path."""
from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .backends.registry import BackendOptions
from .media import FileSink, Source, StreamInfo
from .pipeline import OutputFrame
from .session import Backends, Session, build_pipeline
from .stages import Frame, dilate_hole
from .synthetic import iou, make_clip, psnr


class MemorySink:
    """Keeps every output frame (tests, benchmarks, the demo)."""

    def __init__(self) -> None:
        self.outputs: list[OutputFrame] = []

    def write(self, output: OutputFrame) -> None:
        self.outputs.append(output)

    def close(self, *, keep: bool = True) -> None:
        if not keep:
            self.outputs.clear()


def write_video(path: Path, frames: list[np.ndarray], rate: Fraction, *, crf: int = 12) -> None:
    """Encode RGB frames to ``path`` with consecutive timestamps."""
    h, w = frames[0].shape[:2]
    info = StreamInfo(w, h, rate, 1 / rate, len(frames), False)
    sink = FileSink(path, info, crf=crf)
    for i, img in enumerate(frames):
        sink.write(OutputFrame(Frame(i, img, pts=i, time_base=1 / rate), img, {}))
    sink.close()


def run_demo(out_dir: Path, *, frames: int = 90, width: int = 480, height: int = 288, quiet: bool = False,
             backends: Backends | None = None, options: BackendOptions | None = None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = make_clip(frames, width, height, seed=7)
    before, after = out_dir / "demo_before.mp4", out_dir / "demo_after.mp4"
    write_video(before, clip.frames, clip.rate)
    source = Source(before)
    pipeline = build_pipeline(backends or Backends(), options)
    memory = MemorySink()
    session = Session(source, pipeline, [FileSink(after, source.info), memory], name="demo")
    x, y = clip.click(0)
    future = pipeline.click(x, y, frame_index=0)
    if not quiet:
        print(f"demo: {frames} frames {width}x{height}, click ({x},{y}) on frame 0 -> {after}")
    t0 = time.perf_counter()
    result = session.run(prompts=[future])
    seconds = time.perf_counter() - t0
    regions = [dilate_hole(m, pipeline.inpainter.dilation) for m in clip.masks]
    region_psnr = [psnr(o.image, clip.backgrounds[i], regions[i]) for i, o in enumerate(memory.outputs)]
    frame_psnr = [psnr(o.image, clip.backgrounds[i]) for i, o in enumerate(memory.outputs)]
    with av.open(str(after)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    encoded_psnr = [psnr(img, clip.backgrounds[i], regions[i]) for i, img in enumerate(decoded)]
    ious = [iou(o.masks.get(future.result(), np.zeros_like(clip.masks[i])), clip.masks[i])
            for i, o in enumerate(memory.outputs)]
    return {
        "before": str(before), "after": str(after), "frames": result.frames_out, "frames_in": result.frames_in,
        "decoded_frames": len(decoded), "psnr_region": float(np.mean(region_psnr)), "psnr_frame": float(np.mean(frame_psnr)),
        "psnr_region_encoded": float(np.mean(encoded_psnr)), "iou_mean": float(np.mean(ious)), "iou_min": float(np.min(ious)),
        "fps": result.frames_in / seconds, "backends": pipeline.describe()["backends"],
    }
