"""Loading the SD model a run asks for: which checkpoint, on which device, in which dtype, compiled or not
(`ModelOptions`, the typed options every caller hands over), and the checks a user can act on."""
from dataclasses import dataclass

import torch

from ..accel import compile_model, default_dtype
from ..errors import UserError
from .checkpoint import load_checkpoint, parse_dtype
from .weights import resolve

DEFAULT_MODEL = "sd21-512-base"


def default_device() -> str:
    """The GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ModelOptions:
    ckpt: str = DEFAULT_MODEL  # checkpoint path or weights-catalog name
    config: str = None         # architecture JSON for non-SD-2.1 checkpoints
    prediction: str = None     # "eps" or "v": overrides the checkpoint's
    device: str = "cpu"
    dtype: str = "auto"        # float32, float16, bfloat16 or auto (`ldm.accel.default_dtype`)
    compile: bool = False      # torch.compile the UNet (on CUDA the VAE decoder too)


def check_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return parse_dtype(name)
    return default_dtype(device)


def load_model(options: ModelOptions):
    """The SD checkpoint of `options` on its device and dtype, compiled if asked (its `notes` say what was
    found and chosen)."""
    device = check_device(options.device)
    sd = load_checkpoint(resolve(options.ckpt, "sd"), device=device, dtype=resolve_dtype(options.dtype, device),
                         prediction=options.prediction, config=options.config)
    if options.compile:
        compile_model(sd.unet, device)
        if device.type == "cuda":  # (on CPUs each batch size of the decoder would compile and freeze anew)
            compile_model(sd.vae.decoder, device)
    return sd
