"""Building blocks shared by the SD 2.x UNet and its ControlNet (ldm `openaimodel.py` / `attention.py`).

Module and attribute names follow the original code so that `state_dict()` keys equal the checkpoint's.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention, merge_heads, split_heads


def timestep_embedding(t, dim: int):
    """Sinusoidal embedding of (integer) timesteps: [cos(t f), sin(t f)], f = 10000^(-i/half).

    Cos first and no frequency shift, exactly as the reference (diffusers: flip_sin_to_cos=True, shift 0).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def eager_on_cpu(x) -> bool:
    """Whether `x` is on the CPU outside torch.compile: where the oneDNN fast paths below apply (compiled
    graphs prepack their weights once and choose their own kernels)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


SLICE_BYTES = 16 << 20


def conv2d(x, weight, bias, stride=1, padding=0):
    """F.conv2d, with large weights taken in slices of output channels on the CPU.

    At the low-resolution levels a UNet conv is a small input against a large weight (56-112 MiB in float32).
    oneDNN reorders the weight into a scratch buffer on every eager call, and glibc serves any buffer over its
    32 MiB mmap ceiling with fresh pages, so each call page-faults through the whole weight. Slices of at
    most SLICE_BYTES stay on the heap (and in cache): 0.5-0.9x the time at batch 2. Same result
    (tests/test_fast_paths.py); a large input is left whole, since every slice reads all of it.
    """
    size = weight.numel() * weight.element_size()
    if not eager_on_cpu(x) or size <= 2 * SLICE_BYTES or x.numel() * x.element_size() > SLICE_BYTES:
        return F.conv2d(x, weight, bias, stride, padding)
    n = -(-size // SLICE_BYTES)
    return torch.cat([F.conv2d(x, w, b, stride, padding) for w, b in zip(weight.chunk(n), bias.chunk(n))], dim=1)


class Conv2d(nn.Conv2d):
    """nn.Conv2d computed by `conv2d` (same parameters, same state_dict keys), for plain convolutions only:
    slicing output channels would split groups, and `conv2d` takes no dilation or padding mode."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            raise ValueError("Conv2d is for plain convolutions: no groups, dilation or padding mode; use nn.Conv2d")

    def _conv_forward(self, x, weight, bias):
        return conv2d(x, weight, bias, self.stride, self.padding)


CONV_ROWS = 2048


def linear(x, weight, bias=None):
    """F.linear, with long inputs on the CPU computed as a 1x1 convolution.

    torch sends CPU matmuls to MKL and convolutions to oneDNN, which runs the UNet's token projections
    (thousands of rows against a 320-1280 wide weight) 5-60% faster here: 0.95x the float32 UNet step,
    0.96x the bfloat16 one. The rows go in and come out as a channels-last 1 x rows image: views, no copies.
    Same result up to float rounding (tests/test_fast_paths.py); short inputs (where MKL is as fast or
    faster), other devices and compiled graphs keep F.linear.
    """
    rows = x.numel() // x.shape[-1]
    if not eager_on_cpu(x) or rows < CONV_ROWS:
        return F.linear(x, weight, bias)
    image = x.reshape(1, 1, rows, x.shape[-1]).permute(0, 3, 1, 2)  # [1, in, 1, rows], channels last
    out = F.conv2d(image, weight[:, :, None, None], bias)  # [1, out, 1, rows], channels last
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear computed by `linear` (same parameters, same state_dict keys)."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm over 32 groups, computed in float32 whatever the activation dtype."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(32, channels, eps=eps)

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class ResBlock(nn.Module):
    """Two 3x3 convs with the timestep embedding added in between, plus a (1x1 conv) skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention of x over a context (itself for self-attention); q/k/v without bias."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = Linear(dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = (split_heads(f(s), self.heads) for f, s in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        return self.to_out(merge_heads(attention(q, k, v)))


class GEGLU(nn.Module):
    """Linear to twice the width, split into (value, gate): value * gelu(gate), exact erf GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4x the width and back. On CPUs the tokens go through in slices of `CPU_ROWS` rows, so that
    the 8x-wide projection stays in cache instead of streaming through memory (same result, faster)."""

    CPU_ROWS = 2048

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), Linear(dim * mult, dim))

    def forward(self, x):
        if x.device.type != "cpu":
            return self.net(x)
        rows = x.reshape(-1, x.shape[-1])
        return torch.cat([self.net(part) for part in rows.split(self.CPU_ROWS)]).view(x.shape)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text, GEGLU feed-forward; each pre-LayerNorm and residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Image features as tokens: GroupNorm, linear in, transformer blocks, linear out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = Linear(channels, heads * dim_head)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(heads * dim_head, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = Linear(heads * dim_head, channels)

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (padding 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


def fold_taps(w, dim: int):
    """The 3 taps of a kernel along `dim`, as seen by the two output phases of a nearest-x2 upsampling:
    even outputs read (row-1, row, row) of the input, so (w0, w1+w2); odd ones (row, row, row+1), so (w0+w1, w2)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2, w0 + w1, w2], dim)


def phase_kernels(w):
    """3x3 weight [o, i, 3, 3] -> the 2x2 kernels of the 4 output phases [(a, b, o), i, 2, 2]."""
    o, i = w.shape[:2]
    return fold_taps(fold_taps(w, 2), 3).view(o, i, 2, 2, 2, 2).permute(2, 4, 0, 1, 3, 5).reshape(4 * o, i, 2, 2)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution.

    Computed without materialising the upsampled image: each of the 4 output phases (row parity a, column
    parity b) is a 2x2 convolution of the input with the 3x3 taps folded together (`phase_kernels`), so all
    four come from one convolution with 4x the output channels and 4/9 of the multiply-adds. Same result as
    `conv(interpolate(x, scale_factor=2, mode="nearest"))` up to float rounding (tests/test_fast_paths.py).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self._kernels = None  # (weight key, phase kernels), kept between eager calls on frozen weights

    def kernels(self):
        w = self.conv.weight
        if torch.compiler.is_compiling() or w.requires_grad or w.is_inference():
            return phase_kernels(w)  # (compiled graphs fold this into a constant themselves)
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._kernels is None or self._kernels[0] != key:
            self._kernels = (key, phase_kernels(w))
        return self._kernels[1]

    def forward(self, x):
        c_out = self.conv.out_channels
        y = conv2d(F.pad(x, (1, 1, 1, 1)), self.kernels(), self.conv.bias.repeat(4))
        b, _, h, w = x.shape
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        out = torch.empty(b, c_out, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=layout)
        for a in (0, 1):
            for c in (0, 1):  # phase (a, c) of the output is window (a, c) of the (h+1)x(w+1) result
                p = 2 * a + c
                out[:, :, a::2, c::2] = y[:, p * c_out:(p + 1) * c_out, a:a + h, c:c + w]
        return out


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers, each given what it needs: ResBlocks the time embedding, transformers the text."""

    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x
