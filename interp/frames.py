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

from ldm.ddim import ddim_timesteps
from ldm.errors import UserError

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
    """A round's noise level: `timestep` of the training schedule and its index `step` in the
    sampler's ascending timestep list (the DDIM list, or 0..T-1 when there is no DDIM schedule,
    where step == timestep)."""
    step: int
    timestep: int


def noise_levels(num_levels: int, low: float = 0.25, high: float = 0.65, num_timesteps: int = 1000,
                 steps: int | None = None, levels: Sequence[float | int] | None = None) -> list[NoiseLevel]:
    """The noise level of each round, strictly decreasing with depth.

    By default linear from `high` (round 0) to `low` (last round) as fractions of the
    `num_timesteps`-step schedule; a single round uses `high`. `levels` overrides this with one
    value per round: a float is a fraction in (0, 1), an int a timestep in [1, T - 1]. Each
    level snaps to the nearest timestep of the DDIM schedule with `steps` steps (to the nearest
    integer timestep when `steps` is None; a tie goes to the lower one). Levels that snap to the
    same timestep are an error.
    """
    if not isinstance(num_levels, Integral) or num_levels < 1:
        raise UserError(f"the number of noise levels must be a positive integer, got {num_levels!r}")
    if levels is None:
        if not 0 < low <= high < 1:
            raise UserError(f"noise levels need 0 < low <= high < 1, got low={low}, high={high}")
        span = max(num_levels - 1, 1)
        targets = [(high + (low - high) * k / span) * num_timesteps for k in range(num_levels)]
    else:
        if len(levels) != num_levels:
            raise UserError(f"{len(levels)} noise levels were given for {num_levels} rounds of frames: give exactly one per round")
        targets = [_level_timestep(v, num_timesteps) for v in levels]
    candidates = ddim_timesteps(steps, num_timesteps).tolist() if steps is not None else list(range(num_timesteps))
    snapped = [min(range(len(candidates)), key=lambda k: abs(candidates[k] - target)) for target in targets]
    result = [NoiseLevel(k, candidates[k]) for k in snapped]
    if any(deeper.timestep >= level.timestep for level, deeper in zip(result, result[1:])):
        raise UserError(f"noise levels must decrease strictly from round to round, got timesteps {[r.timestep for r in result]}: "
                        "spread them further apart or use more DDIM steps")
    return result


def _level_timestep(value, num_timesteps: int) -> float:
    """A user's level as a timestep: ints are timesteps, other numbers fractions of the schedule."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise UserError(f"a noise level must be a fraction in (0, 1) or an integer timestep, got {value!r}")
    if isinstance(value, Integral):
        if not 1 <= value < num_timesteps:
            raise UserError(f"a noise level timestep must be from 1 to {num_timesteps - 1}, got {value}")
        return float(value)
    if not 0 < value < 1:
        raise UserError(f"a noise level fraction must lie in (0, 1), got {value}")
    return value * num_timesteps
