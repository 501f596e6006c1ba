#!/usr/bin/env python3
"""Time CLIP ranking of generated candidates: preprocess N decoded images, encode them and the prompts, score.

    python tools/make_fixture_weights.py clip --out /tmp/clip-vit-l14-synthetic.safetensors   # full-size ViT-L/14
    python tools/bench_clip.py /tmp/clip-vit-l14-synthetic.safetensors --candidates 8 --size 512

Synthetic weights have the real shapes, so the timings are those of the real model (QuickGELU is assumed).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ldm  # noqa: E402
from ldm.nets.clip import cosine_similarity  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="side of the decoded images in pixels")
    p.add_argument("--prompts", nargs="+", default=["high quality, detailed, 2D", "blurry, distorted, 3D render"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    t = time.perf_counter()
    clip = ldm.load_clip(a.weights, dtype=a.dtype, quick_gelu=True)
    print(f"load: {time.perf_counter() - t:.2f} s ({torch.get_num_threads()} threads)")
    images = torch.rand(a.candidates, 3, a.size, a.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = ldm.tokenize(a.prompts)
    for run in range(a.repeats):
        with torch.inference_mode():
            t0 = time.perf_counter()
            pixels = ldm.clip_preprocess(images, clip.image_size)
            t1 = time.perf_counter()
            img = clip.encode_image(pixels)
            t2 = time.perf_counter()
            txt = clip.encode_text(tokens)
            scores = cosine_similarity(img, txt)
            t3 = time.perf_counter()
        print(f"run {run}: total {t3 - t0:.2f} s = preprocess {t1 - t0:.3f} + encode_image {t2 - t1:.2f} "
              f"+ encode_text and score {t3 - t2:.2f}  (scores {list(scores.shape)})")


if __name__ == "__main__":
    main()
