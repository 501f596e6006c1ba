"""The acceleration layer: every speed path of the model zoo, applied to a loaded model in place.

The model files (`blocks.py`, `unet.py`, `vae.py`, ...) hold the architecture only, written as the reference
writes it. `accelerate(model)` then swaps the class of some modules for a subclass that computes the same
function faster on the device in hand (same parameters, same `state_dict` keys), puts a fused attention
kernel where the reference formula was, and picks the memory layout. The loaders call it unless given
`fast=False`; `tests/test_fast_paths.py` checks every path against the plain one.

Which paths a device gets is its `Policy`, decided from what the device is (for CPUs: /proc/cpuinfo):

* folded upsampling (nearest x2 + 3x3 conv as one 2x2 conv per output phase, 4/9 of the multiply-adds):
  every device;
* fused attention (torch's scaled_dot_product_attention): every device. Its CPU and CUDA kernels
  accumulate q.k^T and the softmax in float32 for half inputs, so SD 2.1's float32-softmax rule holds
  without an upcast; the upcast to float32 is kept on other devices, and on CPUs without AMX, where the
  bfloat16 kernel was no faster than the upcast one;
* CPUs without AMX: large convolution weights in slices of output channels, long token projections as 1x1
  convolutions (oneDNN instead of MKL), the feed-forward in row slices. On AMX CPUs these gained little or
  lost, so they get none of them;
* CPUs: the VAE in channels-last layout;
* the dtype of `--dtype auto` (`default_dtype`).

BENCHMARKS.md holds the measurements behind these choices and the CPU each was made on.
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attention as attn
from .blocks import FeedForward, SpatialTransformer, Upsample
from .vae import AutoencoderKL


@dataclass(frozen=True)
class Policy:
    fold_upsample: bool = True
    attention: object = attn.sdpa          # the kernel put in place of the reference formula
    slice_convs: bool = False
    linear_as_conv: bool = False
    slice_feedforward: bool = False
    vae_channels_last: bool = False


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def policy(device) -> Policy:
    """The fast paths for `device` (a torch.device or its name)."""
    device = torch.device(device)
    if device.type == "cuda":
        return Policy()
    if device.type != "cpu":
        return Policy(attention=attn.sdpa_float32)
    if "amx_bf16" in cpu_flags():
        return Policy(vae_channels_last=True)
    return Policy(attention=attn.sdpa_float32, slice_convs=True, linear_as_conv=True, slice_feedforward=True,
                  vae_channels_last=True)


def default_dtype(device) -> torch.dtype:
    """`--dtype auto`: float16 on CUDA, bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX), else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    native_bf16 = {"avx512_bf16", "amx_bf16"} & cpu_flags()
    return torch.bfloat16 if device.type == "cpu" and native_bf16 else torch.float32


def accelerate(model: nn.Module, device=None) -> nn.Module:
    """Apply the fast paths of `device` (default: the model's own) to `model` in place; returns it."""
    p = policy(device if device is not None else next(model.parameters()).device)
    projections = {id(m) for t in model.modules() if isinstance(t, SpatialTransformer)
                   for m in t.modules() if type(m) is nn.Linear}
    for m in model.modules():
        if type(m) is Upsample and p.fold_upsample:
            m.__class__, m._kernels = FoldedUpsample, None
        elif type(m) is FeedForward and p.slice_feedforward:
            m.__class__ = RowSlicedFeedForward
        elif type(m) is nn.Conv2d and p.slice_convs and m.groups == 1 and m.dilation == (1, 1) \
                and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.__class__ = SlicedConv2d
        elif id(m) in projections and p.linear_as_conv:
            m.__class__ = ConvLinear
        if hasattr(type(m), "attention"):
            m.attention = p.attention
    if isinstance(model, AutoencoderKL) and p.vae_channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compile_model(module, device, **options):
    """torch.compile a network in place. On CPUs, inductor also freezes the weights of inference (no-grad)
    graphs, which prepacks them for oneDNN; graphs that need gradients (textual inversion) are unaffected."""
    if torch.device(device).type == "cpu":
        from torch._inductor import config as inductor
        inductor.freezing = True
    module.compile(**options)
    return module


# --- the fast modules: subclasses of the plain ones, the same parameters ------------------------------

def eager_on_cpu(x) -> bool:
    """Whether `x` is on the CPU outside torch.compile, where the oneDNN paths below help (compiled graphs
    prepack their weights once and choose their own kernels)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


SLICE_BYTES = 16 << 20


def conv2d(x, weight, bias, stride=1, padding=0):
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
    return torch.cat([F.conv2d(x, w, b, stride, padding) for w, b in zip(weight.chunk(n), bias.chunk(n))], dim=1)


class SlicedConv2d(nn.Conv2d):
    """nn.Conv2d computed by `conv2d` (plain convolutions only: no groups, dilation or padding mode)."""

    def _conv_forward(self, x, weight, bias):
        return conv2d(x, weight, bias, self.stride, self.padding)


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


def phase_kernels(w):
    """3x3 weight [o, i, 3, 3] -> the 2x2 kernels of the 4 output phases [(a, b, o), i, 2, 2]."""
    o, i = w.shape[:2]
    return fold_taps(fold_taps(w, 2), 3).view(o, i, 2, 2, 2, 2).permute(2, 4, 0, 1, 3, 5).reshape(4 * o, i, 2, 2)


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
        # convolution, so that a sliced conv stays sliced.
        y = self.conv._conv_forward(x, self.kernels(), self.conv.bias.repeat(4))
        b, _, h, w = x.shape
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        out = torch.empty(b, c_out, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=layout)
        for a in (0, 1):
            for c in (0, 1):  # phase (a, c) of the output is window (a, c) of the (h+1)x(w+1) result
                p = 2 * a + c
                out[:, :, a::2, c::2] = y[:, p * c_out:(p + 1) * c_out, a:a + h, c:c + w]
        return out
