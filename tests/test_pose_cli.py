"""The `pose-detect` command: overlay and JSON written, user errors reported without traceback."""
import json

import cv2
import numpy as np

from pose.cli import main
from pose_fixtures import encode_image, make_person, synthetic_maps, write_encoder_net


def test_detect_writes_overlay_and_json(tmp_path, capsys):
    truth = [make_person(np.random.default_rng(0), (180, 200))]
    image = encode_image(*synthetic_maps(truth, (368, 368)))
    cv2.imwrite(str(tmp_path / "in.png"), image[:, :, ::-1])
    proto, model = write_encoder_net(tmp_path)
    out, record = tmp_path / "pose.png", tmp_path / "kp.json"
    code = main([str(tmp_path / "in.png"), "--out", str(out), "--json", str(record),
                 "--model", str(proto), str(model), "--scales", "1"])
    assert code == 0
    assert "1 people found" in capsys.readouterr().out
    overlay = cv2.imread(str(out))[:, :, ::-1]
    assert overlay.shape == image.shape
    neck = truth[0][1, :2].astype(int)
    assert tuple(overlay[neck[1], neck[0]]) != tuple(image[neck[1], neck[0]] // 2)
    data = json.loads(record.read_text())
    assert data["main_subject"] == 0 and len(data["keypoint_names"]) == 18
    keypoints = np.array(data["people"][0]["keypoints"])
    assert np.abs(keypoints[:, :2] - truth[0][:, :2]).max() < 1.5


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read image") and err.count("\n") == 1
    cv2.imwrite(str(tmp_path / "in.png"), np.zeros((32, 32, 3), np.uint8))
    assert main([str(tmp_path / "in.png"), "--model", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
