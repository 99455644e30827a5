"""E2FGVI / E2FGVI-HQ inpainter: the official sliding-window inference, streamed.

Windows are centred on every ``neighbor_stride``-th frame ``c`` and hold the local frames
``c - stride .. c + stride`` plus reference frames; a window runs as soon as its last frame
has arrived.  Each local frame's prediction is composited into its (dilated) hole and
merged with earlier windows' results by the official running average (0.5 / 0.5, after
truncating the prediction to uint8), so one model run serves several targets.

Geometry: E2FGVI always runs at 432x240.  E2FGVI-HQ runs either on the whole frame,
mirror-padded to multiples of 60x108 (``mode="full"``), or on a crop around the window's
holes scaled to fit 432x240 (``mode="crop"``, the default for frames larger than that), so
its cost does not grow with the frame size.  Only the dilated hole ever changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from ..models.e2fgvi import E2FGVI_SIZE, PAD_MULTIPLE, build_e2fgvi
from ..stages import Image, Inpainter, InpaintRequest, Mask, dilate_hole
from .neural import MODELS, autocast, compile_module, load_weights, model_key, stage_precision
from .registry import BackendError, BackendOptions

log = logging.getLogger("unseen.e2fgvi")

_VARIANTS = {None: True, "hq": True, "e2fgvi_hq": True, "e2fgvi": False, "base": False}


def mirror_pad(x: torch.Tensor, multiple: tuple[int, int] = PAD_MULTIPLE) -> torch.Tensor:
    """Pad [..., H, W] at the bottom/right to multiples of ``multiple`` (h, w) by mirroring
    (concatenation with the flipped tensor, edge pixel repeated), as the official test does."""
    h, w = x.shape[-2:]
    th, tw = h + (-h % multiple[0]), w + (-w % multiple[1])
    while x.shape[-2] < th:
        x = torch.cat((x, x.flip(-2)), dim=-2)
    while x.shape[-1] < tw:
        x = torch.cat((x, x.flip(-1)), dim=-1)
    return x[..., :th, :tw]


def predict(model: nn.Module, frames: np.ndarray, holes: np.ndarray, num_local: int,
            device: torch.device | str = "cpu", amp: torch.dtype | None = None) -> np.ndarray:
    """One model run: ``frames`` [T,H,W,3] uint8 and dilated ``holes`` [T,H,W] bool, local
    frames first.  Returns the local predictions [num_local,H,W,3] as float32 in [0, 255]."""
    h, w = frames.shape[1:3]
    imgs = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    masks = torch.from_numpy(np.ascontiguousarray(holes)).to(device)[:, None].float()
    masked = mirror_pad((imgs * (1 - masks))[None])
    dev = torch.device(device)
    with torch.inference_mode(), autocast(dev, amp):
        out, _ = model(masked, num_local)
    out = (out[:num_local, :, :h, :w].float() + 1) / 2
    return out.permute(0, 2, 3, 1).cpu().numpy() * 255


def composite(pred: np.ndarray, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The prediction truncated to uint8 inside ``hole``, the original image elsewhere."""
    return np.where(hole[..., None], np.clip(pred, 0, 255).astype(np.uint8), image)


def reference_ids(f: int, neighbor_ids: Sequence[int], length: int, ref_length: int, num_ref: int) -> list[int]:
    """The official test's reference frames for the window centred on ``f``."""
    if num_ref == -1:
        return [i for i in range(0, length, ref_length) if i not in neighbor_ids]
    refs: list[int] = []
    start, end = max(0, f - ref_length * (num_ref // 2)), min(length, f + ref_length * (num_ref // 2))
    for i in range(start, end + 1, ref_length):
        if i not in neighbor_ids:
            if len(refs) > num_ref:
                break
            refs.append(i)
    return refs


def inpaint_clip(model: nn.Module, frames: Sequence[np.ndarray], holes: Sequence[np.ndarray],
                 neighbor_stride: int = 5, ref_length: int = 10, num_ref: int = -1,
                 device: torch.device | str = "cpu") -> list[np.ndarray]:
    """The official whole-clip loop (``test.py``) on frames held in memory, at their own size.

    ``holes`` are already dilated.  Returns the completed uint8 frames.
    """
    length = len(frames)
    frames_np, holes_np = np.stack(frames), np.stack(holes).astype(bool)
    merged: list[np.ndarray | None] = [None] * length
    for f in range(0, length, neighbor_stride):
        neighbors = list(range(max(0, f - neighbor_stride), min(length, f + neighbor_stride + 1)))
        ids = neighbors + reference_ids(f, neighbors, length, ref_length, num_ref)
        preds = predict(model, frames_np[ids], holes_np[ids], len(neighbors), device)
        for pred, idx in zip(preds, neighbors):
            comp = composite(pred, frames_np[idx], holes_np[idx])
            old = merged[idx]
            merged[idx] = comp if old is None else old.astype(np.float32) * 0.5 + comp.astype(np.float32) * 0.5
    return [m.astype(np.uint8) for m in merged]


@dataclass
class _Merged:
    """The running merge of one frame's composites, limited to its hole's bounding box."""

    revision: int
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    patch: np.ndarray  # uint8 after one window, float32 after several
    windows: set[int] = field(default_factory=set)


def _bbox(mask: Mask) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def _span(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) about its centre to ``size`` (at most ``limit``), kept inside [0, limit)."""
    size = min(max(size, hi - lo), limit)
    start = min(max((lo + hi - size) // 2, 0), limit - size)
    return start, start + size


class E2FGVIInpainter(Inpainter):
    """Streams E2FGVI over the session's window of frames (see the module docstring)."""

    def __init__(self, model: nn.Module, hq: bool, options: BackendOptions) -> None:
        extra = options.extra
        self.model = model
        self.hq = hq
        self.device = torch.device(options.device)
        self.amp = stage_precision(options.precision, options.device)
        self.future, self.past, self.dilation = options.future, options.past, options.dilation
        self.ref_stride = options.ref_stride
        self.neighbor_stride = int(extra.get("neighbor_stride", max(1, min(5, options.future))))
        self.mode = str(extra.get("mode", "crop" if hq else "full"))
        if self.mode not in ("crop", "full"):
            raise BackendError(f"e2fgvi mode {self.mode!r} is not one of: crop, full")
        #: context kept around the holes in crop mode, as a fraction of the holes' extent
        self.crop_margin = float(extra.get("crop_margin", 0.5))
        self._merged: dict[int, _Merged] = {}
        #: windows whose reduced-precision prediction was not finite and were run again in fp32
        self.fp32_reruns = 0

    def reset(self) -> None:
        self._merged.clear()

    def inpaint(self, request: InpaintRequest) -> Image:
        t = request.target
        entry = request.entries[t]
        hole = dilate_hole(entry.hole, self.dilation)
        if not hole.any():
            return entry.frame.image
        for idx in [i for i in self._merged if i not in request.entries]:
            del self._merged[idx]

        last = max(request.entries)
        stream_end = last < t + self.future
        ns = self.neighbor_stride
        first = -(-(t - ns) // ns) * ns  # windows centred on c in [t - ns, t + ns] hold t
        for c in range(first, t + ns + 1, ns):
            if c < 0 or c > last or not (c + ns <= last or stream_end):
                continue
            if not self._has(t, entry.revision, c):
                self._run(c, request)
        if not self._has(t, entry.revision):  # not enough future frames for a full window
            self._run(t - t % ns, request)

        merged = self._merged[t]
        y0, y1, x0, x1 = merged.box
        out = entry.frame.image.copy()
        region, inside = out[y0:y1, x0:x1], hole[y0:y1, x0:x1]
        region[inside] = merged.patch[inside].astype(np.uint8)
        return out

    def _has(self, idx: int, revision: int, window: int | None = None) -> bool:
        merged = self._merged.get(idx)
        if merged is None or merged.revision != revision:
            return False
        return bool(merged.windows) if window is None else window in merged.windows

    def _run(self, c: int, request: InpaintRequest) -> None:
        """Run the window centred on ``c`` on the frames at hand and merge its predictions."""
        ns = self.neighbor_stride
        local = [request.entries[i] for i in range(c - ns, c + ns + 1) if i in request.entries]
        local_ids = {e.frame.index for e in local}
        refs = {e.frame.index: e for e in request.references if e.frame.index not in local_ids}
        for i, e in request.entries.items():  # frames at hand on the reference grid count too
            if i not in local_ids and i % self.ref_stride == 0:
                refs.setdefault(i, e)
        window = local + [refs[i] for i in sorted(refs)]
        holes = [dilate_hole(e.hole, self.dilation) for e in window]
        images = [e.frame.image for e in window]

        y0, y1, x0, x1 = self._region(images[0].shape[:2], holes[:len(local)])
        size = self._model_size(y1 - y0, x1 - x0)
        crops = np.stack([self._resize(im[y0:y1, x0:x1], size, cv2.INTER_AREA) for im in images])
        crop_holes = np.stack([self._resize_mask(hl[y0:y1, x0:x1], size) for hl in holes])
        preds = predict(self.model, crops, crop_holes, len(local), self.device, self.amp)
        if self.amp is not None and not np.isfinite(preds).all():
            # seen with bf16 on CUDA on real holes: the window runs again in fp32 rather than paste garbage
            self.fp32_reruns += 1
            if self.fp32_reruns == 1:
                log.warning("e2fgvi: %s gave non-finite values on a %dx%d window; such windows run again in "
                            "fp32 (use --precision fp32 to skip the reduced-precision try)",
                            str(self.amp).removeprefix("torch."), size[0], size[1])
            preds = predict(self.model, crops, crop_holes, len(local), self.device, None)

        for e, hole, pred in zip(local, holes, preds):
            if not hole.any():
                continue
            pred = self._resize(pred, (x1 - x0, y1 - y0), cv2.INTER_LINEAR)
            by0, by1, bx0, bx1 = box = _bbox(hole)
            comp = composite(pred[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0], e.frame.image[by0:by1, bx0:bx1],
                             hole[by0:by1, bx0:bx1])
            merged = self._merged.get(e.frame.index)
            if merged is None or merged.revision != e.revision:
                self._merged[e.frame.index] = _Merged(e.revision, box, comp, {c})
            elif c not in merged.windows:
                merged.patch = merged.patch.astype(np.float32) * 0.5 + comp.astype(np.float32) * 0.5
                merged.windows.add(c)

    def _region(self, shape: tuple[int, int], holes: Sequence[Mask]) -> tuple[int, int, int, int]:
        """The frame region the model sees: the whole frame, or a crop around the holes."""
        h, w = shape
        if self.mode == "full":
            return 0, h, 0, w
        y0, y1, x0, x1 = _bbox(np.logical_or.reduce([hl for hl in holes if hl.any()]))
        margin = int(self.crop_margin * max(y1 - y0, x1 - x0)) + 16
        mw, mh = E2FGVI_SIZE
        ch, cw = y1 - y0 + 2 * margin, x1 - x0 + 2 * margin
        # grow to the model's aspect ratio and to at least its size (native detail when small)
        ch, cw = max(ch, round(cw * mh / mw), mh), max(cw, round(ch * mw / mh), mw)
        ys, xs = _span(y0, y1, ch, h), _span(x0, x1, cw, w)
        return ys[0], ys[1], xs[0], xs[1]

    def _model_size(self, h: int, w: int) -> tuple[int, int]:
        """(width, height) the region is resized to before mirror padding."""
        mw, mh = E2FGVI_SIZE
        if not self.hq:
            return mw, mh
        if self.mode == "full" or (w <= mw and h <= mh):
            return w, h
        scale = min(mw / w, mh / h)
        return max(1, min(mw, round(w * scale))), max(1, min(mh, round(h * scale)))

    @staticmethod
    def _resize(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
        if image.shape[1] == size[0] and image.shape[0] == size[1]:
            return image
        if interpolation == cv2.INTER_AREA and (size[0] > image.shape[1] or size[1] > image.shape[0]):
            interpolation = cv2.INTER_LINEAR  # area is for shrinking
        return cv2.resize(image, size, interpolation=interpolation)

    @staticmethod
    def _resize_mask(mask: Mask, size: tuple[int, int]) -> Mask:
        """Resized hole; a pixel is hole if any part of it was (the hole never shrinks)."""
        if mask.shape[1] == size[0] and mask.shape[0] == size[1]:
            return mask
        return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0


def _load(hq: bool, options: BackendOptions) -> nn.Module:
    name = "e2fgvi_hq" if hq else "e2fgvi"
    if options.extra.get("random_weights"):
        return MODELS.get(model_key(name, options), lambda: build_e2fgvi(hq).eval().to(options.device))
    return MODELS.get(model_key(name, options), lambda: load_weights(name, options))


def create(variant: str | None, options: BackendOptions) -> E2FGVIInpainter:
    """``e2fgvi`` / ``e2fgvi:hq``: E2FGVI-HQ; ``e2fgvi:e2fgvi`` / ``e2fgvi:base``: E2FGVI (432x240)."""
    if variant not in _VARIANTS:
        raise BackendError(f"unknown e2fgvi variant {variant!r}; use hq or base")
    hq = _VARIANTS[variant]
    model = compile_module(_load(hq, options), options.compile)
    log.info("e2fgvi%s on %s (%s)", "-hq" if hq else "", options.device, options.precision)
    return E2FGVIInpainter(model, hq, options)
