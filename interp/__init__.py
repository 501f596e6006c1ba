"""interp: interpolating between images with diffusion models (Wang & Golland 2023), as a library.

    import interp
    pipe = interp.Pipeline.from_files(sd="sd21-512-base", device="cuda")    # catalog names or paths
    result = pipe(image_a, image_b, prompt="a photo of a person", frames=17, seed=0)
    result.frames                       # PIL images, both inputs included
    result.record                       # rounds, scores, poses, notes, timings: what run.json holds

    interp.Pipeline(sd, controlnet=cn, clip=clip, openpose=net)    # networks already loaded (ldm.load_*)
    interp.Settings(frames=9, scheme="did", candidates=1)          # every setting of the method, with defaults
    job = pipe.prepare(a, b, settings); job.run(done=..., choose=..., on_frame=..., on_progress=...)
    job.revise(5)                                                  # frame 5 and its descendants again
    pipe.chain([a, b, c], settings)                                # one sequence through several images

Nothing is written or printed unless a hook does it. The commands (`interpolate`, `interp-studio`,
`interp-batch`, `interp-retime`, `interp-eval`) are apps on this library in `interp.apps`.
"""
from .frames import Frame, NoiseLevel, descendants, frame_tree, noise_levels
from .models import ModelFiles, Models
from .pipeline import Cancelled, Interpolation, Pipeline, Result
from .schedules import SCHEDULES, ease, even_positions, interpolation_positions, uniform
from .schemes import SCHEMES, Plan, scheme
from .settings import Settings
from .slerp import lerp, slerp
from .steering import Candidates, Steering
from .warp import Warp, warp_latent

__all__ = ["Pipeline", "Interpolation", "Result", "Cancelled", "Settings", "ModelFiles", "Models", "Candidates",
           "Steering", "Frame", "NoiseLevel", "descendants", "frame_tree", "noise_levels", "SCHEDULES", "ease",
           "even_positions", "interpolation_positions", "uniform", "SCHEMES", "Plan", "scheme", "lerp", "slerp",
           "Warp", "warp_latent"]
