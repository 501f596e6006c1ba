#!/usr/bin/env python3
"""The GPU check: one command that measures, on a lent GPU, what the CPU tests cannot see.

    python tools/gpu_check.py --device cuda --json gpu_check.json   # full size, SD 2.1 layouts
    python tools/gpu_check.py --dry-run                              # tiny models on the CPU (CI runs this)

1. Half precision: float16 and bfloat16 against float32 for the UNet, the VAE decoder, the text encoder, the
   ControlNet and CLIP's image tower (largest absolute error, and relative to the float32 output's largest
   value); the half copies get the acceleration layer, as loading gives them.
2. eta > 0 sampling on the device (its noise drawn on the CPU generator and moved).
3. Textual inversion in float16: the embeddings move (the loss is scaled for the backward pass).
4. Host syncs inside a DDIM step, counted with CUDA's sync debug mode (a CPU has none to count).
5. The UNet step, eager (also in channels-last layout, and with cudnn.benchmark) and compiled (default and
   reduce-overhead), at each size and batch, with the fraction of the measured matmul peak.
6. The memory model (`ldm.accel.memory`): its estimate of a UNet call at 768 px, batch 16, against CUDA's peak.
7. One interpolation (17 frames, the default plan), with one candidate and with 8-7-6-5: wall time, peak
   memory and the batch limits the run took from the free memory.

The networks have random weights in the real layouts (made on the device): the figures are about the code,
not about images. `--dry-run` runs every section at the tiny test size, without compiling or measuring the
matmul peak (half-precision matmuls that a CPU emulates take minutes at the peak's sizes).
"""
import argparse
import copy
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
import ldm  # noqa: E402
from bench import flops_of, matmul_peak, once, random_module, timed  # noqa: E402
from ldm.accel import accelerate, compile_model, memory  # noqa: E402
from ldm.load.checkpoint import PREFIXES, StableDiffusion  # noqa: E402
from ldm.nets.clip import CLIP, parse_clip_config  # noqa: E402
from ldm.nets.config import ModelConfig, parse_config  # noqa: E402
from ldm.nets.controlnet import ControlNet  # noqa: E402
from ldm.nets.text import TextTransformer  # noqa: E402
from ldm.nets.unet import UNetModel  # noqa: E402
from ldm.nets.vae import AutoencoderKL  # noqa: E402
from ldm.runtime import add_device_arg  # noqa: E402
from ldm.sample.ddim import DDIM  # noqa: E402
from ldm.sample.denoiser import Denoiser  # noqa: E402
from ldm.sample.schedule import NoiseSchedule  # noqa: E402

TINY = ROOT / "tests" / "data"
HALF = (torch.float16, torch.bfloat16)


def networks(cfg, clip_cfg, device) -> dict:
    """The five networks, float32, on `device`, with the fixture rule's seeded weights under their checkpoint keys."""
    with torch.device("meta"):
        nets = {"unet": UNetModel(cfg.unet), "vae": AutoencoderKL(cfg.vae), "text": TextTransformer(cfg.text),
                "controlnet": ControlNet(cfg.unet), "clip": CLIP(clip_cfg)}
    prefixes = {"unet": PREFIXES["unet"], "vae": PREFIXES["vae"], "text": PREFIXES["text"],
                "controlnet": PREFIXES["controlnet"], "clip": ""}
    return {k: random_module(m, prefixes[k]).to(device) for k, m in nets.items()}


def inputs(cfg, clip_cfg, size: int, device) -> dict:
    """One call's inputs per network (batch 2, guidance-sized), float32."""
    g = torch.Generator().manual_seed(0)
    side = size // 8
    x, ctx, hint, images, z = (v.to(device) for v in (
        torch.randn(2, cfg.unet.in_channels, side, side, generator=g), torch.randn(2, 77, cfg.unet.context_dim, generator=g),
        torch.rand(2, 3, size, size, generator=g),
        torch.randn(2, 3, clip_cfg.vision.image_size, clip_cfg.vision.image_size, generator=g),
        torch.randn(2, cfg.vae.z_channels, side, side, generator=g)))
    t = torch.tensor([500, 500], device=device)
    tokens = ldm.tokenize(["a photograph of a cat", "a painting of a dog"]).to(device)
    return {"unet": lambda m, d: m(x.to(d), t, ctx.to(d)),
            "vae": lambda m, d: m.decode(z.to(d)),
            "text": lambda m, d: m(tokens),
            "controlnet": lambda m, d: torch.cat([r.flatten() for r in m(x.to(d), hint.to(d), t, ctx.to(d))]),
            "clip": lambda m, d: m.encode_image(images.to(d))}


@torch.no_grad()
def half_precision(nets, calls, device, dtypes) -> list:
    rows = []
    for name, net in nets.items():
        reference = calls[name](net, torch.float32).float()
        for dtype in dtypes:
            half = accelerate(copy.deepcopy(net).to(dtype), device)
            out = calls[name](half, dtype).float()
            err = (out - reference).abs().max().item()
            rows.append({"network": name, "dtype": str(dtype).removeprefix("torch."), "finite": bool(torch.isfinite(out).all()),
                         "max_abs": err, "relative": err / max(reference.abs().max().item(), 1e-12)})
    return rows


def eta_sampling(unet, cfg, device) -> dict:
    sampler = DDIM(NoiseSchedule(cfg.schedule), "v", 20, eta=1.0)
    x = torch.randn(1, cfg.unet.in_channels, 8, 8, device=device)
    ctx = torch.randn(1, 77, cfg.unet.context_dim, device=device)
    out = sampler.sample(Denoiser(unet), x, ctx, start=4, generator=[ldm.sample.rng.generator(0, "eta")])
    return {"finite": bool(torch.isfinite(out).all()), "device": out.device.type}


def inversion_fp16(nets, cfg, device, size: int) -> dict:
    from interp.inversion import invert
    sd = StableDiffusion(copy.deepcopy(nets["unet"]).half(), copy.deepcopy(nets["vae"]).half(), nets["text"],
                         cfg, NoiseSchedule(cfg.schedule), "random", [])
    images = torch.rand(2, 3, size, size, device=device) * 2 - 1
    cond = torch.randn(2, 77, cfg.unet.context_dim, device=device)
    uncond = torch.randn(1, 77, cfg.unet.context_dim, device=device)
    new_cond, new_uncond, losses = invert(sd, images, cond, uncond, steps=10, iterations=2, lr=1e-3)
    moved = (new_cond - cond).abs().amax(dim=(1, 2))
    return {"embeddings_moved": bool((moved > 0).all()), "largest_change": moved.max().item(), "losses": losses}


def host_syncs(unet, cfg, device, steps: int = 4):
    """Syncs per DDIM step (CUDA's sync debug mode warns at each); None off CUDA."""
    if device.type != "cuda":
        return None
    sampler = DDIM(NoiseSchedule(cfg.schedule), "v", 50)
    x = torch.randn(1, cfg.unet.in_channels, 64, 64, device=device)
    ctx = torch.randn(1, 77, cfg.unet.context_dim, device=device)
    model = Denoiser(unet)
    sampler.sample(model, x, ctx, ctx, guidance=7.5, start=steps - 1)  # warm-up (the coefficients' one copy)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            sampler.sample(model, x, ctx, ctx, guidance=7.5, start=steps - 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    return {"per_step": (len(syncs) - 1) / steps, "total": len(syncs), "first": syncs[:3]}


def memory_model(unet, cfg, device, size: int, batch: int, dtype) -> dict:
    """The memory model's estimate of a UNet call (`ldm.accel.memory`) against the peak CUDA's allocator saw
    (None off CUDA: a CPU has no allocator statistics)."""
    net = accelerate(copy.deepcopy(unet).to(dtype), device)
    side, context = size // 8, (77, cfg.unet.context_dim)
    estimate = memory.unet_cost(net, None, (cfg.unet.in_channels, side, side), context).bytes(batch)
    measured = None
    if device.type == "cuda":
        with torch.no_grad():
            net(torch.zeros(1, cfg.unet.in_channels, side, side, device=device, dtype=dtype),
                torch.zeros(1, dtype=torch.long, device=device), torch.zeros(1, *context, device=device, dtype=dtype))
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            x = torch.zeros(batch, cfg.unet.in_channels, side, side, device=device, dtype=dtype)
            net(x, torch.zeros(batch, dtype=torch.long, device=device), torch.zeros(batch, *context, device=device, dtype=dtype))
            torch.cuda.synchronize()
            measured = torch.cuda.max_memory_allocated() - base
    return {"size": size, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "estimate_gb": estimate / 1e9,
            "measured_gb": None if measured is None else measured / 1e9}


def unet_steps(unet, cfg, device, sizes, batches, dtype, modes, peak: bool = True) -> list:
    """Seconds per UNet call and the fraction of the measured matmul peak (with `peak`), per mode, size, batch."""
    peak = matmul_peak(dtype, device) if peak else None
    rows = []
    base = accelerate(copy.deepcopy(unet).to(dtype), device)
    for mode in modes:
        layout = torch.channels_last if mode == "eager channels_last" else torch.contiguous_format
        torch.backends.cudnn.benchmark = mode == "eager cudnn.benchmark"
        if mode.startswith("eager"):
            net = base if layout == torch.contiguous_format else copy.deepcopy(base).to(memory_format=layout)
        else:
            net = compile_model(copy.deepcopy(base), device, **({} if mode == "default" else {"mode": mode}))
        for size in sizes:
            for batch in batches:
                x = torch.randn(batch, cfg.unet.in_channels, size // 8, size // 8, device=device, dtype=dtype)
                x = x.contiguous(memory_format=layout)
                t = torch.full((batch,), 500, device=device)
                ctx = torch.randn(batch, 77, cfg.unet.context_dim, device=device, dtype=dtype)
                with torch.no_grad():
                    first = once(lambda: net(x, t, ctx), device)
                    seconds = min(timed(lambda: net(x, t, ctx), device, 3))
                    flops = flops_of(base, lambda: base(x, t, ctx))
                rows.append({"mode": mode, "size": size, "batch": batch, "first_s": first, "seconds": seconds,
                             "peak_fraction": None if peak is None else flops / seconds / peak})
    return rows


def sequence(device, dry_run: bool, candidates: str, folder: Path) -> dict:
    """`interpolate` end to end on synthetic checkpoint files: wall seconds and peak memory."""
    import make_fixture_weights
    from interp.apps.options import parse
    from interp.apps.run import make as interpolate
    config = [] if not dry_run else ["--config", str(TINY / "config.json")]
    clip_config = [] if not dry_run else ["--config", str(TINY / "clip" / "clip_config.json")]
    for kind, extra in (("sd", config), ("controlnet", config), ("clip", clip_config)):
        if not (folder / f"{kind}.safetensors").exists():
            make_fixture_weights.main([kind, *extra, "--seed", "1234", "--out", str(folder / f"{kind}.safetensors")])
    size = 64 if dry_run else 768
    people = {"width": size, "height": size, "people": [{"keypoints": [[size / 2, size * (0.2 + 0.04 * j), 1.0]
                                                                        for j in range(18)]}]}
    for name in ("a", "b"):
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{name}.png")
        (folder / f"{name}.json").write_text(json.dumps(people))
    args = [str(folder / "a.png"), str(folder / "b.png"), "--prompt", "a photograph", "--ckpt", str(folder / "sd.safetensors"),
            "--controlnet", str(folder / "controlnet.safetensors"), "--clip", str(folder / "clip.safetensors"),
            "--poses", str(folder / "a.json"), str(folder / "b.json"), "--device", str(device), "--candidates", candidates,
            "--out", str(folder / f"run-{candidates}"), "--overwrite", "--prediction", "v"]
    if dry_run:
        args += ["--frames", "5", "--steps", "10", "--size", "64", "--inversion-steps", "1",
                 "--config", str(TINY / "config.json"), "--clip-config", str(TINY / "clip" / "clip_config.json")]
    else:
        args += ["--frames", "17", "--size", str(size)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    interpolate(parse(args))
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    limits = json.loads((folder / f"run-{candidates}" / "run.json").read_text())["batch_limits"]
    return {"candidates": candidates, "seconds": seconds, "peak_memory_gb": peak / 1e9,
            "memory": "CUDA allocated" if device.type == "cuda" else "process RSS", "batch_limits": limits}


def print_tables(results) -> None:
    print(f"device: {results['device']}, torch {results['torch']}{' (dry run)' if results['dry_run'] else ''}")
    print("| network | dtype | finite | max abs error | relative |\n|---|---|---|---|---|")
    for r in results["half_precision"]:
        print(f"| {r['network']} | {r['dtype']} | {r['finite']} | {r['max_abs']:.3g} | {r['relative']:.3g} |")
    print(f"eta > 0 sampling: {results['eta_sampling']}")
    inv = results["inversion_float16"]
    print(f"float16 inversion: embeddings moved {inv['embeddings_moved']} (largest change {inv['largest_change']:.3g})")
    print(f"host syncs per DDIM step: {results['host_syncs'] or 'n/a (not CUDA)'}")
    print("| UNet | size | batch | first call s | s per call | peak fraction |\n|---|---|---|---|---|---|")
    for r in results["unet_steps"]:
        share = "n/a" if r["peak_fraction"] is None else f"{r['peak_fraction']:.1%}"
        print(f"| {r['mode']} | {r['size']} | {r['batch']} | {r['first_s']:.3f} | {r['seconds']:.4f} | {share} |")
    m = results["memory_model"]
    measured = "n/a (not CUDA)" if m["measured_gb"] is None else f"{m['measured_gb']:.2f} GB measured"
    print(f"memory model, UNet {m['size']} px batch {m['batch']} {m['dtype']}: {m['estimate_gb']:.2f} GB estimated, {measured}")
    for r in results["sequence"]:
        print(f"interpolation, candidates {r['candidates']}: {r['seconds']:.1f} s, peak {r['peak_memory_gb']:.2f} GB "
              f"({r['memory']}), batch limits {r['batch_limits']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_arg(p)
    p.add_argument("--dry-run", action="store_true", help="every section at the tiny test size, without compiling")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--work", default=None, help="folder for the synthetic checkpoints (default: a temporary one)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cfg = parse_config(TINY / "config.json") if a.dry_run else ModelConfig()
    clip_cfg = parse_clip_config(TINY / "clip" / "clip_config.json" if a.dry_run else None)
    size = 64 if a.dry_run else 512
    nets = networks(cfg, clip_cfg, device)
    dtypes = [d for d in HALF if device.type != "cuda" or d != torch.bfloat16 or torch.cuda.is_bf16_supported()]
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "dry_run": a.dry_run}
    results["half_precision"] = half_precision(nets, inputs(cfg, clip_cfg, size, device), device, dtypes)
    results["eta_sampling"] = eta_sampling(nets["unet"], cfg, device)
    results["inversion_float16"] = inversion_fp16(nets, cfg, device, size)
    results["host_syncs"] = host_syncs(nets["unet"], cfg, device)
    modes = ["eager"] if a.dry_run else ["eager", "eager channels_last", "eager cudnn.benchmark", "default",
                                         "reduce-overhead"]
    step_dtype = torch.bfloat16 if torch.bfloat16 in dtypes else torch.float16
    results["unet_steps"] = unet_steps(nets["unet"], cfg, device, [64] if a.dry_run else [512, 768],
                                       [2] if a.dry_run else [2, 16], step_dtype, modes, peak=not a.dry_run)
    results["memory_model"] = memory_model(nets["unet"], cfg, device, 64 if a.dry_run else 768, 2 if a.dry_run else 16,
                                           step_dtype)
    del nets
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.work or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results["sequence"] = [sequence(device, a.dry_run, k, folder) for k in ("1", "auto")]  # auto: 8, 7, 6, 5
    print_tables(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
