"""Loading single-file SD 2.x checkpoints (the original `ldm` layout) into our modules.

Module names equal the checkpoint's keys after their prefix, so loading is: read the header, tell what the
file is from its keys and shapes, build each component on the meta device, read its tensors one by one
straight into place (cast to the target dtype) and `load_state_dict(strict=True, assign=True)`.
"""
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..accel import accelerate
from ..errors import UserError, nan_advice
from ..nets.config import ModelConfig, parse_config, with_pipeline
from ..nets.text import TextTransformer
from ..nets.tokenizer import tokenize
from ..nets.unet import UNetModel
from ..nets.vae import AutoencoderKL
from ..sample.denoiser import in_batches
from ..sample.schedule import NoiseSchedule
from . import weights
from .safetensors_io import SafetensorsFile

PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text": "cond_stage_model.model.",
            "controlnet": "control_model."}
# A tensor whose spread tells the 768-v model from the 512-base eps model when nothing else does.
V_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PROBE_STD = 0.09

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if str(dtype) in _DTYPES:
        return _DTYPES[str(dtype)]
    raise UserError(f"dtype must be one of float32, float16, bfloat16, not {dtype}")


def detect(st: SafetensorsFile) -> str:
    """What a checkpoint is, from its keys and shapes: 'sd2', 'sd1', 'sdxl', 'controlnet', 'diffusers', 'unknown'."""
    keys = st.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    probe = PREFIXES["unet"] + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if probe in keys and st.shape(probe)[1] == 768:
        return "sd1"
    if any(k.startswith(PREFIXES["unet"]) for k in keys):
        return "sd2"
    if any(k.startswith(PREFIXES["controlnet"]) for k in keys):
        return "controlnet"
    if any(k.startswith(("down_blocks.", "controlnet_down_blocks.", "encoder.down_blocks.", "text_model.")) for k in keys):
        return "diffusers"
    return "unknown"


_KIND_ERRORS = {
    "sd1": "is a Stable Diffusion 1.x checkpoint (CLIP ViT-L text encoder, 768-wide context); this project needs "
           "SD 2.x: use v2-1_512-ema-pruned.safetensors or v2-1_768-ema-pruned.safetensors",
    "sdxl": "is an SDXL checkpoint; this project needs SD 2.x (v2-1_512-ema-pruned or v2-1_768-ema-pruned)",
    "controlnet": "is a ControlNet-only file (control_model.* keys): pass it as the ControlNet (--controlnet), "
                  "and an SD 2.1 checkpoint as the model",
    "diffusers": "is in the diffusers layout; this project loads the original single-file layout "
                 "(e.g. v2-1_768-ema-pruned.safetensors)",
    "unknown": "holds no Stable Diffusion weights (no model.diffusion_model.* keys)",
}


def check_kind(st: SafetensorsFile, wanted: tuple) -> str:
    kind = detect(st)
    if kind not in wanted:
        raise UserError(f"{st.path} {_KIND_ERRORS.get(kind, 'is an SD 2.x model, not a ControlNet: pass a control_model.* file')}")
    return kind


def _listing(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:4]) + (f" ... ({len(keys)} in all)" if len(keys) > 4 else "")


def key_mismatch(expected, present) -> str:
    """What keeps the key set `present` from being `expected`, in words ('' when they are equal)."""
    missing, unexpected = set(expected) - set(present), set(present) - set(expected)
    parts = ([f"missing {len(missing)} keys ({_listing(missing)})"] if missing else []) + \
            ([f"{len(unexpected)} unexpected keys ({_listing(unexpected)})"] if unexpected else [])
    return "; ".join(parts)


def load_module(st: SafetensorsFile, module: nn.Module, prefix: str, dtype: torch.dtype, what: str,
                device="cpu") -> nn.Module:
    """Fill a meta-device `module` on `device` from the file's `prefix.*` tensors: strict keys and shapes,
    each tensor read once, straight to the device."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    present = {k[len(prefix):] for k in st.keys() if k.startswith(prefix)}
    mismatch = key_mismatch(expected, present)
    if mismatch:
        raise UserError(f"{st.path}: the {what} does not match the expected architecture: {mismatch}. "
                        f"Is it the right file, and does --config describe it?")
    wrong = [k for k in expected if st.shape(prefix + k) != expected[k]]
    if wrong:
        k = wrong[0]
        raise UserError(f"{st.path}: {len(wrong)} {what} tensors have unexpected shapes (e.g. {prefix}{k} is "
                        f"{list(st.shape(prefix + k))}, expected {list(expected[k])}): pass --config for this architecture")
    state = dict((k[len(prefix):], t) for k, t in st.read_many([prefix + k for k in expected], dtype, device))
    module.load_state_dict(state, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def _prediction(st: SafetensorsFile, explicit, entry, config: ModelConfig) -> tuple:
    """(prediction type, how it was decided). The weights alone cannot tell v from eps for sure."""
    if explicit is not None:
        if explicit not in ("v", "eps"):
            raise UserError(f"prediction must be 'v' or 'eps', not {explicit!r}")
        return explicit, "given explicitly"
    if entry and entry.get("prediction"):
        return entry["prediction"], f"from the weights catalog ({entry['file']})"
    if config.prediction:
        return config.prediction, "from the config"
    std = st.read(V_PROBE, torch.float32).std().item()
    guess = "v" if std > V_PROBE_STD else "eps"
    return guess, (f"guessed from the weights ({V_PROBE.split('.', 2)[2]} std {std:.3f} "
                   f"{'>' if guess == 'v' else '<='} {V_PROBE_STD}); pass prediction='v'/'eps' if this is wrong")


def config_for(path: Path, config):
    """An explicit config, else `<file>.json` beside the checkpoint, else SD 2.1."""
    if config is None:
        beside = Path(str(path) + ".json")
        if beside.exists():
            config = beside
    return parse_config(config)


@dataclass
class StableDiffusion:
    """The three SD networks, the noise schedule and the settings they were loaded with."""
    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextTransformer
    config: ModelConfig
    schedule: NoiseSchedule
    path: str
    notes: list  # what the loader decided and why (prediction type source, ...)
    _vae_float32: AutoencoderKL = field(default=None, repr=False)  # decode_latents' fallback for float16

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def latent_shape(self, height: int, width: int) -> tuple:
        """[C, h, w] of the latents of a height x width image: the VAE halves the sides at each level but the last."""
        factor = 2 ** (len(self.config.vae.ch_mult) - 1)
        return self.config.vae.embed_dim, height // factor, width // factor

    @torch.no_grad()
    def encode_text(self, prompts) -> torch.Tensor:
        """Prompts -> SD conditioning [B, 77, C] (penultimate layer of the text encoder)."""
        return self.text_encoder(tokenize(prompts).to(self.device))

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] -> scaled latents (posterior mean x latent scale), float32; no gradients."""
        with torch.no_grad():
            mean, _ = self.vae.encode(x.to(self.device, self.dtype))
        return mean.float() * self.config.latent_scale

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, max_batch: int = None) -> torch.Tensor:
        """Scaled latents -> images [B,3,H,W] in about [-1,1], float32; at most `max_batch` latents per VAE call.

        float16's range is too small for the VAE's decoder at high resolutions: an image that comes back with
        NaN/inf from a float16 VAE is decoded again by a float32 copy of it (made on first need)."""
        def decode(vae, part):
            return vae.decode((part / self.config.latent_scale).to(next(vae.parameters()).dtype)).float()
        images = in_batches(lambda part: decode(self.vae, part), max_batch, z)
        bad = ~torch.isfinite(images).flatten(1).all(dim=1)
        if self.dtype == torch.float16 and bad.any():
            if self._vae_float32 is None:
                self._vae_float32 = copy.deepcopy(self.vae).float()
            images[bad] = in_batches(lambda part: decode(self._vae_float32, part), max_batch, z[bad])
        if not torch.isfinite(images).all():
            raise UserError(f"the decoded image contains NaN/inf: {nan_advice(self.dtype)}")
        return images


def load_checkpoint(path, device="cpu", dtype=torch.float32, prediction=None, config=None,
                    fast: bool = True) -> StableDiffusion:
    """Load an SD 2.x single-file `.safetensors` checkpoint strictly: UNet, VAE, text encoder, with the fast
    paths of `device` applied (`ldm.accel`; `fast=False`: the plain reading path).

    `prediction` ('v' | 'eps') overrides the catalog; `config` (dict, JSON path or ModelConfig) describes a
    non-SD-2.1 architecture (e.g. the tiny test fixtures); `<file>.json` beside the checkpoint is used if present.
    """
    path = Path(path)
    dtype = parse_dtype(dtype)
    st = SafetensorsFile(path)
    check_kind(st, ("sd2",))
    cfg = config_for(path, config)
    name, entry = weights.lookup(path)
    pred, how = _prediction(st, prediction, entry, cfg)
    image_size = (entry or {}).get("image_size") or cfg.image_size or (768 if pred == "v" else 512)
    cfg = with_pipeline(cfg, pred, image_size)
    with torch.device("meta"):
        unet, vae, text = UNetModel(cfg.unet), AutoencoderKL(cfg.vae), TextTransformer(cfg.text)
    modules = []
    for module, key, what in ((unet, "unet", "UNet"), (vae, "vae", "VAE"), (text, "text", "text encoder")):
        modules.append(load_module(st, module, PREFIXES[key], dtype, what, device))
    if fast:
        modules = [accelerate(m, device) for m in modules]
    notes = [f"prediction type {pred}: {how}"] + ([f"catalog entry {name}"] if name else [])
    return StableDiffusion(*modules, config=cfg, schedule=NoiseSchedule(cfg.schedule), path=os.fspath(path), notes=notes)
