"""Architecture and pipeline settings.

`None` everywhere means Stable Diffusion 2.1. A config can also be given as a dict or a JSON file in the
format of the reference fixtures (`tests/data/config.json`): the original constructor kwargs under
`unet.kwargs`, `vae.kwargs.ddconfig`, `text.kwargs.text_cfg`, `controlnet.kwargs`, plus
`parameterization`, `schedule` and `latent_scale_factor`. Widths could be read from tensor shapes, but the
number of attention heads cannot, which is why the architecture is stated rather than guessed.
"""
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: tuple = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple = (1, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = -1
    transformer_depth: int = 1
    context_dim: int = 1024
    hint_channels: int = 3  # ControlNet only


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4


@dataclass(frozen=True)
class TextConfig:
    width: int = 1024
    heads: int = 16
    layers: int = 24
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 1024


@dataclass(frozen=True)
class Schedule:
    """The DDPM training schedule: 'scaled linear' betas (ldm calls it 'linear')."""
    linear_start: float = 0.00085
    linear_end: float = 0.012
    timesteps: int = 1000


@dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    schedule: Schedule = field(default_factory=Schedule)
    prediction: str = None  # 'v' or 'eps'; None until the loader decides
    image_size: int = None  # native image size in pixels; None until the loader decides
    latent_scale: float = 0.18215


# Reference kwargs that must hold for the architecture we implement (SD 2.x); anything else is refused.
_REQUIRED = {"use_spatial_transformer": True, "use_linear_in_transformer": True, "legacy": False,
             "use_scale_shift_norm": False, "resblock_updown": False, "use_new_attention_order": False,
             "attn_resolutions": [], "double_z": True, "conv_resample": True, "dims": 2}
# Reference kwargs that do not change the function computed (training switches, unused sizes).
_IGNORED = {"image_size", "use_checkpoint", "use_fp16", "dropout", "resolution", "num_classes", "spatial_transformer_attn_type",
            "disable_self_attentions", "num_attention_blocks", "n_embed", "adm_in_channels"}


def take(cls, kwargs: dict, where: str, **renames):
    """Build dataclass `cls` from reference kwargs, refusing settings this code does not implement."""
    known = {f.name for f in fields(cls)}
    out = {}
    for key, value in kwargs.items():
        key = renames.get(key, key)
        if key in known:
            out[key] = tuple(value) if isinstance(value, list) else value
        elif key in _REQUIRED:
            if value != _REQUIRED[key] and value is not None:
                raise UserError(f"{where}: {key}={value!r} is not supported (SD 2.x uses {_REQUIRED[key]!r})")
        elif key not in _IGNORED:
            raise UserError(f"{where}: unknown setting {key!r}")
    return cls(**out)


def parse_config(config) -> ModelConfig:
    """A ModelConfig from None (SD 2.1), a ModelConfig, a dict or a JSON file path (reference format)."""
    if config is None or isinstance(config, ModelConfig):
        return config or ModelConfig()
    if isinstance(config, (str, Path)):
        try:
            with open(config) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read config {config}: {e}") from None
    unet_kw = config.get("unet", {}).get("kwargs", {})
    cn_kw = config.get("controlnet", {}).get("kwargs", {})
    unet = take(UNetConfig, {**unet_kw, **{k: v for k, v in cn_kw.items() if k == "hint_channels"}}, "unet config")
    vae_kw = config.get("vae", {}).get("kwargs", {})
    vae = take(VAEConfig, {**vae_kw.get("ddconfig", {}), "embed_dim": vae_kw.get("embed_dim", 4)}, "vae config")
    text_kw = config.get("text", {}).get("kwargs", {})
    text = take(TextConfig, {**text_kw.get("text_cfg", {}), "embed_dim": text_kw.get("embed_dim", TextConfig.embed_dim)},
                 "text config")
    sched = {k: v for k, v in config.get("schedule", {}).items() if k in ("linear_start", "linear_end", "timesteps")}
    image_size = config.get("image_size") or (8 * unet_kw["image_size"] if "image_size" in unet_kw else None)
    return ModelConfig(unet=unet, vae=vae, text=text, schedule=Schedule(**sched),
                       prediction=config.get("parameterization"), image_size=image_size,
                       latent_scale=config.get("latent_scale_factor", ModelConfig.latent_scale))


def with_pipeline(config: ModelConfig, prediction: str, image_size: int) -> ModelConfig:
    return replace(config, prediction=prediction, image_size=image_size)
