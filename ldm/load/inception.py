"""Loading pytorch-fid's Inception v3 weights into `ldm.nets.inception.InceptionV3`."""
from ..nets.inception import InceptionV3
from .state_dicts import load_parts


def load_inception(path, device="cpu") -> InceptionV3:
    """pytorch-fid's Inception weights (`pt_inception-2015-12-05-6726825d.pth` or a .safetensors of it),
    strictly, in eval mode."""
    return load_parts(InceptionV3(), [(path, "", "pytorch-fid Inception v3", ("fc.",))], device)
