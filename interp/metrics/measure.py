"""Measuring a sequence of frames: Table 1's FID and perceptual path length (Section 5.1) and the smoothness
measures of later work, in a choice of feature spaces.

A sequence is the frames 0..N of one run folder. Its steps are the distances between adjacent frames in a
feature space; Table 1's PPL is their sum in Inception v3 space. DiffMorpher reports the sum and the largest
step in LPIPS, AID the evenness 1 - Gini(steps). FID compares the distribution of the input images with that of
the frames. Section 5.1's point stands: all of these favour sequences that look like alpha blending over the
ones people prefer, so they describe a sequence, they do not judge it.

Per-frame vectors (Inception, CLIP) are cached by the sha256 of the frame's PNG, LPIPS steps by the pair of
hashes, each under the sha256 of the weights that made them: a rerun over more runs computes only the new ones.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ldm.errors import UserError
from ldm.load import weights
from ldm.load.safetensors_io import SafetensorsFile, write
from ldm.nets.inception import feature_statistics, frechet_distance

from ..settings import BASELINE_DEFAULTS

SPACES = {
    "inception": "Inception v3 pool features (FID's network), Euclidean distance; Table 1's PPL",
    "lpips-alex": "LPIPS v0.1 on AlexNet (the peers' smoothness measure)",
    "lpips-vgg": "LPIPS v0.1 on VGG16",
    "clip": "CLIP image embeddings of unit length, Euclidean distance",
}
BACKBONES = {"alex": "alexnet", "vgg": "vgg16"}


def add_feature_args(p, clip: bool = True) -> None:
    """The weights of each feature space: paths or catalog names (`clip=False` where --clip exists already)."""
    p.add_argument("--inception", default="inception-fid", help="FID's Inception v3 (pytorch-fid's "
                   "pt_inception-2015-12-05 .pth, or a .safetensors of it): path or catalog name")
    p.add_argument("--lpips-backbone", default=None, help="LPIPS backbone (torchvision's AlexNet or VGG16 .pth): path "
                   "or catalog name (default: alexnet for lpips-alex, vgg16 for lpips-vgg)")
    p.add_argument("--lpips-heads", default=None, help="LPIPS v0.1 linear heads (.pth): path or catalog name "
                   "(default: lpips-alex-v0.1 / lpips-vgg-v0.1)")
    if clip:
        p.add_argument("--clip", default="clip-vit-l14-openai", help="CLIP for the clip space: path or catalog name")
        p.add_argument("--clip-config", default=None, help="open_clip model-config JSON for a non-standard CLIP")


def parse_spaces(text: str) -> tuple:
    """'inception,lpips-alex' -> ('inception', 'lpips-alex'), each a known space."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SPACES]
    if unknown or not names:
        raise UserError(f"unknown feature space {', '.join(unknown) or repr(text)}: use {', '.join(SPACES)} "
                        "(several: comma-separated)")
    return names


AUTHORS_LABEL = " (authors' defaults)"  # a baseline run with --baselines authors, beside the same scheme run equal


@dataclass(frozen=True)
class FeatureFiles:
    """The weights of each feature space: paths or catalog names."""
    inception: str = "inception-fid"
    lpips_backbone: str = None  # default: alexnet for lpips-alex, vgg16 for lpips-vgg
    lpips_heads: str = None     # default: lpips-alex-v0.1 / lpips-vgg-v0.1
    clip: str = "clip-vit-l14-openai"
    clip_config: str = None

    @classmethod
    def of(cls, args, **changes) -> "FeatureFiles":
        """The files of a command's `add_feature_args` options (`changes`: the clip of a run's own --clip)."""
        fields = {f: getattr(args, f) for f in ("inception", "lpips_backbone", "lpips_heads", "clip", "clip_config")
                  if hasattr(args, f)}
        return cls(**{**fields, **changes})


def wanted_files(spaces, args: FeatureFiles) -> dict:
    """{space: [(path or catalog name, kind), ...]}: the files each space loads."""
    lpips = [s for s in spaces if s.startswith("lpips-")]
    if len(lpips) > 1 and (args.lpips_backbone or args.lpips_heads):
        raise UserError("--lpips-backbone and --lpips-heads name the files of one LPIPS network: measure "
                        "lpips-alex and lpips-vgg in separate runs to give both")
    files = {}
    for space in spaces:
        if space == "inception":
            files[space] = [(args.inception, "inception")]
        elif space == "clip":
            files[space] = [(args.clip, "clip")]
        else:
            net = space.removeprefix("lpips-")
            files[space] = [(args.lpips_backbone or BACKBONES[net], "lpips-backbone"),
                            (args.lpips_heads or f"lpips-{net}-v0.1", "lpips-heads")]
    return files


# --- metrics of one path ------------------------------------------------------------------------------------

def gini(values) -> float:
    """Gini coefficient of non-negative numbers: 0 when all are equal, (n - 1) / n when one holds everything."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or x.sum() == 0:
        return 0.0
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size ** 2 * x.mean()))


def path_metrics(steps) -> dict:
    """A path's length (Table 1's PPL in Inception space; DiffMorpher's total LPIPS), its largest step and
    AID's smoothness 1 - Gini(steps)."""
    return {"total": float(np.sum(steps)), "max": float(np.max(steps)), "smoothness": 1.0 - gini(steps)}


def input_frames(sequences) -> list:
    """The first and last frames (the input images) of `sequences` (each a list of frames), each image once."""
    return list({f.sha256: f for frames in sequences for f in (frames[0], frames[-1])}.values())


def fid(reference: torch.Tensor, samples: torch.Tensor):
    """FID between two sets of Inception vectors (rows); None when either set is too small for a covariance."""
    if len(reference) < 2 or len(samples) < 2:
        return None
    return frechet_distance(*feature_statistics(reference.double().numpy()), *feature_statistics(samples.double().numpy()))


# --- frames and their sequences -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """A frame to measure: a PNG on disk, or a picture held in memory (`image`); `sha256` names its content."""
    path: str
    sha256: str
    image: Image.Image = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, path) -> "Frame":
        with open(path, "rb") as f:
            return cls(os.fspath(path), hashlib.sha256(f.read()).hexdigest())

    @classmethod
    def of_image(cls, image: Image.Image, name: str) -> "Frame":
        rgb = image.convert("RGB")
        return cls(name, hashlib.sha256(repr(rgb.size).encode() + rgb.tobytes()).hexdigest(), rgb)

    def tensor(self) -> torch.Tensor:
        """[1, 3, H, W] float32 in [0, 1]."""
        if self.image is not None:
            a = np.asarray(self.image, dtype=np.float32) / 255.0
        else:
            with Image.open(self.path) as im:
                a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(a.copy()).permute(2, 0, 1)[None]


@dataclass(frozen=True)
class Sequence:
    """The frames 0..N of one finished run folder, where they sit (`positions`), and what made them."""
    folder: str
    scheme: str
    pair: str       # the two inputs, as named on the command line
    pair_key: str   # the inputs' content (their sha256): the same pair under any scheme
    positions: tuple
    frames: tuple

    @classmethod
    def read(cls, folder) -> "Sequence":
        path = os.path.join(folder, "run.json")
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
            status = state.get("status")
        except (OSError, ValueError, AttributeError) as e:
            raise UserError(f"{path} is not a run.json of interpolate ({type(e).__name__}: {e})") from None
        if status != "complete":
            raise UserError(f"{folder} is not finished (status {status!r}): run its command again to finish it, "
                            "or leave it out")
        try:
            count = state["settings"]["frames"]
            entries = [state["frames"][str(i)] for i in range(count)]
            frames = tuple(Frame.of(os.path.join(folder, e["file"])) for e in entries)
            positions = tuple(float(e["position"]) for e in entries)
            scheme, inputs, key = state["scheme"], state["inputs"], "-".join(state["settings"]["input_sha256"])
            if state["settings"].get("baselines") == "authors" and scheme in BASELINE_DEFAULTS:
                scheme += AUTHORS_LABEL  # Table 1 as the authors ran it: the baseline at its own defaults
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{folder} lacks part of its finished run ({type(e).__name__}: {e}): make it again "
                            "(its command with --overwrite) or leave it out") from None
        pair = " -> ".join(os.path.basename(p) for p in inputs)
        return cls(os.fspath(folder), scheme, pair, key, positions, frames)


def find_runs(paths) -> list:
    """The run folders in `paths`: each one itself if it holds a run.json, else every folder below it that does
    (an interp-batch output, a chain's segments), in name order."""
    found = []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            raise UserError(f"{path} is not a folder: give run folders of interpolate (or folders holding them)")
        if os.path.isfile(os.path.join(path, "run.json")):
            found.append(path)
            continue
        below = sorted(root for root, _, files in os.walk(path) if "run.json" in files)
        if not below:
            raise UserError(f"{path} holds no run of interpolate (no run.json in it or below it)")
        found += below
    return list(dict.fromkeys(found))


# --- feature spaces -----------------------------------------------------------------------------------------

class Cache:
    """Tensors by key in one safetensors file, read at start and written back (atomically) by `save`."""

    def __init__(self, path):
        self.path, self.items, self.added = path, {}, False
        if path and os.path.isfile(path):
            try:
                st = SafetensorsFile(path)
                self.items = dict(st.read_many(st.keys()))
            except (OSError, ValueError):
                self.items = {}  # a damaged cache is only recomputed

    def get(self, key):
        return self.items.get(key)

    def put(self, key, value: torch.Tensor) -> None:
        self.items[key] = value.detach().float().cpu().contiguous()
        self.added = True

    def save(self) -> None:
        if self.path and self.added:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            write(self.path, {k: (tuple(v.shape), v.dtype) for k, v in self.items.items()}, self.items.__getitem__)
            self.added = False


class VectorSpace:
    """Frames as vectors (`encode`: images [B, 3, H, W] in [0, 1] -> [B, D]); a step is a Euclidean distance."""

    def __init__(self, ident: str, encode, cache: Cache, batch: int = 8):
        self.ident, self.encode, self.cache, self.batch = ident, encode, cache, batch

    @torch.no_grad()
    def vectors(self, frames) -> torch.Tensor:
        todo = [f for f in dict.fromkeys(frames) if self.cache.get(f"{self.ident}/{f.sha256}") is None]
        for start in range(0, len(todo), self.batch):
            chunk = [(f, f.tensor()) for f in todo[start:start + self.batch]]
            for shape in dict.fromkeys(x.shape for _, x in chunk):  # runs of several pairs differ in size
                same = [(f, x) for f, x in chunk if x.shape == shape]
                for (frame, _), v in zip(same, self.encode(torch.cat([x for _, x in same]))):
                    self.cache.put(f"{self.ident}/{frame.sha256}", v)
        return torch.stack([self.cache.get(f"{self.ident}/{f.sha256}") for f in frames])

    def steps(self, frames) -> list:
        v = self.vectors(frames).double()
        return (v[1:] - v[:-1]).norm(dim=1).tolist()


class LPIPSSpace:
    """LPIPS between adjacent frames (each frame through the network once, only two frames' layers held at a
    time), cached per pair of frames."""

    def __init__(self, ident: str, net, cache: Cache, device):
        self.ident, self.net, self.cache, self.device = ident, net, cache, device

    @torch.no_grad()
    def steps(self, frames) -> list:
        keys = [f"{self.ident}/{a.sha256}/{b.sha256}" for a, b in zip(frames, frames[1:])]
        previous = None
        for k, frame in enumerate(frames):
            todo = [j for j in (k - 1, k) if 0 <= j < len(keys) and self.cache.get(keys[j]) is None]
            taps = self.net.layers(frame.tensor().to(self.device) * 2 - 1) if todo else None
            if k and self.cache.get(keys[k - 1]) is None:
                self.cache.put(keys[k - 1], self.net.distance(previous, taps).reshape(()))
            previous = taps
        return [float(self.cache.get(k)) for k in keys]


def _ident(space: str, paths) -> str:
    """A space's cache name: its name and the sha256 of the weights that define it."""
    return f"{space}-" + hashlib.sha256("".join(weights.file_sha256(p) for p in paths).encode()).hexdigest()[:16]


def load_spaces(spaces, paths: dict, args: FeatureFiles, device, cache: Cache) -> dict:
    """{space: VectorSpace or LPIPSSpace} from the resolved weight files `paths` ({space: [path, ...]})."""
    loaded = {}
    for space in spaces:
        ident = _ident(space, paths[space])
        if space == "inception":
            from ldm.load.inception import load_inception
            net = load_inception(paths[space][0], device=device)
            loaded[space] = VectorSpace(ident, lambda x, net=net: net(x.to(device)).float().cpu(), cache)
        elif space == "clip":
            from ldm.clip_transform import clip_preprocess
            from ldm.load.clip import load_clip
            clip = load_clip(paths[space][0], config=args.clip_config, device=device)

            def encode(x, clip=clip):
                v = clip.encode_image(clip_preprocess(x, clip.image_size, value_range=(0.0, 1.0)).to(device)).float()
                return torch.nn.functional.normalize(v, dim=-1).cpu()
            loaded[space] = VectorSpace(ident, encode, cache)
        else:
            from ldm.load.lpips import load_lpips
            net = load_lpips(space.removeprefix("lpips-"), *paths[space], device=device)
            loaded[space] = LPIPSSpace(ident, net, cache, device)
    return loaded
