"""Loading a ControlNet (`control_model.*` tensors) from a single-file checkpoint into `ldm.nets.controlnet`."""
from dataclasses import replace
from pathlib import Path

import torch

from ..accel import accelerate
from ..nets.controlnet import ControlNet
from .checkpoint import PREFIXES, check_kind, config_for, load_module, parse_dtype
from .safetensors_io import SafetensorsFile


def load_controlnet(path, device="cpu", dtype=torch.float32, config=None, fast: bool = True) -> ControlNet:
    """Load the `control_model.*` tensors of a single-file checkpoint (ControlNet-only or SD + ControlNet);
    `fast=False` leaves out the acceleration layer (`ldm.accel`)."""
    st = SafetensorsFile(path)
    if not any(k.startswith(PREFIXES["controlnet"]) for k in st.keys()):
        check_kind(st, ("controlnet",))
    cfg = config_for(Path(path), config).unet
    hint_key = PREFIXES["controlnet"] + "input_hint_block.0.weight"
    if hint_key in st.keys():
        cfg = replace(cfg, hint_channels=st.shape(hint_key)[1])
    with torch.device("meta"):
        net = ControlNet(cfg)
    net = load_module(st, net, PREFIXES["controlnet"], parse_dtype(dtype), "ControlNet", device)
    return accelerate(net, device) if fast else net
