#!/usr/bin/env python3
"""Time the attention kernels PyTorch offers for the UNet's self-attention on this machine (not a test):
torch's fused kernel at the dtype, the same on float32 copies (the upcast of `ldm.accel.modules.sdpa_float32`),
`flex_attention` under torch.compile (inductor's CPU template), scores / softmax / values in chunks of
queries and the formula in the inputs' dtype fused by oneDNN Graph (TorchScript's fuser), each against the
reference formula in float32 (`ldm.nets.attention.attention`), interleaved, medians;
with `--peer openvino` (in an environment that has it), OpenVINO's fused SDPA at the same precision beside them.
With `--unet`, each kernel inside whole UNet calls instead: the seconds of a call and how far its output is
from the float32 UNet's, which tells whether a kernel's own error matters beside the rest of the half model's.

    python tools/bench_attention.py                           # level 1 and 2 of a 512 px UNet, bf16 and float32
    python tools/bench_attention.py --shapes 2,5,4096,64 --dtypes bfloat16 --no-flex
    python tools/bench_attention.py --no-flex --peer openvino  # torch's kernels against OpenVINO's
    python tools/bench_attention.py --unet --ckpt sd21.safetensors --side 32 --batch 16 --dtypes bfloat16 --no-flex
"""
import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import build_unet, interleaved, machine_line, openvino_compile, unet_inputs  # noqa: E402
from ldm.accel import accelerate, modules as fast, set_attention  # noqa: E402
from ldm.load.checkpoint import parse_dtype  # noqa: E402
from ldm.nets.attention import attention  # noqa: E402

CHUNK = 1024  # queries per chunk of the explicit kernel


def chunked(q, k, v):
    """softmax(q k^T / sqrt(d)) v, the scores and softmax of CHUNK queries at a time in float32."""
    kt = k.float().transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.cat([((part.float() @ kt).softmax(-1).to(v.dtype) @ v) for part in q.split(CHUNK, dim=-2)], -2)


def plain(q, k, v, scale: float):
    """softmax(q k^T * scale) v in the inputs' dtype: for bfloat16 inputs the scores are bfloat16."""
    return (q @ k.transpose(-1, -2) * scale).softmax(-1) @ v


def onednn_graph():
    """`plain` traced with TorchScript and handed to oneDNN Graph (`torch.jit.enable_onednn_fusion`, a
    process-wide switch, on during its calls only), which compiles the whole formula into one fused SDPA
    partition after its profiling runs; one trace per shape and dtype."""
    import warnings
    traced = {}

    def run(q, k, v):
        key, was_on = (q.shape, k.shape, q.dtype), torch._C._jit_llga_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            if key not in traced:
                scale = q.shape[-1] ** -0.5
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TorchScript's deprecation
                    traced[key] = torch.jit.trace(lambda q, k, v: plain(q, k, v, scale), (q, k, v))
                for _ in range(3):  # the profiling executor fuses on the third call
                    traced[key](q, k, v)
            return traced[key](q, k, v)
        finally:
            torch.jit.enable_onednn_fusion(was_on)
    return run


def kernels(flex: bool) -> dict:
    out = {"fused": fast.sdpa, "fused on float32 copies": fast.sdpa_float32, "chunked": chunked,
           "oneDNN Graph, scores in dtype": onednn_graph()}
    if flex:
        from torch.nn.attention.flex_attention import flex_attention
        out["flex_attention, compiled"] = torch.compile(flex_attention)
    return out


def openvino_sdpa(q, k, v):
    """OpenVINO's scaled_dot_product_attention compiled at the shapes and dtype of q, k, v (`bench.openvino_compile`;
    inputs handed over in float32, as its UNet gets them): a callable that runs it on these inputs (the
    arguments it is given are ignored, so that it times like the other kernels)."""
    import openvino
    from openvino import opset13
    params = [opset13.parameter(list(a.shape), openvino.Type.f32) for a in (q, k, v)]
    model = openvino.Model([opset13.scaled_dot_product_attention(*params, causal=False)], params)
    compiled = openvino_compile(model, q.dtype)
    inputs = [a.float().numpy() for a in (q, k, v)]
    return lambda *_: torch.from_numpy(compiled(inputs)[0])


def measure(shape, dtype, flex: bool, repeats: int, peer: list = ()) -> list:
    """Per kernel: median seconds, GFLOP/s and the largest difference from the float32 reference."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
    reference = attention(q.float(), k.float(), v.float())  # the model files' formula
    flops = 4 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
    found = kernels(flex)
    if "openvino" in peer:
        found["OpenVINO's SDPA"] = openvino_sdpa(q, k, v)
    rows = [{"kernel": name, "error": (fn(q, k, v).float() - reference).abs().max().item()}
            for name, fn in found.items()]  # (the first call of each compiles, where it compiles)
    calls = [lambda fn=fn: fn(q, k, v) for fn in found.values()]
    for row, times in zip(rows, interleaved(calls, torch.device("cpu"), repeats)):
        row["median_s"] = statistics.median(times)
        row["gflops"] = flops / row["median_s"] / 1e9
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["2,5,4096,64", "2,10,1024,64"],
                   help="batch,heads,tokens,head dim (default: levels 1 and 2 of a 512 px UNet at batch 2)")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-flex", action="store_true", help="leave out flex_attention (it compiles)")
    p.add_argument("--peer", nargs="+", choices=["openvino"], default=[],
                   help="time OpenVINO's fused attention beside torch's kernels (needs openvino installed)")
    p.add_argument("--unet", action="store_true", help="time each kernel inside whole UNet calls (random weights "
                   "in the SD 2.1 shapes, or --ckpt) and measure the call's error against the float32 UNet")
    p.add_argument("--ckpt", default=None, help="with --unet: a checkpoint's UNet instead of random weights")
    p.add_argument("--side", type=int, default=64, help="with --unet: latent side (64: 512 px)")
    p.add_argument("--batch", type=int, default=2, help="with --unet: rows of a call")
    a = p.parse_args(argv)
    print(machine_line())
    if a.unet:
        return unet_calls(a)
    results = []
    with torch.no_grad():
        for dtype_name in a.dtypes:
            for shape in a.shapes:
                dims = tuple(int(n) for n in shape.split(","))
                for row in measure(dims, parse_dtype(dtype_name), not a.no_flex, a.repeats, a.peer):
                    results.append({"dtype": dtype_name, "shape": shape, **row})
                    print(f"{dtype_name:>9} {shape:>14} {row['kernel']:>26}: {row['median_s'] * 1e3:8.1f} ms "
                          f"{row['gflops']:6.0f} GFLOP/s  max diff {row['error']:.2g}")
    return results


def unet_calls(a) -> list:
    """Per dtype and kernel: the median seconds of a UNet call (one model, its kernel swapped between calls,
    the kernels in turn) and the relative error (norm of the difference over the norm) of its output against
    the float32 UNet's with torch's fused kernel."""
    unet = build_unet(a)
    context_dim = next(m.in_features for name, m in unet.named_modules() if name.endswith("attn2.to_k"))
    x, t, ctx = unet_inputs(a.batch, a.side * 8, torch.float32, "cpu", unet.input_blocks[0][0].in_channels, context_dim)
    with torch.no_grad():
        reference = set_attention(accelerate(unet.float()), fast.sdpa)(x, t, ctx).double()
        results = []
        for dtype_name in a.dtypes:
            dtype = parse_dtype(dtype_name)
            model, inputs = accelerate(copy.deepcopy(unet).to(dtype)), (x.to(dtype), t, ctx.to(dtype))
            calls = {name: lambda kernel=kernel, model=model: set_attention(model, kernel)(*inputs)
                     for name, kernel in kernels(not a.no_flex).items()}
            rows = [{"dtype": dtype_name, "kernel": name,
                     "error": ((call().double() - reference).norm() / reference.norm()).item()}
                    for name, call in calls.items()]
            for row, times in zip(rows, interleaved(list(calls.values()), torch.device("cpu"), a.repeats)):
                row["median_s"] = statistics.median(times)
                print(f"{dtype_name:>9} UNet {a.batch} x {a.side}x{a.side} {row['kernel']:>30}: "
                      f"{row['median_s']:7.2f} s  relative error {row['error']:.3g}")
            results += rows
            del model, calls
    return results


if __name__ == "__main__":
    main()
