"""The frame tree (Section 4.1) and the noise level of each round."""
import math

import pytest

from ldm.sample.ddim import ddim_timesteps
from interp import Frame, NoiseLevel, frame_tree, interpolation_positions, noise_levels
from ldm.errors import UserError

SIZES = list(range(2, 41)) + [63, 64, 65, 100, 127, 1000, 1025]


@pytest.mark.parametrize("n", SIZES)
def test_tree_makes_every_frame_once_from_its_nearest_finished_neighbours(n):
    levels = frame_tree(n)
    finished = {0, n}
    made = []
    for level in levels:
        assert level, "no empty rounds"
        for f in level:
            assert f.index not in finished
            assert f.left in finished and f.right in finished, "parents are made in earlier rounds"
            assert f.left < f.index < f.right
            # Nearest on each side: nothing finished strictly between a parent and the frame.
            assert not any(f.left < i < f.right for i in finished)
            assert 0 < f.position < 1
        finished |= {f.index for f in level}  # frames of one round only depend on earlier rounds
        made += [f.index for f in level]
    assert sorted(made) == list(range(1, n)), "every interior frame exactly once"
    assert len(levels) == math.ceil(math.log2(n))


def test_small_trees_spelled_out():
    assert frame_tree(2) == [[Frame(1, 0, 2, 0.5)]]
    assert [[(f.index, f.left, f.right) for f in level] for level in frame_tree(6)] == [
        [(3, 0, 6)], [(1, 0, 3), (4, 3, 6)], [(2, 1, 3), (5, 4, 6)]]
    # Middle of an odd gap is rounded down: gap (0, 5) -> 2.
    assert frame_tree(5)[0][0].index == 2


def test_positions_follow_the_schedule():
    n = 6
    p = interpolation_positions(n, "ease")
    for level in frame_tree(n, "ease"):
        for f in level:
            assert f.position == pytest.approx((p[f.index] - p[f.left]) / (p[f.right] - p[f.left]))
    custom = [0.0, 0.1, 0.2, 0.3, 1.0]
    first = frame_tree(4, custom)[0][0]
    assert (first.index, first.position) == (2, pytest.approx(0.2))
    for level in frame_tree(5):
        for f in level:
            assert f.position == pytest.approx((f.index - f.left) / (f.right - f.left))


@pytest.mark.parametrize("n", [1, 0, 2.5, "4"])
def test_tree_rejects_bad_sizes(n):
    with pytest.raises(UserError):
        frame_tree(n)


def test_the_authors_default_levels():
    # interpolate_qc: min_steps .3, max_steps .55 of 200 DDIM steps, linspace over the 4 rounds of 17 frames.
    levels = noise_levels(4, 200)
    assert [l.step for l in levels] == [110, 93, 76, 60]
    assert [l.timestep for l in levels] == [551, 466, 381, 301]
    assert noise_levels(1, 200) == [NoiseLevel(60, 301)], "a single round uses the low level, as the authors"
    assert [l.step for l in noise_levels(3, 100, low=0.2, high=0.6)] == [60, 40, 20]


@pytest.mark.parametrize("n", SIZES)
def test_levels_lie_on_the_ddim_grid_and_decrease_strictly(n):
    depth = len(frame_tree(n))
    grid = ddim_timesteps(50).tolist()
    levels = noise_levels(depth, 50)
    for l in levels:
        assert grid[l.step] == l.timestep
    assert all(a.timestep > b.timestep for a, b in zip(levels, levels[1:]))
    assert levels[0].step == int(0.55 * 50) if depth > 1 else levels[0].step == int(0.3 * 50)
    assert levels[-1].step == int(0.3 * 50)


def test_user_levels_as_fractions_or_timesteps():
    assert [l.step for l in noise_levels(3, 200, levels=[0.7, 0.5, 0.3])] == [140, 100, 60]
    assert [l.timestep for l in noise_levels(3, 200, levels=[700, 503, 300])] == [701, 501, 301]


@pytest.mark.parametrize("levels", [
    [0.5, 0.6],            # increasing with depth
    [0.5, 0.5],            # not strictly decreasing
    [1.0, 0.5],            # fraction outside (0, 1)
    [0.5, 0.0],
    [1000, 500],           # timestep outside [1, T-1]
    [0.6, 0.5, 0.4],       # wrong count
    [0.6],
    ["0.6", 0.5],          # not a number
])
def test_user_levels_are_validated(levels):
    with pytest.raises(UserError):
        noise_levels(2, 200, levels=levels)


def test_levels_that_collide_are_an_error():
    with pytest.raises(UserError):
        noise_levels(6, 10)
    with pytest.raises(UserError):
        noise_levels(2, 200, low=0.5, high=0.5)
    for low, high in ((0.0, 0.5), (0.5, 1.0), (0.6, 0.4)):
        with pytest.raises(UserError):
            noise_levels(2, 200, low=low, high=high)
    with pytest.raises(UserError):
        noise_levels(0, 200)
