"""The method as a library: two images in, a sequence of frames out, in memory.

    pipe = interp.Pipeline.from_files(sd="sd21-512-base", device="cuda")   # catalog names or paths
    result = pipe(image_a, image_b, prompt="a photo of a person", frames=17, seed=0)
    result.frames        # PIL images, both inputs included
    result.record        # how each frame was made: rounds, scores, poses, notes, timings

A run, as Section 4 of the paper tells it:
1. both images are brought to one frame size (`Pipeline.prepare`) and encoded with the VAE;
2. poses (Section 4.3): keypoints of both images, the main subjects matched, interpolated and drawn for
   the ControlNet;
3. textual inversion (Section 4.2) fits a prompt embedding to each image;
4. the scheme (Section 4.1, or a baseline of Section 5.1) makes the frames round by round, with several
   candidates per frame ranked by CLIP (Section 4.4) where it draws fresh noise; a `choose` hook may decide
   a round instead (the interactive mode).

Nothing is written or printed: hooks receive what a caller keeps or shows (`on_frame`, `on_candidates`,
`on_embeddings`, `on_progress`, which stops the run between two steps by returning False).
"""
import dataclasses
import functools
import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ldm.accel import COMPILED_BATCH, fixed_batch
from ldm.errors import UserError
from ldm.images import check_frame_size, frame_size, open_image, placement, placement_warnings, to_pil, to_rgb, to_tensor
from ldm.load import weights
from ldm.sample.pipeline import img2img

from . import inversion
from .conditioning import PoseConditioning, TextConditioning, place_keypoints, read_keypoints
from .frames import descendants
from .interpolator import Interpolator
from .models import ModelFiles, Models
from .rank import CLIPScorer
from .settings import LONG_SIDE, Settings
from .slerp import lerp, slerp
from .steering import Steering


class Cancelled(Exception):
    """A run stopped by its `on_progress` hook between two steps; `result` holds the frames finished before."""

    def __init__(self, stage: str):
        super().__init__(f"cancelled during {stage}")
        self.stage, self.result = stage, None


@dataclass
class Result:
    """The frames of a run (index 0 and N are the inputs) and the record of how they were made."""
    size: tuple        # (width, height) of the frames
    images: dict       # {index: PIL image} of the frames this run made
    latents: dict      # {index: clean latent [1, 4, h, w]} of every finished frame
    record: dict       # scheme, rounds, unet_calls, batch_limits, poses, notes, seconds, inversion_losses,
                       # frames {index: info}, candidates {index: {"scores", "kept"}}
    decode: object = field(default=None, repr=False)

    @property
    def frames(self) -> list:
        """Every frame as a PIL image, in order; a frame handed in as a latent alone (`done`) is decoded."""
        if not self.latents:
            return []
        n = max(self.latents)
        missing = [i for i in range(n + 1) if i not in self.images and i in self.latents]
        if missing:
            self.images.update(zip(missing, self.decode(torch.cat([self.latents[i] for i in missing]))))
        return [self.images.get(i) for i in range(n + 1)]


def _image(image) -> Image.Image:
    """A PIL image from a PIL image, a path, an HxWx3 uint8 array or a [1, 3, H, W] tensor in [-1, 1]."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        return to_pil(image.detach().float().cpu())[0]
    if isinstance(image, np.ndarray):
        return to_rgb(Image.fromarray(image))
    return open_image(image)


def _sha(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


class Pipeline:
    """The method with its networks: given loaded (`Pipeline(sd, controlnet=..., clip=..., openpose=...)`) or
    named (`Pipeline.from_files(...)`, loaded on first use into `models`, a cache several pipelines may share)."""

    def __init__(self, sd=None, controlnet=None, clip=None, openpose=None, files: ModelFiles = None,
                 models: Models = None):
        if sd is None and files is None:
            raise UserError("a pipeline needs an SD model: Pipeline(sd, ...) or Pipeline.from_files(sd=...)")
        self.given = {"sd": sd, "controlnet": controlnet, "clip": clip, "openpose": openpose}
        self.files, self.models = files, models or Models()

    @classmethod
    def from_files(cls, files: ModelFiles = None, models: Models = None, **fields) -> "Pipeline":
        """A pipeline of the networks `files` names (a `ModelFiles`, or its fields as keywords: sd, controlnet,
        clip, clip_config, openpose, config, prediction, device, dtype, compile)."""
        return cls(files=dataclasses.replace(files or ModelFiles(), **fields), models=models)

    # --- the networks --------------------------------------------------------------------------

    def _path(self, role: str):
        return weights.resolve(getattr(self.files, role), role)

    def _need(self, role: str):
        if self.given[role] is None and self.files is None:
            raise UserError(f"these settings need a {role} network: give it to the Pipeline")
        return self.given[role]

    def sd(self):
        return self._need("sd") or self.models.sd(self.files.sd_options(self._path("sd")))

    def controlnet(self):
        return self._need("controlnet") or self.models.controlnet(self._path("controlnet"), self.sd(), self.files)

    def clip(self):
        return self._need("clip") or self.models.clip(self._path("clip"), self.files.clip_config, self.sd().device)

    def openpose(self):
        return self._need("openpose") or self.models.openpose(
            weights.resolve_all([(m, "openpose") for m in self.files.openpose]))

    # --- runs ----------------------------------------------------------------------------------

    def prepare(self, image_a, image_b, settings: Settings = None, keypoints=None, names=("image A", "image B"),
                **changes) -> "Interpolation":
        """The pair, checked and placed at the frame size, ready to `run` (`settings`, or its fields as
        keywords; `keypoints`: for each image a `pose-detect --json` file or its people [18, 3] in that
        image's pixels, instead of OpenPose)."""
        return Interpolation(self, dataclasses.replace(settings or Settings(), **changes), (image_a, image_b),
                             keypoints, names)

    def __call__(self, image_a, image_b, settings: Settings = None, keypoints=None, **kwargs) -> Result:
        """Interpolate between two images: `prepare`, then `run` (its hooks and resume arguments are keywords
        here too, beside the settings' fields)."""
        run_args = {k: kwargs.pop(k) for k in RUN_ARGS if k in kwargs}
        return self.prepare(image_a, image_b, settings, keypoints, **kwargs).run(**run_args)

    def chain(self, images: list, settings: Settings = None, keypoints=None, **kwargs) -> list:
        """One sequence through three or more images: a Result per consecutive pair, all at the first pair's
        frame size (the frame where two pairs meet is the image itself, the last of one and the first of the next)."""
        run_args = {k: kwargs.pop(k) for k in RUN_ARGS if k in kwargs}
        settings = dataclasses.replace(settings or Settings(), **kwargs)
        results = []
        for k in range(len(images) - 1):
            pair = None if keypoints is None else keypoints[k:k + 2]
            s = chain_segment(settings, results[0].size if results else None)
            results.append(self(images[k], images[k + 1], s, pair, **run_args))
        return results


def chain_segment(settings: Settings, first_size) -> Settings:
    """The settings of a chain's pair: those given, at the frame size of the chain's first pair (`first_size`;
    None for the first pair itself) unless a size is given: one frame size for the whole sequence."""
    if first_size is not None and settings.size is None:
        return dataclasses.replace(settings, size=tuple(first_size))
    return settings


# keyword arguments of `Interpolation.run` (the others of `Pipeline.__call__` are settings)
RUN_ARGS = ("done", "embeddings", "choose", "on_frame", "on_candidates", "on_embeddings", "on_progress",
            "cache_inversion")


class Interpolation:
    """One pair of images, placed at the frame size, with what the run needs that no model gives checked
    (`Pipeline.prepare`). `run` makes the missing frames; `revise` makes one frame (and every frame made
    from it) again. Poses, textual inversion and the encoded inputs are found at the first `run` and kept."""

    def __init__(self, pipeline: Pipeline, settings: Settings, images, keypoints, names):
        self.t_start = time.perf_counter()
        self.pipeline, self.settings = pipeline, settings
        self.plan = settings.plan()
        self.scheme = self.plan.scheme
        raw = [_image(im) for im in images]
        if keypoints is not None:
            keypoints = [read_keypoints(k, im.size) if isinstance(k, (str, os.PathLike)) else k for k, im in zip(keypoints, raw)]
        self.sd = pipeline.sd()
        native = self.sd.config.image_size
        # the size asked for, else the first image's aspect at LONG_SIDE; both checked against what the model takes
        self.size = check_frame_size(settings.size, native, frame=frame_size(raw[0].size, max(native, LONG_SIDE)))
        self.placements = [placement(im.size, self.size, settings.fit) for im in raw]
        self.images = [pl.image(im) for pl, im in zip(self.placements, raw)]
        self.size = self.images[0].size
        self.raw, self.keypoints = raw, keypoints
        self.warnings = [w for name, im, pl in zip(names, raw, self.placements) for w in placement_warnings(name, im.size, pl)]
        self.notes = list(self.sd.notes)
        self.record = {"scheme": self.scheme.name, "ranks_candidates": self.scheme.ranks}
        self.runner = self.latents = None

    @functools.cached_property
    def checkpoint(self) -> str:
        """The model's identity (`ldm.load.weights.fingerprint`), read once."""
        return weights.fingerprint(self.sd.path)

    @property
    def identity(self) -> dict:
        """What the frames depend on beyond the settings: the frame size, the inputs as placed, the model."""
        return {"size": list(self.size), "input_sha256": [_sha(im) for im in self.images],
                "checkpoint": self.checkpoint, "prediction": self.sd.config.prediction,
                "dtype": str(self.sd.dtype)}

    # --- conditioning, found once ------------------------------------------------------------------

    def _poses(self) -> PoseConditioning:
        """Section 4.3: the people of both images (given, or found by OpenPose with the photo fallback of Fig. 4)."""
        s, photo_fallback = self.settings, [False, False]
        if self.keypoints is not None:
            people = [place_keypoints(p, pl) for p, pl in zip(self.keypoints, self.placements)]
        else:
            import pose
            net = self.pipeline.openpose()

            def fallback(which):
                def to_photo(rgb):  # Fig. 4: a stylized image is first translated into a photograph
                    photo_fallback[which] = True
                    return np.asarray(img2img(self.sd, Image.fromarray(rgb), "a photograph", s.negative, strength=0.6,
                                              steps=s.steps, guidance=s.cfg, seed=s.seed))
                return to_photo
            people = [pose.detect(np.asarray(im), net, fallback=fallback(k)) for k, im in enumerate(self.images)]
        poses = PoseConditioning(*people, height=self.size[1], width=self.size[0], all_people=s.all_people,
                                 warp=s.warp)
        found = {"people_found": [len(p) for p in people], "people_matched": len(poses.pairs),
                 "photo_fallback": photo_fallback}
        self.record["poses"] = found
        self.notes.append(f"poses: {found['people_found'][0]} and {found['people_found'][1]} people found, "
                          f"{found['people_matched']} matched" + ("" if poses else ": pose guidance is off"))
        return poses

    def _text(self, x, embeddings, on_embeddings, tick, cache: bool) -> TextConditioning:
        """Section 4.2: prompt embeddings fitted to the two images by textual inversion (unless it is off, or
        `embeddings` (cond, uncond) are given, e.g. a resumed run's)."""
        s, sd = self.settings, self.sd
        cond, uncond = sd.encode_text(s.prompts), sd.encode_text([s.negative])
        if self.scheme.denoises and s.inversion_steps > 0:
            if embeddings is not None:
                cond, uncond = embeddings
                self.notes.append("textual inversion: the embeddings of this run folder")
            else:
                fit = dict(steps=s.steps, iterations=s.inversion_steps, lr=s.inversion_lr, guidance=s.cfg, seed=s.seed)
                keep = inversion.activations_fit(sd, x, uncond)  # the same result either way: not in the key
                backward = ("the UNet's activations kept for the backward pass" if keep else
                            "the UNet's activations recomputed in the backward pass (gradient checkpointing)")
                if cache:  # on disk, by a key of everything the result depends on
                    model = {"checkpoint": self.checkpoint, "prediction": sd.config.prediction,
                             "dtype": str(sd.dtype), "device": sd.device.type}
                    key = inversion.cache_key(x, s.prompts, s.negative, model, **fit)
                    cond, uncond, losses = inversion.cached_invert(sd, x.to(sd.device), cond, uncond, key, **fit,
                                                                   callback=tick, keep_activations=keep)
                    done = "from the cache" if losses is None else f"{len(losses)} iterations, {backward}"
                    self.notes.append(f"textual inversion: {done} ({key})")
                else:
                    cond, uncond, losses = inversion.invert(sd, x.to(sd.device), cond, uncond, **fit, callback=tick,
                                                            keep_activations=keep)
                    self.notes.append(f"textual inversion: {len(losses)} iterations, {backward}")
                self.record["inversion_losses"] = losses
                if on_embeddings is not None:
                    on_embeddings(cond, uncond, losses)
        return TextConditioning(cond[:1].to(sd.device), cond[1:].to(sd.device), uncond.to(sd.device),
                                mix={"slerp": slerp, "lerp": lerp}[s.text])

    def _start(self, embeddings, on_embeddings, on_progress, choose, cache: bool) -> None:
        """Everything the frames are conditioned on, and the runner that makes them."""
        s, sd = self.settings, self.sd
        controlnet = poses = scorer = None
        if s.pose and self.scheme.denoises:  # Section 4.3
            controlnet, poses = self.pipeline.controlnet(), self._poses()
        if any(k > 1 for k in self.plan.candidates):  # Section 4.4
            clip = self.pipeline.clip()
            scorer = CLIPScorer(clip, s.rank_positive, s.rank_negative)
            self.notes += [f"[clip] {n}" for n in clip.notes]
        x = torch.cat([to_tensor(im) for im in self.images])
        t0 = time.perf_counter()
        text = self._text(x, embeddings, on_embeddings, _ticks(on_progress, "inversion", s.inversion_steps), cache)
        self.t_inversion = time.perf_counter() - t0
        fixed = fixed_batch(self.pipeline.files is not None and self.pipeline.files.compile, sd.device)
        if fixed and s.max_batch is None:
            s = dataclasses.replace(s, max_batch=COMPILED_BATCH)
        self.runner = Interpolator(sd, s, text, controlnet, poses, scorer, fixed_batch=fixed, chooser=choose)
        z = sd.encode_images(x)
        self.latents = {0: z[:1], self.plan.n: z[1:]}

    # --- making frames -------------------------------------------------------------------------

    def run(self, done: dict = None, embeddings=None, choose=None, on_frame=None, on_candidates=None,
            on_embeddings=None, on_progress=None, cache_inversion: bool = False) -> Result:
        """Make every frame not yet made (nor in `done`, {index: clean latent}: a resumed run's).

        choose(pool) -> {frame: candidate} decides each round (`interp.steering.Candidates`; default: CLIP's
        pick, or what `choose` as a `Steering` recorded); on_frame(index, image, latent, info) and
        on_candidates(index, images, scores, kept) receive each finished frame and ranked candidates;
        on_embeddings(cond, uncond, losses) the fitted prompt embeddings; on_progress(stage, step, total)
        each inversion iteration and DDIM step, counted per piece of work: "inversion", "frames" (the
        steps of every round still to make) and "reroll" (the steps of one re-roll a `choose` asks for);
        returning False stops the run (`Cancelled`, with the frames finished before). `cache_inversion`
        keeps inversion results on disk."""
        images = {}

        def keep(index, image, latent, info):
            images[index] = image
            self.record.setdefault("frames", {})[str(index)] = info
            if on_frame is not None:
                on_frame(index, image, latent, info)

        def ranked(index, candidates, scores, kept):
            self.record.setdefault("candidates", {})[str(index)] = {"scores": scores, "kept": kept}
            if on_candidates is not None:
                on_candidates(index, candidates, scores, kept)

        latents = self.latents
        try:
            if self.runner is None:
                self._start(embeddings, on_embeddings, on_progress, choose if choose is not None else Steering(),
                            cache_inversion)
                latents = self.latents
                latents.update({i: z.to(self.sd.device) for i, z in (done or {}).items() if 0 < i < self.plan.n})
                for index, image in ((0, self.images[0]), (self.plan.n, self.images[1])):
                    if index not in (done or {}):  # frames 0 and N are the inputs themselves
                        keep(index, image, latents[index], {"input": True, **self.runner.conditioning(index)})
            elif choose is not None:
                self.runner.chooser = choose
            t0 = time.perf_counter()
            self.runner.run(latents, keep, ranked, ticks=functools.partial(_ticks, on_progress))
        except Cancelled as stop:
            stop.result = self._result(images)
            raise
        plan = self.plan
        rows, decoded = self.runner.limits
        self.record.update(
            notes=self.notes, unet_calls=self.runner.unet_calls,
            rounds=[{"timestep": lvl.timestep, "step": lvl.step, "frames": [f.index for f in frames], "candidates": k}
                    for lvl, frames, k in zip(plan.levels, plan.rounds, plan.candidates)],
            batch_limits={"unet_rows": rows, "vae_images": decoded},
            seconds={"inversion": self.t_inversion, "frames": time.perf_counter() - t0,
                     "total": time.perf_counter() - self.t_start})
        return self._result(images)

    def forget(self, index: int) -> set:
        """Frame `index` and every frame made from it are to be made again by the next `run`; returns them."""
        stale = descendants(self.plan.rounds, index)
        for i in stale:
            self.latents.pop(i, None)
        return stale

    def revise(self, index: int, **run_args) -> Result:
        """Make frame `index` (and every frame made from it) again; `run_args` as for `run`."""
        self.forget(index)
        return self.run(**run_args)

    def _result(self, images: dict) -> Result:
        latents = dict(self.latents or {})
        return Result(tuple(self.size), images, latents, self.record, decode=lambda z: to_pil(self.sd.decode_latents(z.to(self.sd.device))))


def _ticks(on_progress, stage: str, total: int):
    """A step callback of any signature that reports to `on_progress(stage, step, total)` and stops the run
    (`Cancelled`) when it returns False."""
    done = [0]

    def tick(*_):
        done[0] += 1
        if on_progress is not None and on_progress(stage, done[0], total) is False:
            raise Cancelled(stage)
    return tick
