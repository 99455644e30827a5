"""What every suite gets: the data, the options, the backends, and the result writer."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from unseen.engine.backends.registry import BackendOptions
from unseen.engine.pipeline import OutputFrame
from unseen.engine.runtime import StreamSession
from unseen.engine.session import Backends
from unseen.engine.stages import Frame

from . import report
from .data import Clip, discover

log = logging.getLogger("unseen.benchmarks")

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass
class Context:
    data: Path
    results: Path
    quick: bool = False
    backends: Backends = field(default_factory=lambda: Backends("classical", "classical", "classical"))
    device: str = "cpu"
    precision: str = "fp32"  # neural backends: fp32, tf32 on CUDA, or fp16/bf16 autocast
    weights_dir: Path | None = None
    frames: int | None = None  # cap on frames per clip (overrides the suite's default)
    neural: bool = True  # speed: also time the neural backends (random weights) where they import
    classical: bool = True  # speed: time the classical backends at each resolution
    long_frames: int | None = None  # speed: frames of the long run (default 3000, quick 300)
    resolutions: list[tuple[int, int]] | None = None  # speed: override the resolutions
    trace: Path | None = None  # speed: write a Chrome trace of the stage workers here
    threads: int | None = None  # speed: OpenCV/torch threads in every mode (None: the libraries' defaults)
    quiet: bool = False
    machine: dict | None = None
    _clips: list[Clip] | None = None

    @property
    def clips(self) -> list[Clip]:
        if self._clips is None:
            self._clips = discover(self.data)
        return self._clips

    def options(self, **extra) -> BackendOptions:
        opts = BackendOptions(device=self.device, weights_dir=self.weights_dir, precision=self.precision)
        for k, v in extra.items():
            if hasattr(opts, k):
                setattr(opts, k, v)
            else:
                opts.extra[k] = v
        return opts

    def cap(self, quick_default: int | None, full_default: int | None = None) -> int | None:
        if self.frames is not None:
            return self.frames
        return quick_default if self.quick else full_default

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def header(self, suite: str) -> dict:
        if self.machine is None:
            self.machine = report.machine_info()
        return {"suite": suite, "quick": self.quick, "created": report.stamp(), "data": str(self.data),
                "machine": self.machine, "code": report.code_state(),
                "device": self.device, "precision": self.precision,
                "loadavg_start": [round(x, 2) for x in os.getloadavg()]}

    def finish(self, suite: str, result: dict, started: float) -> Path:
        result["elapsed_s"] = round(time.perf_counter() - started, 2)
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        result["peak_rss_mb_process"] = round(report.peak_rss_mb(), 1)
        path = report.write_json(self.results / f"{suite}.json", result)
        self.say(f"[{suite}] wrote {path} ({result['elapsed_s']:.1f} s)")
        return path


class Collect:
    """A sink that keeps every output frame (the suites score them)."""

    def __init__(self) -> None:
        self.outputs: list[OutputFrame] = []

    def write(self, output: OutputFrame) -> None:
        self.outputs.append(output)

    def close(self, *, keep: bool = True) -> None:
        pass


def run_frames(pipeline, images: Sequence[np.ndarray], *,
               on_tracked: Callable[[Frame], None] | None = None) -> list[OutputFrame]:
    """``images`` through ``pipeline`` on the stream runtime (pipelined, as ``unseen run``); the outputs."""
    sink = Collect()
    StreamSession([Frame(t, img) for t, img in enumerate(images)], pipeline, [sink], name="bench",
                  on_tracked=on_tracked).run()
    return sink.outputs
