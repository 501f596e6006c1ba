"""CLIP in the open_clip layout (ViT image tower + text tower), used to rank generated images by prompt.

Module names equal the keys of open_clip's `CLIP.state_dict()`: the image tower sits under `visual.`, and
the text tower sits at the top level (`token_embedding`, `positional_embedding`, `transformer`, `ln_final`,
`text_projection`, `logit_scale`). That text tower is the same one SD 2.x conditions on, so `CLIP` extends
`TextTransformer` with `visual` instead of repeating it.

    clip = ldm.load_clip(path)                      # open_clip-format .safetensors
    img = clip.encode_image(ldm.clip_preprocess(images, clip.image_size))
    txt = clip.encode_text(ldm.tokenize(prompts))
    cosine = ldm.clip.cosine_similarity(img, txt)  # [images, prompts]
"""
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import weights
from .accel import accelerate
from .checkpoint import detect, load_module, parse_dtype
from .config import TextConfig, _take
from .errors import UserError
from .safetensors_io import SafetensorsFile
from .text import TextTransformer
from .transformer import Transformer


@dataclass(frozen=True)
class VisionConfig:
    """open_clip `vision_cfg` (its defaults); only plain class-token ViTs are implemented."""
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class CLIPConfig:
    """open_clip model config; the defaults are OpenAI's ViT-L/14 (`ViT-L-14-quickgelu`)."""
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(patch_size=14, width=1024, layers=24))
    text: TextConfig = field(default_factory=lambda: TextConfig(width=768, heads=12, layers=12, embed_dim=768))
    quick_gelu: bool = True


def parse_clip_config(config) -> CLIPConfig:
    """A CLIPConfig from None (ViT-L/14 OpenAI), a CLIPConfig, or an open_clip model-config dict / JSON file.

    The format is open_clip's `model_configs/*.json`: `embed_dim`, `quick_gelu` (default false),
    `vision_cfg` and `text_cfg`. Settings this code does not implement are refused.
    """
    if config is None or isinstance(config, CLIPConfig):
        return config or CLIPConfig()
    if isinstance(config, (str, Path)):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read CLIP config {config}: {e}") from None
    unknown = sorted(config.keys() - {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"})
    if unknown or "embed_dim" not in config:
        raise UserError(f"CLIP config: {'unsupported settings ' + str(unknown) if unknown else 'embed_dim is missing'} "
                        f"(expected open_clip's model config: embed_dim, quick_gelu, vision_cfg, text_cfg)")
    vision = _take(VisionConfig, config.get("vision_cfg", {}), "CLIP vision_cfg")
    text = _take(TextConfig, {**config.get("text_cfg", {}), "embed_dim": config["embed_dim"]}, "CLIP text_cfg")
    if vision.width % vision.head_width:
        raise UserError(f"CLIP vision_cfg: width {vision.width} is not a multiple of head_width {vision.head_width}")
    return CLIPConfig(vision, text, bool(config.get("quick_gelu", False)))


class VisionTransformer(nn.Module):
    """open_clip `VisionTransformer`: patch conv (no bias), class token 0, ln_pre, blocks, ln_post, `@ proj`."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, quick_gelu: bool):
        super().__init__()
        w = cfg.width
        self.image_size = cfg.image_size
        self.conv1 = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.grid ** 2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.layers, w // cfg.head_width, int(w * cfg.mlp_ratio), quick_gelu)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.empty(w, embed_dim))  # applied as x @ proj, not like a Linear weight

    def embed(self, images):
        """[B,3,S,S] -> [B, 1 + grid^2, width]: the class token, then the patches row by row, plus positions."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.image_size,) * 2:
            raise UserError(f"CLIP expects images [B,3,{self.image_size},{self.image_size}], got {list(images.shape)}: "
                            f"use ldm.clip_preprocess(images, {self.image_size})")
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding

    def pool(self, images):
        """ln_post of the class token after all blocks (no attention mask): [B, width]."""
        return self.ln_post(self.transformer(self.ln_pre(self.embed(images)))[:, 0])

    def forward(self, images):
        return self.pool(images) @ self.proj


class CLIP(TextTransformer):
    """open_clip `CLIP`: the text tower's modules at the top level (inherited) and the image tower as `visual`."""

    def __init__(self, cfg: CLIPConfig = None):
        cfg = parse_clip_config(cfg)
        super().__init__(cfg.text, cfg.quick_gelu)
        self.visual = VisionTransformer(cfg.vision, cfg.text.embed_dim, cfg.quick_gelu)
        self.config = cfg
        self.notes = []  # what load_clip decided and why

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    def encode_image(self, images):
        """Normalised images [B,3,S,S] (see clip_preprocess) -> features [B, embed_dim], not L2-normalised."""
        return self.visual(images.to(self.visual.proj.device, self.visual.proj.dtype))

    def encode_text(self, tokens):
        """Tokens [B,77] -> features [B, embed_dim] (EOT token of the last block, projected), not normalised."""
        return self.pooled(tokens.to(self.token_embedding.weight.device))

    def forward(self, images, tokens):
        """logits_per_image [B_images, B_texts] = exp(logit_scale) * cosine similarity, as open_clip scores."""
        return self.logit_scale.exp() * cosine_similarity(self.encode_image(images), self.encode_text(tokens))


def cosine_similarity(image_features, text_features):
    """[Bi, D] x [Bt, D] -> [Bi, Bt] cosines of the L2-normalised features (open_clip uses F.normalize)."""
    return F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


# --- loading -----------------------------------------------------------------------------------------

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
