"""The one attention function of the model zoo (UNet, ControlNet, VAE, text encoder, CLIP).

SD 2.1 overflows in float16 unless q.k^T and the softmax are computed in float32 (the reference sets
ATTN_PRECISION="fp32"); both paths below honour that for every input dtype.

* ``sdpa`` (default): torch's fused scaled_dot_product_attention (flash / memory-efficient kernels on
  CUDA). Those kernels accumulate q.k^T and the softmax in float32 for half inputs; on other devices
  half inputs are upcast first so the guarantee does not depend on the backend.
* ``math``: the textbook formula, kept for reading and auditing. Select it with
  ``set_backend("math")`` or ``SD_INTERP_ATTENTION=math``; the tests compare the two.
"""
import os

import torch
import torch.nn.functional as F

_BACKEND = os.environ.get("SD_INTERP_ATTENTION", "sdpa")


def set_backend(name: str) -> None:
    global _BACKEND
    if name not in ("sdpa", "math"):
        raise ValueError(f"attention backend must be 'sdpa' or 'math', not {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v over [B, heads, L, d] tensors; mask is additive [Lq, Lk]."""
    if _BACKEND == "math":
        scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores + mask
        return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)
    dtype = q.dtype
    if dtype != torch.float32 and q.device.type != "cuda":
        q, k, v = q.float(), k.float(), v.float()
    mask = None if mask is None else mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).to(dtype)


def split_heads(x, heads: int):
    """[B, L, heads*d] -> [B, heads, L, d]."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x):
    """[B, heads, L, d] -> [B, L, heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
