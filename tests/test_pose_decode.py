"""Decoding synthetic OpenPose maps rendered from known skeletons back into the skeletons."""
import numpy as np
import pytest

import pose
from pose.errors import PoseError
from pose.decode import resize_maps
from pose_fixtures import STRIDE, connected, make_person, match_to_truth, synthetic_maps


def decode_truth(truth, size):
    heat, pafs = synthetic_maps(truth, size)
    return pose.decode(heat, pafs, size)


def assert_recovered(found, truth, tolerance=STRIDE):
    """Every true person found once, all its keypoints (and only those) within `tolerance`."""
    assert len(found) == len(truth)
    for person in truth:
        errors = [np.abs(f[:, :2] - person[:, :2]).max(1) for f in found]
        best = found[int(np.argmin([e[person[:, 2] > 0].mean() for e in errors]))]
        np.testing.assert_array_equal(best[:, 2] > 0, person[:, 2] > 0)
        present = person[:, 2] > 0
        assert np.linalg.norm(best[present, :2] - person[present, :2], axis=1).max() < tolerance


def test_single_person_is_recovered_to_subpixel_accuracy():
    truth = [make_person(np.random.default_rng(1), (180, 230), 1.2)]
    found = decode_truth(truth, (400, 360))
    assert_recovered(found, truth)
    errors, _, _ = match_to_truth(found, truth)
    assert errors.max() < 1.0
    assert found[0][:, 2].min() > 0.9    # confidence: the heatmap peak value


def test_several_people_are_separated():
    rng = np.random.default_rng(2)
    truth = [make_person(rng, (110, 230), 0.9), make_person(rng, (250, 220), 1.1),
             make_person(rng, (400, 240), 0.8)]
    assert_recovered(decode_truth(truth, (368, 512)), truth)


def test_close_people_with_interleaved_arms_keep_their_own_limbs():
    rng = np.random.default_rng(3)
    truth = [make_person(rng, (200, 220)), make_person(rng, (290, 225))]  # wrists 30 px apart
    assert_recovered(decode_truth(truth, (368, 480)), truth)


@pytest.mark.parametrize("missing", [(4,), (3, 4), (9, 10, 16), (14, 15, 16, 17), (0, 14, 15, 16, 17)])
def test_missing_keypoints_stay_missing(missing):
    rng = np.random.default_rng(4)
    truth = [make_person(rng, (160, 210), missing=missing), make_person(rng, (330, 200))]
    assert_recovered(decode_truth(truth, (368, 480)), truth)


def test_occluded_limb_paf_splits_nothing_else():
    """A limb without field (occluded) drops only what hangs from it."""
    truth = [make_person(np.random.default_rng(5), (180, 200))]
    heat, pafs = synthetic_maps(truth, (368, 368))
    pafs[[16, 17]] = 0                       # r-elbow -> r-wrist (limb 3) occluded
    found = pose.decode(heat, pafs, (368, 368))
    assert len(found) == 1
    assert found[0][4, 2] == 0 and (found[0][[0, 1, 2, 3, 5], 2] > 0).all()


def test_without_pafs_nobody_is_assembled():
    heat, pafs = synthetic_maps([make_person(np.random.default_rng(6), (180, 200))], (368, 368))
    assert pose.decode(heat, np.zeros_like(pafs), (368, 368)) == []


def test_fragments_below_four_keypoints_are_dropped():
    person = make_person(np.random.default_rng(7), (180, 200), missing=range(3, 18))
    assert decode_truth([person], (368, 368)) == []   # nose, neck, r-shoulder only


def test_people_come_most_confident_first():
    rng = np.random.default_rng(8)
    truth = [make_person(rng, (120, 200), missing=range(8, 18)), make_person(rng, (300, 200))]
    scored = pose.decode_scored(*synthetic_maps(truth, (368, 480)), (368, 480))
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    assert (scored[0][0][:, 2] > 0).sum() == 18


def test_maps_already_at_image_size_decode_the_same():
    truth = [make_person(np.random.default_rng(9), (180, 200))]
    heat, pafs = synthetic_maps(truth, (368, 368))
    a = pose.decode(heat, pafs, (368, 368))
    b = pose.decode(resize_maps(heat, 368, 368), resize_maps(pafs, 368, 368), (368, 368))
    np.testing.assert_allclose(a[0], b[0])


def test_accuracy_on_random_scenes():
    """The synthetic benchmark: 40 scenes of 1-4 people, random scale and occlusions."""
    rng = np.random.default_rng(10)
    errors, recovered, present, counts_right = [], 0, 0, 0
    for _ in range(40):
        n = rng.integers(1, 5)
        truth = []
        for i in range(n):
            missing = rng.choice([2, 3, 4, 6, 7, 9, 10, 12, 13, 14, 15, 16, 17], rng.integers(0, 4), replace=False)
            truth.append(make_person(rng, (80 + 110 * i + rng.uniform(-10, 10), 200 + rng.uniform(-20, 20)),
                                     rng.uniform(0.7, 1.1), missing=missing))
        found = decode_truth(truth, (368, 520))
        # Keypoints cut off from the neck by a missing joint cannot be assembled (OpenPose).
        e, r, p = match_to_truth(found, [connected(t) for t in truth])
        errors.extend(e)
        recovered += r
        present += p
        counts_right += len(found) == len(truth)
    errors = np.array(errors)
    assert counts_right == 40
    assert recovered / present > 0.99
    assert errors.mean() < 0.5 and errors.max() < STRIDE / 2


def test_bad_map_shapes_are_user_errors():
    with pytest.raises(PoseError, match="heatmaps must be"):
        pose.decode(np.zeros((18, 10, 10)), np.zeros((38, 10, 10)), (80, 80))
    with pytest.raises(PoseError, match="pafs must be"):
        pose.decode(np.zeros((19, 10, 10)), np.zeros((38, 10, 12)), (80, 80))
