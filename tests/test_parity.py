"""Numerical parity with golden outputs of the original SD 2.1 and ControlNet code (tiny config, fp32).

Tolerances are the reference README's (atol = rtol = 1e-4 for networks; exact for tokens and embeddings).
"""
import pytest
import torch

import ldm
from ldm.accel import modules as fast
from ldm.nets import attention as attn
from ldm.nets.blocks import timestep_embedding


def close(actual, expected, atol=1e-4, rtol=1e-4):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@torch.no_grad()
def test_unet(tiny_sd, cases):
    close(tiny_sd.unet(cases["unet_x"], cases["unet_t"], cases["unet_context"]), cases["unet_out"])


@torch.no_grad()
def test_vae_encode(tiny_sd, cases):
    mean, logvar = tiny_sd.vae.encode(cases["vae_enc_img"])
    close(mean, cases["vae_enc_mean"])
    close(logvar, cases["vae_enc_logvar"])


@torch.no_grad()
def test_vae_decode(tiny_sd, cases):
    close(tiny_sd.vae.decode(cases["vae_dec_z"]), cases["vae_dec_out"])


@pytest.mark.parametrize("name", ["text", "text_empty", "text_long"])
@torch.no_grad()
def test_text_encoder_penultimate(tiny_sd, cases, name):
    out = tiny_sd.text_encoder(cases[f"{name}_tokens"])
    close(out, cases[f"{name}_out"])


@torch.no_grad()
def test_text_encoder_full_depth_path(tiny_sd, cases):
    close(tiny_sd.text_encoder.encode(cases["text_tokens"], layer="last"), cases["text_out_last_layer_debug"])


def test_tokenizer(cases, case_prompts):
    assert torch.equal(ldm.tokenize(case_prompts["prompts"]), cases["text_tokens"])
    assert torch.equal(ldm.tokenize([case_prompts["empty"]]), cases["text_empty_tokens"])
    assert torch.equal(ldm.tokenize([case_prompts["long"]]), cases["text_long_tokens"])


def test_timestep_embedding(cases):
    # Not bit-exact: CPUs differ in their vectorised sin/cos (an AMX Xeon gives up to 3e-5 here, at arguments
    # up to 999 rad where one float32 ulp of the argument is 6e-5).
    close(timestep_embedding(cases["temb_t"], 320), cases["temb_320"], atol=1e-4, rtol=0)
    close(timestep_embedding(cases["temb_t"], 32), cases["temb_32"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_controlnet_residuals_and_controlled_unet(tiny_sd, tiny_controlnet, cases):
    res = tiny_controlnet(cases["unet_x"], cases["cn_hint"], cases["unet_t"], cases["unet_context"])
    assert len(res) == 13
    for i, r in enumerate(res):
        close(r, cases[f"cn_res_{i:02d}"])
    close(tiny_sd.unet(cases["unet_x"], cases["unet_t"], cases["unet_context"], control=res), cases["cn_out"])


@torch.no_grad()
def test_controlnet_strength_and_hint_batching(tiny_controlnet, cases):
    x, hint, t, ctx = cases["unet_x"], cases["cn_hint"], cases["unet_t"], cases["unet_context"]
    one_hint = tiny_controlnet(x, hint[:1], t, ctx)
    both_first = tiny_controlnet(x, hint[:1].expand(2, -1, -1, -1), t, ctx)
    for a, b in zip(one_hint, both_first):
        assert torch.equal(a, b)
    base = tiny_controlnet(x, hint, t, ctx)
    scaled = tiny_controlnet(x, hint, t, ctx, strength=torch.tensor([0.5, 1.5]))
    for a, b in zip(base, scaled):
        close(b, a * torch.tensor([0.5, 1.5]).view(2, 1, 1, 1), atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_the_plain_path_matches_the_reference(tiny_ckpt, cases):
    """fast=False: the model files alone, reference attention formula and all."""
    plain = ldm.load_checkpoint(tiny_ckpt, fast=False)
    close(plain.unet(cases["unet_x"], cases["unet_t"], cases["unet_context"]), cases["unet_out"])
    close(plain.vae.decode(cases["vae_dec_z"]), cases["vae_dec_out"])
    close(plain.text_encoder(cases["text_tokens"]), cases["text_out"])


@pytest.mark.parametrize("kernel", [attn.attention, fast.sdpa, fast.sdpa_float32, fast.sdpa_chunked])
def test_half_attention_softmax_in_float32(kernel):
    """Scores that overflow float16 (|q.k| > 65504) must still give a finite, correct softmax."""
    q = torch.full((1, 1, 4, 64), 40.0, dtype=torch.float16)
    k = torch.full((1, 1, 4, 64), 40.0, dtype=torch.float16)
    v = torch.randn(1, 1, 4, 64).half()
    expected = v.float().mean(dim=2, keepdim=True).expand(1, 1, 4, 64)
    out = kernel(q, k, v)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    close(out.float(), expected, atol=2e-3, rtol=2e-3)
