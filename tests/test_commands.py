"""txt2img / img2img on the tiny fixture checkpoint: offline, reproducible, clear errors."""
import pytest
from PIL import Image

from ldm.cli import img2img_main, txt2img_main
from ldm.images import fit
from conftest import run_command as run




@pytest.fixture
def txt2img(tiny_ckpt, tmp_path, capsys):
    def make(name, *extra):
        out = tmp_path / name
        code, err = run(txt2img_main, ["--prompt", "a fox in the snow", "--ckpt", tiny_ckpt, "--steps", 10,
                                       "--out", out, *extra], capsys)
        assert code == 0, err
        return out
    return make


def test_txt2img_size_and_reproducibility(txt2img):
    a, b, c = txt2img("a.png", "--seed", 1), txt2img("b.png", "--seed", 1), txt2img("c.png", "--seed", 2)
    assert Image.open(a).size == (256, 256)  # the tiny model's native size
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert Image.open(a).text["prompt"] == "a fox in the snow"
    wide = txt2img("wide.png", "--size", "128x64")
    assert Image.open(wide).size == (128, 64)


def test_img2img(txt2img, tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "src.png"
    Image.new("RGBA", (150, 100), (200, 30, 30, 128)).save(src)  # any mode, any size
    outs = []
    for seed in (5, 5, 6):
        out = tmp_path / f"i{len(outs)}.png"
        code, err = run(img2img_main, ["--image", src, "--prompt", "a photo", "--strength", 0.3, "--steps", 10,
                                       "--ckpt", tiny_ckpt, "--seed", seed, "--out", out], capsys)
        assert code == 0, err
        outs.append(out.read_bytes())
    assert Image.open(tmp_path / "i0.png").size == (128, 64)  # 150x100 rounded down to multiples of 64
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_size_rule_crops_to_the_aspect_then_resizes():
    im = Image.new("RGB", (300, 100))
    im.paste((255, 0, 0), (0, 0, 100, 100))  # left third red, the rest black
    out = fit(im, (64, 64))
    assert out.size == (64, 64) and out.getpixel((32, 32)) == (0, 0, 0)  # the centre square kept
    assert fit(Image.new("RGB", (130, 70)), None).size == (128, 64)


@pytest.mark.parametrize("args,message", [
    (["--image", "missing.png"], "does not exist"),
    (["--image", "{bad}"], "cannot read image"),
    (["--image", "{ok}", "--strength", "0"], "--strength: must be in (0, 1], not 0"),
    (["--image", "{ok}", "--strength", "0.01"], "raise --strength or --steps"),
    (["--image", "{ok}", "--size", "32"], "size must be"),
    (["--image", "{ok}", "--ckpt", "nowhere.safetensors"], "not a catalog name"),
    (["--image", "{ok}", "--ckpt", "{bad}"], "not a .safetensors file"),
    (["--image", "{ok}", "--device", "cuda:0"], "CUDA is not available"),
    (["--image", "{ok}", "--dtype", "int4"], "dtype must be one of"),
])
def test_img2img_errors_are_one_line(args, message, tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all" * 20)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (64, 64)).save(ok)
    args = [a.format(bad=bad, ok=ok) for a in args]
    if "--ckpt" not in args:
        args += ["--ckpt", str(tiny_ckpt)]
    code, err = run(img2img_main, [*args, "--prompt", "x", "--steps", 10, "--out", tmp_path / "o.png"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "o.png").exists()


def test_offline_default_checkpoint_error(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    monkeypatch.setenv("SD_INTERP_WEIGHTS", str(tmp_path))
    code, err = run(txt2img_main, ["--prompt", "x", "--out", tmp_path / "o.png"], capsys)
    assert code == 2 and "v2-1_512-ema-pruned.safetensors" in err and str(tmp_path) in err


def test_auto_dtype(monkeypatch):
    import torch
    from ldm import accel
    from ldm.load import model as cli
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert cli.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    for card_has_bf16, dtype in ((True, torch.bfloat16), (False, torch.float16)):  # Ampere and later; older
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: card_has_bf16)
        assert cli.resolve_dtype("auto", torch.device("cuda")) == dtype
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx2"}))
    assert cli.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert cli.resolve_dtype("float32", torch.device("cuda")) == torch.float32
