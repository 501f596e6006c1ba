#!/usr/bin/env python3
"""Time the metric networks of interp-eval per frame: Inception v3 (FID, PPL) and LPIPS on AlexNet and VGG16.

    python tools/bench_metrics.py --size 512 --frames 17

The networks are the full-size modules with their default initialisation (the time does not depend on the
weights). A sequence of F frames costs F Inception passes (frames resized to 299 px) and F LPIPS passes at
the frames' own size, the adjacent distances then being cheap.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ldm.nets.inception import InceptionV3  # noqa: E402
from ldm.nets.lpips import LPIPS  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def adjacent_lpips(lpips, frames):
    """As interp-eval: each frame through the network once, the distance to the previous frame's layers."""
    previous, steps = None, []
    for frame in frames:
        taps = lpips.layers(frame[None] * 2 - 1)
        if previous is not None:
            steps.append(lpips.distance(previous, taps))
        previous = taps
    return steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="side of the frames in pixels")
    p.add_argument("--frames", type=int, default=17, help="frames per sequence")
    p.add_argument("--batch", type=int, default=8, help="frames per Inception call (interp-eval's batch)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    frames = torch.rand(a.frames, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    print(f"{a.frames} frames of {a.size} px, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| network | seconds per sequence | ms per frame |\n|---|---|---|")
    inception = InceptionV3().eval()
    nets = {"Inception v3 (FID)": lambda: [inception(frames[i:i + a.batch]) for i in range(0, a.frames, a.batch)]}
    for net in ("alex", "vgg"):
        nets[f"LPIPS {net} (adjacent steps)"] = lambda lpips=LPIPS(net).eval(): adjacent_lpips(lpips, frames)
    with torch.inference_mode():
        for name, fn in nets.items():
            seconds = best_of(a.repeats, fn)
            print(f"| {name} | {seconds:.2f} | {1000 * seconds / a.frames:.0f} |")


if __name__ == "__main__":
    main()
