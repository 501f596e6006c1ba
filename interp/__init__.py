"""interp: interpolating between images with diffusion models (Wang & Golland 2023)."""
from .frames import Frame, NoiseLevel, frame_tree, noise_levels
from .schedules import SCHEDULES, ease, interpolation_positions, uniform
from .slerp import lerp, slerp
from .warp import Warp, warp_latent
from .output import RunDir
from .schemes import SCHEMES, Plan, scheme

__all__ = ["Frame", "NoiseLevel", "frame_tree", "noise_levels", "SCHEDULES", "ease", "interpolation_positions",
           "uniform", "lerp", "slerp", "Warp", "warp_latent", "RunDir", "SCHEMES", "Plan", "scheme"]
