"""Making the in-between frames (Section 4.1) and the baselines of Section 5.1.

Frames 0 and N are the inputs. The frame tree (`frames.frame_tree`) says which frames each round makes
and from which two finished frames; round r works at noise level t_r (high to low). For our method
each new frame i between finished frames l and r is made by

    eps ~ N(0, I)                                  one noise tensor shared by both parents
    x_l, x_r = q_sample(z_l, t, eps), q_sample(z_r, t, eps)
    x_t = slerp(x_l, x_r, position of i between l and r)
    z_i = DDIM(x_t from t down to 0; text embeddings slerped, pose interpolated, guidance)

All frames (and all their candidates) of a round are denoised as one batch. Schemes:

    ours                 the method above
    no-shared-noise      the same with independent noise for the two parents (ablation)
    interpolate-denoise  every frame from the two inputs directly, at its round's level
    latent-blending      denoise-interpolate-denoise: the inputs are noised to t_0 and partially
                         denoised, keeping the latent at every level; each frame interpolates its
                         parents' partially denoised latents at its level (no new noise) and keeps
                         its own trajectory for its children
    interpolate-only     slerp of the clean latents, decoded (no diffusion)
"""
from dataclasses import dataclass

import torch

from ldm.ddim import DDIM
from ldm.denoiser import Denoiser
from ldm.errors import UserError
from ldm.images import to_pil
from ldm.pipeline import decode_latents

from .conditioning import control_strength
from .frames import Frame, NoiseLevel, frame_tree, noise_levels
from .rank import best, candidate_counts
from .schedules import interpolation_positions
from .slerp import slerp
from .warp import warp_latent

SCHEMES = ("ours", "no-shared-noise", "interpolate-denoise", "latent-blending", "interpolate-only")


@dataclass(frozen=True)
class Plan:
    """Which frame is made when, from what, at which noise level, with how many candidates."""
    n: int
    positions: list      # p_0 = 0 < ... < p_N = 1
    rounds: list         # list of rounds, each a list of Frame
    levels: list         # one NoiseLevel per round (step index into the DDIM schedule, timestep)
    candidates: list     # candidates per frame, per round


def make_plan(frames: int, steps: int = 200, low: float = 0.25, high: float = 0.65, levels=None,
              schedule="uniform", candidates=1, scheme: str = "ours") -> Plan:
    """`frames` counts the whole sequence, the two inputs included (N = frames - 1)."""
    if scheme not in SCHEMES:
        raise UserError(f"unknown scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if not isinstance(frames, int) or frames < 3:
        raise UserError(f"--frames counts the whole sequence with both inputs, so it must be at least 3, not {frames}")
    n = frames - 1
    rounds = frame_tree(n, schedule)
    if scheme == "interpolate-denoise":  # every frame straight from the two inputs
        positions = interpolation_positions(n, schedule)
        rounds = [[Frame(f.index, 0, n, positions[f.index]) for f in level] for level in rounds]
    deterministic = scheme in ("latent-blending", "interpolate-only")  # no fresh noise: one candidate
    counts = [1] * len(rounds) if deterministic else candidate_counts(len(rounds), candidates)
    return Plan(n, interpolation_positions(n, schedule), rounds,
                noise_levels(len(rounds), low, high, steps=steps, levels=levels), counts)


class Interpolator:
    def __init__(self, sd, text, plan: Plan, scheme: str = "ours", steps: int = 200, guidance: float = 9.0,
                 eta: float = 0.0, seed: int = 0, controlnet=None, poses=None, strength=(1.0, 1.5), warp=None,
                 scorer=None, max_batch: int = None):
        self.sd, self.text, self.plan, self.scheme = sd, text, plan, scheme
        self.sampler = DDIM(sd.schedule, sd.config.prediction, steps, eta)
        self.guidance, self.seed = guidance, seed
        self.controlnet = controlnet if poses else None
        self.poses, self.strength, self.warp = poses, strength, warp
        self.scorer, self.max_batch = scorer, max_batch
        self.unet_calls = 0
        self.stacks = {}  # latent-blending: frame -> {round: partially denoised latent at that round's level}
        if any(k > 1 for k in plan.candidates) and scorer is None:
            raise UserError("several candidates per frame need a scorer to rank them (e.g. CLIP): give --clip or --candidates 1")

    # --- the pieces of one round -------------------------------------------------------------------

    def noise(self, index: int, count: int, like: torch.Tensor) -> torch.Tensor:
        """`count` noise tensors for frame `index`, from a generator of its own (resumable runs)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn((count, *like.shape[1:]), generator=g).to(like.device)

    def _warped(self, z, amount: float):
        return z if self.warp is None or amount == 0 else warp_latent(z, self.warp, amount)

    def start_latents(self, frames: list, level: NoiseLevel, k: int, latents: dict, rnd: int) -> torch.Tensor:
        """The noisy interpolated latents [len(frames) * k, 4, h, w] (frame-major) a round starts from."""
        p, q = self.plan.positions, self.sd.schedule.q_sample
        out = []
        for f in frames:
            if self.scheme == "latent-blending":
                out.append(slerp(self.stacks[f.left][rnd], self.stacks[f.right][rnd], f.position))
                continue
            # Affine warps (Section 5.2): move each parent's content part-way towards the new frame.
            z_l = self._warped(latents[f.left], p[f.index] - p[f.left])
            z_r = self._warped(latents[f.right], p[f.index] - p[f.right])
            eps = self.noise(f.index, 2 * k if self.scheme == "no-shared-noise" else k, z_l)
            eps_l, eps_r = (eps[:k], eps[k:]) if self.scheme == "no-shared-noise" else (eps, eps)
            out.append(slerp(q(z_l.expand(k, -1, -1, -1), level.timestep, eps_l),
                             q(z_r.expand(k, -1, -1, -1), level.timestep, eps_r),
                             torch.full((k,), f.position)))
        return torch.cat(out)

    def denoise(self, x, positions: list, start: int, record: dict = None, progress=None):
        """DDIM from step index `start` to 0 for a batch at interpolation `positions`; with `record`
        ({step index: round}) the latents reached at those steps are returned too."""
        cond, uncond = self.text.at(positions)
        hint = strength = None
        if self.controlnet is not None:
            hint = self.poses.hints(positions)
            strength = control_strength(positions, *self.strength)
        model = Denoiser(self.sd.unet, self.controlnet, hint, strength, self.max_batch)
        reached = {}

        def callback(i, index, t, x_prev, pred_x0):
            if record and index - 1 in record:
                reached[record[index - 1]] = x_prev
            if progress is not None:
                progress(i, index, t, x_prev, pred_x0)
        g = torch.Generator().manual_seed(self.seed + 7919 * start)  # only used when eta > 0
        z = self.sampler.sample(model, x, cond.to(self.sd.device), uncond.to(self.sd.device), self.guidance,
                                start=start, callback=callback, generator=g)
        self.unet_calls += model.calls
        return z, reached

    def decode(self, z) -> torch.Tensor:
        return decode_latents(self.sd, z, self.max_batch)

    def _trajectory_record(self, rnd: int) -> dict:
        """{DDIM step index of each later round's level: that round}."""
        return {lvl.step: r for r, lvl in enumerate(self.plan.levels) if r > rnd}

    def prepare_endpoints(self, latents: dict, progress=None):
        """latent-blending: noise both inputs to the first level with shared noise and keep their
        partially denoised latents at every level."""
        n, first = self.plan.n, self.plan.levels[0]
        eps = self.noise(n + 1, 1, latents[0])
        x = torch.cat([self.sd.schedule.q_sample(latents[i], first.timestep, eps) for i in (0, n)])
        _, reached = self.denoise(x, [0.0, 1.0], first.step, self._trajectory_record(0), progress)
        for j, index in enumerate((0, n)):
            self.stacks[index] = {0: x[j:j + 1], **{r: z[j:j + 1] for r, z in reached.items()}}

    # --- the whole sequence ------------------------------------------------------------------------

    def run(self, latents: dict, on_frame, on_candidates=None, progress=None) -> dict:
        """Make every frame missing from `latents` ({index: [1,4,h,w]}, at least 0 and N).

        on_frame(index, image, latent, info) is called as each frame is finished; on_candidates(index,
        images, scores, kept) when several candidates were ranked.
        """
        p = self.plan.positions
        if self.scheme == "interpolate-only":
            for i in range(1, self.plan.n):
                if i not in latents:
                    latents[i] = slerp(latents[0], latents[self.plan.n], p[i])
                    on_frame(i, to_pil(self.decode(latents[i]))[0], latents[i], {"position": p[i]})
            return latents
        if self.scheme == "latent-blending":
            self.prepare_endpoints(latents, progress)
        for rnd, (frames, level, k) in enumerate(zip(self.plan.rounds, self.plan.levels, self.plan.candidates)):
            todo = [f for f in frames if f.index not in latents or self.scheme == "latent-blending"]
            if not todo:
                continue
            x = self.start_latents(todo, level, k, latents, rnd)
            positions = [p[f.index] for f in todo for _ in range(k)]
            record = self._trajectory_record(rnd) if self.scheme == "latent-blending" else None
            z, reached = self.denoise(x, positions, level.step, record, progress)
            images = self.decode(z)
            scores = self.scorer(images) if k > 1 else None
            kept = best(scores, len(todo)) if k > 1 else [0] * len(todo)
            for j, f in enumerate(todo):
                c = j * k + kept[j]
                if self.scheme == "latent-blending":
                    self.stacks[f.index] = {r: z_r[c:c + 1] for r, z_r in reached.items()}
                latents[f.index] = z[c:c + 1]
                info = {"round": rnd, "timestep": level.timestep, "position": p[f.index], "parents": [f.left, f.right]}
                if k > 1:
                    frame_scores = scores[j * k:(j + 1) * k].tolist()
                    info.update(scores=frame_scores, kept=kept[j])
                    if on_candidates is not None:
                        on_candidates(f.index, to_pil(images[j * k:(j + 1) * k]), frame_scores, kept[j])
                on_frame(f.index, to_pil(images[c:c + 1])[0], latents[f.index], info)
        return latents
