"""AOT and DeAOT video object segmentation models (yoxu515/aot-benchmark), re-implemented.

``build_aot(variant)`` returns a model whose ``state_dict()`` has exactly the key layout
of the official released checkpoint of that variant, so it loads with ``strict=True``.
The frame-by-frame inference procedure (reference frame, propagation, bounded memory)
lives in :mod:`.aot_memory`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .aot_encoders import MobileNetV2, ResNet50, SwinB
from .aot_layers import (DualBranchGPM, FPNSegmentationHead, LongShortTermTransformer, map_to_seq,
                         sine_position_embedding)

#: Keys of the current model that the AOT (non-DeAOT) checkpoints of 2021 lack.
AOT2021_MISSING_KEYS = ("LSTT.mask_token",)

#: Long edge cap of the official inference resize (``MultiRestrictSize``, scale 1).
MAX_LONG_EDGE = 480 * 1.3 * 800.0 / 480

_ENCODER_DIMS = {
    "mobilenetv2": (24, 32, 96, 1280),
    "resnet50": (256, 512, 1024, 1024),
    "swin_base": (128, 256, 512, 512),
}


@dataclass(frozen=True)
class AOTConfig:
    """Architecture and inference settings of one released variant."""

    name: str
    encoder: str  # mobilenetv2 | resnet50 | swin_base
    encoder_dims: tuple[int, int, int, int]  # channels at 1/4, 1/8, 1/16, 1/16
    num_layers: int  # LSTT (AOT) or GPM (DeAOT) layers
    deaot: bool  # DeAOT (gated propagation, two branches) or AOT
    heads: int  # self- and long/short-term attention heads
    align_corners: bool  # False for Swin: inputs are multiples of 16 instead of 16k+1
    id_kernel: int  # ID bank conv: 17x17 stride 16 padding 8, or 16x16 stride 16 (Swin)
    long_term_gap: int  # official test-time gap between long-term memory frames (9999: reference only)
    embed_dim: int = 256
    max_objects: int = 10
    stride: int = 16


def _config(name: str) -> AOTConfig:
    deaot = "deaot" in name
    encoder = "resnet50" if name.startswith("r50_") else "swin_base" if name.startswith("swinb_") else "mobilenetv2"
    size = name[-1]  # t, s, b or l
    swin = encoder == "swin_base"
    return AOTConfig(name=name, encoder=encoder, encoder_dims=_ENCODER_DIMS[encoder],
                     num_layers={"t": 1, "s": 2, "b": 3, "l": 3}[size], deaot=deaot, heads=1 if deaot else 8,
                     align_corners=not swin, id_kernel=16 if swin else 17,
                     long_term_gap=5 if size == "l" else 9999)


VARIANTS: dict[str, AOTConfig] = {
    n: _config(n) for n in ("aott", "aots", "aotb", "aotl", "r50_aotl", "swinb_aotl",
                            "deaott", "deaots", "deaotb", "deaotl", "r50_deaotl", "swinb_deaotl")
}


def aot_config(variant: str) -> AOTConfig:
    try:
        return VARIANTS[variant.lower()]
    except KeyError:
        raise KeyError(f"unknown AOT variant {variant!r}; known: {', '.join(VARIANTS)}") from None


def aot_input_size(h: int, w: int, variant: str) -> tuple[int, int]:
    """Network input size ``(H, W)`` for a ``h x w`` frame, as the official ``MultiRestrictSize``.

    The long edge is capped at 1040 (never upscaled), then each side is rounded
    (half to even) to the nearest ``16k+1`` (align-corners models) or multiple of 16 (Swin).
    """
    cfg = aot_config(variant)
    scale = min(1.0, MAX_LONG_EDGE / max(h, w))
    new_h, new_w = int(scale * h), int(scale * w)
    s = cfg.stride

    def snap(n: int) -> int:
        if cfg.align_corners:
            return n if (n - 1) % s == 0 else int(np.around((n - 1) / s) * s + 1)
        return n if n % s == 0 else int(np.around(n / s) * s)

    return snap(new_h), snap(new_w)


def _build_encoder(name: str) -> nn.Module:
    if name == "mobilenetv2":
        return MobileNetV2()
    if name == "resnet50":
        return ResNet50()
    return SwinB()


class AOT(nn.Module):
    """AOT / DeAOT network: encoder, identity bank, long short-term transformer, FPN decoder.

    The model is stateless; :class:`~.aot_memory.AOTInference` drives it frame by frame.
    """

    def __init__(self, cfg: AOTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.encoder = _build_encoder(cfg.encoder)
        self.encoder_projector = nn.Conv2d(cfg.encoder_dims[-1], d, kernel_size=1)
        if cfg.deaot:
            self.LSTT = DualBranchGPM(cfg.num_layers, d)
            decoder_in = 2 * d
        else:
            self.LSTT = LongShortTermTransformer(cfg.num_layers, d, cfg.heads, cfg.heads)
            decoder_in = d * (cfg.num_layers + 1)
        self.decoder = FPNSegmentationHead(decoder_in, cfg.max_objects + 1, cfg.encoder_dims, d,
                                           align_corners=cfg.align_corners)
        k = cfg.id_kernel
        self.patch_wise_id_bank = nn.Conv2d(cfg.max_objects + 1, d, kernel_size=k, stride=cfg.stride,
                                            padding=(k - 1) // 2 if cfg.align_corners else 0)
        if cfg.deaot:
            self.id_norm = nn.LayerNorm(d)

    @property
    def num_identities(self) -> int:
        return self.cfg.max_objects + 1

    def encode_image(self, image: Tensor) -> list[Tensor]:
        """Normalised image ``(B, 3, H, W)`` -> features at 1/4, 1/8, 1/16 and the 256-d 1/16 embedding."""
        feats = self.encoder(image)
        return feats[:-1] + [self.encoder_projector(feats[-1])]

    def id_embedding(self, one_hot: Tensor) -> Tensor:
        """One-hot identity mask ``(B, 11, H, W)`` at input size -> ``(HW, B, C)`` at 1/16."""
        emb = map_to_seq(self.patch_wise_id_bank(one_hot))
        return self.id_norm(emb) if self.cfg.deaot else emb

    def position_embedding(self, feature: Tensor) -> Tensor | None:
        """Sine position embedding ``(HW, 1, C)`` for AOT's self-attention; DeAOT uses none."""
        if self.cfg.deaot:
            return None
        h, w = feature.shape[-2:]
        return map_to_seq(sine_position_embedding(h, w, self.cfg.embed_dim // 2, device=feature.device))

    def propagate(self, feats: list[Tensor], long_term: list | None, short_term: list | None,
                  id_emb: Tensor | None = None) -> tuple[list[Tensor], list[tuple]]:
        """Run the transformer on the current frame against memory (or, with ``id_emb``, itself).

        Returns the decoder inputs and, per layer, the frame's unfused memory, which
        :meth:`fuse_memory` turns into memory once the frame's mask is known.
        """
        emb = feats[-1]
        pos = self.position_embedding(emb)
        if pos is not None:
            pos = pos.to(emb.dtype).expand(-1, emb.shape[0], -1)
        return self.LSTT(map_to_seq(emb), long_term, short_term, id_emb, pos, tuple(emb.shape[-2:]))

    def fuse_memory(self, pending: list[tuple], id_emb: Tensor) -> list[tuple[Tensor, ...]]:
        """Per-layer memory ``(K, V[, ID_V])`` sequences of a frame whose identity embedding is ``id_emb``."""
        return [layer.fuse_memory(p, id_emb) for layer, p in zip(self.LSTT.layers, pending)]

    def decode(self, lstt_outputs: list[Tensor], feats: list[Tensor]) -> Tensor:
        """Identity logits ``(B, 11, H/4, W/4)``."""
        b, _, h, w = feats[-1].shape
        maps = [x.reshape(h, w, b, -1).permute(2, 3, 0, 1) for x in lstt_outputs]
        x = torch.cat([feats[-1]] + maps, dim=1) if not self.cfg.deaot else maps[-1]
        return self.decoder(x, feats)


def build_aot(variant: str) -> AOT:
    """Build the AOT/DeAOT ``variant`` (e.g. ``"r50_deaotl"``) with random weights, in eval mode."""
    return AOT(aot_config(variant)).eval()
