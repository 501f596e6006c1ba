#!/usr/bin/env python3
"""Benchmark the model zoo on this machine (not a test): UNet step time per resolution, batch, dtype and
compile mode, VAE decode, peak RSS, FLOPs per call and the achieved fraction of the best matrix throughput
measurable here. Optionally times peers with the same SD 2.1 configuration and the
same weights side by side, interleaved, in the same process: diffusers' UNet2DConditionModel (compiled as
well in the compiled rows) and OpenVINO's conversion of that same diffusers UNet (`--peer openvino`, which
needs diffusers too). Neither is a dependency of the package: install them in a throwaway environment.

    python tools/bench.py                                  # CPU defaults: 512 px, batch 2, fp32 and bf16
    python tools/bench.py --peer diffusers openvino --json bench.json
    python tools/bench.py --device cuda --dtypes bfloat16 float16 --sizes 512 768 --batch 16 --compile both

A whole run of the method, split into its phases: tools/bench_run.py.

Weights are random (SD 2.1 shapes, the fixture rule) unless --ckpt gives a checkpoint: speed does not
depend on the values.
"""
import argparse
import copy
import dataclasses
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ldm import accel  # noqa: E402
from ldm.accel import accelerate, compile_model, cpu_model  # noqa: E402
from ldm.load.checkpoint import parse_dtype  # noqa: E402
from ldm.nets.config import ModelConfig  # noqa: E402
from ldm.nets.unet import UNetModel  # noqa: E402
from ldm.nets.vae import AutoencoderKL  # noqa: E402
from make_fixture_weights import fixture_tensor  # noqa: E402


SPEED_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16",
               "amx_int8", "amx_fp16"}


def paths(device, dtype) -> str:
    """The acceleration layer's choice for `device` at `dtype`, in words."""
    p = accel.policy(device, dtype)
    taken = [f.name for f in dataclasses.fields(p) if getattr(p, f.name) is True]
    return f"{str(dtype).removeprefix('torch.')}: attention {p.attention.__name__}, " + ", ".join(taken)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def once(fn, device) -> float:
    """Wall seconds of one call."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def timed(fn, device, repeats: int) -> list:
    """Wall seconds of `repeats` calls after one warm-up call."""
    fn()
    return [once(fn, device) for _ in range(repeats)]


def interleaved(fns: list, device, repeats: int, first: list = None) -> list:
    """Per function, the wall seconds of `repeats` calls, alternating between the functions (after
    one warm-up call each, whose seconds go to `first` if given) so that all of them see the same
    machine state."""
    for fn in fns:
        seconds = once(fn, device)
        if first is not None:
            first.append(seconds)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            out.append(once(fn, device))
    return times


def random_module(module, prefix: str, seed: int = 1234):
    """Materialise a meta-device module with the fixture rule's seeded weights."""
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            tensor.copy_(fixture_tensor(prefix + key, tuple(tensor.shape), seed))
    return module.requires_grad_(False).eval()


def build_unet(args):
    if args.ckpt:
        import ldm
        return ldm.load_checkpoint(args.ckpt, prediction="eps").unet
    with torch.device("meta"):
        unet = UNetModel(ModelConfig().unet)
    return random_module(unet, "model.diffusion_model.")


def unet_inputs(batch: int, size: int, dtype, device, channels: int = 4, context_dim: int = 1024):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size // 8, size // 8, generator=g)
    context = torch.randn(batch, 77, context_dim, generator=g)
    return x.to(device, dtype), torch.full((batch,), 500, device=device), context.to(device, dtype)


def flops_of(model, fn) -> int:
    """FLOPs of one call, counted with the model's attention on the reference formula (the flop counter
    does not see inside fused kernels), after a call that runs the one-time checks of each shape (the bf16
    convolution check computes its shapes twice more, once)."""
    fn()
    kernels = {m: m.__dict__.pop("attention") for m in model.modules() if "attention" in m.__dict__}
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for m, kernel in kernels.items():
            m.attention = kernel
    return counter.get_total_flops()


def matmul_peak(dtype, device) -> float:
    """The best FLOP/s measured here: square matmuls and the UNet's 3x3 convolutions at each level."""
    best = 0.0
    for n in (2048, 4096):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        best = max(best, 2 * n ** 3 / min(timed(lambda: a @ b, device, 2)))
    for channels, side in ((320, 64), (640, 32), (1280, 16)):
        x = torch.randn(2, channels, side, side, device=device, dtype=dtype)
        w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
        seconds = min(timed(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, 2))
        best = max(best, 2 * 2 * channels * channels * 9 * side * side / seconds)
    return best


def diffusers_peer(unet: UNetModel):
    """diffusers' UNet2DConditionModel with SD 2.1's configuration and our weights, or None."""
    try:
        from diffusers import UNet2DConditionModel
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    except ImportError:
        return None, "diffusers is not installed"
    peer = UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=1024,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    state = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    peer.load_state_dict(convert_ldm_unet_checkpoint(state, peer.config))
    return peer.requires_grad_(False).eval(), "same weights (converted with diffusers' own converter)"


class PeerUNet(torch.nn.Module):
    """The diffusers UNet called like ours, returning a tensor (what OpenVINO's converter traces)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, context):
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


def openvino_model(peer: PeerUNet, x, t, ctx):
    """OpenVINO's conversion of the diffusers UNet, traced at the shapes of (x, t, ctx)."""
    import openvino
    with torch.no_grad():
        return openvino.convert_model(peer.float(), example_input=(x.float(), t, ctx.float()))


def openvino_compile(model, dtype, **config):
    """An OpenVINO model compiled for the CPU at `dtype` (its inference-precision hint) with torch's thread
    count, a latency hint and `config`."""
    import openvino
    precision = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[dtype]
    return openvino.compile_model(model, "CPU", config={
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY", **config})


def openvino_compiled(model, x, t, ctx, dtype, **config):
    """`model` (from `openvino_model`) reshaped to (x, t, ctx) and compiled (`openvino_compile`); with its
    inputs."""
    import openvino
    inputs = [x.float().numpy(), t.numpy(), ctx.float().numpy()]
    model.reshape({i: openvino.PartialShape(list(a.shape)) for i, a in enumerate(inputs)})
    return openvino_compile(model, dtype, **config), inputs


def openvino_call(model, x, t, ctx, dtype):
    """A callable of no arguments: one call of `model` compiled at (x, t, ctx) and `dtype`."""
    compiled, inputs = openvino_compiled(model, x, t, ctx, dtype)
    return lambda: compiled(inputs)[0]


# What each kind of operation is called by the torch profiler (our UNet) and by OpenVINO's per-layer counters;
# everything else (elementwise, reorders, copies, transposes) is "other".
OP_KINDS = {
    "convolution": ({"aten::mkldnn_convolution", "aten::convolution", "aten::_convolution",
                     "mkldnn::_convolution_pointwise"}, {"Convolution"}),
    "matmul": ({"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise"},
               {"FullyConnected", "MatMul"}),
    "attention": ({"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                   "aten::_softmax"}, {"ScaledDotProductAttention"}),
    "normalisation": ({"aten::native_group_norm", "aten::native_layer_norm"}, {"MVN", "GroupNormalization"}),
}


def kind_of(name: str, ours: bool) -> str:
    return next((kind for kind, names in OP_KINDS.items() if name in names[0 if ours else 1]), "other")


def seconds_by_kind(pairs) -> dict:
    """{kind: seconds} of (kind, seconds) pairs, every kind present, and their total."""
    out = dict.fromkeys([*OP_KINDS, "other"], 0.0)
    for kind, seconds in pairs:
        out[kind] += seconds
    return {**out, "total": sum(out.values())}


def our_ops(fn) -> dict:
    """Seconds of one call of `fn` by kind of operation (torch profiler, each op's own time)."""
    with torch.profiler.profile() as prof:
        fn()
    return seconds_by_kind((kind_of(e.key, True), e.self_cpu_time_total / 1e6) for e in prof.key_averages())


def openvino_ops(model, x, t, ctx, dtype) -> dict:
    """Seconds of one OpenVINO call by kind of layer (its per-layer counters; a fused attention is a
    `Subgraph` named after the ScaledDotProductAttention it holds)."""
    compiled, inputs = openvino_compiled(model, x, t, ctx, dtype, PERF_COUNT="YES")
    request = compiled.create_infer_request()
    for _ in range(2):  # the counters are the last call's
        request.infer(inputs)
    return seconds_by_kind(
        ("attention" if "ScaledDotProductAttention" in p.node_name and p.node_type == "Subgraph" else kind_of(p.node_type, False),
         p.real_time.total_seconds()) for p in request.profiling_info)


def bench_unet(args, device, results):
    unet = build_unet(args)
    peer = None
    if {"diffusers", "openvino"} & set(args.peer):
        peer, peer_note = diffusers_peer(unet)
        print(f"peer: {peer_note}")
        peer = None if peer is None else PeerUNet(peer)
    for dtype_name in args.dtypes:
        dtype = parse_dtype(dtype_name)
        print(f"paths at {paths(device, dtype)}")
        peak = matmul_peak(dtype, device)
        model = accelerate(unet.to(device, dtype), device)
        for size in args.sizes:
            x, t, ctx = unet_inputs(args.batch, size, dtype, device)
            flops = flops_of(model, lambda: model(x, t, ctx))
            vino = None
            if peer is not None and "openvino" in args.peer:
                t0 = time.perf_counter()
                converted = openvino_model(peer, x, t, ctx)
                vino = openvino_call(converted, x, t, ctx, dtype)
                print(f"openvino: converted and compiled in {time.perf_counter() - t0:.0f} s")
            other = peer.to(device, dtype) if peer is not None and "diffusers" in args.peer else None
            for compiled in ([False, True] if args.compile == "both" else [args.compile == "on"]):
                fn = compile_model(copy.deepcopy(model), device) if compiled else model
                rival = torch.compile(other) if compiled and other is not None else other  # like for like
                calls = {"ours": lambda: fn(x, t, ctx)}
                if other is not None:
                    calls["diffusers"] = lambda: rival(x, t, ctx)
                if vino is not None:
                    calls["openvino"] = vino
                first = []  # the first calls: compiling, in the compiled rows
                with torch.no_grad():
                    times = dict(zip(calls, interleaved(list(calls.values()), device, args.repeats, first)))
                ours = times["ours"]
                fn = rival = calls = None  # the compiled copies go with them
                if compiled:
                    torch._dynamo.reset()  # drop the compiled graphs and their frozen weights
                row = {"part": "unet", "size": size, "batch": args.batch, "dtype": dtype_name, "compiled": compiled,
                       "median_s": statistics.median(ours), "tflop_per_call": flops / 1e12,
                       "gflops": flops / statistics.median(ours) / 1e9, "peak_gflops": peak / 1e9,
                       "fraction_of_peak": flops / statistics.median(ours) / peak}
                if compiled:
                    row["compile_s"] = first[0]
                for name, ratio in (("diffusers", "ratio"), ("openvino", "ratio_openvino")):
                    if name in times:
                        row[f"{name}_median_s"] = statistics.median(times[name])
                        row[ratio] = statistics.median(ours) / row[f"{name}_median_s"]
                if args.by_op and not compiled:
                    with torch.no_grad():
                        row["by_op"] = {"ours": our_ops(lambda: model(x, t, ctx))}
                        if vino is not None:
                            row["by_op"]["openvino"] = openvino_ops(converted, x, t, ctx, dtype)
                results.append(row)
                print(row)


def diffusers_vae_peer(vae: AutoencoderKL):
    """diffusers' AutoencoderKL with SD's configuration and our weights, or None."""
    try:
        from diffusers import AutoencoderKL as PeerVAE
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    except ImportError:
        return None
    peer = PeerVAE(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                   layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4)
    state = {"first_stage_model." + k: v for k, v in vae.state_dict().items()}
    peer.load_state_dict(convert_ldm_vae_checkpoint(state, peer.config))
    return peer.requires_grad_(False).eval()


def bench_vae(args, device, results):
    """Decode at 512 px in both memory layouts, ours and diffusers' interleaved. Each row's `ratio` compares
    the same layout; `ratio_vs_default` compares ours in that layout with diffusers as it ships (NCHW)."""
    with torch.device("meta"):
        vae = AutoencoderKL(ModelConfig().vae)
    vae = random_module(vae, "first_stage_model.")
    peer = diffusers_vae_peer(vae) if "diffusers" in args.peer else None
    layouts = (torch.contiguous_format, torch.channels_last)
    for dtype_name in args.dtypes:
        dtype = parse_dtype(dtype_name)
        z = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
        models = [(accelerate(copy.deepcopy(vae).to(device, dtype), device).to(memory_format=fmt), z.contiguous(memory_format=fmt))
                  for fmt in layouts]
        if peer is not None:
            models += [(copy.deepcopy(peer).to(device, dtype, memory_format=fmt), z.contiguous(memory_format=fmt))
                       for fmt in layouts]
        with torch.no_grad():
            times = interleaved([lambda m=m, zz=zz: m.decode(zz) for m, zz in models], device, args.repeats)
        medians = [statistics.median(t) for t in times]
        for i, fmt in enumerate(layouts):
            row = {"part": "vae_decode_512", "dtype": dtype_name, "channels_last": fmt == torch.channels_last,
                   "median_s": medians[i]}
            if peer is not None:
                row.update(diffusers_median_s=medians[2 + i], ratio=medians[i] / medians[2 + i],
                           ratio_vs_default=medians[i] / medians[2])
            results.append(row)
            print(row)


COLUMNS = [  # (header, row key, width, format); a row without the key leaves the cell blank
    ("size", "size", 6, "d"), ("batch", "batch", 6, "d"), ("frames", "frames", 7, "d"), ("s/call", "median_s", 9, ".2f"),
    ("TFLOP", "tflop_per_call", 7, ".2f"), ("GFLOP/s", "gflops", 9, ".0f"), ("of peak", "fraction_of_peak", 8, ".0%"),
    ("diffusers", "diffusers_median_s", 11, ".2f"), ("ratio", "ratio", 7, ".2f"), ("vs NCHW", "ratio_vs_default", 8, ".2f"),
    ("openvino", "openvino_median_s", 10, ".2f"), ("ratio", "ratio_openvino", 7, ".2f"),
    ("first call", "compile_s", 11, ".0f")]


def print_table(results):
    print(f"\n{'part':<16}{'dtype':>10}{'mode':>10}" + "".join(f"{h:>{w}}" for h, _, w, _ in COLUMNS))
    for r in results:
        mode = "compiled" if r.get("compiled") else ("ch-last" if r.get("channels_last") else "eager")
        cells = "".join(f"{format(r[k], f) if k in r else '':>{w}}" for _, k, w, f in COLUMNS)
        print(f"{r['part']:<16}{r['dtype']:>10}{mode:>10}{cells}")
    for r in results:
        if "by_op" in r:
            print(f"\nseconds of one UNet call by kind of operation, {r['dtype']}, {r['size']} px, batch {r['batch']} "
                  "(ours: the torch profiler, each op's own time; OpenVINO: its per-layer counters)")
            print(f"{'':<16}" + "".join(f"{k:>15}" for k in r["by_op"]["ours"]))
            for who, seconds in r["by_op"].items():
                print(f"{who:<16}" + "".join(f"{v:>15.2f}" for v in seconds.values()))


def machine_line() -> str:
    """The machine in one line, as the benchmarks print it above their figures."""
    flags = " ".join(sorted(accel.cpu_flags() & SPEED_FLAGS)) or "none of note"
    return f"cpu: {cpu_model()}, flags: {flags}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def machine_meta() -> dict:
    """The machine a benchmark ran on, as its JSON records it."""
    return {"machine": platform.processor() or platform.machine(), "cpu": cpu_model(),
            "cpu_flags": sorted(accel.cpu_flags() & SPEED_FLAGS), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--sizes", nargs="+", type=int, default=[512])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--parts", nargs="+", choices=["unet", "vae"], default=["unet", "vae"])
    p.add_argument("--peer", nargs="+", choices=["diffusers", "openvino"], default=[],
                   help="time these beside ours (openvino: the UNet only, converted from the diffusers UNet)")
    p.add_argument("--by-op", action="store_true",
                   help="also split one eager UNet call by kind of operation (and OpenVINO's, with --peer openvino)")
    p.add_argument("--ckpt", default=None, help="time a real checkpoint instead of random weights")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    print(machine_line())
    results = []
    if "unet" in a.parts:
        bench_unet(a, device, results)
    if "vae" in a.parts:
        bench_vae(a, device, results)
    print_table(results)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    meta = {**machine_meta(), "device": str(device), "peak_rss_gib": peak_rss}
    print(f"\n{meta}")
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
