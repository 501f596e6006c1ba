"""The OpenCLIP ViT-H/14 text tower (SD 2.x `FrozenOpenCLIPEmbedder`), loaded from `cond_stage_model.model.`.

SD 2.x conditions the UNet on the *penultimate* block's output followed by the final LayerNorm: all 77
token vectors, no pooling, no projection. `encode(tokens, layer="last")` gives the full-depth path, and
`pooled` the CLIP text feature (EOT token through `text_projection`) used for ranking.
"""
import torch
import torch.nn as nn

from .config import TextConfig
from .transformer import Transformer


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, quick_gelu: bool = False):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, 4 * cfg.width, quick_gelu)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))

    def encode(self, tokens, layer: str = "penultimate"):
        """Tokens [B,77] -> per-token features [B,77,width] after `ln_final`."""
        x = self.token_embedding(tokens) + self.positional_embedding.to(self.token_embedding.weight.dtype)
        depth = len(self.transformer.resblocks) - (1 if layer == "penultimate" else 0)
        x = self.transformer(x, causal=True, layers=depth)
        return self.ln_final(x)

    def pooled(self, tokens):
        """CLIP text features [B, embed_dim]: the EOT token (the largest id) of the last layer, projected."""
        x = self.encode(tokens, layer="last")
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    def forward(self, tokens):
        return self.encode(tokens)
