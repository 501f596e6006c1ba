#!/usr/bin/env python3
"""Golden outputs of the original metric code (pytorch-fid 0.3.0, lpips 0.1.4) for tests/test_metric_networks.py.

Runs ONLY in a throwaway environment holding the original packages, never in the project's own:

    python -m venv --system-site-packages /tmp/fixenv
    /tmp/fixenv/bin/pip install --no-deps torchvision==0.29.1 pytorch-fid==0.3.0 lpips==0.1.4 scipy
    /tmp/fixenv/bin/python tools/make_metric_fixtures.py

`--no-deps` keeps the CPU torch of the system. torchvision's C extension cannot load against that torch,
so `torch.library.register_fake` is stubbed while torchvision is imported (below); the models used here are
pure Python, so this does not touch what is compared. Nothing is downloaded: the networks get the seeded
synthetic weights of tests/metric_weights.py (pytorch-fid's weight download is patched to return them).

Writes to tests/data/metrics/: the key -> shape manifests of the real layouts (`*_keys.json`, from the
original packages' modules and the head files shipped inside lpips) and `fixtures.safetensors` (inputs,
Inception pool features, LPIPS distances per layer, Fréchet distances from pytorch_fid.fid_score).
"""
import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import metric_weights  # noqa: E402
from ldm.load import safetensors_io  # noqa: E402

_real_register_fake = torch.library.register_fake
torch.library.register_fake = lambda *a, **k: (lambda f: f)
import torchvision  # noqa: E402
torch.library.register_fake = _real_register_fake

import lpips  # noqa: E402
import lpips.pretrained_networks  # noqa: E402
from pytorch_fid import inception as fid_inception  # noqa: E402
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402

OUT = metric_weights.MANIFESTS
HEADS = Path(lpips.__file__).parent / "weights" / "v0.1"


def layout(state: dict) -> dict:
    return {k: list(v.shape) for k, v in state.items()}


def write_manifest(name: str, state: dict) -> dict:
    shapes = layout(state)
    (OUT / f"{name}_keys.json").write_text(json.dumps(shapes, indent=0) + "\n")
    return shapes


def fid_inception_layout() -> dict:
    """The keys of `fid_inception_v3().state_dict()`: the model is built with its weight load skipped."""
    built = []
    inception3 = torchvision.models.inception.Inception3
    real_load, real_url = inception3.load_state_dict, fid_inception.load_state_dict_from_url
    inception3.load_state_dict = lambda self, state, *a, **k: built.append(self)
    fid_inception.load_state_dict_from_url = lambda *a, **k: {}
    try:
        fid_inception.fid_inception_v3()
    finally:
        inception3.load_state_dict, fid_inception.load_state_dict_from_url = real_load, real_url
    return built[0].state_dict()


def inception_outputs(shapes: dict, images: dict) -> dict:
    state = metric_weights.synthetic_state(shapes)
    real_url = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *a, **k: state
    try:
        net = fid_inception.InceptionV3([3]).eval()  # resize_input=True, normalize_input=True
    finally:
        fid_inception.load_state_dict_from_url = real_url
    out = {}
    with torch.no_grad():
        for name, x in images.items():
            f = net(x)[0].flatten(1)
            print(f"inception {name}: features mean {f.mean():.4f} std {f.std():.4f} "
                  f"zero fraction {(f == 0).float().mean():.3f} finite {bool(torch.isfinite(f).all())}")
            out[f"inception_{name}_features"] = f
    return out


def lpips_outputs(net: str, backbone_shapes: dict, head_shapes: dict, a, b) -> dict:
    name = {"alex": "alexnet", "vgg": "vgg16"}[net]
    backbone = getattr(torchvision.models, name)()
    feats = metric_weights.synthetic_state({k: s for k, s in backbone_shapes.items() if k.startswith("features.")})
    backbone.features.load_state_dict({k[len("features."):]: v for k, v in feats.items()}, strict=True)
    tv = lpips.pretrained_networks.tv  # lpips slices the `features` of the model this returns
    real = getattr(tv, name)
    setattr(tv, name, lambda *x, **k: backbone)
    try:
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    finally:
        setattr(tv, name, real)
    result = model.load_state_dict(metric_weights.synthetic_state(head_shapes), strict=False)
    if result.unexpected_keys or any(k.startswith("lin") and not k.startswith("lins.") for k in result.missing_keys):
        raise SystemExit(f"LPIPS {net} heads did not load: {result}")
    model.eval()
    with torch.no_grad():
        total, per_layer = model(a, b, retPerLayer=True)
        outs = model.net(model.scaling_layer(a))
    for k, o in enumerate(outs):
        print(f"lpips {net} layer {k}: {tuple(o.shape)} mean {o.mean():.4f} zero fraction {(o == 0).float().mean():.3f}")
    print(f"lpips {net} distances {total.flatten().tolist()}")
    return {f"lpips_{net}_distance": total.flatten(), f"lpips_{net}_per_layer": torch.stack([r.flatten() for r in per_layer])}


def frechet_cases(g: torch.Generator) -> dict:
    """Seeded statistics: full rank (A A^T / d + 1e-3 I, dim 64) and rank-deficient (np.cov of few features)."""
    out, d = {}, 64
    for i in (1, 2):
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        out[f"fid_full_mu{i}"] = torch.randn(d, generator=g, dtype=torch.float64)
        out[f"fid_full_sigma{i}"] = a @ a.T / d + 1e-3 * torch.eye(d, dtype=torch.float64)
    for i, n in ((1, 10), (2, 12)):
        f = torch.randn(n, d, generator=g, dtype=torch.float64).numpy()
        out[f"fid_few_features{i}"] = torch.from_numpy(f)
        out[f"fid_few_mu{i}"] = torch.from_numpy(np.mean(f, axis=0))
        out[f"fid_few_sigma{i}"] = torch.from_numpy(np.cov(f, rowvar=False))
    for case in ("full", "few"):
        value = calculate_frechet_distance(*(out[f"fid_{case}_{s}"].numpy() for s in ("mu1", "sigma1", "mu2", "sigma2")))
        out[f"fid_{case}_distance"] = torch.tensor(float(value), dtype=torch.float64)
        print(f"frechet {case}: {float(value)!r}")
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    inception_shapes = write_manifest("inception", fid_inception_layout())
    with torch.device("meta"):
        alex_shapes = write_manifest("alexnet", torchvision.models.alexnet().state_dict())
        vgg_shapes = write_manifest("vgg16", torchvision.models.vgg16().state_dict())
    heads = {}
    for net in ("alex", "vgg"):
        path = HEADS / f"{net}.pth"
        data = path.read_bytes()
        print(f"{path}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
        heads[net] = write_manifest(f"lpips_{net}_heads", torch.load(path, map_location="cpu", weights_only=True))

    # uint8 images, as real ones are; the LPIPS pairs differ by noise of growing strength.
    g = torch.Generator("cpu").manual_seed(metric_weights.SEED)
    pixels = lambda *shape: torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)  # noqa: E731
    cases = {"inception_small": pixels(3, 3, 64, 64), "inception_large": pixels(2, 3, 299, 299), "lpips_a": pixels(4, 3, 64, 64)}
    noise = torch.randn(4, 3, 64, 64, generator=g) * torch.tensor([8.0, 32.0, 96.0, 255.0]).view(4, 1, 1, 1)
    cases["lpips_b"] = (cases["lpips_a"] + noise).round().clamp(0, 255).to(torch.uint8)
    cases.update(inception_outputs(inception_shapes, {size: metric_weights.images(cases[f"inception_{size}"])
                                                      for size in ("small", "large")}))
    a, b = (metric_weights.images(cases[k], lo=-1.0) for k in ("lpips_a", "lpips_b"))
    cases.update(lpips_outputs("alex", alex_shapes, heads["alex"], a, b))
    cases.update(lpips_outputs("vgg", vgg_shapes, heads["vgg"], a, b))
    cases.update(frechet_cases(g))
    meta = {"seed": str(metric_weights.SEED), **{p: version(p) for p in ("torch", "torchvision", "pytorch-fid", "lpips", "scipy")}}
    # The project's writer: a fixed header order, so the same run gives the same bytes.
    safetensors_io.write(OUT / "fixtures.safetensors", {k: (tuple(v.shape), v.dtype) for k, v in cases.items()},
                         cases.__getitem__, metadata=meta)
    (OUT / "fixtures.safetensors").chmod(0o644)
    print(f"wrote {OUT / 'fixtures.safetensors'}")


if __name__ == "__main__":
    main()
