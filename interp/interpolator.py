"""The runner of a plan: what every scheme (`interp.schemes`) shares.

It gives the schemes a guided DDIM denoiser steered by the frames' text embeddings, poses and ControlNet
strength (all functions of the frame's position), seeded noise, and latent warps; and it takes each
finished batch of frames from them: decodes it, ranks the candidates (Section 4.4), keeps the best and
hands frames and candidates to the caller with a record of how each frame was made.
"""
from collections import Counter

from ldm import rng
from ldm.ddim import DDIM
from ldm.denoiser import Denoiser
from ldm.errors import UserError
from ldm.images import to_pil

from .conditioning import control_strength
from .rank import best
from .warp import warp_latent


class Interpolator:
    def __init__(self, sd, plan, text, guidance: float = 7.5, eta: float = 0.0, seed: int = 0, controlnet=None,
                 poses=None, strength=(1.0, 1.5), warp=None, scorer=None, max_batch: int = None,
                 fixed_batch: bool = False):
        if any(k > 1 for k in plan.candidates) and scorer is None:
            raise UserError("several candidates per frame need a scorer to rank them (e.g. CLIP): give --clip or --candidates 1")
        if warp is not None and not plan.scheme.warps:
            raise UserError(f"--warp moves the parents of each new frame, which the {plan.scheme.name} scheme does not have: "
                            "use --scheme ours or ours-no-shared-noise")
        self.sd, self.plan, self.text, self.guidance, self.seed = sd, plan, text, guidance, seed
        self.sampler = DDIM(sd.schedule, sd.config.prediction, plan.steps, eta)
        self.controlnet = controlnet if poses else None
        self.poses, self.strength, self.warp = poses, strength, warp
        self.scorer, self.max_batch, self.fixed_batch = scorer, max_batch, fixed_batch
        self.round_of = {f.index: r for r, frames in enumerate(plan.rounds) for f in frames}
        self.unet_calls = 0
        self.latents = self.on_frame = self.on_candidates = self.progress = None

    # --- what the schemes use ----------------------------------------------------------------------

    def noise(self, key: tuple, count: int, like):
        """`count` noise tensors shaped like one latent, from a generator of their own for `key` (so a
        frame's noise does not depend on what else was made before it: runs resume exactly)."""
        return rng.randn((count, *like.shape[1:]), rng.generator(self.seed, *key), like.device)

    def warped(self, z, amount: float):
        return z if self.warp is None or amount == 0 else warp_latent(z, self.warp, amount)

    def denoise(self, x, indices: list, start: int, end: int = None):
        """DDIM from step index `start` (down to `end`, or to the clean latent) for a batch whose row j
        belongs to frame indices[j], conditioned as that frame."""
        positions = [self.plan.positions[i] for i in indices]
        cond, uncond = self.text.at(positions)
        hint = strength = None
        if self.controlnet is not None:
            hint = self.poses.hints(positions)
            strength = control_strength(positions, *self.strength)
        model = Denoiser(self.sd.unet, self.controlnet, hint, strength, self.max_batch, pad=self.fixed_batch)
        generators, seen = [], Counter()  # one per (frame, candidate), for the noise of eta > 0
        for i in indices:
            generators.append(rng.generator(self.seed, "eta", i, seen[i], start))
            seen[i] += 1
        z = self.sampler.sample(model, x, cond.to(self.sd.device), uncond.to(self.sd.device), self.guidance,
                                start=start, end=end, callback=self.progress, generator=generators)
        self.unet_calls += model.calls
        return z

    def finish(self, jobs: list, z, k: int) -> None:
        """Frames jobs[j] are done, with candidates z[j k : (j + 1) k]: decode, rank, keep, report."""
        images = self.sd.decode_latents(z, self.max_batch)
        scores = self.scorer(images) if k > 1 else None
        kept = best(scores, len(jobs)) if k > 1 else [0] * len(jobs)
        for j, job in enumerate(jobs):
            c = j * k + kept[j]
            self.latents[job.index] = z[c:c + 1]
            info = {"round": self.round_of[job.index], "parents": list(job.parents), "weight": job.weight,
                    "timestep": job.timestep, "ddim_steps": job.steps, **self.conditioning(job.index)}
            if k > 1:
                frame_scores = scores[j * k:(j + 1) * k].tolist()
                info.update(scores=frame_scores, kept=kept[j])
                if self.on_candidates is not None:
                    self.on_candidates(job.index, to_pil(images[j * k:(j + 1) * k]), frame_scores, kept[j])
            self.on_frame(job.index, to_pil(images[c:c + 1])[0], self.latents[job.index], info)

    # --- the caller's side ---------------------------------------------------------------------------

    def conditioning(self, index: int) -> dict:
        """What steers frame `index` besides its latent: text/pose position, ControlNet strength, keypoints."""
        p = self.plan.positions[index]
        record = {"position": p}
        if self.controlnet is not None:
            record.update(control_strength=float(control_strength([p], *self.strength)[0]),
                          keypoints=[kp.tolist() for kp in self.poses.keypoints_at(p)])
        return record

    def steps_to_run(self, latents: dict) -> int:
        return self.plan.scheme.steps_to_run(self.plan, latents)

    def run(self, latents: dict, on_frame, on_candidates=None, progress=None) -> dict:
        """Make every frame missing from `latents` ({index: [1,4,h,w]}, at least 0 and N).

        on_frame(index, image, latent, info) is called as each frame is finished; on_candidates(index,
        images, scores, kept) when several candidates were ranked; progress(...) after every DDIM step.
        """
        self.latents, self.on_frame, self.on_candidates, self.progress = latents, on_frame, on_candidates, progress
        self.plan.scheme.run(self, latents)
        return latents
