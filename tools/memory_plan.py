#!/usr/bin/env python3
"""What a default interpolation needs of a GPU's memory, estimated on any machine from the memory model
(`ldm.accel.memory`): the batch limits `interpolate` would take on a card of a given size and the peak of every
round, without weights or a GPU (the SD 2.1 networks are built on the meta device, with the CUDA fast paths).

    python tools/memory_plan.py --size 768 --memory-gb 24
    python tools/memory_plan.py --size 512 --memory-gb 12

The free memory is the card's less the CUDA context (`--context-gb`) and the weights: the SD 2.1 UNet, VAE
and text encoder and the ControlNet in `--dtype`, the ranking CLIP (ViT-L/14) in float32, as `interpolate`
loads them.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from interp.conditioning import PoseConditioning, TextConditioning  # noqa: E402
from interp.interpolator import Interpolator  # noqa: E402
from interp.settings import Settings  # noqa: E402
from ldm.accel import accelerate, memory  # noqa: E402
from ldm.load.checkpoint import StableDiffusion, parse_dtype  # noqa: E402
from ldm.nets.clip import CLIP  # noqa: E402
from ldm.nets.config import ModelConfig, with_pipeline  # noqa: E402
from ldm.nets.controlnet import ControlNet  # noqa: E402
from ldm.nets.text import TextTransformer  # noqa: E402
from ldm.nets.unet import UNetModel  # noqa: E402
from ldm.nets.vae import AutoencoderKL  # noqa: E402
from ldm.sample.schedule import NoiseSchedule  # noqa: E402

GB = 1e9


def for_cuda(module, dtype):
    return accelerate(module.to(dtype).requires_grad_(False).eval(), "cuda")


def weight_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def plan(size: int, dtype, memory_gb: float, context_gb: float, frames: int, candidates, controlnet: bool) -> dict:
    cfg = with_pipeline(ModelConfig(), "v", size)
    with torch.device("meta"):
        nets = {"unet": UNetModel(cfg.unet), "vae": AutoencoderKL(cfg.vae), "text": TextTransformer(cfg.text)}
        if controlnet:
            nets["controlnet"] = ControlNet(cfg.unet)
        clip = CLIP()
    nets = {name: for_cuda(m, dtype) for name, m in nets.items()}
    weights = {name: weight_bytes(m) for name, m in nets.items()} | {"clip (float32)": weight_bytes(clip)}
    sd = StableDiffusion(nets["unet"], nets["vae"], nets["text"], config=cfg, schedule=NoiseSchedule(cfg.schedule),
                         path="", notes=[])
    context = torch.zeros(1, 77, cfg.unet.context_dim)
    person = [[size / 2, size * (0.2 + 0.04 * j), 1.0] for j in range(18)]
    it = Interpolator(sd, Settings(frames=frames, steps=200, candidates=candidates),
                      TextConditioning(context, context, context), controlnet=nets.get("controlnet"),
                      poses=PoseConditioning([person], [person], size, size) if controlnet else None,
                      scorer=lambda images: None)
    latent = torch.empty(1, 4, size // 8, size // 8, device="meta")
    free = int((memory_gb - context_gb) * GB) - sum(weights.values())
    rows_limit, images_limit = it.batch_limits(latent, free=free)
    shape = tuple(latent.shape[1:])
    unet = memory.unet_cost(sd.unet, it.controlnet, shape, (77, cfg.unet.context_dim))
    decode = memory.decode_cost(sd.vae, shape)
    denoising, decoding = it.kept_bytes(latent)
    resident = memory_gb * GB - free  # context and weights
    rounds = []
    for frames_, k in zip(it.plan.rounds, it.plan.candidates):
        rows, images = 2 * len(frames_) * k, len(frames_) * k
        rounds.append({"frames": len(frames_), "candidates": k, "unet_rows": rows,
                       "unet_calls": -(-rows // rows_limit), "vae_calls": -(-images // images_limit),
                       "denoise_peak_gb": (resident + denoising + unet.bytes(min(rows, rows_limit))) / GB,
                       "decode_peak_gb": (resident + decoding + decode.bytes(min(images, images_limit))) / GB})
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "memory_gb": memory_gb,
            "weights_gb": {k: v / GB for k, v in weights.items()}, "free_gb": free / GB,
            "unet_row_mb": unet.per_row / 1e6, "decoded_image_mb": decode.per_row / 1e6,
            "unet_rows": rows_limit, "vae_images": images_limit, "rounds": rounds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=768, help="frame side in pixels")
    p.add_argument("--dtype", default="float16", help="the SD networks' dtype (float16 or bfloat16 on a GPU)")
    p.add_argument("--memory-gb", type=float, default=24.0, help="the card's memory")
    p.add_argument("--context-gb", type=float, default=0.5, help="memory the CUDA context takes")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--candidates", default="auto", help="per round: auto (8, 7, 6, ...) or a number")
    p.add_argument("--no-controlnet", action="store_true", help="without pose guidance")
    a = p.parse_args(argv)
    r = plan(a.size, parse_dtype(a.dtype), a.memory_gb, a.context_gb, a.frames, a.candidates, not a.no_controlnet)
    print(f"{r['size']} px, {r['dtype']}, a {r['memory_gb']:g} GB card: weights "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["weights_gb"].items()) + f" GB; {r['free_gb']:.1f} GB free")
    print(f"UNet + ControlNet: {r['unet_row_mb']:.0f} MB per guided row; VAE decoder: {r['decoded_image_mb']:.0f} MB "
          f"per image -> limits {r['unet_rows']} rows, {r['vae_images']} images per call")
    print("| round | frames x candidates | UNet rows | UNet calls | peak GB | VAE calls | peak GB |\n|---|---|---|---|---|---|---|")
    for i, x in enumerate(r["rounds"], 1):
        print(f"| {i} | {x['frames']} x {x['candidates']} | {x['unet_rows']} | {x['unet_calls']} | "
              f"{x['denoise_peak_gb']:.1f} | {x['vae_calls']} | {x['decode_peak_gb']:.1f} |")
    peak = max(max(x["denoise_peak_gb"], x["decode_peak_gb"]) for x in r["rounds"])
    print(f"largest peak {peak:.1f} GB of {r['memory_gb']:g} GB: {'fits' if peak <= r['memory_gb'] else 'does NOT fit'}")
    return r


if __name__ == "__main__":
    main()
