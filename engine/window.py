"""The frames a pipeline holds, as typed immutable entries, and the holes in them.

A :class:`Held` frame (its masks, its hole, how its masks were made) is never changed: a change
replaces it (and its :class:`~unseen.engine.stages.WindowEntry` when the hole changed, with the next
revision), so a snapshot of the store (a dict of entries) stays exactly what it was when taken.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from .degrade import Level
from .holes import below_object, missed_edge
from .stages import Frame, Image, Mask, WindowEntry

log = logging.getLogger("unseen.pipeline")


@dataclass(frozen=True)
class Held:
    """A frame the pipeline still holds, with its masks (all objects)."""

    frame: Frame
    masks: Mapping[int, Mask]
    window: WindowEntry  # the frame and its hole, as the inpainter sees it
    own: Mask  # the removed objects' masks with what hangs below them and the rims they missed, in this frame
    missed: Mask  # of it, what the masks missed (feet, shadows, rims): the frames next to this one remove it too
    tracking: Level = Level.FULL  # how its masks were made (see engine/degrade.py)


Reference = tuple[WindowEntry, frozenset]  # a past reference frame and the objects its masks were tracked for


class HoleBuilder:
    """Each removed object's mask with what hangs below it and the rim it missed (see holes.py), and of it
    what the masks missed.  ``reach`` and ``edge`` 0: the hole is the masks (given masks, --masks-in)."""

    def __init__(self, reach: float, edge: float) -> None:
        self.reach = reach
        self.edge = edge

    def build(self, masks: Mapping[int, Mask], image: Image, removes: Callable[[int], bool]) -> tuple[Mask, Mask]:
        hole = np.zeros(image.shape[:2], bool)
        missed = np.zeros_like(hole)
        for oid, m in masks.items():
            if removes(oid):
                hole |= m
                try:
                    missed |= below_object(image, m, self.reach) | missed_edge(image, m, self.edge)
                except Exception:  # noqa: BLE001 - a live stream keeps removing the object with its mask
                    log.exception("hole around object %d failed; removing its mask alone", oid)
        return hole | missed, missed


class FrameStore:
    """Frame index -> :class:`Held`, plus past reference frames kept at a stride (bounded: ``ref_count``,
    oldest dropped).  Entries are replaced, never mutated."""

    def __init__(self, holes: HoleBuilder, ref_count: int, ref_stride: int) -> None:
        self.holes = holes
        self.ref_stride = ref_stride
        self._held: dict[int, Held] = {}
        self.references: collections.deque[Reference] = collections.deque(maxlen=max(0, ref_count))

    # mapping access
    def __getitem__(self, index: int) -> Held:
        return self._held[index]

    def __contains__(self, index: object) -> bool:
        return index in self._held

    def __iter__(self) -> Iterator[int]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def get(self, index: int) -> Held | None:
        return self._held.get(index)

    def items(self):
        return self._held.items()

    def window(self, first: int, last: int) -> dict[int, Held]:
        """A snapshot of the held frames ``first``..``last`` (immutable entries: it never changes)."""
        return {i: self._held[i] for i in range(first, last + 1) if i in self._held}

    # changes
    def add(self, frame: Frame, masks: Mapping[int, Mask], tracking: Level, removes: Callable[[int], bool]) -> None:
        own, missed = self.holes.build(masks, frame.image, removes)
        self._held[frame.index] = Held(frame, masks, WindowEntry(frame, own), own, missed, tracking)
        self.update_hole(frame.index)
        self.update_hole(frame.index - 1)

    def set_masks(self, index: int, masks: Mapping[int, Mask], removes: Callable[[int], bool],
                  tracking: Level | None = None) -> None:
        held = self._held[index]
        own, missed = self.holes.build(masks, held.frame.image, removes)
        self._held[index] = dataclasses.replace(held, masks=masks, own=own, missed=missed,
                                                tracking=held.tracking if tracking is None else tracking)
        for i in (index - 1, index, index + 1):
            self.update_hole(i)

    def update_hole(self, index: int) -> None:
        """What the inpainter fills in a held frame: its own hole, and what the removed objects' masks missed
        in the frames before and after it (feet the ground beside them hid in this frame alone, a rim that
        looked like the background here, must not show, nor be copied from this frame into the next)."""
        held = self._held.get(index)
        if held is None:
            return
        hole = held.own
        for near in (self._held.get(index - 1), self._held.get(index + 1)):
            if near is not None and near.missed.any():
                hole = hole | near.missed
        if not np.array_equal(hole, held.window.hole):
            window = WindowEntry(held.frame, hole, held.window.revision + 1)
            self._held[index] = dataclasses.replace(held, window=window)

    def drop_before(self, keep_from: int) -> None:
        """Forget the frames before ``keep_from``; every ``ref_stride``-th becomes a reference."""
        for index in [i for i in self._held if i < keep_from]:
            held = self._held.pop(index)
            if self.ref_stride > 0 and index % self.ref_stride == 0 and self.references.maxlen:
                self.references.append((held.window, frozenset(held.masks)))
