"""FreeMorph (`--scheme freemorph`) against golden values its authors' code computed (`aid_inversion`,
`aid_forward`, their attention processors and `aid_utils`) on the tiny UNet in diffusers' layout, with
diffusers' DDIM schedulers: tests/data/freemorph_reference.safetensors, made by tools/freemorph_reference.py.
Tolerances are the parity tests' (atol = rtol = 1e-4; the 40-step inversion and denoising agree to 6e-6 and 3e-5
on a Zen 4), tighter for the arithmetic without a network. Then the scheme end to end: the command on the tiny models, resumed, in a batch and in a chain."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA
from interp import freemorph
from interp.conditioning import TextConditioning
from interp.slerp import lerp

REFERENCE = DATA / "freemorph_reference.safetensors"
KINDS = {  # the authors' processor -> ours, given the module's own kernel
    "plain": None,
    "converged": freemorph.converged,
    "converged2": lambda attend: freemorph.to_ends(attend),
    "interpolated": lambda attend: freemorph.to_ends(attend, REF["coef"]),
    "interpolated_fused": lambda attend: freemorph.to_ends(attend, REF["coef"], fused=True),
}
REF = load_file(REFERENCE)


def close(actual, expected, atol=1e-4, rtol=1e-4):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def hooked(unet, suffix):
    """The attention module the reference recorded: the middle block's (its `hooked_attn1`, `hooked_attn2`)."""
    return next(m for name, m in unet.named_modules() if name.startswith("middle_block.") and name.endswith(suffix))


def text():
    return TextConditioning(REF["cond_a"], REF["cond_b"], REF["uncond"], mix=lerp)


def test_the_pieces_of_aid_utils():
    positions = [i / 6 for i in range(7)]
    close(freemorph.beta_quantiles(positions), REF["coef"], atol=1e-6, rtol=0)
    close(freemorph.slerp_rows(REF["lat_a"], REF["lat_b"], positions), REF["slerped"], atol=1e-5, rtol=1e-5)
    cond, uncond = text().at(positions)
    close(cond, REF["text_cond"], atol=1e-6, rtol=0)
    close(uncond, REF["text_uncond"], atol=1e-6, rtol=0)
    halves = freemorph.half_widths(7, 32, 32)
    assert [h for h, _ in halves] == REF["thresholds"][1:6].tolist()
    assert freemorph.half_widths(7, 96, 96) == [(44, 44)] + [(42, 42)] * 4  # their list as written, 768 px
    inverted = REF["inverted"]
    inner = [freemorph.inject_noise(inverted[i:i + 1], REF["injection_noise"], half) for i, half in enumerate(halves, 1)]
    close(torch.cat([inverted[:1], *inner, inverted[-1:]]), REF["filtered"], atol=1e-5, rtol=1e-5)


def test_ddim_inversion_step_is_diffusers(tiny_sd):
    ddim = freemorph.sampler(tiny_sd, 50)
    for j, t in enumerate(REF["ddim_inverse_timesteps"].tolist()):
        index = int(np.nonzero(ddim.timesteps == t)[0][0])
        out = ddim.invert_step(REF["ddim_inverse_output"][j], REF["ddim_inverse_sample"][j], index)
        close(out, REF["ddim_inverse_result"][j], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
@torch.no_grad()
def test_each_attention_of_the_authors(tiny_sd, kind):
    unet = tiny_sd.unet
    kernels = [m.__dict__.get("attention") for m in unet.modules()]
    with freemorph.attention(unet, KINDS[kind]):
        close(hooked(unet, "attn1")(REF[f"attn1_in_{kind}"]), REF[f"attn1_out_{kind}"])
        close(hooked(unet, "attn2")(REF[f"attn2_in_{kind}"], REF["attn2_context"]), REF[f"attn2_out_{kind}"])
        t = torch.full((7,), 500, dtype=torch.long)
        close(unet(REF["slerped"], t, REF["text_cond"]), REF[f"unet_out_{kind}"])
    assert [m.__dict__.get("attention") for m in unet.modules()] == kernels  # put back as they were


@torch.no_grad()
def test_inversion_and_denoising_are_the_authors(tiny_sd):
    """aid_inversion (40 steps of 5 UNet calls) and aid_forward (40 guided steps), each from the reference's own
    input: 280 UNet calls of 7 rows, every attention phase of both."""
    ddim = freemorph.sampler(tiny_sd, 50)
    assert ddim.timesteps[:40].tolist() == REF["invert_timesteps"].tolist()
    assert ddim.timesteps[39::-1].tolist() == REF["forward_timesteps"].tolist()
    close(freemorph.invert(tiny_sd, ddim, REF["slerped"], REF["text_cond"], 40), REF["inverted"])
    close(freemorph.denoise(tiny_sd, ddim, REF["filtered"], REF["text_cond"], REF["text_uncond"], 7.5, REF["coef"], 40),
          REF["morphed"])


def test_morph_puts_the_pieces_together_as_their_main(tiny_sd, monkeypatch):
    """freemorph.py's __main__ between the pieces: what `morph` hands each one (the pieces themselves are tested
    above, so here they return the reference's results instead of running)."""
    seen = {}

    def invert(sd, ddim, x, cond, steps, callback=None):
        seen["invert"] = (x, cond, steps, ddim.timesteps.tolist())
        return REF["inverted"]

    def denoise(sd, ddim, x, cond, uncond, guidance, weights, steps, callback=None):
        seen["denoise"] = (x, cond, uncond, guidance, weights, steps)
        return REF["morphed"]
    monkeypatch.setattr(freemorph, "invert", invert)
    monkeypatch.setattr(freemorph, "denoise", denoise)
    z, calls = freemorph.morph(tiny_sd, REF["lat_a"], REF["lat_b"], [i / 6 for i in range(7)], text(), 7.5, 50,
                               REF["injection_noise"])
    x, cond, steps, timesteps = seen["invert"]
    close(x, REF["slerped"], atol=1e-5, rtol=1e-5)
    close(cond, REF["text_cond"], atol=1e-6, rtol=0)
    assert steps == 40 and timesteps[:40] == REF["invert_timesteps"].tolist()
    x, cond, uncond, guidance, weights, steps = seen["denoise"]
    close(x, REF["filtered"], atol=1e-5, rtol=1e-5)
    close(uncond, REF["text_uncond"], atol=1e-6, rtol=0)
    close(weights, REF["coef"], atol=1e-6, rtol=0)
    assert guidance == 7.5 and steps == 40 and torch.equal(z, REF["morphed"]) and calls == 40 * 5 + 40 * 2

# --- the scheme in the project's commands ------------------------------------------------------------

@pytest.fixture
def pair(tmp_path):
    import golden_runs
    golden_runs.make_inputs(tmp_path)
    return tmp_path / "a.png", tmp_path / "b.png"


def freemorph_run(tiny_ckpt, pair, out, *extra):
    return [*pair, "--prompt", "a red ball", "--prompt-b", "a blue ball", "--scheme", "freemorph", "--ckpt", tiny_ckpt,
            "--size", "64", "--steps", "5", "--out", out, *extra]


def test_the_command_runs_it_with_the_authors_settings_and_resumes(tiny_ckpt, pair, tmp_path, capsys):
    from conftest import run_command
    from interp.apps.interpolate import main
    out = tmp_path / "run"
    code, err = run_command(main, freemorph_run(tiny_ckpt, pair, out), capsys)
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    s = record["settings"]
    assert record["scheme"] == "freemorph" and s["frames"] == 7 and s["cfg"] == 7.5 and s["eta"] == 0
    assert s["negative"] == "" and s["text"] == "lerp" and s["inversion_steps"] == 0 and s["fit"] == "crop"
    assert record["unet_calls"] == 4 * 5 + 4 * 2  # int(5 x 0.8) steps, five calls each inverting, two denoising
    assert [r["frames"] for r in record["rounds"]] == [[1, 2, 3, 4, 5]] and record["rounds"][0]["timestep"] == 600
    frames = sorted((out / "frames").glob("*.png"))
    assert len(frames) == 7 and not record.get("candidates")
    made = {p.name: p.read_bytes() for p in frames}

    # a run stopped before its end starts its frames over (they are made together), to the same bytes
    record["frames"] = {k: v for k, v in record["frames"].items() if k in ("0", "6")}
    (out / "run.json").write_text(json.dumps(record))
    for name in ("frame_0002.png", "frame_0004.png"):
        (out / "frames" / name).unlink()
    code, err = run_command(main, freemorph_run(tiny_ckpt, pair, out), capsys)
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in sorted((out / "frames").glob("*.png"))} == made


def test_what_it_refuses(tiny_ckpt, pair, tmp_path, capsys):
    from conftest import run_command
    from interp.apps.interpolate import main
    for extra, message in ((["--candidates", "3"], "no candidates to rank"), (["--pose"], "no pose guidance"),
                           (["--poses", "a.json", "b.json"], "leave out --pose and --poses"),
                           (["--warp", "zoom=1.5"], "does not have"), (["--steps", "1"], "--steps 2 or more")):
        code, err = run_command(main, freemorph_run(tiny_ckpt, pair, tmp_path / "no", *extra), capsys)
        assert code == 2 and message in err and err.startswith("error:"), (extra, err)
        assert not (tmp_path / "no").exists()


def test_a_batch_runs_each_scheme_at_its_own_settings(pair, tmp_path):
    """interp-batch --schemes ours,freemorph: FreeMorph's rows take its authors' settings, ours keeps its own,
    and an option given for every row holds for both."""
    from interp.apps import manifest
    rows = tmp_path / "pairs.csv"
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("{}")
    rows.write_text(f"id,image_a,image_b,prompt,poses\np1,{pair[0]},{pair[1]},a ball,a.json;b.json\n")
    tasks = manifest.tasks(rows, str(tmp_path / "runs"), ["ours", "freemorph"], ["--steps", "20"], lambda o: o.settings.plan())
    ours, fm = (t.options.settings for t in tasks)
    assert (fm.scheme, fm.frames, fm.text, fm.negative) == ("freemorph", 7, "lerp", "")
    assert fm.inversion_steps == 0 and fm.candidates == 1
    assert (ours.scheme, ours.frames, ours.text) == ("ours", 17, "slerp") and ours.steps == fm.steps == 20
    # the row's keypoints guide ours; FreeMorph, which has no pose guidance, runs without them
    assert ours.pose and tasks[0].options.poses == (str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert not fm.pose and tasks[1].options.poses is None


def test_a_chain_of_three_images(pair, tiny_ckpt, tmp_path, capsys):
    from conftest import run_command
    from interp.apps.interpolate import main
    out = tmp_path / "chain"
    args = freemorph_run(tiny_ckpt, (*pair, pair[0].with_name("c.png")), out)
    at = args.index("--prompt-b")
    del args[at:at + 2]  # a chain has one prompt
    code, err = run_command(main, args, capsys)
    assert code == 0, err
    segments = [json.loads((out / f"segment_{k:02d}" / "run.json").read_text()) for k in (1, 2)]
    assert [s["scheme"] for s in segments] == ["freemorph"] * 2 and all(s["unet_calls"] == 28 for s in segments)
    assert len(json.loads((out / "chain.json").read_text())["frames"]) == 13  # 7 + 7, the middle image shared
