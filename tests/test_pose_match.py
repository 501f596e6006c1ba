"""Pose interpolation (shared keypoints only), matching people across images, the main subject."""
import numpy as np
import pytest

import pose
from pose.errors import PoseError
from pose_fixtures import make_person


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    a = make_person(rng, (150, 200), missing=(4, 17))
    b = make_person(rng, (260, 180), 1.2, missing=(10,))
    b[:, 2] = np.where(b[:, 2] > 0, 0.5, 0)
    return a, b


def test_endpoints_and_midpoint(pair):
    a, b = pair
    shared = (a[:, 2] > 0) & (b[:, 2] > 0)
    np.testing.assert_allclose(pose.interpolate(a, b, 0.0)[shared], a[shared])
    np.testing.assert_allclose(pose.interpolate(a, b, 1.0)[shared], b[shared])
    mid = pose.interpolate(a, b, 0.5)
    np.testing.assert_allclose(mid[shared, :2], (a[shared, :2] + b[shared, :2]) / 2)
    np.testing.assert_allclose(mid[shared, 2], 0.75)
    np.testing.assert_allclose(pose.interpolate(a, b, 0.25)[shared, 0], 0.75 * a[shared, 0] + 0.25 * b[shared, 0])


def test_keypoints_missing_in_either_image_are_dropped(pair):
    a, b = pair
    for alpha in (0.0, 0.3, 1.0):
        kp = pose.interpolate(a, b, alpha)
        assert kp.shape == (18, 3)
        np.testing.assert_array_equal(kp[[4, 10, 17]], 0)
        assert (kp[[0, 1, 2, 3, 5], 2] > 0).all()


def test_identical_people_interpolate_to_themselves(pair):
    a, _ = pair
    np.testing.assert_allclose(pose.interpolate(a, a, 0.37), a)


def test_bad_arguments_are_user_errors(pair):
    a, b = pair
    with pytest.raises(PoseError, match=r"\[0, 1\]"):
        pose.interpolate(a, b, 1.5)
    with pytest.raises(PoseError, match=r"\[18, 3\]"):
        pose.interpolate(a[:, :2], b, 0.5)


def test_people_are_matched_by_position():
    rng = np.random.default_rng(1)
    left, right, far = (make_person(rng, c) for c in ((100, 200), (300, 200), (600, 200)))
    people_a = [left, right, far]
    people_b = [right + [20, 0, 0], left + [-15, 0, 0]]                   # order swapped, one gone
    assert pose.match_people(people_a, people_b) == [(0, 1), (1, 0)]
    frames = pose.interpolate_people(people_a, people_b, 0.5)
    assert len(frames) == 2
    np.testing.assert_allclose(frames[0][:, 0], left[:, 0] - 7.5)
    np.testing.assert_allclose(frames[1][:, 0], right[:, 0] + 10)


def test_main_subject_is_the_largest_person():
    rng = np.random.default_rng(2)
    small, large = make_person(rng, (100, 200), 0.6), make_person(rng, (300, 200), 1.2)
    assert pose.main_subject([small, large]) == 1
    assert pose.main_subject([large, small]) == 0
    assert pose.main_subject([]) is None
