"""warp_points: keypoints moved by the same motion warp_latent gives the latent."""
import numpy as np
import pytest
import torch

from interp.warp import Warp, warp_latent, warp_points

H, W = 48, 80  # not square, so a skewed rotation or swapped axes would show


def blob(x, y, sigma=1.5):
    """[1, 1, H, W] Gaussian dot centred on pixel coordinates (x, y)."""
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return torch.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma ** 2))[None, None]


def centroid(z, near):
    """(x, y) centroid of the thresholded dot within 10 px of `near` (zooming out reflects copies in)."""
    rows, cols = np.mgrid[0:H, 0:W]
    a = np.where((abs(cols - near[0]) <= 10) & (abs(rows - near[1]) <= 10), z[0, 0].numpy(), 0.0)
    a = np.where(a > 0.2 * a.max(), a, 0.0)
    return np.array([(a * cols).sum(), (a * rows).sum()]) / a.sum()


WARPS = [
    Warp(zoom=1.6, center=(0.3, 0.7)),
    Warp(zoom=0.7, center=(0.8, 0.25)),
    Warp(zoom=3.0, center=(0.45, 0.5)),  # strong: dropping the half-pixel offset would be 1 px off
    Warp(pan=(0.1, -0.15)),
    Warp(rotate_deg=30),
    Warp(rotate_deg=-30, center=(0.4, 0.6)),
    Warp(zoom=1.3, center=(0.6, 0.4), pan=(-0.05, 0.1), rotate_deg=30),
]


@pytest.mark.parametrize("warp", WARPS)
@pytest.mark.parametrize("amount", [1.0, 0.5, -0.7])
@pytest.mark.parametrize("start", [(30.3, 20.6), (47.0, 28.4)])
def test_points_follow_the_warped_latent(warp, amount, start):
    expected = warp_points(np.array(start), warp, amount, W, H)
    assert (expected > 6).all() and expected[0] < W - 7 and expected[1] < H - 7  # clear of the border
    out = warp_latent(blob(*start), warp, amount)
    assert np.abs(centroid(out, expected) - expected).max() < 0.2


def test_rotation_turns_counter_clockwise_on_screen():
    # A point right of the centre moves up (y down), by the same distance in pixels on a non-square image.
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    out = warp_points(centre + [10, 0], Warp(rotate_deg=90), 1.0, W, H)
    np.testing.assert_allclose(out, centre + [0, -10], atol=1e-12)


def test_amount_zero_is_exactly_the_identity():
    xy = np.random.default_rng(0).uniform(0, 50, (3, 18, 2))
    out = warp_points(xy, WARPS[-1], 0.0, W, H)
    assert out.shape == xy.shape and np.array_equal(out, xy)


@pytest.mark.parametrize("warp", [Warp(zoom=1.6, center=(0.3, 0.7), rotate_deg=30), Warp(rotate_deg=-45), Warp(pan=(0.1, -0.2))])
def test_amounts_add_without_a_mixed_pan(warp):
    # Without pan (any zoom, rotation and center), or with pan alone, amounts form a group:
    # a then b is a + b, so a then -a is the identity.
    xy = np.random.default_rng(1).uniform(0, 60, (18, 2))
    np.testing.assert_allclose(warp_points(warp_points(xy, warp, 0.4, W, H), warp, 0.35, W, H),
                               warp_points(xy, warp, 0.75, W, H), atol=1e-9)
    np.testing.assert_allclose(warp_points(warp_points(xy, warp, 0.6, W, H), warp, -0.6, W, H), xy, atol=1e-9)


def test_pan_with_zoom_is_not_undone_by_the_negative_amount():
    # With pan and zoom/rotation together, amount -a is not the inverse of amount a: the pan of -a is
    # applied after the zoom of a, not inside it. Amounts are positions along the motion, not steps.
    warp = Warp(zoom=2.0, pan=(0.1, 0.0))
    xy = np.array([20.0, 10.0])
    back = warp_points(warp_points(xy, warp, 1.0, W, H), warp, -1.0, W, H)
    np.testing.assert_allclose(back - xy, [-0.05 * W, 0.0], atol=1e-9)  # pan/2 - pan: half the pan is left over
