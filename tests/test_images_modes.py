"""Every Pillow mode a user's file may have is read as the RGB picture it shows (ldm.images.open_image)."""
import numpy as np
import pytest
from PIL import Image

from ldm.images import open_image

GREY = 0.25  # the grey level of every test picture, as a fraction of white


def grey(mode: str):
    """A 4x3 picture of GREY in `mode`, and the file format that keeps the mode."""
    if mode in ("I;16", "I;16B"):
        return Image.frombytes(mode, (4, 3), np.full((3, 4), round(GREY * 65535), "<u2" if mode == "I;16" else ">u2").tobytes()), "png"
    if mode == "I":
        return Image.fromarray(np.full((3, 4), round(GREY * 65535), dtype=np.int32), "I"), "tiff"
    if mode == "F":
        return Image.fromarray(np.full((3, 4), GREY, dtype=np.float32), "F"), "tiff"
    if mode == "CMYK":
        return Image.new("CMYK", (4, 3), (0, 0, 0, round((1 - GREY) * 255))), "tiff"
    rgb = Image.new("RGB", (4, 3), (round(GREY * 255),) * 3)
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE), "png"
    return rgb.convert(mode), "png" if mode != "YCbCr" else "jpeg"


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "I;16B", "I", "F", "CMYK", "YCbCr", "P", "LA", "RGBA"])
def test_every_mode_reads_as_its_grey(tmp_path, mode):
    im, fmt = grey(mode)
    path = tmp_path / f"x.{fmt}"
    im.save(path)
    with Image.open(path) as check:
        assert check.mode == mode or (mode, check.mode) in {("I;16B", "I;16"), ("YCbCr", "RGB")}, check.mode
    rgb = np.asarray(open_image(path), dtype=np.float64)
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_allclose(rgb, GREY * 255, atol=2)


def test_float_images_in_0_255_are_read_as_such(tmp_path):
    Image.fromarray(np.full((3, 4), 200.0, dtype=np.float32), "F").save(tmp_path / "x.tiff")
    np.testing.assert_allclose(np.asarray(open_image(tmp_path / "x.tiff")), 200)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_white(tmp_path, mode):
    im = Image.new("RGBA", (4, 3), (0, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))
    if mode == "P":
        im = Image.new("P", (4, 3), 1)
        im.putpalette([255, 0, 0, 0, 0, 0])
        im.putpixel((0, 0), 0)
        im.info["transparency"] = 0
    else:
        im = im.convert(mode)
    im.save(tmp_path / "x.png", transparency=0) if mode == "P" else im.save(tmp_path / "x.png")
    rgb = np.asarray(open_image(tmp_path / "x.png"))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [0, 0, 0]
