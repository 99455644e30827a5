"""Every stage runs, but the inpainter gets given holes: the speed suite's neural mode.

Random weights give arbitrary masks (often most of the frame, or nothing), so a neural run's inpainting
cost says little.  Wrapped here, the segmenter still segments each prompt and the propagator still steps
every frame (their cost is measured as it is), while the masks they hand on are the given ones (the
classical run's holes, or DAVIS ground truth: a realistic 3-10% of the frame), so the inpainter fills
holes of a real size.  (``--masks-in`` alone skips the segmenter and the propagator.)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from unseen.engine.stages import Box, Click, Frame, Mask, Propagator, Segmenter, SelectionError


class Holes:
    """Per-frame holes by frame index (the last one repeats past the end)."""

    def __init__(self, holes: Sequence[np.ndarray]) -> None:
        if not holes:
            raise ValueError("no holes given")
        self.holes = list(holes)

    def at(self, index: int) -> Mask:
        return self.holes[min(index, len(self.holes) - 1)]


class GivenSegmenter(Segmenter):
    """Segments as ``inner`` does (the cost), answers the given hole of the prompt's frame."""

    def __init__(self, inner: Segmenter, holes: Holes) -> None:
        self.inner, self.holes = inner, holes
        self.name = f"{inner.name} (given holes)"
        self.device = inner.device

    def segment(self, frame: Frame, clicks: Sequence[Click], *, neighbours: Sequence[Frame] = (),
                box: Box | None = None) -> Mask:
        try:
            self.inner.segment(frame, clicks, neighbours=neighbours, box=box)
        except SelectionError:  # random weights may select nothing: the work was done all the same
            pass
        return self.holes.at(frame.index)

    def forget(self, before_index: int) -> None:
        self.inner.forget(before_index)


class GivenPropagator(Propagator):
    """Steps ``inner`` on every frame (the cost), answers the given hole for each object it tracks."""

    def __init__(self, inner: Propagator, holes: Holes) -> None:
        self.inner, self.holes = inner, holes
        self.name = f"{inner.name} (given holes)"
        self.device = inner.device

    def seed(self, frame: Frame, masks: Mapping[int, Mask]) -> None:
        self.inner.seed(frame, masks)

    def step(self, frame: Frame) -> dict[int, Mask]:
        return {oid: self.holes.at(frame.index) for oid in self.inner.step(frame)}

    def step_reduced(self, frame: Frame) -> dict[int, Mask]:
        return {oid: self.holes.at(frame.index) for oid in self.inner.step_reduced(frame)}

    def reset(self) -> None:
        self.inner.reset()

    @property
    def objects(self) -> list[int]:
        return self.inner.objects

    def memory_frames(self) -> int:
        return self.inner.memory_frames()
