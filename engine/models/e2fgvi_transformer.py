"""Temporal focal transformer of E2FGVI: soft split/composition, focal window attention, F3N.

Tokens are 7x7 patches (stride 3, padding 3) of the 1/4-resolution features, laid out as
[B, T, h, w, C].  Attention runs in 5x9 windows across all frames; each window's keys are
its own tokens, four diagonally rolled copies (the window's surroundings) and a 5x9
neighbourhood of pooled window summaries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

T2T_KERNEL = (7, 7)
T2T_STRIDE = (3, 3)
T2T_PADDING = (3, 3)


def token_grid(size: tuple[int, int]) -> tuple[int, int]:
    """Token grid of a feature map of ``size`` (h, w) under the 7/3/3 soft split."""
    return tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(size, T2T_PADDING, T2T_KERNEL, T2T_STRIDE))


def _fold(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.fold(x, output_size=size, kernel_size=T2T_KERNEL, stride=T2T_STRIDE, padding=T2T_PADDING)


def _unfold(x: torch.Tensor) -> torch.Tensor:
    return F.unfold(x, kernel_size=T2T_KERNEL, stride=T2T_STRIDE, padding=T2T_PADDING)


class SoftSplit(nn.Module):
    """Features [B*T,C,H,W] -> overlapping 7x7 patches projected to tokens [B,T,h,w,hidden]."""

    def __init__(self, channel: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Linear(T2T_KERNEL[0] * T2T_KERNEL[1] * channel, hidden)

    def forward(self, x: torch.Tensor, b: int) -> torch.Tensor:
        fh, fw = token_grid(x.shape[-2:])
        feat = self.embedding(_unfold(x).transpose(1, 2))
        return feat.view(b, -1, fh, fw, feat.size(-1))


class SoftComp(nn.Module):
    """Tokens [B,T,h,w,hidden] -> features [B*T,C,H,W]: patches are folded back, overlaps summed.

    E2FGVI adds a learned per-position ``bias`` (which fixes the feature size to 60x108);
    E2FGVI-HQ applies a 3x3 ``bias_conv`` instead, so any size works.
    """

    def __init__(self, channel: int, hidden: int, bias_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.embedding = nn.Linear(hidden, T2T_KERNEL[0] * T2T_KERNEL[1] * channel)
        if bias_size is None:
            self.bias = None
            self.bias_conv = nn.Conv2d(channel, channel, kernel_size=3, padding=1)
        else:
            self.bias = nn.Parameter(torch.zeros(channel, *bias_size))
            self.bias_conv = None

    def forward(self, x: torch.Tensor, t: int, size: tuple[int, int]) -> torch.Tensor:
        b = x.shape[0]
        feat = self.embedding(x.reshape(b * t, -1, x.shape[-1]))
        feat = _fold(feat.transpose(1, 2), size)
        return feat + self.bias[None] if self.bias is not None else self.bias_conv(feat)


class FusionFeedForward(nn.Module):
    """F3N: Linear -> soft composition and split again (overlaps averaged) -> GELU -> Linear."""

    hidden = 1960  # 40 channels per 7x7 patch

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Linear(dim, self.hidden))
        self.conv2 = nn.Sequential(nn.GELU(), nn.Linear(self.hidden, dim))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``x`` [B,N,dim] with N = T*h*w tokens of feature maps of ``size``."""
        x = self.conv1(x)
        b, n, c = x.shape
        n_vecs = token_grid(size)[0] * token_grid(size)[1]
        # overlap count; the released model hard-codes 49 (7*7) values per patch here
        normalizer = _fold(x.new_ones(1, 49, n_vecs), size)
        x = _fold(x.view(-1, n_vecs, c).transpose(1, 2), size)
        x = _unfold(x / normalizer).transpose(1, 2).reshape(b, n, c)
        return self.conv2(x)


def _partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """[B,T,H,W,C] -> [B*nWh*nWw, T, wh*ww, C] (windows in row-major order)."""
    b, t, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, t, h // wh, wh, w // ww, ww, c).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(-1, t, wh * ww, c)


def _reverse(windows: torch.Tensor, window: tuple[int, int], b: int, t: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_partition`: [B*nWh*nWw, T*wh*ww, C] -> [B,T,H,W,C]."""
    wh, ww = window
    x = windows.view(b, h // wh, w // ww, t, wh, ww, -1).permute(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(b, t, h, w, -1)


class WindowAttention(nn.Module):
    """Focal attention of each 5x9 window (all frames) over local, rolled and pooled keys."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], expand: tuple[int, int],
                 focal_window: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.expand = expand
        self.focal_window = focal_window
        # positions of the four rolled copies (tl, tr, bl, br) that lie outside the window
        eh, ew = expand
        corners = torch.ones(4, *window)
        corners[0, :-eh, :-ew] = 0
        corners[1, :-eh, ew:] = 0
        corners[2, eh:, :-ew] = 0
        corners[3, eh:, ew:] = 0
        self.register_buffer("valid_ind_rolled", corners.flatten().nonzero().view(-1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[nW, T, n, C] -> [nW, heads, T*n, C/heads]."""
        nw, t, n, c = x.shape
        return x.view(nw, t, n, self.num_heads, c // self.num_heads).permute(0, 3, 1, 2, 4).reshape(
            nw, self.num_heads, t * n, c // self.num_heads)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``x`` [B,T,H,W,C] tokens; ``pooled`` [B,T,nWh,nWw,C] window summaries.

        Returns the attended windows [B*nWh*nWw, T*wh*ww, C].
        """
        b, t, h, w, c = x.shape
        q, k, v = self.qkv(x).view(b, t, h, w, 3, c).unbind(4)
        q_win, k_win, v_win = (self._heads(_partition(y, self.window)) for y in (q, k, v))

        eh, ew = self.expand
        shifts = ((-eh, -ew), (-eh, ew), (eh, -ew), (eh, ew))
        k_rolled, v_rolled = (
            self._heads(torch.cat([_partition(torch.roll(y, s, dims=(2, 3)), self.window) for s in shifts],
                                  dim=2)[:, :, self.valid_ind_rolled])
            for y in (k, v)
        )

        # pooled keys/values: the shared qkv projection of each window summary, gathered over
        # a focal_window neighbourhood of windows (zero padded; padded slots masked with -100)
        nwh, nww = pooled.shape[2:4]
        fh, fw = self.focal_window
        pad = (fh // 2, fw // 2)
        kv_pooled = self.qkv(pooled)[..., c:].reshape(b * t, nwh, nww, 2 * c).permute(0, 3, 1, 2)
        kv_pooled = F.unfold(kv_pooled, kernel_size=(fh, fw), padding=pad)  # [B*T, 2C*fh*fw, L]
        kv_pooled = kv_pooled.view(b, t, 2, c, fh * fw, nwh * nww).permute(2, 0, 5, 1, 4, 3)
        k_pool, v_pool = (self._heads(y.reshape(b * nwh * nww, t, fh * fw, c)) for y in kv_pooled.unbind(0))
        valid = F.unfold(x.new_ones(1, 1, nwh, nww), kernel_size=(fh, fw), padding=pad)  # [1, fh*fw, L]
        pool_bias = (valid[0].t() - 1.0) * 100.0  # 0 inside, -100 on padding: [L, fh*fw]
        pool_bias = pool_bias.repeat(1, t).repeat(b, 1)  # [B*L, T*fh*fw]

        k_all = torch.cat((k_win, k_rolled, k_pool), dim=2)
        v_all = torch.cat((v_win, v_rolled, v_pool), dim=2)
        n_local = k_win.shape[2] + k_rolled.shape[2]
        bias = torch.cat((pool_bias.new_zeros(pool_bias.shape[0], n_local), pool_bias), dim=1)
        out = F.scaled_dot_product_attention(q_win, k_all, v_all, attn_mask=bias[:, None, None, :].to(q_win.dtype))
        out = out.transpose(1, 2).reshape(out.shape[0], -1, c)
        return self.proj(out)


class TemporalFocalTransformerBlock(nn.Module):
    """Pre-norm block: focal window attention and F3N, each with a residual."""

    def __init__(self, dim: int = 512, num_heads: int = 4, window: tuple[int, int] = (5, 9),
                 focal_window: tuple[int, int] = (5, 9)) -> None:
        super().__init__()
        self.window = window
        # pooling of each window to one token (focal level 1); initialised to the mean
        self.pool_layers = nn.ModuleList([nn.Linear(window[0] * window[1], 1)])
        nn.init.constant_(self.pool_layers[0].weight, 1.0 / (window[0] * window[1]))
        nn.init.zeros_(self.pool_layers[0].bias)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, tuple(s // 2 for s in window), focal_window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FusionFeedForward(dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``x`` [B,T,h,w,C] tokens of feature maps of ``size``; h, w multiples of the window."""
        b, t, h, w, c = x.shape
        wh, ww = self.window
        if h % wh or w % ww:
            raise ValueError(f"token grid {h}x{w} is not a multiple of the {wh}x{ww} window; pad the input "
                             "to multiples of 60x108 pixels")
        y = self.norm1(x)
        windows = y.view(b, t, h // wh, wh, w // ww, ww, c).permute(0, 1, 2, 4, 6, 3, 5)
        pooled = self.pool_layers[0](windows.reshape(b, t, h // wh, w // ww, c, wh * ww)).squeeze(-1)
        attended = self.attn(y, pooled)
        x = x + _reverse(attended, self.window, b, t, h, w)
        y = self.norm2(x)
        return x + self.mlp(y.view(b, t * h * w, c), size).view(b, t, h, w, c)
