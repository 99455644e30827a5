"""E2FGVI and E2FGVI-HQ (Li et al., "Towards An End-to-End Framework for Flow-Guided Video
Inpainting", CVPR 2022), re-implemented so the released checkpoints load with ``strict=True``.

Pipeline: SPyNet flows between the masked local frames -> convolutional encoder (1/4
resolution, 128 channels) -> bidirectional second-order deformable propagation of the
local features -> 8 temporal focal transformer blocks over local + reference tokens ->
decoder back to RGB.  The two variants differ only in the soft composition bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .e2fgvi_propagation import BidirectionalPropagation
from .e2fgvi_spynet import SPyNet
from .e2fgvi_transformer import SoftComp, SoftSplit, TemporalFocalTransformerBlock

#: the only input size E2FGVI (non-HQ) accepts, (width, height)
E2FGVI_SIZE = (432, 240)
#: E2FGVI-HQ needs (height, width) multiples of these (a 5x9-window-divisible token grid)
PAD_MULTIPLE = (60, 108)


class Encoder(nn.Module):
    """Stride-4 encoder; the last four convolutions see the 256-channel feature ``x0``
    concatenated group-wise (2, 4, 8, 1 groups) with their input."""

    groups = (2, 4, 8, 1)

    def __init__(self) -> None:
        super().__init__()
        convs = [
            nn.Conv2d(3, 64, 3, stride=2, padding=1),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.Conv2d(256, 384, 3, padding=1),
            nn.Conv2d(640, 512, 3, padding=1, groups=2),
            nn.Conv2d(768, 384, 3, padding=1, groups=4),
            nn.Conv2d(640, 256, 3, padding=1, groups=8),
            nn.Conv2d(512, 128, 3, padding=1),
        ]
        # each convolution is followed by a LeakyReLU: conv i lives at index 2*i
        self.layers = nn.ModuleList(m for conv in convs for m in (conv, nn.LeakyReLU(0.2, inplace=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_plain = 4  # convolutions before the group-wise concatenations start
        for i in range(len(self.layers) // 2):
            if i == n_plain:
                x0 = x
            elif i > n_plain:
                g = self.groups[i - n_plain - 1]
                bt, _, h, w = x.shape
                x = torch.cat((x0.view(bt, g, -1, h, w), x.view(bt, g, -1, h, w)), dim=2).view(bt, -1, h, w)
            x = self.layers[2 * i + 1](self.layers[2 * i](x))
        return x


class UpConv(nn.Module):
    """Bilinear x2 upsampling (align_corners=True) followed by a 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class InpaintGenerator(nn.Module):
    """The E2FGVI generator.

    Args:
        hq: build E2FGVI-HQ (3x3 ``bias_conv`` after soft composition, any size that is a
            multiple of 60x108) instead of E2FGVI (learned 60x108 bias: 432x240 input only).
    """

    def __init__(self, hq: bool = True, channel: int = 256, hidden: int = 512, depth: int = 8,
                 num_heads: int = 4) -> None:
        super().__init__()
        self.hq = hq
        c = channel // 2
        self.encoder = Encoder()
        self.decoder = nn.Sequential(
            UpConv(c, 128),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(128, 64, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            UpConv(64, 64),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 3, 3, padding=1),
        )
        self.feat_prop_module = BidirectionalPropagation(c)
        self.ss = SoftSplit(c, hidden)
        feat_size = (E2FGVI_SIZE[1] // 4, E2FGVI_SIZE[0] // 4)
        self.sc = SoftComp(c, hidden, bias_size=None if hq else feat_size)
        self.transformer = nn.ModuleList(TemporalFocalTransformerBlock(hidden, num_heads) for _ in range(depth))
        self.update_spynet = SPyNet()

    def forward_bidirect_flow(self, local_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SPyNet flows between adjacent local frames ([B,L,3,H,W] in [0,1]) at 1/4 resolution.

        Returns (forward flows i->i+1, backward flows i+1->i), each [B,L-1,2,H/4,W/4].
        """
        b, lt, c, h, w = local_frames.shape
        small = F.interpolate(local_frames.reshape(-1, c, h, w), size=(h // 4, w // 4), mode="bilinear",
                              align_corners=True).view(b, lt, c, h // 4, w // 4)
        first = small[:, :-1].reshape(-1, c, h // 4, w // 4)
        second = small[:, 1:].reshape(-1, c, h // 4, w // 4)
        flows_forward = self.update_spynet(first, second).view(b, lt - 1, 2, h // 4, w // 4)
        flows_backward = self.update_spynet(second, first).view(b, lt - 1, 2, h // 4, w // 4)
        return flows_forward, flows_backward

    def forward(self, masked_frames: torch.Tensor,
                num_local_frames: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Complete ``masked_frames`` [B,T,3,H,W] in [-1,1] (holes zeroed): local frames first,
        then references.

        Returns the completed frames [B*T,3,H,W] in [-1,1] (callers keep the first
        ``num_local_frames`` of each clip) and the (forward, backward) local flows.
        """
        lt = num_local_frames
        b, t, _, height, width = masked_frames.shape
        flows = self.forward_bidirect_flow((masked_frames[:, :lt] + 1) / 2)

        enc = self.encoder(masked_frames.reshape(b * t, 3, height, width))
        _, c, h, w = enc.shape
        enc = enc.view(b, t, c, h, w)
        # the released model passes the i->i+1 flows as "flows_backward"
        local = self.feat_prop_module(enc[:, :lt], flows[0], flows[1])
        enc = torch.cat((local, enc[:, lt:]), dim=1)

        tokens = self.ss(enc.view(-1, c, h, w), b)
        for block in self.transformer:
            tokens = block(tokens, (h, w))
        enc = enc + self.sc(tokens, t, (h, w)).view(b, t, c, h, w)

        out = torch.tanh(self.decoder(enc.view(b * t, c, h, w)))
        return out, flows


def build_e2fgvi(hq: bool) -> InpaintGenerator:
    """E2FGVI-HQ (``hq=True``) or E2FGVI with random weights in the official key layout."""
    return InpaintGenerator(hq=hq)
