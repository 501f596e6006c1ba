"""Interpolation schedules (Section 5.2)."""
import pytest

from interp import ease, interpolation_positions, uniform
from ldm.errors import UserError


@pytest.mark.parametrize("name", ["uniform", "ease"])
@pytest.mark.parametrize("n", [2, 3, 7, 16, 1000])
def test_named_schedules_run_from_0_to_1_strictly_increasing(name, n):
    p = interpolation_positions(n, name)
    assert len(p) == n + 1 and p[0] == 0.0 and p[-1] == 1.0
    assert all(b > a for a, b in zip(p, p[1:]))


def test_uniform_is_evenly_spaced():
    assert interpolation_positions(4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert uniform(0.3) == 0.3


def test_ease_is_smoothstep():
    assert [ease(x) for x in (0.0, 0.5, 1.0)] == [0.0, 0.5, 1.0]
    assert ease(0.25) == pytest.approx(0.15625)
    assert ease(1 - 0.25) == pytest.approx(1 - ease(0.25)), "symmetric"
    p = interpolation_positions(8, "ease")
    steps = [b - a for a, b in zip(p, p[1:])]
    assert steps[0] < steps[3] and steps[-1] < steps[4], "slow near the inputs, fast in the middle"


def test_user_positions_pass_through():
    assert interpolation_positions(3, [0, 0.1, 0.9, 1]) == [0.0, 0.1, 0.9, 1.0]


@pytest.mark.parametrize("schedule", [
    "linear",                       # unknown name
    [0.0, 0.5, 1.0],                # too few
    [0.0, 0.2, 0.4, 0.6, 1.0],      # too many
    [0.1, 0.2, 0.3, 1.0],           # does not start at 0
    [0.0, 0.2, 0.3, 0.9],           # does not end at 1
    [0.0, 0.5, 0.4, 1.0],           # decreasing
    [0.0, 0.5, 0.5, 1.0],           # repeated
    [0.0, float("nan"), 0.5, 1.0],
])
def test_bad_schedules_are_rejected(schedule):
    with pytest.raises(UserError):
        interpolation_positions(3, schedule)
