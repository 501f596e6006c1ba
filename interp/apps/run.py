"""A run folder, made with the method's library: what `interpolate`, `interp-studio`, `interp-batch` and
`interp-retime` share.

`interp.Pipeline` makes the frames in memory; here each one is written into the run folder as it is finished
(interp/apps/rundir.py), so that an interrupted run resumes from its frames and embeddings; every file is
found (or downloaded) and every option checked before anything slow; the studio steers the run when asked;
more than two images make a chain (interp/apps/chain.py); and `--retime` makes the sequence again at
perceptually even positions (Section 5.2).
"""
import glob
import json
import os
import shutil
import sys

import torch

from ldm.errors import UserError
from ldm.files import check_writable, missing_folders
from ldm.images import open_image, to_pil
from ldm.load import weights
from ldm.load.model import check_device, resolve_dtype
from ldm.load.safetensors_io import SafetensorsFile
from ldm.runtime import progress

from .. import inversion
from ..metrics.measure import Cache, Frame, Sequence, load_spaces, path_metrics, wanted_files
from ..models import Models
from ..pipeline import Pipeline
from ..schedules import even_positions
from ..steering import Steering
from . import chain, video
from .options import Options
from .rundir import RunDir, write_json
from .studio import Studio

RETIMED = "retimed"
RETIME_RECORD = "retime.json"  # written once the re-timed run is complete


def check(o: Options) -> tuple:
    """What a run needs that no model gives, checked before anything slow (a UserError otherwise): the
    plan of rounds and the input images."""
    resolve_dtype(o.files.dtype, check_device(o.files.device))
    plan = o.settings.plan()
    raw = [open_image(path) for path in o.images]
    for path in o.poses or ():
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist: give the keypoints of each image from pose-detect --json")
    o.settings.requested_size()
    return plan, raw


def needed_files(o: Options) -> list:
    """[(path or catalog name, kind), ...] of every model file the run of `o` needs."""
    check(o)
    measuring = wanted_files((o.retime,), o.features)[o.retime] if o.retime else []
    wanted = o.files.needed(o.settings, keypoints_given=o.poses is not None)
    return [want for wants in wanted.values() for want in wants] + measuring


def open_studio(o: Options, out: RunDir, plan) -> Studio:
    studio = Studio(out, plan, o.host, o.port, can_reroll=plan.scheme.ranks)
    if studio.exposed:
        print(f"warning: the studio is served on {o.host}, so other machines may reach it (anyone with the "
              "URL's token can steer the run)", file=sys.stderr)
    print("[studio] open this page in a browser to steer the run (Ctrl-C stops it; rerun to resume):", file=sys.stderr)
    print(studio.url, file=sys.stderr, flush=True)
    studio.show(message="loading the networks and fitting the prompt embeddings")
    return studio


def make(o: Options, models: Models = None):
    """Make the run of options `o` (a RunDir; a chain.Chain for more than two images; None with --fetch-only;
    with --retime what retime.json records), loading the networks into `models` (or reusing those it holds)."""
    models = models or Models()
    if o.retime:
        return retime(o, models)
    if len(o.images) > 2:
        return chain.make(o, lambda segment: make_pair(segment, models), check)
    return make_pair(o, models)


class Progress:
    """A progress bar per piece of work of a run (inversion, frames, each re-roll), and the studio's progress line."""

    def __init__(self, studio: Studio = None):
        self.studio, self.bars = studio, {}

    def __call__(self, stage: str, step: int, total: int) -> None:
        if step == 1:
            self.bars[stage] = progress(total, stage)
        self.bars[stage]()
        if self.studio is not None:
            self.studio.progress(stage, step, total)


def remove_made(folder) -> None:
    """Remove `folder`, which this run made and which holds no finished frame."""
    if folder is not None and os.path.isdir(folder) and not os.path.islink(folder):
        shutil.rmtree(folder, ignore_errors=True)


class Interrupted:
    """What `interpolate` says on Ctrl-C, true to what the run left in `out` (read when it is said)."""

    def __init__(self, out):
        self.out = os.fspath(out)

    def __str__(self) -> str:
        where = glob.escape(self.out)
        if any(glob.glob(os.path.join(where, *sub, "frames", "frame_*.png")) for sub in ((), ("*",))):
            return f"interrupted: run the same command again to resume ({self.out} keeps the finished frames)"
        return "interrupted before the first frame was finished, so there is nothing to resume: run the same " \
               "command again to start over"


def make_pair(o: Options, models: Models) -> RunDir:
    """The run of two images in `o.out`. Everything that can refuse it (files, checkpoints, frame size, options)
    is checked before the folder is made; a folder this run made is removed again when the run stops before its
    first frame; a finished run of the same settings is left as it is."""
    plan, raw = check(o)
    if not o.fetch_only:
        check_writable(o.out, "--out", folder=True, keep=False)
        if plan.scheme.denoises and o.settings.inversion_steps > 0:
            check_writable(inversion.cache_dir(), "inversion cache ($SD_INTERP_CACHE)", folder=True, keep=False)
    # Every file is found (or downloaded) before anything slow runs, and all missing ones are named at once.
    wanted = o.files.needed(o.settings, keypoints_given=o.poses is not None)
    resolved = iter(weights.resolve_all([want for wants in wanted.values() for want in wants]))
    paths = {role: [next(resolved) for _ in wants] for role, wants in wanted.items()}
    if o.fetch_only:
        for role, found in paths.items():
            print(f"{role}: {', '.join(map(str, found))}")
        return None
    created = (missing_folders(o.out) or [None])[-1]  # the topmost folder this run will make
    saved = []  # frames this run wrote: once there is one, the folder is a run to resume, kept whatever happens
    try:
        pipe = Pipeline.from_files(o.files.resolved(paths), models)
        job = pipe.prepare(*raw, o.settings, keypoints=o.poses, names=o.images)  # loads SD, checks the frame size
        for warning in job.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        notes = ["video: {2} ({1})".format(*video.codec(job.size))]  # a size no codec takes fails here, not at the end
        settings = {**o.record(), **job.identity}
        if not o.overwrite and not o.interactive:
            finished = RunDir.complete(o.out, settings, o.fps)
            if finished is not None:
                print(f"{o.out} already holds this run, complete: nothing to do (--overwrite makes it again)")
                return finished
        print(f"[interpolate] {notes[0]}", file=sys.stderr)
        for role in wanted:  # every network loads (and a file that is not one is refused) before the folder is made
            getattr(pipe, role)()
        out = RunDir(o.out, settings, resume=not o.overwrite)
        return _make(o, plan, job, out, notes, saved)
    except BaseException:
        if not saved:
            remove_made(created)
        raise


def _make(o: Options, plan, job, out: RunDir, notes: list, saved: list) -> RunDir:
    out.record(scheme=job.scheme.name, ranks_candidates=job.scheme.ranks, inputs=list(o.images))
    steering = Steering(out.state.get("steering"), save=lambda record: out.record(steering=record))
    studio = open_studio(o, out, plan) if o.interactive else None
    done = {i: out.load_latent(i) for i in range(plan.n + 1) if out.done(i)}
    if len([i for i in done if 0 < i < plan.n]):
        print(f"resuming {o.out}: {len(done | {0: None, plan.n: None})} of {plan.n + 1} frames done", file=sys.stderr)
    embeddings = inversion.load_embeddings(out.embeddings_path) if os.path.isfile(out.embeddings_path) else None

    def fitted(cond, uncond, losses):
        out.record(inversion_losses=losses)
        out.save_embeddings(cond, uncond)

    def save_frame(*args, **kwargs):
        out.save_frame(*args, **kwargs)
        saved.append(args[0])

    def finish(result):
        record = {k: v for k, v in result.record.items() if k not in ("frames", "candidates")}
        out.record(**{**record, "notes": record["notes"] + notes})
        out.finish(o.fps)
        return result

    hooks = dict(on_frame=save_frame, on_candidates=out.save_candidates, on_progress=Progress(studio))
    try:
        result = finish(job.run(done, embeddings, choose=studio.chooser(steering) if studio else steering,
                                on_embeddings=fitted, cache_inversion=True, **hooks))
        # The studio stays open on the finished run: a frame may be revised (it and its descendants are
        # made again, the person choosing), until the page closes it.
        while studio is not None:
            studio.finished(out.state["outputs"])
            revised = studio.after_finish()
            if revised is None:
                break
            stale = job.forget(revised)
            out.unmake(stale)
            steering.forget(stale)
            result = finish(job.run(**hooks))
    finally:
        if studio is not None:
            studio.close()
    for note in out.state["notes"]:
        print(f"[interpolate] {note}", file=sys.stderr)
    print(f"wrote {plan.n + 1} frames to {o.out} ({result.record['unet_calls']} UNet calls, "
          f"{result.record['seconds']['total']:.0f} s)")
    return out


# --- perceptual re-timing (Section 5.2) -------------------------------------------------------------

def decoded_inputs(o: Options, models: Models, folder: str) -> list:
    """The two inputs of the finished run in `folder` as the VAE decodes their latents (PIL images)."""
    sd = models.sd(o.files.sd_options(weights.resolve(o.files.sd, "sd")))
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
        frames = json.load(f)["frames"]
    z = torch.cat([SafetensorsFile(os.path.join(folder, frames[k]["latent"])).read("latent")
                   for k in ("0", str(len(frames) - 1))])
    return to_pil(sd.decode_latents(z.to(sd.device)))


def _summary(seq: Sequence, steps: list) -> dict:
    return {"positions": list(seq.positions), "steps": steps, **path_metrics(steps)}


def _path(seq: Sequence, ends: tuple) -> tuple:
    """The frames of the path the method moves along: the inputs as their latents decode (`ends`: one VAE round
    trip from the images themselves, a gap no position can close), and the frames between them."""
    return (ends[0], *seq.frames[1:-1], ends[1])


def retime(o: Options, models: Models) -> dict:
    """Make the run of `o`, measure its steps in space `o.retime`, and make it again at even positions in
    `o.out`/retimed; returns what retime.json records (before and after), None with --fetch-only."""
    make_pair(o.replace(retime=None), models)
    paths = weights.resolve_all(wanted_files((o.retime,), o.features)[o.retime])
    if o.fetch_only:
        print(f"{o.retime}: {', '.join(map(str, paths))}")
        return None
    loaded = load_spaces((o.retime,), {o.retime: paths}, o.features, check_device(o.files.device),
                         Cache(os.path.join(o.out, "features.safetensors")))[o.retime]
    try:
        first = Sequence.read(o.out)
        # both passes start from the same inputs, so their decoded latents are the same
        ends = tuple(Frame.of_image(im, f"decoded input {k}") for k, im in zip((0, "N"), decoded_inputs(o, models, o.out)))
        before = _summary(first, loaded.steps(_path(first, ends)))
        target = o.replace({"schedule": even_positions(first.positions, before["steps"])},
                           out=os.path.join(o.out, RETIMED), retime=None)
        make_pair(target, models)
        second = Sequence.read(target.out)
        after = _summary(second, loaded.steps(_path(second, ends)))
    finally:
        loaded.cache.save()
    record = {"space": o.retime, "folder": RETIMED, "before": before, "after": after}
    write_json(os.path.join(o.out, RETIME_RECORD), record)
    print(f"re-timed in {o.retime} space: 1 - Gini {before['smoothness']:.3f} -> {after['smoothness']:.3f}, "
          f"largest step {before['max']:.4g} -> {after['max']:.4g} (path length {before['total']:.4g} -> "
          f"{after['total']:.4g}); the re-timed run is {target.out}", file=sys.stderr)
    return record
