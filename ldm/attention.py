"""Attention for the model zoo (UNet, ControlNet, VAE, text encoder, CLIP).

SD 2.1 overflows in float16 unless q.k^T and the softmax are computed in float32 (the reference sets
ATTN_PRECISION="fp32"). `attention` is the reference formula with that rule, the one the model files call;
the acceleration layer puts a fused kernel in its place (`ldm.accel.modules.sdpa`).
"""


def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v over [B, heads, L, d] tensors, scores and softmax in float32;
    mask is additive [Lq, Lk]."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def split_heads(x, heads: int):
    """[B, L, heads*d] -> [B, heads, L, d]."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x):
    """[B, heads, L, d] -> [B, L, heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
