"""Image input and output for the commands: reading any image into an RGB tensor of a size the models
accept, and writing PNGs atomically.

Size rule: the target is W x H, both multiples of 64 (a requested size is rounded down to multiples of
64, at least 64). The image is centre-cropped to the target's aspect ratio, then resized to W x H with
Lanczos filtering. Without a requested size the target is the image's own size rounded down to
multiples of 64.
"""
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError


def parse_size(text) -> tuple:
    """'512' -> (512, 512); '768x512' -> (768, 512) as (width, height)."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 64:
        raise UserError(f"size must be W or WxH in pixels (at least 64), not {text!r}")
    return (parts[0], parts[-1])


def _multiple_of_64(n: int) -> int:
    return max(64, n - n % 64)


def open_image(path) -> Image.Image:
    """The image at `path` as RGB; a clear error when it is missing or not an image."""
    if not os.path.isfile(path):
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):  # composite transparency onto white, not black
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def fit(image: Image.Image, size=None) -> Image.Image:
    """Centre-crop to the target aspect ratio and resize to the target (see the module's size rule)."""
    w, h = image.size
    tw, th = (_multiple_of_64(s) for s in (size or (w, h)))
    if w * th > h * tw:  # too wide: crop the sides
        cw, ch = round(h * tw / th), h
    else:
        cw, ch = w, round(w * th / tw)
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch))
    return image if image.size == (tw, th) else image.resize((tw, th), Image.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W] float32 in [-1, 1]."""
    a = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 127.5 - 1.0
    return a.permute(2, 0, 1)[None]


def to_pil(x: torch.Tensor) -> list:
    """[B, 3, H, W] in [-1, 1] -> list of RGB PIL images (clamped, rounded)."""
    if not torch.isfinite(x).all():
        raise UserError("the decoded image contains NaN/inf: with float16 try --dtype bfloat16 or float32")
    a = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(im) for im in a]


def save_png(image: Image.Image, path, info: dict = None) -> None:
    """Write a PNG atomically (a temporary file renamed into place), with optional text metadata."""
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    for k, v in (info or {}).items():
        meta.add_text(k, str(v))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.part"
    image.save(tmp, format="PNG", pnginfo=meta)
    os.replace(tmp, path)
