"""``aot`` propagator backend: AOT/DeAOT mask propagation with bounded memory.

Frames are preprocessed as the official evaluation (cv2 bicubic resize of the float
RGB image to :func:`aot_input_size`, /255, ImageNet normalisation).  Session object ids
(any ints) are mapped to the model's identity slots 1..10.
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..models.aot import AOT, aot_config, aot_input_size, build_aot
from ..models.aot_memory import AOTInference
from ..stages import Frame, Mask, Propagator
from .neural import MODELS, autocast, compile_module, load_weights, model_key, stage_precision
from .registry import BackendError, BackendOptions

DEFAULT_VARIANT = "r50_deaotl"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def preprocess(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """RGB ``uint8`` image -> normalised ``(1, 3, H, W)`` float32 tensor at ``size`` = ``(H, W)``."""
    img = image.astype(np.float32)
    if img.shape[:2] != tuple(size):
        img = cv2.resize(img, dsize=(size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    img = img / 255.0
    img -= _MEAN
    img /= _STD
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)


class AOTPropagator(Propagator):
    """Propagates up to 10 objects with an AOT/DeAOT model (see :class:`AOTInference`)."""

    name = "aot"

    def __init__(self, model: AOT, device: str = "cpu", precision: str = "fp32", memory_cap: int = 8,
                 memory_gap: int | None = None, max_references: int | None = None) -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self._settings = dict(device=device, precision=precision, memory_cap=memory_cap, memory_gap=memory_gap,
                              max_references=max_references)
        self.variant = model.cfg.name
        self.autocast_dtype = stage_precision(precision, device)
        self.engine = AOTInference(self.model, long_term_gap=memory_gap, memory_cap=memory_cap,
                                   max_references=max_references)
        self._slots: dict[int, int] = {}  # session object id -> identity slot 1..10
        self._input_size: tuple[int, int] | None = None

    @property
    def objects(self) -> list[int]:
        return list(self._slots)

    def memory_frames(self) -> int:
        return self.engine.memory_frames

    def fork(self) -> "AOTPropagator":
        """A propagator on the same model (weights shared, not copied) with its own empty memory: AOT reads
        frames in any order, so the session steps it backwards over the frames held before a click."""
        return AOTPropagator(self.model, **self._settings)

    def reset(self) -> None:
        self.engine.reset()
        self._slots = {}
        self._input_size = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.autocast_dtype)

    def _image(self, frame: Frame) -> torch.Tensor:
        size = aot_input_size(frame.height, frame.width, self.variant)
        if self._input_size is not None and size != self._input_size:
            raise ValueError(f"frame size changed from the seeded one ({frame.width}x{frame.height}); reset first")
        return preprocess(frame.image, size).to(self.device)

    def _assign_slots(self, ids: list[int]) -> bool:
        """Map ``ids`` to slots, keeping the slots of objects still tracked; True if memory must restart."""
        limit = self.model.cfg.max_objects
        if len(ids) > limit:
            raise ValueError(f"AOT tracks at most {limit} objects per model; got {len(ids)} "
                             f"(ids {sorted(ids)}); remove some objects first")
        restart = any(i not in ids for i in self._slots)
        if restart:
            self._slots = {}
        for object_id in ids:
            if object_id not in self._slots:
                self._slots[object_id] = min(set(range(1, limit + 1)) - set(self._slots.values()))
        return restart

    @torch.inference_mode()
    def seed(self, frame: Frame, masks: Mapping[int, Mask]) -> None:
        ids = [int(i) for i in masks]
        if self._assign_slots(ids):
            self.engine.reset()
            self._input_size = None
        if not ids:
            return
        label = np.zeros((frame.height, frame.width), np.uint8)
        for object_id in ids:
            label[np.asarray(masks[object_id], dtype=bool)] = self._slots[object_id]
        image = self._image(frame)
        self._input_size = tuple(image.shape[-2:])
        label_t = torch.from_numpy(label).to(self.device, torch.float32)[None, None]
        label_t = F.interpolate(label_t, size=self._input_size, mode="nearest")
        with self._autocast():
            self.engine.add_reference_frame(image, label_t, num_objects=max(self._slots.values()),
                                            tag=frame.index)

    def step(self, frame: Frame) -> dict[int, Mask]:
        return self.step_with_logits(frame)[0]

    @torch.inference_mode()
    def step_with_logits(self, frame: Frame) -> tuple[dict[int, Mask], torch.Tensor | None]:
        """:meth:`step`, and the logits its masks are the argmax of: ``(1 + objects, H, W)`` float32 on the
        CPU, background first, then each tracked object in id order (None with no object)."""
        if not self._slots:
            return {}, None
        image = self._image(frame)
        with self._autocast():
            logits = self.engine.step_logits(image, (frame.height, frame.width))
        label_np = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        ordered = [0] + [self._slots[i] for i in sorted(self._slots)]
        masks = {object_id: label_np == slot for object_id, slot in self._slots.items()}
        return masks, logits[0, ordered].float().cpu()


def create(variant: str | None, options: BackendOptions) -> AOTPropagator:
    """Factory for the registry: ``aot`` or ``aot:<variant>`` (e.g. ``aot:deaott``).

    ``options.extra``: ``random_weights`` (skip loading, random init: same compute),
    ``memory_gap`` (override the long-term gap of any variant), ``max_references``.
    The long-term gap is ``options.memory_gap`` for the L variants (trained with memory
    every 5 frames) and the official 9999 (reference frames only) for T/S/B.
    """
    variant = (variant or DEFAULT_VARIANT).lower()
    try:
        cfg = aot_config(variant)
    except KeyError as exc:
        raise BackendError(str(exc.args[0])) from None
    def build() -> torch.nn.Module:
        model = build_aot(variant) if options.extra.get("random_weights") else load_weights(variant, options)
        model.encoder = compile_module(model.encoder, options.compile)  # the encoder dominates the cost
        return model

    model = MODELS.get(model_key(variant, options), build)  # one copy per device for every stream
    gap = options.extra.get("memory_gap", options.memory_gap if cfg.long_term_gap < 9999 else cfg.long_term_gap)
    return AOTPropagator(model, device=options.device, precision=options.precision,
                         memory_cap=options.memory_cap, memory_gap=int(gap),
                         max_references=options.extra.get("max_references"))
