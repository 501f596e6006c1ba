"""FreeMorph (Cao, Si, Wang and Liu, ICCV 2025, arXiv 2507.01953): tuning-free morphing on SD 2.1, as its
authors' code runs it (GitHub `yukangcao/FreeMorph`, commit b7b7068: `freemorph.py`, `aid_attention.py`,
`aid_utils.py`), on this project's networks. The scheme itself is `interp.schemes.FreeMorph`; these are its
pieces. Every frame of the sequence (7 by default, both inputs included) is made in one batch, because
their attention is shared across it:

1. the inputs' latents are slerped, each row of the last axis as one vector (`slerp_rows`), and the text
   embeddings of the two prompts lerped;
2. `invert`: DDIM inversion of the batch over the first 80% of the schedule, five fixed-point iterations a
   step, with the conditional text only; the attention plain, then the batch mean of every attention's
   output (`converged`), then the average of attending to the first and to the last frame (`to_ends`);
3. `inject_noise`: the inner frames keep the low frequencies of their inverted latents and take the high
   ones from one shared noise tensor;
4. `denoise`: the same steps back down with classifier-free guidance, the conditional pass attending to the
   first and the last frame by the frame's beta(20, 20) quantile (`to_ends` with weights), fused with the
   frame's own keys and values later, and plain at the end; the unconditional pass plain.

Where the authors' code and their paper differ, this follows the code (README.md lists the places).
"""
import math
from contextlib import contextmanager

import torch

from ldm.errors import UserError, nan_advice
from ldm.sample.ddim import DDIM, leading_timesteps

from .slerp import slerp

STRENGTH = 0.8               # the share of the schedule inverted and denoised again ("edit strength")
ITERATIONS = 5               # fixed-point iterations of each inversion step
INVERT_PHASES = (0.3, 0.6)   # converged attention after step int(0.3 S), the ends' average after int(0.6 S)
DENOISE_PHASES = (0.2, 0.6)  # of the steps denoised: fused from int(0.2 n), plain from int(0.6 n)
BETA = (20.0, 20.0)          # the attention weights of the frames: beta(20, 20) quantiles of their positions
# Half-widths of the spectrum box an inner frame keeps, for 96 x 96 latents (768 px), written for 9 frames and
# indexed by frame number (so 7 frames use the first 7: 44 next to the first input, 42 elsewhere).
HALF_WIDTHS = (48, 44, 42, 42, 42, 42, 42, 44, 48)
LATENT_SIDE = 96


def sampler(sd, steps: int) -> DDIM:
    """DDIM on the timesteps diffusers' SD 2.1 schedulers give, less one as the authors pass them (0 ... 980)."""
    return DDIM(sd.schedule, sd.config.prediction, timesteps=leading_timesteps(steps, sd.schedule.num_timesteps))


def slerp_rows(a: torch.Tensor, b: torch.Tensor, positions) -> torch.Tensor:
    """[len(positions), ...] latents between a and b [1, ...]: every row of the last axis slerped on its own
    (`aid_utils.slerp` normalises over dim=-1), as the authors interpolate the latents."""
    rows, shape = a.reshape(-1, a.shape[-1]), a.shape[1:]
    return torch.cat([slerp(rows, b.reshape(rows.shape), torch.full((len(rows),), float(p))).reshape(1, *shape)
                      for p in positions])


def beta_quantiles(positions, a: float = BETA[0], b: float = BETA[1]) -> torch.Tensor:
    """The quantiles of the beta(a, b) distribution at `positions` (`aid_utils.generate_beta_tensor`, which
    takes scipy's `beta.ppf` at i / (n - 1)), by bisection of the regularised incomplete beta function."""
    def cdf(x):
        if x <= 0 or x >= 1:
            return float(x >= 1)
        front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
        if x < (a + 1) / (a + b + 2):
            return front * _beta_fraction(x, a, b) / a
        return 1 - front * _beta_fraction(1 - x, b, a) / b

    quantiles = []
    for p in positions:
        low, high = 0.0, 1.0
        for _ in range(200 if 0 < p < 1 else 0):
            middle = (low + high) / 2
            low, high = (middle, high) if cdf(middle) < p else (low, middle)
        quantiles.append(float(p) if p in (0, 1) else (low + high) / 2)
    return torch.tensor(quantiles, dtype=torch.float32)


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), converging for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1) < 1e-16:
            break
    return value


def half_widths(frames: int, height: int, width: int) -> list:
    """(rows, columns) half-widths of the spectrum box each inner frame keeps, for latents of height x width:
    the authors' values for frame k (`HALF_WIDTHS`, continued with 42 in the middle for more than 9 frames)
    scaled from 96 x 96 latents and rounded."""
    base = HALF_WIDTHS[:2] + (42,) * (max(frames, len(HALF_WIDTHS)) - 4) + HALF_WIDTHS[-2:]
    return [(round(v * height / LATENT_SIDE), round(v * width / LATENT_SIDE)) for v in base[1:frames - 1]]


def inject_noise(x: torch.Tensor, noise: torch.Tensor, half: tuple) -> torch.Tensor:
    """x with the frequencies outside the centred box of half-widths `half` of its spectrum taken from
    noise's (`aid_utils.fourier_filter`): its low frequencies kept, its high ones replaced."""
    spectra = [torch.fft.fftshift(torch.fft.fftn(z.float(), dim=(-2, -1)), dim=(-2, -1)) for z in (x, noise)]
    h, w = x.shape[-2:]
    keep = torch.zeros((h, w), dtype=torch.bool, device=x.device)
    keep[h // 2 - half[0]:h // 2 + half[0], w // 2 - half[1]:w // 2 + half[1]] = True
    mixed = torch.where(keep, *spectra)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=(-2, -1)), dim=(-2, -1)).real.to(x.dtype)


def inject_inner(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The batch x [frames, 4, h, w] with every inner frame's high frequencies taken from `noise` (its
    `half_widths`); the end frames as they are."""
    halves = half_widths(len(x), *x.shape[-2:])
    inner = [inject_noise(x[i:i + 1], noise, half) for i, half in enumerate(halves, 1)]
    return torch.cat([x[:1], *inner, x[-1:]])


# --- the attention of the batch: each takes the module's own kernel (`ldm.nets.attention.attention`, or what
# the acceleration layer put in its place) and returns the kernel to use over [frames, heads, L, d] tensors

def converged(attend):
    """Every frame gets the batch mean of the attention outputs (`OuterConvergedAttnProcessor_SDPA`)."""
    def kernel(q, k, v):
        out = attend(q, k, v)
        return out.mean(dim=0, keepdim=True).expand_as(out)
    return kernel


def to_ends(attend, weights: torch.Tensor = None, fused: bool = False):
    """(1 - w_i) attention to the first frame's keys and values + w_i attention to the last frame's (w_i = 1/2
    without weights: `OuterConvergedAttnProcessor_SDPA2`; with them `OuterInterpolatedAttnProcessor_SDPA`);
    `fused`: each frame's own keys and values come first in both."""
    def kernel(q, k, v):
        n = q.shape[0]
        ends = [(k[j].expand(n, -1, -1, -1), v[j].expand(n, -1, -1, -1)) for j in (slice(0, 1), slice(-1, None))]
        if fused:
            ends = [(torch.cat([k, ke], dim=2), torch.cat([v, ve], dim=2)) for ke, ve in ends]
        first, last = (attend(q, ke, ve) for ke, ve in ends)
        w = 0.5 if weights is None else weights.view(-1, 1, 1, 1).to(first.device, first.dtype)
        return (1 - w) * first + w * last
    return kernel


@contextmanager
def attention(unet, make):
    """Inside, every self- and cross-attention of the UNet (modules named attn1 and attn2) computes with
    make(its kernel); `make` None leaves them as they are."""
    modules = [m for name, m in unet.named_modules() if make is not None and name.endswith(("attn1", "attn2"))]
    own = [m.__dict__.get("attention") for m in modules]
    for m in modules:
        m.attention = make(m.attention)
    try:
        yield
    finally:
        for m, kernel in zip(modules, own):
            if kernel is None:
                del m.attention
            else:
                m.attention = kernel


def _unet(sd, x, timestep: int, context):
    t = torch.full((x.shape[0],), timestep, device=x.device, dtype=torch.long)
    return sd.unet(x.to(sd.dtype), t, context.to(sd.device, sd.dtype)).float()


def inversion_attention(i: int, schedule: int):
    """The attention of inversion step i of a `schedule`-step schedule (as their `steps`): plain up to step
    int(0.3 S) and at step int(0.6 S), `converged` between them, the ends' average after."""
    first, second = (int(schedule * f) for f in INVERT_PHASES)
    return converged if first < i < second else to_ends if i > second else None


def denoising_attention(j: int, steps: int, weights: torch.Tensor):
    """The attention of the conditional pass at denoising step j of `steps`: the ends by `weights`, fused with
    the frame's own keys and values from step int(0.2 steps), plain (None) from int(0.6 steps)."""
    fused, plain = (int(steps * f) for f in DENOISE_PHASES)
    return None if j >= plain else lambda attend: to_ends(attend, weights, fused=j >= fused)


def invert(sd, ddim: DDIM, x: torch.Tensor, cond: torch.Tensor, steps: int, callback=None) -> torch.Tensor:
    """The batch x inverted up the first `steps` timesteps of `ddim`, conditioned on `cond` alone
    (`aid_inversion`, whose guidance argument is unused): at each step ITERATIONS fixed-point updates
    x_t <- invert_step(unet(x_t, t), x), under `inversion_attention`. `callback` runs after every UNet call."""
    for i in range(steps):
        with attention(sd.unet, inversion_attention(i, len(ddim))):
            z = x
            for _ in range(ITERATIONS):
                z = ddim.invert_step(_unet(sd, z, int(ddim.timesteps[i]), cond), x, i)
                if callback is not None:
                    callback()
        x = z
    return x


def denoise(sd, ddim: DDIM, x: torch.Tensor, cond, uncond, guidance: float, weights: torch.Tensor, steps: int,
            callback=None) -> torch.Tensor:
    """The batch x denoised from timestep[steps - 1] to the clean latent (`aid_forward`): the conditional pass
    under `denoising_attention`, the unconditional pass plain; eta 0. `callback` runs after every UNet call."""
    for j, index in enumerate(range(steps - 1, -1, -1)):
        t = int(ddim.timesteps[index])
        with attention(sd.unet, denoising_attention(j, steps, weights)):
            out_c = _unet(sd, x, t, cond)
        out_u = _unet(sd, x, t, uncond)
        x, _ = ddim.step(out_u + guidance * (out_c - out_u), x, index)
        if callback is not None:  # one for each of the two UNet calls
            callback()
            callback()
    return x


def morph(sd, z_a, z_b, positions, text, guidance: float, steps: int, noise: torch.Tensor, callback=None) -> tuple:
    """(the clean latents of every frame [len(positions), 4, h, w], the UNet calls made): FreeMorph between
    the latents z_a and z_b [1, 4, h, w], `text` the prompts' `TextConditioning` (lerp), `noise` [1, 4, h, w]
    the injection noise, on a `steps`-step schedule."""
    ddim = sampler(sd, steps)
    k = int(steps * STRENGTH)
    x = slerp_rows(z_a.float(), z_b.float(), positions).to(z_a.device)
    cond, uncond = (e.to(z_a.device) for e in text.at(positions))
    x = invert(sd, ddim, x, cond, k, callback)
    x = inject_inner(x, noise)
    x = denoise(sd, ddim, x, cond, uncond, guidance, beta_quantiles(positions), k, callback)
    if not torch.isfinite(x).all():
        raise UserError(f"FreeMorph produced NaN/inf: {nan_advice(sd.dtype)}")
    return x, calls(steps)


def calls(steps: int) -> int:
    """The UNet calls of a run on a `steps`-step schedule: ITERATIONS per step inverted, two per step denoised."""
    return int(steps * STRENGTH) * (ITERATIONS + 2)
