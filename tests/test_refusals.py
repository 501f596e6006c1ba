"""A refused run leaves nothing behind: every check that can refuse it (files, checkpoints, frame size,
options) comes before `--out` is made, a folder the run made is removed when it stops before its first
frame, and a finished run (or chain) run again is left exactly as it was. Frame sizes that are not
multiples of 64, or that the model was not trained for, are refused with what to give instead."""
import json
import os
import shutil

import pytest
from PIL import Image, ImageDraw

import interp
import interp.models
from conftest import DATA
from conftest import run_command as run
from interp.apps import run as run_app
from interp.apps.interpolate import main as interpolate_main
from ldm.errors import UserError
from ldm.files import check_writable
from ldm.images import check_frame_size
from ldm.load import weights

FAST = ["--prompt", "a ball", "--frames", 3, "--steps", 4, "--size", 64, "--inversion-steps", 1, "--candidates", 1,
        "--no-pose"]


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.setenv("SD_INTERP_CACHE", str(tmp_path / "cache"))
    paths = []
    for name, colour in (("a", (200, 60, 40)), ("b", (40, 90, 200)), ("c", (60, 160, 70))):
        im = Image.new("RGB", (64, 64), colour)
        ImageDraw.Draw(im).ellipse((16, 16, 48, 48), fill=(230, 220, 80))
        im.save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    return paths


def refused(code, err, *words):
    """Exit 2 with exactly one `error:` line (the last), holding `words`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert all(w in lines[-1] for w in words), err
    return lines[-1]


def no_model(monkeypatch):
    monkeypatch.setattr(interp.models, "load_model", lambda *a: pytest.fail("nothing loads for a refused size"))


# --- bad files: refused before --out is made --------------------------------------------------------

def _truncated(tmp_path, tiny_ckpt):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(tiny_ckpt.read_bytes()[:4096])
    shutil.copy(DATA / "config.json", tmp_path / "truncated.safetensors.json")
    return path


def _random(tmp_path, tiny_ckpt):
    path = tmp_path / "random.safetensors"
    path.write_bytes(os.urandom(50_000))
    return path


CHECKPOINTS = {
    "truncated": _truncated,
    "random bytes": _random,
    "a ControlNet": lambda tmp_path, tiny_ckpt: tiny_ckpt.parent / "controlnet.safetensors",
    "missing": lambda tmp_path, tiny_ckpt: tmp_path / "nowhere.safetensors",
}


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_bad_checkpoint_leaves_no_out_folder(kind, images, tiny_ckpt, tmp_path, capsys):
    ckpt = CHECKPOINTS[kind](tmp_path, tiny_ckpt)
    out = tmp_path / "new" / "run"  # its parent is made by nobody either
    code, err = run(interpolate_main, [*images[:2], *FAST, "--ckpt", ckpt, "--out", out], capsys)
    refused(code, err)
    assert not (tmp_path / "new").exists()


def test_a_bad_controlnet_is_refused_before_the_folder_is_made(images, tiny_ckpt, tmp_path, capsys):
    bad = _random(tmp_path, tiny_ckpt)
    code, err = run(interpolate_main, [*images[:2], *[a for a in FAST if a != "--no-pose"], "--ckpt", tiny_ckpt,
                                       "--controlnet", bad, "--poses", *[DATA / "missing.json"] * 2,
                                       "--out", tmp_path / "run"], capsys)
    refused(code, err, "missing.json")  # keypoint files are checked first of all
    assert not (tmp_path / "run").exists()
    poses = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"width": 64, "height": 64, "people": []}))
        poses.append(tmp_path / f"{name}.json")
    code, err = run(interpolate_main, [*images[:2], *[a for a in FAST if a != "--no-pose"], "--ckpt", tiny_ckpt,
                                       "--controlnet", bad, "--poses", *poses, "--out", tmp_path / "run"], capsys)
    refused(code, err)
    assert not (tmp_path / "run").exists()


def test_missing_weights_leave_no_out_folder(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SD_INTERP_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "_reachable", lambda url: True)
    monkeypatch.setattr(weights, "_download", lambda entry, dest: (_ for _ in ()).throw(UserError("offline")))
    code, err = run(interpolate_main, [*images[:2], *FAST, "--out", tmp_path / "run"], capsys)
    refused(code, err)
    assert not (tmp_path / "run").exists()


def test_a_folder_that_existed_is_never_removed(images, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, err = run(interpolate_main, [*images[:2], *FAST, "--ckpt", _random(tmp_path, tiny_ckpt), "--out", out], capsys)
    refused(code, err)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_check_writable_can_leave_nothing_behind(tmp_path):
    check_writable(tmp_path / "x" / "y" / "z", "--out", folder=True, keep=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "x").mkdir()
    check_writable(tmp_path / "x" / "y", "--out", folder=True, keep=False)
    assert [p.name for p in tmp_path.iterdir()] == ["x"] and list((tmp_path / "x").iterdir()) == []
    check_writable(tmp_path / "k" / "f.png", "--out")  # the default still makes the folder
    assert (tmp_path / "k").is_dir()


# --- stopped before the first frame: the folder it made goes ------------------------------------------

@pytest.mark.parametrize("stop", [UserError("the inversion failed"), KeyboardInterrupt()])
def test_a_run_stopped_before_its_first_frame_removes_its_folder(stop, images, tiny_ckpt, tmp_path, capsys,
                                                                 monkeypatch):
    def failing(*args, **kwargs):
        raise stop
    monkeypatch.setattr(interp.inversion, "cached_invert", failing)
    code, err = run(interpolate_main, [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--out", tmp_path / "run"], capsys)
    assert not (tmp_path / "run").exists()
    if isinstance(stop, KeyboardInterrupt):
        assert code == 130 and "keeps the finished frames" not in err
        assert err.rstrip().endswith("interrupted before the first frame was finished, so there is nothing to resume: "
                                     "run the same command again to start over")
    else:
        refused(code, err, "the inversion failed")
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    code, err = run(interpolate_main, [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--out", tmp_path / "kept"], capsys)
    assert (tmp_path / "kept").is_dir()


def test_an_interrupted_run_with_frames_says_it_keeps_them(images, tiny_ckpt, tmp_path, capsys, monkeypatch):
    from interp.apps.rundir import RunDir
    save, calls = RunDir.save_frame, []

    def crash_after_two(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return save(self, *args, **kwargs)
    monkeypatch.setattr(RunDir, "save_frame", crash_after_two)
    code, err = run(interpolate_main, [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--out", tmp_path / "run"], capsys)
    assert code == 130 and err.rstrip().endswith(f"({tmp_path / 'run'} keeps the finished frames)")
    assert len(list((tmp_path / "run" / "frames").glob("frame_*.png"))) == 2


# --- a finished run, run again ----------------------------------------------------------------------

def _files(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_run_again_is_left_as_it_was(images, tiny_ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, err = run(interpolate_main, [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--out", out], capsys)
    assert code == 0, err
    before = _files(out)
    assert json.loads((out / "run.json").read_text())["unet_calls"] > 0
    monkeypatch.chdir(tmp_path)  # the same images by another path
    code, err = run(interpolate_main, ["a.png", "b.png", *FAST, "--ckpt", tiny_ckpt, "--out", "run"], capsys)
    assert code == 0, err
    assert _files(out) == before
    # another fps makes the video again (and only then is run.json rewritten)
    code, err = run(interpolate_main, ["a.png", "b.png", *FAST, "--ckpt", tiny_ckpt, "--out", "run", "--fps", 4], capsys)
    assert code == 0, err
    state = json.loads((out / "run.json").read_text())
    assert state["fps"] == 4 and state["status"] == "complete"


def test_the_rerun_says_there_is_nothing_to_do(images, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--out", out]
    assert run(interpolate_main, args, capsys)[0] == 0
    code = interpolate_main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code in (None, 0)
    assert captured.out.strip() == f"{out} already holds this run, complete: nothing to do (--overwrite makes it again)"
    assert "[interpolate] video" not in captured.err and "error" not in captured.err


def test_a_finished_chain_run_again_is_left_as_it_was(images, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "chain"
    args = [*images, *FAST, "--ckpt", tiny_ckpt, "--out", out]
    assert run(interpolate_main, args, capsys)[0] == 0
    before = _files(out)
    interpolate_main([str(a) for a in args])
    captured = capsys.readouterr()
    assert _files(out) == before
    assert captured.out.strip().endswith(f"{out} already holds this chain, complete: nothing to do "
                                         "(--overwrite makes it again)")


# --- the video codec is named at the start -----------------------------------------------------------

def test_the_codec_is_named_before_the_frames(images, tiny_ckpt, tmp_path, capsys):
    code, err = run(interpolate_main, [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("[interpolate] ")]
    video = json.loads((tmp_path / "run" / "run.json").read_text())["outputs"]["video"]
    assert lines[0].startswith("[interpolate] video: ") and lines[0].endswith(f"({video})")
    assert lines[-1] == lines[0]  # and among the notes at the end, as before


# --- frame sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size,message", [
    ("128x96", "--size 128x96: width and height must be multiples of 64: try 128x64 or 128x128"),
    ("100", "--size 100: the side must be a multiple of 64: try 64 or 128"),
    ("64x9999", "--size 64x9999: width and height must be multiples of 64: try 64x9984 or 64x10048"),
    ("64x320", "--size 64x320: an aspect ratio of 5:1 is beyond 4:1"),
    ("1024x128", "--size 1024x128: an aspect ratio of 8:1 is beyond 4:1"),
])
def test_a_size_the_model_cannot_take_is_refused_before_loading(size, message, images, tiny_ckpt, tmp_path, capsys,
                                                                 monkeypatch):
    no_model(monkeypatch)
    args = [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--size", size, "--out", tmp_path / "run"]
    line = refused(*run(interpolate_main, args, capsys))
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "run").exists()


def test_a_size_beyond_twice_the_native_one_is_refused_before_the_folder(images, tiny_ckpt, tmp_path, capsys):
    native = interp.Pipeline.from_files(sd=str(tiny_ckpt)).sd().config.image_size  # 256 for the tiny model
    big = 2 * native + 64
    args = [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--size", f"{big}x{native}", "--out", tmp_path / "run"]
    line = refused(*run(interpolate_main, args, capsys))
    assert line == (f"error: --size {big}x{native}: a width of {big} px is more than 2x the {native} px this model was "
                    "trained at (expect its content repeated, and a run whose time grows with the area): give sides "
                    f"of at most {2 * native} px, or --size {big}x{native}! to force it")
    assert not (tmp_path / "run").exists()


def test_a_forced_size_runs(images, tiny_ckpt, tmp_path, capsys):
    args = [*images[:2], *FAST, "--ckpt", tiny_ckpt, "--size", "320x64!", "--out", tmp_path / "run"]
    code, err = run(interpolate_main, args, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["size"] == [320, 64]


def test_check_frame_size():
    assert check_frame_size(None) is None
    assert check_frame_size("512") == (512, 512) and check_frame_size(768) == (768, 768)
    assert check_frame_size("1024x512", 512) == (1024, 512)
    assert check_frame_size("1536x512!", 512) == (1536, 512)
    assert check_frame_size("64x512!") == (64, 512)
    assert check_frame_size((768, 768), 256) == (768, 768)  # a frame a program decided: not held to the native size
    with pytest.raises(UserError, match="more than 2x the 512 px"):
        check_frame_size("1536x512", 512)
    with pytest.raises(UserError, match="try 64x64 or 64x128"):
        check_frame_size((64, 96))
    with pytest.raises(UserError, match="the frame 512x64 .* beyond 4:1"):
        check_frame_size(None, 512, frame=(512, 64))
    with pytest.raises(UserError, match="size must be"):
        check_frame_size("32")


def test_the_library_refuses_the_same_sizes(tiny_ckpt, images):
    pipe = interp.Pipeline.from_files(sd=str(tiny_ckpt))
    with pytest.raises(UserError, match="multiples of 64"):
        pipe.prepare(*images[:2], interp.Settings(size="128x96"))
    with pytest.raises(UserError, match="more than 2x"):
        pipe.prepare(*images[:2], interp.Settings(size="1024"))
    assert pipe.prepare(*images[:2], interp.Settings(size="1024x256!")).size == (1024, 256)


def test_interrupted_says_what_is_left(tmp_path):
    assert "nothing to resume" in str(run_app.Interrupted(tmp_path / "none"))
    (tmp_path / "run" / "segment_01" / "frames").mkdir(parents=True)
    assert "nothing to resume" in str(run_app.Interrupted(tmp_path / "run"))
    (tmp_path / "run" / "segment_01" / "frames" / "frame_0000.png").write_bytes(b"")
    assert "keeps the finished frames" in str(run_app.Interrupted(tmp_path / "run"))
