"""Placement of source images in the frame, and keypoints carried through the same transform."""
import numpy as np
import pytest
from PIL import Image

from ldm.errors import UserError
from ldm.images import Placement, fit, frame_size, placement


def old_fit(image, size=None):
    """`fit` as it was before Placement, kept to check that its output has not changed."""
    w, h = image.size
    tw, th = (max(64, s - s % 64) for s in (size or (w, h)))
    if w * th > h * tw:
        cw, ch = round(h * tw / th), h
    else:
        cw, ch = w, round(w * th / tw)
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch))
    return image if image.size == (tw, th) else image.resize((tw, th), Image.LANCZOS)


def noise_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("source", [(300, 200), (200, 300), (417, 300), (128, 64), (640, 640), (130, 70)])
@pytest.mark.parametrize("size", [None, (64, 64), (128, 64), (64, 192), (200, 130), (640, 640)])
def test_fit_is_unchanged(source, size):
    im = noise_image(*source)
    assert np.array_equal(np.asarray(fit(im, size)), np.asarray(old_fit(im, size)))


@pytest.mark.parametrize("box", [(40, 0, 340, 300), (0, 10, 417, 290), (7, 3, 100, 77)])
def test_integer_box_is_crop_then_resize(box):
    im, size = noise_image(417, 300), (128, 192)
    expected = im.crop(box).resize(size, Image.LANCZOS)
    assert np.array_equal(np.asarray(Placement(box, size).image(im)), np.asarray(expected))


def test_identity_is_a_copy():
    im = noise_image(128, 64)
    out = Placement((0, 0, 128, 64), (128, 64)).image(im)
    assert out is not im and np.array_equal(np.asarray(out), np.asarray(im))


def dot_image(w, h, centre, radius):
    """Black image with a white disc at the pixel coordinates centre = (x, y)."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.where((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2, 255, 0).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def centroid(im):
    """Brightness-weighted centroid (x, y) of the image's bright part."""
    a = np.asarray(im, dtype=np.float64)[..., 0]
    a = np.where(a > 0.3 * a.max(), a, 0.0)
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return np.array([(a * xx).sum(), (a * yy).sum()]) / a.sum()


SOURCES = [(300, 200), (200, 320), (417, 300), (160, 160)]
TARGETS = [(128, 128), (192, 128), (128, 256), (256, 64)]
DOTS = [(0.5, 0.5), (0.31, 0.66), (0.62, 0.35), (0.08, 0.9), (0.93, 0.12)]  # as fractions of the source


@pytest.mark.parametrize("mode", ["crop", "resize"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("target", TARGETS)
def test_dots_land_where_points_says(source, target, mode):
    w, h = source
    where, radius = placement(source, target, mode), max(w, h) / 40
    checked = 0
    for fx, fy in DOTS:
        centre = np.array([fx * w + 0.3, fy * h - 0.2])  # off the pixel grid
        out = where.image(dot_image(w, h, centre, radius))
        assert out.size == target
        rim = centre + radius * np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])
        if where.inside(rim).all():  # the whole dot is in the frame: its centre is where points says
            assert np.abs(centroid(out) - where.points(centre)).max() <= 0.5
            checked += 1
        elif not where.inside(rim).any():  # cropped away: nothing of it is left
            assert not where.inside(centre) and np.asarray(out).max() < 20
    assert checked >= 1


def test_points_of_the_box_corners_are_the_frame_corners():
    where = Placement((10.25, 4.0, 110.25, 54.0), (200, 100))
    corners = np.array([[10.25, 4.0], [110.25, 54.0]]) - 0.5  # continuous corners as pixel coordinates
    np.testing.assert_allclose(where.points(corners), [[-0.5, -0.5], [199.5, 99.5]])
    assert where.points(np.zeros((3, 4, 2))).shape == (3, 4, 2)


def test_pixel_centre_convention():
    # Upscaled 4x, pixel (5, 9) covers [20, 24) x [36, 40): its centre is 21.5, 37.5, not 20, 36.
    a = np.zeros((16, 32, 3), dtype=np.uint8)
    a[9, 5] = 255
    where = placement((32, 16), (128, 64), "resize")
    np.testing.assert_allclose(where.points([5, 9]), [21.5, 37.5])
    np.testing.assert_allclose(centroid(where.image(Image.fromarray(a))), [21.5, 37.5], atol=0.05)


def test_subpixel_box_moves_the_dot_by_the_fraction():
    w, h, target = 300, 200, (192, 128)
    centre = np.array([[150.0, 100.0]])
    im = dot_image(w, h, centre[0], radius=6)
    for dx in (0.0, 0.25, 0.5):
        where = Placement((dx, 0, dx + 300, 200), target)
        assert np.abs(centroid(where.image(im)) - where.points(centre)[0]).max() <= 0.3


def test_inside_is_false_for_points_cropped_away():
    where = placement((400, 200), (128, 128), "crop")  # keeps columns 100 .. 299
    assert where.box == (100, 0, 300, 200)
    xy = np.array([[50.0, 100.0], [100.0, 100.0], [200.0, 0.0], [299.0, 199.0], [350.0, 50.0], [200.0, -1.0]])
    assert where.inside(xy).tolist() == [False, True, True, True, False, False]
    assert placement((400, 200), (128, 128), "resize").inside(xy).tolist() == [True] * 5 + [False]


def test_placement_rounds_the_target_and_checks_the_mode():
    assert placement((300, 200), (130, 60)).size == (128, 64)
    assert placement((300, 200), (200, 100), "resize").box == (0, 0, 300, 200)
    with pytest.raises(UserError, match="mode"):
        placement((300, 200), (128, 128), "stretch")


@pytest.mark.parametrize("source, native, expected", [
    ((1024, 768), 768, (768, 576)),
    ((600, 800), 512, (384, 512)),
    ((500, 500), 512, (512, 512)),
    ((640, 640), 768, (768, 768)),
    ((1920, 1080), 512, (512, 320)),   # 288 -> 320 (nearest multiple of 64)
    ((1000, 100), 512, (512, 64)),     # 51.2 -> at least 64
    ((100, 1000), 768, (64, 768)),
])
def test_frame_size(source, native, expected):
    assert frame_size(source, native) == expected
