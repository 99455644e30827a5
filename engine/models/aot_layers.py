"""Building blocks of AOT and DeAOT (Yang et al., NeurIPS 2021 / 2022).

Module and parameter names follow the official release (yoxu515/aot-benchmark) so that
its checkpoints load with ``strict=True``.  Sequences are laid out token-first,
``(HW, B, C)``, as in the original; 2-D maps are ``(B, C, H, W)``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # optional compiled op (pip extra ``corr``); the pure-PyTorch path computes the same thing
    from spatial_correlation_sampler import spatial_correlation_sample as _correlation_sample
except ImportError:  # pragma: no cover - depends on the environment
    _correlation_sample = None

#: Half-width of the short-term window: 15x15 neighbours around each position.
MAX_LOCAL_DISTANCE = 7


def mask_value(dtype: torch.dtype) -> float:
    """The large number subtracted from masked attention logits (as the official code)."""
    return 1e8 if dtype == torch.float32 else 1e4


def correlation_sampler_available() -> bool:
    return _correlation_sample is not None


# ----------------------------------------------------------------------------- basics


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def seq_to_2d(x: Tensor, size_2d: tuple[int, int]) -> Tensor:
    """``(HW, B, C)`` -> ``(B, C, H, W)``."""
    h, w = size_2d
    _, b, c = x.shape
    return x.view(h, w, b, c).permute(2, 3, 0, 1).contiguous()


def map_to_seq(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(HW, B, C)``."""
    b, c, h, w = x.shape
    return x.view(b, c, h * w).permute(2, 0, 1)


def sine_position_embedding(height: int, width: int, num_feats: int = 128,
                            temperature: float = 10000.0, device: torch.device | None = None) -> Tensor:
    """DETR-style normalised sine embedding, ``(1, 2*num_feats, H, W)`` (y features, then x)."""
    grid_y, grid_x = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                    indexing="ij")
    y = grid_y.unsqueeze(0).float()
    x = grid_x.unsqueeze(0).float()
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class GroupNorm1D(nn.Module):
    """GroupNorm over the channels of a ``(HW, B, C)`` sequence."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.gn(x.permute(1, 2, 0)).permute(2, 0, 1)


class DWConv2d(nn.Module):
    """Depthwise 5x5 convolution applied to a ``(HW, B, C)`` sequence."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 5, padding=2, groups=channels, bias=False)

    def forward(self, x: Tensor, size_2d: tuple[int, int]) -> Tensor:
        return map_to_seq(self.conv(seq_to_2d(x, size_2d)))


class GNActDWConv2d(nn.Module):
    """GroupNorm, GELU and a depthwise 5x5 convolution: the AOT feed-forward activation."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(groups, channels)
        self.conv = nn.Conv2d(channels, channels, 5, padding=2, groups=channels, bias=False)

    def forward(self, x: Tensor, size_2d: tuple[int, int]) -> Tensor:
        return map_to_seq(self.conv(F.gelu(self.gn(seq_to_2d(x, size_2d)))))


class ConvGN(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, groups: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2)
        self.gn = nn.GroupNorm(groups, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.gn(self.conv(x))


# ----------------------------------------------------------------------------- local attention ops


@lru_cache(maxsize=16)
def _window_index(height: int, width: int, max_dis: int, device: torch.device) -> Tensor:
    """``(HW, W2)``: flat key index of each window offset of each query; ``HW`` where off-image.

    Offsets run row-major over ``dy, dx`` in ``[-max_dis, max_dis]``, the order of
    ``spatial_correlation_sample`` and of ``F.unfold``.
    """
    win = 2 * max_dis + 1
    ys = torch.arange(height, device=device).view(-1, 1, 1, 1)
    xs = torch.arange(width, device=device).view(1, -1, 1, 1)
    dy = torch.arange(-max_dis, max_dis + 1, device=device).view(1, 1, win, 1)
    dx = torch.arange(-max_dis, max_dis + 1, device=device).view(1, 1, 1, win)
    ky, kx = ys + dy, xs + dx
    inside = (ky >= 0) & (ky < height) & (kx >= 0) & (kx < width)
    index = torch.where(inside, ky * width + kx, torch.full_like(ky * kx, height * width))
    return index.view(height * width, win * win)


def local_correlation(q: Tensor, k: Tensor, max_dis: int = MAX_LOCAL_DISTANCE,
                      use_sampler: bool | None = None) -> Tensor:
    """Dot products of each query with the keys in its ``(2m+1)^2`` window.

    ``q, k``: ``(N, C, H, W)``.  Returns ``(N, (2m+1)^2, H*W)`` with entry
    ``[n, i*(2m+1)+j, y*W+x] = sum_c q[n,c,y,x] * k[n,c,y+i-m,x+j-m]`` and 0 off the image.
    The pure-PyTorch path takes the window entries out of the dense ``Q^T K`` product;
    ``spatial_correlation_sampler`` is used when installed (``use_sampler=None``).
    """
    n, c, h, w = q.shape
    if use_sampler is None:
        use_sampler = _correlation_sample is not None
    if use_sampler:
        if _correlation_sample is None:
            raise RuntimeError("spatial_correlation_sampler is not installed")
        dtype = q.dtype if q.is_cuda else torch.float32
        out = _correlation_sample(q.contiguous().to(dtype), k.contiguous().to(dtype), kernel_size=1,
                                  patch_size=2 * max_dis + 1, stride=1, padding=0, dilation=1,
                                  dilation_patch=1)
        return out.view(n, -1, h * w).to(q.dtype)
    scores = torch.bmm(q.reshape(n, c, h * w).transpose(1, 2), k.reshape(n, c, h * w))  # (N, HW, HW)
    scores = F.pad(scores, (0, 1))  # a zero column for off-image keys
    index = _window_index(h, w, max_dis, q.device)
    return scores.gather(2, index.unsqueeze(0).expand(n, -1, -1)).transpose(1, 2)


def local_attention_weights(q: Tensor, k: Tensor, bias: Tensor, num_heads: int,
                            max_dis: int = MAX_LOCAL_DISTANCE) -> Tensor:
    """Softmax over each window of ``q.k + bias``, off-image keys masked out.

    ``q, k``: ``(B, heads*d, H, W)`` (``q`` already scaled), ``bias``: ``(B, heads*W2, H, W)``.
    Returns ``(B, heads, W2, HW)``.
    """
    b, _, h, w = q.shape
    d = q.shape[1] // num_heads
    logits = local_correlation(q.reshape(b * num_heads, d, h, w), k.reshape(b * num_heads, d, h, w), max_dis)
    logits = logits.view(b, num_heads, -1, h * w) + bias.view(b, num_heads, -1, h * w)
    off_image = (_window_index(h, w, max_dis, q.device) == h * w).t().to(logits.dtype)
    logits = logits - off_image * mask_value(logits.dtype)
    return torch.softmax(logits, dim=2)


def local_to_dense(attn: Tensor, size_2d: tuple[int, int], max_dis: int = MAX_LOCAL_DISTANCE) -> Tensor:
    """Scatter window weights ``(B, heads, W2, HW)`` into a dense ``(B, heads, HW, HW)`` matrix."""
    b, heads, _, hw = attn.shape
    index = _window_index(size_2d[0], size_2d[1], max_dis, attn.device)
    dense = attn.new_zeros(b, heads, hw, hw + 1)
    dense.scatter_(3, index.expand(b, heads, -1, -1), attn.transpose(2, 3))
    return dense[..., :hw]


# ----------------------------------------------------------------------------- AOT attention


class MultiheadAttention(nn.Module):
    """Multi-head dot-product attention on ``(L, B, C)`` sequences (AOT)."""

    def __init__(self, d_model: int, num_heads: int, use_linear: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.use_linear = use_linear
        if use_linear:
            self.linear_Q = nn.Linear(d_model, d_model)
            self.linear_K = nn.Linear(d_model, d_model)
            self.linear_V = nn.Linear(d_model, d_model)
        self.projection = nn.Linear(d_model, d_model)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.use_linear:
            q, k, v = self.linear_Q(q), self.linear_K(k), self.linear_V(v)
        length, b, c = q.shape
        heads = self.num_heads

        def split(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], b, heads, -1).permute(1, 2, 0, 3)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.projection(out.permute(2, 0, 1, 3).reshape(length, b, c))


class MultiheadLocalAttention(nn.Module):
    """AOT short-term attention: each position attends to a 15x15 window of the previous frame.

    Relative position enters as a per-offset logit bias computed from the query
    (``relative_emb_k``) and a per-offset value bias (``relative_emb_v``).
    """

    def __init__(self, d_model: int, num_heads: int, max_dis: int = MAX_LOCAL_DISTANCE) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.max_dis = max_dis
        window = (2 * max_dis + 1) ** 2
        self.relative_emb_k = nn.Conv2d(d_model, num_heads * window, kernel_size=1, groups=num_heads)
        self.relative_emb_v = nn.Parameter(torch.zeros(num_heads, d_model // num_heads, window))
        self.projection = nn.Linear(d_model, d_model)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q, k, v``: ``(B, C, H, W)``; returns ``(HW, B, C)``."""
        b, c, h, w = v.shape
        heads = self.num_heads
        bias = self.relative_emb_k(q)
        q = q / math.sqrt(c // heads)
        attn = local_attention_weights(q, k, bias, heads, self.max_dis)  # (B, heads, W2, HW)
        agg_bias = torch.einsum("bhwn,hcw->bhnc", attn, self.relative_emb_v.to(attn.dtype))
        agg_value = local_to_dense(attn, (h, w), self.max_dis) @ v.reshape(b, heads, c // heads, h * w).transpose(2, 3)
        out = (agg_value + agg_bias).permute(2, 0, 1, 3).reshape(h * w, b, c)
        return self.projection(out)


class LongShortTermTransformerBlock(nn.Module):
    """One AOT LSTT layer: self-attention, long+short-term attention with identities, FFN."""

    def __init__(self, d_model: int = 256, self_heads: int = 8, att_heads: int = 8,
                 dim_feedforward: int = 1024) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, self_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear_Q = nn.Linear(d_model, d_model)
        self.linear_V = nn.Linear(d_model, d_model)
        self.long_term_attn = MultiheadAttention(d_model, att_heads, use_linear=False)
        self.short_term_attn = MultiheadLocalAttention(d_model, att_heads)
        self.norm3 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = GNActDWConv2d(dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)

    def forward(self, x: Tensor, x_id: Tensor | None, id_emb: Tensor | None,
                long_term: tuple[Tensor, ...] | None, short_term: tuple[Tensor, ...] | None,
                pos: Tensor | None, size_2d: tuple[int, int]) -> tuple[Tensor, None, tuple[Tensor, ...]]:
        """Returns the new ``x``, no ID branch, and the frame's unfused memory ``(K, V)``.

        With ``id_emb`` (a reference frame) the frame attends to its own fused memory;
        otherwise to ``long_term`` ``(K, V)`` sequences and ``short_term`` ``(K, V)`` maps.
        """
        _x = self.norm1(x)
        qk = _x if pos is None else _x + pos
        x = x + self.self_attn(qk, qk, _x)

        _x = self.norm2(x)
        curr_q = self.linear_Q(_x)
        curr = (curr_q, _x)
        if id_emb is not None:
            long_term = self.fuse_memory(curr, id_emb)
            short_term = tuple(seq_to_2d(t, size_2d) for t in long_term)
        global_k, global_v = long_term
        local_k, local_v = short_term
        x = x + self.long_term_attn(curr_q, global_k, global_v) \
            + self.short_term_attn(seq_to_2d(curr_q, size_2d), local_k, local_v)

        _x = self.norm3(x)
        x = x + self.linear2(self.activation(self.linear1(_x), size_2d))
        return x, None, curr

    def fuse_memory(self, curr: tuple[Tensor, ...], id_emb: Tensor) -> tuple[Tensor, Tensor]:
        """Memory ``(K, V)`` of a frame: its key and its value fused with the identity embedding."""
        key, value = curr
        return key, self.linear_V(value + id_emb)


# ----------------------------------------------------------------------------- DeAOT gated propagation


class GatedPropagation(nn.Module):
    """Single-head gated attention of DeAOT: ``dwconv(softmax(QK^T/sqrt(d)) V * U)`` then a projection.

    With ``use_linear`` (the self-attention) Q/K, V and U are projected from the
    ``[visual, identity]`` halves of the input; otherwise they are used as given.
    """

    def __init__(self, d_qk: int, d_vu: int, d_att: int = 128, expand_ratio: float = 2.0,
                 use_linear: bool = True) -> None:
        super().__init__()
        self.expand_d_vu = int(d_vu * expand_ratio)
        self.d_vu = d_vu
        self.use_linear = use_linear
        if use_linear:
            half = self.expand_d_vu // 2
            self.linear_QK = nn.Linear(d_qk, d_att)
            self.linear_V1 = nn.Linear(d_vu // 2, half)
            self.linear_V2 = nn.Linear(d_vu // 2, half)
            self.linear_U1 = nn.Linear(d_vu // 2, half)
            self.linear_U2 = nn.Linear(d_vu // 2, half)
        self.dw_conv = DWConv2d(self.expand_d_vu)
        self.projection = nn.Linear(self.expand_d_vu, d_vu)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, u: Tensor, size_2d: tuple[int, int]) -> Tensor:
        if self.use_linear:
            q = k = self.linear_QK(q)
            v1, v2 = torch.split(v, self.d_vu // 2, dim=-1)
            u1, u2 = torch.split(u, self.d_vu // 2, dim=-1)
            v = F.silu(torch.cat([self.linear_V1(v1), self.linear_V2(v2)], dim=-1))
            u = F.silu(torch.cat([self.linear_U1(u1), self.linear_U2(u2)], dim=-1))
        out = F.scaled_dot_product_attention(q.permute(1, 0, 2), k.permute(1, 0, 2), v.permute(1, 0, 2))
        out = out.permute(1, 0, 2) * u
        return self.projection(self.dw_conv(out, size_2d))


class LocalGatedPropagation(nn.Module):
    """DeAOT short-term gated attention over a 15x15 window of the previous frame."""

    def __init__(self, d_att: int = 128, d_vu: int = 512, expand_ratio: float = 2.0,
                 max_dis: int = MAX_LOCAL_DISTANCE) -> None:
        super().__init__()
        self.max_dis = max_dis
        self.expand_d_vu = int(d_vu * expand_ratio)
        self.relative_emb_k = nn.Conv2d(d_att, (2 * max_dis + 1) ** 2, kernel_size=1)
        self.dw_conv = DWConv2d(self.expand_d_vu)
        self.projection = nn.Linear(self.expand_d_vu, d_vu)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, u: Tensor, size_2d: tuple[int, int]) -> Tensor:
        """``q, k``: ``(B, d_att, H, W)``, ``v``: ``(B, C, H, W)``, ``u``: ``(HW, B, C)``."""
        b, c, h, w = v.shape
        bias = self.relative_emb_k(q)
        q = q / math.sqrt(q.shape[1])
        attn = local_attention_weights(q, k, bias, 1, self.max_dis)
        out = local_to_dense(attn, (h, w), self.max_dis) @ v.reshape(b, 1, c, h * w).transpose(2, 3)
        out = out.permute(2, 0, 1, 3).reshape(h * w, b, c) * u
        return self.projection(self.dw_conv(out, size_2d))


class GatedPropagationModule(nn.Module):
    """One DeAOT layer: a visual branch ``x`` and an identity branch ``x_id`` that share attention."""

    def __init__(self, d_model: int = 256, layer_idx: int = 0, expand_ratio: float = 2.0) -> None:
        super().__init__()
        expand = int(d_model * expand_ratio)
        self.d_model = d_model
        self.d_att = d_model // 2
        self.expand_d_model = expand
        self.layer_idx = layer_idx
        self.norm1 = nn.LayerNorm(d_model)
        self.linear_QV = nn.Linear(d_model, self.d_att + expand)
        self.linear_U = nn.Linear(d_model, expand)
        if layer_idx == 0:
            self.linear_ID_V = nn.Linear(d_model, expand)
        else:
            self.id_norm1 = nn.LayerNorm(d_model)
            self.linear_ID_V = nn.Linear(d_model * 2, expand)
            self.linear_ID_U = nn.Linear(d_model, expand)
        self.long_term_attn = GatedPropagation(d_model, d_model * 2, self.d_att, expand_ratio, use_linear=False)
        self.short_term_attn = LocalGatedPropagation(self.d_att, d_model * 2, expand_ratio)
        self.norm2 = nn.LayerNorm(d_model)
        self.id_norm2 = nn.LayerNorm(d_model)
        self.self_attn = GatedPropagation(d_model * 2, d_model * 2, self.d_att, expand_ratio)

    def forward(self, x: Tensor, x_id: Tensor | None, id_emb: Tensor | None,
                long_term: tuple[Tensor, ...] | None, short_term: tuple[Tensor, ...] | None,
                pos: Tensor | None, size_2d: tuple[int, int]) -> tuple[Tensor, Tensor, tuple]:
        """Returns ``x``, ``x_id`` and the frame's unfused memory ``(K, V, ID source)``.

        Memory entries are ``(K, V, ID_V)``: sequences in ``long_term``, maps in
        ``short_term``.  ``pos`` is unused (DeAOT has no position embedding).
        """
        _x = self.norm1(x)
        curr_q, curr_v = torch.split(self.linear_QV(_x), [self.d_att, self.expand_d_model], dim=2)
        curr_v = F.silu(curr_v)
        curr_u = self.linear_U(_x)
        if x_id is None:
            id_source = None
            gate = torch.cat([F.silu(curr_u), torch.ones_like(curr_u)], dim=-1)
        else:
            id_source = self.id_norm1(x_id)
            gate = F.silu(torch.cat([curr_u, self.linear_ID_U(id_source)], dim=-1))
        curr = (curr_q, curr_v, id_source)
        if id_emb is not None:
            long_term = self.fuse_memory(curr, id_emb)
            short_term = tuple(seq_to_2d(t, size_2d) for t in long_term)
        global_k, global_v, global_id_v = long_term
        local_k, local_v, local_id_v = short_term

        out = self.long_term_attn(curr_q, global_k, torch.cat([global_v, global_id_v], dim=-1), gate, size_2d) \
            + self.short_term_attn(seq_to_2d(curr_q, size_2d), local_k, torch.cat([local_v, local_id_v], dim=1),
                                   gate, size_2d)
        dx, dx_id = torch.split(out, self.d_model, dim=-1)
        x = x + dx
        x_id = dx_id if x_id is None else x_id + dx_id

        cat = torch.cat([self.norm2(x), self.id_norm2(x_id)], dim=-1)
        dx, dx_id = torch.split(self.self_attn(cat, cat, cat, cat, size_2d), self.d_model, dim=-1)
        return x + dx, x_id + dx_id, curr

    def fuse_memory(self, curr: tuple[Tensor | None, ...], id_emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Memory ``(K, V, ID_V)`` of a frame: the identity value mixes in the identity embedding."""
        key, value, id_source = curr
        id_in = id_emb if id_source is None else torch.cat([id_source, id_emb], dim=2)
        return key, value, F.silu(self.linear_ID_V(id_in))


# ----------------------------------------------------------------------------- transformer stacks


class LongShortTermTransformer(nn.Module):
    """The AOT stack: L blocks, every output layer-normed and passed to the decoder."""

    def __init__(self, num_layers: int, d_model: int = 256, self_heads: int = 8, att_heads: int = 8,
                 dim_feedforward: int = 1024) -> None:
        super().__init__()
        # Unused at inference; registered because the official checkpoints (since 2022-12) carry it.
        self.mask_token = nn.Parameter(torch.randn(1, 1, d_model))
        self.layers = nn.ModuleList(
            LongShortTermTransformerBlock(d_model, self_heads, att_heads, dim_feedforward) for _ in range(num_layers))
        self.decoder_norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))

    def forward(self, x: Tensor, long_term: list | None, short_term: list | None, id_emb: Tensor | None,
                pos: Tensor | None, size_2d: tuple[int, int]) -> tuple[list[Tensor], list[tuple]]:
        """Returns the decoder inputs (all layers, normed) and each layer's unfused memory."""
        outputs, memories = [], []
        for i, layer in enumerate(self.layers):
            x, _, curr = layer(x, None, id_emb, None if long_term is None else long_term[i],
                               None if short_term is None else short_term[i], pos, size_2d)
            outputs.append(self.decoder_norms[i](x))
            memories.append(curr)
        return outputs, memories


class DualBranchGPM(nn.Module):
    """The DeAOT stack: L gated propagation modules; the decoder reads the last ``[x, x_id]``."""

    def __init__(self, num_layers: int, d_model: int = 256) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GatedPropagationModule(d_model, layer_idx=i) for i in range(num_layers))
        self.decoder_norms = nn.ModuleList([GroupNorm1D(d_model * 2, groups=2)])

    def forward(self, x: Tensor, long_term: list | None, short_term: list | None, id_emb: Tensor | None,
                pos: Tensor | None, size_2d: tuple[int, int]) -> tuple[list[Tensor], list[tuple]]:
        x_id = None
        memories = []
        for i, layer in enumerate(self.layers):
            x, x_id, curr = layer(x, x_id, id_emb, None if long_term is None else long_term[i],
                                  None if short_term is None else short_term[i], pos, size_2d)
            memories.append(curr)
        return [self.decoder_norms[0](torch.cat([x, x_id], dim=2))], memories


# ----------------------------------------------------------------------------- decoder


class FPNSegmentationHead(nn.Module):
    """FPN decoder from the 1/16 LSTT features to 11 identity logits at 1/4 resolution."""

    def __init__(self, in_dim: int, out_dim: int, shortcut_dims: tuple[int, ...], hidden_dim: int = 256,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.conv_in = ConvGN(in_dim, hidden_dim, 1)
        self.conv_16x = ConvGN(hidden_dim, hidden_dim, 3)
        self.conv_8x = ConvGN(hidden_dim, hidden_dim // 2, 3)
        self.conv_4x = ConvGN(hidden_dim // 2, hidden_dim // 2, 3)
        self.adapter_16x = nn.Conv2d(shortcut_dims[-2], hidden_dim, 1)
        self.adapter_8x = nn.Conv2d(shortcut_dims[-3], hidden_dim, 1)
        self.adapter_4x = nn.Conv2d(shortcut_dims[-4], hidden_dim // 2, 1)
        self.conv_out = nn.Conv2d(hidden_dim // 2, out_dim, 1)

    def forward(self, x: Tensor, shortcuts: list[Tensor]) -> Tensor:
        x = F.relu(self.conv_in(x))
        x = F.relu(self.conv_16x(self.adapter_16x(shortcuts[-2]) + x))
        x = F.interpolate(x, size=shortcuts[-3].shape[-2:], mode="bilinear", align_corners=self.align_corners)
        x = F.relu(self.conv_8x(self.adapter_8x(shortcuts[-3]) + x))
        x = F.interpolate(x, size=shortcuts[-4].shape[-2:], mode="bilinear", align_corners=self.align_corners)
        x = F.relu(self.conv_4x(self.adapter_4x(shortcuts[-4]) + x))
        return self.conv_out(x)
