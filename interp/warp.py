"""Affine warps of latents for camera-like motion (Section 5.2, Fig. 6).

Coordinates are image fractions: (0, 0) is the top-left corner of the latent, (1, 1) the
bottom-right, x to the right and y down. A `Warp` moves the content by

    p -> center + R(rotate_deg) * zoom * (p - center) + pan,

measured in pixels so rotation is not skewed by a non-square latent: the point `center` stays
put under zoom and rotation, zoom > 1 magnifies, a positive angle turns the content
counter-clockwise as seen on screen, and pan (dx, dy) moves it right/down by that fraction of
the width/height. `warp_latent` applies a fraction `amount` of the warp: zoom ** amount,
amount * rotate_deg and amount * pan, so equal steps of amount zoom at a constant rate. Samples
from outside the latent are reflected back in (padding "reflection"), which keeps latent
statistics natural where border padding would smear edge rows into streaks. `warp_points` moves
keypoints by the same motion.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ldm.errors import UserError


@dataclass(frozen=True)
class Warp:
    zoom: float = 1.0
    center: tuple[float, float] = (0.5, 0.5)
    pan: tuple[float, float] = (0.0, 0.0)
    rotate_deg: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.zoom) and self.zoom > 0):
            raise UserError(f"warp zoom must be a positive number (1 = no zoom), got {self.zoom}")
        if not all(0 <= c <= 1 for c in self.center):
            raise UserError(f"warp center must be an (x, y) point with coordinates in [0, 1], got {self.center}")


def reflect(grid):
    """Sampling points of grid_sample's [-1, 1] coordinates (align_corners=False: -1 and 1 are the outer
    edges of the border pixels) reflected back in across those edges, as padding_mode="reflection" does.
    Done on the grid, so the sampling itself needs only "border" padding, which every device has (MPS has
    no reflection kernel)."""
    return 1 - ((grid + 1).remainder(4) - 2).abs()


def warp_latent(z: torch.Tensor, warp: Warp, amount) -> torch.Tensor:
    """z [B, C, h, w] warped by `amount` (a float, or a tensor [B] of per-sample amounts) of
    `warp`; amount 0 returns the sample exactly unchanged."""
    B, C, h, w = z.shape
    compute = torch.promote_types(z.dtype, torch.float32)
    amount = torch.as_tensor(amount, dtype=compute, device=z.device).expand(B)
    # grid_sample pulls: each output point p reads the input at the inverse warp of p,
    # center + M (p - pan - center) with M = R(-angle) / zoom, in affine_grid's [-1, 1] coordinates.
    scale = torch.exp(amount * math.log(warp.zoom))
    angle = amount * math.radians(warp.rotate_deg)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    m = ((cos, -sin * (h / w)), (sin * (w / h), cos))
    center = [2 * c - 1 for c in warp.center]
    shifted = [amount * (2 * p) + c for p, c in zip(warp.pan, center)]  # pan + center
    rows = [[m[i][0], m[i][1], center[i] - m[i][0] * shifted[0] - m[i][1] * shifted[1]] for i in range(2)]
    theta = torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)
    grid = reflect(F.affine_grid(theta, [B, C, h, w], align_corners=False))
    warped = F.grid_sample(z.to(compute), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(amount.view(B, 1, 1, 1) == 0, z, warped.to(z.dtype))


def warp_points(xy, warp: Warp, amount: float, width: int, height: int) -> np.ndarray:
    """Pixel coordinates xy [..., 2] (x, y) of an image width x height moved as `warp_latent` moves the
    content under `amount` (a float) of `warp`. Pixel coordinate x names the centre of pixel x, the
    point x + 0.5 of the continuous [0, width] (the convention of OpenPose keypoints). Only the motion is
    modelled: points moved outside the image stay outside (warp_latent reflects content back in)."""
    xy = np.asarray(xy, dtype=np.float64)
    if amount == 0:  # exactly unchanged, as warp_latent (the arithmetic below would round)
        return xy.copy()
    size = np.array([width, height], dtype=np.float64)
    center = np.asarray(warp.center) * size
    pan = amount * np.asarray(warp.pan) * size
    scale, angle = warp.zoom ** amount, amount * math.radians(warp.rotate_deg)
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    # Counter-clockwise on screen with y down: a point right of the center moves up.
    m = np.array([[cos, sin], [-sin, cos]])
    p = xy + 0.5 - center
    return center + p @ m.T + pan - 0.5
