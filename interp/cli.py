"""`interpolate A.png B.png --prompt "..." [--frames 17] [--out DIR]`: the paper's method end to end
(`interpolate A.png B.png C.png ...`: one sequence through every image, interp/chain.py).

1. Both images are brought to one frame size and encoded with the VAE.
2. Poses (Section 4.3): keypoints of both images, the main subjects matched, interpolated and drawn for the
   ControlNet.
3. Textual inversion (Section 4.2) fits a prompt embedding to each image (cached on disk and kept in DIR).
4. Frames are made by the chosen scheme (Section 4.1 or a baseline of Section 5.1), with several candidates
   per frame ranked by CLIP (Section 4.4) where the scheme draws fresh noise.
5. Frames, latents, candidates, a video (interp/video.py), a GIF, a contact sheet and run.json are written to DIR; an
   interrupted run restarted with the same DIR and settings picks up where it stopped.
"""
import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

from ldm import weights
from ldm.runtime import COMPILED_BATCH, Parser, check_device, fixed_batch, progress, resolve_dtype, run
from ldm.images import frame_size, open_image, parse_size, placement, placement_warnings, to_pil, to_tensor
from ldm.errors import UserError
from ldm.files import check_writable
from ldm.pipeline import img2img
from ldm.safetensors_io import SafetensorsFile
from pose.errors import PoseError

from . import chain, inversion, retime, video
from .conditioning import PoseConditioning, TextConditioning, read_keypoints
from .frames import descendants
from .interpolator import Interpolator
from .measure import wanted_files
from .models import Models
from .output import RunDir
from .rank import CLIPScorer
from .schemes import scheme as find_scheme
from .settings import Settings, add_studio_args, from_run, parse
from .steering import Steering
from .studio import Studio


def _sha(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


def _files(s: Settings, scheme, plan) -> dict:
    """Every model file this run needs, by role: [(path or catalog name, kind), ...]."""
    files = {"sd": [(s.ckpt, "sd")]}
    if s.pose and scheme.denoises:
        files["controlnet"] = [(s.controlnet, "controlnet")]
        if not s.poses:
            import pose
            files["openpose"] = [(m, "openpose") for m in (s.pose_model or pose.CATALOG)]
    if any(k > 1 for k in plan.candidates):
        files["clip"] = [(s.clip, "clip")]
    return files


def needed_files(s: Settings) -> list:
    """[(path or catalog name, kind), ...] of every model file the run of `s` needs."""
    scheme, plan, _, _ = prepare(s)
    measuring = wanted_files((s.retime,), s)[s.retime] if s.retime else []
    return [want for wants in _files(s, scheme, plan).values() for want in wants] + measuring


def _poses(sd, s: Settings, raw, placements, images, size, net) -> tuple:
    """(PoseConditioning, what was found) from `--poses` files or OpenPose (`net`) on the placed images."""
    photo_fallback = [False, False]
    if s.poses:
        people = [read_keypoints(path, im.size, pl) for path, im, pl in zip(s.poses, raw, placements)]
    else:
        import pose

        def fallback(which):
            def to_photo(rgb):  # Fig. 4: a stylized image is first translated into a photograph
                photo_fallback[which] = True
                return np.asarray(img2img(sd, Image.fromarray(rgb), "a photograph", s.negative, strength=0.6,
                                          steps=s.steps, guidance=s.cfg, seed=s.seed))
            return to_photo
        people = [pose.detect(np.asarray(im), net, fallback=fallback(k)) for k, im in enumerate(images)]
    poses = PoseConditioning(*people, height=size[1], width=size[0], all_people=s.all_people, warp=s.warp)
    found = {"people_found": [len(p) for p in people], "people_matched": len(poses.pairs),
             "photo_fallback": photo_fallback}
    return poses, found


def _text(sd, s: Settings, x, model_id: str, out: RunDir, notes: list, invert: bool) -> TextConditioning:
    """Prompt embeddings, fitted to the two images by textual inversion (Section 4.2) unless it is off. A run
    folder keeps the embeddings it used, so a resumed run never depends on the cache."""
    prompts = [s.prompt, s.prompt_b or s.prompt]
    cond, uncond = sd.encode_text(prompts), sd.encode_text([s.negative])
    if invert and s.inversion_steps > 0:
        if os.path.isfile(out.embeddings_path):
            cond, uncond = inversion.load_embeddings(out.embeddings_path)
            notes.append("textual inversion: the embeddings of this run folder")
        else:
            model = {"checkpoint": model_id, "prediction": sd.config.prediction, "dtype": str(sd.dtype),
                     "device": sd.device.type}
            settings = dict(steps=s.steps, iterations=s.inversion_steps, lr=s.inversion_lr, guidance=s.cfg, seed=s.seed)
            key = inversion.cache_key(x, prompts, s.negative, model, **settings)
            cond, uncond, losses = inversion.cached_invert(sd, x.to(sd.device), cond, uncond, key, **settings,
                                                           callback=progress(s.inversion_steps, "inversion"))
            notes.append(f"textual inversion: {'from the cache' if losses is None else f'{len(losses)} iterations'} ({key})")
            out.record(inversion_losses=losses)
            out.save_embeddings(cond, uncond)
    return TextConditioning(cond[:1].to(sd.device), cond[1:].to(sd.device), uncond.to(sd.device))


def prepare(s: Settings) -> tuple:
    """What a run needs that no model gives, checked before anything slow (a UserError otherwise): the
    scheme, its plan of rounds, the input images and the requested frame size (None: from the model)."""
    resolve_dtype(s.dtype, check_device(s.device))
    scheme = find_scheme(s.scheme)
    plan = scheme.plan(s.frames, s.steps, **s.level_args(), schedule=s.schedule, candidates=s.candidates)
    raw = [open_image(path) for path in s.images]
    for path in s.poses or ():
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist: give the keypoints of each image from pose-detect --json")
    return scheme, plan, raw, parse_size(s.size) if s.size else None


def _open_studio(s: Settings, out: RunDir, plan, scheme) -> Studio:
    studio = Studio(out, plan, s.host, s.port, can_reroll=scheme.ranks)
    if studio.exposed:
        print(f"warning: the studio is served on {s.host}, so other machines may reach it (anyone with the "
              "URL's token can steer the run)", file=sys.stderr)
    print("[studio] open this page in a browser to steer the run (Ctrl-C stops it; rerun to resume):", file=sys.stderr)
    print(studio.url, file=sys.stderr, flush=True)
    studio.show(message="loading the networks and fitting the prompt embeddings")
    return studio


def interpolate(s: Settings, models: Models = None):
    """Make the run of settings `s` (a RunDir; a chain.Chain for more than two images; None with --fetch-only;
    with --retime what retime.json records), loading the networks into `models` (or reusing those it holds)."""
    models = models or Models()
    if s.retime:  # Section 5.2: a pass, then the same sequence at perceptually even positions
        return retime.retime(s, lambda settings: _make(dataclasses.replace(settings, retime=None), models),
                             lambda folder: _decoded_inputs(s, models, folder))
    return _make(s, models)


def _decoded_inputs(s: Settings, models: Models, folder: str) -> list:
    """The two inputs of the finished run in `folder` as the VAE decodes their latents (PIL images)."""
    sd = models.sd(s, weights.resolve(s.ckpt, "sd"))
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
        frames = json.load(f)["frames"]
    z = torch.cat([SafetensorsFile(os.path.join(folder, frames[k]["latent"])).read("latent")
                   for k in ("0", str(len(frames) - 1))])
    return to_pil(sd.decode_latents(z.to(sd.device)))


def _make(s: Settings, models: Models):
    if len(s.images) > 2:
        return chain.make(s, lambda segment: _pair(segment, models), prepare)
    return _pair(s, models)


def _pair(s: Settings, models: Models):
    t_start = time.perf_counter()
    scheme, plan, raw, requested = prepare(s)
    if not s.fetch_only:
        check_writable(s.out, "--out", folder=True)
        if scheme.denoises and s.inversion_steps > 0:
            check_writable(inversion.cache_dir(), "inversion cache ($SD_INTERP_CACHE)", folder=True)
    # Every file is found (or downloaded) before anything slow runs, and all missing ones are named at once.
    files = _files(s, scheme, plan)
    resolved = iter(weights.resolve_all([want for wants in files.values() for want in wants]))
    paths = {role: [next(resolved) for _ in wants] for role, wants in files.items()}
    if s.fetch_only:
        for role, found in paths.items():
            print(f"{role}: {', '.join(map(str, found))}")
        return None
    controlnet_path = paths["controlnet"][0] if "controlnet" in paths else None
    clip_path = paths["clip"][0] if "clip" in paths else None
    sd = models.sd(s, paths["sd"][0])
    model_id, notes = weights.fingerprint(sd.path), list(sd.notes)
    size = requested or frame_size(raw[0].size, sd.config.image_size)
    placements = [placement(im.size, size, s.fit) for im in raw]
    images = [pl.image(im) for pl, im in zip(placements, raw)]
    for name, im, pl in zip(s.images, raw, placements):
        for warning in placement_warnings(name, im.size, pl):
            print(f"warning: {warning}", file=sys.stderr)
    size = images[0].size
    notes.append("video: {2} ({1})".format(*video.codec(size)))  # a size no codec takes fails here, not at the end
    settings = {**s.record(), "size": list(size), "input_sha256": [_sha(im) for im in images],
                "checkpoint": model_id, "prediction": sd.config.prediction, "dtype": str(sd.dtype)}
    out = RunDir(s.out, settings, resume=not s.overwrite)
    out.record(scheme=scheme.name, ranks_candidates=scheme.ranks, inputs=list(s.images))
    steering = Steering(out.state.get("steering"), save=lambda record: out.record(steering=record))
    studio = _open_studio(s, out, plan, scheme) if s.interactive else None

    controlnet = poses = scorer = None
    if controlnet_path:  # Section 4.3
        controlnet = models.controlnet(s, controlnet_path, sd)
        net = None if s.poses else models.openpose(paths["openpose"])
        poses, found = _poses(sd, s, raw, placements, images, size, net)
        out.record(poses=found)
        notes.append(f"poses: {found['people_found'][0]} and {found['people_found'][1]} people found, "
                     f"{found['people_matched']} matched" + ("" if poses else ": pose guidance is off"))
    if clip_path:  # Section 4.4
        clip = models.clip(s, clip_path, sd.device)
        scorer = CLIPScorer(clip, s.rank_positive, s.rank_negative)
        notes += [f"[clip] {n}" for n in clip.notes]

    x = torch.cat([to_tensor(im) for im in images])
    t0 = time.perf_counter()
    text = _text(sd, s, x, model_id, out, notes, invert=scheme.denoises)
    t_inversion = time.perf_counter() - t0

    fixed = fixed_batch(s.compile, sd.device)
    interp = Interpolator(sd, plan, text, s.cfg, s.eta, s.seed, controlnet, poses, tuple(s.control_strength), s.warp,
                          scorer, s.max_batch or (COMPILED_BATCH if fixed else None), s.max_decode,
                          fixed_batch=fixed, chooser=steering)
    if studio is not None:
        studio.can_pose = interp.controlnet is not None
        interp.chooser = studio.chooser(steering, interp.conditioning)
    # Frames 0 and N are the inputs themselves; frames of an interrupted run are picked up.
    z = sd.encode_images(x)
    latents = {0: z[:1], plan.n: z[1:]}
    for index, image in ((0, images[0]), (plan.n, images[1])):
        if not out.done(index):
            out.save_frame(index, image, latents[index], {"input": True, **interp.conditioning(index)})
    latents.update({i: out.load_latent(i).to(sd.device) for i in range(1, plan.n) if out.done(i)})
    if len(latents) > 2:
        print(f"resuming {s.out}: {len(latents)} of {plan.n + 1} frames done", file=sys.stderr)

    def make():
        t0 = time.perf_counter()
        steps = interp.steps_to_run(latents)
        tick = progress(steps, "frames")
        interp.run(latents, out.save_frame, out.save_candidates, progress=studio.progress(steps, tick) if studio else tick)
        rows, images = interp.limits
        rounds = [{"timestep": lvl.timestep, "step": lvl.step, "frames": [f.index for f in frames], "candidates": k}
                  for lvl, frames, k in zip(plan.levels, plan.rounds, plan.candidates)]
        out.record(notes=notes, unet_calls=interp.unet_calls, rounds=rounds,
                   batch_limits={"unet_rows": rows, "vae_images": images},
                   seconds={"inversion": t_inversion, "frames": time.perf_counter() - t0,
                            "total": time.perf_counter() - t_start})
        out.finish(s.fps)

    try:
        make()
        # The studio stays open on the finished run: a frame may be revised (it and its descendants are
        # made again, the person choosing), until the page closes it.
        while studio is not None:
            studio.finished(out.state["outputs"])
            revised = studio.after_finish()
            if revised is None:
                break
            stale = descendants(plan.rounds, revised)
            out.unmake(stale)
            steering.forget(stale)
            for i in stale:
                latents.pop(i, None)
            make()
    finally:
        if studio is not None:
            studio.close()
    for note in notes:
        print(f"[interpolate] {note}", file=sys.stderr)
    print(f"wrote {plan.n + 1} frames to {s.out} ({interp.unet_calls} UNet calls, "
          f"{time.perf_counter() - t_start:.0f} s)")
    return out


def main(argv=None):
    settings = parse(argv)
    run(lambda: interpolate(settings), errors=(UserError, PoseError),
        interrupted=f"interrupted: run the same command again to resume ({settings.out} keeps the finished frames)")


def studio_main(argv=None):
    """`interp-studio RUN_DIR [--host H] [--port P]`: reopen a run in the studio, to finish or revise it."""
    p = Parser(prog="interp-studio", description="Reopen a run folder of interpolate in the interactive studio.")
    p.add_argument("run_dir")
    add_studio_args(p)
    args = p.parse_args(argv)
    run(lambda: interpolate(from_run(args.run_dir, interactive=True, host=args.host, port=args.port)),
        errors=(UserError, PoseError), interrupted=f"interrupted: {args.run_dir} keeps the finished frames and choices")
