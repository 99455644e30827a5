"""One session per stream: it owns the source, the pipeline (prompts, memory, window,
delay line) and the sinks (encoder, publishers, viewers), with an idempotent close().

``unseen run`` drives :meth:`Session.run` over a file; the live server drives the
same :class:`~unseen.engine.pipeline.Pipeline` step from its worker thread.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from .backends import registry
from .backends.registry import BackendOptions
from .masks import MaskFolder, MaskWriter
from .media import MediaError, Source, Truncation
from .pipeline import OutputFrame, Pipeline, PipelineConfig

log = logging.getLogger("unseen.session")


class Sink(Protocol):
    def write(self, output: OutputFrame) -> None: ...

    def close(self, *, keep: bool = True) -> None: ...


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
    inpainter = registry.create("inpainter", backends.inpainter, options)
    if masks_in is not None:
        return Pipeline(None, None, inpainter, config, given_masks=masks_in.masks)
    segmenter = registry.create("segmenter", backends.segmenter, options)
    propagator = registry.create("propagator", backends.propagator, options)
    return Pipeline(segmenter, propagator, inpainter, config)


@dataclass
class RunResult:
    frames_in: int
    frames_out: int
    seconds: float
    degraded: int
    stage_ms: dict[str, float] = field(default_factory=dict)
    skipped: int = 0  # input frames that could not be decoded
    truncated: Truncation | None = None  # the input ended before the frame count it declares

    @property
    def fps(self) -> float:
        return self.frames_in / self.seconds if self.seconds > 0 else 0.0


class Session:
    """A stream being processed: source -> pipeline -> sinks."""

    def __init__(self, source: Source, pipeline: Pipeline, sinks: Sequence[Sink] = (), *,
                 name: str = "file", mask_writer: MaskWriter | None = None) -> None:
        self.name = name
        self.source = source
        self.pipeline = pipeline
        self.sinks = list(sinks)
        self.mask_writer = mask_writer
        self._closed = False
        self._lock = threading.Lock()
        source.on_audio = self._audio

    def _audio(self, packet) -> None:
        for sink in self.sinks:
            write_audio = getattr(sink, "write_audio", None)
            if write_audio is not None:
                write_audio(packet)

    def _deliver(self, outputs: Sequence[OutputFrame]) -> None:
        for out in outputs:
            for sink in self.sinks:
                sink.write(out)
            if self.mask_writer is not None:
                self.mask_writer.write(out.frame.index, out.masks, out.image.shape[:2])

    def run(self, *, prompts: Sequence[concurrent.futures.Future] = (),
            progress: Callable[[int], None] | None = None, stop: threading.Event | None = None,
            strict: bool = False) -> RunResult:
        """Process the whole source.  A failed prompt (or any error) discards the outputs; so does,
        with ``strict``, an input that is truncated or has frames that could not be decoded."""
        start = time.perf_counter()
        ok = False
        try:
            for frame in self.source:
                if stop is not None and stop.is_set():
                    break
                self._deliver(self.pipeline.step(frame))
                _raise_failed(prompts)
                if progress is not None:
                    progress(1)
            if strict:
                _raise_damaged(self.source)
            self._deliver(self.pipeline.flush())
            _raise_failed(prompts)
            ok = True
        finally:
            self.close(keep=ok)
        p = self.pipeline
        return RunResult(p.frames_in, p.frames_out, time.perf_counter() - start, p.degraded,
                         p.times.means(), self.source.skipped, self.source.truncated)

    def close(self, *, keep: bool = True) -> None:
        """Close sinks and source once; ``keep=False`` discards what the sinks wrote."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors = []
        for sink in self.sinks:
            try:
                sink.close(keep=keep)
            except Exception as exc:  # noqa: BLE001 - close every sink, report the first failure
                errors.append(exc)
        self.source.close()
        self.pipeline.close()
        if errors and keep:
            raise errors[0]


def _raise_damaged(source: Source) -> None:
    """--strict: a truncated input or undecodable frames fail the run (nothing is kept)."""
    if source.truncated is not None:
        raise MediaError(f"{source.truncated.describe(source.uri)}; re-copy the file, or run without --strict "
                         f"to keep the frames that were decoded")
    if source.skipped:
        raise MediaError(f"{source.skipped} frames of input {source.uri!r} could not be decoded; repair or "
                         f"re-encode the input, or run without --strict to skip them")


def _raise_failed(prompts: Sequence[concurrent.futures.Future]) -> None:
    for future in prompts:
        if future.done() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
