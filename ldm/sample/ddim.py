"""DDIM sampling (Song et al. 2021; ldm `DDIMSampler`) with classifier-free guidance.

The sampler walks a subsequence of the 1000 training timesteps. From a latent x_t it predicts the clean
latent and the noise, then steps to the previous DDIM timestep:

    pred_x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    x_prev  = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t z,
    sigma_t = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)

(eta = 0: deterministic). A v-prediction model's output is turned into eps and pred_x0 first. Sampling
can start at any step index k of the schedule, from a latent noised to timestep[k] (`q_sample`), which is
what img2img and the interpolation method need. DDIM inversion (`invert_step`) runs the same update the
other way, from timestep[k - 1] up to timestep[k]. All update arithmetic runs in float32.
"""
import numpy as np
import torch

from ..errors import UserError, nan_advice
from . import rng
from .schedule import NoiseSchedule


def ddim_timesteps(num_steps: int, num_train: int = 1000) -> np.ndarray:
    """The reference's 'uniform' DDIM timesteps: range(0, T, T // S) + 1 (1, 6, ..., 996 for S = 200).

    As in the reference, when S does not divide T the list holds len(range(0, T, T // S)) steps. For
    S > T/2 the stride is 1 and the +1 shift would run past the schedule, so it is dropped (0 .. T-1).
    """
    if not 1 <= num_steps <= num_train:
        raise UserError(f"the number of DDIM steps must be between 1 and {num_train}, not {num_steps}")
    steps = np.arange(0, num_train, num_train // num_steps)
    return steps + 1 if steps[-1] + 1 < num_train else steps


def leading_timesteps(num_steps: int, num_train: int = 1000) -> np.ndarray:
    """diffusers' "leading" DDIM timesteps without its steps_offset, ascending: 0, T // S, ..., (S - 1)(T // S)
    (0, 20, ..., 980 for S = 50): the timesteps code written for diffusers' SD 2.1 schedulers passes as `t - 1`."""
    if not 1 <= num_steps <= num_train:
        raise UserError(f"the number of DDIM steps must be between 1 and {num_train}, not {num_steps}")
    return np.arange(num_steps) * (num_train // num_steps)


class DDIM:
    def __init__(self, schedule: NoiseSchedule, prediction: str, num_steps: int = 200, eta: float = 0.0,
                 timesteps: np.ndarray = None):
        """The sampler of `num_steps` steps on the reference's grid (`ddim_timesteps`), or on `timesteps`
        (ascending) when given."""
        if prediction not in ("v", "eps"):
            raise UserError(f"prediction must be 'v' or 'eps', not {prediction!r}")
        self.schedule, self.prediction, self.eta = schedule, prediction, eta
        self.timesteps = ddim_timesteps(num_steps, schedule.num_timesteps) if timesteps is None else np.asarray(timesteps)
        ac = schedule.alphas_cumprod
        # As the reference: float32 buffer values gathered into float64 arrays.
        self.alphas = ac[self.timesteps].double().numpy()
        self.alphas_prev = np.concatenate([[ac[0].item()], ac[self.timesteps[:-1]].double().numpy()])
        self.sigmas = eta * np.sqrt((1 - self.alphas_prev) / (1 - self.alphas) * (1 - self.alphas / self.alphas_prev))
        self._coefficients = {}  # device -> the per-step float32 values there

    def coefficients(self, device) -> dict:
        """The per-step float32 values on `device` ([len(self)] each), copied there once: a step indexes them
        and never copies a number from the host (each such copy waits for the device)."""
        device = torch.device(device)
        if device not in self._coefficients:
            values = {k: torch.tensor(v, dtype=torch.float32) for k, v in
                      (("alphas", self.alphas), ("alphas_prev", self.alphas_prev), ("sigmas", self.sigmas))}
            for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):  # v-prediction's
                values[name] = self.schedule.buffers[name][torch.as_tensor(self.timesteps)]
            self._coefficients[device] = {k: v.to(device) for k, v in values.items()}
        return self._coefficients[device]

    def __len__(self):
        return len(self.timesteps)

    def index_at_or_below(self, t: int) -> int:
        """The step index whose timestep is the largest not above t (where to start from a noise level t)."""
        below = np.nonzero(self.timesteps <= t)[0]
        if len(below) == 0:
            raise UserError(f"timestep {t} is below the first DDIM timestep {self.timesteps[0]}")
        return int(below[-1])

    def eps_and_x0(self, out, x, index: int):
        """(eps, pred_x0) from the model output at step `index`, for either prediction type."""
        c = self.coefficients(x.device)
        if self.prediction == "v":  # the schedule's own square roots, as the reference
            return self._split(out, x, c["sqrt_alphas_cumprod"][index], c["sqrt_one_minus_alphas_cumprod"][index])
        a_t = c["alphas"][index]
        return self._split(out, x, a_t.sqrt(), (1 - a_t).sqrt())

    def _split(self, out, x, sqrt_a, sqrt_one_minus_a):
        """(eps, pred_x0) of the model output `out` at x, a latent at the level whose alpha_cumprod is a."""
        out = out.float()
        if self.prediction == "v":
            return sqrt_a * out + sqrt_one_minus_a * x, sqrt_a * x - sqrt_one_minus_a * out
        return out, (x - sqrt_one_minus_a * out) / sqrt_a

    def step(self, out, x, index: int, generator=None):
        """One DDIM update from step `index` to `index - 1`: returns (x_prev, pred_x0), float32."""
        x = x.float()
        eps, pred_x0 = self.eps_and_x0(out, x, index)
        c = self.coefficients(x.device)
        a_prev, sigma = c["alphas_prev"][index], c["sigmas"][index]
        x_prev = a_prev.sqrt() * pred_x0 + (1.0 - a_prev - sigma ** 2).sqrt() * eps
        if self.eta > 0:
            x_prev = x_prev + sigma * rng.randn(x.shape, generator, x.device)
        return x_prev, pred_x0

    def invert_step(self, out, x, index: int):
        """One DDIM inversion update of x, a latent at timestep[index - 1] (the clean latent for index 0), up to
        timestep[index], with the model output `out` standing in for the one at x (diffusers'
        DDIMInverseScheduler): pred_x0 and eps at x's level, then x_next = sqrt(a_t) pred_x0 + sqrt(1 - a_t) eps."""
        x, c = x.float(), self.coefficients(x.device)
        a_from, a_to = c["alphas_prev"][index], c["alphas"][index]
        eps, pred_x0 = self._split(out, x, a_from.sqrt(), (1 - a_from).sqrt())
        return a_to.sqrt() * pred_x0 + (1 - a_to).sqrt() * eps

    @torch.no_grad()
    def sample(self, model, x, cond, uncond=None, guidance: float = 1.0, start: int = None, callback=None,
               generator=None, end: int = None):
        """Denoise x (noised to timestep[start]; pure noise at the last index by default) down to step 0, or
        only down to the latent at timestep[end] (a partial denoising) when `end` < start is given.

        `model(x, t, context)` returns the network output (eps or v); with `uncond` and guidance != 1,
        classifier-free guidance evaluates it once on the batch [uncond; cond]:
        out = out_uncond + guidance (out_cond - out_uncond). `callback(i, index, t, x_prev, pred_x0)`
        runs after every step. `generator` (one, or one per sample) draws the noise of eta > 0. Returns
        the final latent (float32). Nothing in a step waits for the device: the latents are checked for
        NaN/inf once, at the end.
        """
        start = len(self) - 1 if start is None else start
        if not 0 <= start < len(self):
            raise UserError(f"start index must be in [0, {len(self) - 1}], not {start}")
        if end is not None and not 0 <= end < start:
            raise UserError(f"end index must be in [0, {start - 1}] to stop part-way, not {end}")
        x = x.float()
        guided = uncond is not None and guidance != 1.0
        indices, finite = list(range(start, -1 if end is None else end, -1)), []
        for i, index in enumerate(indices):
            timestep = int(self.timesteps[index])
            t = torch.full((x.shape[0] * (2 if guided else 1),), timestep, device=x.device, dtype=torch.long)
            if guided:
                out_u, out_c = model(torch.cat([x, x]), t, torch.cat([uncond, cond])).float().chunk(2)
                out = out_u + guidance * (out_c - out_u)
            else:
                out = model(x, t, cond)
            x, pred_x0 = self.step(out, x, index, generator)
            finite.append(torch.isfinite(x).all())
            if callback is not None:
                callback(i, index, timestep, x, pred_x0)
        bad = (~torch.stack(finite)).nonzero()
        if len(bad):
            index = indices[int(bad[0])]
            raise UserError(f"the sampler produced NaN/inf at step {index} (t={int(self.timesteps[index])}): "
                            f"{nan_advice(getattr(model, 'dtype', x.dtype))}")
        return x
