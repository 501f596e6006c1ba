"""ldm: the Stable Diffusion 2.x model zoo and sampler, hand-written in PyTorch.

    sd = ldm.load_checkpoint(path, device="cpu", dtype=torch.float32, prediction=None, config=None)
    sd.unet(x, t, context, control=None); sd.vae.encode(x); sd.vae.decode(z); sd.text_encoder(tokens)
    ldm.tokenize(["a photo", ...])
"""
from .checkpoint import StableDiffusion, load_checkpoint
from .config import ModelConfig, parse_config
from .errors import UserError
from .schedule import NoiseSchedule
from .tokenizer import tokenize

__all__ = ["StableDiffusion", "load_checkpoint", "ModelConfig", "parse_config", "UserError", "NoiseSchedule", "tokenize"]
