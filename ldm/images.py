"""Image input and output for the commands: reading any image into an RGB tensor of a size the models
accept, and writing PNGs atomically.

Size rule: the target is W x H, both multiples of 64 (a requested size is rounded down to multiples of
64, at least 64; `check_frame_size` instead refuses an interpolation's frame size that is not, or that the
model was not trained for). A `Placement` brings the image to the target: a source box is resized to W x H with
Lanczos filtering. In mode "crop" (the default, and `fit`) the box is the largest centred box of the
target's aspect ratio, so the picture is centre-cropped; in mode "resize" the box is the whole picture,
whose aspect ratio may then change. `Placement.points` maps pixel coordinates (keypoints) through the
same transform. Without a requested size `fit` uses the image's own size rounded down to multiples of 64;
`frame_size` gives the interpolation's default frame: the image's aspect ratio at a model's native size.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .files import atomic_path


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


FORCE = "!"       # a requested size ending in it is made even beyond what the model was trained for
MAX_ASPECT = 4    # the longest side at most 4 times the shortest
MAX_SCALE = 2     # no side more than twice the model's native size


def _spell(w: int, h: int, square: bool) -> str:
    return str(w) if square and w == h else f"{w}x{h}"


def check_frame_size(size, native: int = None, frame=None, force: bool = False):
    """The frame (W, H) a requested `size` asks for, or None when none is requested; a UserError for a size the
    model cannot take, or was not trained for:

    - both sides must be multiples of 64 (the error names the nearest sizes that are);
    - unless forced, an aspect ratio beyond MAX_ASPECT:1 is refused (so is a default `frame` beyond it, the
      first image's aspect at the model's size, checked when `size` is None);
    - unless forced, a side more than MAX_SCALE times the model's `native` size is refused, for a size a
      person spells ("W", "WxH" or W); a (W, H) pair is a frame a program decided (a chain's later pairs take
      the first pair's frame, which may be a default beyond it for a small model), so only the first two rules
      apply to it.

    Text ending in FORCE ("1536x512!") forces it, as does `force`. Beyond these sizes the model repeats and
    stretches its content, and the run's time grows with the area."""
    if size is None:
        if frame is None:
            return None
        (w, h), what, native = frame, f"the frame {frame[0]}x{frame[1]} (the first image's aspect ratio)", None
        square = False
    else:
        spelled = not isinstance(size, (tuple, list))
        text = str(size).strip() if spelled else "x".join(map(str, size))
        if text.endswith(FORCE):
            force, text = True, text[:-len(FORCE)]
        w, h = parse_size(text)
        square = "x" not in text.lower()
        what = f"--size {text}"
        if w % 64 or h % 64:
            down = (_multiple_of_64(w), _multiple_of_64(h))
            up = (-(-w // 64) * 64, -(-h // 64) * 64)
            tries = " or ".join(dict.fromkeys(_spell(*s, square) for s in (down, up)))
            sides = "the side must be a multiple" if square else "width and height must be multiples"
            raise UserError(f"{what}: {sides} of 64: try {tries}")
        native = native if spelled else None
    if force:
        return (w, h)
    how = f"or --size {_spell(w, h, square)}{FORCE} to force it"
    ratio = max(w, h) / min(w, h)
    if ratio > MAX_ASPECT:
        raise UserError(f"{what}: an aspect ratio of {ratio:.3g}:1 is beyond {MAX_ASPECT}:1, far from the pictures "
                        f"the model was trained on (expect its content repeated or stretched): give a --size nearer "
                        f"square (--fit crop keeps each picture's proportions), {how}")
    if native and max(w, h) > MAX_SCALE * native:
        side = "side" if w == h else "width" if w > h else "height"
        raise UserError(f"{what}: a {side} of {max(w, h)} px is more than {MAX_SCALE}x the {native} px this model "
                        f"was trained at (expect its content repeated, and a run whose time grows with the area): "
                        f"give sides of at most {MAX_SCALE * native} px, {how}")
    return (w, h)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB. Pillow's own convert clips wider grey levels to 0-255 (a 16-bit grey
    image becomes nearly white), so integer grey images (I;16*, I) are scaled from 0-65535 and float ones
    (F) from [0, 1], or read as 0-255 when they exceed 1. Transparency is composited onto white, not black;
    other modes (CMYK, YCbCr, LAB, HSV, 1, P, L) take Pillow's conversion."""
    if im.mode.startswith("I") or im.mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        scale = 255 / 65535 if im.mode != "F" else (255 if grey.size and grey.max() <= 1 else 1)
        im = Image.fromarray(np.clip(np.rint(grey * scale), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or im.info.get("transparency") is not None:
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return im.convert("RGB")


def open_image(path) -> Image.Image:
    """The image at `path` as RGB (`to_rgb`); a clear error when it is missing or not an image."""
    if not os.path.isfile(path):
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


@dataclass(frozen=True)
class Placement:
    """How a source image is brought to the frame: the source box (left, top, right, bottom), in source
    pixels (floats allowed), is resized to `size` = (W, H).

    The box is in continuous coordinates, where pixel i covers [i, i + 1). Pixel coordinates (as of
    OpenPose keypoints) name pixel centres: pixel coordinate x is the continuous point x + 0.5.
    """
    box: tuple
    size: tuple

    def image(self, im: Image.Image) -> Image.Image:
        """`im` cropped to the box and resized to `size` (Lanczos)."""
        # Pillow's resize(box=...) lets the filter read pixels outside the box, so first crop to the
        # box's integer hull: for an integer box this is exactly crop then resize.
        left, top, right, bottom = self.box
        hull = (math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))
        if hull != (0, 0) + im.size:
            im = im.crop(hull)
        box = (left - hull[0], top - hull[1], right - hull[0], bottom - hull[1])
        return im.resize(tuple(self.size), Image.LANCZOS, box=box)  # a plain copy when nothing changes

    def points(self, xy) -> np.ndarray:
        """Source pixel coordinates [..., 2] (x, y) -> their coordinates in the frame."""
        xy = np.asarray(xy, dtype=np.float64)
        left, top, right, bottom = self.box
        origin = np.array([left, top])
        scale = np.array([self.size[0] / (right - left), self.size[1] / (bottom - top)])
        return (xy + 0.5 - origin) * scale - 0.5

    def inside(self, xy) -> np.ndarray:
        """Bool [...]: the source point lands within the frame, [-0.5, W - 0.5] x [-0.5, H - 0.5]."""
        p = self.points(xy)
        limit = np.array(self.size) - 0.5
        return np.all((p >= -0.5) & (p <= limit), axis=-1)


def placement(source_size, target_size, mode: str = "crop") -> Placement:
    """The placement of a source_size = (w, h) image in a target_size frame, rounded down to multiples
    of 64 (see the module's size rule): mode "crop" centre-crops to the target's aspect ratio, mode
    "resize" resizes the whole picture."""
    w, h = source_size
    tw, th = (_multiple_of_64(s) for s in target_size)
    if mode == "resize":
        return Placement((0, 0, w, h), (tw, th))
    if mode != "crop":
        raise UserError(f"placement mode must be 'crop' or 'resize', not {mode!r}")
    if w * th > h * tw:  # too wide: crop the sides
        cw, ch = round(h * tw / th), h
    else:
        cw, ch = w, round(w * th / tw)
    left, top = (w - cw) // 2, (h - ch) // 2
    return Placement((left, top, left + cw, top + ch), (tw, th))


def placement_warnings(name: str, source_size, pl: Placement) -> list:
    """What a placement does to a picture that a user would not expect: a large upscale (blur), a crop that
    drops most of it, or a resize that squashes it. One line each; none for an ordinary placement."""
    (left, top, right, bottom), (tw, th) = pl.box, pl.size
    bw, bh = right - left, bottom - top
    out = []
    upscale = max(tw / bw, th / bh)
    if upscale > 2:
        out.append(f"{name} ({source_size[0]}x{source_size[1]}) is upscaled {upscale:.1f}x to {tw}x{th}: expect it blurry")
    kept = bw * bh / (source_size[0] * source_size[1])
    if kept < 0.5:
        out.append(f"{name} is cropped to {round(bw)}x{round(bh)} of its {source_size[0]}x{source_size[1]} "
                   f"({kept:.0%} of the picture) to fit {tw}x{th}: give --size with its aspect ratio to keep more")
    stretch = (tw / th) / (bw / bh)
    if not 1 / 1.5 <= stretch <= 1.5:
        out.append(f"{name} is {'stretched' if stretch > 1 else 'squeezed'} {max(stretch, 1 / stretch):.1f}x "
                   f"sideways to fit {tw}x{th}: --fit crop keeps its proportions")
    return out


def frame_size(source_size, native: int) -> tuple:
    """The default frame (W, H) for a source_size = (w, h) image: its aspect ratio with the long side
    `native` (rounded down to a multiple of 64) and the short side rounded to the nearest multiple of
    64, at least 64."""
    w, h = source_size
    long_side = _multiple_of_64(native)
    short = max(64, 64 * math.floor(long_side * min(w, h) / max(w, h) / 64 + 0.5))
    return (long_side, short) if w >= h else (short, long_side)


def fit(image: Image.Image, size=None) -> Image.Image:
    """Centre-crop to the target aspect ratio and resize to the target (see the module's size rule)."""
    return placement(image.size, size or image.size, "crop").image(image)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W] float32 in [-1, 1]."""
    a = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 127.5 - 1.0
    return a.permute(2, 0, 1)[None]


def to_pil(x: torch.Tensor) -> list:
    """[B, 3, H, W] in [-1, 1] (finite: `decode_latents` checks) -> list of RGB PIL images (clamped, rounded)."""
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
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=meta)
