"""ldm: the Stable Diffusion 2.x model zoo and sampler, hand-written in PyTorch.

    sd = ldm.load_checkpoint(path, device="cpu", dtype=torch.float32, prediction=None, config=None)
    sd.unet(x, t, context, control=None); sd.vae.encode(x); sd.vae.decode(z); sd.text_encoder(tokens)
    ldm.tokenize(["a photo", ...])
    clip = ldm.load_clip(path); clip.encode_image(ldm.clip_preprocess(images, clip.image_size)); clip.encode_text(tokens)

Layers: `ldm.nets` (the networks), `ldm.load` (weight files, the catalog, the loaders), `ldm.sample` (schedule,
DDIM, txt2img/img2img), `ldm.accel` (speed paths, the memory model); at the top, errors, files, images and the
commands. Names are imported on first use, so `ldm.errors` and `ldm.load.weights` (used by the `pose-detect`
command) load without torch.
"""
import importlib

_EXPORTS = {
    "StableDiffusion": ".load.checkpoint", "load_checkpoint": ".load.checkpoint",
    "load_controlnet": ".load.controlnet", "ControlNet": ".nets.controlnet",
    "CLIP": ".nets.clip", "load_clip": ".load.clip", "clip_preprocess": ".clip_transform",
    "ModelConfig": ".nets.config", "parse_config": ".nets.config",
    "UserError": ".errors", "NoiseSchedule": ".sample.schedule", "DDIM": ".sample.ddim",
    "Denoiser": ".sample.denoiser", "txt2img": ".sample.pipeline", "img2img": ".sample.pipeline",
    "tokenize": ".nets.tokenizer", "load_inception": ".load.inception", "load_lpips": ".load.lpips",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ldm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
