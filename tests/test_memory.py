"""The memory model (`ldm.accel.memory`) and the batch limits a run takes from it: the meta-device estimate equals
what the same calls hold on real tensors, costs grow by rows as measured, and a budget gives the largest
batches that fit it, the decoder split to match."""
import copy
import math

import pytest
import torch

import ldm
from interp.conditioning import PoseConditioning, TextConditioning
from interp.interpolator import Interpolator
from interp.settings import Settings
from ldm.accel import memory


@pytest.fixture(scope="module")
def plain(tiny_ckpt):
    """The tiny model without the CPU paths, whose code branches on the device (meta is not the CPU)."""
    return ldm.load_checkpoint(tiny_ckpt, fast=False)


def real_unet_call(sd, rows):
    c, h, w = 4, 8, 8
    x, ctx = torch.zeros(rows, c, h, w), torch.zeros(rows, 77, sd.config.unet.context_dim)
    return sd.unet(x, torch.zeros(rows, dtype=torch.long), ctx)


def test_the_meta_estimate_is_what_the_call_holds_on_real_tensors(plain):
    """On meta tensors the same code holds the same bytes as on real ones; the Cost line bounds every
    batch and is exact from a few rows on."""
    run = memory.on_meta(plain.unet)
    for rows in (1, 3):
        meta = memory.peak_bytes(lambda: run(torch.zeros(rows, 4, 8, 8, device="meta"),
                                             torch.zeros(rows, dtype=torch.long, device="meta"),
                                             torch.zeros(rows, 77, plain.config.unet.context_dim, device="meta")))
        assert meta == memory.peak_bytes(real_unet_call, plain, rows)
    estimate = memory.unet_cost(plain.unet, None, (4, 8, 8), (77, plain.config.unet.context_dim))
    real = [memory.peak_bytes(real_unet_call, plain, rows) for rows in range(1, 7)]
    assert all(estimate.bytes(rows) >= peak for rows, peak in enumerate(real, 1))
    assert estimate.bytes(6) == real[-1]
    decode = memory.decode_cost(plain.vae, (4, 8, 8))
    real = memory.peak_bytes(lambda rows: plain.vae.decode(torch.zeros(rows, 4, 8, 8)).float(), 5)
    assert real == decode.bytes(5) and decode.per_row > 0


def test_a_training_step_is_counted_as_on_real_tensors(plain):
    """Textual inversion's step (the call, then the backward pass to the text context) with the activations
    kept: the estimate is what the step holds on real tensors, and more than it holds when each block is
    recomputed in the backward pass (gradient checkpointing)."""
    width = plain.config.unet.context_dim

    def step(rows):
        ctx = torch.zeros(rows, 77, width, requires_grad=True)
        out = plain.unet(torch.zeros(rows, 4, 8, 8), torch.zeros(rows, dtype=torch.long), ctx)
        torch.autograd.grad(out.float().square().mean(), ctx)
    estimate = memory.training_cost(plain.unet, (4, 8, 8), (77, width))
    kept = memory.peak_bytes(step, 4, grad=True)
    plain.unet.gradient_checkpointing = True
    try:
        recomputed = memory.peak_bytes(step, 4, grad=True)
    finally:
        plain.unet.gradient_checkpointing = False
    assert estimate.bytes(4) == kept > recomputed
    assert estimate.bytes(2) > memory.unet_cost(plain.unet, None, (4, 8, 8), (77, width)).bytes(2)


def test_peak_bytes_counts_what_is_alive_at_once():
    x = torch.zeros(1000, device="meta")

    def two_at_a_time():
        a = x * 2       # 4 kB
        b = a + 1       # 8 kB alive
        del a
        c = b.t() * 3   # a view is free; 8 kB alive again
        return c
    assert memory.peak_bytes(two_at_a_time) == 8000


def test_fused_attention_is_counted_as_its_output():
    q = torch.zeros(2, 8, 4096, 64, device="meta")
    fused = memory.peak_bytes(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert fused == q.numel() * 4  # not the 2 x 8 x 4096 x 4096 scores


def test_a_budget_gives_the_most_rows_that_fit():
    cost = memory.Cost(fixed=100, per_row=30)
    assert cost.rows(100 + 5 * 30) == 5 and cost.rows(100 + 5 * 30 - 1) == 4
    assert cost.rows(10) == 1  # a call cannot be smaller than one row
    assert cost.bytes(5) == 250


def test_free_bytes_on_this_machine():
    free = memory.free_bytes("cpu")
    assert free is None or free > 0
    assert memory.free_bytes("meta") is None


def person(points):
    kp = [[0.0, 0.0, 0.0]] * 18
    for i, (x, y) in points.items():
        kp[i] = [x, y, 1.0]
    return kp


def interpolator(sd, controlnet=None, **kw):
    g = torch.Generator().manual_seed(1)
    c = torch.randn(3, 77, sd.config.unet.context_dim, generator=g)
    settings = Settings(frames=9, steps=10, candidates="auto", **kw)
    poses = None
    if controlnet is not None:
        a = person({1: (32, 20), 2: (20, 20), 5: (44, 20)})
        poses = PoseConditioning([a], [a], 64, 64)
    return Interpolator(sd, settings, TextConditioning(c[:1], c[1:2], c[2:]), controlnet=controlnet, poses=poses,
                        scorer=lambda images: torch.arange(len(images), dtype=torch.float32))


@pytest.mark.parametrize("with_controlnet", [False, True])
def test_the_limits_are_the_largest_batches_within_the_budget(tiny_sd, tiny_controlnet, monkeypatch, with_controlnet):
    controlnet = tiny_controlnet if with_controlnet else None
    it = interpolator(tiny_sd, controlnet)
    latent = torch.zeros(1, 4, 8, 8)
    unet = memory.unet_cost(tiny_sd.unet, controlnet, (4, 8, 8), (77, tiny_sd.config.unet.context_dim))
    decode = memory.decode_cost(tiny_sd.vae, (4, 8, 8))
    budget = 12 * unet.per_row + 5 * decode.per_row + sum(it.kept_bytes(latent))
    rows, images = it.batch_limits(latent, free=int(budget / memory.USABLE))
    denoising, decoding = it.kept_bytes(latent)
    fits = [unet] + ([memory.hint_cost(controlnet, (3, 64, 64))] if controlnet else [])
    assert all(cost.bytes(rows) + denoising <= budget for cost in fits)
    assert any(cost.bytes(rows + 1) + denoising > budget for cost in fits)
    assert decode.bytes(images) + decoding <= budget < decode.bytes(images + 1) + decoding
    # More memory, larger batches; what is given is kept.
    more_rows, more_images = it.batch_limits(latent, free=int(4 * budget / memory.USABLE))
    assert more_rows > rows and more_images > images
    assert interpolator(tiny_sd, controlnet, max_batch=3, max_decode=2).batch_limits(latent) == (3, 2)
    monkeypatch.setattr(memory, "free_bytes", lambda device: None)  # memory that cannot be told: what pays
    assert it.batch_limits(latent) == (memory.rows_worth_batching("cpu", "unet", (4, 8, 8)),
                                       memory.rows_worth_batching("cpu", "decoder", (4, 8, 8)))


def test_a_cpu_call_holds_no_more_rows_than_pay(tiny_sd, monkeypatch):
    """On a CPU a call stops at CPU_PIXELS_PER_THREAD latent pixels a thread (at least one row), however much
    memory is free; a given limit is kept; off the CPU only memory limits a batch."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    unet, decoder = (memory.CPU_PIXELS_PER_THREAD[n] for n in ("unet", "decoder"))
    assert memory.rows_worth_batching("cpu", "unet", (4, 64, 64)) == 2 * unet // 4096
    assert memory.rows_worth_batching("cpu", "unet", (4, 32, 32)) == 2 * unet // 1024
    assert memory.rows_worth_batching(torch.device("cpu"), "decoder", (4, 48, 48)) == 2 * decoder // 2304
    assert memory.rows_worth_batching("cpu", "decoder", (4, 1000, 1000)) == 1
    assert memory.rows_worth_batching("cuda", "unet", (4, 64, 64)) is None
    assert memory.rows_worth_batching("mps", "decoder", (4, 64, 64)) is None
    monkeypatch.setitem(memory.CPU_PIXELS_PER_THREAD, "unet", 96)
    monkeypatch.setitem(memory.CPU_PIXELS_PER_THREAD, "decoder", 32)
    it = interpolator(tiny_sd)
    latent = torch.zeros(1, 4, 8, 8)
    assert it.batch_limits(latent, free=1 << 40) == (3, 1)  # 2 x 96 / 64 rows, 2 x 32 / 64 -> one image
    few = memory.unet_cost(tiny_sd.unet, None, (4, 8, 8), (77, tiny_sd.config.unet.context_dim))
    denoising, _ = it.kept_bytes(latent)
    assert it.batch_limits(latent, free=int((few.bytes(2) + denoising) / memory.USABLE) + 1)[0] == 2  # memory, where less
    assert interpolator(tiny_sd, max_batch=7, max_decode=5).batch_limits(latent, free=1 << 40) == (7, 5)


def test_a_run_splits_its_calls_by_the_limits(tiny_sd, monkeypatch):
    """Round by round, every UNet call has at most the row limit and the decoder takes each round's
    images in ceil(images / limit) calls."""
    unet = memory.unet_cost(tiny_sd.unet, None, (4, 8, 8), (77, tiny_sd.config.unet.context_dim))
    decode = memory.decode_cost(tiny_sd.vae, (4, 8, 8))
    budget = 4 * unet.per_row + 2 * decode.per_row
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(budget / memory.USABLE))
    it = interpolator(tiny_sd)
    unet_rows, decoded = [], []

    def counter(rows):
        def count(module, args):
            if not args[0].is_meta:  # (not the memory estimate's calls)
                rows.append(args[0].shape[0])
        return count
    hooks = [tiny_sd.unet.register_forward_pre_hook(counter(unet_rows)),
             tiny_sd.vae.decoder.register_forward_pre_hook(counter(decoded))]
    g = torch.Generator().manual_seed(0)
    ends = {0: torch.randn(1, 4, 8, 8, generator=g), 8: torch.randn(1, 4, 8, 8, generator=g)}
    try:
        it.run(ends, lambda *args: None)
    finally:
        for h in hooks:
            h.remove()
    rows, images = it.limits
    assert rows is not None and max(unet_rows) <= rows < max(2 * len(f) * k for f, k in zip(it.plan.rounds, it.plan.candidates))
    expected = [n for f, k in zip(it.plan.rounds, it.plan.candidates)
                for n in [images] * (len(f) * k // images) + ([len(f) * k % images] if len(f) * k % images else [])]
    assert decoded == expected and math.ceil(max(len(f) * k for f, k in zip(it.plan.rounds, it.plan.candidates)) / images) > 1


def test_a_cost_is_found_once_and_then_read_back(plain, monkeypatch):
    shape, context = (4, 8, 8), (77, plain.config.unet.context_dim)
    first = memory.unet_cost(plain.unet, None, shape, context)
    monkeypatch.setattr(memory, "cost", lambda call: pytest.fail("measured again"))
    assert memory.unet_cost(plain.unet, None, shape, context) == first
    # Another dtype, layer class or input shape is another call.
    keys = {memory.fingerprint([plain.unet], "unet", shape, context),
            memory.fingerprint([plain.unet], "unet", (4, 16, 16), context),
            memory.fingerprint([copy.deepcopy(plain.unet).half()], "unet", shape, context)}
    assert len(keys) == 3
