"""The textual-inversion augmentation: torchvision's ColorJitter + RandomResizedCrop semantics in plain torch."""
import colorsys

import pytest
import torch
import torch.nn.functional as F

from interp.augment import (_grayscale, _hsv_to_rgb, _rgb_to_hsv, adjust_brightness, adjust_contrast, adjust_hue,
                            adjust_saturation, augment, color_jitter, crop_box, random_resized_crop)
from ldm.sample import rng


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def img():
    return torch.rand(2, 3, 24, 40, generator=gen(0))


def colour(r, g, b):
    return torch.tensor([r, g, b], dtype=torch.float32).view(1, 3, 1, 1)


def test_neutral_factors_are_identity(img):
    assert torch.equal(adjust_brightness(img, 1.0), img)
    assert torch.equal(adjust_contrast(img, 1.0), img)
    assert torch.equal(adjust_saturation(img, 1.0), img)
    torch.testing.assert_close(adjust_hue(img, 0.0), img, atol=1e-6, rtol=0)
    assert torch.equal(color_jitter(img, gen(1), brightness=0, contrast=0, saturation=0, hue=0), img)


def test_brightness_scales_and_clamps(img):
    torch.testing.assert_close(adjust_brightness(img, 0.5), img * 0.5)
    torch.testing.assert_close(adjust_brightness(img, 1.5), (img * 1.5).clamp(max=1.0))
    assert torch.equal(adjust_brightness(img, 0.0), torch.zeros_like(img))


def test_contrast_keeps_each_images_grey_mean():
    x = 0.3 + 0.4 * torch.rand(2, 3, 16, 16, generator=gen(2))  # no clamping at these factors
    mean = _grayscale(x).mean(dim=(1, 2, 3))
    for factor in (0.0, 0.5, 1.2):
        got = _grayscale(adjust_contrast(x, factor)).mean(dim=(1, 2, 3))
        # kept up to torchvision's luma weights summing to 0.9999, not 1: grey(mean) = 0.9999 mean
        torch.testing.assert_close(got, factor * mean + (1 - factor) * 0.9999 * mean)
        torch.testing.assert_close(got, mean, atol=0, rtol=2e-4)
    flat = adjust_contrast(x, 0.0)
    assert torch.allclose(flat, _grayscale(x).mean(dim=(1, 2, 3)).view(2, 1, 1, 1).expand_as(x))
    # the mean is per image, not over the batch
    torch.testing.assert_close(adjust_contrast(x, 0.5)[1:], adjust_contrast(x[1:], 0.5))


def test_saturation_zero_is_grayscale(img):
    y = adjust_saturation(img, 0.0)
    grey = 0.2989 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
    for c in range(3):
        torch.testing.assert_close(y[:, c], grey)


def test_hsv_round_trip():
    x = torch.rand(4, 3, 32, 32, generator=gen(3))
    x[0, :, :2] = 0.5  # greys: h = s = 0
    x[1, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    hsv = _rgb_to_hsv(x)
    assert hsv.min() >= 0 and hsv.max() <= 1
    assert torch.equal(hsv[0, :2, :2], torch.zeros_like(hsv[0, :2, :2]))


def test_hue_third_turn_maps_red_to_green_and_blue():
    torch.testing.assert_close(adjust_hue(colour(1, 0, 0), 1 / 3), colour(0, 1, 0), atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(colour(1, 0, 0), -1 / 3), colour(0, 0, 1), atol=1e-6, rtol=0)


def test_hue_hand_computed_example():
    # (0.8, 0.4, 0.2): v = 0.8, s = 0.6/0.8 = 0.75, h = ((0.6-0.4)/0.6)/6 = 1/18. Shifted by 0.1:
    # h = 1/18 + 0.1, sector i = 0, f = 6h = 14/15, so (r, g, b) = (v, v(1 - s(1 - f)), v(1 - s)) = (0.8, 0.76, 0.2)
    hsv = _rgb_to_hsv(colour(0.8, 0.4, 0.2)).flatten()
    torch.testing.assert_close(hsv, torch.tensor([1 / 18, 0.75, 0.8]))
    out = adjust_hue(colour(0.8, 0.4, 0.2), 0.1).flatten()
    torch.testing.assert_close(out, torch.tensor([0.8, 0.76, 0.2]))
    h, s, v = colorsys.rgb_to_hsv(0.8, 0.4, 0.2)
    torch.testing.assert_close(out, torch.tensor(colorsys.hsv_to_rgb((h + 0.1) % 1.0, s, v), dtype=torch.float32))
    # across the wrap: h = 1/18 - 0.1 < 0 goes round to the magenta side
    h2 = colorsys.hsv_to_rgb((h - 0.1) % 1.0, s, v)
    torch.testing.assert_close(adjust_hue(colour(0.8, 0.4, 0.2), -0.1).flatten(), torch.tensor(h2, dtype=torch.float32))


def test_hue_factor_out_of_range():
    with pytest.raises(ValueError):
        adjust_hue(colour(1, 0, 0), 0.6)
    with pytest.raises(ValueError):
        color_jitter(colour(1, 0, 0), gen(0), hue=0.7)


def test_color_jitter_draws_like_torchvision_get_params(img):
    """A permutation first, then brightness, contrast, saturation, hue factors, each uniform in its range."""
    g = gen(5)
    order = rng.randperm(4, g)
    ranges = ((0.9, 1.1), (0.8, 1.2), (0.8, 1.2), (-0.1, 0.1))
    factors = [float(lo + (hi - lo) * rng.rand((1,), g)) for lo, hi in ranges]
    want = img
    for k in order:
        want = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)[k](want, factors[k])
    assert torch.equal(color_jitter(img, gen(5)), want)
    assert not torch.equal(color_jitter(img, gen(5)), color_jitter(img, gen(6)))
    out = color_jitter(img, gen(7))
    assert out.min() >= 0 and out.max() <= 1


def test_color_jitter_keeps_dtype_and_applies_one_draw_to_the_batch(img):
    same = img[:1].expand(3, -1, -1, -1)
    out = color_jitter(same, gen(8))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    half = color_jitter(img.half(), gen(9))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), color_jitter(img.half().float(), gen(9)), atol=1e-3, rtol=0)


def test_random_resized_crop_is_seeded():
    # (a wide 24 x 40 image often falls back to the same central crop: its aspect is outside 3/4..4/3)
    img = torch.rand(2, 3, 32, 36, generator=gen(0))
    a, b = random_resized_crop(img, gen(10)), random_resized_crop(img, gen(10))
    assert torch.equal(a, b) and a.shape == img.shape
    assert not torch.equal(a, random_resized_crop(img, gen(11)))
    assert len({crop_box(32, 36, gen(seed)) for seed in range(10)}) == 10
    assert random_resized_crop(img, gen(10), size=(16, 20)).shape == (2, 3, 16, 20)
    assert random_resized_crop(img, gen(10), size=12).shape == (2, 3, 12, 12)


def test_random_resized_crop_is_crop_then_antialiased_bilinear(img):
    top, left, h, w = crop_box(24, 40, gen(12))
    want = F.interpolate(img[..., top:top + h, left:left + w], size=(24, 40), mode="bilinear", align_corners=False,
                         antialias=True)
    assert torch.equal(random_resized_crop(img, gen(12)), want)


def test_crop_box_area_and_aspect_within_bounds():
    H, W = 384, 512
    fractions, aspects = [], []
    for seed in range(300):
        top, left, h, w = crop_box(H, W, gen(seed), scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3))
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        fractions.append(h * w / (H * W))
        aspects.append(w / h)
    # integer rounding of each side moves the fraction and aspect by well under 1%
    assert 0.7 - 0.01 <= min(fractions) and max(fractions) <= 1.0
    assert 3 / 4 - 0.01 <= min(aspects) and max(aspects) <= 4 / 3 + 0.01
    assert max(fractions) - min(fractions) > 0.2 and max(aspects) - min(aspects) > 0.3  # really random


def test_crop_box_falls_back_to_a_central_crop():
    # no try can fit an area of 2-3x the image: central crop with the aspect clamped into the ratio range
    assert crop_box(100, 400, gen(0), scale=(2, 3)) == (0, 133, 100, 133)
    assert crop_box(400, 100, gen(0), scale=(2, 3)) == (133, 0, 133, 100)
    assert crop_box(100, 120, gen(0), scale=(2, 3)) == (0, 0, 100, 120)


def test_full_area_crop_at_the_images_aspect_is_identity():
    x = torch.rand(1, 3, 24, 40, generator=gen(13))
    for seed in range(5):
        assert crop_box(24, 40, gen(seed), scale=(1, 1), ratio=(40 / 24, 40 / 24)) == (0, 0, 24, 40)
        assert torch.equal(random_resized_crop(x, gen(seed), scale=(1, 1), ratio=(40 / 24, 40 / 24)), x)


def test_augment_range_shape_and_seed():
    x = torch.rand(1, 3, 32, 48, generator=gen(14)) * 2 - 1
    a = augment(x, gen(15))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, augment(x, gen(15)))
    assert not torch.equal(a, augment(x, gen(16)))
    assert not torch.allclose(a, x, atol=1e-3)
    # jitter then crop, on the [0, 1] image
    g = gen(15)
    want = random_resized_crop(color_jitter((x + 1) / 2, g), g) * 2 - 1
    torch.testing.assert_close(a, want.clamp(-1, 1))
    assert augment(x.half(), gen(15)).dtype == torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_same_augmentation_on_cuda():
    x = torch.rand(1, 3, 32, 48, generator=gen(17)) * 2 - 1
    out = augment(x.cuda(), gen(18))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), augment(x, gen(18)), atol=1e-5, rtol=0)
