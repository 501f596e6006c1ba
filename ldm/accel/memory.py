"""How much memory a network call takes, and so how many rows of a batch fit in the memory that is free.

A call's memory is found by running it on the meta device: the same modules and code path, with meta
tensors in place of the weights and inputs, so nothing is computed or allocated. A dispatch mode adds up
the bytes of the tensors alive after each op and keeps the highest total (`peak_bytes`). Fused attention
is counted as its output only, as the fused kernels never hold the score matrix. Run at 1, 2 and 4 rows, a
call gives its `Cost`: bytes whatever the batch, and bytes per row. A training step (`training_cost`) is
counted the same way with autograd recording: the tensors kept for its backward pass and those the backward
pass makes are included. `free_bytes(device)` is what the device has left; `Cost.rows` how many rows fit in
a budget; `rows_worth_batching` how many are worth one call on a CPU. The full-size networks take a few
seconds to run on meta tensors, so each call's Cost is kept per machine in the user's cache (`stored_cost`).
"""
import dataclasses
import hashlib
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..files import json_cached, user_cache

USABLE = 0.8  # the share of the free memory a batch may fill: the rest is kernel workspace and fragmentation


def _storages(tree) -> set:
    return {t.untyped_storage()._cdata for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)}


class _LiveBytes(TorchDispatchMode):
    """The bytes of the tensor storages made under it and still alive, and the most there ever were."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def _gone(self, key, size):
        self.live.pop(key, None)
        self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _storages((args, kwargs))  # views and in-place results allocate nothing
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:
                continue
            size = storage.nbytes()
            self.live[key] = weakref.ref(storage, lambda _, key=key, size=size: self._gone(key, size))
            self.now += size
            self.peak = max(self.peak, self.now)
        return out


class _Attention(torch.autograd.Function):
    """What the fused kernels allocate when gradients are wanted: the output, kept for the backward pass
    with q, k, v and each row's log-sum-exp (float32); then gradients of q, k and v."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *_ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _FusedAttention(TorchFunctionMode):
    """scaled_dot_product_attention as the fused kernels allocate it: no score matrix."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
                return _Attention.apply(q, k, v)
            return q.new_empty(*q.shape[:-1], v.shape[-1])
        return func(*args, **(kwargs or {}))


def peak_bytes(fn, *args, grad: bool = False) -> int:
    """The most bytes that tensors made by `fn(*args)` hold at once (the inputs not counted); with `grad`,
    autograd records and `fn` may run a backward pass."""
    with torch.set_grad_enabled(grad), _FusedAttention(), _LiveBytes() as live:
        fn(*args)
    return live.peak


class _Method(torch.nn.Module):
    def __init__(self, module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)


def on_meta(module, method: str = "forward"):
    """`module.<method>` as a function that runs on meta copies of the module's weights: its own code path,
    with the classes the acceleration layer gave its layers."""
    wrapper = _Method(module, method)
    state = {f"module.{name}": torch.empty_like(t, device="meta")
             for name, t in [*module.named_parameters(), *module.named_buffers()]}
    return lambda *args, **kwargs: functional_call(wrapper, state, args, kwargs, strict=True)


@dataclass(frozen=True)
class Cost:
    """The peak memory of a call of `rows` rows: fixed + rows * per_row bytes (fixed may be negative: the
    line fits many rows, and a batch always brings more than it)."""
    fixed: int
    per_row: int

    def bytes(self, rows: int) -> int:
        return self.fixed + rows * self.per_row

    def rows(self, budget: int) -> int:
        """The most rows whose call fits in `budget` bytes (at least 1: a call cannot be smaller)."""
        return max(1, (budget - self.fixed) // max(self.per_row, 1))


def cost(call, grad: bool = False) -> Cost:
    """The Cost of `call(rows)`, which makes its inputs of `rows` rows on the meta device and runs on them
    (the inputs counted: they are what a batch brings). The peak grows by the same bytes per row from a
    few rows on; the line through 2 and 4 rows, raised to cover 1 and 2 rows where that is needed, bounds
    every batch. A first call fills what the modules keep between calls (the folded upsampling kernels),
    as a run's first call does."""
    peak_bytes(call, 1, grad=grad)
    peaks = {rows: peak_bytes(call, rows, grad=grad) for rows in (1, 2, 4)}
    per_row = (peaks[4] - peaks[2]) // 2
    return Cost(fixed=max(peaks[rows] - rows * per_row for rows in peaks), per_row=per_row)


VERSION = 1  # bumped when what is counted changes, so that stored costs are found again


def cache_file() -> Path:
    return user_cache() / "memory-costs.json"


def fingerprint(modules, *shapes) -> str:
    """What a network call's memory depends on: each module's class, attention kernel and tensors (names,
    shapes, dtypes), the inputs' shapes, and the torch version."""
    h = hashlib.sha1(f"v{VERSION} torch {torch.__version__} {shapes}".encode())
    for module in modules:
        for name, m in module.named_modules():
            kernel = getattr(m, "attention", None)
            h.update(f"{name}:{type(m).__qualname__}:{getattr(kernel, '__qualname__', '')};".encode())
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()


def stored_cost(key: str, call, grad: bool = False) -> Cost:
    """`cost(call, grad)`, found once per machine and kept under `key` in `cache_file()` (a few seconds for
    the full-size networks, which a run should not spend every time)."""
    found = json_cached(cache_file(), key, lambda: dataclasses.asdict(cost(call, grad)),
                        valid=lambda c: isinstance(c["fixed"], int) and isinstance(c["per_row"], int))
    return Cost(**found)


def free_bytes(device) -> int | None:
    """The bytes `device` can still give to tensors: on CUDA what the driver has free plus what torch's
    allocator holds unused; on MPS the recommended working set less what is allocated; on a CPU the
    kernel's MemAvailable. None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


# Latent pixels of one call per CPU thread from which a bigger batch no longer runs faster per row. A CPU
# computes a call's rows with the same few cores, so once every thread has work, more rows cost as much time
# per row and only add memory, and the larger buffers are mapped and faulted in afresh on each call. Measured
# on a 2-core Zen 4 (BENCHMARKS.md, 2026-12-03 (sixth)); a machine with more threads keeps larger batches.
CPU_PIXELS_PER_THREAD = {"unet": 8192, "decoder": 2048}


def rows_worth_batching(device, network: str, latent: tuple) -> int | None:
    """The most rows of one call of `network` ("unet": the UNet with its ControlNet; "decoder": the VAE
    decoder) on latents [C, h, w] that still pay on `device`: on a CPU enough to give each thread
    CPU_PIXELS_PER_THREAD latent pixels (at least 1); elsewhere None, where only memory limits a batch."""
    if torch.device(device).type != "cpu":
        return None
    return max(1, CPU_PIXELS_PER_THREAD[network] * torch.get_num_threads() // (latent[1] * latent[2]))


def _dtype(module) -> torch.dtype:
    return next(module.parameters()).dtype


def _empty(*shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def unet_cost(unet, controlnet, latent: tuple, context: tuple) -> Cost:
    """A UNet call (after the ControlNet's, whose residuals it reads) on rows of latents [C, h, w] and text
    context [L, width], each row bringing its timestep, context and hint features."""
    dtype, (c, h, w) = _dtype(unet), latent
    run_unet, run_control = on_meta(unet), None if controlnet is None else on_meta(controlnet)

    def call(rows):
        x, t, ctx = _empty(rows, c, h, w, dtype=dtype), _empty(rows, dtype=torch.long), _empty(rows, *context, dtype=dtype)
        control = None
        if controlnet is not None:
            features = _empty(rows, controlnet.input_hint_block[-1].out_channels, h, w, dtype=dtype)
            control = run_control(x, None, t, ctx, strength=_empty(rows, dtype=torch.float32), hint_features=features)
        return run_unet(x, t, ctx, control=control)
    return stored_cost(fingerprint([m for m in (unet, controlnet) if m is not None], "unet", latent, context), call)


def training_cost(unet, latent: tuple, context: tuple) -> Cost:
    """A UNet training step as textual inversion takes it, every activation kept for the backward pass (no
    gradient checkpointing): the call on rows of latents [C, h, w] and text context [L, width] (float32,
    brought to the UNet's dtype), and the backward pass to the context."""
    dtype, (c, h, w), run = _dtype(unet), latent, on_meta(unet)

    def call(rows):
        ctx = _empty(rows, *context, dtype=torch.float32).requires_grad_()
        checkpointing, unet.gradient_checkpointing = unet.gradient_checkpointing, False
        try:
            out = run(_empty(rows, c, h, w, dtype=dtype), _empty(rows, dtype=torch.long), ctx.to(dtype))
            torch.autograd.grad(out.float().square().mean(), ctx)
        finally:
            unet.gradient_checkpointing = checkpointing
    return stored_cost(fingerprint([unet], "training", latent, context), call, grad=True)


def hint_cost(controlnet, image: tuple) -> Cost:
    """The ControlNet's hint encoder on rows of hint images [3, H, W]."""
    dtype, encode = _dtype(controlnet), on_meta(controlnet, "encode_hint")
    return stored_cost(fingerprint([controlnet], "hint", image), lambda rows: encode(_empty(rows, *image, dtype=dtype)))


def decode_cost(vae, latent: tuple) -> Cost:
    """The VAE decoder on rows of latents [C, h, w], its images brought to float32."""
    dtype, decode = _dtype(vae), on_meta(vae, "decode")
    return stored_cost(fingerprint([vae], "decode", latent), lambda rows: decode(_empty(rows, *latent, dtype=dtype)).float())
