"""Frame-by-frame AOT/DeAOT inference with bounded memory, in pure PyTorch.

The procedure is the official one (``AOTEngine``/``DeAOTEngine`` of aot-benchmark):
a reference frame with a known mask seeds the memory; every later frame is matched
against the long-term memory and the previous frame (short-term), decoded to identity
logits, and its predicted mask turns it into the new short-term memory and, every
``long_term_gap`` frames, into a long-term memory entry (prepended, as the original).

Unlike the original, long-term memory is capped so that time and memory per frame stay
constant on an endless stream: at most ``memory_cap`` entries, of which at most
``max_references`` are reference frames.  Beyond the caps the oldest non-reference entry
is dropped first; beyond ``max_references`` the oldest reference is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .aot import AOT
from .aot_layers import seq_to_2d


@dataclass(eq=False)
class MemoryEntry:
    """One long-term memory frame: per layer ``(K, V[, ID_V])`` sequences ``(HW, 1, C)``."""

    layers: list[tuple[Tensor, ...]]
    reference: bool
    tag: int | None = None  # the caller's frame index of a reference frame


class AOTInference:
    """Drives an :class:`~.aot.AOT` model over one video, one object group (up to 10 objects).

    Images are normalised ``(1, 3, H, W)`` tensors at the network input size (see
    :func:`~.aot.aot_input_size`); labels are integer maps ``(1, 1, H, W)`` (0 = background,
    1..N = objects) at that size, or one-hot ``(1, 11, H, W)``.
    """

    def __init__(self, model: AOT, long_term_gap: int | None = None, memory_cap: int = 8,
                 max_references: int | None = None) -> None:
        if memory_cap < 1:
            raise ValueError("memory_cap must be at least 1")
        self.model = model
        self.long_term_gap = model.cfg.long_term_gap if long_term_gap is None else long_term_gap
        self.memory_cap = memory_cap
        self.max_references = max(1, memory_cap // 2) if max_references is None else max_references
        if not 1 <= self.max_references <= memory_cap:
            raise ValueError("max_references must be between 1 and memory_cap")
        self.reset()

    def reset(self) -> None:
        """Forget all memory and objects."""
        self.entries: list[MemoryEntry] = []  # newest first, as the official prepend
        self.short_term: list[tuple[Tensor, ...]] | None = None
        self.num_objects = 0
        self.frame_step = 0
        self.last_memory_step = 0
        self._long_term_cache: list[tuple[Tensor, ...]] | None = None
        self._feats: list[Tensor] | None = None
        self._pending: list[tuple] | None = None

    # ------------------------------------------------------------------ memory

    @property
    def memory_frames(self) -> int:
        """Long-term entries plus the short-term frame."""
        return len(self.entries) + (self.short_term is not None)

    def long_term_memory(self) -> list[tuple[Tensor, ...]]:
        """Per layer, the long-term entries concatenated on the token axis (cached)."""
        if self._long_term_cache is None:
            per_layer = zip(*(e.layers for e in self.entries))
            self._long_term_cache = [tuple(torch.cat(parts, dim=0) for parts in zip(*layer)) for layer in per_layer]
        return self._long_term_cache

    def _insert(self, entry: MemoryEntry) -> None:
        if entry.reference and entry.tag is not None:
            self.entries = [e for e in self.entries if not (e.reference and e.tag == entry.tag)]
        self.entries.insert(0, entry)
        refs = [e for e in self.entries if e.reference]
        for old in refs[self.max_references:]:
            self.entries.remove(old)
        while len(self.entries) > self.memory_cap:
            oldest = next(e for e in reversed(self.entries) if not e.reference)
            self.entries.remove(oldest)
        self._long_term_cache = None

    def _one_hot(self, label: Tensor) -> Tensor:
        if label.dim() == 4 and label.shape[1] == self.model.num_identities:
            return label.float()
        label = label.reshape(label.shape[0], 1, *label.shape[-2:])
        ids = torch.arange(self.model.num_identities, device=label.device).view(1, -1, 1, 1)
        return (label == ids).float()

    def _fused(self, pending: list[tuple], label: Tensor) -> list[tuple[Tensor, ...]]:
        return self.model.fuse_memory(pending, self.model.id_embedding(self._one_hot(label)))

    # ------------------------------------------------------------------ procedure

    def add_reference_frame(self, image: Tensor, label: Tensor, num_objects: int, tag: int | None = None) -> None:
        """Make ``image`` with the known ``label`` a reference: prepend it to long-term memory and
        make it the short-term memory.  ``tag`` identifies the frame: a reference with the same
        tag is replaced."""
        if not 0 <= num_objects <= self.model.cfg.max_objects:
            raise ValueError(f"at most {self.model.cfg.max_objects} objects per model, got {num_objects}")
        feats = self.model.encode_image(image)
        id_emb = self.model.id_embedding(self._one_hot(label))
        _, pending = self.model.propagate(feats, None, None, id_emb)
        memory = self.model.fuse_memory(pending, id_emb)
        self._insert(MemoryEntry(memory, reference=True, tag=tag))
        size_2d = tuple(feats[-1].shape[-2:])
        self.short_term = [tuple(seq_to_2d(t, size_2d) for t in layer) for layer in memory]
        self.num_objects = num_objects
        self.last_memory_step = self.frame_step
        self._feats = self._pending = None

    def propagate(self, image: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
        """Segment the next frame: identity logits ``(1, 11, H, W)`` at ``output_size``
        (default: the input size).  Identities above ``num_objects`` are masked out."""
        if self.short_term is None:
            raise RuntimeError("add a reference frame first")
        self.frame_step += 1
        feats = self.model.encode_image(image)
        outputs, self._pending = self.model.propagate(feats, self.long_term_memory(), self.short_term)
        self._feats = feats
        logits = self.model.decode(outputs, feats)
        logits[:, self.num_objects + 1:] = -1e10 if logits.dtype == torch.float32 else -1e4
        size = tuple(image.shape[-2:]) if output_size is None else tuple(output_size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.model.cfg.align_corners)

    def update_memory(self, label: Tensor) -> None:
        """Store the last propagated frame with its mask ``label`` (at input size) as memory."""
        if self._pending is None or self._feats is None:
            raise RuntimeError("propagate a frame before updating memory")
        memory = self._fused(self._pending, label)
        size_2d = tuple(self._feats[-1].shape[-2:])
        self.short_term = [tuple(seq_to_2d(t, size_2d) for t in layer) for layer in memory]
        if self.frame_step - self.last_memory_step >= self.long_term_gap:
            self._insert(MemoryEntry(memory, reference=False))
            self.last_memory_step = self.frame_step
        self._feats = self._pending = None

    def step(self, image: Tensor, output_size: tuple[int, int]) -> Tensor:
        """Propagate one frame, update memory with its prediction; returns the label map
        ``(1, H, W)`` (int64) at ``output_size``."""
        return self.step_logits(image, output_size).argmax(dim=1)

    def step_logits(self, image: Tensor, output_size: tuple[int, int]) -> Tensor:
        """:meth:`step`, returning the identity logits ``(1, 11, H, W)`` its label map is the argmax of."""
        logits = self.propagate(image, output_size)
        label = logits.argmax(dim=1, keepdim=True)
        input_label = F.interpolate(label.float(), size=tuple(image.shape[-2:]), mode="nearest")
        self.update_memory(input_label)
        return logits
