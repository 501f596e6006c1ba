"""CLIP in the open_clip layout (ViT image tower + text tower), used to rank generated images by prompt.

Module names equal the keys of open_clip's `CLIP.state_dict()`: the image tower sits under `visual.`, and
the text tower sits at the top level (`token_embedding`, `positional_embedding`, `transformer`, `ln_final`,
`text_projection`, `logit_scale`). That text tower is the same one SD 2.x conditions on, so `CLIP` extends
`TextTransformer` with `visual` instead of repeating it.

    clip = ldm.load_clip(path)                      # open_clip-format .safetensors
    img = clip.encode_image(ldm.clip_preprocess(images, clip.image_size))
    txt = clip.encode_text(ldm.tokenize(prompts))
    cosine = ldm.nets.clip.cosine_similarity(img, txt)  # [images, prompts]
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .config import TextConfig, take
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
    vision = take(VisionConfig, config.get("vision_cfg", {}), "CLIP vision_cfg")
    text = take(TextConfig, {**config.get("text_cfg", {}), "embed_dim": config["embed_dim"]}, "CLIP text_cfg")
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
