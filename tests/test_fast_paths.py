"""Every speed-up of the acceleration layer (`ldm.accel`) matches the plain path it replaces: the whole
accelerated models vs the plain ones, fused vs reference attention, torch.compile vs eager, NHWC vs NCHW VAE,
folded vs upsample-then-conv, row-sliced vs whole feed-forward, sliced vs whole convolution weights, linear
as 1x1 conv vs F.linear, split vs whole UNet batches, compiled vs eager slerp; and which paths each CPU gets."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from interp.slerp import slerp
import ldm
from ldm import accel
from ldm.accel import ConvLinear, CpuConv2d, FoldedUpsample, RowSlicedFeedForward, compile_model, machine
from ldm.accel import modules as fast
from ldm.nets import attention as attn
from ldm.nets.blocks import FeedForward, GroupNorm32, SpatialTransformer, Upsample
from ldm.sample.denoiser import Denoiser


def test_compiled_unet_matches_eager(tiny_sd, cases):
    """fullgraph=True: the denoising network compiles without graph breaks (with frozen weights on CPU)."""
    unet = copy.deepcopy(tiny_sd.unet)
    with torch.no_grad():
        eager = unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])
        compile_model(unet, torch.device("cpu"), fullgraph=True)
        compiled = unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled, cases["unet_out"], atol=1e-4, rtol=1e-4)
    # Frozen: the weights are constants of the graph, so a weight changed afterwards is not seen (a compile
    # option alone left them graph inputs, read on every call and never prepacked).
    with torch.no_grad():
        unet.out[2].bias.add_(1.0)
        torch.testing.assert_close(unet(cases["unet_x"], cases["unet_t"], cases["unet_context"]), compiled)


def test_compiled_slerp_matches_eager():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    b[1] = a[1]  # parallel rows take the lerp branch
    t = torch.linspace(0, 1, 6)
    fused = torch.compile(slerp, fullgraph=True)
    torch.testing.assert_close(fused(a, b, t), slerp(a, b, t), atol=1e-6, rtol=1e-6)


def test_channels_last_vae_matches_contiguous(tiny_sd, cases):
    vae = copy.deepcopy(tiny_sd.vae)
    with torch.no_grad():
        nhwc = vae.to(memory_format=torch.channels_last).decode(cases["vae_dec_z"])
        nchw = vae.to(memory_format=torch.contiguous_format).decode(cases["vae_dec_z"])
    torch.testing.assert_close(nhwc, nchw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nhwc, cases["vae_dec_out"], atol=1e-4, rtol=1e-4)


def test_split_batches_match_one_batch(tiny_sd, tiny_controlnet, cases):
    x = torch.cat([cases["unet_x"]] * 2)
    t = torch.tensor([10, 980, 500, 40])
    ctx = torch.cat([cases["unet_context"]] * 2)
    hint, strength = cases["cn_hint"], torch.tensor([1.0, 1.5])
    whole, split = Denoiser(tiny_sd.unet, tiny_controlnet, hint, strength), Denoiser(
        tiny_sd.unet, tiny_controlnet, hint, strength, max_batch=3)
    with torch.no_grad():
        torch.testing.assert_close(split(x, t, ctx), whole(x, t, ctx), atol=1e-5, rtol=1e-5)
    assert (whole.calls, split.calls) == (1, 2)
    z = torch.cat([cases["vae_dec_z"]] * 3) * tiny_sd.config.latent_scale
    with torch.no_grad():
        torch.testing.assert_close(tiny_sd.decode_latents(z, max_batch=2), tiny_sd.decode_latents(z), atol=1e-5, rtol=1e-5)


def test_padded_batches_have_one_shape_and_the_same_result(tiny_sd, tiny_controlnet, cases):
    """pad=True (what a compiled UNet gets): every call has exactly max_batch rows, the result is unchanged."""
    x = torch.cat([cases["unet_x"]] * 3)[:5]
    t = torch.tensor([10, 980, 500, 40, 700])
    ctx = torch.cat([cases["unet_context"]] * 3)[:5]
    hint, strength = cases["cn_hint"][:1], torch.tensor([1.0, 1.5, 0.5, 1.0, 2.0])
    whole = Denoiser(tiny_sd.unet, tiny_controlnet, hint, strength)
    padded = Denoiser(tiny_sd.unet, tiny_controlnet, hint, strength, max_batch=4, pad=True)
    rows = []
    hook = tiny_sd.unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            torch.testing.assert_close(padded(x, t, ctx), whole(x, t, ctx), atol=1e-5, rtol=1e-5)
    finally:
        hook.remove()
    assert rows == [4, 4, 5]  # the padded calls (4 + 1 filled up to 4), then the whole batch


def plain_upsample(module, x):
    return module.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def swapped(module, cls, **state):
    """`module` as the fast subclass `cls` (what accel.accelerate does to it)."""
    module.__class__ = cls
    for k, v in state.items():
        setattr(module, k, v)
    return module


def Conv2d(*args, **kwargs):
    return swapped(torch.nn.Conv2d(*args, **kwargs), CpuConv2d, slice_weights=True)


def Linear(*args, **kwargs):
    return swapped(torch.nn.Linear(*args, **kwargs), ConvLinear)


def folded(channels):
    return swapped(Upsample(channels), FoldedUpsample, _kernels=None)


ALL_PATHS = dict.fromkeys(("linear_as_conv", "slice_convs", "slice_feedforward", "half_attention"), True)


@pytest.mark.parametrize("won", [ALL_PATHS, dict.fromkeys(ALL_PATHS, False)], ids=["all-paths", "no-paths"])
@pytest.mark.parametrize("name", ["unet", "vae", "text_encoder"])
@torch.no_grad()
def test_accelerated_models_match_the_plain_ones(monkeypatch, tiny_ckpt, cases, name, won):
    """Whatever the micro-benchmark finds on the CPU running the suite, every CPU path is checked against the
    plain model."""
    monkeypatch.setattr(accel, "measured_paths", lambda dtype: won)
    fast_model, plain = (getattr(ldm.load_checkpoint(tiny_ckpt, fast=f), name) for f in (True, False))
    assert fast_model.state_dict().keys() == plain.state_dict().keys()
    inputs = {"unet": (cases["unet_x"], cases["unet_t"], cases["unet_context"]), "text_encoder": (cases["text_tokens"],)}
    run = (lambda m: m.decode(cases["vae_dec_z"])) if name == "vae" else (lambda m: m(*inputs[name]))
    torch.testing.assert_close(run(fast_model), run(plain), atol=1e-5, rtol=1e-5)
    assert not any(type(m).__module__.startswith("ldm.accel") for m in plain.modules())
    assert not any("attention" in m.__dict__ for m in plain.modules())


def test_cpu_paths_follow_the_measurement(monkeypatch):
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    for won in (ALL_PATHS, {**ALL_PATHS, "slice_convs": False, "half_attention": False}):
        monkeypatch.setattr(accel, "measured_paths", lambda dtype: won)
        for dtype in (torch.float32, torch.bfloat16):
            p = accel.policy("cpu", dtype)
            assert (p.slice_convs, p.linear_as_conv, p.slice_feedforward) == (
                won["slice_convs"], won["linear_as_conv"], won["slice_feedforward"])
            half_kernel = dtype == torch.float32 or won["half_attention"]  # float32: the upcast is a no-op
            assert p.attention is (fast.sdpa if half_kernel else fast.sdpa_float32)
            assert p.check_bf16_convs == (dtype == torch.bfloat16) and p.fold_upsample and p.vae_channels_last
            assert p.keep_freed_memory
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx2"}))  # bfloat16 only emulated: nothing measured
    monkeypatch.setattr(accel, "measured_paths", lambda dtype: pytest.fail("an emulated dtype is not measured"))
    p = accel.policy("cpu", torch.bfloat16)
    assert not (p.slice_convs or p.linear_as_conv or p.slice_feedforward) and p.attention is fast.sdpa_float32
    cuda = accel.policy("cuda", torch.float16)
    assert cuda.attention is fast.sdpa and not (cuda.slice_convs or cuda.linear_as_conv or cuda.vae_channels_last)
    assert cuda.half_group_norm and not accel.policy("cuda", torch.float32).half_group_norm
    assert not (cuda.keep_freed_memory or accel.policy("mps").keep_freed_memory)
    assert not p.half_group_norm  # (the CPU's)
    assert accel.policy("mps").attention is fast.sdpa_chunked


def test_a_model_accelerated_again_takes_the_paths_of_its_new_dtype(monkeypatch, tiny_sd, cases):
    """A float32 model's bf16 copy, accelerated again (as tools and tests make them), gets bf16's paths: the
    classes chosen for float32 are undone first, and the folded upsampling's kernels are made anew."""
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(accel, "measured_paths",
                        lambda dtype: ALL_PATHS if dtype == torch.float32 else dict.fromkeys(ALL_PATHS, False))
    unet = accel.accelerate(copy.deepcopy(tiny_sd.unet), "cpu")
    kinds = {type(m) for m in unet.modules()}
    assert {CpuConv2d, ConvLinear, FoldedUpsample} <= kinds
    assert all(m.slice_weights and not m.check_bf16 for m in unet.modules() if type(m) is CpuConv2d)
    with torch.no_grad():
        unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])  # (the folded kernels are kept after a call)
    accel.accelerate(unet.bfloat16(), "cpu")
    kinds = {type(m) for m in unet.modules()}
    assert ConvLinear not in kinds and torch.nn.Linear in kinds and FoldedUpsample in kinds
    convs = [m for m in unet.modules() if type(m) is CpuConv2d]
    assert convs and all(m.check_bf16 and not m.slice_weights for m in convs)
    assert all(m._kernels is None for m in unet.modules() if type(m) is FoldedUpsample)
    assert all(m.attention is fast.sdpa_float32 for m in unet.modules() if "attention" in m.__dict__)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_group_norm_matches_the_float32_copy(dtype):
    """GroupNorm32 without its float32 copy (CUDA's half kernels accumulate in float32): within one
    rounding of the half dtype of the float32 path, run here on the CPU's kernel."""
    torch.manual_seed(0)
    norm = GroupNorm32(64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(2, 64, 9, 7) * 30 + 5).to(dtype)  # large, offset activations
    half = copy.deepcopy(norm).to(dtype)
    plain = half(x)
    half.__class__ = accel.HalfGroupNorm32
    with torch.no_grad():
        torch.testing.assert_close(half(x).float(), plain.float(), atol=0.05, rtol=0.02)


def test_micro_benchmark_takes_a_path_only_where_it_wins(monkeypatch, tmp_path):
    """A path is taken where the fast op's best time is at most MARGIN of the plain op's; the verdict is kept in
    the per-machine cache and read back instead of measuring again, and a damaged cache is measured anew."""
    monkeypatch.setattr(machine, "cache_file", lambda: tmp_path / "accel-paths.json")
    timings = {"linear_as_conv": (1.0, 0.9), "slice_convs": (1.0, 0.99), "slice_feedforward": (1.0, 1.2),
               "half_attention": (1.0, 0.5)}
    calls = []
    monkeypatch.setattr(machine, "trials", lambda dtype: {k: (lambda: None, lambda: None) for k in timings})

    def fake_times(plain, faster):
        name = list(timings)[len(calls) % len(timings)]
        calls.append(name)
        return timings[name]
    monkeypatch.setattr(machine, "_best_times", fake_times)
    machine._verdict.cache_clear()
    try:
        won = machine.measured_paths(torch.bfloat16)
        assert won == {"linear_as_conv": True, "slice_convs": False, "slice_feedforward": False, "half_attention": True}
        assert len(calls) == 4 and machine.cache_file().is_file()
        machine._verdict.cache_clear()
        assert machine.measured_paths(torch.bfloat16) == won and len(calls) == 4  # read from the cache
        machine.cache_file().write_text("{not json")
        machine._verdict.cache_clear()
        assert machine.measured_paths(torch.bfloat16) == won and len(calls) == 8
    finally:
        machine._verdict.cache_clear()


def test_micro_benchmark_times_the_real_ops():
    """The trials run the plain and the fast op on the same inputs, and they agree."""
    with torch.no_grad():
        for name, (plain, faster) in machine.trials(torch.float32).items():
            torch.testing.assert_close(faster(), plain(), atol=1e-4, rtol=1e-4, msg=name)


def test_the_attention_trial_times_the_kernel_the_unet_runs(monkeypatch, tiny_sd, cases):
    """The half-attention trial's inputs go to the same fused kernel as the UNet's own attention calls (3-D
    inputs would be sent to torch's math kernel, and the verdict would be about the wrong kernel)."""
    chosen = []

    def record(q, k, v, **kwargs):
        chosen.append(torch._fused_sdp_choice(q, k, v, **kwargs))
        return q * 0 + (k.sum() + v.sum()) * 0  # (the trial's training calls take gradients of all three)
    monkeypatch.setattr(F, "scaled_dot_product_attention", record)
    machine.trials(torch.bfloat16)["half_attention"][1]()
    trial = set(chosen)
    chosen.clear()
    unet = accel.accelerate(copy.deepcopy(tiny_sd.unet).bfloat16())
    with torch.no_grad():
        unet(cases["unet_x"].bfloat16(), cases["unet_t"], cases["unet_context"].bfloat16())
    assert chosen and trial == set(chosen) == {torch._fused_sdp_choice(*(torch.zeros(2, 5, 64, 64).bfloat16(),) * 3)}
    assert trial != {torch._fused_sdp_choice(*(torch.zeros(10, 64, 64).bfloat16(),) * 3)}


def test_bf16_convs_of_a_wrong_kernel_run_in_float32(monkeypatch, tmp_path):
    """Where torch's bf16 conv kernel is wrong for a shape (as on an AMX Xeon with torch 2.13), the checked
    conv finds it and computes that shape in float32; other shapes keep the bf16 kernel."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    conv_fn = F.conv2d

    def broken(x, w, b=None, stride=1, padding=0):  # a kernel that is wrong for bf16 inputs of width 2
        out = conv_fn(x, w, b, stride, padding)
        return out.fill_(float("nan")) if x.dtype == torch.bfloat16 and x.shape[-1] == 2 else out
    monkeypatch.setattr(F, "conv2d", broken)
    fast.bf16_conv_ok.cache_clear()
    torch.manual_seed(0)
    conv = swapped(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), CpuConv2d, check_bf16=True).bfloat16()
    try:
        with torch.no_grad():
            for width in (2, 6):
                x = torch.randn(1, 8, 16, width).bfloat16()
                expected = conv_fn(x.float(), conv.weight.float(), conv.bias.float(), 2, 1)
                torch.testing.assert_close(conv(x).float(), expected, atol=0.03, rtol=0.03)
        assert fast.bf16_conv_ok.cache_info().currsize == 2
        assert not fast.bf16_conv_ok((1, 8, 16, 2), False, (8, 8, 3, 3), (2, 2), (1, 1))
        assert fast.bf16_conv_ok((1, 8, 16, 6), False, (8, 8, 3, 3), (2, 2), (1, 1))
    finally:
        fast.bf16_conv_ok.cache_clear()


def test_the_bf16_conv_verdicts_are_remembered_per_machine(monkeypatch, tmp_path):
    """A shape is checked once per machine: a later process (here: the in-memory cache cleared) reads the
    verdict from the file; another machine (another torch thread count) checks again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    checks = []
    checked = fast.bf16_conv_checked
    monkeypatch.setattr(fast, "bf16_conv_checked", lambda *shape: checks.append(shape) or checked(*shape))
    shape = ((1, 8, 16, 6), False, (8, 8, 3, 3), (1, 1), (1, 1))
    threads = torch.get_num_threads()
    fast.bf16_conv_ok.cache_clear()
    try:
        assert fast.bf16_conv_ok(*shape) and len(checks) == 1
        fast.bf16_conv_ok.cache_clear()
        assert fast.bf16_conv_ok(*shape) and len(checks) == 1
        assert fast.bf16_conv_file().is_file()
        fast.bf16_conv_ok.cache_clear()
        torch.set_num_threads(threads + 1)
        assert fast.bf16_conv_ok(*shape) and len(checks) == 2
    finally:
        torch.set_num_threads(threads)
        fast.bf16_conv_ok.cache_clear()


@pytest.mark.parametrize("kernel", [fast.sdpa, fast.sdpa_float32, fast.sdpa_chunked])
def test_fused_attention_matches_the_reference_formula(kernel):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 16) for _ in range(3))
    for causal in (False, True):
        torch.testing.assert_close(kernel(q, k, v, causal), attn.attention(q, k, v, causal), atol=1e-5, rtol=1e-5)
    masked = torch.triu(torch.full((10, 10), float("-inf")), 1)  # the causal rule as an additive mask
    expected = ((q @ k.transpose(-1, -2)) / 4 + masked).softmax(-1) @ v
    torch.testing.assert_close(attn.attention(q, k, v, True), expected, atol=1e-5, rtol=1e-5)
    bf = [t.bfloat16() for t in (q, k, v)]
    torch.testing.assert_close(kernel(*bf).float(), attn.attention(*bf).float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_folded_upsample_matches_interpolate_then_conv(layout):
    torch.manual_seed(0)
    up = folded(16).requires_grad_(False)
    x = torch.randn(3, 16, 5, 7).contiguous(memory_format=layout)  # odd, non-square sides
    with torch.no_grad():
        out = up(x)
        torch.testing.assert_close(out, plain_upsample(up, x), atol=1e-5, rtol=1e-5)
        assert out.is_contiguous(memory_format=layout)
        up.conv.weight.mul_(-0.5)  # the cached phase kernels follow in-place changes of the weight
        torch.testing.assert_close(up(x), plain_upsample(up, x), atol=1e-5, rtol=1e-5)
        half = copy.deepcopy(up).to(torch.bfloat16)  # ... and dtype changes
        torch.testing.assert_close(half(x.bfloat16()).float(), plain_upsample(up, x), atol=0.05, rtol=0.02)


def test_folded_upsample_gradients_match():
    """Textual inversion backpropagates through the UNet's upsampling (to the input; weights frozen),
    and fine-tuning would to the weights."""
    torch.manual_seed(0)
    up = folded(8)
    x = torch.randn(2, 8, 4, 6, requires_grad=True)
    grads = []
    for fn in (up, lambda v: plain_upsample(up, v)):
        up.zero_grad()
        x.grad = None
        (fn(x) ** 2).sum().backward()
        grads.append((x.grad.clone(), up.conv.weight.grad.clone()))
    for folded_grad, plain_grad in zip(*grads):
        torch.testing.assert_close(folded_grad, plain_grad, atol=1e-4, rtol=1e-5)


def test_row_sliced_feedforward_matches_whole():
    torch.manual_seed(0)
    ff = swapped(FeedForward(32).requires_grad_(False), RowSlicedFeedForward)
    x = torch.randn(3, 50, 32)
    with torch.no_grad():
        whole = ff.net(x)
        ff.ROWS = 7  # 150 rows in 22 slices, the last one short
        torch.testing.assert_close(ff(x), whole, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride", [1, 2])
def test_sliced_conv_matches_whole(monkeypatch, layout, stride):
    """A weight over 2 x SLICE_BYTES against an input under it goes through in slices of output channels."""
    torch.manual_seed(0)
    conv = Conv2d(16, 30, 3, stride=stride, padding=1)  # 17,280 bytes of weight: slices of 8, 8, 8 and 6
    x = torch.randn(2, 16, 5, 7).contiguous(memory_format=layout)  # 4,480 bytes
    monkeypatch.setattr(fast, "SLICE_BYTES", 5000)
    calls, whole_conv = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a: calls.append(a[1].shape[0]) or whole_conv(*a))
    with torch.no_grad():
        out = conv(x)
    assert calls == [8, 8, 8, 6]
    monkeypatch.undo()
    torch.testing.assert_close(out, F.conv2d(x, conv.weight, conv.bias, stride, 1), atol=1e-6, rtol=1e-6)
    assert out.is_contiguous(memory_format=layout)


def gradients_for_each(monkeypatch, setting: str, values, module, x):
    """Gradients of sum(module(x)^2) for x and each parameter, once per value of `accel.modules.<setting>`."""
    runs = []
    for value in values:
        monkeypatch.setattr(fast, setting, value)
        module.zero_grad()
        x.grad = None
        (module(x) ** 2).sum().backward()
        runs.append([x.grad.clone()] + [p.grad.clone() for p in module.parameters()])
    return runs


def test_sliced_conv_gradients_match(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    conv = Conv2d(16, 30, 3, padding=1)
    sliced, whole = gradients_for_each(monkeypatch, "SLICE_BYTES", (5000, fast.SLICE_BYTES), conv, x)
    for a, b in zip(sliced, whole):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_only_plain_convolutions_are_sliced(monkeypatch):
    monkeypatch.setattr(accel, "measured_paths", lambda dtype: ALL_PATHS)
    model = torch.nn.Sequential(*(torch.nn.Conv2d(4, 4, 3, padding=1, **o)
                                  for o in ({}, {"groups": 2}, {"dilation": 2}, {"padding_mode": "reflect"})))
    model.__class__ = type("Holder", (torch.nn.Sequential,), {})
    accel.accelerate(model, "cpu")
    kinds = [type(m) for m in model]
    assert kinds[0] is CpuConv2d and model[0].slice_weights and not model[0].check_bf16
    assert kinds[1:] == [torch.nn.Conv2d] * 3


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_linear_as_conv_matches_f_linear(monkeypatch, bias, transposed):
    """At least CONV_ROWS rows on the CPU: a 1x1 convolution over the rows, same result as F.linear."""
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=bias).requires_grad_(False)
    x = torch.randn(2, 24, 35).transpose(1, 2) if transposed else torch.randn(2, 35, 24)  # 70 rows
    monkeypatch.setattr(fast, "CONV_ROWS", 70)
    calls, conv = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a: calls.append(a[0].shape) or conv(*a))
    out = layer(x)
    assert calls == [(1, 24, 1, 70)]
    monkeypatch.undo()
    assert out.shape == (2, 35, 40) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_linear_below_conv_rows_is_f_linear(monkeypatch):
    layer = Linear(8, 8)
    monkeypatch.setattr(fast, "CONV_ROWS", 71)
    monkeypatch.setattr(F, "conv2d", lambda *a: pytest.fail("short inputs keep F.linear"))
    layer(torch.randn(70, 8))


def test_linear_as_conv_gradients_match(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(3, 30, 24, requires_grad=True)
    as_conv, plain = gradients_for_each(monkeypatch, "CONV_ROWS", (1, fast.CONV_ROWS), Linear(24, 40), x)
    for a, b in zip(as_conv, plain):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_unet_with_linear_as_conv_matches_reference(monkeypatch, tiny_sd, cases):
    """The tiny UNet's inputs are short; with CONV_ROWS = 1 every projection takes the convolution path."""
    unet = copy.deepcopy(tiny_sd.unet)
    for block in unet.modules():
        if isinstance(block, SpatialTransformer):
            for m in block.modules():
                if type(m) is torch.nn.Linear:
                    m.__class__ = ConvLinear
    with torch.no_grad():
        plain = tiny_sd.unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])
        monkeypatch.setattr(fast, "CONV_ROWS", 1)
        as_conv = unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])
    torch.testing.assert_close(as_conv, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(as_conv, cases["unet_out"], atol=1e-4, rtol=1e-4)


def test_chunked_attention_takes_the_queries_in_slices_of_bounded_scores(monkeypatch):
    """The attention of non-CUDA GPUs (MPS): the same result, no slice's scores above SCORE_BYTES."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 100, 16), torch.randn(2, 3, 40, 16), torch.randn(2, 3, 40, 16)
    monkeypatch.setattr(fast, "SCORE_BYTES", 2 * 3 * 40 * 4 * 30)  # 30 queries' scores
    slices = []
    real = fast.sdpa_float32
    monkeypatch.setattr(fast, "sdpa_float32", lambda q, *a: slices.append(q.shape[-2]) or real(q, *a))
    torch.testing.assert_close(fast.sdpa_chunked(q, k, v), attn.attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert slices == [30, 30, 30, 10]


HEAP_PROBE = """
import ctypes, resource, sys
from ldm.accel import heap
kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

def faults():  # the minor page faults of a call's buffers: 16 of 8 MiB, filled, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [libc.malloc(8 << 20) for _ in range(16)]
    for p in held:
        ctypes.memset(p, 1, 8 << 20)
    for p in held:
        libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, *[faults() for _ in range(4)])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept_for_the_next_call(monkeypatch):
    """glibc as it comes hands the freed top of its heap back and faults it in again on the next call; after
    `heap.keep_freed_memory()` the next call reuses it. A user's own MALLOC_ setting is left in force."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def probe(setting, **extra):
        done = subprocess.run([sys.executable, "-c", HEAP_PROBE, setting], capture_output=True, text=True,
                              env={**env, **extra}, cwd=Path(__file__).resolve().parent.parent, check=True)
        kept, *faults = done.stdout.split()
        return kept, [int(n) for n in faults]
    kept, faults = probe("default")
    assert kept == "None" and min(faults) > 30_000  # each call's 128 MiB faulted in again, 4 kiB a page
    kept, faults = probe("keep")
    assert kept == "True" and faults[0] > 30_000 and max(faults[1:]) < 100  # the first call's pages reused
    assert probe("keep", MALLOC_ARENA_MAX="2")[0] == "False"
    calls = []
    monkeypatch.setattr(accel, "measured_paths", lambda dtype: ALL_PATHS)
    monkeypatch.setattr(accel.heap, "keep_freed_memory", lambda: calls.append("cpu"))
    accel.accelerate(torch.nn.Conv2d(2, 2, 1), "cpu")
    accel.accelerate(torch.nn.Conv2d(2, 2, 1), "meta")
    assert calls == ["cpu"]  # by the acceleration layer, for CPU models
