"""LPIPS v0.1 (Zhang et al. 2018, the `lpips` package): a learned perceptual distance between images.

Each image goes through an ImageNet backbone (torchvision's AlexNet or VGG16 `features`); five of its ReLU
outputs are scaled to unit length along the channels, and the distance is the sum over those layers of the
spatial mean of a learned 1x1 projection (`lin0`..`lin4`) of the squared differences. The backbone's names
equal torchvision's checkpoint keys (`features.0.weight`, ...), the heads' the lpips package's
(`lin0.model.1.weight`, ...).

    net = ldm.load_lpips("alex", "alexnet-owt-7be5be79.pth", "lpips/weights/v0.1/alex.pth")
    taps = net.layers(frames)                        # frames [N, 3, H, W] in [-1, 1], each seen once
    steps = net.distance([t[:-1] for t in taps], [t[1:] for t in taps])     # adjacent distances [N - 1]
"""
import torch
import torch.nn as nn

from ..errors import UserError

# Per backbone: torchvision's `features` up to the last tapped ReLU (conv channels, or (channels, kernel,
# stride, padding); "M" = max pool), its max-pool size, and the index after each tapped ReLU.
_ALEX = [(64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
BACKBONES = {"alex": (_ALEX, 3, (2, 5, 8, 10, 12)), "vgg": (_VGG16, 2, (4, 9, 16, 23, 30))}


def _backbone(layout, pool: int) -> nn.Sequential:
    layers, cin = [], 3
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=pool, stride=2))
            continue
        cout, kernel, stride, padding = item if isinstance(item, tuple) else (item, 3, 1, 1)
        layers += [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    """A 1x1 projection to one channel; the Dropout (identity in eval) keeps the file's `model.1` name."""

    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    """`net` 'alex' or 'vgg'. Images are in [-1, 1] (the lpips package's `normalize=False`)."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in BACKBONES:
            raise UserError(f"LPIPS backbone must be one of {', '.join(BACKBONES)}, not {net!r}")
        layout, pool, self.taps = BACKBONES[net]
        self.features = _backbone(layout, pool)  # torchvision's name, so its checkpoint keys load as they are
        channels = [m.out_channels for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d) and i + 2 in self.taps]
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", NetLinLayer(c))
        # The lpips ScalingLayer: ImageNet statistics in [-1, 1] units; constants, not in the weight files.
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([.458, .448, .450]).view(1, 3, 1, 1), persistent=False)

    def layers(self, images) -> list:
        """The five tapped layers of `images`, each scaled to unit length along the channels."""
        x, out, start = (images - self.shift) / self.scale, [], 0
        for end in self.taps:
            x = self.features[start:end](x)
            out.append(x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + 1e-10))
            start = end
        return out

    def distance(self, features_a, features_b) -> torch.Tensor:
        """[B] distances between two lists of per-layer activations (from `layers`)."""
        return sum(getattr(self, f"lin{k}")((a - b) ** 2).mean(dim=(1, 2, 3))
                   for k, (a, b) in enumerate(zip(features_a, features_b)))

    def forward(self, a, b):
        return self.distance(self.layers(a), self.layers(b))
