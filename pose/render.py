"""Draw skeletons the way the OpenPose ControlNet saw them during training.

Same drawing as ControlNet 1.0's annotator (`annotator/openpose/util.py`, `draw_bodypose`):
joints first, as filled circles of radius 4 in the keypoint's colour; then each of the 17
limbs, an ellipse with semi-axes (half its length, 4 px) filled in the limb's colour and
blended at 0.6 onto the canvas. Pixel coordinates are truncated to integers as there.

ControlNet's apps drew at the detector resolution (short side 512) and resized the drawing to
the generation size with nearest-neighbour interpolation, so strokes scale with the image;
`render` does the same.
"""
import math

import cv2
import numpy as np

from .errors import PoseError
from .skeleton import COLORS, DRAWN_LIMBS, LIMBS, NUM_KEYPOINTS, as_person

STICK_WIDTH = 4
JOINT_RADIUS = 4
LIMB_ALPHA = 0.6
ANNOTATE_RESOLUTION = 512


def draw_skeletons(canvas, people):
    """Draw people ([18, 3] keypoints in canvas pixels) onto an HxWx3 uint8 RGB canvas, in place."""
    people = [as_person(p) for p in people]
    for part in range(NUM_KEYPOINTS):
        for person in people:
            x, y, confidence = person[part]
            if confidence > 0:
                cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, COLORS[part], thickness=-1)
    mask = np.zeros(canvas.shape[:2], np.uint8)
    color = np.array(COLORS[:DRAWN_LIMBS], np.float64)
    for limb, (a, b) in enumerate(LIMBS[:DRAWN_LIMBS]):
        for person in people:
            if person[a, 2] <= 0 or person[b, 2] <= 0:
                continue
            (xa, ya), (xb, yb) = person[a, :2], person[b, :2]
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)),
                                       (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            mask[:] = 0
            cv2.fillConvexPoly(mask, polygon, 1)
            inside = mask.astype(bool)
            blended = (1 - LIMB_ALPHA) * canvas[inside] + LIMB_ALPHA * color[limb]
            canvas[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return canvas


def render(people, height, width, source_size=None, annotate_resolution=ANNOTATE_RESOLUTION):
    """The ControlNet OpenPose conditioning image of `people`: uint8 [height, width, 3] RGB.

    people: [18, 3] keypoint arrays in pixels of an image of size source_size (H, W); None
    means they are already in pixels of the height x width output. The skeletons are drawn at
    a size whose short side is annotate_resolution and resized to the output with nearest
    neighbour, as ControlNet did; annotate_resolution=None draws at the output size directly
    (identical when the output's short side is 512).
    """
    if height <= 0 or width <= 0:
        raise PoseError(f"render size must be positive, got {height}x{width}")
    source_h, source_w = source_size if source_size is not None else (height, width)
    if annotate_resolution is None:
        draw_h, draw_w = height, width
    else:
        k = annotate_resolution / min(height, width)
        draw_h, draw_w = round(height * k), round(width * k)
    scale = np.array([draw_w / source_w, draw_h / source_h, 1.0])
    canvas = np.zeros((draw_h, draw_w, 3), np.uint8)
    draw_skeletons(canvas, [as_person(p) * scale for p in people])
    if (draw_h, draw_w) != (height, width):
        canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_NEAREST)
    return canvas
