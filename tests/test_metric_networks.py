"""Inception v3 (FID) and LPIPS against outputs of the original pytorch-fid 0.3.0 and lpips 0.1.4.

The weights are the seeded synthetic ones of tests/metric_weights.py in the real layouts, written here as
.pth and .safetensors and read through our loaders; the golden outputs and the layout manifests come from
tools/make_metric_fixtures.py, run once in a throwaway environment with the original packages.
"""
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DATA
from ldm.errors import UserError
from ldm.load.inception import load_inception
from ldm.load.lpips import load_lpips
from ldm.load.state_dicts import check_state, expected_keys
from ldm.nets.inception import InceptionV3, feature_statistics, frechet_distance
from ldm.nets.lpips import LPIPS
from metric_weights import images, manifest, synthetic_state

TOL = 1e-4
BACKBONE = {"alex": "alexnet", "vgg": "vgg16"}


@pytest.fixture(scope="module")
def fixtures():
    return load_file(DATA / "metrics" / "fixtures.safetensors")


def save(state: dict, path):
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def backbone_state(net: str) -> dict:
    """The backbone file: real `features.*`; `classifier.*` (dropped by name, unread) as small stand-ins."""
    layout = manifest(BACKBONE[net])
    state = synthetic_state({k: s for k, s in layout.items() if k.startswith("features.")})
    return {**state, **{k: torch.zeros(2) for k in layout if k.startswith("classifier.")}}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("metric_weights")
    files = {}
    for ext in ("pth", "safetensors"):
        files["inception", ext] = save(synthetic_state(manifest("inception")), d / f"inception.{ext}")
        for net in BACKBONE:
            files[net, ext] = save(backbone_state(net), d / f"{net}.{ext}")
            files[f"{net}_heads", ext] = save(synthetic_state(manifest(f"lpips_{net}_heads")), d / f"{net}_heads.{ext}")
    return files


def max_errors(ours, ref) -> tuple:
    err = (ours - ref).abs().max().item()
    return err, err / ref.abs().max().item()


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_inception_matches_pytorch_fid(weight_files, fixtures, ext):
    net = load_inception(weight_files["inception", ext])
    with torch.no_grad():
        for size in ("small", "large"):
            ref = fixtures[f"inception_{size}_features"]
            ours = net(images(fixtures[f"inception_{size}"]))
            assert ours.shape == ref.shape
            assert max_errors(ours, ref)[0] < TOL


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
@pytest.mark.parametrize("net_name", ["alex", "vgg"])
def test_lpips_matches_lpips_package(weight_files, fixtures, net_name, ext):
    net = load_lpips(net_name, weight_files[net_name, ext], weight_files[f"{net_name}_heads", ext])
    a, b = (images(fixtures[k], lo=-1.0) for k in ("lpips_a", "lpips_b"))
    with torch.no_grad():
        fa, fb = net.layers(a), net.layers(b)
        per_layer = torch.stack([getattr(net, f"lin{k}")((x - y) ** 2).mean(dim=(1, 2, 3)) for k, (x, y) in enumerate(zip(fa, fb))])
        assert max_errors(per_layer, fixtures[f"lpips_{net_name}_per_layer"])[0] < TOL
        assert max_errors(net.distance(fa, fb), fixtures[f"lpips_{net_name}_distance"])[0] < TOL
        assert max_errors(net(a, b), fixtures[f"lpips_{net_name}_distance"])[0] < TOL
        # A sequence: each frame once, then adjacent distances from slices of the features.
        frames = torch.cat([a[:1], b[:1], a[1:2]])
        feats = net.layers(frames)
        steps = net.distance([f[:-1] for f in feats], [f[1:] for f in feats])
        assert torch.allclose(steps, torch.stack([net(a[:1], b[:1])[0], net(b[:1], a[1:2])[0]]), atol=1e-6)


def test_frechet_distance_full_rank(fixtures):
    stats = [fixtures[f"fid_full_{s}"] for s in ("mu1", "sigma1", "mu2", "sigma2")]
    ref = fixtures["fid_full_distance"].item()
    assert abs(frechet_distance(*stats) - ref) < 1e-8 * ref
    assert abs(frechet_distance(stats[0], stats[1], stats[0], stats[1])) < 1e-8


def test_frechet_distance_rank_deficient(fixtures):
    for i in (1, 2):
        mu, sigma = feature_statistics(fixtures[f"fid_few_features{i}"])
        assert abs(mu - fixtures[f"fid_few_mu{i}"].numpy()).max() < 1e-12
        assert abs(sigma - fixtures[f"fid_few_sigma{i}"].numpy()).max() < 1e-12
    stats = [fixtures[f"fid_few_{s}"] for s in ("mu1", "sigma1", "mu2", "sigma2")]
    ref = fixtures["fid_few_distance"].item()
    assert abs(frechet_distance(*stats) - ref) < 1e-6 * ref


def keys_and_shapes(module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_full_size_modules_have_the_real_layouts():
    with torch.device("meta"):
        inception, alex, vgg = InceptionV3(), LPIPS("alex"), LPIPS("vgg")
    assert keys_and_shapes(inception) == {k: s for k, s in manifest("inception").items() if not k.startswith("fc.")}
    for net, module in (("alex", alex), ("vgg", vgg)):
        backbone = {k: s for k, s in manifest(BACKBONE[net]).items() if not k.startswith("classifier.")}
        assert keys_and_shapes(module) == {**backbone, **manifest(f"lpips_{net}_heads")}


def test_missing_batchnorm_counters_are_filled():
    # Files saved before BatchNorm had `num_batches_tracked` lack it; BatchNorm itself fills in 0.
    expected = expected_keys(torch.nn.BatchNorm2d(4))
    state = check_state({k: torch.ones(s) for k, s in expected.items() if "num_batches" not in k}, expected, "f.pth", "test")
    assert state.keys() == expected.keys() and state["num_batches_tracked"].item() == 0


class NotATensor:
    pass


def one_line_error(load, *args) -> str:
    with pytest.raises(UserError) as e:
        load(*args)
    message = str(e.value)
    assert "\n" not in message and message
    return message


def test_bad_files_give_one_line_errors(weight_files, tmp_path):
    heads = weight_files["alex_heads", "pth"]
    assert "does not exist" in one_line_error(load_inception, tmp_path / "nothing.pth")
    assert "does not exist" in one_line_error(load_inception, tmp_path / "nothing.safetensors")
    torch.save({"weight": NotATensor()}, tmp_path / "objects.pth")
    assert "full unpickling" in one_line_error(load_inception, tmp_path / "objects.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert "not a state dict" in one_line_error(load_inception, tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all" * 10)
    assert "corrupt" in one_line_error(load_inception, tmp_path / "garbage.pth")
    (tmp_path / "truncated.pth").write_bytes((weight_files["alex_heads", "pth"]).read_bytes()[:3000])
    assert "corrupt" in one_line_error(load_inception, tmp_path / "truncated.pth")
    with open(tmp_path / "pickle.pth", "wb") as f:
        pickle.dump({"weight": NotATensor()}, f, protocol=2)
    assert "full unpickling" in one_line_error(load_inception, tmp_path / "pickle.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    assert "not a .safetensors file" in one_line_error(load_inception, tmp_path / "garbage.safetensors")
    assert "missing" in one_line_error(load_inception, heads)
    assert "missing" in one_line_error(load_lpips, "alex", heads, heads)
    assert "unexpected shapes" in one_line_error(load_lpips, "alex", weight_files["alex", "pth"], weight_files["vgg_heads", "pth"])
    state = torch.load(heads, weights_only=True)
    state["lin0.model.1.weight"] = torch.zeros(1, 65, 1, 1)
    assert "lin0.model.1.weight is [1, 65, 1, 1], expected [1, 64, 1, 1]" in \
        one_line_error(load_lpips, "alex", weight_files["alex", "pth"], save(state, tmp_path / "wrong.safetensors"))
    assert "one of alex, vgg" in one_line_error(LPIPS, "squeeze")
