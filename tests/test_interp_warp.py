"""Affine latent warps (Section 5.2, Fig. 6)."""
import pytest
import torch
import torch.nn.functional as F

from interp import Warp, warp_latent
from ldm.errors import UserError


def ramps(h, w):
    """Channel 0 = column index, channel 1 = row index; bilinear sampling reproduces them exactly."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([cols, rows])[None]


def pixel_center(j, size):
    return (j + 0.5) / size


def test_amount_zero_is_exactly_the_input():
    z = torch.randn(3, 4, 8, 12)
    warp = Warp(zoom=1.7, center=(0.3, 0.6), pan=(0.1, -0.2), rotate_deg=33)
    assert torch.equal(warp_latent(z, warp, 0.0), z)
    out = warp_latent(z, warp, torch.tensor([0.0, 0.5, 0.0]))
    assert torch.equal(out[0], z[0]) and torch.equal(out[2], z[2])
    assert not torch.allclose(out[1], z[1])


def test_identity_warp_is_close_to_the_input():
    z = torch.randn(2, 4, 8, 12)
    torch.testing.assert_close(warp_latent(z, Warp(), 1.0), z, rtol=0, atol=1e-5)


def test_zoom_fixes_the_center_and_magnifies():
    h, w, ci, cj = 16, 20, 5, 7
    z = ramps(h, w)
    out = warp_latent(z, Warp(zoom=2.0, center=(pixel_center(cj, w), pixel_center(ci, h))), 1.0)
    # Output pixel (i, j) shows the input at center + (p - center) / 2.
    cols = cj + (torch.arange(w) - cj) / 2
    rows = ci + (torch.arange(h) - ci) / 2
    torch.testing.assert_close(out[0, 0], cols.expand(h, w), rtol=0, atol=1e-4)
    torch.testing.assert_close(out[0, 1], rows[:, None].expand(h, w), rtol=0, atol=1e-4)
    torch.testing.assert_close(out[0, :, ci, cj], z[0, :, ci, cj], rtol=0, atol=1e-5)


def test_half_the_amount_is_the_square_root_of_the_zoom():
    h, w = 16, 16
    z = ramps(h, w)
    out = warp_latent(z, Warp(zoom=4.0), 0.5)
    c = (w - 1) / 2
    torch.testing.assert_close(out[0, 0, 0], c + (torch.arange(w) - c) / 2, rtol=0, atol=1e-4)


def test_pan_by_whole_pixels_shifts_the_pattern():
    h, w = 8, 12
    z = torch.randn(2, 4, h, w)
    out = warp_latent(z, Warp(pan=(3 / w, -2 / h)), 1.0)
    # Content moves 3 pixels right and 2 up.
    torch.testing.assert_close(out[..., : h - 2, 3:], z[..., 2:, : w - 3], rtol=0, atol=1e-5)
    half = warp_latent(z, Warp(pan=(6 / w, 0)), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(half[0, :, :, 3:], z[0, :, :, : w - 3], rtol=0, atol=1e-5)
    torch.testing.assert_close(half[1, :, :, 6:], z[1, :, :, : w - 6], rtol=0, atol=1e-5)


def test_rotate_90_degrees_counter_clockwise():
    z = torch.randn(2, 3, 10, 10)
    out = warp_latent(z, Warp(rotate_deg=90), 1.0)
    torch.testing.assert_close(out, torch.rot90(z, 1, dims=(-2, -1)), rtol=0, atol=1e-5)


def test_rotation_keeps_pixel_proportions_on_non_square_latents():
    z = torch.zeros(1, 1, 12, 20)
    z[..., 5:7, 6:14] = 1.0  # a horizontal bar 2 x 8 pixels around the centre (row 5.5, col 9.5)
    out = warp_latent(z, Warp(rotate_deg=90), 1.0)
    expected = torch.zeros_like(z)
    expected[..., 2:10, 9:11] = 1.0  # the same bar standing upright
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_preserved(dtype):
    z = torch.randn(2, 4, 8, 8).to(dtype)
    out = warp_latent(z, Warp(zoom=1.5, rotate_deg=10), torch.tensor([0.0, 1.0]))
    assert out.dtype == dtype and torch.equal(out[0], z[0])


@pytest.mark.parametrize("kwargs", [{"zoom": 0.0}, {"zoom": -2.0}, {"zoom": float("inf")}, {"center": (1.5, 0.5)}])
def test_bad_warps_are_rejected(kwargs):
    with pytest.raises(UserError):
        Warp(**kwargs)


def test_the_grid_reflection_is_grid_samples_reflection_padding():
    """warp_latent reflects its sampling points itself (MPS has no reflection kernel): the same samples as
    padding_mode="reflection", for points far outside the latent too."""
    from interp.warp import reflect
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 6, 9, generator=g)
    grid = torch.rand(2, 5, 7, 2, generator=g) * 12 - 6  # up to 3 widths beyond each side
    ours = F.grid_sample(z, reflect(grid), mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(ours, F.grid_sample(z, grid, mode="bilinear", padding_mode="reflection",
                                                   align_corners=False), atol=1e-5, rtol=1e-5)
