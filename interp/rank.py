"""Ranking candidate frames (Section 4.4).

One bad frame spoils every frame made from it, so each frame can be generated K times with different
noise and the best kept. A scorer is anything that maps decoded images [B,3,H,W] in [-1,1] to scores
[B] (higher is better); the paper's scorer is CLIP: cosine similarity to a positive prompt minus
cosine similarity to a negative one.
"""
from typing import Protocol

import torch

import ldm
from ldm.nets.clip import cosine_similarity

# Defaults for photographs (the paper's example, "high quality, detailed, 2D" / "blurry, distorted, 3D
# render", suits its cartoon pair; the authors wrote prompts like these for their photo pairs).
POSITIVE = "a high quality, detailed, sharp photograph"
NEGATIVE = "blurry, distorted, deformed, low quality"


class Scorer(Protocol):
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class CLIPScorer:
    """score = cos(image, positive prompt) - cos(image, negative prompt), with CLIP's own preprocessing."""

    def __init__(self, clip, positive: str = POSITIVE, negative: str = NEGATIVE):
        self.clip = clip
        with torch.no_grad():
            self.text = clip.encode_text(ldm.tokenize([positive, negative]))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = self.clip.encode_image(ldm.clip_preprocess(images, self.clip.image_size))
        cos = cosine_similarity(features.float(), self.text.float())
        return (cos[:, 0] - cos[:, 1]).cpu()


def candidate_counts(num_levels: int, candidates) -> list:
    """Candidates per round: an integer K everywhere, or 'auto' = the authors' schedule
    (8 in the first round, one fewer in each later round, at least 3)."""
    if candidates == "auto":
        return [max(3, 8 - level) for level in range(num_levels)]
    return [int(candidates)] * num_levels

