"""Seeded synthetic weights in the real layouts of the metric networks (Inception v3, AlexNet, VGG16, the
LPIPS heads), so the parity tests need no downloaded weights and nothing large is committed.

A tensor depends only on (seed, key, shape): one normal draw from a generator seeded by crc32(key) ^ seed,
scaled so activations keep their size through every layer: convs He-scaled (N(0, 2 / fan_in), for the
ReLU after them), BatchNorm near identity with positive running variances, LPIPS heads non-negative like
the trained ones. Used by tools/make_metric_fixtures.py (in the original packages) and by the tests (in ours).
"""
import json
import math
import zlib
from pathlib import Path

import torch

MANIFESTS = Path(__file__).resolve().parent / "data" / "metrics"
SEED = 2023


def synthetic_tensor(key: str, shape, seed: int = SEED) -> torch.Tensor:
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    g = torch.Generator("cpu")
    g.manual_seed(zlib.crc32(key.encode("utf-8")) ^ seed)
    noise = torch.randn(shape, generator=g, dtype=torch.float32)
    if key.startswith("lin"):  # LPIPS heads [1, C, 1, 1]
        return noise.abs()
    if key.endswith("running_var"):
        return 0.5 + noise.abs()
    if key.endswith("running_mean"):
        return 0.1 * noise
    if len(shape) == 1:
        return 1 + 0.1 * noise if key.endswith("bn.weight") else 0.05 * noise
    return noise * math.sqrt(2 / math.prod(shape[1:]))


def manifest(name: str) -> dict:
    """{key: shape} of a real layout: inception, alexnet, vgg16, lpips_alex_heads, lpips_vgg_heads."""
    return json.loads((MANIFESTS / f"{name}_keys.json").read_text())


def synthetic_state(layout: dict, seed: int = SEED) -> dict:
    return {k: synthetic_tensor(k, shape, seed) for k, shape in layout.items()}


def images(pixels: torch.Tensor, lo: float = 0.0) -> torch.Tensor:
    """The fixtures' uint8 images as floats in [lo, 1]."""
    return lo + (1 - lo) * pixels.float() / 255
