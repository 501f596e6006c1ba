"""The run directory of `interpolate`: frames, latents, candidates, resume rules, videos and run.json."""
import json
import math
import os

import cv2
import pytest
import torch
from PIL import Image, ImageSequence

from interp.apps import video
from interp.apps.rundir import SHEET_GAP, RunDir
from interp.apps.video import NAMES as video_names, codec as video_codec
from ldm.errors import UserError

SETTINGS = {"frames": 5, "prompt": "a photo", "steps": 20, "guidance": 7.5, "size": (64, 48), "seed": 0}
W, H = 64, 48


def image(i):
    """A distinct solid-colour frame (GIF writers merge identical consecutive frames)."""
    return Image.new("RGB", (W, H), (40 * i % 256, 255 - 30 * i, 100))


def latent(i):
    return torch.full((1, 4, H // 8, W // 8), float(i)) + torch.arange(W // 8) / 10


def run_json(d):
    return json.loads((d / "run.json").read_text())


def all_files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def fill(run, count=5):
    for i in range(count):
        run.save_frame(i, image(i), latent(i), {"alpha": i / (count - 1)})


def test_fresh_run_writes_folders_and_settings(tmp_path):
    d = tmp_path / "out"
    RunDir(d, SETTINGS)
    assert all((d / sub).is_dir() for sub in ("frames", "latents", "candidates"))
    state = run_json(d)
    assert state["settings"] == json.loads(json.dumps(SETTINGS))
    assert state["status"] == "running" and state["started"] and state["frames"] == {}


def test_save_frame_and_done(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    assert not run.done(2)
    run.save_frame(2, image(2), latent(2), {"alpha": 0.5, "timestep": torch.tensor(651)})
    assert run.done(2)
    assert (d / "frames" / "frame_0002.png").is_file()
    assert torch.equal(run.load_latent(2), latent(2)) and run.load_latent(2).dtype == torch.float32
    entry = run_json(d)["frames"]["2"]
    assert entry == {"alpha": 0.5, "timestep": 651, "file": "frames/frame_0002.png",
                     "latent": "latents/frame_0002.safetensors"}
    with Image.open(d / "frames" / "frame_0002.png") as im:
        assert im.size == (W, H) and im.getpixel((0, 0)) == image(2).getpixel((0, 0))
    assert run.missing() == [0, 1, 3, 4]
    with pytest.raises(UserError):
        run.load_latent(1)
    with pytest.raises(ValueError):
        run.save_frame(5, image(5), latent(5))


def test_done_needs_png_latent_and_record(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    run.save_frame(1, image(1), latent(1))
    run.save_frame(3, image(3), latent(3))
    os.remove(d / "latents" / "frame_0001.safetensors")  # a PNG without its latent
    assert not run.done(1)
    state = run_json(d)
    del state["frames"]["3"]                             # a crash before the run.json entry
    (d / "run.json").write_text(json.dumps(state))
    resumed = RunDir(d, SETTINGS)
    assert not resumed.done(1) and not resumed.done(3)
    assert (d / "latents" / "frame_0003.safetensors").is_file()


def test_resume_keeps_frames_and_normalises_settings(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, dict(SETTINGS, size=[64, 48], steps=20.0))  # list for tuple, float for int
    run.save_frame(0, image(0), latent(0))
    started = run_json(d)["started"]
    resumed = RunDir(d, SETTINGS)
    assert resumed.done(0) and torch.equal(resumed.load_latent(0), latent(0))
    state = run_json(d)
    assert state["started"] == started and len(state["resumed"]) == 1 and state["status"] == "running"


def test_different_settings_are_refused(tmp_path):
    d = tmp_path / "out"
    RunDir(d, SETTINGS).save_frame(0, image(0), latent(0))
    with pytest.raises(UserError) as e:
        RunDir(d, dict(SETTINGS, prompt="a painting", extra=1))
    message = str(e.value)
    assert "\n" not in message and "different settings" in message
    assert "prompt" in message and "extra" in message and "steps" not in message and "--out" in message
    assert (d / "frames" / "frame_0000.png").is_file()  # nothing was deleted


def test_a_run_that_made_no_frame_does_not_lock_its_folder(tmp_path):
    """A run that failed before making a frame (only the inputs written) leaves a folder a corrected run
    simply reuses; one frame made and the folder is kept for its own settings."""
    d = tmp_path / "out"
    RunDir(d, SETTINGS).save_frame(0, image(0), latent(0), {"input": True})
    fixed = RunDir(d, dict(SETTINGS, prompt="a painting"))
    assert run_json(d)["settings"]["prompt"] == "a painting" and not fixed.done(0)
    fixed.save_frame(1, image(1), latent(1))
    with pytest.raises(UserError, match="--overwrite"):
        RunDir(d, SETTINGS)


def test_resume_false_clears_previous_run(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    fill(run)
    run.save_candidates(2, [image(7), image(8)], [0.1, 0.2], kept=1)
    run.finish()
    (d / "notes.txt").write_text("mine")
    fresh = RunDir(d, dict(SETTINGS, prompt="other"), resume=False)
    assert fresh.missing() == list(range(5))
    assert all_files(d) == ["notes.txt", "run.json"]  # only files of the layout are deleted
    assert run_json(d)["settings"]["prompt"] == "other"


def test_candidates_and_scores(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    run.save_candidates(2, [image(5), image(6), image(7)], [0.3, 0.9, 0.1], kept=1)
    run.save_candidates(3, [image(5), image(6)], None, kept=0)
    assert run_json(d)["candidates"]["2"] == {
        "files": [f"candidates/frame_0002_c{k}.png" for k in range(3)], "scores": [0.3, 0.9, 0.1], "kept": 1}
    assert run_json(d)["candidates"]["3"]["scores"] is None
    run.save_candidates(2, [image(1), image(2)], torch.tensor([0.5, 0.4]), kept=0)  # a second attempt
    assert sorted(p.name for p in (d / "candidates").iterdir()) == [
        "frame_0002_c0.png", "frame_0002_c1.png", "frame_0003_c0.png", "frame_0003_c1.png"]
    assert run_json(d)["candidates"]["2"]["scores"] == pytest.approx([0.5, 0.4])
    with pytest.raises(ValueError):
        run.save_candidates(2, [image(1)], [0.1, 0.2], kept=0)
    with pytest.raises(ValueError):
        run.save_candidates(2, [image(1)], None, kept=1)


def test_record_merges_fields(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    run.record(timings={"load": 1.5}, unet_calls=12)
    run.record(unet_calls=20, checkpoint={"file": "x.safetensors", "sha256": "ab"})
    state = run_json(d)
    assert state["timings"] == {"load": 1.5} and state["unet_calls"] == 20 and state["checkpoint"]["sha256"] == "ab"
    with pytest.raises(ValueError):
        run.record(status="complete")


def test_finish_refuses_missing_frames(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    fill(run, 5)
    os.remove(d / "frames" / "frame_0003.png")
    with pytest.raises(UserError) as e:
        run.finish()
    assert "\n" not in str(e.value) and "(3)" in str(e.value)
    assert all_files(d) == sorted([f"frames/frame_000{i}.png" for i in (0, 1, 2, 4)]
                                  + [f"latents/frame_000{i}.safetensors" for i in range(5)] + ["run.json"])
    assert run_json(d)["status"] == "running"


def test_finish_writes_video_gif_and_sheet(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    fill(run, 5)
    paths = run.finish(fps=10)
    state = run_json(d)
    assert state["status"] == "complete" and state["finished"] and state["fps"] == 10
    name = state["outputs"]["video"]
    assert state["outputs"] == {"video": name, "gif": "animation.gif", "contact_sheet": "contact_sheet.png"}
    assert paths["video"] == os.path.join(d, name) and name in video_names
    assert state["video_codec"] == video_codec((W, H))[2]

    video = cv2.VideoCapture(str(d / name))
    assert video.isOpened() and video.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    assert len(frames) == 5 and frames[0].shape == (H, W, 3)
    # the codecs are lossy; the solid colours survive closely (BGR order)
    assert abs(int(frames[4][H // 2, W // 2, 2]) - image(4).getpixel((0, 0))[0]) < 12

    with Image.open(d / "animation.gif") as gif:
        assert gif.info["loop"] == 0 and gif.info["duration"] == 100
        assert sum(1 for _ in ImageSequence.Iterator(gif)) == 5

    cols = math.ceil(math.sqrt(5))  # 3 columns, 2 rows at full size
    with Image.open(d / "contact_sheet.png") as sheet:
        assert sheet.size == (3 * W + 4 * SHEET_GAP, 2 * H + 3 * SHEET_GAP) and cols == 3
        assert sheet.getpixel((SHEET_GAP + W - 2, SHEET_GAP + H - 2)) == image(0).getpixel((0, 0))
    assert not [p for p in all_files(d) if ".part" in p]


def test_contact_sheet_stays_under_4096_pixels(tmp_path):
    from interp.apps.rundir import contact_sheet
    frames = [Image.new("RGB", (1024, 768), (i, i, i)) for i in range(17)]  # 5 columns of 1024 px: too wide
    sheet = contact_sheet(frames)
    tw = (4096 - 6 * SHEET_GAP) // 5
    assert sheet.size == (5 * tw + 6 * SHEET_GAP, 4 * round(768 * tw / 1024) + 5 * SHEET_GAP)
    assert 4000 < sheet.width <= 4096


def test_resume_after_complete_and_crash_leftovers(tmp_path):
    d = tmp_path / "out"
    run = RunDir(d, SETTINGS)
    fill(run, 5)
    run.finish()
    (d / "frames" / "frame_0002.part.png").write_bytes(b"half")
    (d / "video.part.webm").write_bytes(b"half")
    resumed = RunDir(d, SETTINGS)
    assert run_json(d)["status"] == "running" and "finished" not in run_json(d)
    assert not [p for p in all_files(d) if ".part" in p]
    assert resumed.missing() == []
    resumed.finish()
    assert run_json(d)["status"] == "complete"


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError):
        RunDir(tmp_path / "a", dict(SETTINGS, frames=2))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError):
        RunDir(tmp_path / "file", SETTINGS)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run.json").write_text("{not json")
    with pytest.raises(UserError) as e:
        RunDir(tmp_path / "b", SETTINGS)
    assert "\n" not in str(e.value)
    run = RunDir(tmp_path / "c", dict(SETTINGS, frames=10001))
    assert run.frame_path(7).endswith("frame_00007.png")


def test_the_video_codec_is_the_most_playable_one_opencv_writes(tmp_path):
    """H.264, then VP9 and VP8 WebM (what opencv-python's wheels write), MPEG-4 part 2 only as the last resort."""
    import numpy as np
    black = np.zeros((48, 64, 3), np.uint8)
    writable = [(c, n) for c, n, _ in video.CODECS if video._write(str(tmp_path / f"{c}-{n}"), c, [black], 8, (64, 48))]
    assert video_codec((64, 48))[:2] == writable[0]


def test_a_size_no_codec_takes_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(video, "CODECS", (("XXXX", "video.mp4", "none"),))
    video.codec.cache_clear()
    try:
        with pytest.raises(UserError, match="cannot write a 64x48 video") as e:
            video.codec((64, 48))
        assert "\n" not in str(e.value) and "--size" in str(e.value)
    finally:
        video.codec.cache_clear()


def test_a_video_of_the_same_frames_is_the_same_file(tmp_path):
    """FFmpeg's WebM muxer draws random track UIDs; they are fixed, so a resumed run's video equals an
    uninterrupted one's, and the video still plays back whole."""
    import numpy as np
    frames = [Image.fromarray(np.full((64, 64, 3), 30 * i, np.uint8)) for i in range(4)]
    fourcc, name, _ = video_codec((64, 64))
    paths = [str(tmp_path / f"{k}_{name}") for k in range(2)]
    for path in paths:
        video.write_video(path, fourcc, frames, 8.0)
    data = [open(p, "rb").read() for p in paths]
    assert data[0] == data[1]
    capture, count = cv2.VideoCapture(paths[0]), 0
    while capture.read()[0]:
        count += 1
    assert count == 4
