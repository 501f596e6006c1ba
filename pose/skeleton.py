"""The COCO-18 OpenPose body skeleton: keypoint names, limbs, PAF channels, drawing colours.

The one place for these tables. The network layout is that of the CMU COCO body model
(Cao et al. 2017, `models/pose/coco/pose_deploy_linevec.prototxt`); the limb order and colours
are those of the ControlNet OpenPose annotator (lllyasviel/ControlNet,
`annotator/openpose/util.py`), which the SD 2.1 OpenPose ControlNet was trained on.
"""
import numpy as np

from .errors import PoseError

NAMES = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)
NUM_KEYPOINTS = len(NAMES)

# The network sees the image at 1/8 resolution and emits one blob: 19 heatmaps (18 parts, then
# background) followed by 38 part-affinity-field channels (`concat_stage7` in the prototxt).
STRIDE = 8
NUM_HEATMAPS = NUM_KEYPOINTS + 1
NUM_PAFS = 38

# Limbs (part a -> part b), in the order OpenPose connects them. The PAF of a limb points from a
# to b. The last two (ear-shoulder) only help assembling people and are never drawn.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),
    (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
    (2, 16), (5, 17),
)
DRAWN_LIMBS = 17
# Limbs whose connection may start a new person during assembly (OpenPose skips the ear-shoulder
# pairs here, so that a lone ear cannot spawn a person).
SEED_LIMBS = 17

# (x, y) channels of each limb's PAF among the 38 PAF channels, in LIMBS order.
PAF_XY = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25),
    (0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11),
    (28, 29), (30, 31), (34, 35), (32, 33), (36, 37),
    (18, 19), (26, 27),
)

# RGB colour of keypoint i, and of the i-th drawn limb.
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)


def as_person(keypoints):
    """A keypoint array checked to be [18, 3]."""
    person = np.asarray(keypoints, dtype=np.float64)
    if person.shape != (NUM_KEYPOINTS, 3):
        raise PoseError(f"a person must be an [{NUM_KEYPOINTS}, 3] array of (x, y, confidence), "
                        f"got shape {list(person.shape)}")
    return person
