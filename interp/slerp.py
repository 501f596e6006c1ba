"""Spherical and linear interpolation of latents, text embeddings, poses and warp amounts.

Both functions take the position `t` in one of two forms:

* a float (or 0-d tensor): each of `a` and `b` is one vector, the whole tensor flattened;
* a 1-D tensor [B]: the leading dim is the batch, row i of `a` and `b` (the rest flattened) is
  one vector, interpolated at t[i]. Rows of size 1 broadcast, so one pair can be evaluated at
  B positions at once.

`a` and `b` broadcast against each other. The arithmetic runs in at least float32 (half and
bfloat16 inputs are upcast) and the result comes back in the inputs' dtype.

Everything is tensor arithmetic with no host syncs, so `torch.compile` can fuse a call.
"""
import torch

# Above this |cos angle| slerp is numerically unstable and nearly equal to lerp anyway
# (the threshold of the widely used Stable Diffusion slerp).
PARALLEL_COS = 0.9995


def _prepare(a, b, t):
    """Broadcast a, b, t; return (a, b) as [rows, D] in the compute dtype, t as [rows, 1], the
    output shape and dtype."""
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    compute = torch.promote_types(out_dtype, torch.float32)
    t = torch.as_tensor(t, dtype=compute, device=a.device)
    if t.dim() > 1:
        raise ValueError(f"t must be a float or a 1-D tensor of per-sample positions, got shape {tuple(t.shape)}")
    per_sample = t.dim() == 1
    shape = torch.broadcast_shapes(a.shape, b.shape)
    if per_sample:
        shape = torch.broadcast_shapes(shape, (t.shape[0],) + (1,) * (len(shape) - 1))
    rows = shape[0] if per_sample else 1
    a, b = (x.to(compute).expand(shape).reshape(rows, -1) for x in (a, b))
    return a, b, t.expand(rows).reshape(rows, 1), shape, out_dtype


def lerp(a: torch.Tensor, b: torch.Tensor, t) -> torch.Tensor:
    """(1 - t) a + t b, exact at t = 0 and t = 1."""
    a, b, t, shape, dtype = _prepare(a, b, t)
    return torch.lerp(a, b, t).reshape(shape).to(dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t) -> torch.Tensor:
    """Spherical interpolation (Shoemake's formula on the unnormalised vectors):

        slerp(a, b, t) = sin((1 - t) theta) / sin(theta) a + sin(t theta) / sin(theta) b,
        cos(theta) = <a, b> / (|a| |b|).

    It follows the great circle for equal norms (so the norm stays constant) and is the usual
    slerp formula otherwise. When the vectors are (anti)parallel (|cos theta| > PARALLEL_COS) or
    either is zero (the angle is undefined) it falls back to `lerp`. t = 0 gives a and t = 1
    gives b exactly.
    """
    a, b, t, shape, dtype = _prepare(a, b, t)
    norm_a = torch.linalg.vector_norm(a, dim=1, keepdim=True)
    norm_b = torch.linalg.vector_norm(b, dim=1, keepdim=True)
    tiny = torch.finfo(a.dtype).tiny
    cos = ((a / norm_a.clamp_min(tiny)) * (b / norm_b.clamp_min(tiny))).sum(dim=1, keepdim=True)
    use_lerp = (cos.abs() > PARALLEL_COS) | (norm_a == 0) | (norm_b == 0)
    # Where lerp is used, give the unused spherical branch a safe right angle so that neither
    # values nor gradients pick up NaNs from acos'(+-1) or 1 / sin(0); elsewhere |cos| < 1.
    theta = torch.acos(torch.where(use_lerp, torch.zeros_like(cos), cos))
    sin_theta = torch.sin(theta)
    # Coefficients first, so that t = 0 and t = 1 give exactly (1, 0) and (0, 1).
    spherical = torch.sin(theta - t * theta) / sin_theta * a + torch.sin(t * theta) / sin_theta * b
    out = torch.where(use_lerp, torch.lerp(a, b, t), spherical)
    return out.reshape(shape).to(dtype)
