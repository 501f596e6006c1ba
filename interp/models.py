"""The networks of one process, loaded on first use and shared by every run that asks for the same ones:
`interpolate` makes one run with them, `interp-batch` many runs (and the segments of a chain) in a row.
One network is kept per role; a run that asks for a different one (another checkpoint, device or dtype)
replaces it."""
from ldm.accel import compile_model
from ldm.runtime import load_model


class Models:
    def __init__(self):
        self._held = {}  # role -> (key, network)

    def _get(self, role: str, key: tuple, load):
        held = self._held.get(role)
        if held is None or held[0] != key:
            self._held.pop(role, None)  # the old one is freed before the new one loads
            self._held[role] = (key, load())
        return self._held[role][1]

    def sd(self, s, path):
        """The SD checkpoint at `path` with the model options of settings `s` (device, dtype, config...)."""
        return self._get("sd", (str(path), s.device, s.dtype, s.prediction, s.config, s.compile),
                         lambda: load_model(s, path))

    def controlnet(self, s, path, sd):
        """The ControlNet at `path`, on the device and in the dtype of `sd`."""
        def load():
            from ldm.controlnet import load_controlnet
            net = load_controlnet(path, device=sd.device, dtype=sd.dtype, config=s.config)
            if s.compile:
                compile_model(net, sd.device)
            return net
        return self._get("controlnet", (str(path), str(sd.device), sd.dtype, s.config, s.compile), load)

    def clip(self, s, path, device):
        def load():
            from ldm.clip import load_clip
            return load_clip(path, config=s.clip_config, device=device)
        return self._get("clip", (str(path), s.clip_config, str(device)), load)

    def openpose(self, files):
        def load():
            import pose
            return pose.load(files)
        return self._get("openpose", tuple(map(str, files)), load)

