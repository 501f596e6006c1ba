"""Textual inversion of the whole prompt embedding (Section 4.2), as the authors' `learn_conditioning`.

The full 77 x C conditioning tensor of each input image (not a new token) is optimised so that the model
denoises that image well, and so is the negative embedding, shared by both images. Each iteration draws one
DDIM step u in [S/3, 2S/3) and, at its timestep t, for image 1 and then image 2:

    x = augment(image)                    colour jitter, then a random resized crop to the working size
    z_t = sqrt(abar_t) E(x) + sqrt(1 - abar_t) eps
    eps_hat = guided prediction out(uncond) + w (out(cond_i) - out(uncond)), as eps (v-models converted)
    loss_i = || eps_hat - eps ||^2, then one Adam step

so each image's embedding gets one update per iteration and the shared negative two (the authors' Adam
over [cond1, cond2, uncond] with gradients cleared to None between the two steps). Adam, lr 1e-4, 100-500
iterations. Results are cached on disk by a key of everything they depend on.

The backward pass reads the UNet's activations kept from the forward pass where they fit in the memory that
is free; else each block runs again in the backward pass (gradient checkpointing, as the reference trains),
the same gradients at 1.2-1.4x the time of a step.
"""
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ldm.accel import memory
from ldm.files import user_cache
from ldm.load import safetensors_io
from ldm.load.safetensors_io import SafetensorsFile
from ldm.sample import rng
from ldm.sample.ddim import DDIM
from ldm.sample.denoiser import Denoiser

from .augment import augment

# Bumped whenever the optimisation changes, so that no cached result of another algorithm is reused.
ALGORITHM = "learn_conditioning-2"


def denoising_loss(sd, sampler: DDIM, z0, index: int, noise, cond, uncond, guidance: float) -> torch.Tensor:
    """|| guided eps prediction at z_t - eps ||^2 for one image at DDIM step `index` (z0 [1,4,h,w])."""
    t = int(sampler.timesteps[index])
    zt = sd.schedule.q_sample(z0, t, noise)
    out_u, out_c = Denoiser(sd.unet)(torch.cat([zt, zt]), t, torch.cat([uncond, cond])).float().chunk(2)
    eps, _ = sampler.eps_and_x0(out_u + guidance * (out_c - out_u), zt, index)
    return F.mse_loss(eps, noise.float())


def activations_fit(sd, images: torch.Tensor, uncond: torch.Tensor) -> bool:
    """Whether a training step on images like `images` [2,3,H,W] with embeddings like `uncond` [1,L,width] (a
    guided pair of rows) can keep the UNet's activations for its backward pass in the memory the device has
    free (`ldm.accel.memory`)."""
    free = memory.free_bytes(sd.device)
    latent, context = sd.latent_shape(*images.shape[2:]), tuple(uncond.shape[1:])
    return free is not None and memory.training_cost(sd.unet, latent, context).bytes(2) <= memory.USABLE * free


def invert(sd, images: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, steps: int = 200,
           iterations: int = 200, lr: float = 1e-4, guidance: float = 7.5, seed: int = 0, callback=None,
           keep_activations: bool = None) -> tuple:
    """Optimise (cond [2,77,C], one per image; uncond [1,77,C], shared) for images [2,3,H,W] in [-1,1]
    on the `steps`-step DDIM grid. `keep_activations`: whether the backward pass reads the UNet's activations
    kept from the forward pass or runs each block again (None: kept where they fit, `activations_fit`).

    Returns the optimised tensors (float32, detached) and the two losses of every iteration.
    """
    g = rng.generator(seed, "inversion")
    sampler = DDIM(sd.schedule, sd.config.prediction, steps)
    conds = [torch.nn.Parameter(c[None].float().clone()) for c in cond]
    neg = torch.nn.Parameter(uncond.float().clone())
    opt = torch.optim.Adam(conds + [neg], lr=lr)
    # The gradients reaching the embeddings are ~1e-4 to 1e-6, which a float16 backward pass flushes to zero:
    # there the loss is scaled up for the backward pass and the gradients scaled back before the step (a step
    # whose gradients overflowed is skipped and the scale lowered). Other dtypes have float32's range.
    scaler = torch.amp.GradScaler(sd.device.type, enabled=sd.dtype == torch.float16)
    S, losses = len(sampler), []
    if keep_activations is None:
        keep_activations = activations_fit(sd, images, uncond)
    sd.unet.gradient_checkpointing = not keep_activations
    try:
        for it in range(iterations):
            index = rng.randint(S // 3, 2 * S // 3, g)  # one timestep for both images
            pair = []
            for i in range(2):
                z0 = sd.encode_images(augment(images[i:i + 1], g))
                noise = rng.randn(z0.shape, g, z0.device)
                loss = denoising_loss(sd, sampler, z0, index, noise, conds[i], neg, guidance)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)  # the other image's embedding has no gradient: Adam skips it
                pair.append(loss.item())
            losses.append(pair)
            if callback is not None:
                callback(it, pair)
    finally:
        sd.unet.gradient_checkpointing = False
    return torch.cat([c.detach() for c in conds]), neg.detach(), losses


def cache_key(images: torch.Tensor, prompts: list, negative: str, model: dict, **settings) -> str:
    """A digest of everything an inversion result depends on: the images as given to it, the prompts, the
    model (`model`: its identity, prediction type, dtype and device type) and the optimisation settings."""
    h = hashlib.sha256(images.float().cpu().numpy().tobytes())
    h.update(json.dumps({"algorithm": ALGORITHM, "shape": list(images.shape), "prompts": prompts,
                         "negative": negative, "model": model, **settings}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def cache_dir() -> Path:
    """Where inversion results are kept: $SD_INTERP_CACHE, else the user's cache."""
    return Path(os.environ.get("SD_INTERP_CACHE") or user_cache()) / "inversion"


def load_embeddings(path) -> tuple:
    st = SafetensorsFile(path)
    return st.read("cond"), st.read("uncond")


def save_embeddings(path, cond, uncond) -> None:
    tensors = {"cond": cond.detach().float().cpu(), "uncond": uncond.detach().float().cpu()}
    safetensors_io.write(path, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, tensors.__getitem__)


def cached_invert(sd, images, cond, uncond, key: str, **kwargs) -> tuple:
    """`invert`, or its stored result for `key`; returns (cond, uncond, losses or None when cached)."""
    path = cache_dir() / f"{key}.safetensors"
    if path.exists():
        return (*load_embeddings(path), None)
    cond, uncond, losses = invert(sd, images, cond, uncond, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_embeddings(path, cond, uncond)
    return cond, uncond, losses
