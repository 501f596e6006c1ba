"""OpenCLIP transformer blocks, shared by the SD 2.x text encoder and the CLIP towers.

Names follow open_clip (`transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.out_proj, ln_2,
mlp.c_fc, mlp.c_proj}`), so checkpoint keys load as they are.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention, merge_heads, split_heads


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP was trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's parameter layout (packed [q; k; v] in_proj) with our attention."""

    attention = staticmethod(attention)

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, causal: bool = False):
        q, k, v = (split_heads(t, self.heads) for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        return self.out_proj(merge_heads(self.attention(q, k, v, causal)))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln_1 x), then x + mlp(ln_2 x)."""

    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_width, quick_gelu)

    def forward(self, x, causal: bool = False):
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, quick_gelu: bool = False):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_width, quick_gelu) for _ in range(layers))

    def forward(self, x, causal: bool = False, layers: int = None):
        """Run the first `layers` blocks (all by default) on batch-first tokens [B, L, width]; `causal`: each
        token attends to itself and the tokens before it (the text tower)."""
        for block in self.resblocks[:layers]:
            x = block(x, causal)
        return x
