"""The networks a run uses: which files (`ModelFiles`, catalog names or paths, and how to load them) and the
networks of one process (`Models`), loaded on first use and shared by every run that asks for the same ones:
a pipeline makes one run with them, `interp-batch` many runs (and the segments of a chain) in a row. One
network is kept per role; a run that asks for a different one (another checkpoint, device or dtype) replaces it.
"""
import dataclasses
from dataclasses import dataclass

import pose
from ldm.accel import compile_model
from ldm.load.model import DEFAULT_MODEL, ModelOptions, default_device, load_model


@dataclass(frozen=True)
class ModelFiles:
    """Which networks to load, and how: each a weights-catalog name (downloaded on first use) or a path."""
    sd: str = DEFAULT_MODEL                       # SD 2.1 checkpoint
    controlnet: str = "controlnet-sd21-openpose"  # pose guidance (Section 4.3)
    clip: str = "clip-vit-l14-openai"             # candidate ranking (Section 4.4)
    clip_config: str = None                       # open_clip model-config JSON for a non-standard CLIP
    openpose: tuple = pose.CATALOG                # the OpenPose model's files
    config: str = None                            # architecture JSON for non-SD-2.1 checkpoints
    prediction: str = None                        # "eps" or "v": overrides the checkpoint's
    device: str = default_device()
    dtype: str = "auto"
    compile: bool = False                         # torch.compile the UNet and ControlNet

    def sd_options(self, path=None) -> ModelOptions:
        """How ldm loads the SD checkpoint (`path`: already resolved)."""
        return ModelOptions(ckpt=str(path or self.sd), config=self.config, prediction=self.prediction,
                            device=self.device, dtype=self.dtype, compile=self.compile)

    def needed(self, settings, keypoints_given: bool = False) -> dict:
        """{role: [(catalog name or path, kind), ...]} of every network a run of `settings` (an
        `interp.Settings`) loads: SD; the ControlNet and OpenPose for pose guidance (OpenPose only to find the
        keypoints not given); CLIP where candidates are ranked."""
        plan = settings.plan()
        wanted = {"sd": [(self.sd, "sd")]}
        if settings.pose and plan.scheme.denoises:
            wanted["controlnet"] = [(self.controlnet, "controlnet")]
            if not keypoints_given:
                wanted["openpose"] = [(m, "openpose") for m in self.openpose]
        if any(k > 1 for k in plan.candidates):
            wanted["clip"] = [(self.clip, "clip")]
        return wanted

    def resolved(self, paths: dict) -> "ModelFiles":
        """These files with the roles in `paths` ({role: [path, ...]}, as `needed` lists them) replaced."""
        return dataclasses.replace(self, **{role: tuple(map(str, p)) if role == "openpose" else str(p[0])
                                            for role, p in paths.items()})


class Models:
    def __init__(self):
        self._held = {}  # role -> (key, network)

    def _get(self, role: str, key: tuple, load):
        held = self._held.get(role)
        if held is None or held[0] != key:
            self._held.pop(role, None)  # the old one is freed before the new one loads
            self._held[role] = (key, load())
        return self._held[role][1]

    def sd(self, options: ModelOptions):
        """The SD checkpoint of `options` (its path already resolved)."""
        return self._get("sd", dataclasses.astuple(options), lambda: load_model(options))

    def controlnet(self, path, sd, files: ModelFiles):
        """The ControlNet at `path`, on the device and in the dtype of `sd`."""
        def load():
            from ldm.load.controlnet import load_controlnet
            net = load_controlnet(path, device=sd.device, dtype=sd.dtype, config=files.config)
            if files.compile:
                compile_model(net, sd.device)
            return net
        return self._get("controlnet", (str(path), str(sd.device), sd.dtype, files.config, files.compile), load)

    def clip(self, path, config, device):
        def load():
            from ldm.load.clip import load_clip
            return load_clip(path, config=config, device=device)
        return self._get("clip", (str(path), config, str(device)), load)

    def openpose(self, files):
        return self._get("openpose", tuple(map(str, files)), lambda: pose.load(files))
