"""Attention for the model zoo (UNet, ControlNet, VAE, text encoder, CLIP).

SD 2.1 overflows in float16 unless q.k^T and the softmax are computed in float32 (the reference sets
ATTN_PRECISION="fp32"). `attention` is the reference formula with that rule, the one the model files call;
the acceleration layer (`ldm.accel`) puts one of the fused kernels below in its place.
"""
import torch.nn.functional as F


def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v over [B, heads, L, d] tensors, scores and softmax in float32;
    mask is additive [Lq, Lk]."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def sdpa(q, k, v, mask=None):
    """torch's fused scaled_dot_product_attention, for kernels that accumulate half inputs in float32
    (CUDA's flash / memory-efficient kernels and the CPU flash kernel do)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))


def sdpa_float32(q, k, v, mask=None):
    """The fused kernel on float32 copies of half inputs, for backends whose half kernels may not."""
    return sdpa(q.float(), k.float(), v.float(), mask).to(q.dtype)


def split_heads(x, heads: int):
    """[B, L, heads*d] -> [B, heads, L, d]."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x):
    """[B, heads, L, d] -> [B, L, heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
