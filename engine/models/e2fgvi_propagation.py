"""Flow-guided feature propagation: BasicVSR++-style second-order deformable alignment.

The modulated deformable convolution uses ``torchvision.ops.deform_conv2d`` (same offset
layout as mmcv's DCNv2: per deform group, per kernel tap, (dy, dx)), so no compiled
extension is needed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from .e2fgvi_spynet import flow_warp


def modulated_deform_conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None, padding: int = 1) -> torch.Tensor:
    """DCNv2 with stride 1; deform groups are inferred from ``offset`` (2*kh*kw channels each).

    Like mmcv, everything is cast to the offset's dtype, which keeps it usable under autocast.
    """
    dtype = offset.dtype
    return deform_conv2d(x.to(dtype), offset, weight.to(dtype), None if bias is None else bias.to(dtype),
                         padding=(padding, padding), mask=mask.to(dtype))


class SecondOrderDeformableAlignment(nn.Module):
    """Aligns the two previous propagated features to the current frame with one modulated DCN.

    ``weight``/``bias`` are the DCN's parameters; ``conv_offset`` predicts offset residuals
    (bounded by ``max_residue_magnitude``) on top of the two flows, and the modulation masks.
    """

    def __init__(self, in_channels: int, out_channels: int, deform_groups: int = 16,
                 max_residue_magnitude: float = 10.0) -> None:
        super().__init__()
        self.deform_groups = deform_groups
        self.max_residue_magnitude = max_residue_magnitude
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset = nn.Sequential(
            nn.Conv2d(3 * out_channels + 4, out_channels, 3, 1, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(out_channels, 27 * deform_groups, 3, 1, 1),
        )
        stdv = 1.0 / math.sqrt(in_channels * 9)
        nn.init.uniform_(self.weight, -stdv, stdv)
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, flow_1: torch.Tensor, flow_2: torch.Tensor) -> torch.Tensor:
        """``x``: cat(feat_n1, feat_n2) [N,2C,H,W]; ``cond``: conditions [N,3C,H,W]; flows [N,2,H,W]."""
        out = self.conv_offset(torch.cat((cond, flow_1, flow_2), dim=1))
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset_1 = self.max_residue_magnitude * torch.tanh(o1)
        offset_2 = self.max_residue_magnitude * torch.tanh(o2)
        # offsets are (dy, dx) per tap, the flows (x, y): swap, then tile over taps and groups
        offset_1 = offset_1 + flow_1.flip(1).repeat(1, offset_1.size(1) // 2, 1, 1)
        offset_2 = offset_2 + flow_2.flip(1).repeat(1, offset_2.size(1) // 2, 1, 1)
        # groups 0..7 sample feat_n1 with offset_1, groups 8..15 feat_n2 with offset_2
        offset = torch.cat((offset_1, offset_2), dim=1)
        return modulated_deform_conv(x, offset, torch.sigmoid(mask), self.weight, self.bias)


class BidirectionalPropagation(nn.Module):
    """Backward then forward second-order propagation of local-frame features, fused with a 1x1 conv."""

    directions = ("backward_", "forward_")

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(self.directions):
            self.deform_align[name] = SecondOrderDeformableAlignment(2 * channel, channel, deform_groups=16)
            self.backbone[name] = nn.Sequential(
                nn.Conv2d((2 + i) * channel, channel, 3, 1, 1),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Conv2d(channel, channel, 3, 1, 1),
            )
        self.fusion = nn.Conv2d(2 * channel, channel, 1, 1, 0)

    def _propagate(self, name: str, feats: Sequence[torch.Tensor], flows: torch.Tensor,
                   backward: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        """One direction.  ``backward`` (forward pass only) holds the backward results in time order.

        Returns the propagated features in processing order.
        """
        order = range(len(feats)) if backward is not None else range(len(feats) - 1, -1, -1)
        outs: list[torch.Tensor] = []
        feat_prop = torch.zeros_like(feats[0])
        for i, idx in enumerate(order):
            feat_current = feats[idx]
            if i > 0:
                # as released: step i reads flows i-1 and i-2 in both directions
                flow_n1 = flows[:, i - 1]
                cond_n1 = flow_warp(feat_prop, flow_n1)
                if i > 1:
                    feat_n2 = outs[-2]
                    flow_n2 = flow_n1 + flow_warp(flows[:, i - 2], flow_n1)
                    cond_n2 = flow_warp(feat_n2, flow_n2)
                else:
                    feat_n2, flow_n2, cond_n2 = (torch.zeros_like(y) for y in (feat_prop, flow_n1, cond_n1))
                cond = torch.cat((cond_n1, feat_current, cond_n2), dim=1)
                feat_prop = self.deform_align[name](torch.cat((feat_prop, feat_n2), dim=1), cond, flow_n1, flow_n2)
            parts = [feat_current] + ([] if backward is None else [backward[idx]]) + [feat_prop]
            feat_prop = feat_prop + self.backbone[name](torch.cat(parts, dim=1))
            outs.append(feat_prop)
        return outs

    def forward(self, x: torch.Tensor, flows_backward: torch.Tensor, flows_forward: torch.Tensor) -> torch.Tensor:
        """``x`` [B,T,C,H,W]; flows [B,T-1,2,H,W]. Returns [B,T,C,H,W].

        The backward pass walks the frames in reverse but, as in the released model, reads
        its flows at forward-time indices (``i-1`` first order, ``i-2`` second order for step
        ``i``); the weights were trained this way.
        """
        feats = x.unbind(1)
        backward = self._propagate("backward_", feats, flows_backward, None)[::-1]
        forward = self._propagate("forward_", feats, flows_forward, backward)
        fused = [self.fusion(torch.cat((bwd, fwd), dim=1)) for bwd, fwd in zip(backward, forward)]
        return torch.stack(fused, dim=1) + x
