"""The runner of a plan: what every scheme (`interp.schemes`) shares.

It gives the schemes a guided DDIM denoiser steered by the frames' text embeddings, poses and ControlNet
strength (all functions of the frame's position), seeded noise, and latent warps; and it takes each
finished batch of frames from them: decodes it, ranks the candidates (Section 4.4), keeps the best and
hands frames and candidates to the caller with a record of how each frame was made.
"""
from collections import Counter
from contextlib import contextmanager

import torch

from ldm.accel import memory
from ldm.errors import UserError
from ldm.images import to_pil
from ldm.sample import rng
from ldm.sample.ddim import DDIM
from ldm.sample.denoiser import Denoiser

from .conditioning import control_strength
from .steering import Candidates, Steering
from .warp import warp_latent


def least(limits: list):
    """The smallest of the limits that are not None (None if all are)."""
    given = [n for n in limits if n is not None]
    return min(given) if given else None


class Interpolator:
    """Runs the plan of `settings` (an `interp.Settings`) with the loaded networks: `sd`, the text conditioning
    `text`, and optionally a ControlNet with its `poses`, a candidate `scorer`, and a `chooser` that decides each
    round (default: recorded decisions, else CLIP's pick)."""

    def __init__(self, sd, settings, text, controlnet=None, poses=None, scorer=None, fixed_batch: bool = False,
                 chooser=None):
        plan = settings.plan()
        if any(k > 1 for k in plan.candidates) and scorer is None:
            raise UserError("several candidates per frame need a scorer to rank them (e.g. CLIP): give --clip or --candidates 1")
        self.sd, self.plan, self.text, self.guidance, self.seed = sd, plan, text, settings.cfg, settings.seed
        self.sampler = DDIM(sd.schedule, sd.config.prediction, plan.steps, settings.eta)
        self.controlnet = controlnet if poses else None
        self.poses, self.strength, self.warp = poses, tuple(settings.control_strength), settings.warp
        self.scorer, self.fixed_batch = scorer, fixed_batch
        self.max_batch, self.max_decode = settings.max_batch, settings.max_decode  # None: what fits in free memory
        self.limits = None  # (UNet rows, VAE images) per call, found at the first `run` (`batch_limits`)
        self.chooser = chooser or Steering()  # who decides each round: CLIP (and the recorded decisions), or a person
        self._prompts = {}
        self.round_of = {f.index: r for r, frames in enumerate(plan.rounds) for f in frames}
        self.unet_calls = 0
        self.latents = self.on_frame = self.on_candidates = self.ticks = None
        self.progress = None  # the step callback of the piece of work under way (`counting`)

    # --- what the schemes use ----------------------------------------------------------------------

    def noise(self, key: tuple, count: int, like):
        """`count` noise tensors shaped like one latent, from a generator of their own for `key` (so a
        frame's noise does not depend on what else was made before it: runs resume exactly)."""
        return rng.randn((count, *like.shape[1:]), rng.generator(self.seed, *key), like.device)

    def warped(self, z, amount: float):
        return z if self.warp is None or amount == 0 else warp_latent(z, self.warp, amount)

    def denoise(self, x, indices: list, start: int, end: int = None, prompt: str = None, keypoints: list = None):
        """DDIM from step index `start` (down to `end`, or to the clean latent) for a batch whose row j
        belongs to frame indices[j], conditioned as that frame; `prompt` and `keypoints` (people x [18, 3]),
        when given, replace the slerped text embedding and the interpolated pose of every row."""
        positions = [self.plan.positions[i] for i in indices]
        cond, uncond = self.text.at(positions)
        if prompt is not None:
            if prompt not in self._prompts:
                self._prompts[prompt] = self.sd.encode_text([prompt]).to(cond.device, cond.dtype)
            cond = self._prompts[prompt].expand(len(indices), -1, -1)
        hint = strength = None
        if self.controlnet is not None:
            people = None if keypoints is None else [torch.as_tensor(p, dtype=torch.float64).numpy() for p in keypoints]
            hint = self.poses.hints(positions, people)
            strength = control_strength(positions, *self.strength)
        model = Denoiser(self.sd.unet, self.controlnet, hint, strength, self.limits[0], pad=self.fixed_batch)
        generators, seen = [], Counter()  # one per (frame, candidate), for the noise of eta > 0
        for i in indices:
            generators.append(rng.generator(self.seed, "eta", i, seen[i], start))
            seen[i] += 1
        z = self.sampler.sample(model, x, cond.to(self.sd.device), uncond.to(self.sd.device), self.guidance,
                                start=start, end=end, callback=self.progress, generator=generators)
        self.unet_calls += model.calls
        return z

    def decode_and_score(self, z, score: bool = True) -> tuple:
        """(PIL images, CLIP scores or None) of a batch of latents."""
        images = self.sd.decode_latents(z, self.limits[1])
        scores = self.scorer(images).tolist() if score and self.scorer is not None else None
        return to_pil(images), scores

    def finish(self, jobs: list, z, k: int, remake=None) -> None:
        """Frames jobs[j] are done, with candidates z[j k : (j + 1) k]: decode, rank, let the chooser decide
        (re-rolling with `remake` if it asks), keep, report."""
        pool = Candidates(self, jobs, k, remake)
        images, scores = self.decode_and_score(z, score=k > 1)
        for j, job in enumerate(jobs):
            pool.add(job.index, z[j * k:(j + 1) * k], images[j * k:(j + 1) * k],
                     None if scores is None else scores[j * k:(j + 1) * k])
        picks = self.chooser(pool)
        for job in jobs:
            i, c = job.index, picks[job.index]
            self.latents[i] = pool.latents[i][c]
            roll = pool.roll_of(i, c)
            info = {"round": self.round_of[i], "parents": list(job.parents), "weight": job.weight,
                    "timestep": job.timestep, "ddim_steps": job.steps, **self.conditioning(i)}
            if roll.get("prompt") is not None:
                info["prompt"] = roll["prompt"]
            if roll.get("keypoints") is not None:
                info["keypoints"] = roll["keypoints"]
            if pool.count(i) > 1:
                frame_scores = None if None in pool.scores[i] else pool.scores[i]
                info.update(scores=frame_scores, kept=c)
                if self.on_candidates is not None:
                    self.on_candidates(i, pool.images[i], frame_scores, c)
            self.on_frame(i, pool.images[i][c], self.latents[i], info)

    # --- the caller's side ---------------------------------------------------------------------------

    def conditioning(self, index: int) -> dict:
        """What steers frame `index` besides its latent: text/pose position, ControlNet strength, keypoints."""
        p = self.plan.positions[index]
        record = {"position": p}
        if self.controlnet is not None:
            record.update(control_strength=float(control_strength([p], *self.strength)[0]),
                          keypoints=[kp.tolist() for kp in self.poses.keypoints_at(p)])
        return record

    def kept_bytes(self, latent) -> tuple:
        """(bytes, bytes) the largest round keeps on the device while it is denoised and while it is
        decoded, for latents shaped like `latent` [1, C, h, w], besides the network calls themselves."""
        size, (_, c, h, w) = self.sd.dtype.itemsize, latent.shape
        rows = max(len(frames) * k for frames, k in zip(self.plan.rounds, self.plan.candidates))
        # Per guided row its text, per row the sampler's float32 latents; with a ControlNet per row its
        # hint drawing and per guided row the hint's features.
        denoising = 2 * rows * self.text.cond[0].numel() * size + 4 * rows * c * h * w * 4
        if self.controlnet is not None:
            denoising += rows * (3 * 64 + 2 * self.controlnet.input_hint_block[-1].out_channels) * h * w * size
        decoding = 2 * rows * 3 * 64 * h * w * 4  # the float32 images, in batches and then concatenated
        return denoising, decoding

    def batch_limits(self, latent, free: int = None) -> tuple:
        """(UNet rows, VAE images) of one network call for latents shaped like `latent` [1, C, h, w]: as
        given, else as many as fit in `free` bytes (default: the free memory of the device, `ldm.accel.memory`)
        beside what the round keeps there (`kept_bytes`), and on a CPU no more than pay
        (`memory.rows_worth_batching`). None: no limit (one call per batch)."""
        free = memory.free_bytes(self.sd.device) if free is None else free
        shape, device = tuple(latent.shape[1:]), self.sd.device
        budget = None if free is None else int(memory.USABLE * free)
        denoising, decoding = self.kept_bytes(latent)
        rows, images = self.max_batch, self.max_decode
        if rows is None:
            limits = [memory.rows_worth_batching(device, "unet", shape)]
            if budget is not None:
                context = tuple(self.text.cond[0].shape[1:])
                limits.append(memory.unet_cost(self.sd.unet, self.controlnet, shape, context).rows(budget - denoising))
                if self.controlnet is not None:
                    hint = (3, 8 * shape[1], 8 * shape[2])
                    limits.append(memory.hint_cost(self.controlnet, hint).rows(budget - denoising))
            rows = least(limits)
        if images is None:
            limits = [memory.rows_worth_batching(device, "decoder", shape)]
            if budget is not None:
                limits.append(memory.decode_cost(self.sd.vae, shape).rows(budget - decoding))
            images = least(limits)
        return rows, images

    def steps_to_run(self, latents: dict) -> int:
        return self.plan.scheme.steps_to_run(self.plan, latents)

    @contextmanager
    def counting(self, stage: str, total: int):
        """A context in which the DDIM steps run are one piece of work of `total` steps, reported through
        the `ticks` given to `run` as `stage` ("frames": the plan's steps; "reroll": one re-roll's)."""
        outer = self.progress
        self.progress = self.ticks(stage, total) if self.ticks is not None else None
        try:
            yield
        finally:
            self.progress = outer

    def run(self, latents: dict, on_frame, on_candidates=None, ticks=None) -> dict:
        """Make every frame missing from `latents` ({index: [1,4,h,w]}, at least 0 and N).

        on_frame(index, image, latent, info) is called as each frame is finished; on_candidates(index,
        images, scores, kept) when several candidates were ranked; ticks(stage, total) gives the callback
        run after every DDIM step of a piece of work (`counting`).
        """
        self.latents, self.on_frame, self.on_candidates, self.ticks = latents, on_frame, on_candidates, ticks
        if self.limits is None:
            self.limits = self.batch_limits(latents[0])
        with self.counting("frames", self.steps_to_run(latents)):
            self.plan.scheme.run(self, latents)
        return latents
