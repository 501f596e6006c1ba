"""Attention for the model zoo (UNet, ControlNet, VAE, text encoder, CLIP).

SD 2.1 overflows in float16 unless q.k^T and the softmax are computed in float32 (the reference sets
ATTN_PRECISION="fp32"). `attention` is the reference formula with that rule, the one the model files call;
the acceleration layer puts a fused kernel in its place (`ldm.accel.modules.sdpa`).
"""
import torch


def attention(q, k, v, causal: bool = False):
    """softmax(q k^T / sqrt(d)) v over [B, heads, L, d] tensors, scores and softmax in float32; `causal`:
    query i attends to keys 0..i only (the text encoder's mask)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        scores = scores + torch.full(scores.shape[-2:], float("-inf"), device=q.device).triu(1)
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def split_heads(x, heads: int):
    """[B, L, heads*d] -> [B, heads, L, d]."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x):
    """[B, heads, L, d] -> [B, L, heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
