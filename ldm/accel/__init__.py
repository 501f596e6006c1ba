"""The acceleration layer: every speed path of the model zoo, applied to a loaded model in place.

The model files (`ldm/nets/`: `blocks.py`, `unet.py`, `vae.py`, ...) hold the architecture only, written as the reference
writes it. `accelerate(model)` then swaps the class of some modules for a subclass that computes the same
function faster on the device in hand (same parameters, same `state_dict` keys; `modules.py`), puts a fused
attention kernel where the reference formula was, and picks the memory layout. The loaders call it unless
given `fast=False`; `tests/test_fast_paths.py` checks every path against the plain one.

Which paths a device gets at a dtype is its `Policy`:

* folded upsampling (nearest x2 + 3x3 conv as one 2x2 conv per output phase, 4/9 of the multiply-adds):
  every device;
* fused attention (torch's scaled_dot_product_attention). Its CPU and CUDA kernels accumulate q.k^T and the
  softmax in float32 for half inputs, so SD 2.1's float32-softmax rule holds without an upcast of q, k, v.
  CUDA runs the half kernel; other devices (MPS) upcast and take the queries in slices, as their kernels
  hold the whole score matrix; CPUs run half inputs through whichever of the two the micro-benchmark found
  faster on them;
* CPUs: large convolution weights in slices of output channels, long token projections as 1x1 convolutions
  (oneDNN instead of MKL), the feed-forward in row slices, each where the one-time micro-benchmark of
  `machine.py` found it faster than the plain op on this machine at this dtype (a half dtype the CPU only
  emulates gets the plain ops);
* CPUs, bfloat16: convolutions of a shape that torch's bf16 kernel gets wrong on this CPU run in float32
  (each shape checked once per machine, `modules.bf16_conv_ok`);
* CUDA, half dtypes: GroupNorm32 without its float32 copy of the activations (CUDA's group_norm accumulates
  half inputs in float32 itself);
* CPUs: the VAE in channels-last layout;
* CPUs with glibc: malloc keeps freed memory for the next call instead of handing it back to the kernel and
  faulting it in again, page by page (`heap.py`; once per process, unless the user tuned malloc);
* the dtype of `--dtype auto` (`default_dtype`).

`cpu.py` names the machine these verdicts are kept under. BENCHMARKS.md holds the measurements behind these
choices and the CPU each was made on.
`memory.py` holds the memory model: a network call's peak, counted on meta tensors, and the batch limits
it allows.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..nets.blocks import FeedForward, GroupNorm32, SpatialTransformer, Upsample
from ..nets.vae import AutoencoderKL
from .cpu import cpu_flags, cpu_model
from .machine import measured_paths, path_names
from . import heap, modules as fast
from .modules import ConvLinear, CpuConv2d, FoldedUpsample, HalfGroupNorm32, RowSlicedFeedForward

__all__ = ["Policy", "policy", "default_dtype", "accelerate", "set_attention", "compile_model", "cpu_flags",
           "cpu_model", "ConvLinear", "CpuConv2d", "FoldedUpsample", "HalfGroupNorm32", "RowSlicedFeedForward"]


COMPILED_BATCH = 4  # rows of each call to a CPU-compiled UNet whose batch would vary (2 frames with guidance)


def fixed_batch(compiled: bool, device) -> bool:
    """Whether a compiled network is called with one batch size: on CPUs (frozen graphs, one per shape);
    CUDA graphs take any batch (`compile_model`)."""
    return compiled and torch.device(device).type == "cpu"


@dataclass(frozen=True)
class Policy:
    fold_upsample: bool = True
    attention: object = fast.sdpa          # the kernel put in place of the reference formula
    slice_convs: bool = False
    check_bf16_convs: bool = False
    linear_as_conv: bool = False
    slice_feedforward: bool = False
    vae_channels_last: bool = False
    half_group_norm: bool = False
    keep_freed_memory: bool = False


def policy(device, dtype=torch.float32) -> Policy:
    """The fast paths for `device` (a torch.device or its name) at `dtype`."""
    device = torch.device(device)
    if device.type == "cuda":
        return Policy(half_group_norm=dtype != torch.float32)
    if device.type != "cpu":
        return Policy(attention=fast.sdpa_chunked)
    # A dtype the CPU only emulates is slow whatever the path: the plain ops, and no time spent measuring.
    won = measured_paths(dtype) if native(dtype) else dict.fromkeys(path_names(dtype), False)
    half_kernel = dtype == torch.float32 or won.get("half_attention", False)
    return Policy(attention=fast.sdpa if half_kernel else fast.sdpa_float32, slice_convs=won["slice_convs"],
                  check_bf16_convs=dtype == torch.bfloat16, linear_as_conv=won["linear_as_conv"],
                  slice_feedforward=won["slice_feedforward"], vae_channels_last=True, keep_freed_memory=True)


NATIVE = {torch.bfloat16: {"avx512_bf16", "amx_bf16"}, torch.float16: {"avx512_fp16", "amx_fp16"}}


def native(dtype) -> bool:
    """Whether this CPU computes `dtype` in hardware (float32 always; half types by their flags)."""
    return dtype == torch.float32 or bool(NATIVE.get(dtype, set()) & cpu_flags())


def default_dtype(device) -> torch.dtype:
    """`--dtype auto`: on CUDA bfloat16 where the card computes in it (Ampere and later: float16's range is what
    SD 2.1 overflows), else float16; bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX); else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.bfloat16 if device.type == "cpu" and native(torch.bfloat16) else torch.float32


def plain_conv(m) -> bool:
    """A convolution the CPU paths handle: no groups, dilation, padding mode or padding by name."""
    return type(m) is nn.Conv2d and m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros" \
        and not isinstance(m.padding, str)


# The classes `accelerate` swaps in, each a subclass of the plain class it replaces.
FAST_MODULES = (HalfGroupNorm32, FoldedUpsample, RowSlicedFeedForward, CpuConv2d, ConvLinear)


def accelerate(model: nn.Module, device=None) -> nn.Module:
    """Apply the fast paths of `device` (default: the model's own) at the model's dtype to `model` in place;
    returns it. A model accelerated before (a copy converted to another dtype, say) has its paths chosen
    again, not kept from the dtype they were chosen for."""
    weight = next(model.parameters())
    p = policy(device if device is not None else weight.device, weight.dtype)
    projections = {id(m) for t in model.modules() if isinstance(t, SpatialTransformer)
                   for m in t.modules() if type(m) in (nn.Linear, ConvLinear)}
    for m in model.modules():
        if type(m) in FAST_MODULES:
            m.__class__ = type(m).__base__
        if type(m) is GroupNorm32 and p.half_group_norm:
            m.__class__ = HalfGroupNorm32
        elif type(m) is Upsample and p.fold_upsample:
            m.__class__, m._kernels = FoldedUpsample, None
        elif type(m) is FeedForward and p.slice_feedforward:
            m.__class__ = RowSlicedFeedForward
        elif plain_conv(m) and (p.slice_convs or p.check_bf16_convs):
            m.__class__, m.slice_weights, m.check_bf16 = CpuConv2d, p.slice_convs, p.check_bf16_convs
        elif id(m) in projections and p.linear_as_conv:
            m.__class__ = ConvLinear
    set_attention(model, p.attention)
    if isinstance(model, AutoencoderKL):
        model.to(memory_format=torch.channels_last if p.vae_channels_last else torch.contiguous_format)
    if p.keep_freed_memory:
        heap.keep_freed_memory()
    return model


def set_attention(model: nn.Module, kernel) -> nn.Module:
    """Compute every attention of `model` (the modules whose class has the reference formula as `attention`)
    with `kernel`; returns the model."""
    for m in model.modules():
        if hasattr(type(m), "attention"):
            m.attention = kernel
    return model


def compile_model(module, device, **options):
    """torch.compile a network in place. On CUDA the graphs take any batch (`dynamic`: the rounds of an
    interpolation grow, and each size would otherwise compile anew), except under CUDA graphs
    (mode="reduce-overhead"), which record one graph per shape. On CPUs, inductor also freezes the weights
    of this network's inference (no-grad) graphs, which prepacks them for oneDNN, and callers keep the
    batch fixed (`ldm.sample.denoiser.in_batches(pad=True)`); graphs that need gradients (textual inversion) are
    unaffected.

    Freezing is set process-wide, not as an option of this compile: dynamo decides whether the parameters are
    constants of the graph from the global flag when it traces (`torch._dynamo.utils.is_parameter_freezing`),
    so with the flag given as a compile option alone they stay inputs, nothing is folded or prepacked, and
    the compiled UNet ran slower than the eager one (BENCHMARKS.md, 2026-12-03)."""
    if torch.device(device).type == "cpu":
        from torch._inductor import config as inductor
        inductor.freezing = True
    elif options.get("mode") != "reduce-overhead":
        options.setdefault("dynamic", True)
    module.compile(**options)
    return module
