"""The SD 2.x denoising UNet (ldm `openaimodel.UNetModel`), with ControlNet residuals.

Shape of the network (SD 2.1: 320 channels, mults 1,2,4,4, 2 res blocks, attention at ds 1,2,4):

    input_blocks  conv_in, then per level 2 x [ResBlock (+ SpatialTransformer)] and a Downsample
    middle_block  ResBlock, SpatialTransformer, ResBlock
    output_blocks per level (coarse to fine) 3 x [ResBlock on cat(h, skip) (+ transformer)] and an Upsample
    out           GroupNorm, SiLU, conv to the latent channels
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .blocks import (Downsample, GroupNorm32, ResBlock, SpatialTransformer, TimestepEmbedSequential,
                     Upsample, timestep_embedding)
from .config import UNetConfig


def _transformer(cfg: UNetConfig, ch: int) -> SpatialTransformer:
    heads = ch // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads
    return SpatialTransformer(ch, heads, ch // heads, cfg.transformer_depth, cfg.context_dim)


class Encoder(nn.Module):
    """Time embedding, input blocks and middle block: the half the ControlNet copies.

    `input_channels` lists the channels each input block emits (the skips the decoder consumes).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        mc, emb = cfg.model_channels, cfg.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        blocks = [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))]
        self.input_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(_transformer(cfg, ch))
                blocks.append(TimestepEmbedSequential(*layers))
                self.input_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(Downsample(ch)))
                self.input_channels.append(ch)
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb, ch), _transformer(cfg, ch), ResBlock(ch, emb, ch))
        self.channels, self.ds = ch, ds

    def embed_time(self, t, dtype):
        """The time embedding in `dtype`: the sinusoids and the time MLP in float32 whatever the weights'
        dtype, as ldm's float16 mode (`convert_to_fp16`, which converts the blocks only) keeps `time_embed`
        in float32. Rounded to bfloat16 first, the slow sinusoids of neighbouring timesteps would be equal."""
        emb = timestep_embedding(t, self.time_embed[0].in_features)
        for layer in self.time_embed:
            emb = layer(emb) if not isinstance(layer, nn.Linear) else \
                F.linear(emb, layer.weight.float(), layer.bias.float())
        return emb.to(dtype)


class UNetModel(Encoder):
    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg)
        mc, emb = cfg.model_channels, cfg.model_channels * 4
        skips, ch, ds = list(self.input_channels), self.channels, self.ds
        blocks = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(_transformer(cfg, ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        # Recompute each block's activations in the backward pass instead of storing them (textual
        # inversion backpropagates through the UNet into the text embedding).
        self.gradient_checkpointing = False

    def _block(self, block, h, emb, context):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)

    def forward(self, x, t, context, control=None):
        """Predict eps or v for latents x [B,4,h,w] at timesteps t [B] given text context [B,77,C] in x's dtype
        (as the reference; `ldm.sample.denoiser.Denoiser` brings a sampler's inputs to this form).

        `control` is the ControlNet's list of 13 residuals (12 input skips, then the middle block's);
        as in ControlNet's ControlledUnetModel they are consumed from the end: the middle residual is
        added after the middle block, and output block i adds residual 11-i to its skip.
        """
        emb = self.embed_time(t, x.dtype)
        control = None if control is None else list(control)
        h, skips = x, []
        for block in self.input_blocks:
            h = self._block(block, h, emb, context)
            skips.append(h)
        h = self._block(self.middle_block, h, emb, context)
        if control is not None:
            h = h + control.pop()
        for block in self.output_blocks:
            skip = skips.pop()
            if control is not None:
                skip = skip + control.pop()
            h = self._block(block, torch.cat([h, skip], dim=1), emb, context)
        return self.out(h)
