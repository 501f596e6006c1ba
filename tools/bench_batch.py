"""Throughput of interp-batch on 1 process and on K torchrun workers, on the tiny fixture models (CPU).

    python tools/bench_batch.py [--pairs 12] [--workers 2] [--frames 9] [--steps 20]

Makes the tiny weights and `--pairs` random pairs in a temporary folder, then times, each from a fresh
output folder and inversion cache: `interp-batch` in one process (all the machine's threads) and
`torchrun --standalone --nproc-per-node=K -m interp.apps.batch` (one thread per worker, torchrun's default).
Prints a Markdown table with the CPU model: runs per minute and the speed-up.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import make_fixture_weights  # noqa: E402
from ldm.accel.cpu import cpu_model  # noqa: E402

TINY_CONFIG = ROOT.parent / "shared" / "reference" / "tiny" / "config.json"


def setup(folder: Path, pairs: int) -> tuple:
    ckpt = folder / "tiny.safetensors"
    make_fixture_weights.main(["sd", "--config", str(TINY_CONFIG), "--seed", "1234", "--out", str(ckpt)])
    (folder / "tiny.safetensors.json").write_text(TINY_CONFIG.read_text())
    g = torch.Generator().manual_seed(0)
    rows = []
    for k in range(pairs):
        for side in "ab":
            pixels = torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{k}{side}.png")
        rows.append({"id": f"p{k}", "image_a": f"{k}a.png", "image_b": f"{k}b.png", "prompt": "a picture", "seed": k})
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return ckpt, folder / "pairs.csv"


def timed(cmd: list, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt, pairs = setup(folder, args.pairs)
        options = ["--ckpt", str(ckpt), "--frames", str(args.frames), "--steps", str(args.steps), "--size", "64",
                   "--inversion-steps", "4", "--candidates", "1", "--no-pose"]
        results = []
        for workers in (1, args.workers):
            env = {**os.environ, "SD_INTERP_CACHE": str(folder / f"cache-{workers}")}
            launch = [sys.executable, "-m", "interp.apps.batch"] if workers == 1 else \
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
                 "-m", "interp.apps.batch"]
            seconds = timed([*launch, str(pairs), "--out", str(folder / f"runs-{workers}"), *options], env)
            results.append((workers, seconds))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; {args.pairs} pairs, "
          f"{args.frames} frames, {args.steps} steps, tiny models, 64 px")
    print("\n| workers | threads each | seconds | runs per minute | speed-up |\n|---|---|---|---|---|")
    for workers, seconds in results:
        threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())) if workers == 1 else "1"
        print(f"| {workers} | {threads} | {seconds:.1f} | {60 * args.pairs / seconds:.1f} | "
              f"{results[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
