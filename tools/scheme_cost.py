#!/usr/bin/env python3
"""The arithmetic of one pair under `ours` and under `freemorph`, each at its defaults, and what it would take
of a GPU: FLOPs counted on the meta device (torch's FlopCounterMode over the full-size SD 2.1 networks, nothing
computed), FreeMorph's memory from the memory model (`ldm.accel.memory`), and a time from an assumed sustained
throughput (`--tflops`, default 75: about 45% of the 165 dense float16 TFLOP/s of a 24 GB RTX 4090). A model,
not a measurement: it says how the two schemes compare on a card, not what a card does.

    python tools/scheme_cost.py --size 768 --memory-gb 24
    python tools/scheme_cost.py --size 256 --tflops 1.3      # the preview size, at a CPU's throughput

ours: every round's frames x candidates denoised with guidance (2 rows) through the UNet and the ControlNet,
from the round's level; textual inversion counted as forward + backward (3 x forward) of the four UNet rows of
an iteration (both images, guided). FreeMorph: its own `invert` and `denoise` run on meta tensors, every
attention variant as it runs (the ends' attention computes two attentions, fused ones over twice the keys).
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from interp import freemorph  # noqa: E402
from interp.settings import PRESETS, Settings  # noqa: E402
from ldm.accel import memory  # noqa: E402
from ldm.load.checkpoint import StableDiffusion, parse_dtype  # noqa: E402
from ldm.nets.config import ModelConfig, with_pipeline  # noqa: E402
from ldm.nets.controlnet import ControlNet  # noqa: E402
from ldm.nets.text import TextTransformer  # noqa: E402
from ldm.nets.unet import UNetModel  # noqa: E402
from ldm.nets.vae import AutoencoderKL  # noqa: E402
from ldm.sample.schedule import NoiseSchedule  # noqa: E402
from memory_plan import GB, for_cuda, weight_bytes  # noqa: E402


def flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def networks(size: int, dtype):
    cfg = with_pipeline(ModelConfig(), "v", size)
    with torch.device("meta"):
        nets = {"unet": UNetModel(cfg.unet), "vae": AutoencoderKL(cfg.vae), "text": TextTransformer(cfg.text),
                "controlnet": ControlNet(cfg.unet)}
    nets = {name: for_cuda(m, dtype) for name, m in nets.items()}
    sd = StableDiffusion(nets["unet"], nets["vae"], nets["text"], config=cfg, schedule=NoiseSchedule(cfg.schedule),
                         path="", notes=[])
    return cfg, sd, nets


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def ours(cfg, sd, nets, size: int) -> dict:
    """FLOPs of `interpolate A B` at its defaults (Settings()), pose guidance on."""
    s = Settings()
    plan = s.plan()
    h = size // 8
    x, t, ctx = meta(1, 4, h, h, dtype=sd.dtype), meta(1, dtype=torch.long), meta(1, 77, cfg.unet.context_dim, dtype=sd.dtype)
    hint = meta(1, nets["controlnet"].input_hint_block[-1].out_channels, h, h, dtype=sd.dtype)
    unet_row = flops(lambda: sd.unet(x, t, ctx))

    def guided_row():
        control = nets["controlnet"](x, None, t, ctx, strength=meta(1), hint_features=hint)
        sd.unet(x, t, ctx, control=control)
    row = flops(guided_row)
    row_steps = sum(2 * len(frames) * k * (level.step + 1)
                    for frames, level, k in zip(plan.rounds, plan.levels, plan.candidates))
    inversion = s.inversion_steps * 4 * 3 * unet_row
    return {"frames": s.frames, "steps": s.steps, "unet_rows": row_steps, "inversion_iterations": s.inversion_steps,
            "flops": row_steps * row + inversion, "inversion_flops": inversion}


def freemorph_cost(cfg, sd, size: int, memory_gb: float, context_gb: float, steps: int = None) -> dict:
    """FLOPs and memory of `interpolate A B --scheme freemorph` at its authors' settings (`steps`: another
    schedule length)."""
    s = PRESETS["freemorph"]
    n, steps, h = s["frames"], steps or s["steps"], size // 8
    positions = [i / (n - 1) for i in range(n)]
    ddim, k = freemorph.sampler(sd, steps), int(steps * freemorph.STRENGTH)
    x, cond = meta(n, 4, h, h), meta(n, 77, cfg.unet.context_dim)
    weights = freemorph.beta_quantiles(positions)
    inverted = flops(lambda: freemorph.invert(sd, ddim, x, cond, k))
    denoised = flops(lambda: freemorph.denoise(sd, ddim, x, cond, cond, s["cfg"], weights, k))
    # the largest call: the conditional pass with fused attention to both ends, all frames in one batch
    fused = freemorph.denoising_attention(int(k * freemorph.DENOISE_PHASES[0]), k, weights)
    unet = memory.on_meta(sd.unet)
    with freemorph.attention(sd.unet, fused):
        peak = memory.peak_bytes(lambda: unet(meta(n, 4, h, h, dtype=sd.dtype), meta(n, dtype=torch.long),
                                              meta(n, 77, cfg.unet.context_dim, dtype=sd.dtype)))
    weights_bytes = sum(weight_bytes(m) for m in (sd.unet, sd.vae, sd.text_encoder))
    decode = memory.decode_cost(sd.vae, (4, h, h))
    return {"frames": n, "steps": steps, "unet_calls": freemorph.calls(steps), "rows_per_call": n,
            "flops": inverted + denoised, "inversion_flops": inverted,
            "peak_gb": (context_gb * GB + weights_bytes + max(peak, decode.bytes(n))) / GB, "memory_gb": memory_gb}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=768, help="frame side in pixels")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--memory-gb", type=float, default=24.0, help="the card's memory (FreeMorph's peak is checked)")
    p.add_argument("--context-gb", type=float, default=0.5, help="memory the CUDA context takes")
    p.add_argument("--tflops", type=float, default=75.0, help="sustained TFLOP/s assumed for the time")
    p.add_argument("--freemorph-steps", type=int, default=None, help="FreeMorph's schedule (default: its 50)")
    a = p.parse_args(argv)
    cfg, sd, nets = networks(a.size, parse_dtype(a.dtype))
    rows = {"ours": ours(cfg, sd, nets, a.size),
            "freemorph": freemorph_cost(cfg, sd, a.size, a.memory_gb, a.context_gb, a.freemorph_steps)}
    print(f"{a.size} px, {a.dtype}, {a.tflops:g} TFLOP/s sustained assumed")
    print("| scheme | frames | steps | TFLOP per pair | of it inversion | time at the assumed rate |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['frames']} | {r['steps']} | {r['flops'] / 1e12:,.0f} | {r['inversion_flops'] / 1e12:,.0f} "
              f"| {r['flops'] / (a.tflops * 1e12):,.0f} s |")
    fm = rows["freemorph"]
    print(f"freemorph: {fm['unet_calls']} UNet calls of {fm['rows_per_call']} rows; peak {fm['peak_gb']:.1f} GB of "
          f"{a.memory_gb:g} GB ({'fits' if fm['peak_gb'] <= a.memory_gb else 'does NOT fit'}; "
          "weights, context and its largest call, the fused attention to both ends)")
    return rows


if __name__ == "__main__":
    main()
