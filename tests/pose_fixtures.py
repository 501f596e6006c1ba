"""Synthetic OpenPose data for the pose tests: skeletons, network-style maps, tiny Caffe nets.

The channel layout is restated here from the CMU / ControlNet reference (1-based limb list and
`mapIdx` of `annotator/openpose/body.py`), independently of `pose.skeleton`, so that a wrong
table in the package makes the tests fail.
"""
from pathlib import Path

import numpy as np

STRIDE = 8
# Reference limb list (1-based keypoints) and the output-blob channels of each limb's PAF
# (x, y), counted over the 57-channel blob whose first 19 channels are the heatmaps.
REF_LIMBS_1BASED = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11],
                    [2, 12], [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18],
                    [3, 17], [6, 18]]
REF_MAP_IDX = [[31, 32], [39, 40], [33, 34], [35, 36], [41, 42], [43, 44], [19, 20], [21, 22],
               [23, 24], [25, 26], [27, 28], [29, 30], [47, 48], [49, 50], [53, 54], [51, 52],
               [55, 56], [37, 38], [45, 46]]

# A standing person facing the camera, 180 px tall: (x, y) offsets from the hip centre.
TEMPLATE = np.array([
    [0, -150], [0, -120],                       # nose, neck
    [-32, -118], [-50, -75], [-58, -32],        # right shoulder, elbow, wrist (image left)
    [32, -118], [50, -75], [58, -32],           # left shoulder, elbow, wrist
    [-18, -5], [-20, 45], [-22, 95],            # right hip, knee, ankle
    [18, -5], [20, 45], [22, 95],               # left hip, knee, ankle
    [-8, -160], [8, -160], [-20, -154], [20, -154],  # right eye, left eye, right ear, left ear
], dtype=np.float64)


def make_person(rng, center, scale=1.0, missing=(), jitter=6.0):
    """A ground-truth [18, 3] person: the template scaled, jittered and placed at `center`."""
    xy = TEMPLATE * scale + np.asarray(center, np.float64) + rng.uniform(-jitter, jitter, (18, 2))
    person = np.concatenate([xy, np.ones((18, 1))], axis=1)
    person[list(missing)] = 0
    return person


def connected(person):
    """The person without the keypoints that no chain of present limbs links to the neck."""
    reached, frontier = {1}, [1]
    while frontier:
        part = frontier.pop()
        for a1, b1 in REF_LIMBS_1BASED:
            for x, y in ((a1 - 1, b1 - 1), (b1 - 1, a1 - 1)):
                if x == part and y not in reached and person[y, 2] > 0:
                    reached.add(y)
                    frontier.append(y)
    kept = person.copy()
    kept[[i for i in range(18) if i not in reached]] = 0
    return kept


def synthetic_maps(people, image_size, sigma=7.0, paf_width=1.0):
    """Heatmaps [19, H/8, W/8] and PAFs [38, H/8, W/8] as the CMU network is trained to emit.

    Labels as in OpenPose training: Gaussian peaks (sigma in image pixels) at stride-cell
    centres 8 j + 3.5, the maximum over people, background 1 - max; PAFs unit vectors a -> b
    within `paf_width` cells of the limb segment, averaged where people overlap.
    """
    height, width = image_size
    h, w = height // STRIDE, width // STRIDE
    ys, xs = np.mgrid[0:h, 0:w] * STRIDE + (STRIDE / 2 - 0.5)
    heat = np.zeros((19, h, w))
    for person in people:
        for part in range(18):
            x, y, c = person[part]
            if c > 0:
                heat[part] = np.maximum(heat[part], np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)))
    heat[18] = np.clip(1 - heat[:18].max(0), 0, 1)
    blob_pafs = np.zeros((38, h, w))
    for (a1, b1), (cx, cy) in zip(REF_LIMBS_1BASED, REF_MAP_IDX):
        a, b, cx, cy = a1 - 1, b1 - 1, cx - 19, cy - 19
        total, count = np.zeros((2, h, w)), np.zeros((h, w))
        for person in people:
            if person[a, 2] <= 0 or person[b, 2] <= 0:
                continue
            start, vec = person[a, :2], person[b, :2] - person[a, :2]
            length = np.hypot(*vec)
            unit = vec / length
            along = (xs - start[0]) * unit[0] + (ys - start[1]) * unit[1]
            across = np.abs((xs - start[0]) * unit[1] - (ys - start[1]) * unit[0])
            on = (along >= 0) & (along <= length) & (across <= paf_width * STRIDE)
            total[:, on] += unit[:, None]
            count[on] += 1
        blob_pafs[cx] = total[0] / np.maximum(count, 1)
        blob_pafs[cy] = total[1] / np.maximum(count, 1)
    return heat.astype(np.float32), blob_pafs.astype(np.float32)


def match_to_truth(found, truth):
    """Pair each true person with the detected one nearest on their shared keypoints.

    Returns (per-keypoint errors in pixels, number of true keypoints recovered, number present).
    """
    errors, recovered, present = [], 0, 0
    for person in truth:
        mask = person[:, 2] > 0
        present += int(mask.sum())

        def cost(candidate):
            shared = mask & (candidate[:, 2] > 0)
            if not shared.any():
                return np.inf
            return np.linalg.norm(candidate[shared, :2] - person[shared, :2], axis=1).mean()

        if not found:
            continue
        best = min(found, key=cost)
        shared = mask & (best[:, 2] > 0)
        errors.extend(np.linalg.norm(best[shared, :2] - person[shared, :2], axis=1))
        recovered += int(shared.sum())
    return np.array(errors), recovered, present


# ---- tiny Caffe networks with the CMU output layout, written by hand -------------------------

def _varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, payload):
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array):
    """caffe.BlobProto: shape (field 7, BlobShape with packed dims) and packed float data (5)."""
    shape = _field(1, b"".join(_varint(d) for d in array.shape))
    return _field(7, shape) + _field(5, np.asarray(array, "<f4").tobytes())


def caffemodel_bytes(layers):
    """caffe.NetParameter with one LayerParameter (field 100: name 1, blobs 7) per named layer."""
    return b"".join(_field(100, _field(1, name.encode()) + b"".join(_field(7, _blob(b)) for b in blobs))
                    for name, blobs in layers.items())


def _conv(name, bottom, outputs, kernel, stride=1):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'  convolution_param {{ num_output: {outputs} kernel_size: {kernel} stride: {stride} }} }}\n')


# The head of the CMU prototxt: heatmaps (L2) and PAFs (L1) concatenated, heatmaps first.
_HEAD = ('layer { name: "concat_stage7" type: "Concat" bottom: "Mconv7_stage6_L2" '
         'bottom: "Mconv7_stage6_L1" top: "net_output" concat_param { axis: 1 } }\n')
_INPUT = 'input: "image"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'


def _write(folder, prototxt, layers, name):
    folder = Path(folder)
    proto, model = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    proto.write_text(prototxt)
    model.write_bytes(caffemodel_bytes(layers))
    return proto, model


# The encoder network reads 57 channels per 8x8 cell: output channel c is BGR channel c % 3 of
# the cell's pixel number c // 3 (row-major), decoded from pixel p as (p / 256 - 0.5) * 256 / 127.
ENCODE_GAIN = 256 / 127


def _encoder_slot(c):
    pos = c // 3
    return c % 3, pos // STRIDE, pos % STRIDE


def write_encoder_net(folder):
    """A stride-8 Caffe net that copies values encoded in the image to its 57 outputs."""
    weights = np.zeros((57, 3, STRIDE, STRIDE), np.float32)
    for c in range(57):
        weights[(c,) + _encoder_slot(c)] = ENCODE_GAIN
    prototxt = (_INPUT + _conv("Mconv7_stage6_L2", "image", 19, STRIDE, STRIDE)
                + _conv("Mconv7_stage6_L1", "image", 38, STRIDE, STRIDE) + _HEAD)
    layers = {"Mconv7_stage6_L2": [weights[:19], np.zeros(19)],
              "Mconv7_stage6_L1": [weights[19:], np.zeros(38)]}
    return _write(folder, prototxt, layers, "encoder")


def encode_image(heatmaps, pafs, width=None):
    """The RGB uint8 image from which the encoder net outputs these stride-8 maps."""
    maps = np.concatenate([heatmaps, pafs])
    _, h, w = maps.shape
    width = width or w * STRIDE
    bgr = np.full((h * STRIDE, width, 3), 128, np.uint8)
    for c in range(57):
        ch, dy, dx = _encoder_slot(c)
        bgr[dy::STRIDE, dx::STRIDE, ch][:h, :w] = np.clip(np.rint(128 + 127 * maps[c]), 0, 255)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def write_random_net(folder, seed=0):
    """A small random stride-8 Caffe net with the CMU input and output blobs."""
    rng = np.random.default_rng(seed)
    prototxt = (_INPUT + _conv("conv1", "image", 6, STRIDE, STRIDE)
                + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
                + _conv("Mconv7_stage6_L2", "conv1", 19, 1) + _conv("Mconv7_stage6_L1", "conv1", 38, 1)
                + _HEAD)
    layers = {"conv1": [rng.normal(0, 0.1, (6, 3, STRIDE, STRIDE)), rng.normal(0, 0.1, 6)],
              "Mconv7_stage6_L2": [rng.normal(0, 0.5, (19, 6, 1, 1)), rng.normal(0, 0.1, 19)],
              "Mconv7_stage6_L1": [rng.normal(0, 0.5, (38, 6, 1, 1)), rng.normal(0, 0.1, 38)]}
    return _write(folder, prototxt, layers, "random")
