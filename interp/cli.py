"""`interpolate A.png B.png --prompt "..." [--frames 17] [--out DIR]`: the paper's method end to end.

1. Both images are brought to one size and encoded with the VAE.
2. Textual inversion (Section 4.2) fits a prompt embedding to each image (cached on disk).
3. Poses (Section 4.3): keypoints of both images, matched, interpolated and drawn for the ControlNet.
4. Frames are made round by round from their finished neighbours (Section 4.1), with several
   candidates per frame ranked by CLIP (Section 4.4), or by a baseline scheme (Section 5.1).
5. Frames, latents, candidates, an MP4, a GIF, a contact sheet and run.json are written to DIR; an
   interrupted run restarted with the same DIR and settings picks up where it stopped.
"""
import argparse
import hashlib
import sys
import time

import numpy as np
import torch
from PIL import Image

from ldm import weights
from ldm.cli import add_model_args, check_device, compile_model, load_model, progress, resolve_dtype, run
from ldm.images import fit, open_image, parse_size, to_tensor
from ldm.pipeline import encode_images, encode_text, img2img

from .conditioning import PoseConditioning, TextConditioning, read_keypoints
from .interpolator import SCHEMES, Interpolator, make_plan
from .inversion import cache_key, cached_invert
from .output import RunDir
from .rank import NEGATIVE, POSITIVE, CLIPScorer
from .schedules import SCHEDULES
from .warp import Warp

# The paper's settings, and a quick look on a CPU (256 px, 50 steps, short inversion, no ranking).
FULL = {"size": None, "steps": 200, "inversion_steps": 200, "candidates": "auto"}
PREVIEW = {"size": "256", "steps": 50, "inversion_steps": 50, "candidates": 1}
DEFAULT_CONTROLNET = "controlnet-sd21-openpose"
DEFAULT_CLIP = "clip-vit-l14-openai"


def _floats(text: str) -> list:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def _candidates(text: str):
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--candidates takes a positive integer or 'auto', not {text!r}")
    return int(text)


def _schedule(text: str):
    if text in SCHEDULES:
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--schedule takes {', '.join(SCHEDULES)} or comma-separated positions "
                                         f"from 0 to 1, not {text!r}") from None


def _warp(text: str) -> Warp:
    """'zoom=1.5,center=0.4:0.5,pan=0.1:0,rotate=10' -> Warp."""
    fields = {}
    try:
        for item in text.split(","):
            key, value = item.split("=")
            numbers = [float(v) for v in value.split(":")]
            fields[{"rotate": "rotate_deg"}.get(key.strip(), key.strip())] = tuple(numbers) if len(numbers) > 1 else numbers[0]
        return Warp(**fields)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"--warp takes zoom=Z,center=X:Y,pan=DX:DY,rotate=DEG, not {text!r} ({e})") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interpolate", description=__doc__.split("\n\n")[0])
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--prompt", required=True, help="describes both images (the start of textual inversion)")
    p.add_argument("--prompt-b", default=None, help="a different prompt for the second image")
    p.add_argument("--negative", default="", help="negative prompt, shared by both images")
    p.add_argument("--frames", type=int, default=17, help="frames in the whole sequence, both inputs included")
    p.add_argument("--out", default="interpolation", help="output folder (resumed if it holds the same run)")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds another run")
    p.add_argument("--preview", action="store_true",
                   help="a quick look: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in PREVIEW.items())
                        + " unless given")
    p.add_argument("--size", default=None, help="W or WxH (default: the model's native size); inputs are "
                   "centre-cropped to the aspect ratio and resized to multiples of 64")
    p.add_argument("--steps", type=int, default=None, help="DDIM schedule length (default 200; the method uses >= 200)")
    p.add_argument("--levels", type=_floats, default=[0.25, 0.65],
                   help="noise levels: 'low,high' fractions of the schedule (linear over the rounds), or one "
                        "value per round, first round first (fractions or integer timesteps)")
    p.add_argument("--cfg", type=float, default=9.0, help="classifier-free guidance scale")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--inversion-steps", type=int, default=None, help="textual inversion steps (default 200; 0: off)")
    p.add_argument("--inversion-lr", type=float, default=1e-4)
    p.add_argument("--candidates", type=_candidates, default=None,
                   help="candidates per frame ranked by CLIP: K, or 'auto' (default) = 8, 7, ... (at least 3) by round")
    p.add_argument("--rank-positive", default=POSITIVE)
    p.add_argument("--rank-negative", default=NEGATIVE)
    p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP for ranking: path or catalog name")
    p.add_argument("--clip-config", default=None, help="open_clip model-config JSON for a non-standard CLIP")
    p.add_argument("--pose", action=argparse.BooleanOptionalAction, default=True,
                   help="pose guidance with OpenPose + ControlNet")
    p.add_argument("--poses", nargs=2, metavar="JSON", default=None,
                   help="keypoints of both images from `pose-detect --json` instead of detecting them")
    p.add_argument("--pose-model", nargs="+", default=None, help="OpenPose model files (default: catalog)")
    p.add_argument("--controlnet", default=DEFAULT_CONTROLNET, help="OpenPose ControlNet: path or catalog name")
    p.add_argument("--control-strength", type=_floats, default=[1.0, 1.5],
                   help="ControlNet strength at the inputs and at the middle frame (linear ramp)")
    p.add_argument("--scheme", choices=SCHEMES, default="ours")
    p.add_argument("--schedule", type=_schedule, default="uniform",
                   help="interpolation schedule: uniform, ease, or F comma-separated positions from 0 to 1")
    p.add_argument("--warp", type=_warp, default=None, help="affine latent motion, e.g. zoom=1.5,center=0.5:0.4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=None, help="largest batch of one UNet call (memory)")
    p.add_argument("--fps", type=float, default=8.0)
    add_model_args(p)
    return p


def _level_args(values: list) -> dict:
    """'low,high' (increasing) -> a linear range; otherwise one level per round (ints are timesteps)."""
    if len(values) == 2 and values[0] < values[1]:
        return {"low": values[0], "high": values[1]}
    return {"levels": [int(v) if v >= 1 else v for v in values]}


def _sha(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


def _photo_fallback(sd, args):
    """Fig. 4: a stylized image with no detectable pose is first translated into a photograph."""
    def to_photo(rgb):
        return np.asarray(img2img(sd, Image.fromarray(rgb), "a photograph", args.negative, strength=0.6,
                                  steps=args.steps, seed=args.seed))
    return to_photo


def _poses(sd, args, images, size, notes):
    if args.poses:
        people = [read_keypoints(path, size[1], size[0]) for path in args.poses]
    else:
        import pose
        net = pose.load(args.pose_model)
        people = [pose.detect(np.asarray(im), net, fallback=_photo_fallback(sd, args)) for im in images]
    conditioning = PoseConditioning(*people, height=size[1], width=size[0])
    notes.append(f"poses: {len(people[0])} and {len(people[1])} people found, {len(conditioning.pairs)} matched"
                 + ("" if conditioning else ": pose guidance is off"))
    return conditioning


def _settings(args, sd, model_id: str, images, size) -> dict:
    """Everything the frames depend on (compared when resuming; recorded in run.json)."""
    skip = {"out", "overwrite", "fps", "max_batch", "compile", "image_a", "image_b"}
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    settings.update(warp=None if args.warp is None else vars(args.warp), size=list(size),
                    inputs=[args.image_a, args.image_b], input_sha256=[_sha(im) for im in images],
                    checkpoint=model_id, prediction=sd.config.prediction, dtype=str(sd.dtype))
    return settings


def _text(sd, args, x, model_id: str, out: RunDir, notes: list) -> TextConditioning:
    """Prompt embeddings, fitted to the two images by textual inversion (Section 4.2) unless it is off."""
    prompts = [args.prompt, args.prompt_b or args.prompt]
    cond, uncond = encode_text(sd, prompts), encode_text(sd, [args.negative])
    if args.inversion_steps > 0:
        key = cache_key(x, prompts, args.negative, model_id, steps=args.inversion_steps, lr=args.inversion_lr,
                        guidance=args.cfg, seed=args.seed, dtype=str(sd.dtype))
        cond, uncond, losses = cached_invert(sd, x.to(sd.device), cond, uncond, key, steps=args.inversion_steps,
                                             lr=args.inversion_lr, guidance=args.cfg, seed=args.seed,
                                             callback=progress(args.inversion_steps, "inversion"))
        notes.append(f"textual inversion: {'from the cache' if losses is None else f'{len(losses)} steps'} ({key})")
        out.record(inversion_losses=losses)
    return TextConditioning(cond[:1], cond[1:], uncond)


def interpolate(args) -> RunDir:
    t_start = time.perf_counter()
    resolve_dtype(args.dtype, check_device(args.device))
    plan = make_plan(args.frames, args.steps, **_level_args(args.levels), schedule=args.schedule,
                     candidates=args.candidates, scheme=args.scheme)
    raw = [open_image(path) for path in (args.image_a, args.image_b)]
    # Every file is found (or downloaded) before anything slow runs.
    use_pose = args.pose and args.scheme != "interpolate-only"
    controlnet_path = weights.resolve(args.controlnet, "controlnet") if use_pose else None
    clip_path = weights.resolve(args.clip, "clip") if any(k > 1 for k in plan.candidates) else None
    sd = load_model(args)
    model_id, notes = weights.fingerprint(sd.path), list(sd.notes)
    size = parse_size(args.size) if args.size else (sd.config.image_size, sd.config.image_size)
    images = [fit(im, size) for im in raw]
    size = images[0].size
    out = RunDir(args.out, _settings(args, sd, model_id, images, size), resume=not args.overwrite)

    # Frames 0 and N are the inputs themselves; frames of an interrupted run are picked up.
    x = torch.cat([to_tensor(im) for im in images])
    z = encode_images(sd, x)
    latents = {0: z[:1], plan.n: z[1:]}
    for index, image in ((0, images[0]), (plan.n, images[1])):
        if not out.done(index):
            out.save_frame(index, image, latents[index], {"input": True, "position": float(index == plan.n)})
    latents.update({i: out.load_latent(i).to(sd.device) for i in range(1, plan.n) if out.done(i)})

    controlnet = poses = scorer = None
    if controlnet_path:  # Section 4.3
        from ldm.controlnet import load_controlnet
        controlnet = load_controlnet(controlnet_path, device=sd.device, dtype=sd.dtype, config=args.config)
        if args.compile:
            compile_model(controlnet, sd.device)
        poses = _poses(sd, args, images, size, notes)
    if clip_path:  # Section 4.4
        from ldm.clip import load_clip
        clip = load_clip(clip_path, config=args.clip_config, device=sd.device)
        scorer = CLIPScorer(clip, args.rank_positive, args.rank_negative)
        notes += [f"[clip] {n}" for n in clip.notes]
    t0 = time.perf_counter()
    text = _text(sd, args, x, model_id, out, notes)
    t_inversion = time.perf_counter() - t0

    interp = Interpolator(sd, text, plan, args.scheme, args.steps, args.cfg, args.eta, args.seed, controlnet, poses,
                          tuple(args.control_strength), args.warp, scorer, args.max_batch)
    t0 = time.perf_counter()
    todo = [lvl.step + 1 for lvl, frames in zip(plan.levels, plan.rounds) if any(f.index not in latents for f in frames)]
    interp.run(latents, out.save_frame, out.save_candidates, progress=progress(sum(todo), "frames"))
    out.record(notes=notes, unet_calls=interp.unet_calls, rounds=[
        {"timestep": lvl.timestep, "step": lvl.step, "frames": [f.index for f in frames], "candidates": k}
        for lvl, frames, k in zip(plan.levels, plan.rounds, plan.candidates)],
        seconds={"inversion": t_inversion, "frames": time.perf_counter() - t0, "total": time.perf_counter() - t_start})
    out.finish(args.fps)
    for note in notes:
        print(f"[interpolate] {note}", file=sys.stderr)
    print(f"wrote {plan.n + 1} frames to {args.out} ({interp.unet_calls} UNet calls, "
          f"{time.perf_counter() - t_start:.0f} s)")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    for key, value in (PREVIEW if args.preview else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None):
    args = parse_args(argv)
    run(lambda: interpolate(args))
