"""What steers each frame besides its latent: text embeddings, the pose drawing and the ControlNet
strength, all functions of the frame's position p in [0, 1] between the two inputs."""
import json

import numpy as np
import torch

import pose
from ldm.errors import UserError

from .slerp import slerp


class TextConditioning:
    """Per-image positive embeddings and negative embeddings ([1, 77, C] each), slerped by position
    (Section 4.1: "we also interpolate the text embeddings")."""

    def __init__(self, cond_a, cond_b, uncond_a, uncond_b=None):
        self.cond = (cond_a, cond_b)
        self.uncond = (uncond_a, uncond_a if uncond_b is None else uncond_b)

    def at(self, positions) -> tuple:
        """(cond, uncond), each [len(positions), 77, C]."""
        p = torch.as_tensor(positions, dtype=torch.float32)
        return tuple(slerp(a.expand(len(p), -1, -1), b.expand(len(p), -1, -1), p) for a, b in (self.cond, self.uncond))


def control_strength(positions, ends: float = 1.0, middle: float = 1.5) -> torch.Tensor:
    """ControlNet strength ramped linearly from `ends` at the inputs to `middle` halfway between (the
    authors' setting: the frames farthest from both inputs need the pose most)."""
    p = torch.as_tensor(positions, dtype=torch.float32)
    return ends + (middle - ends) * (1 - (2 * p - 1).abs())


class PoseConditioning:
    """Keypoints of both inputs, matched and linearly interpolated, drawn as ControlNet hints
    (Section 4.3). Keypoints present in only one image are left out of the intermediate frames."""

    def __init__(self, people_a: list, people_b: list, height: int, width: int):
        self.people_a, self.people_b = people_a, people_b
        self.height, self.width = height, width
        self.pairs = pose.match_people(people_a, people_b)

    def __bool__(self):
        return bool(self.pairs)

    def keypoints_at(self, p: float) -> list:
        return [pose.interpolate(self.people_a[i], self.people_b[j], float(p)) for i, j in self.pairs]

    def hints(self, positions) -> torch.Tensor:
        """[len(positions), 3, H, W] RGB hints in [0, 1]."""
        canvases = [pose.render(self.keypoints_at(p), self.height, self.width) for p in positions]
        return torch.from_numpy(np.stack(canvases)).permute(0, 3, 1, 2).float() / 255.0


def read_keypoints(path, height: int, width: int) -> list:
    """People from a `pose-detect --json` file, scaled to height x width."""
    try:
        with open(path) as f:
            record = json.load(f)
        scale = np.array([width / record["width"], height / record["height"], 1.0])
        return [np.asarray(person["keypoints"], dtype=np.float64).reshape(18, 3) * scale for person in record["people"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read keypoints from {path} ({type(e).__name__}: {e}): give a file written by pose-detect --json") from None
