"""Loading LPIPS v0.1 (torchvision's backbone file and the lpips package's heads) into `ldm.nets.lpips.LPIPS`."""
from ..nets.lpips import LPIPS
from .state_dicts import load_parts


def load_lpips(net, backbone_path, heads_path, device="cpu") -> LPIPS:
    """LPIPS v0.1 from torchvision's backbone file (`alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth`, whose
    `classifier.*` LPIPS does not use) and the lpips package's heads (`weights/v0.1/alex.pth` / `vgg.pth`)."""
    name = {"alex": "AlexNet", "vgg": "VGG16"}.get(net, net)
    return load_parts(LPIPS(net), [(backbone_path, "features.", f"torchvision {name}", ("classifier.",)),
                                   (heads_path, "lin", f"LPIPS {net} heads", ())], device)
