"""The DDPM noise schedule of SD training and forward noising (ldm `DDPM.register_schedule`, `q_sample`).

betas are 'scaled linear' (ldm calls it 'linear'): linspace(sqrt(0.00085), sqrt(0.012), 1000)**2, in
float64; alphas_cumprod[t] = prod_{s<=t} (1 - beta_s). Every buffer is computed in float64 and stored
in float32, as in the checkpoint.
"""
import numpy as np
import torch

from ..nets.config import Schedule


def schedule_buffers(schedule: Schedule = Schedule()) -> dict:
    """The 12 top-level buffers a reference SD checkpoint stores, as float32 tensors [T]."""
    betas = np.linspace(schedule.linear_start ** 0.5, schedule.linear_end ** 0.5, schedule.timesteps, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)  # v_posterior = 0
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in buffers.items()}


class NoiseSchedule:
    """The training schedule's buffers and the forward process built on them."""

    def __init__(self, schedule: Schedule = Schedule()):
        self.config = schedule
        self.buffers = schedule_buffers(schedule)
        self.alphas_cumprod = self.buffers["alphas_cumprod"]
        self.num_timesteps = schedule.timesteps

    def at(self, name: str, t, like: torch.Tensor) -> torch.Tensor:
        """buffer[t] shaped to broadcast against `like` ([B] -> [B,1,1,1]), in float32."""
        t = torch.as_tensor(t).reshape(-1).cpu()
        return self.buffers[name][t].to(like.device).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, z0, t, noise):
        """Forward noising z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise, with caller-supplied noise."""
        out = self.at("sqrt_alphas_cumprod", t, z0) * z0.float() + self.at("sqrt_one_minus_alphas_cumprod", t, z0) * noise.float()
        return out.to(z0.dtype)

    def v_target(self, z0, t, noise):
        """The v-prediction training target v = sqrt(abar_t) noise - sqrt(1 - abar_t) z0."""
        out = self.at("sqrt_alphas_cumprod", t, z0) * noise.float() - self.at("sqrt_one_minus_alphas_cumprod", t, z0) * z0.float()
        return out.to(z0.dtype)

    def q_sample_from(self, zs, s, t, noise):
        """More forward noising: a latent at timestep s (None: clean) taken to timestep t > s,

            z_t = sqrt(abar_t / abar_s) z_s + sqrt(1 - abar_t / abar_s) noise,

        which has the marginal q(z_t | z_0) of `q_sample` (paper eqs. 1-2)."""
        if s is None:
            return self.q_sample(zs, t, noise)
        ratio = self.at("alphas_cumprod", t, zs) / self.at("alphas_cumprod", s, zs)
        return (ratio.sqrt() * zs.float() + (1 - ratio).sqrt() * noise.float()).to(zs.dtype)
