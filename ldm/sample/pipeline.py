"""Text-to-image and image-to-image with a loaded SD 2.x model: the glue between the networks, the
DDIM sampler and the latent scale. Everything random comes from one seeded CPU generator (`ldm.sample.rng`), so
a seed gives the same noise on every device.
"""
from ..errors import UserError
from ..images import to_pil, to_tensor
from . import rng
from .ddim import DDIM
from .denoiser import Denoiser


def _denoise(sd, sampler: DDIM, z, prompt: str, negative: str, guidance: float, start, generator, callback):
    cond, uncond = sd.encode_text([prompt]), sd.encode_text([negative])
    return sampler.sample(Denoiser(sd.unet), z, cond, uncond, guidance, start=start, callback=callback,
                          generator=generator)


def txt2img(sd, prompt: str, negative: str = "", steps: int = 200, guidance: float = 9.0, seed: int = 0,
            size=None, eta: float = 0.0, callback=None):
    """A PIL image for `prompt` at `size` = (width, height) (default: the model's native size)."""
    w, h = size or (sd.config.image_size, sd.config.image_size)
    if w % 64 or h % 64:
        raise UserError(f"image size must be a multiple of 64, not {w}x{h}")
    g = rng.generator(seed)
    z = rng.randn((1, *sd.latent_shape(h, w)), g, sd.device)
    z = _denoise(sd, DDIM(sd.schedule, sd.config.prediction, steps, eta), z, prompt, negative, guidance, None, g, callback)
    return to_pil(sd.decode_latents(z))[0]


def img2img_start(strength: float, num_steps: int) -> int:
    """The DDIM step index img2img starts from: it runs int(strength * S) of the S steps."""
    if not 0.0 < strength <= 1.0:
        raise UserError(f"strength must be in (0, 1], not {strength}")
    start = int(strength * num_steps) - 1
    if start < 0:
        raise UserError(f"strength {strength} runs no step of a {num_steps}-step schedule: raise --strength or --steps")
    return start


def img2img(sd, image, prompt: str, negative: str = "", strength: float = 0.5, steps: int = 200,
            guidance: float = 9.0, seed: int = 0, eta: float = 0.0, callback=None):
    """Re-imagine a PIL image: noise its latent to `strength` of the schedule and denoise with the prompt.

    As the reference img2img, strength s runs int(s * S) of the S DDIM steps; here the latent is noised
    to exactly the timestep of the first step it runs (the reference noises one step further).
    """
    g = rng.generator(seed)
    sampler = DDIM(sd.schedule, sd.config.prediction, steps, eta)
    start = img2img_start(strength, len(sampler))
    z0 = sd.encode_images(to_tensor(image))
    zt = sd.schedule.q_sample(z0, int(sampler.timesteps[start]), rng.randn(z0.shape, g, sd.device))
    z = _denoise(sd, sampler, zt, prompt, negative, guidance, start, g, callback)
    return to_pil(sd.decode_latents(z))[0]
