"""Every speed-up matches the plain path it replaces: fused vs textbook attention (test_parity.py),
torch.compile vs eager, NHWC vs NCHW VAE, split vs whole UNet batches, compiled vs eager slerp."""
import copy

import torch

from interp.slerp import slerp
from ldm.cli import compile_model
from ldm.denoiser import Denoiser


def test_compiled_unet_matches_eager(tiny_sd, cases):
    """fullgraph=True: the denoising network compiles without graph breaks (with frozen weights on CPU)."""
    unet = copy.deepcopy(tiny_sd.unet)
    with torch.no_grad():
        eager = unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])
        compile_model(unet, torch.device("cpu"), fullgraph=True)
        compiled = unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled, cases["unet_out"], atol=1e-4, rtol=1e-4)


def test_compiled_slerp_matches_eager():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    b[1] = a[1]  # parallel rows take the lerp branch
    t = torch.linspace(0, 1, 6)
    fused = torch.compile(slerp, fullgraph=True)
    torch.testing.assert_close(fused(a, b, t), slerp(a, b, t), atol=1e-6, rtol=1e-6)


def test_channels_last_vae_matches_contiguous(tiny_sd, cases):
    vae = copy.deepcopy(tiny_sd.vae)
    with torch.no_grad():
        nhwc = vae.to(memory_format=torch.channels_last).decode(cases["vae_dec_z"])
        nchw = vae.to(memory_format=torch.contiguous_format).decode(cases["vae_dec_z"])
    torch.testing.assert_close(nhwc, nchw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nhwc, cases["vae_dec_out"], atol=1e-4, rtol=1e-4)


def test_split_batches_match_one_batch(tiny_sd, tiny_controlnet, cases):
    x = torch.cat([cases["unet_x"]] * 2)
    t = torch.tensor([10, 980, 500, 40])
    ctx = torch.cat([cases["unet_context"]] * 2)
    hint, strength = cases["cn_hint"], torch.tensor([1.0, 1.5])
    whole, split = Denoiser(tiny_sd.unet, tiny_controlnet, hint, strength), Denoiser(
        tiny_sd.unet, tiny_controlnet, hint, strength, max_batch=3)
    with torch.no_grad():
        torch.testing.assert_close(split(x, t, ctx), whole(x, t, ctx), atol=1e-5, rtol=1e-5)
    assert (whole.calls, split.calls) == (1, 2)
