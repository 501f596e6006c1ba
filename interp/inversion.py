"""Textual inversion of the whole prompt embedding (Section 4.2).

For each input image the full 77 x C conditioning tensor (not a new token) is optimised so that the
model denoises that image well; the negative embedding is optimised too, shared by both images. As the
authors' released code does, the loss is taken on the guidance-combined prediction

    pred = out(uncond) + w (out(cond_i) - out(uncond)),   loss = || pred - target ||^2,

(target: the noise for eps-models, v for v-models), with timesteps drawn from the middle third of the
schedule, the two images alternating step by step, and small random crops and colour jitter of the
image at every step. Adam, lr 1e-4, 100-500 steps. Results are cached on disk by a key of everything
they depend on, so a rerun does not repeat the optimisation.
"""
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ldm import safetensors_io
from ldm.pipeline import encode_images
from ldm.safetensors_io import SafetensorsFile


def augment(x: torch.Tensor, generator: torch.Generator, crop: float = 0.9, jitter: float = 0.05) -> torch.Tensor:
    """A random crop of at least `crop` of each side, resized back, then brightness / contrast /
    saturation scaled by up to +-`jitter`; x [1,3,H,W] in [-1, 1]."""
    _, _, h, w = x.shape
    r = torch.rand(6, generator=generator)
    s = crop + (1 - crop) * r[0]
    ch, cw = max(8, int(h * s)), max(8, int(w * s))
    top, left = int((h - ch) * r[1]), int((w - cw) * r[2])
    x = F.interpolate(x[:, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear", align_corners=False)
    brightness, contrast, saturation = (1 + jitter * (2 * r[3:] - 1)).tolist()
    x = (x + 1) / 2 * brightness
    x = _luma(x).mean() + (x - _luma(x).mean()) * contrast
    x = _luma(x) + (x - _luma(x)) * saturation
    return x.clamp(0, 1) * 2 - 1


def _luma(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def denoising_loss(sd, z0, t: int, noise, cond, uncond, guidance: float) -> torch.Tensor:
    """|| guided prediction at z_t - target ||^2 for one image (latent z0 [1,4,h,w], cond/uncond [1,77,C])."""
    zt = sd.schedule.q_sample(z0, t, noise)
    target = noise if sd.config.prediction == "eps" else sd.schedule.v_target(z0, t, noise)
    out_u, out_c = sd.unet(torch.cat([zt, zt]).to(sd.dtype), torch.tensor([t, t], device=zt.device),
                           torch.cat([uncond, cond]).to(sd.dtype)).float().chunk(2)
    return F.mse_loss(out_u + guidance * (out_c - out_u), target)


def invert(sd, images: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, steps: int = 200, lr: float = 1e-4,
           guidance: float = 9.0, seed: int = 0, callback=None) -> tuple:
    """Optimise (cond [2,77,C] one per image, uncond [1,77,C] shared) for images [2,3,H,W] in [-1,1].

    Returns the optimised tensors (float32, detached) and the loss of every step.
    """
    g = torch.Generator().manual_seed(seed)
    conds = [torch.nn.Parameter(c[None].float().clone()) for c in cond]
    neg = torch.nn.Parameter(uncond.float().clone())
    opt = torch.optim.Adam(conds + [neg], lr=lr)
    T = sd.schedule.num_timesteps
    losses = []
    sd.unet.gradient_checkpointing = True
    try:
        for step in range(steps):
            i = step % 2  # alternate the images
            z0 = encode_images(sd, augment(images[i:i + 1], g))
            t = int(torch.randint(T // 3, 2 * T // 3, (1,), generator=g))  # the middle third
            noise = torch.randn(z0.shape, generator=g).to(z0.device)
            loss = denoising_loss(sd, z0, t, noise, conds[i], neg, guidance)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if callback is not None:
                callback(step, losses[-1])
    finally:
        sd.unet.gradient_checkpointing = False
    return torch.cat([c.detach() for c in conds]), neg.detach(), losses


def cache_key(images: torch.Tensor, prompts: list, negative: str, model_id: str, **settings) -> str:
    """A digest of everything an inversion result depends on."""
    h = hashlib.sha256(images.float().cpu().numpy().tobytes())
    h.update(json.dumps({"prompts": prompts, "negative": negative, "model": model_id, **settings},
                        sort_keys=True).encode())
    return h.hexdigest()[:32]


def cache_dir() -> Path:
    return Path(os.environ.get("SD_INTERP_CACHE", Path.home() / ".cache" / "sd-interp")) / "inversion"


def cached_invert(sd, images, cond, uncond, key: str, **kwargs) -> tuple:
    """`invert`, or its stored result for `key`; returns (cond, uncond, losses or None when cached)."""
    path = cache_dir() / f"{key}.safetensors"
    if path.exists():
        st = SafetensorsFile(path)
        return st.read("cond"), st.read("uncond"), None
    cond, uncond, losses = invert(sd, images, cond, uncond, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"cond": cond.cpu(), "uncond": uncond.cpu()}
    safetensors_io.write(path, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, tensors.__getitem__)
    return cond, uncond, losses
