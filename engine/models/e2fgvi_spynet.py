"""SPyNet optical flow (the six-level, batch-norm-free BasicVSR variant) and flow warping.

E2FGVI fine-tunes SPyNet end to end as its "flow completion" network; the released
checkpoints hold its weights under ``update_spynet.``, so nothing is ever downloaded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Backward-warp ``x`` [N,C,H,W] by ``flow`` [N,2,H,W] (channel 0 = x, 1 = y, in pixels).

    Bilinear sampling with ``align_corners=True``: pixel ``p`` maps to ``2p/(size-1)-1``.
    """
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype)
    xs = torch.arange(w, device=x.device, dtype=x.dtype)
    grid_x = xs.view(1, 1, w) + flow[:, 0].to(x.dtype)
    grid_y = ys.view(1, h, 1) + flow[:, 1].to(x.dtype)
    grid = torch.stack((2.0 * grid_x / max(w - 1, 1) - 1.0, 2.0 * grid_y / max(h - 1, 1) - 1.0), dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


class _ConvModule(nn.Module):
    """A 7x7 convolution stored under ``.conv`` (mmcv ConvModule's key level), optionally + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, padding=3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class SPyNetBasicModule(nn.Module):
    """One pyramid level: (reference, warped support, upsampled flow) -> flow residual."""

    def __init__(self) -> None:
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        last = len(widths) - 2
        self.basic_module = nn.Sequential(
            *(_ConvModule(cin, cout, relu=i < last) for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SPyNet(nn.Module):
    """Coarse-to-fine flow over a 6-level average-pooled pyramid of ImageNet-normalised images."""

    levels = 6

    def __init__(self) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList(SPyNetBasicModule() for _ in range(self.levels))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def compute_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Flow from ``ref`` to ``supp`` (both [N,3,H,W] in [0,1], H and W multiples of 32)."""
        n, _, h, w = ref.shape
        refs = [(ref - self.mean) / self.std]
        supps = [(supp - self.mean) / self.std]
        for _ in range(self.levels - 1):
            refs.append(F.avg_pool2d(refs[-1], kernel_size=2, stride=2))
            supps.append(F.avg_pool2d(supps[-1], kernel_size=2, stride=2))

        flow = ref.new_zeros(n, 2, h // 32, w // 32)
        for level, (r, s) in enumerate(zip(reversed(refs), reversed(supps))):
            if level > 0:
                flow = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(s, flow, padding_mode="border")
            flow = flow + self.basic_module[level](torch.cat((r, warped, flow), dim=1))
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Flow from ``ref`` to ``supp`` at their own size (resized to multiples of 32 internally)."""
        h, w = ref.shape[2:]
        h_up, w_up = -(-h // 32) * 32, -(-w // 32) * 32
        ref = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = F.interpolate(self.compute_flow(ref, supp), size=(h, w), mode="bilinear", align_corners=False)
        scale = flow.new_tensor([w / w_up, h / h_up]).view(1, 2, 1, 1)
        return flow * scale
