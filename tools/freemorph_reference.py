#!/usr/bin/env python3
"""FreeMorph golden fixtures: the authors' own code (yukangcao/FreeMorph, ICCV 2025: `freemorph.py`,
`aid_attention.py`, `aid_utils.py`) run on the tiny SD 2.1-structured UNet of the tests, converted to diffusers'
layout, so that the project's FreeMorph can be checked against it (tests/data/freemorph_reference.safetensors).

The tiny weights are made as the tests make them (tools/make_fixture_weights.py, tests/data/config.json, seed
1234), loaded with `ldm.load_checkpoint(fast=False)` (the plain path: no CPU micro-benchmark, no machine cache
written), and their UNet converted with diffusers'
`convert_ldm_unet_checkpoint` to a `UNet2DConditionModel`, which must agree with ours to 1e-4 before anything is
recorded. The VAE and the text encoder are skipped: seeded random latents and embeddings stand in for them.
Recorded, all float32 on the CPU (timesteps and thresholds int64):

* the whole pipeline of freemorph.py's `__main__` (50 steps, edit strength 0.8, guidance 7.5, 7 frames): the
  inputs, `coef`, `slerped`, `text_cond`, `text_uncond`, `inverted` (aid_inversion), `filtered` (the Fourier
  step, its 96x96-latent thresholds scaled to 32x32), `morphed` (aid_forward), the timesteps of both phases;
* three steps of DDIMInverseScheduler (`ddim_inverse_*`);
* each attention processor of theirs on every attn1/attn2 at once: the UNet output and one attn1's and one
  attn2's inputs and outputs in that run (`unet_out_<kind>`, `attn1_in_<kind>`, `attn1_out_<kind>`, `attn2_*`;
  the metadata names the modules).

Run by hand in a throwaway environment (never installed with the project; torchvision, of which freemorph.py
imports only the unused `save_image`, is stubbed while freemorph imports when it is absent or does not load):

    git --git-dir=/work/.mirror/yukangcao+FreeMorph/repo rev-parse HEAD   # the --commit below
    mkdir -p /tmp/freemorph-src && for f in freemorph.py aid_attention.py aid_utils.py; do \
        git --git-dir=/work/.mirror/yukangcao+FreeMorph/repo show HEAD:$f > /tmp/freemorph-src/$f; done
    python -m venv --system-site-packages /tmp/fmref      # reuses the system torch 2.13.0+cpu, scipy, numpy
    /tmp/fmref/bin/pip install diffusers==0.42.1 transformers==5.24.0 accelerate==1.16.0
    /tmp/fmref/bin/python tools/freemorph_reference.py --freemorph /tmp/freemorph-src \
        --commit b7b7068291c6654232f8c8959e22214e311ede69

It takes about 2.5 minutes on 2 cores (280 UNet calls of batch 7) and writes the same tensors each run there.
DDIMInverseScheduler warns that it ignores `skip_prk_steps` of the SD 2.1 config: as it does in freemorph.py.

`--ckpt FILE [--latent-side N]` checks a full-size SD 2.1 UNet once instead (a synthetic checkpoint of
tools/make_fixture_weights.py will do; full-size weights cannot be fixtures): the same pipeline from seeded
inputs of its shapes, run by their code on the converted UNet and by interp/freemorph.py on ours, and prints
the largest differences of the inverted, filtered and morphed latents; nothing is written.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import shlex
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import make_fixture_weights  # noqa: E402

CONFIG = ROOT / "tests" / "data" / "config.json"
OUT = ROOT / "tests" / "data" / "freemorph_reference.safetensors"
SOURCES = ("freemorph.py", "aid_attention.py", "aid_utils.py")
# stabilityai/stable-diffusion-2-1, scheduler/scheduler_config.json (freemorph.py loads both schedulers from it)
SCHEDULER_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
                    "steps_offset": 1, "skip_prk_steps": True, "trained_betas": None}
STEPS, EDIT_STRENGTH, GUIDANCE, FRAMES = 50, 0.8, 7.5, 7  # freemorph.py's __main__
THRESHOLDS_96 = [48] + [44] + [42] * 2 + [42] + [42] * 2 + [44] + [48]  # freemorph.py, for 96x96 latents
INVERSE_STEP_TIMESTEPS = (0, 20, 780)  # first, second and last of the inversion's timesteps
PROCESSOR_TIMESTEP = 500
# The attention modules whose inputs and outputs are recorded: the middle block's (4x4 tokens, 128 channels,
# 16 heads). The first attn1/attn2 of the UNet (32x32 tokens) would take 0.9 MB per tensor, 11 MB in all.
HOOKED_BLOCK = "mid_block."
LATENT = (1, 4, 32, 32)
TOKENS = (1, 77, 64)
FULL_TOKENS = (1, 77, 1024)  # SD 2.1's text width


def load_freemorph(folder):
    """The authors' freemorph module (aid_attention and aid_utils beside it). Where torchvision does not load, a
    stub `torchvision.utils` stands in while freemorph imports (it only imports `save_image`, which the code here
    never reaches) and is taken out again, so that diffusers and transformers still see no torchvision."""
    import accelerate, diffusers, transformers  # noqa: E401, F401 (they probe for torchvision on import)
    sys.path.insert(0, str(Path(folder).resolve()))
    try:
        from torchvision.utils import save_image  # noqa: F401
        return importlib.import_module("freemorph")
    except Exception:  # absent, or built for another torch
        pass
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] == "torchvision"}
    stub = types.ModuleType("torchvision.utils")
    stub.save_image = lambda *args, **kwargs: None
    sys.modules.update({"torchvision": types.ModuleType("torchvision"), "torchvision.utils": stub})
    try:
        return importlib.import_module("freemorph")
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.utils"]
        sys.modules.update(saved)


def tiny_unet(folder):
    """The tests' tiny checkpoint (tests/conftest.py `tiny_dir`): our UNet and the file's tensors."""
    import ldm
    path = Path(folder) / "tiny.safetensors"
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the path it wrote
        make_fixture_weights.main(["sd", "--config", str(CONFIG), "--seed", "1234", "--out", str(path)])
    shutil.copy(CONFIG, Path(folder) / "tiny.safetensors.json")
    return ldm.load_checkpoint(path, fast=False).unet.eval(), load_file(path)


def diffusers_unet_config(unet_kwargs):
    """UNet2DConditionModel's config for an ldm UNetModel with a linear-projection spatial transformer, as
    diffusers' single-file loader derives it (attention_head_dim holds the number of heads, as in SD 2 configs)."""
    channels = [unet_kwargs["model_channels"] * m for m in unet_kwargs["channel_mult"]]
    attention = [2 ** i in unet_kwargs["attention_resolutions"] for i in range(len(channels))]
    return {
        "sample_size": unet_kwargs["image_size"], "in_channels": unet_kwargs["in_channels"],
        "out_channels": unet_kwargs["out_channels"], "block_out_channels": channels,
        "layers_per_block": unet_kwargs["num_res_blocks"], "cross_attention_dim": unet_kwargs["context_dim"],
        "attention_head_dim": [c // unet_kwargs["num_head_channels"] for c in channels],
        "use_linear_projection": unet_kwargs["use_linear_in_transformer"],
        "transformer_layers_per_block": unet_kwargs["transformer_depth"], "upcast_attention": True,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
    }


def to_diffusers(tensors, kwargs=None):
    """Our UNet's weights (ldm keys) in a diffusers UNet2DConditionModel, loaded strictly (`kwargs`: the ldm
    UNet's architecture, by default the tiny one's)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    kwargs = kwargs or json.loads(CONFIG.read_text())["unet"]["kwargs"]
    unet = UNet2DConditionModel(**diffusers_unet_config(kwargs)).eval()
    unet.load_state_dict(convert_ldm_unet_checkpoint(tensors, unet.config), strict=True)
    return unet


@torch.no_grad()
def conversion_error(ours, theirs, latent=LATENT, tokens=TOKENS):
    """Max abs difference of the two UNets on random latents, timesteps (10, 980) and context."""
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, *latent[1:], generator=g), torch.randn(2, *tokens[1:], generator=g)
    t = torch.tensor([10, 980])
    return (ours(x, t, context) - theirs(x, t, encoder_hidden_states=context).sample).abs().max().item()


def schedulers():
    """freemorph.py's two schedulers (from SD 2.1's scheduler config), set to its 50 steps."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    forward = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    forward.set_timesteps(STEPS)
    invert = DDIMInverseScheduler.from_config(SCHEDULER_CONFIG)
    invert.set_timesteps(STEPS)
    return forward, invert


def inputs(latent=LATENT, tokens=TOKENS):
    """Latents, embeddings and the injection noise, drawn in this order from one generator (seed 0)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"lat_a": latent, "lat_b": latent, "cond_a": tokens, "cond_b": tokens, "uncond": tokens,
              "injection_noise": latent}
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}, g


def run_pipeline(fm, x):
    """freemorph.py's __main__ from its inputs on: the latents and embeddings of x in place of the VAE's and the
    text encoder's, the Fourier thresholds scaled from 96x96 to 32x32 latents."""
    from aid_utils import fourier_filter, generate_beta_tensor, linear_interpolation, spherical_interpolation
    steps, edit_strength, interpolation_size = fm.steps, EDIT_STRENGTH, FRAMES
    coef_attn = generate_beta_tensor(interpolation_size, alpha=20, beta=20)
    latent_x = spherical_interpolation(x["lat_a"], x["lat_b"], interpolation_size).squeeze(0)
    invert_timesteps = fm.invert_scheduler.timesteps - 1
    invert_timesteps = invert_timesteps[: int(steps * edit_strength)]
    text_input_con_all = linear_interpolation(x["cond_a"], x["cond_b"], interpolation_size).squeeze(0)
    text_input_uncond_all = linear_interpolation(x["uncond"], x["uncond"], interpolation_size).squeeze(0)
    reverted_latent = fm.aid_inversion(latent=latent_x, timesteps=invert_timesteps, text_input_con=text_input_con_all,
                                       text_input_uncon=text_input_uncond_all, coef_cross_attn=coef_attn,
                                       coef_self_attn=coef_attn)
    thresholds = [round(v * latent_x.shape[-1] / 96) for v in THRESHOLDS_96]
    new_input_latents_list = []
    for k in range(1, 7 - 1):
        new_input_latent = fourier_filter(x=reverted_latent[k].unsqueeze(0), y=x["injection_noise"].clone(),
                                          threshold=int(thresholds[k]))
        new_input_latents_list.append(new_input_latent.clone())
    latent = torch.cat([reverted_latent[0].unsqueeze(0)] + new_input_latents_list + [reverted_latent[-1].unsqueeze(0)])
    forward_timesteps = fm.forward_scheduler.timesteps - 1
    forward_timesteps = forward_timesteps[steps - int(steps * edit_strength):]
    coef_attn = generate_beta_tensor(interpolation_size, alpha=20, beta=20)
    morphing_latent = fm.aid_forward(forward_timesteps, latent=latent, text_input_con=text_input_con_all,
                                     text_input_uncond=text_input_uncond_all, coef_cross_attn=coef_attn,
                                     coef_self_attn=coef_attn, guidance_scale=GUIDANCE)
    return {"coef": coef_attn, "slerped": latent_x, "text_cond": text_input_con_all,
            "text_uncond": text_input_uncond_all, "inverted": reverted_latent, "filtered": latent,
            "morphed": morphing_latent, "invert_timesteps": invert_timesteps, "forward_timesteps": forward_timesteps,
            "thresholds": torch.tensor(thresholds, dtype=torch.int64)}


def inverse_steps(scheduler, g):
    """DDIMInverseScheduler.step on random samples and model outputs, timesteps as freemorph passes them
    (0-d int64 tensors, items of its timestep tensor)."""
    n = len(INVERSE_STEP_TIMESTEPS)
    sample, output = torch.randn((n, *LATENT), generator=g), torch.randn((n, *LATENT), generator=g)
    result = torch.stack([scheduler.step(model_output=m, timestep=torch.tensor(t), sample=s).prev_sample
                          for s, m, t in zip(sample, output, INVERSE_STEP_TIMESTEPS)])
    return {"ddim_inverse_sample": sample, "ddim_inverse_output": output, "ddim_inverse_result": result,
            "ddim_inverse_timesteps": torch.tensor(INVERSE_STEP_TIMESTEPS, dtype=torch.int64)}


def processor_kinds(coef):
    """Fresh instances of each attention processor freemorph.py uses, by the names of the fixture keys."""
    from aid_attention import (OuterConvergedAttnProcessor_SDPA, OuterConvergedAttnProcessor_SDPA2,
                               OuterInterpolatedAttnProcessor_SDPA)
    from diffusers.models.attention_processor import AttnProcessor2_0
    return {"plain": AttnProcessor2_0, "converged": OuterConvergedAttnProcessor_SDPA,
            "converged2": lambda: OuterConvergedAttnProcessor_SDPA2(is_fused=False),
            "interpolated": lambda: OuterInterpolatedAttnProcessor_SDPA(is_fused=False, t=coef),
            "interpolated_fused": lambda: OuterInterpolatedAttnProcessor_SDPA(is_fused=True, t=coef)}


def hooked_modules(unet):
    """The diffusers names of the first attn1 and the first attn2 under HOOKED_BLOCK."""
    names = [n for n, _ in unet.named_modules() if n.startswith(HOOKED_BLOCK)]
    return {kind: next(n for n in names if n.endswith(kind)) for kind in ("attn1", "attn2")}


@torch.no_grad()
def processor_runs(unet, slerped, context, coef):
    """Every attn1 and attn2 given one processor kind at a time: the UNet output at PROCESSOR_TIMESTEP and what
    the hooked attention modules took and returned in that run."""
    seen, out = {}, {}
    modules = dict(unet.named_modules())
    hooks = [modules[name].register_forward_hook(
        lambda m, args, kwargs, result, kind=kind: seen.update({kind: (args, kwargs, result)}), with_kwargs=True)
        for kind, name in hooked_modules(unet).items()]
    for name, make in processor_kinds(coef).items():
        for m_name, m in unet.named_modules():
            if m_name.endswith(("attn1", "attn2")):
                m.set_processor(make())
        out[f"unet_out_{name}"] = unet(slerped, torch.tensor(PROCESSOR_TIMESTEP), encoder_hidden_states=context).sample
        for kind, (args, kwargs, result) in seen.items():  # its input differs by kind: the blocks before it do
            out[f"{kind}_in_{name}"] = args[0] if args else kwargs["hidden_states"]
            out[f"{kind}_out_{name}"] = result
        if name == "plain":
            out["attn2_context"] = seen["attn2"][1]["encoder_hidden_states"]
    for hook in hooks:
        hook.remove()
    return out


def metadata(args, unet, error, fm_folder):
    import diffusers
    import transformers
    hashes = {f: hashlib.sha256((Path(fm_folder) / f).read_bytes()).hexdigest() for f in SOURCES}
    hooked = hooked_modules(unet)
    return {
        "description": (
            "FreeMorph (yukangcao/FreeMorph) computed by the authors' freemorph.py / aid_attention.py / aid_utils.py "
            "on the tiny SD 2.1-structured UNet of tests/data/config.json (tools/make_fixture_weights.py, seed 1234) "
            "converted to a diffusers UNet2DConditionModel, float32 on the CPU. Inputs lat_a, lat_b [1,4,32,32], "
            "cond_a, cond_b, uncond [1,77,64], injection_noise [1,4,32,32] are standard normal draws in this order "
            "from torch.Generator().manual_seed(0), followed by ddim_inverse_sample and ddim_inverse_output "
            "[3,1,4,32,32]; uncond stands for the embedding of '' of both images. The pipeline is freemorph.py's "
            "__main__ (steps 50, edit_strength 0.8, guidance_scale 7.5, interpolation_size 7) without VAE and text "
            "encoder: coef, slerped, text_cond, text_uncond, inverted (aid_inversion), filtered (fourier_filter of "
            "frames 1-5 with the injection noise, thresholds = freemorph's 96x96-latent ones * 32/96, Python round), "
            "morphed (aid_forward). ddim_inverse_result[i] = DDIMInverseScheduler.step(ddim_inverse_output[i], "
            "ddim_inverse_timesteps[i], ddim_inverse_sample[i]).prev_sample. unet_out_<kind> is the UNet on slerped "
            "at t=500 with context text_cond, every attn1 and attn2 given processor <kind> (plain: AttnProcessor2_0; "
            "converged: OuterConvergedAttnProcessor_SDPA; converged2: OuterConvergedAttnProcessor_SDPA2(is_fused="
            "False); interpolated / interpolated_fused: OuterInterpolatedAttnProcessor_SDPA(is_fused=False/True, "
            "t=coef)); attn<n>_in_<kind> and attn<n>_out_<kind> are what the hooked modules took (hidden states "
            "[7, tokens, channels]) and returned (to_out included) in the run of <kind>, attn2_context the "
            "encoder_hidden_states of attn2 (the same in every run)."),
        "freemorph_commit": args.commit,
        "freemorph_sha256": json.dumps(hashes),
        "hooked_attn1": hooked["attn1"],
        "hooked_attn2": hooked["attn2"],
        "scheduler_config": json.dumps(SCHEDULER_CONFIG),
        "unet_config": json.dumps({k: v for k, v in unet.config.items() if not k.startswith("_")}),
        "unet_conversion_max_abs_diff": f"{error:.3e}",
        "processor_timestep": str(PROCESSOR_TIMESTEP),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "command": shlex.join(["python", *sys.argv]),
    }


def full_size_check(fm, ckpt, side: int) -> dict:
    """Their pipeline on the converted full-size UNet of `ckpt` against interp/freemorph.py on ours, from the
    same seeded inputs of [1, 4, side, side] latents: the largest differences, and their scale."""
    import ldm
    from interp import freemorph
    sd = ldm.load_checkpoint(ckpt, fast=False, prediction="v")
    sd.unet.eval()
    latent = (1, 4, side, side)
    kwargs = {**dataclasses.asdict(sd.config.unet), "image_size": 96, "use_linear_in_transformer": True}  # SD 2.1
    prefix = "model.diffusion_model."
    unet = to_diffusers({k: v.float() for k, v in load_file(ckpt).items() if k.startswith(prefix)}, kwargs)
    error = conversion_error(sd.unet, unet, latent, FULL_TOKENS)
    fm.unet, fm.steps = unet, STEPS
    fm.forward_scheduler, fm.invert_scheduler = schedulers()
    x, _ = inputs(latent, FULL_TOKENS)
    theirs = run_pipeline(fm, x)
    ddim = freemorph.sampler(sd, STEPS)
    k = int(STEPS * EDIT_STRENGTH)
    ours = {"inverted": freemorph.invert(sd, ddim, theirs["slerped"], theirs["text_cond"], k),
            "morphed": freemorph.denoise(sd, ddim, theirs["filtered"], theirs["text_cond"], theirs["text_uncond"],
                                         GUIDANCE, theirs["coef"], k)}
    ours["filtered"] = freemorph.inject_inner(ours["inverted"], x["injection_noise"])
    return {"unet_conversion": error, **{name: ((ours[name] - theirs[name]).abs().max().item(),
                                                 theirs[name].abs().max().item()) for name in ours}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--freemorph", required=True, help="folder with the authors' " + ", ".join(SOURCES))
    p.add_argument("--commit", required=True, help="the FreeMorph commit those files were taken from")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--ckpt", default=None, help="check this full-size SD 2.1 checkpoint's UNet instead (no file written)")
    p.add_argument("--latent-side", type=int, default=8, help="with --ckpt: the latents' side")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    fm = load_freemorph(args.freemorph)
    if args.ckpt:
        found = full_size_check(fm, args.ckpt, args.latent_side)
        print(f"UNet conversion max abs diff {found.pop('unet_conversion'):.3e}")
        for name, (diff, scale) in found.items():
            print(f"{name}: max abs diff {diff:.3e} (largest value {scale:.3g})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        ours, tensors = tiny_unet(tmp)
        unet = to_diffusers(tensors)
        error = conversion_error(ours, unet)
    if error > 1e-4:
        sys.exit(f"diffusers UNet differs from ours by {error:.3e} (> 1e-4): conversion is wrong")
    fm.unet, fm.steps = unet, STEPS
    fm.forward_scheduler, fm.invert_scheduler = schedulers()
    x, g = inputs()
    record = {**x, **run_pipeline(fm, x), **inverse_steps(fm.invert_scheduler, g)}
    record.update(processor_runs(unet, record["slerped"], record["text_cond"], record["coef"]))
    record = {k: v.detach().clone().contiguous() for k, v in record.items()}  # attn2_context is text_cond
    save_file(record, args.out, metadata=metadata(args, unet, error, args.freemorph))
    print(f"{args.out}: {len(record)} tensors, UNet conversion max abs diff {error:.3e}")


if __name__ == "__main__":
    main()
