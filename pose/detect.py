"""Detect people in an image: load it, run the network, decode; retry on a photograph of it.

Stylized images (paintings, cartoons; the paper's Fig. 4) often give no pose, or one of low
confidence. The caller may pass `fallback`, a function that turns the image into a photograph
(in `interp/`, img2img with a "photo" prompt); when nobody is found or the main subject's mean
keypoint confidence is below `min_confidence`, detection runs on its result too, and the
keypoints of whichever main subject is more confident are used, mapped onto the original image.
"""
from pathlib import Path

import cv2
import numpy as np

from .decode import decode_scored
from .errors import PoseError
from .match import main_subject
from .network import DEFAULT_SCALES, load

MIN_CONFIDENCE = 0.5  # below this mean keypoint confidence of the main subject, the fallback is tried


def confidence(found) -> float:
    """Mean confidence of the present keypoints of the main subject of [(keypoints, score)]; 0 for nobody."""
    if not found:
        return 0.0
    person = found[main_subject([kp for kp, _ in found])][0]
    present = person[:, 2] > 0
    return float(person[present, 2].mean()) if present.any() else 0.0


def read_image(image):
    """An HxWx3 uint8 RGB array from an array of that form or a path to an image file."""
    if isinstance(image, (str, Path)):
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            reason = "it does not exist" if not Path(image).exists() else "OpenCV cannot decode it"
            raise PoseError(f"cannot read image {image}: {reason}")
        return np.ascontiguousarray(bgr[:, :, ::-1])
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise PoseError(f"an image must be an HxWx3 uint8 RGB array, got shape "
                        f"{list(array.shape)} dtype {array.dtype}")
    return np.ascontiguousarray(array)


def detect_scored(image, model=None, fallback=None, scales=DEFAULT_SCALES, min_confidence=MIN_CONFIDENCE):
    """`detect`, with each person's score: [(keypoints [18, 3], score)], highest score first."""
    rgb = read_image(image)
    net = load(model, scales)
    found = decode_scored(*net.maps(rgb), rgb.shape[:2])
    if fallback is None or confidence(found) >= min_confidence:
        return found
    photo = read_image(fallback(rgb))
    # The photograph may come back at another size: scale its keypoints onto the original.
    scale = np.array([rgb.shape[1] / photo.shape[1], rgb.shape[0] / photo.shape[0], 1.0])
    translated = [(keypoints * scale, score) for keypoints, score in decode_scored(*net.maps(photo), photo.shape[:2])]
    return translated if confidence(translated) > confidence(found) else found


def detect(image, model=None, fallback=None, scales=DEFAULT_SCALES, min_confidence=MIN_CONFIDENCE):
    """People in an image: a list of [18, 3] arrays (x, y, confidence), most confident first.

    image: HxWx3 uint8 RGB array or path. model: see `pose.network.load` (None: the CMU COCO
    model from the weights catalog). fallback: optional callable image -> image (HxWx3 uint8 RGB,
    any size), called only when nobody or only a main subject less confident than `min_confidence`
    is found; its result is searched too.
    scales: network input heights as multiples of 368 px, averaged.
    """
    return [keypoints for keypoints, _ in detect_scored(image, model, fallback, scales, min_confidence)]
