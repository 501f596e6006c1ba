"""Pose interpolation between two images (paper Sec. 4.3), people matching, the main subject.

Only keypoints found in both images are interpolated; the others are left out of the
intermediate skeletons, as in the paper.
"""
import numpy as np

from .errors import PoseError
from .skeleton import as_person


def interpolate(kp_a, kp_b, alpha):
    """Keypoints [18, 3] at position alpha in [0, 1] between two people (0: kp_a, 1: kp_b).

    Positions and confidences are linear in alpha for keypoints present (confidence > 0) in
    both; keypoints missing from either are missing (all zero) in the result, endpoints included.
    """
    a, b = as_person(kp_a), as_person(kp_b)
    if not 0.0 <= alpha <= 1.0:
        raise PoseError(f"interpolation position must lie in [0, 1], got {alpha}")
    shared = (a[:, 2] > 0) & (b[:, 2] > 0)
    return np.where(shared[:, None], (1 - alpha) * a + alpha * b, 0.0)


def _size(person):
    """Area of the bounding box of a person's present keypoints."""
    xy = person[person[:, 2] > 0, :2]
    return float(np.prod(xy.max(0) - xy.min(0))) if len(xy) else 0.0


def main_subject(people):
    """Index of the main subject: the largest person (bounding-box area of the keypoints),
    ties going to the higher summed confidence; None when there is nobody."""
    if not people:
        return None
    people = [as_person(p) for p in people]
    return max(range(len(people)), key=lambda i: (_size(people[i]), people[i][:, 2].sum()))


def _centroid(person):
    return person[person[:, 2] > 0, :2].mean(0)


def _distance(a, b):
    """Mean distance between two people over their shared keypoints, else between centroids."""
    shared = (a[:, 2] > 0) & (b[:, 2] > 0)
    if shared.any():
        return float(np.linalg.norm(a[shared, :2] - b[shared, :2], axis=1).mean())
    return float(np.linalg.norm(_centroid(a) - _centroid(b)))


def match_people(people_a, people_b):
    """Pairs (i, j) of people of image a and image b that are the same subject, by position.

    Greedy: the closest pair first, each person used once; people without a partner are left
    out. Both images should have the same size (keypoints are compared in pixels).
    """
    a = [as_person(p) for p in people_a]
    b = [as_person(p) for p in people_b]
    costs = sorted((_distance(pa, pb), i, j) for i, pa in enumerate(a) for j, pb in enumerate(b)
                   if (pa[:, 2] > 0).any() and (pb[:, 2] > 0).any())
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in costs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def interpolate_people(people_a, people_b, alpha):
    """The interpolated skeletons of every matched pair of people (see match_people)."""
    return [interpolate(people_a[i], people_b[j], alpha) for i, j in match_people(people_a, people_b)]
