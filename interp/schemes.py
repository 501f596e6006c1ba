"""The interpolation schemes of Section 5.1: ours (Section 4.1) and the baselines of Table 1.

Frames 0 and N are the inputs, frame i sits at position p_i in [0, 1]. Each scheme is one small class: it
says which frames each round makes at which noise level (its `Plan`) and how a round's noisy latents are
built and denoised. It hands every finished batch to the runner (`interp.interpolator.Interpolator`), which
decodes, ranks and saves; the runner also supplies the denoiser, the noise and the warps.

    interpolate-only     z_i = slerp(z_0, z_N, p_i), decoded: no diffusion
    interpolate-denoise  one chain of noisy latents per input at increasing timesteps, the same noise for
                         both (eqs. 1-2); frame i is slerp(z_t^0, z_t^N, p_i) at the level of min(i, N - i),
                         denoised (the authors' get_latent_stack + interpolate_then_diffuse)
    did                  denoise-interpolate-denoise: round by round, the inputs taken from those chains and
                         every frame made so far are denoised to the next level, and new frames are slerps of
                         their neighbours' partially denoised latents (the authors' interpolate, share_noise)
    did-no-shared-noise  the same with independent chain noise for the two inputs
    ours                 each new frame from its two nearest finished frames, both noised with one shared
                         noise tensor, slerped, denoised; several candidates ranked (the authors' interpolate_qc)
    ours-no-shared-noise ours with independent noise for the two parents (an extra ablation)
    freemorph            FreeMorph (Cao et al., ICCV 2025): every frame at once, DDIM-inverted and denoised
                         again with attention shared across the batch (`interp.freemorph`)

Only the `ours` schemes draw fresh noise for each frame, so only they make and rank candidates; the chain
schemes draw their noise once for the whole sequence and make one version of each frame.
"""
import dataclasses
from dataclasses import dataclass

import torch

from ldm.errors import UserError
from ldm.sample.ddim import ddim_timesteps, leading_timesteps

from . import freemorph
from .frames import Frame, NoiseLevel, frame_tree, noise_levels
from .rank import candidate_counts
from .schedules import interpolation_positions
from .slerp import slerp


@dataclass(frozen=True)
class Plan:
    """Which frame is made when, from what, at which noise level, with how many candidates."""
    scheme: "Scheme"
    steps: int           # DDIM schedule length S
    timesteps: tuple     # the DDIM grid, ascending
    positions: tuple     # p_0 = 0 < ... < p_N = 1
    rounds: tuple        # rounds of Frame, first (noisiest) round first
    levels: tuple        # one NoiseLevel per round
    candidates: tuple    # candidates per frame, per round

    @property
    def n(self) -> int:
        return len(self.positions) - 1


@dataclass(frozen=True)
class Job:
    """One frame a batch finishes: where its latent came from and how it was denoised (for run.json)."""
    index: int
    parents: tuple       # the frames whose latents were slerped
    weight: float        # the latent slerp weight between them
    timestep: int        # the timestep the parents were noised to (None: no diffusion)
    steps: int           # DDIM steps run on this frame


class Scheme:
    name = ""
    denoises = True      # runs the diffusion model (so text inversion and pose guidance matter)
    ranks = False        # draws fresh noise per frame, so it can make and rank several candidates
    warps = False        # supports affine latent motion (Section 5.2)
    poses = True         # can be guided by poses (Section 4.3)

    def rounds(self, n: int, positions: list, schedule) -> list:
        """The rounds of frames this scheme makes."""
        return frame_tree(n, schedule)

    def plan(self, frames: int, steps: int = 200, low: float = 0.30, high: float = 0.55, levels=None,
             schedule="uniform", candidates="auto") -> Plan:
        """`frames` counts the whole sequence, the two inputs included (N = frames - 1)."""
        if not isinstance(frames, int) or frames < 3:
            raise UserError(f"--frames counts the whole sequence with both inputs, so it must be at least 3, not {frames}")
        if not self.ranks and candidates not in ("auto", 1):
            raise UserError(f"the {self.name} scheme draws its noise once for the whole sequence, so it has no "
                            f"candidates to rank: use --candidates 1")
        n = frames - 1
        positions = interpolation_positions(n, schedule)
        rounds = self.rounds(n, positions, schedule)
        counts = candidate_counts(len(rounds), candidates) if self.ranks else [1] * len(rounds)
        return Plan(self, steps, tuple(ddim_timesteps(steps).tolist()), tuple(positions), tuple(map(tuple, rounds)),
                    tuple(noise_levels(len(rounds), steps, low, high, levels)), tuple(counts))

    def run(self, runner, latents: dict) -> None:
        """Make every interior frame missing from `latents` ({index: [1,4,h,w]}) through runner.finish."""
        raise NotImplementedError

    def steps_to_run(self, plan: Plan, latents: dict) -> int:
        """DDIM steps (batched UNet calls) still to run: every round that has a frame to make runs from its
        level to the clean latent."""
        return sum(level.step + 1 for frames, level in zip(plan.rounds, plan.levels)
                   if any(f.index not in latents for f in frames))


class InterpolateOnly(Scheme):
    name = "interpolate-only"
    denoises = False

    def steps_to_run(self, plan, latents):
        return 0

    def run(self, runner, latents):
        plan = runner.plan
        todo = [i for i in range(1, plan.n) if i not in latents]
        if todo:
            p = torch.tensor([plan.positions[i] for i in todo])
            z = slerp(latents[0], latents[plan.n], p)
            runner.finish([Job(i, (0, plan.n), plan.positions[i], None, 0) for i in todo], z, 1)


def input_chains(runner, latents: dict, levels: list, shared: bool) -> tuple:
    """Both inputs forward-noised along one chain through the given levels (ascending timesteps), fresh
    noise at each link and the same noise for both inputs when `shared` (eqs. 1-2; the authors'
    get_latent_stack). Returns two dicts {timestep: latent}."""
    q = runner.sd.schedule.q_sample_from
    n, chains, previous = runner.plan.n, ({}, {}), None
    z = (latents[0], latents[n])
    for t in sorted(level.timestep for level in levels):
        eps_a = runner.noise(("chain", t, 0), 1, z[0])
        eps_b = eps_a if shared else runner.noise(("chain", t, 1), 1, z[1])
        z = (q(z[0], previous, t, eps_a), q(z[1], previous, t, eps_b))
        chains[0][t], chains[1][t] = z
        previous = t
    return chains


class InterpolateDenoise(Scheme):
    name = "interpolate-denoise"

    def rounds(self, n, positions, schedule):
        """One round per distance d = min(i, N - i) to the nearer input, farthest first; every frame is made
        from the two inputs directly."""
        return [[Frame(i, 0, n, positions[i]) for i in sorted({d, n - d})] for d in range(n // 2, 0, -1)]

    def run(self, runner, latents):
        plan = runner.plan
        chain_a, chain_b = input_chains(runner, latents, plan.levels, shared=True)
        for frames, level in zip(plan.rounds, plan.levels):
            todo = [f for f in frames if f.index not in latents]
            if not todo:
                continue
            t = level.timestep
            x = slerp(chain_a[t], chain_b[t], torch.tensor([f.position for f in todo]))
            z = runner.denoise(x, [f.index for f in todo], level.step)
            runner.finish([Job(f.index, (0, plan.n), f.position, t, level.step + 1) for f in todo], z, 1)


class DID(Scheme):
    name = "did"
    shared = True
    # The authors re-interpolate the frames of earlier rounds from their new neighbours in their levels 2
    # and 3 (`retroactive_interp`), i.e. in rounds 1 and 2 here.
    RETROACTIVE_ROUNDS = (1, 2)

    def steps_to_run(self, plan, latents):
        """The rounds denoise level to level, from the first round's down to the clean latent."""
        return 0 if all(i in latents for i in range(1, plan.n)) else plan.levels[0].step + 1

    def run(self, runner, latents):
        plan = runner.plan
        if all(i in latents for i in range(1, plan.n)):
            return  # each frame is final only after the last round, so a partial run starts over
        p = plan.positions
        chain_a, chain_b = input_chains(runner, latents, plan.levels, self.shared)
        current, steps = {}, {}  # interior frame -> its latent at the current level; DDIM steps run on it
        for rnd, (frames, level) in enumerate(zip(plan.rounds, plan.levels)):
            state = {**current, 0: chain_a[level.timestep], plan.n: chain_b[level.timestep]}
            for f in frames:
                state[f.index] = slerp(state[f.left], state[f.right], f.position)
            if rnd in self.RETROACTIVE_ROUNDS:
                self.reinterpolate(state, current, {f.index for f in frames}, p)
            indices = sorted(i for i in state if 0 < i < plan.n)
            last = rnd == len(plan.rounds) - 1
            end = None if last else plan.levels[rnd + 1].step
            z = runner.denoise(torch.cat([state[i] for i in indices]), indices, level.step, end)
            current = {i: z[j:j + 1] for j, i in enumerate(indices)}
            for i in indices:
                steps[i] = steps.get(i, 0) + level.step - (-1 if last else end)
        made = {f.index: (f, lvl) for frames, lvl in zip(plan.rounds, plan.levels) for f in frames}
        indices = sorted(current)
        runner.finish([Job(i, (made[i][0].left, made[i][0].right), made[i][0].position, made[i][1].timestep, steps[i])
                       for i in indices], torch.cat([current[i] for i in indices]), 1)

    @staticmethod
    def reinterpolate(state: dict, older: dict, new: set, p) -> None:
        """Each frame of an earlier round whose nearest frames on both sides are new is replaced by their slerp."""
        ordered = sorted(state)
        for j, i in enumerate(ordered):
            if i in older and 0 < j < len(ordered) - 1:
                left, right = ordered[j - 1], ordered[j + 1]
                if left in new and right in new:
                    state[i] = slerp(state[left], state[right], (p[i] - p[left]) / (p[right] - p[left]))


class DIDNoSharedNoise(DID):
    name = "did-no-shared-noise"
    shared = False


class Ours(Scheme):
    name = "ours"
    ranks = warps = True
    shared = True

    def run(self, runner, latents):
        plan = runner.plan
        for frames, level, k in zip(plan.rounds, plan.levels, plan.candidates):
            todo = [f for f in frames if f.index not in latents]
            if todo:
                x = torch.cat([self.start(runner, f, level, k, latents) for f in todo])
                z = runner.denoise(x, [f.index for f in todo for _ in range(k)], level.step)
                by_index = {f.index: f for f in todo}

                def remake(index, roll, prompt, keypoints, level=level, k=k):  # k more candidates of one frame
                    x = self.start(runner, by_index[index], level, k, latents, roll)
                    return runner.denoise(x, [index] * k, level.step, prompt=prompt, keypoints=keypoints)
                runner.finish([Job(f.index, (f.left, f.right), f.position, level.timestep, level.step + 1)
                               for f in todo], z, k, remake)

    def start(self, runner, f: Frame, level: NoiseLevel, k: int, latents: dict, roll: int = 0) -> torch.Tensor:
        """Section 4.1: k noisy latents for frame f, its parents noised with shared noise and slerped
        (re-roll `roll` > 0 draws that noise from a key of its own)."""
        p, q = runner.plan.positions, runner.sd.schedule.q_sample
        # Affine warps (Section 5.2): both parents are moved to the new frame's view before they are mixed.
        z_l = runner.warped(latents[f.left], p[f.index] - p[f.left]).expand(k, -1, -1, -1)
        z_r = runner.warped(latents[f.right], p[f.index] - p[f.right]).expand(k, -1, -1, -1)
        key = ("frame", f.index) if roll == 0 else ("frame", f.index, "roll", roll)
        eps = runner.noise(key, k * (1 if self.shared else 2), z_l)
        eps_l, eps_r = (eps, eps) if self.shared else (eps[:k], eps[k:])
        return slerp(q(z_l, level.timestep, eps_l), q(z_r, level.timestep, eps_r), torch.full((k,), f.position))


class OursNoSharedNoise(Ours):
    name = "ours-no-shared-noise"
    shared = False


class FreeMorph(Scheme):
    """Every interior frame in one round, made together from the two inputs (`interp.freemorph.morph`); its
    level is where the denoising starts, 80% of the way up a schedule of diffusers' timesteps."""
    name = "freemorph"
    poses = False

    def rounds(self, n, positions, schedule):
        return [[Frame(i, 0, n, positions[i]) for i in range(1, n)]]

    def plan(self, frames, steps=50, *args, **kwargs):
        k = int(steps * freemorph.STRENGTH)
        if k < 1:
            raise UserError(f"FreeMorph inverts {freemorph.STRENGTH:.0%} of the schedule: give --steps 2 or more")
        grid = leading_timesteps(steps)
        return dataclasses.replace(super().plan(frames, steps, *args, **kwargs), timesteps=tuple(grid.tolist()),
                                   levels=(NoiseLevel(k - 1, int(grid[k - 1])),))

    def steps_to_run(self, plan, latents):
        """Its UNet calls, inverting and denoising again (each frame is final only at the end, so a partial run
        starts over)."""
        return 0 if all(i in latents for i in range(1, plan.n)) else freemorph.calls(plan.steps)

    def run(self, runner, latents):
        plan, level = runner.plan, runner.plan.levels[0]
        if all(i in latents for i in range(1, plan.n)):
            return
        noise = runner.noise(("freemorph", "injection"), 1, latents[0])
        z, calls = freemorph.morph(runner.sd, latents[0], latents[plan.n], plan.positions, runner.text, runner.guidance,
                                   plan.steps, noise, runner.progress)
        runner.unet_calls += calls  # each one a step of the progress hook
        runner.finish([Job(i, (0, plan.n), plan.positions[i], level.timestep, 2 * (level.step + 1))
                       for i in range(1, plan.n)], z[1:-1], 1)


SCHEMES = {s.name: s for s in (InterpolateOnly(), InterpolateDenoise(), DID(), DIDNoSharedNoise(), Ours(),
                               OursNoSharedNoise(), FreeMorph())}
ALIASES = {"latent-blending": "did"}


def scheme(name: str) -> Scheme:
    name = ALIASES.get(name, name)
    if name not in SCHEMES:
        raise UserError(f"unknown scheme {name!r}: use one of {', '.join(SCHEMES)}")
    return SCHEMES[name]
