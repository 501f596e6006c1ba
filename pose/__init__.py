"""OpenPose body detection, pose interpolation and ControlNet conditioning images (paper Sec. 4.3).

    people = pose.detect(image)                        # [18, 3] arrays (x, y, confidence)
    people = pose.decode(heatmaps, pafs, (H, W))       # the post-processing alone
    kp = pose.interpolate(kp_a, kp_b, alpha)           # shared keypoints, linearly
    canvas = pose.render(people, height, width)        # uint8 RGB conditioning image

Keypoints are in input-image pixels, in the COCO-18 order of `pose.skeleton.NAMES`;
confidence 0 marks a missing keypoint. Nothing here depends on torch, on diffusion or on ldm/.
"""
from .decode import decode, decode_scored
from .detect import detect, detect_scored, read_image
from .errors import PoseError
from .match import interpolate, interpolate_people, main_subject, match_people
from .network import CATALOG, OpenPoseNet, load
from .render import draw_skeletons, render
from .skeleton import NAMES

__all__ = [
    "CATALOG", "NAMES", "OpenPoseNet", "PoseError", "decode", "decode_scored", "detect", "detect_scored", "draw_skeletons",
    "interpolate", "interpolate_people", "load", "main_subject", "match_people", "read_image", "render",
]
