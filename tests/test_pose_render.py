"""The ControlNet OpenPose conditioning image, checked pixel by pixel.

Expected values are worked out by hand from ControlNet 1.0's `draw_bodypose`: joints are discs
of radius 4 in the keypoint colour, then each limb is an ellipse of semi-axes (int(length / 2), 4)
around the truncated midpoint, blended as 0.4 * canvas + 0.6 * limb colour.
"""
import numpy as np
import pytest

import pose
from pose.errors import PoseError

RED, ORANGE, AMBER, LIME = (255, 0, 0), (255, 85, 0), (255, 170, 0), (85, 255, 0)


def person(**points):
    """An [18, 3] person from name=(x, y) keyword arguments; the rest missing."""
    p = np.zeros((18, 3))
    for name, (x, y) in points.items():
        p[pose.NAMES.index(name)] = (x, y, 1.0)
    return p


def blend(under, limb):
    return tuple(int(np.rint(0.4 * u + 0.6 * c)) for u, c in zip(under, limb))


SHOULDERS = person(neck=(200, 300), r_shoulder=(140, 300), l_shoulder=(260, 300))


def test_joint_is_a_disc_of_radius_four_in_the_keypoint_colour():
    canvas = pose.render([person(nose=(100.9, 50.2))], 512, 512)
    assert canvas.dtype == np.uint8 and canvas.shape == (512, 512, 3)
    assert tuple(canvas[50, 100]) == RED                      # coordinates truncated: (100, 50)
    for dx, dy in ((4, 0), (-4, 0), (0, 4), (0, -4)):
        assert tuple(canvas[50 + dy, 100 + dx]) == RED
    for dx, dy in ((5, 0), (-5, 0), (0, 5), (0, -5), (4, 4)):
        assert tuple(canvas[50 + dy, 100 + dx]) == (0, 0, 0)
    ys, xs = np.nonzero(canvas.any(2))
    assert np.hypot(xs - 100, ys - 50).max() <= 4.5


def test_limbs_are_blended_ellipses_over_the_joints():
    canvas = pose.render([SHOULDERS], 512, 512)
    # Limb 0 (neck -> r-shoulder, red) spans x 140..200; limb 1 (neck -> l-shoulder, orange) 200..260.
    assert tuple(canvas[300, 170]) == blend((0, 0, 0), RED) == (153, 0, 0)
    assert tuple(canvas[300, 230]) == blend((0, 0, 0), ORANGE) == (153, 51, 0)
    assert tuple(canvas[304, 170]) == (153, 0, 0) and tuple(canvas[296, 170]) == (153, 0, 0)
    assert tuple(canvas[305, 170]) == (0, 0, 0) and tuple(canvas[295, 170]) == (0, 0, 0)
    # Joint discs drawn first, then blended under every limb that covers them, in limb order.
    assert tuple(canvas[300, 140]) == blend(AMBER, RED) == (255, 68, 0)
    assert tuple(canvas[300, 200]) == blend(blend(ORANGE, RED), ORANGE) == (255, 65, 0)
    assert tuple(canvas[300, 260]) == blend(LIME, ORANGE) == (187, 153, 0)
    assert tuple(canvas[300, 139]) == AMBER                  # disc outside the ellipse
    assert tuple(canvas[300, 135]) == (0, 0, 0)
    ys, xs = np.nonzero(canvas.any(2))
    assert xs.min() == 136 and xs.max() == 264 and ys.min() == 296 and ys.max() == 304


def test_diagonal_limb_geometry():
    canvas = pose.render([person(r_hip=(100, 100), r_knee=(160, 180))], 512, 512)
    color = blend((0, 0, 0), (0, 255, 85))                    # limb 7 (r-hip -> r-knee)
    direction = np.array([60, 80]) / 100.0
    normal = np.array([-0.8, 0.6])
    for t in (-40, -20, 0, 20, 40):                          # along the limb, half-length 50
        x, y = np.rint(np.array([130, 140]) + t * direction).astype(int)
        assert tuple(canvas[y, x]) == color
    for s in (-3, 3):
        x, y = np.rint(np.array([130, 140]) + s * normal).astype(int)
        assert tuple(canvas[y, x]) == color
    for s in (-6, 6):
        x, y = np.rint(np.array([130, 140]) + s * normal).astype(int)
        assert tuple(canvas[y, x]) == (0, 0, 0)


def test_missing_keypoints_and_undrawn_limbs():
    # l-shoulder missing: no disc, no limb 1. Ears with shoulders: limbs 17-18 are never drawn.
    p = person(neck=(200, 300), r_shoulder=(140, 300), r_ear=(120, 200))
    canvas = pose.render([p], 512, 512)
    assert not canvas[:, 205:].any()
    assert tuple(canvas[200, 120]) == (255, 0, 170)          # the r-ear disc, nothing else
    assert not canvas[210:290].any()


def test_several_people_and_canvas_colours():
    a = SHOULDERS
    b = SHOULDERS + np.array([0, 100, 0])
    canvas = pose.render([a, b], 512, 512)
    np.testing.assert_array_equal(canvas[350:450], pose.render([a], 512, 512)[250:350])
    grey = np.full((512, 512, 3), 100, np.uint8)
    pose.draw_skeletons(grey, [a])
    assert tuple(grey[300, 170]) == blend((100, 100, 100), RED) == (193, 40, 40)
    assert tuple(grey[10, 10]) == (100, 100, 100)


def test_strokes_scale_with_the_output_like_controlnet():
    """Drawn with a 512 short side, then resized with nearest neighbour."""
    big = pose.render([SHOULDERS * [2, 2, 1]], 1024, 1024)
    np.testing.assert_array_equal(big, pose.render([SHOULDERS], 512, 512).repeat(2, 0).repeat(2, 1))
    assert tuple(big[608, 340]) == (153, 0, 0) and tuple(big[611, 340]) == (0, 0, 0)
    direct = pose.render([SHOULDERS * [2, 2, 1]], 1024, 1024, annotate_resolution=None)
    assert tuple(direct[604, 340]) == (153, 0, 0) and tuple(direct[605, 340]) == (0, 0, 0)


def test_source_size_rescales_keypoints():
    np.testing.assert_array_equal(pose.render([SHOULDERS * [2, 4, 1]], 512, 512, source_size=(2048, 1024)),
                                  pose.render([SHOULDERS], 512, 512))


def test_non_square_output():
    canvas = pose.render([SHOULDERS * [1.5, 1.5, 1]], 768, 1024)   # drawn at 512 x 683
    assert canvas.shape == (768, 1024, 3)
    assert tuple(canvas[450, 255]) == (153, 0, 0)


def test_bad_people_are_user_errors():
    with pytest.raises(PoseError, match=r"\[18, 3\]"):
        pose.render([np.zeros((17, 3))], 512, 512)
    with pytest.raises(PoseError, match="positive"):
        pose.render([], 0, 512)
