"""What wins on the CPU in hand, found out once and remembered.

* `measured_paths(dtype)`: a micro-benchmark of each CPU path of `ldm.accel.modules` against the plain op
  it replaces, on shapes where the SD 2.1 UNet spends its time (about 8 s at float32 on a 2-core Zen 3,
  once). A path is taken only where it is faster by a margin. The verdict is cached per machine (CPU
  model and flags, torch version, thread count, dtype) in `~/.cache/sd-interp/accel-paths.json`,
  so each kind of machine measures once.
"""
import copy
import functools
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import json_cached, user_cache
from ..nets.blocks import FeedForward
from ..sample import rng
from . import modules as fast
from .cpu import machine

# The self-attention calls the half-attention trial times, [batch, heads, tokens, head dim] as the UNet
# makes them (torch sends 3-D inputs to its math kernel, not to the flash kernel the UNet runs on): levels 1
# and 2 of a sampling call at 512 px with guidance, level 1 of a 16-row call at 256 px (a `--preview` run),
# and a training step of textual inversion at 256 px, forward and backward. Which kernel is faster changes
# with the shape (BENCHMARKS.md, 2026-12-03, seventh), so the verdict is on the sum of the mix.
ATTENTION_CALLS = ((2, 5, 4096, 64), (2, 10, 1024, 64), (16, 5, 1024, 64))
ATTENTION_STEPS = ((2, 5, 1024, 64), (2, 10, 256, 64))

MARGIN = 0.97   # a fast path is taken where its best time is at most this fraction of the plain op's
ROUNDS = 5
VERSION = 3     # bumped when the trials change, so that older verdicts are measured again


def _best_times(plain, faster) -> tuple:
    """Best seconds of ROUNDS calls of `plain()` and of `faster()`, called alternately after a warm-up call
    each (the best, not the median: a shared machine only ever adds time)."""
    times = ([], [])
    for fn in (plain, faster):
        fn()
    for _ in range(ROUNDS):
        for fn, out in zip((plain, faster), times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(times[0]), min(times[1])


def path_names(dtype) -> tuple:
    """The CPU paths the micro-benchmark decides at `dtype`."""
    return ("linear_as_conv", "slice_convs", "slice_feedforward") + (("half_attention",) if dtype != torch.float32 else ())


def trials(dtype) -> dict:
    """Per CPU path, (plain op, fast op) on shapes of the SD 2.1 UNet at 64x64 latents, batch 2."""
    g = rng.generator(0)

    def randn(*shape, scale=1.0):
        return (rng.randn(shape, g) * scale).to(dtype)

    tokens = randn(2, 4096, 320)  # the level-1 tokens (64x64 latents), and a level-4 ResBlock conv
    image, weight = randn(2, 1280, 8, 8), randn(1280, 1280, 3, 3, scale=0.01)
    # The projections of a level-1 and a level-2 transformer: q/k/v/out, GEGLU in (8x wide) and out.
    inputs = {320: tokens, 640: randn(2, 1024, 640), 1280: randn(2, 4096, 1280), 2560: randn(2, 1024, 2560)}
    projections = [randn(o, i, scale=0.05) for i, o in ((320, 320), (320, 2560), (1280, 320),
                                                        (640, 640), (640, 5120), (2560, 640))]

    def project(linear):
        return [linear(inputs[w.shape[1]], w) for w in projections]

    with torch.device("meta"):
        ff = FeedForward(320)
    ff = ff.to_empty(device="cpu").to(dtype).requires_grad_(False)
    for p in ff.parameters():
        p.copy_(randn(*p.shape, scale=0.05))
    sliced_ff = copy.copy(ff)  # the same parameters, through the row-sliced forward
    sliced_ff.__class__ = fast.RowSlicedFeedForward
    out = {
        "linear_as_conv": (lambda: project(F.linear), lambda: project(fast.linear)),
        "slice_convs": (lambda: F.conv2d(image, weight, None, 1, 1), lambda: fast.conv2d(image, weight, None, 1, 1)),
        "slice_feedforward": (lambda: ff(tokens[:1]), lambda: sliced_ff(tokens[:1])),
    }
    if "half_attention" in path_names(dtype):  # a half kernel that accumulates in float32, against the upcast
        sampling = [[randn(*shape) for _ in range(3)] for shape in ATTENTION_CALLS]
        training = [[randn(*shape).requires_grad_() for _ in range(3)] for shape in ATTENTION_STEPS]

        def attend(kernel):
            outputs = [kernel(q, k, v) for q, k, v in sampling]
            with torch.enable_grad():  # the trials run under no_grad
                for q, k, v in training:
                    outputs += torch.autograd.grad(kernel(q, k, v).sum(), (q, k, v))
            return outputs
        out["half_attention"] = (lambda: attend(fast.sdpa_float32), lambda: attend(fast.sdpa))
    return out


def cache_file() -> Path:
    return user_cache() / "accel-paths.json"


def machine_key(dtype) -> str:
    return f"v{VERSION} | {machine()} | {str(dtype).removeprefix('torch.')}"


def measure(dtype) -> dict:
    """Per CPU path: the plain and the fast op's best seconds, and whether the path is taken."""
    found = {}
    with torch.no_grad():
        for name, (plain, faster) in trials(dtype).items():
            a, b = _best_times(plain, faster)
            found[name] = {"plain_s": a, "fast_s": b, "use": b <= MARGIN * a}
    return found


def measured_paths(dtype) -> dict:
    """Per CPU path, whether it is taken on this machine at `dtype`: `measure(dtype)`, from the cache file
    when it holds this machine's verdict, else measured and stored there (a cache that cannot be read is
    measured again, one that cannot be written is kept in memory only)."""
    return _verdict(machine_key(dtype), dtype)


@functools.lru_cache(maxsize=None)
def _verdict(key: str, dtype) -> dict:
    names = path_names(dtype)
    found = json_cached(cache_file(), key, lambda: measure(dtype),
                        valid=lambda verdict: all(isinstance(verdict[name]["use"], bool) for name in names))
    return {name: found[name]["use"] for name in names}
