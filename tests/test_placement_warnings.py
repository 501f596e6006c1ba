"""A placement that upscales a lot, crops most of a picture away or squashes it says so; ordinary ones do not."""
from ldm.images import placement, placement_warnings


def warnings(size, target, mode="crop"):
    return placement_warnings("a.png", size, placement(size, target, mode))


def test_ordinary_placements_say_nothing():
    assert warnings((640, 480), (512, 384)) == []
    assert warnings((500, 500), (512, 512)) == []  # a slight upscale
    assert warnings((700, 500), (512, 384), "resize") == []


def test_a_tiny_image_is_reported_upscaled():
    (line,) = warnings((10, 10), (256, 256))
    assert "upscaled 25.6x to 256x256" in line and "a.png (10x10)" in line


def test_a_crop_of_most_of_the_picture_is_reported():
    (line,) = warnings((4000, 400), (512, 512))
    assert "cropped to 400x400 of its 4000x400 (10% of the picture)" in line and "--size" in line


def test_a_squashing_resize_is_reported():
    (line,) = warnings((4000, 1000), (512, 512), "resize")
    assert "squeezed 4.0x sideways" in line and "--fit crop" in line
