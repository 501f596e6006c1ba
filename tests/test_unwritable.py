"""Outputs that cannot be written get one `error:` line before anything slow runs, never a traceback
(a folder below a plain file cannot be made, whoever runs the suite, root included)."""
import pytest
from PIL import Image

import interp.apps.interpolate
import interp.models
import ldm.cli
from ldm import runtime
from ldm.cli import img2img_main, txt2img_main
from interp.apps.interpolate import main as interpolate_main
from conftest import run_command as run




@pytest.fixture
def blocker(tmp_path):
    """A plain file: nothing can be written below it."""
    path = tmp_path / "file"
    path.write_text("")
    return path


def one_error_line(code, err, *words):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), err


def test_txt2img_and_img2img_check_their_out_first(tiny_ckpt, blocker, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ldm.cli, "load_model", lambda options: pytest.fail("the model loads only once --out is writable"))
    code, err = run(txt2img_main, ["--prompt", "a", "--ckpt", tiny_ckpt, "--out", blocker / "x.png"], capsys)
    one_error_line(code, err, "cannot write", str(blocker), "--out")
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    code, err = run(img2img_main, ["--image", tmp_path / "in.png", "--prompt", "a", "--ckpt", tiny_ckpt,
                                   "--out", blocker / "x.png"], capsys)
    one_error_line(code, err, "cannot write", "--out")


@pytest.mark.parametrize("where", ["out", "cache"])
def test_interpolate_checks_its_folders_first(tiny_ckpt, blocker, tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr(interp.models, "load_model", lambda *a: pytest.fail("the model loads only once all is writable"))
    for name in ("a", "b"):
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / f"{name}.png")
    monkeypatch.setenv("SD_INTERP_CACHE", str(blocker / "cache" if where == "cache" else tmp_path / "cache"))
    out = blocker / "run" if where == "out" else tmp_path / "run"
    code, err = run(interpolate_main, [tmp_path / "a.png", tmp_path / "b.png", "--prompt", "a", "--ckpt", tiny_ckpt,
                                       "--frames", 3, "--steps", 4, "--inversion-steps", 2, "--no-pose",
                                       "--candidates", 1, "--out", out], capsys)
    one_error_line(code, err, "cannot write", "--out" if where == "out" else "SD_INTERP_CACHE")
    assert len([line for line in err.splitlines() if line.strip()]) == 1  # nothing ran before the error


def test_a_write_that_fails_later_is_one_line(capsys):
    def body():
        raise OSError(28, "No space left on device", "/somewhere/frame.png")
    with pytest.raises(SystemExit) as e:
        runtime.run(body)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: /somewhere/frame.png: No space left on device")
