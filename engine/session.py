"""One session per stream: engine/runtime.py's :class:`~unseen.engine.runtime.StreamSession` owns the
source, the pipeline (prompts, memory, window, delay line) and the sinks (encoder, publishers,
viewers, mask files), with an idempotent close().  ``unseen run``, ``unseen serve`` and the benchmarks
all drive it.  Here: the backends a pipeline is built from, and the mask files as a sink.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from .backends import registry
from .backends.registry import BackendOptions
from .flow import FlowCache
from .masks import MaskFolder, MaskWriter
from .pipeline import OutputFrame, Pipeline, PipelineConfig
from .runtime import Mode, RunResult, RuntimeConfig, Sink, StreamSession

__all__ = ["Backends", "MaskSink", "Mode", "RunResult", "RuntimeConfig", "Session", "Sink", "build_pipeline"]

log = logging.getLogger("unseen.session")

Session = StreamSession  # the runtime's session is the session


@dataclass
class Backends:
    """Backend names per stage (``auto``, ``classical``, ``sam:vit_b``, ...)."""

    segmenter: str = "auto"
    propagator: str = "auto"
    inpainter: str = "auto"


def build_pipeline(backends: Backends, options: BackendOptions | None = None,
                   config: PipelineConfig | None = None, *, masks_in: MaskFolder | None = None) -> Pipeline:
    """Create the backends (logging each choice) and the pipeline around them."""
    options = options or BackendOptions()
    if options.flows is None:  # one flow cache per stream, shared by its propagator and inpainter
        options = dataclasses.replace(options, flows=FlowCache())
    inpainter = registry.create("inpainter", backends.inpainter, options)
    if masks_in is not None:
        return Pipeline(None, None, inpainter, config, given_masks=masks_in.masks)
    segmenter = registry.create("segmenter", backends.segmenter, options)
    propagator = registry.create("propagator", backends.propagator, options)
    return Pipeline(segmenter, propagator, inpainter, config)


class MaskSink:
    """Each output frame's masks as files (``--masks-out``)."""

    def __init__(self, writer: MaskWriter) -> None:
        self.writer = writer

    def write(self, output: OutputFrame) -> None:
        self.writer.write(output.frame.index, output.masks, output.image.shape[:2])

    def close(self, *, keep: bool = True) -> None:
        pass
