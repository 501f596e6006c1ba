"""ControlNet for SD 2.x (ControlNet's `cldm.ControlNet`, `cldm_v21.yaml`), loaded from `control_model.*`.

A trainable copy of the UNet's encoder half reads the noisy latent plus a condition image (for us an
OpenPose skeleton drawing, RGB in [0, 1] at full image resolution). An 8-conv hint encoder brings the
image down 8x to the latent grid and is added after the first input block; every input block's output
and the middle block's output leave through a 1x1 "zero" conv as one of 13 residuals, which the UNet
adds to its skip connections (`UNetModel.forward(control=...)`).
"""
import torch
import torch.nn as nn

from .blocks import TimestepEmbedSequential
from .config import UNetConfig
from .unet import Encoder


def _hint_encoder(hint_channels: int, out_channels: int) -> TimestepEmbedSequential:
    """3x3 convs 3->16->16->32->32->96->96->256->out with SiLU between; convs 3, 5 and 7 have stride 2."""
    widths = [hint_channels, 16, 16, 32, 32, 96, 96, 256, out_channels]
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Conv2d(a, b, 3, padding=1, stride=2 if i in (2, 4, 6) else 1))
        if i < len(widths) - 2:
            layers.append(nn.SiLU())
    return TimestepEmbedSequential(*layers)


class ControlNet(Encoder):
    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg)
        self.input_hint_block = _hint_encoder(cfg.hint_channels, cfg.model_channels)
        self.zero_convs = nn.ModuleList(TimestepEmbedSequential(nn.Conv2d(ch, ch, 1)) for ch in self.input_channels)
        self.middle_block_out = TimestepEmbedSequential(nn.Conv2d(self.channels, self.channels, 1))

    def encode_hint(self, hint):
        """The hint image [B, 3, 8h, 8w] in [0, 1] -> the features [B, C, h, w] added after the first input
        block. They depend on the hint alone, so a sampler encodes each hint once, not at every step."""
        return self.input_hint_block(hint, None, None)

    def forward(self, x, hint, t, context, strength=1.0, hint_features=None):
        """13 residuals for `unet(..., control=)`: one per input block, then the middle block's.

        Inputs as for the UNet, and hint [B or 1, 3, 8h, 8w] in [0, 1] in x's dtype, or instead its
        `hint_features` (`encode_hint(hint)`, [B or 1, C, h, w]); `strength` (a float or one value per
        sample) scales them all.
        """
        emb = self.embed_time(t, x.dtype)
        guided_hint = self.encode_hint(hint) if hint_features is None else hint_features
        h, outs = x, []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            outs.append(zero_conv(h, emb, context))
        outs.append(self.middle_block_out(self.middle_block(h, emb, context), emb, context))
        scale = torch.as_tensor(strength, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        return [r * scale for r in outs]
