"""Segment Anything (``segment-anything`` package) as the click-to-mask :class:`Segmenter`.

The image embedding (the expensive part) is computed once per frame and kept in
a small LRU keyed by frame index, so every further click on the same frame costs
only the prompt encoder and mask decoder.  A single click asks SAM for its three
candidate masks and keeps the one with the best predicted IoU; several clicks or
a box ask for one mask.  Weights come from :func:`unseen.weights.load_model`.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from ..stages import Box, Click, Frame, Mask, Segmenter, SelectionError
from .neural import MODELS, autocast, compile_module, load_weights, model_key, stage_precision
from .registry import BackendError, BackendOptions

VARIANTS = ("vit_h", "vit_l", "vit_b")
DEFAULT_VARIANT = "vit_b"



@dataclass(frozen=True)
class _Embedding:
    features: torch.Tensor  # 1 x C x h x w image embedding
    input_size: tuple[int, int]  # frame size after ResizeLongestSide (before padding)
    original_size: tuple[int, int]  # frame size (H, W)
    fingerprint: bytes  # a sparse pixel sample, so a reused index with a new image is recomputed


def _fingerprint(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image[::29, ::31]).tobytes(), digest_size=16).digest()


def build_sam_from_config(config: Mapping[str, Any]) -> Sam:
    """A randomly initialised SAM of a custom (small) size, for tests and benchmarks.

    Keys: ``embed_dim``, ``depth``, ``num_heads``, ``global_attn_indexes`` (image
    encoder), optional ``img_size`` (1024), ``window_size`` (14), ``prompt_dim`` (256).
    """
    img_size = int(config.get("img_size", 1024))
    prompt_dim = int(config.get("prompt_dim", 256))
    encoder = ImageEncoderViT(
        depth=int(config["depth"]), embed_dim=int(config["embed_dim"]), img_size=img_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=int(config["num_heads"]), patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(config["global_attn_indexes"]),
        window_size=int(config.get("window_size", 14)), out_chans=prompt_dim,
    )
    grid = img_size // 16
    prompts = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                            input_image_size=(img_size, img_size), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3, transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=prompt_dim,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=8 * prompt_dim, num_heads=8),
    )
    sam = Sam(image_encoder=encoder, prompt_encoder=prompts, mask_decoder=decoder,
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


class SamSegmenter(Segmenter):
    """Clicks (and an optional box) on a frame -> the mask of the object SAM finds there."""

    name = "sam"

    def __init__(self, model: Sam, *, device: str | torch.device = "cpu", precision: str = "fp32",
                 box: Box | None = None, cache_frames: int = 4) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.box = box
        self.cache_frames = max(1, int(cache_frames))
        self.encoder_runs = 0  # image-encoder passes so far (for metrics and tests)
        self.autocast_dtype = stage_precision(precision, device)
        self._cache: OrderedDict[int, _Embedding] = OrderedDict()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.autocast_dtype)

    @torch.inference_mode()
    def embed(self, frame: Frame) -> _Embedding:
        """The image embedding of ``frame``, computed once and cached by frame index."""
        fingerprint = _fingerprint(frame.image)
        cached = self._cache.get(frame.index)
        if cached is not None and cached.fingerprint == fingerprint:
            self._cache.move_to_end(frame.index)
            return cached
        resized = self.transform.apply_image(np.ascontiguousarray(frame.image))
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        with self._autocast():
            features = self.model.image_encoder(self.model.preprocess(pixels))
        self.encoder_runs += 1
        embedding = _Embedding(features, tuple(resized.shape[:2]), (frame.height, frame.width), fingerprint)
        self._cache[frame.index] = embedding
        self._cache.move_to_end(frame.index)
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)
        return embedding

    def forget(self, before_index: int) -> None:
        """Drop the cached embeddings of frames older than ``before_index``."""
        for index in [i for i in self._cache if i < before_index]:
            del self._cache[index]

    @torch.inference_mode()
    def segment(self, frame: Frame, clicks: Sequence[Click], *, neighbours: Sequence[Frame] = (),
                box: Box | None = None) -> Mask:
        """The HxW bool mask the clicks (positive/negative) and box select on ``frame``.

        ``box`` (x0, y0, x1, y1, frame pixels) defaults to the one given at creation.
        Raises :class:`SelectionError` when nothing is selected.
        """
        box = box if box is not None else self.box
        if not clicks and box is None:
            raise SelectionError(f"no click on frame {frame.index}; click inside the object")
        embedding = self.embed(frame)
        size = embedding.original_size
        points = None
        if clicks:
            coords = self.transform.apply_coords(np.array([[c.x, c.y] for c in clicks], np.float32), size)
            labels = torch.tensor([[int(c.positive) for c in clicks]], dtype=torch.int, device=self.device)
            points = (torch.as_tensor(coords, dtype=torch.float, device=self.device)[None], labels)
        boxes = None
        if box is not None:
            scaled = self.transform.apply_boxes(np.asarray(box, np.float32).reshape(1, 4), size)
            boxes = torch.as_tensor(scaled, dtype=torch.float, device=self.device)
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res, quality = self.model.mask_decoder(
                image_embeddings=embedding.features, image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=len(clicks) == 1 and box is None,
            )
        best = int(quality[0].float().argmax())
        logits = self.model.postprocess_masks(low_res[:, best:best + 1].float(), embedding.input_size, size)
        mask = (logits[0, 0] > self.model.mask_threshold).cpu().numpy()
        if not mask.any():
            raise SelectionError(_nothing_selected(frame.index, clicks, box))
        return mask


def _nothing_selected(index: int, clicks: Sequence[Click], box: Box | None) -> str:
    positive = [c for c in clicks if c.positive]
    if positive or clicks:
        click = (positive or list(clicks))[-1]
        return f"click at ({click.x:.0f},{click.y:.0f}) on frame {index} selected nothing; click inside the object"
    corners = ",".join(f"{v:.0f}" for v in box or ())
    return f"box ({corners}) on frame {index} selected nothing; draw it around the object"


def create(variant: str | None, options: BackendOptions) -> SamSegmenter:
    """Build the SAM segmenter ``variant`` (vit_h, vit_l, vit_b; default vit_b).

    ``options.extra``: ``random_weights`` (random init, same compute), ``sam_config``
    (a small random model, see :func:`build_sam_from_config`), ``box`` (x0, y0, x1, y1),
    ``cache_frames`` (embeddings kept, default 4).
    """
    kind = variant or DEFAULT_VARIANT
    if kind not in VARIANTS:
        raise BackendError(f"unknown SAM variant {variant!r}; use sam:vit_h, sam:vit_l or sam:vit_b")
    extra = options.extra
    def build() -> torch.nn.Module:
        if extra.get("random_weights"):
            model = sam_model_registry[kind](checkpoint=None)
        else:
            model = load_weights(f"sam_{kind}", options)
        model.image_encoder = compile_module(model.image_encoder, options.compile)  # the per-click cost
        return model

    if extra.get("sam_config"):  # a custom (test) configuration: its own model
        model = build_sam_from_config(extra["sam_config"])
        model.image_encoder = compile_module(model.image_encoder, options.compile)
    else:
        model = MODELS.get(model_key(f"sam_{kind}", options), build)  # one copy per device for every stream
    return SamSegmenter(model, device=options.device, precision=options.precision, box=extra.get("box"),
                        cache_frames=int(extra.get("cache_frames", 4)))
