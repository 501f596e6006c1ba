"""Full-size modules, built on the meta device, have exactly the real checkpoints' keys and shapes."""
import json

import pytest
import torch

from conftest import DATA
from ldm.load.checkpoint import PREFIXES
from ldm.nets.config import ModelConfig
from ldm.nets.controlnet import ControlNet
from ldm.nets.text import TextTransformer
from ldm.nets.unet import UNetModel
from ldm.nets.vae import AutoencoderKL

SD21 = json.loads((DATA / "sd21_checkpoint_keys.json").read_text())


def keys_and_shapes(module, prefix):
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("section,build", [
    ("unet", lambda c: UNetModel(c.unet)),
    ("vae", lambda c: AutoencoderKL(c.vae)),
    ("text", lambda c: TextTransformer(c.text)),
])
def test_sd21_manifest(section, build):
    with torch.device("meta"):
        module = build(ModelConfig())
    ours = keys_and_shapes(module, PREFIXES[section])
    ref = SD21[section]
    assert sorted(ours.keys() - ref.keys()) == []
    assert sorted(ref.keys() - ours.keys()) == []
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    assert sum(torch.Size(s).numel() for s in ours.values()) == SD21["counts"][section]["values"]


def test_controlnet_manifest():
    ref = json.loads((DATA / "controlnet_sd21_keys.json").read_text())
    with torch.device("meta"):
        ours = keys_and_shapes(ControlNet(ModelConfig().unet), PREFIXES["controlnet"])
    assert ours == ref


def test_schedule_buffers_are_the_manifest_keys():
    from ldm.sample.schedule import schedule_buffers
    buffers = schedule_buffers()
    assert {k: list(v.shape) for k, v in buffers.items()} == SD21["schedule_buffers"]
