"""The interpolation method on the tiny fixture models: shared noise, textual inversion, ranking,
every scheme, conditioning, and the `interpolate` command end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import pose
from interp.cli import main as interpolate_main
from interp.conditioning import PoseConditioning, TextConditioning, control_strength
from interp.frames import Frame, NoiseLevel
from interp.interpolator import SCHEMES, Interpolator, make_plan
from interp.inversion import denoising_loss, invert
from ldm.pipeline import encode_images

SIZE = 64  # pixels: an 8x8 latent keeps every test fast


@pytest.fixture(scope="module")
def latents(tiny_sd):
    g = torch.Generator().manual_seed(0)
    return {0: torch.randn(1, 4, 8, 8, generator=g), 4: torch.randn(1, 4, 8, 8, generator=g)}


@pytest.fixture(scope="module")
def text(tiny_sd):
    g = torch.Generator().manual_seed(1)
    c = torch.randn(3, 77, 64, generator=g)
    return TextConditioning(c[:1], c[1:2], c[2:])


def interpolator(sd, text, scheme="ours", candidates=1, scorer=None, **kw):
    plan = make_plan(5, steps=10, candidates=candidates, scheme=scheme)
    return Interpolator(sd, text, plan, scheme, steps=10, scorer=scorer, **kw)


def test_shared_noise_at_the_ends_equals_the_noisy_parent(tiny_sd, text, latents):
    it = interpolator(tiny_sd, text)
    level = NoiseLevel(6, 601)
    for position, parent in ((0.0, 0), (1.0, 4)):
        x = it.start_latents([Frame(2, 0, 4, position)], level, 3, latents, 0)
        eps = it.noise(2, 3, latents[0])
        expected = tiny_sd.schedule.q_sample(latents[parent].expand(3, -1, -1, -1), 601, eps)
        assert torch.equal(x, expected)
    # Without shared noise the two parents get different noise, so the middle differs.
    unshared = interpolator(tiny_sd, text, "no-shared-noise").start_latents([Frame(2, 0, 4, 0.5)], level, 1, latents, 0)
    shared = it.start_latents([Frame(2, 0, 4, 0.5)], level, 1, latents, 0)
    assert not torch.allclose(unshared, shared)


def test_noise_is_per_frame_and_reproducible(tiny_sd, text, latents):
    it = interpolator(tiny_sd, text)
    assert torch.equal(it.noise(3, 2, latents[0]), it.noise(3, 2, latents[0]))
    assert not torch.equal(it.noise(3, 2, latents[0]), it.noise(1, 2, latents[0]))


def test_text_and_control_conditioning(text):
    cond, uncond = text.at([0.0, 1.0])
    assert torch.equal(cond[0], text.cond[0][0]) and torch.equal(cond[1], text.cond[1][0])
    assert torch.equal(uncond[0], text.uncond[0][0])
    s = control_strength([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(s, torch.tensor([1.0, 1.25, 1.5, 1.0]))


def test_pose_hints_follow_the_interpolated_skeleton():
    a = np.zeros((18, 3))
    a[[1, 2, 5]] = [[32, 20, 1], [20, 20, 1], [44, 20, 1]]
    b = a.copy()
    b[:, 1] += 20 * (b[:, 2] > 0)
    cond = PoseConditioning([a], [b], 64, 64)
    hints = cond.hints([0.0, 0.5])
    assert hints.shape == (2, 3, 64, 64) and 0 <= hints.min() and hints.max() <= 1
    expected = pose.render([pose.interpolate(a, b, 0.5)], 64, 64)
    assert torch.equal(hints[1], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    assert not PoseConditioning([a], [], 64, 64)


def test_textual_inversion_lowers_its_loss(tiny_sd):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    cond, uncond = torch.randn(2, 77, 64, generator=g) * 0.5, torch.randn(1, 77, 64, generator=g) * 0.5
    z0 = encode_images(tiny_sd, images)
    probes = [(int(t), torch.randn(1, 4, 8, 8, generator=g)) for t in (350, 500, 650)]

    def loss(c, u):
        with torch.no_grad():
            return sum(denoising_loss(tiny_sd, z0[i:i + 1], t, n, c[i:i + 1], u, 3.0).item()
                       for i in range(2) for t, n in probes)
    new_cond, new_uncond, losses = invert(tiny_sd, images, cond, uncond, steps=30, lr=1e-2, guidance=3.0)
    assert len(losses) == 30 and not tiny_sd.unet.gradient_checkpointing
    assert new_cond.shape == cond.shape and new_uncond.shape == uncond.shape
    assert loss(new_cond, new_uncond) < 0.95 * loss(cond, uncond)  # seeded: 4.03 -> 3.72


def test_ranking_keeps_the_best_candidate(tiny_sd, text, latents):
    brightness = lambda images: images.clamp(-1, 1).mean(dim=(1, 2, 3))  # noqa: E731  (a deterministic scorer)
    it = interpolator(tiny_sd, text, candidates=3, scorer=brightness)
    kept, frames = {}, {}

    def on_candidates(index, images, scores, k):
        means = [np.asarray(im, dtype=np.float64).mean() for im in images]
        assert k == int(np.argmax(scores)) == int(np.argmax(means))
        kept[index] = images[k]

    it.run(dict(latents), lambda i, image, z, info: frames.update({i: (image, info)}), on_candidates)
    assert sorted(frames) == [1, 2, 3] == sorted(kept)
    for i, (image, info) in frames.items():
        assert image.tobytes() == kept[i].tobytes() and len(info["scores"]) == 3


def test_a_scorer_is_required_for_several_candidates(tiny_sd, text):
    with pytest.raises(Exception, match="scorer"):
        interpolator(tiny_sd, text, candidates=2)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_makes_every_frame(tiny_sd, text, latents, scheme):
    it = interpolator(tiny_sd, text, scheme)
    made = []
    result = it.run(dict(latents), lambda i, image, z, info: made.append(i))
    assert sorted(made) == [1, 2, 3] and sorted(result) == [0, 1, 2, 3, 4]
    assert all(result[i].shape == (1, 4, 8, 8) and torch.isfinite(result[i]).all() for i in result)
    if scheme in ("ours", "no-shared-noise", "interpolate-denoise"):
        # The theoretical minimum of UNet calls: one per DDIM step of each round, all frames batched.
        assert it.unet_calls == sum(level.step + 1 for level in it.plan.levels)
    if scheme == "interpolate-only":
        assert it.unet_calls == 0


def test_controlnet_and_warp_run(tiny_sd, tiny_controlnet, text, latents):
    from interp.warp import Warp
    a = np.zeros((18, 3))
    a[[1, 2, 5]] = [[32, 20, 1], [20, 20, 1], [44, 20, 1]]
    poses = PoseConditioning([a], [a + [[5, 5, 0]]], SIZE, SIZE)
    it = interpolator(tiny_sd, text, controlnet=tiny_controlnet, poses=poses, warp=Warp(zoom=1.5))
    plain = interpolator(tiny_sd, text).run(dict(latents), lambda *a: None)
    steered = it.run(dict(latents), lambda *a: None)
    assert not torch.allclose(plain[2], steered[2])


# --- the command -----------------------------------------------------------------------------------

def inputs(tmp_path):
    paths = []
    for name, colour, size in (("a", (200, 40, 40), (96, 80)), ("b", (40, 40, 200), (70, 90))):
        im = Image.new("RGBA", size, colour + (255,))
        ImageDraw.Draw(im).ellipse((10, 10, 50, 50), fill=(230, 230, 60, 255))
        paths.append(tmp_path / f"{name}.png")
        im.save(paths[-1])
    return paths


def run_cli(args, capsys):
    try:
        code = interpolate_main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code or 0, capsys.readouterr().err


@pytest.fixture
def command(tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SD_INTERP_CACHE", str(tmp_path / "cache"))
    a, b = inputs(tmp_path)

    def go(out, *extra):
        return run_cli([a, b, "--prompt", "a ball", "--ckpt", tiny_ckpt, "--frames", 5, "--steps", 10,
                        "--size", SIZE, "--inversion-steps", 2, "--candidates", 1, "--no-pose",
                        "--out", tmp_path / out, *extra], capsys)
    return go


def test_command_writes_everything_and_is_reproducible(command, tmp_path):
    code, err = command("one")
    assert code == 0, err
    run = tmp_path / "one"
    for name in ("video.mp4", "animation.gif", "contact_sheet.png", "run.json"):
        assert (run / name).is_file(), name
    frames = sorted((run / "frames").glob("*.png"))
    assert [f.name for f in frames] == [f"frame_{i:04d}.png" for i in range(5)]
    assert all(Image.open(f).size == (SIZE, SIZE) for f in frames)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and record["settings"]["seed"] == 0
    assert record["unet_calls"] == sum(r["step"] + 1 for r in record["rounds"])
    assert record["settings"]["checkpoint"].startswith(("sha256:", "header-sha256:"))
    assert code == 0 and command("two")[0] == 0
    again = sorted((tmp_path / "two" / "frames").glob("*.png"))
    assert [f.read_bytes() for f in frames] == [f.read_bytes() for f in again]
    assert command("three", "--seed", 1)[0] == 0
    other = sorted((tmp_path / "three" / "frames").glob("*.png"))
    assert frames[2].read_bytes() != other[2].read_bytes()
    assert frames[0].read_bytes() == other[0].read_bytes()  # the inputs themselves


def test_command_resumes_after_an_interruption(command, tmp_path, monkeypatch):
    from interp.output import RunDir
    assert command("full")[0] == 0
    save = RunDir.save_frame
    calls = []

    def crash_after_three(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return save(self, *args, **kwargs)
    monkeypatch.setattr(RunDir, "save_frame", crash_after_three)
    code, _ = command("resumed")
    assert code == 130 and not (tmp_path / "resumed" / "video.mp4").exists()
    monkeypatch.setattr(RunDir, "save_frame", save)
    code, err = command("resumed")
    assert code == 0, err
    full = json.loads((tmp_path / "full" / "run.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert resumed["resumed"] and resumed["unet_calls"] < full["unet_calls"]
    for i in range(5):
        name = f"frames/frame_{i:04d}.png"
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    code, err = command("resumed", "--cfg", 3)
    assert code == 2 and "different settings" in err and "cfg" in err


@pytest.mark.parametrize("extra,message", [
    (["--frames", "2"], "at least 3"),
    (["--levels", "0.2,0.4,0.6,0.8"], "4 noise levels were given for 2 rounds"),
    (["--levels", "0.5,1.5"], "low <= high < 1"),
    (["--schedule", "bouncy"], "--schedule takes uniform, ease or"),
    (["--schedule", "0,0.5,0.2,0.7,1"], "increase strictly"),
    (["--candidates", "3", "--clip", "nowhere.safetensors"], "not a catalog name"),
    (["--size", "16"], "size must be"),
])
def test_command_rejects_bad_settings(command, extra, message):
    code, err = command("bad", *extra)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_command_rejects_bad_images(tiny_ckpt, tmp_path, capsys):
    a, _ = inputs(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    for b, message in ((tmp_path / "missing.png", "does not exist"), (broken, "cannot read image")):
        code, err = run_cli([a, b, "--prompt", "x", "--ckpt", tiny_ckpt, "--out", tmp_path / "o"], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "o" / "run.json").exists()


def test_preview_profile_fills_only_what_was_not_given():
    from interp.cli import FULL, PREVIEW, parse_args
    args = parse_args(["a.png", "b.png", "--prompt", "x", "--preview", "--steps", "30"])
    assert (args.size, args.steps, args.inversion_steps, args.candidates) == (PREVIEW["size"], 30, 50, 1)
    args = parse_args(["a.png", "b.png", "--prompt", "x"])
    assert [getattr(args, k) for k in FULL] == list(FULL.values())


def test_command_detects_poses(command, tmp_path, tiny_dir):
    """Detection through cv2.dnn (a tiny random net in the OpenPose layout) feeds the ControlNet path."""
    from pose_fixtures import write_random_net
    (tmp_path / "openpose").mkdir()
    proto, model = write_random_net(tmp_path / "openpose")
    code, err = command("posed", "--pose", "--controlnet", tiny_dir / "controlnet.safetensors",
                        "--pose-model", proto, model)
    assert code == 0, err
    record = json.loads((tmp_path / "posed" / "run.json").read_text())
    assert any(note.startswith("poses: ") and "people found" in note for note in record["notes"]), record["notes"]
