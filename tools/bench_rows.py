#!/usr/bin/env python3
"""Seconds per row of a network call by the call's batch (not a test): whether a bigger batch still pays on
this machine, which `ldm.accel.memory.rows_worth_batching` assumes it does not past a number of latent pixels
per CPU thread.

    python tools/bench_rows.py --ckpt sd21.safetensors --controlnet cn.safetensors --side 64 --rows 1 2 4 8 16
    python tools/bench_rows.py --ckpt sd21.safetensors --side 32 --rows 2 4 8 16 32 --images 1 2 4 8

One process; for each batch a warm-up call (the first call of a shape pays one-time checks), then the least
of `--repeats` calls, no gradients: the UNet (after the ControlNet's call when one is given; they run as a
pair in a run) on `--rows` rows of [4, side, side] latents, and the VAE decoder on `--images` latents. Prints
a Markdown table with the CPU, each call's minor faults, system time and the process's peak RSS so far, and
the batch the rule gives on this machine.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ldm  # noqa: E402
from bench import machine_line  # noqa: E402
from ldm.accel import memory  # noqa: E402
from ldm.load.controlnet import load_controlnet  # noqa: E402
from ldm.sample.denoiser import Denoiser  # noqa: E402


def timed(call, repeats: int) -> dict:
    """The least seconds of `repeats` calls after a warm-up, and the last call's faults and system seconds."""
    call()
    best = None
    for _ in range(repeats):
        u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        call()
        seconds, u1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        best = seconds if best is None else min(best, seconds)
    return {"seconds": best, "faults": u1.ru_minflt - u0.ru_minflt, "system_s": u1.ru_stime - u0.ru_stime,
            "peak_rss_gib": u1.ru_maxrss / 2 ** 20}


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="SD 2.1 checkpoint (synthetic weights time the same)")
    p.add_argument("--controlnet", default=None, help="a ControlNet, called before the UNet as in a run with poses")
    p.add_argument("--side", type=int, default=64, help="latent side (image side / 8)")
    p.add_argument("--rows", type=int, nargs="*", default=[1, 2, 4, 8], help="UNet batches")
    p.add_argument("--images", type=int, nargs="*", default=[1, 2, 4], help="VAE decoder batches")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    sd = ldm.load_checkpoint(a.ckpt, dtype=a.dtype)
    controlnet = None if a.controlnet is None else load_controlnet(a.controlnet, device=sd.device, dtype=sd.dtype)
    latent, context, results = (4, a.side, a.side), sd.config.unet.context_dim, []
    g = torch.Generator().manual_seed(0)
    for rows in a.rows:
        x, ctx = torch.randn(rows, *latent, generator=g), torch.randn(rows, 77, context, generator=g)
        hint = None if controlnet is None else torch.rand(rows, 3, 8 * a.side, 8 * a.side, generator=g)
        model = Denoiser(sd.unet, controlnet, hint)  # one call of `rows` rows, as a run's batch of that size
        with torch.no_grad():
            r = timed(lambda: model(x, 500, ctx), a.repeats)
        results.append({"network": "unet" if controlnet is None else "unet + controlnet", "batch": rows, **r})
    for images in a.images:
        z = torch.randn(images, *latent, generator=g)
        results.append({"network": "decoder", "batch": images, **timed(lambda: sd.decode_latents(z), a.repeats)})
    print(f"{machine_line()}; {sd.dtype}, latents {a.side}x{a.side}")
    print("| network | batch | seconds | seconds a row | minor faults | system s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['network']} | {r['batch']} | {r['seconds']:.2f} | {r['seconds'] / r['batch']:.3f} | "
              f"{r['faults']:,} | {r['system_s']:.2f} | {r['peak_rss_gib']:.2f} |")
    picked = {n: memory.rows_worth_batching(sd.device, n, latent) for n in ("unet", "decoder")}
    print(f"rows_worth_batching here: UNet {picked['unet']} rows, decoder {picked['decoder']} images")
    return results


if __name__ == "__main__":
    main()
