#!/usr/bin/env python3
"""Two half-precision choices of the UNet, measured against float32: the time embedding and the folded
upsampling kernels.

    python tools/half_numerics.py                     # tiny config and full-size SD 2.1, 16x16 latents, CPU
    python tools/half_numerics.py --device cuda --side 96

* time embedding: the sinusoids and `time_embed` in float32, then cast (what `Encoder.embed_time` does),
  against casting the sinusoids to the weights' dtype first and running `time_embed` there (what the code
  did before, and what autocast does);
* folded upsampling: the taps summed in float32 and rounded once (`accel.modules.phase_kernels`), against
  summing them in the weights' dtype.

For each, the largest error of the time embedding itself and of the UNet output at timesteps 1, 500 and 999
(relative to the float32 output's largest value), and how many of the 1000 timesteps' embeddings stay
distinct. Random weights of the fixture rule: the figures are about rounding, not about images.
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
from bench import random_module  # noqa: E402
from ldm.accel import accelerate, cpu_model  # noqa: E402
from ldm.accel import modules as fast  # noqa: E402
from ldm.nets.blocks import timestep_embedding  # noqa: E402
from ldm.nets.config import ModelConfig, parse_config  # noqa: E402
from ldm.nets.unet import Encoder, UNetModel  # noqa: E402

TIMESTEPS = (1, 500, 999)


def embed_time_in_dtype(self, t, dtype):
    """The other choice: the sinusoids cast to `dtype`, `time_embed` in the weights' dtype."""
    return self.time_embed(timestep_embedding(t, self.time_embed[0].in_features).to(dtype))


PHASE_KERNELS = fast.phase_kernels  # (patched below; kept to call)


def phase_kernels_in_dtype(w):
    """The other choice: the taps summed in the weight's dtype."""
    return PHASE_KERNELS(w, accumulate=w.dtype)


def unet_error(half, x, ctx, dtype, reference_out) -> float:
    with torch.no_grad():
        out = torch.cat([half(x.to(dtype), torch.tensor([t], device=x.device), ctx.to(dtype)).float() for t in TIMESTEPS])
    return ((out - reference_out).abs().max() / reference_out.abs().max()).item()


def measure(name: str, cfg, side: int, dtype, device) -> list:
    with torch.device("meta"):
        unet = UNetModel(cfg)
    unet = random_module(unet, "model.diffusion_model.").to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, side, side, generator=g).to(device)
    ctx = torch.randn(1, 77, cfg.context_dim, generator=g).to(device)
    with torch.no_grad():
        reference_out = torch.cat([unet(x, torch.tensor([t], device=device), ctx) for t in TIMESTEPS])
        t_all = torch.arange(1000, device=device)
        reference_emb = unet.embed_time(t_all, torch.float32)
    half = accelerate(copy.deepcopy(unet).to(dtype), device)
    rows = []
    for choice, patch in (("float32 (ours)", None), ("cast first", "embed"), ("fold in dtype", "fold")):
        saved = (Encoder.embed_time, fast.phase_kernels)
        if patch == "embed":
            Encoder.embed_time = embed_time_in_dtype
        elif patch == "fold":
            fast.phase_kernels = phase_kernels_in_dtype
        try:
            for m in half.modules():
                if isinstance(m, fast.FoldedUpsample):
                    m._kernels = None
            with torch.no_grad():
                emb = half.embed_time(t_all, dtype).float()
            rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), "choice": choice,
                         "embedding_error": ((emb - reference_emb).abs().max() / reference_emb.abs().max()).item(),
                         "distinct_embeddings": len(torch.unique(emb, dim=0)),
                         "unet_error": unet_error(half, x, ctx, dtype, reference_out)})
        finally:
            Encoder.embed_time, fast.phase_kernels = saved
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--side", type=int, default=16, help="latent side of the full-size UNet's input")
    p.add_argument("--dtypes", default="bfloat16,float16")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    tiny = parse_config(ROOT / "tests" / "data" / "config.json").unet
    rows = []
    for dtype in [getattr(torch, d) for d in a.dtypes.split(",")]:
        rows += measure("tiny", tiny, 8, dtype, device)
        rows += measure("SD 2.1", ModelConfig().unet, a.side, dtype, device)
    print(f"device: {cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print("| UNet | dtype | choice | time embedding error | distinct of 1000 | UNet output error |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['dtype']} | {r['choice']} | {r['embedding_error']:.2e} | {r['distinct_embeddings']} | "
              f"{r['unet_error']:.2e} |")
    return rows


if __name__ == "__main__":
    main()
