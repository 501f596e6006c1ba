#!/usr/bin/env python3
"""Write checkpoints in the real key layout with seeded random weights.

The tiny golden fixtures of the reference (`shared/reference/README.md`, section 6) were made by a rule
that depends only on (seed, key, shape), so the test suite regenerates them here bit for bit instead of
committing 85 MB of weights. The same tool writes full-size synthetic SD 2.1 checkpoints (all of the real
keys and shapes, random values) for load-time, memory and speed measurements.

    python tools/make_fixture_weights.py sd --config tests/data/config.json --seed 1234 --out tiny.safetensors
    python tools/make_fixture_weights.py sd --out sd21-synthetic.safetensors          # full size, 5.2 GB
    python tools/make_fixture_weights.py controlnet --config tests/data/config.json --seed 1234 --out cn.safetensors
    python tools/make_fixture_weights.py clip --config tests/data/clip/clip_config.json --seed 4242 --out clip.safetensors
    python tools/make_fixture_weights.py clip --out clip-vit-l14-synthetic.safetensors  # full-size ViT-L/14, 1.7 GB
"""
import argparse
import math
import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ldm.load import safetensors_io  # noqa: E402
from ldm.load.checkpoint import PREFIXES, parse_dtype  # noqa: E402
from ldm.nets.config import parse_config  # noqa: E402
from ldm.sample.schedule import schedule_buffers  # noqa: E402


def fixture_tensor(key: str, shape, seed: int) -> torch.Tensor:
    """The reference's rule: one seeded normal draw per key, scaled by what the tensor is."""
    g = torch.Generator("cpu")
    g.manual_seed(zlib.crc32(key.encode("utf-8")) ^ seed)
    noise = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    if key.endswith(("positional_embedding", "token_embedding.weight")):
        return 0.02 * noise
    if len(shape) == 1 and key.endswith(".weight"):  # GroupNorm / LayerNorm scales
        return 1 + 0.05 * noise
    if len(shape) >= 2:
        return noise / math.sqrt(math.prod(shape[1:]))
    return 0.02 * noise


def model_specs(modules: dict) -> dict:
    """{full key: shape} for meta-device modules keyed by checkpoint prefix."""
    return {prefix + k: tuple(v.shape) for prefix, m in modules.items() for k, v in m.state_dict().items()}


def sd_specs(config) -> dict:
    from ldm.nets.text import TextTransformer
    from ldm.nets.unet import UNetModel
    from ldm.nets.vae import AutoencoderKL
    cfg = parse_config(config)
    with torch.device("meta"):
        return model_specs({PREFIXES["unet"]: UNetModel(cfg.unet), PREFIXES["vae"]: AutoencoderKL(cfg.vae),
                            PREFIXES["text"]: TextTransformer(cfg.text)})


def controlnet_specs(config) -> dict:
    from ldm.nets.controlnet import ControlNet
    with torch.device("meta"):
        return model_specs({PREFIXES["controlnet"]: ControlNet(parse_config(config).unet)})


def clip_specs(config) -> dict:
    """open_clip keys: no prefix (the text tower at the top level, the image tower under visual.)."""
    from ldm.nets.clip import CLIP
    with torch.device("meta"):
        return model_specs({"": CLIP(config)})


def write_fixture(path, specs: dict, seed: int, dtype=torch.float32, schedule=None) -> None:
    """Stream a checkpoint of `specs` made by the rule; top-level schedule buffers get their real values."""
    buffers = schedule_buffers(parse_config(schedule).schedule) if schedule is not False else {}
    layout = {k: (s, dtype) for k, s in specs.items()}
    layout.update({k: (tuple(v.shape), torch.float32) for k, v in buffers.items()})
    make = lambda key: buffers[key] if key in buffers else fixture_tensor(key, specs[key], seed)  # noqa: E731
    safetensors_io.write(path, layout, make, metadata={"made_by": "tools/make_fixture_weights.py", "seed": seed})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["sd", "controlnet", "clip"])
    p.add_argument("--config", default=None, help="architecture JSON (reference format; open_clip's for clip); "
                                                    "default SD 2.1 (clip: ViT-L/14)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.kind == "sd":
        write_fixture(a.out, sd_specs(a.config), a.seed, parse_dtype(a.dtype), schedule=a.config)
    elif a.kind == "clip":
        write_fixture(a.out, clip_specs(a.config), a.seed, parse_dtype(a.dtype), schedule=False)
    else:
        write_fixture(a.out, controlnet_specs(a.config), a.seed, parse_dtype(a.dtype), schedule=False)
    print(a.out)


if __name__ == "__main__":
    main()
