"""ldm: the Stable Diffusion 2.x model zoo and sampler, hand-written in PyTorch.

    sd = ldm.load_checkpoint(path, device="cpu", dtype=torch.float32, prediction=None, config=None)
    sd.unet(x, t, context, control=None); sd.vae.encode(x); sd.vae.decode(z); sd.text_encoder(tokens)
    ldm.tokenize(["a photo", ...])
    clip = ldm.load_clip(path); clip.encode_image(ldm.clip_preprocess(images, clip.image_size)); clip.encode_text(tokens)

Names are imported on first use, so `ldm.errors` and `ldm.weights` (used by the `pose-detect` command) load without torch.
"""
import importlib

_EXPORTS = {
    "StableDiffusion": ".checkpoint", "load_checkpoint": ".checkpoint",
    "load_controlnet": ".controlnet", "ControlNet": ".controlnet",
    "CLIP": ".clip", "load_clip": ".clip", "clip_preprocess": ".clip_transform",
    "ModelConfig": ".config", "parse_config": ".config",
    "UserError": ".errors", "NoiseSchedule": ".schedule", "DDIM": ".ddim", "tokenize": ".tokenizer",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ldm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
