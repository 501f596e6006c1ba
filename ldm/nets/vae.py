"""The SD KL autoencoder (ldm `AutoencoderKL` with `diffusionmodules.model.Encoder/Decoder`).

Images in [-1, 1] map to latents 8x smaller with 4 channels. `encode` returns the posterior's
(mean, logvar); latents here are *unscaled*: the pipeline multiplies by its latent scale (0.18215).
"""
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .blocks import Upsample  # nearest x2, then a 3x3 conv: the same module as the UNet's
from .config import VAEConfig


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections (mid-block only)."""

    attention = staticmethod(attention)

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (f(y).flatten(2).transpose(1, 2)[:, None] for f in (self.q, self.k, self.v))  # [B,1,hw,c]
        out = self.attention(q, k, v)[:, 0].transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (the reference's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """One resolution level: res blocks, then an optional resampling layer (named as in the reference)."""

    def __init__(self, channels: list, resample: nn.Module = None, resample_name: str = "downsample"):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(channels, channels[1:]))
        self.resample_name = resample_name
        if resample is not None:
            setattr(self, resample_name, resample)

    def forward(self, x):
        for block in self.block:
            x = block(x)
        return getattr(self, self.resample_name)(x) if hasattr(self, self.resample_name) else x


class Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        ins = [cfg.ch] + widths[:-1]
        last = len(widths) - 1
        self.down = nn.ModuleList(
            Level([i] + [o] * cfg.num_res_blocks, Downsample(o) if lvl != last else None)
            for lvl, (i, o) in enumerate(zip(ins, widths)))
        self.mid = Mid(widths[-1])
        self.norm_out = Normalize(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1])
        # up[i] works at the resolution of down[i]; it is run from the coarsest level (the last) to up[0].
        ins = widths[1:] + [widths[-1]]
        self.up = nn.ModuleList(
            Level([i] + [o] * (cfg.num_res_blocks + 1), Upsample(o) if lvl != 0 else None, "upsample")
            for lvl, (i, o) in enumerate(zip(ins, widths)))
        self.norm_out = Normalize(widths[0])
        self.conv_out = nn.Conv2d(widths[0], cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x):
        """Image [B,3,H,W] in [-1,1] -> posterior (mean, logvar), each [B,4,H/8,W/8], logvar clamped."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        """Unscaled latent [B,4,h,w] -> image [B,3,8h,8w] in about [-1,1] (not clamped)."""
        return self.decoder(self.post_quant_conv(z))
