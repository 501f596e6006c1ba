"""CLIP's evaluation image transform (open_clip `image_transform(size, is_train=False)`), without torchvision.

Steps, as torchvision performs them on PIL images: resize the shorter side to `size` with PIL bicubic (the
longer side becomes int(size * long / short)), centre-crop size x size at top = int(round((h - size) / 2)),
divide by 255, normalise with OpenAI's mean and std. PIL does the resize so the result is bit-identical
(it rounds to uint8 after each of its two passes, which torch's interpolate does not reproduce).
"""
import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .images import to_pil

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    short, long = min(w, h), max(w, h)
    other = int(size * long / short)
    return image.resize((size, other) if w <= h else (other, size), Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return image.crop((left, top, left + size, top + size))


def _as_pil_list(images, value_range) -> list:
    if isinstance(images, torch.Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise UserError(f"clip_preprocess: a tensor must be [B,3,H,W] or [3,H,W], got {list(images.shape)}")
        if x.dtype == torch.uint8:
            images = x.permute(0, 2, 3, 1).cpu().numpy()
        else:  # rounded to uint8 exactly as the saved PNG (images.to_pil works on [-1, 1])
            lo, hi = value_range
            images = to_pil(x if (lo, hi) == (-1, 1) else (x.float() - lo) / (hi - lo) * 2 - 1)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise UserError(f"clip_preprocess: arrays must be uint8 HxWx3 (RGB), got {im.dtype} {list(im.shape)}")
            im = Image.fromarray(im)
        if not isinstance(im, Image.Image):
            raise UserError(f"clip_preprocess: expected PIL images, uint8 HxWx3 arrays or a float tensor, "
                            f"got {type(im).__name__}")
        out.append(im.convert("RGB"))
    return out


def clip_preprocess(images, size: int = 224, value_range=(-1.0, 1.0)) -> torch.Tensor:
    """Images -> CLIP input [B,3,size,size] float32 on the CPU.

    `images`: a PIL image, a uint8 HxWx3 array, a list of these, a uint8 [B,H,W,3] array, or a tensor
    [B,3,H,W] / [3,H,W]. A float tensor holds values in `value_range`: (-1, 1) by default, which is what
    the VAE decodes to; pass (0, 1) for images in [0, 1]. Float tensors are first rounded to uint8 by
    `ldm.images.to_pil`, as for saving, so an image is ranked exactly as its saved PNG would be.
    """
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    out = []
    for im in _as_pil_list(images, value_range):
        im = center_crop(resize_shorter_side(im, size), size)
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255)  # torchvision ToTensor
        out.append((x - mean) / std)
    if not out:
        raise UserError("clip_preprocess: no images given")
    return torch.stack(out)
