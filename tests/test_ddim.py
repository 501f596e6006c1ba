"""Noise schedule and DDIM sampler against the reference `DDIMSampler` (tiny config, v-prediction, CFG 7.5)."""
import copy

import numpy as np
import pytest
import torch

from ldm.errors import UserError
from ldm.sample.ddim import DDIM, ddim_timesteps
from ldm.sample.denoiser import Denoiser


def close(a, b, atol=1e-4, rtol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_training_schedule(tiny_sd, cases):
    assert torch.equal(tiny_sd.schedule.buffers["betas"], cases["sched_betas"])
    assert torch.equal(tiny_sd.schedule.alphas_cumprod, cases["sched_alphas_cumprod"])


def test_q_sample_and_v_target_exact(tiny_sd, cases):
    assert torch.equal(tiny_sd.schedule.q_sample(cases["qs_z0"], cases["qs_t"], cases["qs_eps"]), cases["qs_zt"])
    assert torch.equal(tiny_sd.schedule.v_target(cases["qs_z0"], cases["qs_t"], cases["qs_eps"]), cases["qs_v"])


def test_200_step_schedule_exact(tiny_sd, cases):
    d = DDIM(tiny_sd.schedule, "v", 200)
    assert np.array_equal(d.timesteps, cases["ddim_timesteps"].numpy())
    assert np.array_equal(d.alphas, cases["ddim_alphas"].numpy())
    assert np.array_equal(d.alphas_prev, cases["ddim_alphas_prev"].numpy())
    assert np.array_equal(d.sigmas, cases["ddim_sigmas"].numpy())
    assert np.allclose(np.sqrt(1 - d.alphas), cases["ddim_sqrt_one_minus_alphas"].numpy(), atol=1e-7)


@pytest.mark.parametrize("steps", [10, 50, 200, 250, 300, 500, 999, 1000])
def test_timesteps_for_any_length(steps):
    t = ddim_timesteps(steps)
    assert t[0] in (0, 1) and t[-1] <= 999 and np.all(np.diff(t) == 1000 // steps)
    assert len(t) == len(range(0, 1000, 1000 // steps))


def test_bad_step_counts():
    for bad in (0, 1001):
        with pytest.raises(UserError):
            ddim_timesteps(bad)


def trajectory(sd, cases, x, start, n):
    """x_prev and pred_x0 of the first n guided steps from step index `start`."""
    out = []

    class Enough(Exception):
        pass

    def callback(i, index, t, x_prev, pred_x0):
        out.append((index, t, x_prev.clone(), pred_x0.clone()))
        if len(out) == n:
            raise Enough
    d = DDIM(sd.schedule, "v", 200)
    with pytest.raises(Enough):
        d.sample(Denoiser(sd.unet), x, cases["ddim_cond"], cases["ddim_uncond"], float(cases["ddim_scale"]),
                 start=start, callback=callback)
    return out


def test_guided_v_trajectory_from_pure_noise(tiny_sd, cases):
    steps = trajectory(tiny_sd, cases, cases["ddim_xT"], None, 4)
    assert [s[0] for s in steps] == cases["ddim_steps_index"].tolist()
    assert [s[1] for s in steps] == cases["ddim_steps_t"].tolist()
    for k, (_, _, x_prev, pred_x0) in enumerate(steps):
        close(x_prev, cases[f"ddim_step{k}_x_prev"])
        close(pred_x0, cases[f"ddim_step{k}_pred_x0"])


def test_start_in_the_middle_of_the_schedule(tiny_sd, cases):
    t0 = int(cases["ddim_mid_t_start"])
    x = tiny_sd.schedule.q_sample(cases["ddim_mid_z0"], t0, cases["ddim_mid_eps"])
    assert torch.equal(x, cases["ddim_mid_x_start"])
    d = DDIM(tiny_sd.schedule, "v", 200)
    start = d.index_at_or_below(t0)
    assert d.timesteps[start] == t0 == 646
    for k, (_, _, x_prev, pred_x0) in enumerate(trajectory(tiny_sd, cases, x, start, 4)):
        close(x_prev, cases[f"ddim_mid_step{k}_x_prev"])
        close(pred_x0, cases[f"ddim_mid_step{k}_pred_x0"])


def test_full_200_step_sample(tiny_sd, cases):
    d = DDIM(tiny_sd.schedule, "v", 200)
    x0 = d.sample(Denoiser(tiny_sd.unet), cases["ddim_xT"], cases["ddim_cond"], cases["ddim_uncond"],
                  float(cases["ddim_scale"]))
    close(x0, cases["ddim_full200_x0"], atol=1e-3, rtol=1e-4)


def test_eps_prediction_step_inverts_the_forward_process(tiny_sd):
    """With the true noise as the eps prediction, pred_x0 recovers z0 and x_prev lies on the same ray."""
    d = DDIM(tiny_sd.schedule, "eps", 50)
    z0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    k = 30
    xt = tiny_sd.schedule.q_sample(z0, int(d.timesteps[k]), eps)
    x_prev, pred_x0 = d.step(eps, xt, k)
    close(pred_x0, z0, atol=1e-4, rtol=1e-4)
    close(x_prev, tiny_sd.schedule.q_sample(z0, int(d.timesteps[k - 1]), eps), atol=1e-4, rtol=1e-4)


def test_eta_noise_is_seeded(tiny_sd, cases):
    d = DDIM(tiny_sd.schedule, "v", 20, eta=1.0)
    model = Denoiser(tiny_sd.unet)
    run = lambda seed: d.sample(model, cases["ddim_xT"], cases["ddim_cond"], start=3,  # noqa: E731
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert d.sigmas[5] > 0


def test_controlled_denoiser_batches_the_hint_for_guidance(tiny_sd, tiny_controlnet, cases):
    """[uncond; cond] stacking repeats the per-sample hint, matching two separate controlled calls."""
    x, t, ctx, hint = cases["unet_x"], cases["unet_t"][:1].expand(2), cases["unet_context"], cases["cn_hint"]
    model = Denoiser(tiny_sd.unet, tiny_controlnet, hint, strength=torch.tensor([1.0, 1.5]))
    with torch.no_grad():
        stacked = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx]))
        single = model(x, t, ctx)
    close(stacked[:2], single, atol=1e-5, rtol=1e-5)
    close(stacked[2:], single, atol=1e-5, rtol=1e-5)
    assert model.calls == 2


def test_the_hint_and_strength_go_to_the_device_once_per_denoising(tiny_sd, tiny_controlnet, cases, monkeypatch):
    x, ctx, hint = cases["unet_x"], cases["unet_context"], cases["cn_hint"]
    model = Denoiser(tiny_sd.unet, tiny_controlnet, hint, strength=[1.0, 1.5])
    moved = []
    to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: (moved.append(1) if self is hint else None)
                        or to(self, *a, **k))
    with torch.no_grad():
        first = model(torch.cat([x, x]), 500, torch.cat([ctx, ctx]))  # a guided batch, as at every DDIM step
        for t in (400, 300):
            model(torch.cat([x, x]), t, torch.cat([ctx, ctx]))
        again = model(torch.cat([x, x]), 500, torch.cat([ctx, ctx]))
    assert len(moved) == 1 and torch.equal(first, again)


@pytest.mark.parametrize("dtype,advice", [(torch.float16, "try --dtype bfloat16 or float32"),
                                          (torch.bfloat16, "try --dtype float32"),
                                          (torch.float32, "not the precision")])
def test_nan_is_reported_with_advice_for_the_dtype(tiny_sd, cases, dtype, advice):
    """The advice fits the dtype in use: never 'try bfloat16' to a run already in bfloat16."""
    class Bad:
        def __init__(self):
            self.dtype = dtype

        def __call__(self, x, t, c):
            return torch.full_like(x, float("nan"))
    d = DDIM(tiny_sd.schedule, "v", 10)
    with pytest.raises(UserError, match="NaN") as e:
        d.sample(Bad(), cases["ddim_xT"], cases["ddim_cond"])
    assert advice in str(e.value) and (dtype != torch.bfloat16 or "bfloat16" not in str(e.value))
    sd = copy.copy(tiny_sd)
    sd.vae = copy.copy(tiny_sd.vae)
    sd.vae.decode = lambda z: torch.full((z.shape[0], 3, 8, 8), float("nan"))
    sd.unet = copy.deepcopy(tiny_sd.unet).to(dtype)  # what sd.dtype reads
    with pytest.raises(UserError, match="decoded image contains NaN") as e:
        sd.decode_latents(cases["vae_dec_z"])
    assert advice in str(e.value)


def test_a_step_copies_nothing_from_the_host_and_waits_for_nothing(tiny_sd, cases, monkeypatch):
    """Inside a DDIM step no number goes host -> device (torch.tensor) and nothing is read back (a bool, an
    int, .item(), nonzero): on a GPU each would wait for the device. NaN/inf is looked for once, at the end."""
    model = lambda x, t, c: 0.1 * x  # noqa: E731 (pure device arithmetic)
    calls = []

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return wrapper
    for prediction in ("v", "eps"):
        d = DDIM(tiny_sd.schedule, prediction, 20, eta=0.0)
        expected = d.sample(model, cases["ddim_xT"], cases["ddim_cond"], cases["ddim_cond"], guidance=3.0)
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(torch, "tensor", counted("torch.tensor", torch.tensor))
            for name in ("__bool__", "__int__", "__index__", "item", "tolist", "nonzero", "cpu"):
                m.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
            got = d.sample(model, cases["ddim_xT"], cases["ddim_cond"], cases["ddim_cond"], guidance=3.0)
        assert calls == ["nonzero"], calls  # 20 steps; the one read-back is the final finiteness check
        assert torch.equal(got, expected)


def test_an_image_float16_cannot_decode_is_decoded_again_in_float32(tiny_sd, cases, monkeypatch):
    from ldm.nets.vae import AutoencoderKL
    sd = copy.copy(tiny_sd)
    sd.vae, sd.unet = copy.deepcopy(tiny_sd.vae).half(), copy.deepcopy(tiny_sd.unet).half()
    decode = AutoencoderKL.decode

    def overflowing(self, z):  # float16 overflows on the first image, as the decoder can at 768 px
        out = decode(self, z)
        if z.dtype == torch.float16:
            out[:1] = float("inf")
        return out
    monkeypatch.setattr(AutoencoderKL, "decode", overflowing)
    z = cases["vae_dec_z"].expand(2, -1, -1, -1).clone()
    images = sd.decode_latents(z)
    assert torch.isfinite(images).all() and next(sd._vae_float32.parameters()).dtype == torch.float32
    close(images[0], images[1], atol=2e-2, rtol=0)  # the float32 retry and the float16 decode of the same latent
    reference = tiny_sd.decode_latents(z[:1])
    close(images[:1], reference, atol=2e-2, rtol=0)
