"""Detect people in an image: load it, run the network, decode; retry on a photograph of it.

Stylized images (paintings, cartoons; the paper's Fig. 4) often give no pose. The caller may
pass `fallback`, a function that turns the image into a photograph (in `interp/`, img2img
with a "photo" prompt); detection then runs on its result and the keypoints are mapped back
onto the original image.
"""
from pathlib import Path

import cv2
import numpy as np

from ldm.errors import UserError

from .decode import decode_scored
from .network import DEFAULT_SCALES, load


def read_image(image):
    """An HxWx3 uint8 RGB array from an array of that form or a path to an image file."""
    if isinstance(image, (str, Path)):
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            reason = "it does not exist" if not Path(image).exists() else "OpenCV cannot decode it"
            raise UserError(f"cannot read image {image}: {reason}")
        return np.ascontiguousarray(bgr[:, :, ::-1])
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise UserError(f"an image must be an HxWx3 uint8 RGB array, got shape "
                        f"{list(array.shape)} dtype {array.dtype}")
    return np.ascontiguousarray(array)


def detect_scored(image, model=None, fallback=None, scales=DEFAULT_SCALES):
    """`detect`, with each person's score: [(keypoints [18, 3], score)], highest score first."""
    rgb = read_image(image)
    net = load(model, scales)
    found = decode_scored(*net.maps(rgb), rgb.shape[:2])
    if found or fallback is None:
        return found
    photo = read_image(fallback(rgb))
    found = decode_scored(*net.maps(photo), photo.shape[:2])
    # The photograph may come back at another size: scale its keypoints onto the original.
    scale = np.array([rgb.shape[1] / photo.shape[1], rgb.shape[0] / photo.shape[0], 1.0])
    return [(keypoints * scale, score) for keypoints, score in found]


def detect(image, model=None, fallback=None, scales=DEFAULT_SCALES):
    """People in an image: a list of [18, 3] arrays (x, y, confidence), most confident first.

    image: HxWx3 uint8 RGB array or path. model: see `pose.network.load` (None: the CMU COCO
    model from the weights catalog). fallback: optional callable image -> image (HxWx3 uint8 RGB,
    any size), called only when no person is found, whose result is searched instead.
    scales: network input heights as multiples of 368 px, averaged.
    """
    return [keypoints for keypoints, _ in detect_scored(image, model, fallback, scales)]
