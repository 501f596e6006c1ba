"""The command line of `interpolate` (and the rows of `interp-batch`): parsed once into `Options`, which hold
the method's `interp.Settings`, the networks' `interp.ModelFiles`, and what only the command has (where the run
folder goes, the studio, re-timing, fetching). The options that change the frames default to the method's own
defaults (`interp.Settings`); `--preset NAME` (and `--preview`) takes a profile's values for those not given, and
`--baselines authors` a Table 1 baseline's own defaults in the authors' code.
"""
import argparse
import dataclasses
import json
import os
from dataclasses import dataclass

from ldm.accel import COMPILED_BATCH
from ldm.errors import UserError
from ldm.runtime import Parser, add_model_args, number

from ..metrics.measure import SPACES, FeatureFiles, add_feature_args
from ..models import ModelFiles
from ..schedules import SCHEDULES
from ..schemes import ALIASES, SCHEMES
from ..schemes import scheme as find_scheme
from ..settings import BASELINE_DEFAULTS, PRESETS, Settings
from ..warp import Warp

DEFAULTS = Settings()
# Asked for in the options, but recorded in run.json as what they came to (a size, the model's prediction
# type, a dtype for "auto").
RESOLVED = ("size", "prediction", "dtype")
METHOD = [f.name for f in dataclasses.fields(Settings)]


@dataclass(frozen=True)
class Options:
    images: tuple           # two images, or more for a chain through all of them (interp/apps/chain.py)
    settings: Settings      # the method
    files: ModelFiles       # the networks
    poses: tuple            # keypoint files, one per image (None: OpenPose finds them)
    features: FeatureFiles  # the networks of --retime's feature space
    out: str
    overwrite: bool = False
    preview: bool = False
    fps: float = 8.0
    fetch_only: bool = False
    interactive: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    retime: str = None
    baselines: str = "equal"  # "authors": the Table 1 baselines at their own defaults in the authors' code

    def replace(self, settings: dict = None, files: dict = None, **changes) -> "Options":
        """These options with `changes`, and fields of the settings and the files changed."""
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, **(settings or {})),
                                   files=dataclasses.replace(self.files, **(files or {})), **changes)

    def record(self) -> dict:
        """The settings the frames depend on, as run.json holds them."""
        f = self.files
        return {**self.settings.record(), "ckpt": f.sd, "controlnet": f.controlnet, "clip": f.clip,
                "clip_config": f.clip_config, "pose_model": None if f.openpose == ModelFiles.openpose else list(f.openpose),
                "poses": self.poses, "config": f.config, "prediction": f.prediction,
                "device": f.device.split(":")[0],  # the kind of device, not which one of them
                "dtype": f.dtype, "baselines": self.baselines}


def _floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def _range(text: str) -> tuple:
    """'LOW,HIGH' with 0 < LOW <= HIGH < 1 (per-round levels are --round-levels)."""
    v = _floats(text)
    if len(v) != 2 or not 0 < v[0] <= v[1] < 1:
        raise argparse.ArgumentTypeError(f"--levels takes LOW,HIGH with 0 < LOW <= HIGH < 1, not {text!r} "
                                         "(one level per round: --round-levels)")
    return v


def _strengths(text: str) -> tuple:
    """ControlNet strengths 'AT_INPUTS,AT_MIDDLE', both >= 0."""
    v = _floats(text)
    if len(v) != 2 or min(v) < 0:
        raise argparse.ArgumentTypeError(f"--control-strength takes two numbers >= 0 (at the inputs, at the middle), "
                                         f"not {text!r}")
    return v


def _candidates(text: str):
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--candidates takes a positive integer or 'auto', not {text!r}")
    return int(text)


def _schedule(text: str):
    if text in SCHEDULES:
        return text
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--schedule takes {', '.join(SCHEDULES)} or comma-separated positions "
                                         f"from 0 to 1, not {text!r}") from None


def _warp(text: str) -> Warp:
    """'zoom=1.5,center=0.4:0.5,pan=0.1:0,rotate=10' -> Warp."""
    fields = {}
    try:
        for item in text.split(","):
            key, value = item.split("=")
            numbers = [float(v) for v in value.split(":")]
            fields[{"rotate": "rotate_deg"}.get(key.strip(), key.strip())] = tuple(numbers) if len(numbers) > 1 else numbers[0]
        return Warp(**fields)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"--warp takes zoom=Z,center=X:Y,pan=DX:DY,rotate=DEG, not {text!r} ({e})") from None


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_studio_args(p) -> None:
    """Where the studio's page is served (`interpolate --interactive`, `interp-studio`)."""
    p.add_argument("--host", default="127.0.0.1", help="address the page is served on (another than 127.0.0.1 "
                   "exposes it to the network)")
    p.add_argument("--port", type=number(int, 0, 65535), default=0, help="port of the page (0: any free one)")


def parser(cls=Parser) -> argparse.ArgumentParser:
    """The options of `interpolate`; those of the method default to `Settings`' defaults."""
    d = DEFAULTS
    p = cls(prog="interpolate", formatter_class=_Help,
            description="Interpolate between two images with Stable Diffusion 2.1 (Wang & Golland 2023); "
                        "with more images, one sequence through all of them.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="the first and the last image, or every keyframe "
                   "of a chain in order")
    run = p.add_argument_group("the run")
    run.add_argument("--prompt", required=True, help="describes both images (the start of textual inversion)")
    run.add_argument("--prompt-b", default=None, help="a different prompt for the second image")
    run.add_argument("--negative", default=d.negative, help="negative prompt, shared by both images (the terms most "
                     "of the authors' negative prompts share)")
    run.add_argument("--frames", type=number(int, 3), default=d.frames,
                     help="frames from one image to the next, both included")
    run.add_argument("--out", default="interpolation", help="output folder (resumed if it holds the same run)")
    run.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds another run")
    run.add_argument("--preset", choices=list(PRESETS), default=None,
                     help="a profile of settings, each unless given: " + "; ".join(
                         f"{name}: " + " ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in values.items())
                         for name, values in PRESETS.items()) + " (authors: their most common script)")
    run.add_argument("--preview", action="store_true", help="--preset preview: a quick look on a CPU")
    run.add_argument("--size", default=d.size, help="W or WxH (default: the first image's aspect ratio with a long side "
                     "of 768 as the authors' scripts, or the model's native size where larger; short side a multiple "
                     "of 64)")
    run.add_argument("--fit", choices=("resize", "crop"), default=d.fit,
                     help="how both images are brought to the frame size: resize the whole picture (as the authors), "
                          "or centre-crop to the frame's aspect ratio first")
    run.add_argument("--seed", type=number(int, 0), default=d.seed, help="seed of every random draw")
    run.add_argument("--fps", type=number(float, 0, low_open=True), default=8.0, help="video speed")
    run.add_argument("--fetch-only", action="store_true",
                     help="download every model file this command would need (checking their sha256), then stop")
    run.add_argument("--max-batch", type=number(int, 1), default=None,
                     help="most rows of one UNet and ControlNet call, two per candidate frame with guidance (default: "
                          "what fits in the device's free memory, on a CPU at most what still runs faster per row; "
                          f"{COMPILED_BATCH} with --compile on a CPU)")
    run.add_argument("--max-decode", type=number(int, 1), default=None,
                     help="most images of one VAE decoder call (default: what fits in the device's free memory, "
                          "on a CPU at most what still runs faster per image)")
    studio = p.add_argument_group("the interactive mode (end of Section 4.4)")
    studio.add_argument("--interactive", action="store_true",
                        help="choose, re-roll and steer the frames of each round in a local web page (its URL is printed)")
    add_studio_args(studio)

    method = p.add_argument_group("the method (Sections 4.1 and 5.1)")
    method.add_argument("--scheme", choices=[*SCHEMES, *ALIASES], default=d.scheme,
                        help="ours, a baseline of Table 1 (latent-blending = did), or freemorph (FreeMorph, Cao et al. "
                             "ICCV 2025, as its authors' code: their settings for every option not given, "
                             "--preset freemorph; --prompt and --prompt-b describe the two images)")
    method.add_argument("--steps", type=number(int, 1, 1000), default=d.steps, help="DDIM schedule length")
    levels = method.add_mutually_exclusive_group()
    levels.add_argument("--levels", type=_range, default=d.levels,
                        help="noise levels: LOW,HIGH fractions of the schedule, linear over the rounds (the paper's "
                             "text gives 0.25,0.65 as the outer range)")
    levels.add_argument("--round-levels", type=_floats, default=None,
                        help="instead of --levels: one noise level per round of frames, first (noisiest) round first, "
                             "as fractions of the schedule or integer timesteps, e.g. 0.6,0.45,0.35,0.3")
    method.add_argument("--cfg", type=number(float, 0), default=d.cfg, help="classifier-free guidance scale")
    method.add_argument("--eta", type=number(float, 0, 1), default=d.eta, help="DDIM eta (0: deterministic)")
    method.add_argument("--schedule", type=_schedule, default=d.schedule,
                        help="interpolation schedule (Section 5.2): uniform, ease, or F comma-separated positions from 0 to 1")
    method.add_argument("--text", choices=("slerp", "lerp"), default=d.text,
                        help="how the text embeddings are interpolated between the images")
    method.add_argument("--baselines", choices=("equal", "authors"), default="equal",
                        help="Table 1's baselines with everything else held equal to ours, or each at its own defaults "
                             "in the authors' cm.py (" + "; ".join(
                                 f"{name}: " + ", ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in values.items())
                                 for name, values in BASELINE_DEFAULTS.items()) + "), each unless given")
    method.add_argument("--warp", type=_warp, default=None,
                        help="affine latent motion (Section 5.2), e.g. zoom=1.5,center=0.5:0.4,pan=0.1:0,rotate=10")

    timing = p.add_argument_group("perceptual re-timing (Section 5.2)")
    timing.add_argument("--retime", nargs="?", const="lpips-alex", choices=list(SPACES), default=None,
                        help="after the pass, measure the steps between adjacent frames in this feature space "
                             "(default lpips-alex) and make the sequence again at positions that even them out, "
                             "into OUT/retimed")
    add_feature_args(timing, clip=False)  # the clip space uses --clip

    text = p.add_argument_group("textual inversion (Section 4.2)")
    text.add_argument("--inversion-steps", type=number(int, 0), default=d.inversion_steps, help="iterations, each "
                      "updating both images' embeddings and the shared negative (0: off)")
    text.add_argument("--inversion-lr", type=number(float, 0, low_open=True), default=d.inversion_lr, help="Adam learning rate")

    pose_group = p.add_argument_group("pose guidance (Section 4.3)")
    pose_group.add_argument("--pose", action=argparse.BooleanOptionalAction, default=None,
                            help="pose guidance with OpenPose + ControlNet (default: on when --poses gives keypoints, "
                                 "else off, as in 19 of the authors' 24 scripts)")
    pose_group.add_argument("--poses", nargs="+", metavar="JSON", default=None,
                            help="keypoints of every image (one file each) from `pose-detect --json` on the "
                                 "original images")
    pose_group.add_argument("--all-people", action="store_true",
                            help="match every person by position (default: each image's largest person)")
    pose_group.add_argument("--pose-model", nargs="+", default=None, help="OpenPose model files (default: catalog)")
    pose_group.add_argument("--controlnet", default=ModelFiles.controlnet, help="OpenPose ControlNet: path or catalog name")
    pose_group.add_argument("--control-strength", type=_strengths, default=d.control_strength,
                            help="ControlNet strength at the inputs and at the middle frame (linear ramp)")

    rank = p.add_argument_group("candidates and CLIP ranking (Section 4.4)")
    rank.add_argument("--candidates", type=_candidates, default=d.candidates,
                      help="candidates per frame (ours schemes only): K, or 'auto' = 8, 7, ... (at least 3) by round")
    rank.add_argument("--rank-positive", default=d.rank_positive, help="CLIP prompt a good frame is close to (chosen for "
                      "photographs; the paper's example for its cartoon pair: 'high quality, detailed, 2D')")
    rank.add_argument("--rank-negative", default=d.rank_negative, help="CLIP prompt a good frame is far from (the paper's "
                      "example: 'blurry, distorted, 3D render')")
    rank.add_argument("--clip", default=ModelFiles.clip, help="CLIP for ranking: path or catalog name")
    rank.add_argument("--clip-config", default=None, help="open_clip model-config JSON for a non-standard CLIP")

    add_model_args(p.add_argument_group("the model"))
    return p


def _shown(value) -> str:
    """A value as the command line spells it."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"'{value}'" if isinstance(value, str) and " " in value else str(value)


def _given(cls, argv) -> set:
    """The options the command line gives (not their defaults)."""
    probe = parser(cls)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def parse(argv=None, cls=Parser) -> Options:
    """The options of `argv`; a bad option goes to `cls.error` (one `error:` line and exit 2 for a command)."""
    p = parser(cls)
    args = vars(p.parse_args(argv))
    if len(args["images"]) < 2:
        p.error("give at least two images")
    if args["poses"] is not None and len(args["poses"]) != len(args["images"]):
        p.error(f"--poses takes one keypoint file per image: {len(args['images'])}, not {len(args['poses'])}")
    if args["prompt_b"] is not None and len(args["images"]) > 2:
        p.error("--prompt-b is for two images; a chain uses --prompt for every image")
    if args["retime"] and (len(args["images"]) > 2 or args["interactive"]):
        p.error("--retime is for a run of two images without --interactive (re-time a chain's segments, or a "
                "steered run, with interp-retime)")
    if args["preview"] and args["preset"] not in (None, "preview"):
        p.error(f"--preview is --preset preview: give one of --preview and --preset {args['preset']}")
    given = _given(cls, argv)
    if "poses" in given and "pose" not in given:  # keypoints given turn pose guidance on, whatever a profile says
        args["pose"] = True
        given.add("pose")
    profiles = [PRESETS["preview" if args["preview"] else args["preset"]]] if args["preview"] or args["preset"] else []
    if args["baselines"] == "authors":
        profiles.append(BASELINE_DEFAULTS.get(find_scheme(args["scheme"]).name, {}))
    if find_scheme(args["scheme"]).name == "freemorph":  # its authors' settings, at a preset's frame size if any
        profiles.append({k: v for k, v in PRESETS["freemorph"].items() if k != "size" or not profiles})
    for values in profiles:  # a profile's value unless the option is given; a later profile wins
        args.update({k: v for k, v in values.items() if k not in given})
    if args["pose"] is None:
        args["pose"] = DEFAULTS.pose
    files = ModelFiles(sd=args["ckpt"], controlnet=args["controlnet"], clip=args["clip"], clip_config=args["clip_config"],
                       openpose=tuple(args["pose_model"] or ModelFiles.openpose), config=args["config"],
                       prediction=args["prediction"], device=args["device"], dtype=args["dtype"], compile=args["compile"])
    features = FeatureFiles.of(argparse.Namespace(**args))
    return Options(images=tuple(args["images"]), settings=Settings(**{k: args[k] for k in METHOD}), files=files,
                   poses=None if args["poses"] is None else tuple(args["poses"]), features=features,
                   **{k: args[k] for k in ("out", "overwrite", "preview", "fps", "fetch_only", "interactive", "host",
                                           "port", "retime", "baselines")})


def from_run(folder, **changes) -> Options:
    """The options of the run in `folder` (from its run.json), with `changes`: to reopen a run."""
    path = os.path.join(folder, "run.json")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        recorded, inputs = state["settings"], state["inputs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder} holds no run of interpolate ({path}: {type(e).__name__}: {e})") from None
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
    method = {k: values[k] for k in METHOD if k in values}
    method.update(size=tuple(recorded["size"]), warp=None if recorded.get("warp") is None else Warp(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in recorded["warp"].items()}))
    defaults = parse([*inputs, "--prompt", recorded["prompt"]])
    files = dict(sd=values["ckpt"], controlnet=values["controlnet"], clip=values["clip"], clip_config=values["clip_config"],
                 config=values["config"], prediction=values["prediction"], device=values["device"],
                 dtype=str(recorded["dtype"]).removeprefix("torch."))
    if values.get("pose_model"):
        files["openpose"] = tuple(values["pose_model"])
    return defaults.replace(method, files, poses=values.get("poses"), out=os.fspath(folder),
                            fps=state.get("fps", defaults.fps), **changes)
