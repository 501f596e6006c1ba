"""The fast modules of the acceleration layer: subclasses of the plain ones with the same parameters, each
computing the same function faster where `ldm.accel.policy` puts it (tests/test_fast_paths.py checks each
against the plain module)."""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..files import json_cached, user_cache
from ..nets.blocks import FeedForward, GroupNorm32, Upsample
from ..sample import rng
from .cpu import machine


def sdpa(q, k, v, causal: bool = False):
    """`ldm.nets.attention.attention` through torch's fused scaled_dot_product_attention, for kernels that
    accumulate half inputs in float32 (CUDA's flash / memory-efficient kernels and the CPU flash kernel do).
    A causal mask is the kernel's own (`is_causal`), which keeps the flash kernel available."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def sdpa_float32(q, k, v, causal: bool = False):
    """The fused kernel on float32 copies of half inputs, for backends whose half kernels may not."""
    return sdpa(q.float(), k.float(), v.float(), causal).to(q.dtype)


SCORE_BYTES = 1 << 28


def sdpa_chunked(q, k, v, causal: bool = False):
    """`sdpa_float32` over slices of the queries whose float32 scores take at most SCORE_BYTES, for backends
    whose kernel builds the whole score matrix (MPS: about 27 GB at 768 px for 16 rows). Causal attention
    (the text encoder's 77 tokens) is small and left whole."""
    step = max(1, SCORE_BYTES // (q.shape[:-2].numel() * k.shape[-2] * 4))
    if causal or q.shape[-2] <= step:
        return sdpa_float32(q, k, v, causal)
    return torch.cat([sdpa_float32(part, k, v) for part in q.split(step, dim=-2)], dim=-2)


def eager_on_cpu(x) -> bool:
    """Whether `x` is on the CPU outside torch.compile, where the oneDNN paths below help (compiled graphs
    prepack their weights once and choose their own kernels)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


SLICE_BYTES = 16 << 20


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """F.conv2d, with large weights taken in slices of output channels on the CPU.

    At the low-resolution levels a UNet conv is a small input against a large weight. oneDNN reorders the
    weight into a scratch buffer on every eager call, and glibc serves any buffer over its 32 MiB mmap
    ceiling with fresh pages, so each call page-faults through the whole weight; slices of at most
    SLICE_BYTES stay on the heap. A large input is left whole, since every slice reads all of it.
    """
    size = weight.numel() * weight.element_size()
    if not eager_on_cpu(x) or size <= 2 * SLICE_BYTES or x.numel() * x.element_size() > SLICE_BYTES:
        return F.conv2d(x, weight, bias, stride, padding)
    n = -(-size // SLICE_BYTES)
    biases = [None] * n if bias is None else bias.chunk(n)
    return torch.cat([F.conv2d(x, w, b, stride, padding) for w, b in zip(weight.chunk(n), biases)], dim=1)


def channels_last(x) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def bf16_conv_file():
    return user_cache() / "bf16-convs.json"


@functools.lru_cache(maxsize=None)
def bf16_conv_ok(x_shape, nhwc: bool, w_shape, stride, padding) -> bool:
    """Whether torch's bfloat16 conv2d gives finite values within bfloat16 rounding of the float32 result for
    this shape and layout on this CPU: checked once per shape on random data of it (the kernel is what is
    checked, not the values) and remembered per machine in `bf16_conv_file()`: the check costs about four
    calls of the shape and each batch size is a shape of its own, which every process paid again before
    (BENCHMARKS.md, 2026-12-03, fourth)."""
    key = f"{machine()} | x {list(x_shape)}{' channels-last' if nhwc else ''} | w {list(w_shape)} | " \
          f"stride {list(stride)} | padding {list(padding)}"
    return json_cached(bf16_conv_file(), key, lambda: bf16_conv_checked(x_shape, nhwc, w_shape, stride, padding),
                       valid=lambda verdict: isinstance(verdict, bool))


def bf16_conv_checked(x_shape, nhwc: bool, w_shape, stride, padding) -> bool:
    """`bf16_conv_ok`'s check itself."""
    g = rng.generator(0)
    x = rng.randn(x_shape, g).bfloat16()
    w = (rng.randn(w_shape, g) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5).bfloat16()
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = F.conv2d(x, w, None, stride, padding).float()
        ref = F.conv2d(x.float(), w.float(), None, stride, padding)
    return bool(torch.isfinite(out).all() and (out - ref).abs().max() <= 0.03 * ref.abs().max() + 1e-3)


class CpuConv2d(nn.Conv2d):
    """nn.Conv2d on the CPU, for plain convolutions (no groups, dilation or padding mode):

    * `slice_weights`: large weights in slices of output channels (`conv2d`);
    * `check_bf16`: bfloat16 inputs of a shape that torch's bf16 kernel gets wrong on this CPU
      (`bf16_conv_ok`) are computed in float32. torch 2.13's bf16 conv on an AMX Xeon returned wrong values
      for a [1, 128, 64, 2] input with stride 2 and padding 1.
    """

    slice_weights = False
    check_bf16 = False

    def _conv_forward(self, x, weight, bias):
        if self.check_bf16 and x.dtype == torch.bfloat16 and eager_on_cpu(x) and not bf16_conv_ok(
                tuple(x.shape), channels_last(x), tuple(weight.shape), self.stride, self.padding):
            return self._conv(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
        return self._conv(x, weight, bias)

    def _conv(self, x, weight, bias):
        if self.slice_weights:
            return conv2d(x, weight, bias, self.stride, self.padding)
        return F.conv2d(x, weight, bias, self.stride, self.padding)


CONV_ROWS = 2048


def linear(x, weight, bias=None):
    """F.linear, with inputs of at least CONV_ROWS rows on the CPU computed as a 1x1 convolution: torch sends
    CPU matmuls to MKL and convolutions to oneDNN. The rows go in and come out as a channels-last 1 x rows
    image (views, no copies); shorter inputs, other devices and compiled graphs keep F.linear."""
    rows = x.numel() // x.shape[-1]
    if not eager_on_cpu(x) or rows < CONV_ROWS:
        return F.linear(x, weight, bias)
    image = x.reshape(1, 1, rows, x.shape[-1]).permute(0, 3, 1, 2)  # [1, in, 1, rows], channels last
    out = F.conv2d(image, weight[:, :, None, None], bias)  # [1, out, 1, rows], channels last
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


class ConvLinear(nn.Linear):
    """nn.Linear computed by `linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class HalfGroupNorm32(GroupNorm32):
    """GroupNorm32 on the half-precision activations themselves, without their float32 copy: for kernels
    that accumulate the statistics and normalise in float32 already (CUDA's do), where the copies are
    gigabytes of temporaries in a large batch."""

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class RowSlicedFeedForward(FeedForward):
    """The feed-forward over slices of ROWS tokens on the CPU, so that the 8x-wide GEGLU projection stays in
    cache instead of streaming through memory."""

    ROWS = 2048

    def forward(self, x):
        if x.device.type != "cpu":
            return self.net(x)
        rows = x.reshape(-1, x.shape[-1])
        return torch.cat([self.net(part) for part in rows.split(self.ROWS)]).view(x.shape)


def fold_taps(w, dim: int):
    """The 3 taps of a kernel along `dim`, as seen by the two output phases of a nearest-x2 upsampling:
    even outputs read (row-1, row, row) of the input, so (w0, w1+w2); odd ones (row, row, row+1), so (w0+w1, w2)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2, w0 + w1, w2], dim)


def phase_kernels(w, accumulate=torch.float32):
    """3x3 weight [o, i, 3, 3] -> the 2x2 kernels of the 4 output phases [(a, b, o), i, 2, 2]. The taps are
    summed in `accumulate` and rounded to the weight's dtype once (a half-precision sum of up to 4 taps
    would round at every addition; tools/half_numerics.py measures both)."""
    o, i = w.shape[:2]
    folded = fold_taps(fold_taps(w.to(accumulate), 2), 3).to(w.dtype)
    return folded.view(o, i, 2, 2, 2, 2).permute(2, 4, 0, 1, 3, 5).reshape(4 * o, i, 2, 2)


class FoldedUpsample(Upsample):
    """Nearest x2 then a 3x3 conv, without materialising the upsampled image: each of the 4 output phases
    (row parity a, column parity b) is a 2x2 convolution of the input with the 3x3 taps folded together, so
    all four come from one convolution with 4x the output channels and 4/9 of the multiply-adds."""

    def kernels(self):
        w = self.conv.weight
        if torch.compiler.is_compiling() or w.requires_grad or w.is_inference():
            return phase_kernels(w)  # (compiled graphs fold this into a constant themselves)
        key = (w.data_ptr(), w._version, w.dtype, w.device)  # kept between eager calls on frozen weights
        if self._kernels is None or self._kernels[0] != key:
            self._kernels = (key, phase_kernels(w))
        return self._kernels[1]

    def forward(self, x):
        c_out = self.conv.out_channels
        # Padding 1 around a 2x2 kernel gives the (h+1) x (w+1) windows; through the conv module's own
        # convolution, so that a CPU conv keeps its paths.
        y = self.conv._conv_forward(x, self.kernels(), self.conv.bias.repeat(4))
        b, _, h, w = x.shape
        layout = torch.channels_last if channels_last(x) else torch.contiguous_format
        out = torch.empty(b, c_out, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=layout)
        for a in (0, 1):
            for c in (0, 1):  # phase (a, c) of the output is window (a, c) of the (h+1)x(w+1) result
                p = 2 * a + c
                out[:, :, a::2, c::2] = y[:, p * c_out:(p + 1) * c_out, a:a + h, c:c + w]
        return out
