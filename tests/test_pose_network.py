"""Loading and running OpenPose through cv2.dnn end to end, with tiny hand-written Caffe nets.

The encoder net reads 57 values per 8x8 cell of its (BGR, normalised) input, so an image made
from synthetic maps must come back as those maps: this checks the RGB->BGR flip, the
pixel / 256 - 0.5 normalisation, the padding and cropping, the upsampling and the split of the
output blob into heatmaps then PAFs. The random net checks multi-scale averaging.
"""

import cv2
import numpy as np
import pytest

import pose
from pose.errors import PoseError
from pose.decode import resize_maps
from pose_fixtures import (STRIDE, encode_image, make_person, match_to_truth, synthetic_maps,
                           write_encoder_net, write_random_net)

SIZE = (368, 452)          # height at scale 1 = 368; width not a multiple of 8: padded


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    proto, model = write_encoder_net(tmp_path_factory.mktemp("encoder"))
    return pose.load((proto, model), scales=(1.0,))


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    truth = [make_person(rng, (120, 200)), make_person(rng, (300, 205), 0.9, missing=(7, 17))]
    heat, pafs = synthetic_maps(truth, (SIZE[0], SIZE[1] // STRIDE * STRIDE))
    return truth, heat, pafs, encode_image(heat, pafs, width=SIZE[1])


def test_network_maps_are_the_encoded_maps(encoder, scene):
    _, heat, pafs, image = scene
    heatmaps, fields = encoder.maps(image)
    assert heatmaps.shape == (19,) + SIZE and fields.shape == (38,) + SIZE
    width = heat.shape[2] * STRIDE              # the last, partial cell column is padding
    expected = resize_maps(np.concatenate([heat, pafs]), SIZE[0], width)
    inner = width - 3 * STRIDE                  # away from the bicubic reach of the padding
    np.testing.assert_allclose(heatmaps[:, :, :inner], expected[:19, :, :inner], atol=0.01)
    np.testing.assert_allclose(fields[:, :, :inner], expected[19:, :, :inner], atol=0.01)


def test_detect_end_to_end_through_cv2_dnn(encoder, scene, tmp_path):
    truth, _, _, image = scene
    people = pose.detect(image, model=encoder)
    assert len(people) == 2 and all(p.shape == (18, 3) for p in people)
    errors, recovered, present = match_to_truth(people, truth)
    assert recovered == present and errors.max() < 1.0
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    from_file = pose.detect(path, model=encoder)
    np.testing.assert_allclose(np.stack(from_file), np.stack(people))


def test_multi_scale_maps_are_the_average(tmp_path, scene):
    proto, model = write_random_net(tmp_path)
    image = scene[3]
    both = pose.load([model, proto], scales=(0.5, 1.0)).maps(image)
    half = pose.load((proto, model), scales=(0.5,)).maps(image)
    full = pose.load((proto, model), scales=(1.0,)).maps(image)
    for b, h, f in zip(both, half, full):
        assert b.shape[1:] == SIZE
        np.testing.assert_allclose(b, (h + f) / 2, atol=1e-5)
        assert np.abs(h - f).max() > 0.01      # the scales do differ


def test_caffemodel_path_finds_its_prototxt(tmp_path, scene):
    proto, model = write_encoder_net(tmp_path)
    proto.rename(tmp_path / "pose_deploy_linevec.prototxt")
    people = pose.detect(scene[3], model=pose.load(model, scales=(1.0,)))
    assert len(people) == 2
    assert len(pose.detect(scene[3], model=pose.load([model], scales=(1.0,)))) == 2  # a list of one path (CLI)


def test_fallback_runs_on_the_photograph_and_maps_back(encoder, scene):
    truth, _, _, image = scene
    blank = np.full((SIZE[0] // 2, SIZE[1] // 2, 3), 128, np.uint8)  # nobody here
    assert pose.detect(blank, model=encoder) == []
    calls = []

    def to_photo(img):
        calls.append(img.shape)
        return image                            # twice the size of the blank image

    people = pose.detect(blank, model=encoder, fallback=to_photo)
    assert calls == [blank.shape]
    halved = [t * [0.5, 0.5, 1] for t in truth]
    errors, recovered, present = match_to_truth(people, halved)
    assert recovered == present and errors.max() < 1.0
    pose.detect(image, model=encoder, fallback=to_photo)
    assert len(calls) == 1                      # not called when a pose is found


def test_fallback_runs_when_the_main_subject_is_not_confident(encoder, scene):
    from pose.detect import confidence, detect_scored
    _, _, _, image = scene
    found = detect_scored(image, encoder)
    calls = []

    def to_photo(img):
        calls.append(1)
        return np.full_like(img, 128)           # a photograph with nobody in it
    # Confident enough: no fallback. Demanding more than the detection has: the fallback runs, finds
    # nobody, and the original people are kept.
    assert len(detect_scored(image, encoder, fallback=to_photo, min_confidence=confidence(found))) == len(found)
    assert calls == []
    kept = detect_scored(image, encoder, fallback=to_photo, min_confidence=confidence(found) + 0.01)
    assert calls == [1] and [kp.tolist() for kp, _ in kept] == [kp.tolist() for kp, _ in found]

    def to_same(img):
        calls.append(2)
        return image
    detect_scored(np.full_like(image, 128), encoder, fallback=to_same)
    assert calls == [1, 2]                      # nobody found: the fallback runs


def test_missing_model_files_are_user_errors(tmp_path):
    with pytest.raises(PoseError, match="does not exist"):
        pose.load(tmp_path / "pose_iter_440000.caffemodel")
    with pytest.raises(PoseError, match="does not exist"):
        pose.load(tmp_path / "model.onnx")
    with pytest.raises(PoseError, match="unknown pose model"):
        pose.load(tmp_path / "model.bin")
    with pytest.raises(PoseError, match=".prototxt and a .caffemodel"):
        pose.load((tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"))


def test_corrupt_model_is_a_user_error(tmp_path):
    proto, model = write_encoder_net(tmp_path)
    model.write_bytes(b"not a caffe model")
    with pytest.raises(PoseError, match="OpenCV could not read the pose model"):
        pose.load((proto, model))


def test_wrong_output_layout_is_a_user_error(tmp_path):
    proto, model = write_encoder_net(tmp_path)
    proto.write_text(proto.read_text().replace('bottom: "Mconv7_stage6_L1" top: "net_output"',
                                               'top: "net_output"'))
    net = pose.load((proto, model), scales=(1.0,))
    with pytest.raises(PoseError, match="not the COCO body layout"):
        net.maps(np.zeros((64, 64, 3), np.uint8))


def test_default_model_offline_is_one_error_line(tmp_path, monkeypatch, capsys):
    """pose-detect fetches the catalog's model; offline that is one `error:` line naming the file."""
    from pose.cli import main

    def offline(*args, **kwargs):
        raise OSError("no network")

    import huggingface_hub
    monkeypatch.setenv("SD_INTERP_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    from ldm.load import weights
    monkeypatch.setattr(weights, "_reachable", lambda url: True)  # so that the download itself fails
    image = tmp_path / "blank.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    assert main([str(image), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pose_deploy_linevec.prototxt" in err and "Traceback" not in err
    with pytest.raises(PoseError, match="no pose model given"):
        pose.detect(np.zeros((64, 64, 3), np.uint8))


def test_bad_images_are_user_errors(tmp_path, encoder):
    with pytest.raises(PoseError, match="does not exist"):
        pose.detect(tmp_path / "missing.png", model=encoder)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    with pytest.raises(PoseError, match="cannot decode"):
        pose.detect(garbage, model=encoder)
    for bad in (np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64, 3))):
        with pytest.raises(PoseError, match="HxWx3 uint8"):
            pose.detect(bad, model=encoder)
    with pytest.raises(PoseError, match="positive"):
        pose.OpenPoseNet(encoder.net, scales=())
