#!/usr/bin/env python3
"""Page faults, system time and peak RSS of UNet calls under glibc malloc's settings (not a test): where a
run's minor faults come from, and what keeping freed memory in the process saves (issue 27).

    python tools/bench_malloc.py --ckpt sd21.safetensors --side 32 --batch 2 --train
    python tools/bench_malloc.py --ckpt sd21.safetensors --side 32 --batch 2 --train --recompute
    python tools/bench_malloc.py --ckpt sd21.safetensors --side 64 --batch 2

Each setting runs in a process of its own (mallopt acts on the process), one after the other: `accel` (what
the acceleration layer sets, `ldm/accel/heap.py`), `default` (glibc as it comes: buffers above the moving
mmap threshold are mapped afresh, and the heap's top handed back above twice it, so the next call faults its
pages in again), `nommap` (M_MMAP_MAX 0: every buffer from the heap), `keep` (nommap, and the heap's top never
trimmed), `trim1g` (nommap, trimmed above 1 GiB free). `--train`: forward and backward to the text context, as
textual inversion runs the UNet, with the activations kept for the backward pass (`--recompute`: each block
run again there, gradient checkpointing). Prints the median seconds of 3 calls after a warm-up, and the last
call's minor faults and system seconds.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ldm  # noqa: E402
from ldm.accel.heap import M_TRIM_THRESHOLD  # noqa: E402

M_MMAP_MAX = -4  # mallopt's parameter number (malloc.h); the others as ldm.accel.heap names them
SETTINGS = {"accel": {}, "default": {}, "nommap": {M_MMAP_MAX: 0}, "keep": {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 40},
            "trim1g": {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}}
# A MALLOC_ variable that changes nothing (0 is glibc's default): the acceleration layer then leaves malloc to
# the setting under test.
HANDS_OFF = {"MALLOC_CHECK_": "0"}


def measure(a) -> dict:
    """One setting, in this process."""
    libc = ctypes.CDLL("libc.so.6")
    for option, value in SETTINGS[a.setting].items():
        if libc.mallopt(option, value) != 1:
            raise SystemExit(f"error: mallopt({option}, {value}) was refused")
    dtype = getattr(torch, a.dtype)
    sd = ldm.load_checkpoint(a.ckpt, dtype=dtype, config=a.config)
    sd.unet.requires_grad_(False)
    sd.unet.gradient_checkpointing = a.recompute
    width = sd.config.unet.context_dim
    x, t = torch.randn(a.batch, 4, a.side, a.side, dtype=dtype), torch.full((a.batch,), 500)
    context = torch.randn(a.batch, 77, width, dtype=dtype, requires_grad=a.train)

    def call():
        if a.train:
            sd.unet(x, t, context).float().square().mean().backward()
            context.grad = None
        else:
            with torch.no_grad():
                sd.unet(x, t, context)

    call()
    seconds = []
    for _ in range(3):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
    return {"setting": a.setting, "seconds": statistics.median(seconds), "faults": after.ru_minflt - before.ru_minflt,
            "system": after.ru_stime - before.ru_stime, "peak_rss_gb": after.ru_maxrss / 1e6}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="an SD 2.x checkpoint (a full-size synthetic one will do)")
    p.add_argument("--config", default=None, help="architecture JSON of a non-SD-2.1 checkpoint")
    p.add_argument("--side", type=int, default=32, help="latent side (32: 256 px)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--train", action="store_true", help="forward and backward, as textual inversion")
    p.add_argument("--recompute", action="store_true",
                   help="with --train: the blocks run again in the backward pass (gradient checkpointing)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)  # one, in this process
    a = p.parse_args(argv)
    if a.setting:
        print(json.dumps(measure(a)))
        return None
    rows = []
    args = ["--ckpt", a.ckpt, "--side", str(a.side), "--batch", str(a.batch), "--dtype", a.dtype,
            *(["--config", a.config] if a.config else []), *(["--train"] if a.train else []),
            *(["--recompute"] if a.recompute else [])]
    for setting in a.settings:
        env = {**os.environ, **({} if setting == "accel" else HANDS_OFF)}
        done = subprocess.run([sys.executable, __file__, *args, "--setting", setting], capture_output=True, text=True,
                              env=env)
        if done.returncode:
            raise SystemExit(done.stderr.strip().splitlines()[-1])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    step = "forward" if not a.train else "forward + backward, blocks recomputed" if a.recompute else "forward + backward"
    print(f"UNet, {a.side}x{a.side} latents, batch {a.batch}, {a.dtype}, {step}")
    print("| malloc | seconds per call | minor faults per call | system s per call | peak RSS GB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['seconds']:.2f} | {r['faults']:,} | {r['system']:.2f} | {r['peak_rss_gb']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
