"""`pose-detect IMAGE [--out pose.png] [--json keypoints.json]`: show what the detector sees.

The command fetches the model files from the weights catalog (ldm.load.weights); the pose library itself
depends on nothing of ldm."""
import json
import sys

import cv2
import numpy as np

from ldm.errors import UserError
from ldm.load import weights
from ldm.runtime import Parser

from .detect import detect_scored, read_image
from .errors import PoseError
from .match import main_subject
from .network import CATALOG, DEFAULT_SCALES, load
from .render import draw_skeletons
from .skeleton import NAMES


def parse_args(argv):
    parser = Parser(
        prog="pose-detect",
        description="Detect OpenPose (COCO-18) skeletons in an image and draw them over it.")
    parser.add_argument("image", help="image file")
    parser.add_argument("--out", default="pose.png", help="overlay image to write (default: pose.png)")
    parser.add_argument("--json", help="also write the keypoints to this JSON file")
    parser.add_argument("--model", nargs="+", metavar="FILE",
                        help="model files: an ONNX export, or the .prototxt and .caffemodel "
                             "(default: the CMU COCO model from the weights catalog)")
    parser.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES),
                        help="network input heights as multiples of 368 px, averaged "
                             f"(default: {' '.join(map(str, DEFAULT_SCALES))})")
    return parser.parse_args(argv)


def run(args):
    rgb = read_image(args.image)
    model = args.model or [weights.fetch(name) for name in CATALOG]
    found = detect_scored(rgb, load(model, tuple(args.scales)))
    people = [keypoints for keypoints, _ in found]
    main = main_subject(people)
    overlay = draw_skeletons((rgb // 2).astype(np.uint8), people)
    if not cv2.imwrite(args.out, np.ascontiguousarray(overlay[:, :, ::-1])):
        raise UserError(f"cannot write {args.out}: check the folder exists and the extension is an image type")
    if args.json:
        record = {
            "image": args.image, "height": rgb.shape[0], "width": rgb.shape[1],
            "keypoint_names": list(NAMES), "main_subject": main,
            "people": [{"score": score, "keypoints": keypoints.round(2).tolist()}
                       for keypoints, score in found],
        }
        try:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=2)
        except OSError as e:
            raise UserError(f"cannot write {args.json}: {e.strerror}") from None
    print(f"{len(people)} people found" + (f"; main subject: person {main}" if people else "")
          + f"; overlay written to {args.out}")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (UserError, PoseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
