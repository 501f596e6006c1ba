"""Reading plain `state_dict` files (`.pth` or `.safetensors`) safely, and loading them strictly.

The metric networks (`ldm.nets.inception`, `ldm.nets.lpips`) ship as `.pth` files. They are read with
`torch.load(weights_only=True)` only, which refuses anything but tensors and plain containers, so a
file can never run code here. Every problem becomes a one-line UserError.
"""
import os
import pickle

import torch
import torch.nn as nn

from ..errors import UserError
from .checkpoint import key_mismatch
from .safetensors_io import SafetensorsFile

# BatchNorm counters the published files may predate: BatchNorm itself fills them with 0 for such files,
# and they never affect an eval-mode forward.
OPTIONAL_SUFFIX = "num_batches_tracked"
_UNREADABLE = ("{} is not a PyTorch weights file torch.load(weights_only=True) can read (corrupt, truncated, or not "
               "a torch.save of a state dict): download it again or pass a .safetensors file")


def read_state_dict(path) -> dict:
    """{key: tensor} from a `.safetensors` file or a `.pth` holding a plain state dict."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        st = SafetensorsFile(path)
        return dict(st.read_many(st.keys()))
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist (or is not a file): download it or pass the right path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class weights_only refuses to construct
            raise UserError(f"{path} holds Python objects besides tensors, which only full unpickling (able to run "
                            f"code) could read: pass a plain state-dict .pth or a .safetensors file") from None
        raise UserError(_UNREADABLE.format(path)) from None
    except (RuntimeError, EOFError, ValueError, OSError):
        raise UserError(_UNREADABLE.format(path)) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path} holds a {type(state).__name__} that is not a state dict (names -> tensors): "
                        f"pass the published weights file itself")
    return dict(state)


def check_state(state: dict, expected: dict, path, what: str, drop: tuple = ()) -> dict:
    """`state` without the keys under the `drop` prefixes, if its keys and shapes are exactly `expected`
    ({key: shape}); missing BatchNorm counters are filled with 0."""
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    for key in expected.keys() - state.keys():
        if key.endswith(OPTIONAL_SUFFIX):
            state[key] = torch.zeros(expected[key], dtype=torch.long)
    mismatch = key_mismatch(expected, state)
    if mismatch:
        raise UserError(f"{path} is not the {what} weights file: {mismatch}. Pass the published file")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k])]
    if wrong:
        k = wrong[0]
        raise UserError(f"{path}: {len(wrong)} {what} tensors have unexpected shapes (e.g. {k} is "
                        f"{list(state[k].shape)}, expected {list(expected[k])}): pass the published file")
    return state


def expected_keys(module: nn.Module, prefix: str = "") -> dict:
    """{key: shape} of `module`'s state dict entries under `prefix`."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if k.startswith(prefix)}


def load_parts(module: nn.Module, parts, device) -> nn.Module:
    """Load `module` strictly from files: `parts` are (path, key prefix in the module, what, dropped prefixes)."""
    state = {}
    for path, prefix, what, drop in parts:
        state.update(check_state(read_state_dict(path), expected_keys(module, prefix), path, what, drop))
    module.load_state_dict(state, strict=True)
    return module.requires_grad_(False).eval().to(device)
