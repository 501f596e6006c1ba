"""The network the sampler calls: the UNet, optionally steered by a ControlNet.

`Denoiser(unet, controlnet, hint, strength)(x, t, context)` returns the UNet output. It is the one place
where a caller's inputs take the networks' form: x, context and hint in the weights' dtype, t (a number or
one per sample) as one timestep per sample on x's device. The hint (and a per-sample strength) is given
once per sample and goes through the ControlNet's hint encoder once, at the first step; when the sampler
stacks [uncond; cond] for guidance, the batch is a multiple of that and the hint's features are repeated to
match, so both halves see the same pose (as ControlNet's own sampling does). `max_batch` bounds the batch of
one network call (memory); larger batches are split, and with `pad` every call has exactly `max_batch` rows
(for compiled networks).
"""
import torch


def in_batches(fn, max_batch: int, *tensors, pad: bool = False):
    """`fn` over consecutive slices of at most `max_batch` rows of `tensors` (None stays None), the outputs
    concatenated: what bounds the memory of one network call. `max_batch` None: one call.

    With `pad`, a short slice is filled up to `max_batch` rows with copies of its last row (their outputs
    dropped), so that every call has the same shape and a compiled network compiles once.
    """
    n = tensors[0].shape[0]
    step = max_batch or n
    outs = []
    for i in range(0, n, step):
        part = [None if t is None else t[i:i + step] for t in tensors]
        rows = part[0].shape[0]
        if pad and rows < step:
            part = [None if t is None else torch.cat([t, t[-1:].expand(step - rows, *t.shape[1:])]) for t in part]
        out = fn(*part)[:rows]
        # A network under CUDA graphs returns its graph's own output buffer, which its next call overwrites.
        outs.append(out.clone() if step < n else out)
    return torch.cat(outs)


def _repeat_to(t, batch: int):
    return t if t.shape[0] == batch else t.repeat(batch // t.shape[0], *([1] * (t.dim() - 1)))


class Denoiser:
    def __init__(self, unet, controlnet=None, hint=None, strength=1.0, max_batch: int = None, pad: bool = False):
        self.unet, self.controlnet, self.hint, self.strength = unet, controlnet, hint, strength
        self.max_batch, self.pad = max_batch, pad
        self.dtype = next(unet.parameters()).dtype
        self.calls = 0  # UNet evaluations (one per batch), for run logs
        self._placed = {}  # (device, batch) -> (hint features, strength) there

    def _control(self, device, batch: int) -> tuple:
        """The ControlNet's hint features and strength, repeated to `batch` rows on `device`: the hint is
        copied there and encoded once (per sample, before the repeat), not at every step."""
        if (device, batch) not in self._placed:
            hint = self.hint.to(device, self.dtype)
            features = in_batches(self.controlnet.encode_hint, self.max_batch, hint)
            strength = torch.as_tensor(self.strength, dtype=torch.float32).reshape(-1)
            self._placed[device, batch] = (_repeat_to(features, batch), _repeat_to(strength, batch).to(device))
        return self._placed[device, batch]

    def __call__(self, x, t, context):
        x, context = x.to(self.dtype), context.to(self.dtype)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        features = strength = None
        if self.controlnet is not None and self.hint is not None:
            features, strength = self._control(x.device, x.shape[0])
        return in_batches(self._run, self.max_batch, x, t, context, features, strength, pad=self.pad)

    def _run(self, x, t, context, features, strength):
        control = None if features is None else \
            self.controlnet(x, None, t, context, strength=strength, hint_features=features)
        self.calls += 1
        return self.unet(x, t, context, control=control)
