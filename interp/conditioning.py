"""What steers each frame besides its latent: text embeddings, the pose drawing and the ControlNet
strength, all functions of the frame's position p in [0, 1] between the two inputs."""
import json

import numpy as np
import torch

import pose
from ldm.errors import UserError

from .slerp import slerp
from .warp import warp_points


class TextConditioning:
    """Per-image positive embeddings and negative embeddings ([1, 77, C] each), slerped by position
    (Section 4.1: "we also interpolate the text embeddings"; `mix=lerp` as the authors' interpolate-denoise)."""

    def __init__(self, cond_a, cond_b, uncond_a, uncond_b=None, mix=slerp):
        self.cond = (cond_a, cond_b)
        self.uncond = (uncond_a, uncond_a if uncond_b is None else uncond_b)
        self.mix = mix

    def at(self, positions) -> tuple:
        """(cond, uncond), each [len(positions), 77, C]."""
        p = torch.as_tensor(positions, dtype=torch.float32)
        return tuple(self.mix(a.expand(len(p), -1, -1), b.expand(len(p), -1, -1), p) for a, b in (self.cond, self.uncond))


def control_strength(positions, ends: float = 1.0, middle: float = 1.5) -> torch.Tensor:
    """ControlNet strength ramped linearly from `ends` at the inputs to `middle` halfway between (the
    authors' setting: the frames farthest from both inputs need the pose most)."""
    p = torch.as_tensor(positions, dtype=torch.float32)
    return ends + (middle - ends) * (1 - (2 * p - 1).abs())


class PoseConditioning:
    """Keypoints of both inputs, matched and linearly interpolated, drawn as ControlNet hints (Section 4.3).

    By default only the main subject of each image (its largest person, as the authors' `get_pose(
    filter_largest=True)`) is used; `all_people` matches every person by position. Keypoints present in
    only one image are left out of the intermediate frames. With a latent warp the skeletons move with
    the latent: frame p sees image A's keypoints warped by p and image B's by p - 1, as its latent.
    """

    def __init__(self, people_a: list, people_b: list, height: int, width: int, all_people: bool = False,
                 warp=None):
        if not all_people:
            people_a, people_b = ([people[pose.main_subject(people)]] if people else [] for people in (people_a, people_b))
        self.people_a, self.people_b = people_a, people_b
        self.height, self.width, self.warp = height, width, warp
        self.pairs = pose.match_people(people_a, people_b)

    def __bool__(self):
        return bool(self.pairs)

    def _moved(self, person, amount: float):
        if self.warp is None or amount == 0:
            return person
        xy = warp_points(person[:, :2], self.warp, amount, self.width, self.height)
        return np.concatenate([xy, person[:, 2:]], axis=1)

    def keypoints_at(self, p: float) -> list:
        """The skeletons drawn at position p: people x [18, 3] (x, y, confidence) in frame pixels."""
        return [pose.interpolate(self._moved(self.people_a[i], p), self._moved(self.people_b[j], p - 1), float(p))
                for i, j in self.pairs]

    def hints(self, positions, people: list = None) -> torch.Tensor:
        """[len(positions), 3, H, W] RGB hints in [0, 1]; `people` (x [18, 3]) are drawn instead of the
        interpolated skeletons when given (a pose a person edited for one frame)."""
        drawn = {}  # each position once: a frame's candidates share its skeleton
        for p in positions:
            if p not in drawn:
                drawn[p] = pose.render(self.keypoints_at(p) if people is None else people, self.height, self.width)
        return torch.from_numpy(np.stack([drawn[p] for p in positions])).permute(0, 3, 1, 2).float() / 255.0


def read_keypoints(path, source_size) -> list:
    """People (x [18, 3]: x, y, confidence) from a `pose-detect --json` file of an input image, scaled from
    the size the keypoints were detected at to the image's `source_size` (width, height)."""
    try:
        with open(path) as f:
            record = json.load(f)
        scale = np.array([source_size[0] / record["width"], source_size[1] / record["height"], 1.0])
        return [np.asarray(person["keypoints"], dtype=np.float64).reshape(18, 3) * scale for person in record["people"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read keypoints from {path} ({type(e).__name__}: {e}): give a file written by pose-detect --json") from None


def place_keypoints(people: list, placement) -> list:
    """People given in an input image's pixels, taken through exactly the transform the image goes through
    (`placement`, an `ldm.images.Placement`: crop, then resize). Keypoints that the crop cuts away are marked
    missing (confidence 0)."""
    placed = []
    for person in people:
        person = np.asarray(person, dtype=np.float64).reshape(18, 3)
        source = person[:, :2]
        xy = placement.points(source)
        conf = np.where(placement.inside(source) & (person[:, 2] > 0), person[:, 2], 0.0)
        placed.append(np.where(conf[:, None] > 0, np.concatenate([xy, conf[:, None]], axis=1), 0.0))
    return placed
