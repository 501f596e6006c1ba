"""The order in which frames are made and the noise level of each round (Section 4.1).

Frames are 0..N; 0 and N are the inputs. Round 0 makes the middle frame from (0, N) at the
highest noise level; every later round takes each gap between consecutive finished frames that
still holds an unmade frame and makes its middle frame from the gap's two ends, which are the
nearest finished frames on either side, at the next lower noise level. The middle of a gap
(l, r) is (l + r) // 2, so a gap of length L splits into floor(L/2) and ceil(L/2), any N >= 2
works, and the tree has ceil(log2 N) rounds. Frames of one round are independent and can be
made as one batch.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np

from ldm.errors import UserError
from ldm.sample.ddim import ddim_timesteps

from .schedules import interpolation_positions


@dataclass(frozen=True)
class Frame:
    """Frame `index` is made from the finished frames `left` < index < `right`; `position` in
    (0, 1) is where it sits between them in interpolation-schedule coordinates."""
    index: int
    left: int
    right: int
    position: float


def frame_tree(n: int, schedule: str | Sequence[float] = "uniform") -> list[list[Frame]]:
    """The rounds of frame making for frames 0..n, first (noisiest) round first.

    `schedule` is passed to `interpolation_positions` and only changes the `position`s.
    """
    if not isinstance(n, Integral) or n < 2:
        raise UserError(f"the last frame index N must be an integer >= 2 (N + 1 frames in all), got {n!r}")
    p = interpolation_positions(n, schedule)
    levels, gaps = [], [(0, n)]
    while gaps:
        level, next_gaps = [], []
        for left, right in gaps:
            middle = (left + right) // 2
            level.append(Frame(middle, left, right, (p[middle] - p[left]) / (p[right] - p[left])))
            next_gaps += [(l, r) for l, r in ((left, middle), (middle, right)) if r - l >= 2]
        levels.append(level)
        gaps = next_gaps
    return levels


class NoiseLevel(NamedTuple):
    """A round's noise level: `timestep` of the training schedule and its index `step` in the DDIM
    sampler's ascending timestep list."""
    step: int
    timestep: int


def descendants(rounds: list, index: int) -> set:
    """Frame `index` and every frame made from it, directly or through others (the frames to remake when
    it is revised: the authors' `revise_frames`)."""
    stale = {index}
    for frames in rounds:
        stale |= {f.index for f in frames if f.left in stale or f.right in stale}
    return stale


def noise_levels(num_levels: int, steps: int, low: float = 0.30, high: float = 0.55,
                 levels: Sequence[float | int] | None = None, num_timesteps: int = 1000) -> list[NoiseLevel]:
    """The noise level of each round on the `steps`-step DDIM grid, strictly decreasing with depth.

    As the authors' `get_step_schedule(..., 'linear')`: the DDIM step indices int(x) for x in
    linspace(int(low S), int(high S), rounds), used from the highest (round 0) to the lowest (a single
    round uses `low`). `levels` overrides this with one value per round, first round first: a float is a
    fraction of the schedule (step index int(f S)), an int a timestep (the nearest on the grid, a tie
    going to the lower one). Levels that fall on the same step are an error.
    """
    if not isinstance(num_levels, Integral) or num_levels < 1:
        raise UserError(f"the number of noise levels must be a positive integer, got {num_levels!r}")
    grid = ddim_timesteps(steps, num_timesteps).tolist()
    if levels is None:
        if not 0 < low <= high < 1:
            raise UserError(f"noise levels need 0 < low <= high < 1, got low={low}, high={high}")
        indices = [int(x) for x in np.linspace(int(low * steps), int(high * steps), num_levels)][::-1]
    else:
        if len(levels) != num_levels:
            raise UserError(f"{len(levels)} noise levels were given for {num_levels} rounds of frames: give exactly one per round")
        indices = [_level_index(v, grid, num_timesteps) for v in levels]
    indices = [min(k, len(grid) - 1) for k in indices]
    if any(deeper >= k for k, deeper in zip(indices, indices[1:])):
        raise UserError(f"noise levels must decrease strictly from round to round, got timesteps {[grid[k] for k in indices]}: "
                        "spread them further apart or use more DDIM steps")
    return [NoiseLevel(k, grid[k]) for k in indices]


def _level_index(value, grid: list, num_timesteps: int) -> int:
    """A user's level as a DDIM step index: ints are timesteps, other numbers fractions of the schedule."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise UserError(f"a noise level must be a fraction in (0, 1) or an integer timestep, got {value!r}")
    if isinstance(value, Integral):
        if not 1 <= value < num_timesteps:
            raise UserError(f"a noise level timestep must be from 1 to {num_timesteps - 1}, got {value}")
        return min(range(len(grid)), key=lambda k: abs(grid[k] - value))
    if not 0 < value < 1:
        raise UserError(f"a noise level fraction must lie in (0, 1), got {value}")
    return int(value * len(grid))
