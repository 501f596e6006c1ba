"""The OpenPose COCO body network run with OpenCV's `cv2.dnn`, at one or more scales.

Model format: the CMU Caffe release (`pose_deploy_linevec.prototxt` + `pose_iter_440000.caffemodel`),
read with `cv2.dnn.readNetFromCaffe`, which OpenCV 5 removed: the package pins OpenCV 4.x.
An ONNX export of the same network (one output, [1, 57, H/8, W/8]) loads too.

Pre- and post-processing follow the CMU demo as the ControlNet annotator runs it
(lllyasviel/ControlNet `annotator/openpose/body.py`): BGR input scaled so that its height is
`scale * 368`, padded right and bottom with grey (128) to a multiple of the stride, normalised
to pixel / 256 - 0.5; outputs upsampled by the stride (bicubic), cropped, resized to the image
and averaged over the scales.
"""
from pathlib import Path

import cv2
import numpy as np

from .decode import resize_maps
from .errors import PoseError
from .skeleton import NUM_HEATMAPS, NUM_PAFS, STRIDE

BOX_SIZE = 368            # network input height at scale 1 (the CMU training crop size)
PAD_VALUE = 128
# The ControlNet annotator runs a single scale, 0.5 (the CMU demo averages 0.5, 1, 1.5, 2).
DEFAULT_SCALES = (0.5,)
# The weights-catalog names of the CMU COCO model files (prototxt, caffemodel): the commands fetch them.
CATALOG = ("openpose-coco-prototxt", "openpose-coco-caffemodel")


class OpenPoseNet:
    """A loaded body network and the scales to run it at."""

    def __init__(self, net, scales=DEFAULT_SCALES):
        if not scales or any(s <= 0 for s in scales):
            raise PoseError(f"pose scales must be positive numbers, got {list(scales)}")
        self.net = net
        self.scales = tuple(float(s) for s in scales)

    def run(self, bgr):
        """Raw network output at the stride for a float32 BGR image already padded: [57, h, w]."""
        blob = (bgr / 256.0 - 0.5).transpose(2, 0, 1)[None].astype(np.float32)
        self.net.setInput(np.ascontiguousarray(blob))
        out = self.net.forward()
        if out.ndim != 4 or out.shape[1] != NUM_HEATMAPS + NUM_PAFS:
            raise PoseError(f"the pose model outputs {list(out.shape)}, not the COCO body layout "
                            f"[1, {NUM_HEATMAPS + NUM_PAFS}, h, w]: use the CMU COCO model")
        return out[0]

    def maps(self, rgb):
        """Heatmaps [19, H, W] and PAFs [38, H, W] of an HxWx3 uint8 RGB image, scale-averaged."""
        height, width = rgb.shape[:2]
        bgr = rgb[:, :, ::-1].astype(np.float32)
        total = np.zeros((NUM_HEATMAPS + NUM_PAFS, height, width), np.float32)
        for scale in self.scales:
            factor = scale * BOX_SIZE / height
            scaled = cv2.resize(bgr, (0, 0), fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
            h, w = scaled.shape[:2]
            padded = cv2.copyMakeBorder(scaled, 0, -h % STRIDE, 0, -w % STRIDE,
                                        cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
            up = resize_maps(self.run(padded), padded.shape[0], padded.shape[1])
            total += resize_maps(np.ascontiguousarray(up[:, :h, :w]), height, width)
        total /= len(self.scales)
        return total[:NUM_HEATMAPS], total[NUM_HEATMAPS:]


def _read_net(*paths):
    for path in paths:
        if not Path(path).is_file():
            raise PoseError(f"pose model file {path} does not exist: pass the CMU COCO "
                            f"pose_deploy_linevec.prototxt and pose_iter_440000.caffemodel "
                            f"(or an ONNX export), or model=None to download them")
    try:
        if len(paths) == 1:
            return cv2.dnn.readNetFromONNX(str(paths[0]))
        return cv2.dnn.readNetFromCaffe(str(paths[0]), str(paths[1]))
    except cv2.error as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise PoseError(f"OpenCV could not read the pose model {', '.join(map(str, paths))} "
                        f"({first}): is it the CMU COCO body model?") from None


def _caffe_pair(paths):
    """(prototxt, caffemodel) from two paths given in either order."""
    protos = [p for p in paths if Path(p).suffix == ".prototxt"]
    weights = [p for p in paths if Path(p).suffix != ".prototxt"]
    if len(protos) != 1 or len(weights) != 1:
        raise PoseError(f"a Caffe pose model is a .prototxt and a .caffemodel, got {list(map(str, paths))}")
    return protos[0], weights[0]


def load(model, scales=DEFAULT_SCALES):
    """An OpenPoseNet from `model`.

    model: an OpenPoseNet (used as is), a path to an ONNX export, a path to a .caffemodel with
    `pose_deploy_linevec.prototxt` beside it, or a (prototxt, caffemodel) pair; a list of one path is
    that path. (The files are the weights catalog's `CATALOG` entries; `pose-detect` fetches them.)
    """
    if isinstance(model, OpenPoseNet):
        return model
    if isinstance(model, (tuple, list)) and len(model) == 1:
        model = model[0]
    if model is None:
        raise PoseError("no pose model given: pass the CMU COCO pose_deploy_linevec.prototxt and "
                        "pose_iter_440000.caffemodel (or an ONNX export)")
    if isinstance(model, (tuple, list)):
        return OpenPoseNet(_read_net(*_caffe_pair(model)), scales)
    path = Path(model)
    if path.suffix == ".onnx":
        return OpenPoseNet(_read_net(path), scales)
    if path.suffix == ".caffemodel":
        return OpenPoseNet(_read_net(path.with_name("pose_deploy_linevec.prototxt"), path), scales)
    raise PoseError(f"unknown pose model {model}: expected an .onnx file, a .caffemodel with "
                    f"pose_deploy_linevec.prototxt beside it, or a (prototxt, caffemodel) pair")
