"""The peers' evaluation protocols, so that a report of interp-eval stands beside their published tables.

Each protocol measures sequences of a fixed number of frames, both inputs included, evenly spaced: a run is
measured by the frames at the protocol's positions (a 13-frame run holds FreeMorph's seven, a 49-frame run
both protocols' frames); a run without them is left out of that protocol and counted as such. Distances
between adjacent frames are LPIPS v0.1 on AlexNet (`lpips-alex`, the `lpips` package's default network) and
FID uses pytorch-fid's Inception, as in Table 1.

Neither paper publishes its evaluation code; the formulas below are the papers' definitions as their tables
use them, written out so that the numbers can be checked:

- FreeMorph (Cao et al., ICCV 2025, Section 4 / Table 1; MorphBench and Morph4Data): 5 frames between the
  inputs (7 in all, epsilon = 1/6). LPIPS_sum: the adjacent LPIPS distances summed over the sequence and over
  all sequences; PPL_sum: the perceptual path length of StyleGAN, 1/epsilon^2 times the mean adjacent
  distance of a sequence (= 6 x its sum), summed over all sequences; FID_mean: for each of the five positions
  the FID between the input images and that frame of every sequence, averaged over the positions.
- DiffMorpher (Zhang et al., CVPR 2024, Section 5.1): 17 frames (epsilon = 1/16). FID between the input images
  and two frames drawn at random from between the inputs of every sequence, the mean of 10 draws; PPL, as
  above (= 16 x the sequence's sum of adjacent distances), and PDV, the variance of the 16 adjacent distances,
  each the mean over sequences.
"""
from dataclasses import dataclass

import numpy as np

from .measure import fid, input_frames

SPACE = "lpips-alex"  # the adjacent distances of both protocols


@dataclass(frozen=True)
class Protocol:
    """A peer's way of measuring sequences of `frames` evenly spaced frames."""
    name: str
    source: str
    frames: int
    columns: tuple   # (key, heading) of the row, in the published table's order
    published: str   # the published figures to compare with, in words

    @property
    def epsilon(self) -> float:
        return 1.0 / (self.frames - 1)

    def picks(self, sequence):
        """The indices of `sequence`'s frames at the protocol's positions, or None where it lacks one."""
        where = {round(p * (self.frames - 1), 6): k for k, p in enumerate(sequence.positions)}
        found = [where.get(float(j)) for j in range(self.frames)]
        return None if None in found else found

    def measure(self, group, lpips, inception, seed: int) -> dict:
        """The row of the sequences `group` (one scheme's): those without the protocol's frames are counted in
        `left_out`; `lpips` measures the adjacent distances, `inception` the FID; the subclass's `row` gives the
        figures of [(frames at the positions, their adjacent distances)]."""
        measured = []
        for sequence in group:
            picks = self.picks(sequence)
            if picks is not None:
                frames = [sequence.frames[k] for k in picks]
                measured.append((frames, lpips.steps(frames)))
        row = self.row(measured, inception, seed) if measured else {}
        return {"sequences": len(measured), "left_out": len(group) - len(measured), **row}

    def ppl(self, steps) -> float:
        """StyleGAN's perceptual path length over evenly spaced frames: E[d / epsilon^2] = sum(d) / epsilon."""
        return float(np.mean(steps)) / self.epsilon ** 2


class FreeMorphProtocol(Protocol):
    def row(self, measured, inception, seed: int) -> dict:
        reference = inception.vectors(input_frames(frames for frames, _ in measured))
        fids = [fid(reference, inception.vectors([frames[j] for frames, _ in measured])) for j in range(1, self.frames - 1)]
        return {"lpips_sum": float(sum(np.sum(d) for _, d in measured)),
                "fid_mean": None if None in fids else float(np.mean(fids)),
                "ppl_sum": float(sum(self.ppl(d) for _, d in measured))}


class DiffMorpherProtocol(Protocol):
    DRAWS = 10

    def row(self, measured, inception, seed: int) -> dict:
        reference = inception.vectors(input_frames(frames for frames, _ in measured))
        rng, fids = np.random.default_rng(seed), []
        for _ in range(self.DRAWS):
            drawn = [frames[1 + k] for frames, _ in measured for k in sorted(rng.choice(self.frames - 2, 2, replace=False))]
            fids.append(fid(reference, inception.vectors(drawn)))
        return {"fid": None if None in fids else float(np.mean(fids)),
                "ppl": float(np.mean([self.ppl(d) for _, d in measured])),
                "pdv": float(np.mean([np.var(d) for _, d in measured]))}


PROTOCOLS = {p.name: p for p in (
    FreeMorphProtocol("freemorph", "FreeMorph (Cao et al., ICCV 2025), Table 1", 7,
                      (("lpips_sum", "LPIPS_sum"), ("fid_mean", "FID_mean"), ("ppl_sum", "PPL_sum")),
                      "published on MorphBench: FreeMorph 84.91 / 141.32 / 2122.80, DiffMorpher 90.57 / 157.18 / "
                      "2264.20 (FreeMorph's Table 1, 768 px)"),
    DiffMorpherProtocol("diffmorpher", "DiffMorpher (Zhang et al., CVPR 2024), Section 5.1", 17,
                        (("fid", "FID (2 random x 10)"), ("ppl", "PPL"), ("pdv", "PDV")),
                        "published figures: DiffMorpher's Table 1 (MorphBench)"),
)}
