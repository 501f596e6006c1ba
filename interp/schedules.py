"""Interpolation schedules (Section 5.2): where frame i of 0..N sits between the two inputs.

A schedule maps the uniform frame coordinate x = i / N in [0, 1] to an interpolation position
p in [0, 1]; p = 0 is the first input and p = 1 the second. Besides the named schedules a user
may give the N + 1 positions directly. Perceptual re-timing (`even_positions`) finds the positions at which a
measured sequence changes at an even rate: evenly spaced positions do not change the picture evenly, so the
steps between adjacent frames of a pass are measured (interp/metrics/measure.py) and the sequence is made again
at positions where its perceptual length grows evenly.
"""
from collections.abc import Sequence

import numpy as np

from ldm.errors import UserError


def uniform(x: float) -> float:
    """Frames evenly spaced between the inputs."""
    return x


def ease(x: float) -> float:
    """Ease in-out with the smoothstep polynomial 3x^2 - 2x^3: slow near both inputs, fastest
    in the middle, exact at 0, 1/2 and 1."""
    return x * x * (3.0 - 2.0 * x)


SCHEDULES = {"uniform": uniform, "ease": ease}


def interpolation_positions(n: int, schedule: str | Sequence[float] = "uniform") -> list[float]:
    """The positions p_0 = 0 < p_1 < ... < p_N = 1 of the frames 0..N.

    `schedule` is a name in SCHEDULES or a list of N + 1 strictly increasing numbers from 0 to 1.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise UserError(f"unknown interpolation schedule {schedule!r}: use one of {', '.join(SCHEDULES)} or a list of positions")
        return [SCHEDULES[schedule](i / n) for i in range(n + 1)]
    positions = [float(p) for p in schedule]
    if len(positions) != n + 1:
        raise UserError(f"the interpolation schedule lists {len(positions)} positions: give one per frame, {n + 1} in all")
    if positions[0] != 0.0 or positions[-1] != 1.0:
        raise UserError(f"the interpolation schedule must start at 0 and end at 1, got {positions[0]} ... {positions[-1]}")
    if any(not q > p for p, q in zip(positions, positions[1:])):
        raise UserError("the interpolation schedule must increase strictly from each frame to the next")
    return positions


def even_positions(positions, steps) -> tuple:
    """Positions p*_0 = 0 < ... < p*_N = 1 at which the piecewise-linear path length s(p) grows by S / N per frame."""
    p, d = np.asarray(positions, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    floor = 1e-6 * max(float(d.sum()), 1e-12)  # a step of zero still moves the frame a little: positions stay distinct
    s = np.concatenate([[0.0], np.cumsum(np.maximum(d, floor))])
    new = np.interp(np.linspace(0.0, s[-1], len(p)), s, p)
    new[0], new[-1] = 0.0, 1.0
    return tuple(float(x) for x in new)
