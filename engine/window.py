"""The frames a pipeline holds, as typed immutable entries, and the holes in them.

A :class:`Held` frame (its masks, its hole, how its masks were made) is never changed: a change
replaces it (and its :class:`~unseen.engine.stages.WindowEntry` when the hole changed, with the next
revision), so a snapshot of the store (a dict of entries) stays exactly what it was when taken.

The holes are built when first asked for, not when a frame is added: the tracker only records what each
hole is made of (the masks and the removed objects, the neighbours whose missed parts it takes, the entry
it replaces), and the emitter, which asks, builds them on its own worker (or the tracker, when the emitter is
behind: ``Pipeline.ahead``).  Each is built once, by whichever asks first, and an entry
whose hole comes out the same as the one it replaces is that one (same object, same revision), so the
entries are exactly those built eagerly would be.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from .degrade import Level
from .holes import below_object, missed_edge
from .stages import Frame, Image, Mask, WindowEntry

log = logging.getLogger("unseen.pipeline")


class HoleParts:
    """A frame's own hole and, of it, what its masks missed: built once, by whoever asks first."""

    def __init__(self, builder: "HoleBuilder", masks: Mapping[int, Mask], image: Image,
                 removed: frozenset[int]) -> None:
        self._args: tuple | None = (builder, masks, image, removed)
        self._parts: tuple[Mask, Mask] | None = None
        self._lock = threading.Lock()

    def get(self) -> tuple[Mask, Mask]:
        with self._lock:
            if self._parts is None:
                assert self._args is not None
                builder, masks, image, removed = self._args
                self._parts = builder.build(masks, image, removed.__contains__)
                self._args = None  # the frame and masks stay with the Held, not here
            return self._parts


class WindowCell:
    """A held frame's :class:`WindowEntry`, made once when first asked for: its own hole with what its
    neighbours' masks missed, or the entry it replaces (``before``) itself when that hole is the same."""

    def __init__(self, frame: Frame, own: HoleParts, near: tuple[HoleParts, ...] = (),
                 before: "WindowCell | None" = None) -> None:
        self._args: tuple | None = (frame, own, near, before)
        self._entry: WindowEntry | None = None
        self._lock = threading.Lock()

    def get(self) -> WindowEntry:
        with self._lock:  # only older cells and hole parts are asked from here: no lock cycle
            if self._entry is None:
                assert self._args is not None
                frame, own, near, before = self._args
                hole = own.get()[0]
                for parts in near:
                    missed = parts.get()[1]
                    if missed.any():
                        hole = hole | missed
                previous = before.get() if before is not None else None
                if previous is not None and np.array_equal(hole, previous.hole):
                    self._entry = previous
                else:
                    self._entry = WindowEntry(frame, hole, previous.revision + 1 if previous is not None else 0)
                self._args = None  # the chain of replaced cells ends here
            return self._entry


@dataclass(frozen=True)
class Held:
    """A frame the pipeline still holds, with its masks (all objects)."""

    frame: Frame
    masks: Mapping[int, Mask]
    parts: HoleParts  # its own hole and what its masks missed
    cell: WindowCell  # its window entry
    tracking: Level = Level.FULL  # how its masks were made (see engine/degrade.py)

    @property
    def window(self) -> WindowEntry:
        """The frame and its hole, as the inpainter sees it (built on first use)."""
        return self.cell.get()


Reference = tuple[WindowCell, frozenset]  # a past reference frame's entry, the objects its masks were tracked for


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
    def _parts(self, masks: Mapping[int, Mask], image: Image, removes: Callable[[int], bool]) -> HoleParts:
        # which objects are removed is decided now (an effect changed later makes new parts), the rest later
        return HoleParts(self.holes, masks, image, frozenset(oid for oid in masks if removes(oid)))

    def add(self, frame: Frame, masks: Mapping[int, Mask], tracking: Level, removes: Callable[[int], bool]) -> None:
        parts = self._parts(masks, frame.image, removes)
        self._held[frame.index] = Held(frame, masks, parts, WindowCell(frame, parts), tracking)
        self.update_hole(frame.index)
        self.update_hole(frame.index - 1)

    def set_masks(self, index: int, masks: Mapping[int, Mask], removes: Callable[[int], bool],
                  tracking: Level | None = None) -> None:
        held = self._held[index]
        parts = self._parts(masks, held.frame.image, removes)
        self._held[index] = dataclasses.replace(held, masks=masks, parts=parts,
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
        near = tuple(n.parts for n in (self._held.get(index - 1), self._held.get(index + 1)) if n is not None)
        self._held[index] = dataclasses.replace(held, cell=WindowCell(held.frame, held.parts, near, held.cell))

    def drop_before(self, keep_from: int) -> None:
        """Forget the frames before ``keep_from``; every ``ref_stride``-th becomes a reference."""
        for index in [i for i in self._held if i < keep_from]:
            held = self._held.pop(index)
            if self.ref_stride > 0 and index % self.ref_stride == 0 and self.references.maxlen:
                self.references.append((held.cell, frozenset(held.masks)))
