"""The image augmentation of the textual-inversion step, in plain torch.

The authors' `learn_conditioning` (GitHub clintonjwang/ControlNet, cm.py) augments each input image at
every optimisation step with

    transforms.Compose([transforms.ColorJitter(brightness=0.1, contrast=0.2, saturation=0.2, hue=0.1),
                        transforms.RandomResizedCrop(size=(H, W), scale=(0.7, 1.0))])

This module is that transform without torchvision: the deterministic operations follow torchvision's
tensor functions (`torchvision.transforms._functional_tensor`) op for op, and the random parameters are
drawn as `ColorJitter.get_params` and `RandomResizedCrop.get_params` draw them, in the same order, but
from a seeded generator through `ldm.sample.rng` (so the same seed gives the same augmentation on every device)
instead of torch's global generator. As torchvision does for a batch tensor, one set of parameters is
drawn per call and applied to every image of the batch.

Images are float tensors [..., 3, H, W]; the arithmetic runs in float32 and the result comes back in the
input's dtype and on its device.
"""
import math

import torch
import torch.nn.functional as F

from ldm.sample import rng


def _uniform(low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """One float32 number uniform in [low, high) (torchvision's `torch.empty(1).uniform_(low, high)`)."""
    return low + (high - low) * rng.rand((1,), generator)


def _jitter_range(strength: float, name: str, center: float) -> tuple:
    """The (min, max) of a factor drawn around `center` (torchvision `ColorJitter._check_input`): factors
    around 1 stay >= 0; None for strength 0 (no jitter)."""
    if strength < 0:
        raise ValueError(f"{name} must be non-negative, got {strength}")
    if strength == 0:
        return None
    return (max(center - strength, 0.0) if center else -strength), center + strength


def _blend(img1: torch.Tensor, img2: torch.Tensor, ratio: float) -> torch.Tensor:
    """ratio * img1 + (1 - ratio) * img2, clamped to [0, 1] (torchvision `_functional_tensor._blend`, float)."""
    ratio = float(ratio)
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0, 1).to(img1.dtype)


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luma [..., 1, H, W] with the ITU-R 601 weights (torchvision `_functional_tensor.rgb_to_grayscale`)."""
    r, g, b = img.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype).unsqueeze(dim=-3)


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to HSV in [0, 1] along dim -3 (torchvision `_functional_tensor._rgb2hsv`)."""
    r, g, b = img.unbind(dim=-3)
    maxc, minc = img.max(dim=-3).values, img.min(dim=-3).values
    eqc = maxc == minc  # grey: s = h = 0; the divisors below are set to 1 there to avoid NaN
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] to RGB along dim -3 (torchvision `_functional_tensor._hsv2rgb`)."""
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # (r, g, b) of each of the six hue sectors; torchvision selects with a one-hot einsum, a gather is exact
    sectors = torch.stack([torch.stack(rgb, dim=-3)
                           for rgb in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    index = i.unsqueeze(-3).expand(sectors.shape[1:]).unsqueeze(0)
    return sectors.gather(0, index)[0]


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale towards black by `factor` (torchvision `adjust_brightness`)."""
    if factor < 0:
        raise ValueError(f"brightness factor must be non-negative, got {factor}")
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with each image's mean grey level (torchvision `adjust_contrast`)."""
    if factor < 0:
        raise ValueError(f"contrast factor must be non-negative, got {factor}")
    return _blend(img, _grayscale(img).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the grey image (torchvision `adjust_saturation`)."""
    if factor < 0:
        raise ValueError(f"saturation factor must be non-negative, got {factor}")
    return _blend(img, _grayscale(img), factor)


def adjust_hue(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Rotate the hue by `factor` turns, in [-0.5, 0.5] (torchvision `adjust_hue`)."""
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor}")
    h, s, v = _rgb_to_hsv(img).unbind(dim=-3)
    return _hsv_to_rgb(torch.stack(((h + factor) % 1.0, s, v), dim=-3))


_ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: torch.Tensor, generator: torch.Generator, brightness=0.1, contrast=0.2, saturation=0.2,
                 hue=0.1) -> torch.Tensor:
    """torchvision's `ColorJitter` on x [..., 3, H, W] in [0, 1].

    Each strength s gives a factor uniform in [max(0, 1 - s), 1 + s] (hue: in [-s, s], s <= 0.5); 0 turns
    that adjustment off and draws nothing for it. The four adjustments run in the
    order of a random permutation, drawn first, as in `ColorJitter.get_params`.
    """
    if hue > 0.5:
        raise ValueError(f"hue must be at most 0.5 (half a turn), got {hue}")
    ranges = (_jitter_range(brightness, "brightness", 1.0), _jitter_range(contrast, "contrast", 1.0),
              _jitter_range(saturation, "saturation", 1.0), _jitter_range(hue, "hue", 0.0))
    order = rng.randperm(4, generator)
    factors = [None if r is None else float(_uniform(r[0], r[1], generator)) for r in ranges]
    y = x.float()
    for k in order:
        if factors[k] is not None:
            y = _ADJUST[k](y, factors[k])
    return y.to(x.dtype)


def crop_box(h: int, w: int, generator: torch.Generator, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, height, width) of a random crop of an h x w image (torchvision
    `RandomResizedCrop.get_params`): area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`,
    10 tries, then a central crop with the aspect ratio clamped into `ratio`."""
    area = h * w
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float32)).tolist()
    for _ in range(10):
        target_area = area * float(_uniform(scale[0], scale[1], generator))
        aspect = float(torch.exp(_uniform(log_ratio[0], log_ratio[1], generator)))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch + 1, generator), rng.randint(0, w - cw + 1, generator), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        cw, ch = int(round(h * max(ratio))), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, size=None, scale=(0.7, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's `RandomResizedCrop` on x [..., C, H, W]: a `crop_box` crop, resized to `size` (H, W)
    (an int: square; default: x's own size) bilinearly with antialiasing, align_corners=False, as
    torchvision's tensor `resize` does; a crop already of that size is returned as it is."""
    H, W = x.shape[-2:]
    size = (H, W) if size is None else (int(size), int(size)) if isinstance(size, int) else tuple(size)
    top, left, h, w = crop_box(H, W, generator, scale, ratio)
    y = x[..., top:top + h, left:left + w].float()
    if (h, w) != size:
        lead = y.shape[:-3]
        y = F.interpolate(y.reshape(-1, *y.shape[-3:]), size=size, mode="bilinear", align_corners=False,
                          antialias=True).reshape(*lead, y.shape[-3], *size)
    return y.to(x.dtype)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The authors' augmentation of x [1, 3, H, W] in [-1, 1] (the pipeline's image range): `color_jitter`
    (brightness 0.1, contrast 0.2, saturation 0.2, hue 0.1), then a `random_resized_crop` (scale 0.7-1) back to
    H x W. Returns the same shape, dtype and range (clamped, against rounding in the resize)."""
    y = color_jitter((x.float() + 1.0) / 2.0, generator)
    y = random_resized_crop(y, generator)
    return (y * 2.0 - 1.0).clamp(-1.0, 1.0).to(x.dtype)
