"""Loading open_clip-format CLIP checkpoints (`.safetensors`) into `ldm.nets.clip.CLIP`.

The architecture comes from an open_clip model config, else from the tensor shapes; the activation
(QuickGELU or GELU), which the weights cannot tell, from the config or the weights catalog.
"""
import math
import re
from dataclasses import replace
from pathlib import Path

import torch

from ..accel import accelerate
from ..errors import UserError
from ..nets.clip import CLIP, CLIPConfig, VisionConfig, parse_clip_config
from ..nets.config import TextConfig
from . import weights
from .checkpoint import detect, load_module, parse_dtype
from .safetensors_io import SafetensorsFile

# The OpenAI release's extra integer entries; open_clip's builder drops them.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# Head widths by tower width; the weights cannot tell the number of heads. Vision: ViT-B, ViT-L (OpenAI),
# ViT-H (LAION, 16 heads of 80). Text towers use heads of 64.
_HEAD_WIDTH = {"visual": {768: 64, 1024: 64, 1280: 80}, "text": {512: 64, 768: 64, 1024: 64}}
_WRONG_KIND = {
    "sd2": "is a Stable Diffusion checkpoint, not a CLIP model",
    "sd1": "is a Stable Diffusion checkpoint, not a CLIP model",
    "sdxl": "is an SDXL checkpoint, not a CLIP model",
    "controlnet": "is a ControlNet file, not a CLIP model",
    "diffusers": "is in the Hugging Face transformers/diffusers layout, not open_clip's",
}


class OpenClipFile(SafetensorsFile):
    """An open_clip checkpoint's header, normalised the way open_clip's own loader does it.

    The OpenAI integer extras are dropped, a leading `module.` (DataParallel) is stripped, and a
    `logit_scale` stored as shape [1] is read as a scalar (same bytes, so only the header changes).
    """

    def __init__(self, path):
        super().__init__(path)
        for key in _OPENAI_EXTRAS:
            if key in self.tensors and not self.dtype(key).is_floating_point and self.numel(key) == 1:
                del self.tensors[key]
        if self.tensors and all(k.startswith("module.") for k in self.tensors):
            self.tensors = {k[len("module."):]: t for k, t in self.tensors.items()}
        if self.tensors.get("logit_scale", {}).get("shape") == [1]:
            self.tensors["logit_scale"] = {**self.tensors["logit_scale"], "shape": []}


def _check_kind(st: SafetensorsFile) -> None:
    kind = detect(st)
    if kind in _WRONG_KIND:
        raise UserError(f"{st.path} {_WRONG_KIND[kind]}: pass an open_clip CLIP .safetensors (e.g. catalog "
                        f"clip-vit-l14-openai, open_clip_model.safetensors) as the CLIP model")
    if not any(k.startswith("visual.") for k in st.keys()):
        raise UserError(f"{st.path} holds no CLIP image tower (no visual.* keys): pass an open_clip "
                        f"CLIP .safetensors (open_clip_model.safetensors) as the CLIP model")


def infer_config(st: SafetensorsFile, quick_gelu: bool) -> CLIPConfig:
    """The architecture from tensor shapes; the heads from the known head widths (`_HEAD_WIDTH`)."""
    def shape(key):
        if key not in st.keys():
            raise UserError(f"{st.path} has no {key}, so it is not an open_clip CLIP checkpoint")
        return st.shape(key)

    def depth_and_head_width(prefix, name, width):
        block = re.compile(re.escape(prefix) + r"transformer\.resblocks\.\d+\.ln_1\.weight")
        layers = sum(bool(block.fullmatch(k)) for k in st.keys())
        if width not in _HEAD_WIDTH[name]:
            raise UserError(f"{st.path}: cannot tell the attention heads of a {width}-wide CLIP {name} tower from its "
                            f"weights: pass config= (an open_clip model config JSON)")
        return layers, _HEAD_WIDTH[name][width]

    width, _, patch, _ = shape("visual.conv1.weight")
    layers, head_width = depth_and_head_width("visual.", "visual", width)
    vision = VisionConfig(image_size=math.isqrt(shape("visual.positional_embedding")[0] - 1) * patch, patch_size=patch,
                          width=width, layers=layers, head_width=head_width,
                          mlp_ratio=shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0] / width)
    vocab, text_width = shape("token_embedding.weight")
    text_layers, text_head_width = depth_and_head_width("", "text", text_width)
    text = TextConfig(width=text_width, heads=text_width // text_head_width, layers=text_layers,
                      context_length=shape("positional_embedding")[0], vocab_size=vocab,
                      embed_dim=shape("text_projection")[1])
    return CLIPConfig(vision, text, quick_gelu)


def _activation(path: Path, quick_gelu, config) -> tuple:
    """(quick_gelu, how it was decided). The weights cannot tell: OpenAI-trained CLIPs need QuickGELU."""
    if quick_gelu is not None:
        return bool(quick_gelu), "given explicitly"
    if config is not None:
        return parse_clip_config(config).quick_gelu, "from the config"
    name, entry = weights.lookup(path)
    if entry and "quick_gelu" in entry:
        return bool(entry["quick_gelu"]), f"from the weights catalog ({name})"
    return False, ("not known for this file, assumed GELU (the weights cannot tell): pass quick_gelu=True "
                   "for OpenAI-trained weights")


def load_clip(path, config=None, device="cpu", dtype=torch.float32, quick_gelu=None, fast: bool = True) -> CLIP:
    """Load an open_clip-format `.safetensors` CLIP strictly (keys and shapes), cast to `dtype`.

    `config` (dict, JSON path or CLIPConfig, open_clip's model-config format) states the architecture;
    without it the sizes are read from the tensor shapes. `quick_gelu` overrides the activation, which is
    otherwise taken from the config, else from the weights catalog entry of this file, else GELU.
    The decisions are listed in `model.notes`. `fast=False` leaves out the acceleration layer (`ldm.accel`).
    """
    path = Path(path)
    dtype = parse_dtype(dtype)
    st = OpenClipFile(path)
    _check_kind(st)
    act, how = _activation(path, quick_gelu, config)
    cfg = replace(parse_clip_config(config), quick_gelu=act) if config is not None else infer_config(st, act)
    with torch.device("meta"):
        model = CLIP(cfg)
    model = load_module(st, model, "", dtype, "CLIP model", device)
    if fast:
        accelerate(model, device)
    model.notes = [f"architecture {'from the config' if config is not None else 'read from the tensor shapes'}",
                   f"activation {'QuickGELU' if act else 'GELU'}: {how}"]
    return model
