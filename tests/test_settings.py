"""The method's settings: the defaults taken from the authors' scripts, the presets, Table 1's baselines at the
authors' own defaults, and how the command line reaches them."""
import json

import pytest
import torch
from PIL import Image

import interp
from interp.apps.options import parse, parser
from interp.conditioning import TextConditioning
from interp.metrics.measure import Sequence
from interp.settings import AUTHORS, BASELINE_DEFAULTS, LONG_SIDE, NEGATIVE_PROMPT, PRESETS
from ldm.errors import UserError

ARGS = ["a.png", "b.png", "--prompt", "x"]


def test_the_defaults_are_what_most_of_the_authors_scripts_use():
    s = interp.Settings()
    assert (s.steps, s.cfg, s.frames, s.candidates, s.levels) == (200, 7.5, 17, "auto", (0.30, 0.55))
    assert (s.eta, s.inversion_steps, s.negative, s.pose, s.text) == (0.1, 500, NEGATIVE_PROMPT, False, "slerp")
    assert LONG_SIDE == 768 and parse(ARGS).settings == interp.Settings(prompt="x")


def test_keypoints_turn_pose_guidance_on_unless_it_is_turned_off():
    assert not parse(ARGS).settings.pose
    assert parse([*ARGS, "--poses", "a.json", "b.json"]).settings.pose
    assert not parse([*ARGS, "--poses", "a.json", "b.json", "--no-pose"]).settings.pose
    assert parse([*ARGS, "--pose"]).settings.pose


def test_a_preset_sets_each_setting_unless_given():
    s = parse([*ARGS, "--preset", "authors", "--frames", "9", "--eta", "0"]).settings
    assert (s.frames, s.eta) == (9, 0.0)
    assert all(getattr(s, k) == v for k, v in AUTHORS.items() if k not in ("frames", "eta"))
    assert interp.Settings.preset("authors", prompt="x") == parse([*ARGS, "--preset", "authors"]).settings
    assert parse([*ARGS, "--preview"]).settings == parse([*ARGS, "--preset", "preview"]).settings
    assert parse([*ARGS, "--preview", "--steps", "30"]).settings.steps == 30
    with pytest.raises(SystemExit):
        parse([*ARGS, "--preview", "--preset", "authors"])
    with pytest.raises(UserError, match="unknown preset"):
        interp.Settings.preset("fast")


def test_help_lists_what_each_preset_and_baseline_default_sets():
    text = " ".join(parser().format_help().split())
    assert "authors: --size 768x768 --fit resize --frames 65" in text and "--pose off" in text
    assert "did: --levels 0.25,0.5, --control-strength 1.0,1.0, --eta 0.0" in text
    assert "--text lerp" in text


@pytest.mark.parametrize("scheme", ["interpolate-denoise", "did", "latent-blending", "ours"])
def test_baselines_at_the_authors_defaults(scheme):
    equal = parse([*ARGS, "--scheme", scheme, "--candidates", "1"])
    authors = parse([*ARGS, "--scheme", scheme, "--candidates", "1", "--baselines", "authors"])
    own = BASELINE_DEFAULTS.get(interp.scheme(scheme).name, {})
    assert all(getattr(authors.settings, k) == v for k, v in own.items())
    assert authors.settings.text == ("lerp" if scheme == "interpolate-denoise" else "slerp")
    if scheme == "ours":
        assert authors.settings == equal.settings
    else:
        assert authors.settings.levels == (0.25, 0.5) != equal.settings.levels
    assert authors.record()["baselines"] == "authors" and equal.record()["baselines"] == "equal"
    given = parse([*ARGS, "--scheme", scheme, "--candidates", "1", "--baselines", "authors", "--levels", "0.3,0.6"])
    assert given.settings.levels == (0.3, 0.6)  # an option given wins
    assert interp.Settings(scheme=scheme).with_baseline_defaults().levels == own.get("levels", (0.30, 0.55))


def test_text_is_slerped_or_lerped():
    g = torch.Generator().manual_seed(0)
    a, b, u = torch.randn(3, 1, 77, 8, generator=g)
    slerped, _ = TextConditioning(a, b, u).at([0.5])
    lerped, _ = TextConditioning(a, b, u, mix=interp.lerp).at([0.5])
    torch.testing.assert_close(lerped[0], (a[0] + b[0]) / 2)
    assert not torch.allclose(slerped, lerped)
    with pytest.raises(UserError, match="slerp or lerp"):
        interp.Settings(text="cubic").plan()


def test_the_report_names_a_baseline_run_at_the_authors_defaults(tmp_path):
    for folder, scheme, baselines in (("equal", "did", "equal"), ("authors", "did", "authors"),
                                      ("ours", "ours", "authors")):
        run = tmp_path / folder
        (run / "frames").mkdir(parents=True)
        frames = {}
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(run / "frames" / f"{i}.png")
            frames[str(i)] = {"file": f"frames/{i}.png", "position": i / 2}
        (run / "run.json").write_text(json.dumps({
            "status": "complete", "scheme": scheme, "inputs": ["a.png", "b.png"], "frames": frames,
            "settings": {"frames": 3, "input_sha256": ["1", "2"], "baselines": baselines}}))
    assert Sequence.read(tmp_path / "equal").scheme == "did"
    assert Sequence.read(tmp_path / "authors").scheme == "did (authors' defaults)"
    assert Sequence.read(tmp_path / "ours").scheme == "ours"  # ours has no defaults of its own to differ by
    assert set(PRESETS) == {"authors", "preview", "freemorph"}
