"""From OpenPose heatmaps and part-affinity fields to people (Cao et al. 2017, Sec. 2.2-2.4).

The steps and thresholds follow the reference post-processing that the ControlNet OpenPose
annotator uses (lllyasviel/ControlNet `annotator/openpose/body.py`, itself a port of the CMU
demo): peaks on Gaussian-smoothed heatmaps, limbs scored by a line integral over the PAF, greedy
bipartite matching limb by limb, then people grown from the matched limbs. Added here: radius
non-maximum suppression (no duplicate peaks on flat maxima) and sub-pixel peak refinement.
"""
import cv2
import numpy as np

from .errors import PoseError
from .skeleton import LIMBS, NUM_HEATMAPS, NUM_KEYPOINTS, NUM_PAFS, PAF_XY, SEED_LIMBS

PEAK_THRESHOLD = 0.1      # minimum smoothed heatmap value of a keypoint candidate
PEAK_SIGMA = 3.0          # Gaussian smoothing of the heatmaps before peak finding, in pixels
NMS_RADIUS = 3.0          # two peaks of one part closer than this are one keypoint, in pixels
LIMB_SAMPLES = 10         # points sampled along a candidate limb
PAF_THRESHOLD = 0.05      # a sample counts as aligned when PAF . direction exceeds this
ALIGNED_FRACTION = 0.8    # a limb needs more than this fraction of aligned samples
MIN_PARTS = 4             # people with fewer keypoints are dropped
MIN_MEAN_SCORE = 0.4      # ... and so are people whose score per keypoint is lower


def find_peaks(heatmaps):
    """Keypoint candidates of each part: a list of 18 arrays [n, 3] of (x, y, heatmap value)."""
    peaks = []
    for part in range(NUM_KEYPOINTS):
        raw = heatmaps[part]
        smooth = cv2.GaussianBlur(raw, (0, 0), PEAK_SIGMA, borderType=cv2.BORDER_REFLECT)
        local_max = smooth >= cv2.dilate(smooth, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(local_max & (smooth > PEAK_THRESHOLD))
        order = np.argsort(-smooth[ys, xs], kind="stable")
        kept = []
        for y, x in zip(ys[order], xs[order]):
            if all((x - kx) ** 2 + (y - ky) ** 2 > NMS_RADIUS ** 2 for kx, ky in kept):
                kept.append((x, y))
        peaks.append(np.array([(*_refine(smooth, x, y), raw[y, x]) for x, y in kept],
                              dtype=np.float64).reshape(-1, 3))
    return peaks


def _refine(smooth, x, y):
    """Sub-pixel peak position: the vertex of a parabola through the peak and its neighbours."""
    h, w = smooth.shape

    def offset(before, at, after):
        curvature = before - 2 * at + after
        return 0.0 if curvature >= 0 else float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))

    dx = offset(smooth[y, x - 1], smooth[y, x], smooth[y, x + 1]) if 0 < x < w - 1 else 0.0
    dy = offset(smooth[y - 1, x], smooth[y, x], smooth[y + 1, x]) if 0 < y < h - 1 else 0.0
    return x + dx, y + dy


def score_limb(paf_x, paf_y, start, end, image_height):
    """PAF line integral of a candidate limb start -> end, with OpenPose's distance prior.

    Returns the score, or None when fewer than ALIGNED_FRACTION of the samples along the segment
    follow the field, or when the prior (which penalises limbs longer than half the image
    height) makes the score non-positive.
    """
    vec = end - start
    norm = max(float(np.hypot(*vec)), 1e-3)
    h, w = paf_x.shape
    xs = np.clip(np.rint(np.linspace(start[0], end[0], LIMB_SAMPLES)).astype(int), 0, w - 1)
    ys = np.clip(np.rint(np.linspace(start[1], end[1], LIMB_SAMPLES)).astype(int), 0, h - 1)
    alignment = (paf_x[ys, xs] * vec[0] + paf_y[ys, xs] * vec[1]) / norm
    score = alignment.mean() + min(0.5 * image_height / norm - 1.0, 0.0)
    if np.count_nonzero(alignment > PAF_THRESHOLD) > ALIGNED_FRACTION * LIMB_SAMPLES and score > 0:
        return float(score)
    return None


def connect_limbs(peaks, pafs):
    """For each limb, the matched candidate pairs: a list of (i, j, score), best first.

    Greedy bipartite matching as in OpenPose: candidate pairs in decreasing score, each
    candidate of either part used at most once.
    """
    connections = []
    height = pafs.shape[1]
    for (a, b), (cx, cy) in zip(LIMBS, PAF_XY):
        scored = []
        for i, start in enumerate(peaks[a][:, :2]):
            for j, end in enumerate(peaks[b][:, :2]):
                s = score_limb(pafs[cx], pafs[cy], start, end, height)
                if s is not None:
                    scored.append((s, i, j))
        scored.sort(key=lambda t: -t[0])
        used_a, used_b, chosen = set(), set(), []
        for s, i, j in scored:
            if i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
                chosen.append((i, j, s))
                if len(chosen) == min(len(peaks[a]), len(peaks[b])):
                    break
        connections.append(chosen)
    return connections


class _Person:
    """A person being assembled: candidate index per part (-1 if none), summed score."""

    def __init__(self):
        self.parts = np.full(NUM_KEYPOINTS, -1)
        self.score = 0.0

    @property
    def count(self):
        return int(np.count_nonzero(self.parts >= 0))


def assemble(peaks, connections):
    """Grow people from the matched limbs; returns [(keypoints [18, 3], score)], best first."""
    people = []
    for k, ((a, b), chosen) in enumerate(zip(LIMBS, connections)):
        for i, j, s in chosen:
            owners = [p for p in people if p.parts[a] == i or p.parts[b] == j]
            if len(owners) == 2 and not np.any((owners[0].parts >= 0) & (owners[1].parts >= 0)):
                keep, gone = owners          # the limb joins two disjoint fragments: merge
                keep.parts = np.maximum(keep.parts, gone.parts)
                keep.score += gone.score + s
                people.remove(gone)
            elif owners:
                person = owners[0]
                if person.parts[b] != j:
                    person.parts[b] = j
                    person.score += peaks[b][j, 2] + s
            elif k < SEED_LIMBS:
                person = _Person()
                person.parts[a], person.parts[b] = i, j
                person.score = peaks[a][i, 2] + peaks[b][j, 2] + s
                people.append(person)
    kept = [p for p in people if p.count >= MIN_PARTS and p.score / p.count >= MIN_MEAN_SCORE]
    result = []
    for p in kept:
        keypoints = np.zeros((NUM_KEYPOINTS, 3))
        for part, index in enumerate(p.parts):
            if index >= 0:
                keypoints[part] = peaks[part][index]
        result.append((keypoints, float(p.score)))
    result.sort(key=lambda t: -t[1])
    return result


def decode_scored(heatmaps, pafs, image_size):
    """`decode`, with each person's score: [(keypoints [18, 3], score)], highest score first."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    pafs = np.asarray(pafs, dtype=np.float32)
    if heatmaps.ndim != 3 or heatmaps.shape[0] != NUM_HEATMAPS:
        raise PoseError(f"heatmaps must be [{NUM_HEATMAPS}, h, w], got {list(heatmaps.shape)}")
    if pafs.shape != (NUM_PAFS,) + heatmaps.shape[1:]:
        raise PoseError(f"pafs must be [{NUM_PAFS}, {heatmaps.shape[1]}, {heatmaps.shape[2]}], "
                        f"got {list(pafs.shape)}")
    height, width = (int(v) for v in image_size)
    heatmaps, pafs = resize_maps(heatmaps, height, width), resize_maps(pafs, height, width)
    peaks = find_peaks(heatmaps)
    return assemble(peaks, connect_limbs(peaks, pafs))


def decode(heatmaps, pafs, image_size):
    """People found in network output: a list of [18, 3] arrays (x, y, confidence).

    heatmaps [19, h, w] (18 parts then background) and pafs [38, h, w] as the CMU COCO network
    emits them, at any resolution (typically the stride-8 output, or already upsampled);
    image_size (H, W) of the input image. Maps are resized to it with bicubic interpolation,
    so coordinates are input-image pixels. Missing keypoints have confidence 0; people come
    most confident first.
    """
    return [keypoints for keypoints, _ in decode_scored(heatmaps, pafs, image_size)]


def resize_maps(maps, height, width):
    """[C, h, w] maps resized to [C, height, width] with bicubic interpolation (OpenCV's)."""
    if maps.shape[1:] == (height, width):
        return maps
    # cv2.resize handles at most 512 channels, in HWC order.
    resized = cv2.resize(np.ascontiguousarray(maps.transpose(1, 2, 0)), (width, height),
                         interpolation=cv2.INTER_CUBIC)
    return resized.reshape(height, width, -1).transpose(2, 0, 1)
