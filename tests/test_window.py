"""The frame store's holes (engine/window.py): built when first asked for, once, and the same entries (holes,
revisions, identity) as building them when each frame is added."""
from __future__ import annotations

import numpy as np
import pytest

from unseen.engine.degrade import Level
from unseen.engine.stages import Frame
from unseen.engine.window import FrameStore, HoleBuilder

H, W = 12, 16


class CountingHoles(HoleBuilder):
    """Each removed mask's hole takes the row under it as what the mask missed (feet)."""

    def __init__(self, feet: bool = True) -> None:
        super().__init__(0.0, 0.0)
        self.feet = feet
        self.builds = 0

    def build(self, masks, image, removes):
        self.builds += 1
        hole = np.zeros((H, W), bool)
        missed = np.zeros_like(hole)
        for oid, m in masks.items():
            if removes(oid):
                hole |= m
                if self.feet:
                    missed |= np.roll(m, 1, axis=0) & ~m
        return hole | missed, missed


def square(x: int) -> dict[int, np.ndarray]:
    m = np.zeros((H, W), bool)
    m[3:6, x:x + 3] = True
    return {1: m}


def store_with(frames: int, holes: HoleBuilder, removes=lambda oid: True) -> FrameStore:
    store = FrameStore(holes, ref_count=2, ref_stride=2)
    for i in range(frames):
        store.add(Frame(i, np.zeros((H, W, 3), np.uint8)), square(2 + i), Level.FULL, removes)
    return store


def test_adding_frames_builds_no_hole_until_one_is_asked_for_then_each_once():
    holes = CountingHoles()
    store = store_with(4, holes)
    assert holes.builds == 0
    entry = store[1].window  # its own parts and both neighbours'
    assert holes.builds == 3
    assert store[1].window is entry and holes.builds == 3
    for i in range(4):
        store[i].window
    assert holes.builds == 4


@pytest.mark.parametrize("feet, revisions", [
    (True, [1, 2, 2, 1]),  # one revision per neighbour whose feet widen the hole (the newest has one so far)
    (False, [0, 0, 0, 0]),  # nothing missed: every entry is the one made when its frame was added
])
def test_an_entry_is_replaced_only_when_its_hole_changes(feet, revisions):
    store = store_with(4, CountingHoles(feet))
    entries = [store[i].window for i in range(4)]
    assert [e.revision for e in entries] == revisions
    for i, e in enumerate(entries):
        expected = square(2 + i)[1]
        if feet:
            for j in (i - 1, i, i + 1):
                if 0 <= j < 4:
                    m = square(2 + j)[1]
                    expected = expected | (np.roll(m, 1, axis=0) & ~m)
        assert np.array_equal(e.hole, expected), i


def test_new_masks_replace_the_entry_and_the_same_masks_keep_it():
    store = store_with(3, CountingHoles())
    before = store[1].window
    store.set_masks(1, square(3), lambda oid: True)  # the masks it already had: the same hole
    assert store[1].window is before
    store.set_masks(1, square(9), lambda oid: True)
    after = store[1].window
    assert after.revision == before.revision + 1 and after.hole[3:6, 9:12].all()
    assert store[0].window.hole[6, 9:12].all()  # the neighbour takes the new feet too


def test_an_object_no_longer_removed_leaves_the_hole_when_its_masks_are_set_again():
    removed = {1}
    store = store_with(2, CountingHoles(), removes=lambda oid: oid in removed)
    assert store[0].window.hole.any()
    removed.clear()  # its effect changed: the pipeline sets the masks again
    store.set_masks(0, square(2), lambda oid: oid in removed)
    hole = store[0].window.hole
    assert not hole[:6].any() and hole[6].any()  # not its own mask nor feet: only frame 1's feet stay


def test_references_keep_their_entries_at_the_stride():
    store = store_with(6, CountingHoles())
    entries = {i: store[i].window for i in range(6)}
    store.drop_before(5)
    kept = [cell.get() for cell, _ in store.references]
    assert len(kept) == 2 and kept[0] is entries[2] and kept[1] is entries[4]  # two kept, at the stride
    assert [tracked for _, tracked in store.references] == [frozenset({1})] * 2
