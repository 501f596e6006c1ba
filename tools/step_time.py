#!/usr/bin/env python3
"""Time guided DDIM steps (UNet on [uncond; cond], batch 2) of a checkpoint at one image size.

    python tools/step_time.py /tmp/sd21-synthetic.safetensors --size 512 --steps 5 --dtype float32
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ldm  # noqa: E402
from ldm.ddim import DDIM  # noqa: E402
from ldm.denoiser import Denoiser  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--config", default=None)
    a = p.parse_args(argv)
    sd = ldm.load_checkpoint(a.file, dtype=a.dtype, config=a.config, prediction="eps")
    sampler = DDIM(sd.schedule, sd.config.prediction, 200)
    cond = torch.randn(1, 77, sd.config.text.width)
    x = torch.randn(1, 4, a.size // 8, a.size // 8)
    times = []

    def tick(*_):
        times.append(time.perf_counter())
    times.append(time.perf_counter())
    sampler.sample(Denoiser(sd.unet), x, cond, torch.zeros_like(cond), 9.0, start=a.steps, callback=tick)
    per_step = [b - a_ for a_, b in zip(times[1:], times[2:])]  # drop the warm-up step
    print(f"{a.size} px, {sd.dtype}, batch 2 (guided): median {statistics.median(per_step):.2f} s/step "
          f"(min {min(per_step):.2f}, max {max(per_step):.2f}, {len(per_step)} steps, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
