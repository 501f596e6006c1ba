"""The network the sampler calls: the UNet, optionally steered by a ControlNet.

`Denoiser(unet, controlnet, hint, strength)(x, t, context)` returns the UNet output. The hint (and a
per-sample strength) is given once per sample; when the sampler stacks [uncond; cond] for guidance,
the batch is a multiple of that and the hint is repeated to match, so both halves see the same pose
(as ControlNet's own sampling does).
"""
import torch


def _repeat_to(t, batch: int):
    return t if t.shape[0] == batch else t.repeat(batch // t.shape[0], *([1] * (t.dim() - 1)))


class Denoiser:
    def __init__(self, unet, controlnet=None, hint=None, strength=1.0):
        self.unet, self.controlnet, self.hint, self.strength = unet, controlnet, hint, strength
        self.dtype = next(unet.parameters()).dtype
        self.calls = 0  # network evaluations (one per batch), for run logs

    def __call__(self, x, t, context):
        x, context = x.to(self.dtype), context.to(self.dtype)
        control = None
        if self.controlnet is not None and self.hint is not None:
            strength = torch.as_tensor(self.strength, dtype=torch.float32).reshape(-1)
            control = self.controlnet(x, _repeat_to(self.hint.to(x.device), x.shape[0]), t, context,
                                      strength=_repeat_to(strength, x.shape[0]) if strength.numel() > 1 else strength)
        self.calls += 1
        return self.unet(x, t, context, control=control)
