"""The settings of the method: everything that changes the frames, in one frozen object with the defaults in
one place. A program passes it (or its fields as keywords) to `interp.Pipeline`; the `interpolate` command
builds it from its options (interp/apps/options.py).

Defaults are what most of the authors' 24 per-pair scripts use (GitHub `clintonjwang/ControlNet`, commit 661ed47,
`sample_scripts/`; every one calls `interpolate_qc` of `cm.py`): noise levels 0.30 -> 0.55 of the schedule (the
`interpolate_qc` default), 200 DDIM steps (23 of 24), guidance 7.5 (20), 8-7-6-... candidates (19), 17 frames (13),
DDIM eta 0.1 (16; `cm.py` defaults to 0), 500 inversion iterations (11; 18 use 400 or more), a negative prompt (22:
`NEGATIVE_PROMPT` holds the terms most of theirs share), no pose guidance (19; 5 pass `controls=`), the
ControlNet strength ramp 1 -> 1.5 where it is on, and a long side of 768 pixels (23 resize to it, on the 512 base
model). `PRESETS` hold whole profiles: "authors", their most common script; "preview", a quick look on a CPU.
README.md ("Where this differs from the authors' code") says where and why this project chose otherwise.
"""
import dataclasses
from dataclasses import dataclass

from ldm.errors import UserError
from ldm.images import check_frame_size

from .rank import NEGATIVE, POSITIVE
from .schemes import scheme as find_scheme
from .warp import Warp

LONG_SIDE = 768  # the frames' long side, unless the model's native size is larger
NEGATIVE_PROMPT = "text, lowres, messy, lopsided, disfigured, low quality"  # in 12 or more of their 22 negatives
# --preview: a quick look on a CPU (256 px, 50 DDIM steps, 50 inversion iterations, one candidate per frame)
PREVIEW = {"size": "256", "steps": 50, "inversion_steps": 50, "candidates": 1}
# --preset authors: their most common script (each setting at the value most scripts use; rock.py and wc.py are
# exactly this): every pair resized to 768 x 768, 65 frames, 500 inversion iterations, eta 0.1, no pose guidance
AUTHORS = {"size": "768x768", "fit": "resize", "frames": 65, "steps": 200, "levels": (0.30, 0.55), "cfg": 7.5,
           "eta": 0.1, "inversion_steps": 500, "negative": NEGATIVE_PROMPT, "pose": False, "candidates": "auto"}
# --scheme freemorph (or --preset freemorph): FreeMorph's own settings in its authors' code (`freemorph.py`): 768 x
# 768 centre crops, 7 frames, 50 steps, guidance 7.5, DDIM eta 0, no textual inversion, the prompts' embeddings
# lerped and the empty prompt as the negative; its edit strength, phases and beta(20, 20) are in interp/freemorph.py
FREEMORPH = {"scheme": "freemorph", "size": "768x768", "fit": "crop", "frames": 7, "steps": 50, "cfg": 7.5, "eta": 0.0,
             "inversion_steps": 0, "negative": "", "text": "lerp", "candidates": 1, "pose": False}
PRESETS = {"authors": AUTHORS, "preview": PREVIEW, "freemorph": FREEMORPH}
# --baselines authors: the Table 1 baselines at their own defaults in `cm.py` instead of ours (everything else
# held equal): `interpolate_then_diffuse` and `interpolate` default to noise levels 0.25 -> 0.5, ControlNet
# strength 1 throughout and eta 0, and `interpolate_then_diffuse` lerps the text embeddings.
BASELINE_DEFAULTS = {
    "interpolate-denoise": {"levels": (0.25, 0.5), "control_strength": (1.0, 1.0), "eta": 0.0, "text": "lerp"},
    "did": {"levels": (0.25, 0.5), "control_strength": (1.0, 1.0), "eta": 0.0},
    "did-no-shared-noise": {"levels": (0.25, 0.5), "control_strength": (1.0, 1.0), "eta": 0.0},
}
# Change how fast the frames are made, not what they are: left out of `record` (and of a resume's check).
RESOURCES = ("max_batch", "max_decode")


@dataclass(frozen=True)
class Settings:
    # the text (Sections 4.1 and 4.2)
    prompt: str = ""
    prompt_b: str = None            # a different prompt for the second image (None: `prompt`)
    negative: str = NEGATIVE_PROMPT  # shared by both images
    # the sequence (Section 4.1)
    frames: int = 17                # the whole sequence, both inputs included
    size: object = None             # "W", "WxH", W or (W, H); None: the first image's aspect, long side LONG_SIDE
                                    # (or the model's native size where that is larger)
    fit: str = "resize"             # "resize" the whole picture (as the authors) or "crop" to the frame's aspect first
    scheme: str = "ours"            # ours, or a baseline of Table 1 (interp.SCHEMES)
    steps: int = 200                # DDIM schedule length
    levels: tuple = (0.30, 0.55)    # noise levels: LOW, HIGH fractions of the schedule, linear over the rounds
    round_levels: tuple = None      # instead: one level per round, first round first (fractions or timesteps)
    cfg: float = 7.5                # classifier-free guidance scale
    eta: float = 0.1                # DDIM eta
    seed: int = 0
    schedule: object = "uniform"    # interpolation schedule (Section 5.2): uniform, ease, or F positions
    text: str = "slerp"             # how the text embeddings are interpolated: slerp, or lerp
    warp: Warp = None               # affine latent motion (Section 5.2)
    # textual inversion (Section 4.2)
    inversion_steps: int = 500      # 0: off
    inversion_lr: float = 1e-4
    # pose guidance (Section 4.3)
    pose: bool = False              # pose guidance (keypoints given, or found by OpenPose)
    all_people: bool = False        # match every person (default: each image's largest)
    control_strength: tuple = (1.0, 1.5)  # ControlNet strength at the inputs and at the middle frame
    # candidates and CLIP ranking (Section 4.4)
    candidates: object = "auto"     # K per frame, or "auto" = 8, 7, ... (at least 3) by round
    rank_positive: str = POSITIVE
    rank_negative: str = NEGATIVE
    # resources
    max_batch: int = None           # most rows of one UNet + ControlNet call (None: what fits in free memory
                                    # and, on a CPU, pays: ldm.accel.memory.rows_worth_batching)
    max_decode: int = None          # most images of one VAE decoder call (None: likewise)

    @classmethod
    def preview(cls, **changes) -> "Settings":
        return cls.preset("preview", **changes)

    @classmethod
    def preset(cls, name: str, **changes) -> "Settings":
        """The settings of a profile of `PRESETS`, with `changes`."""
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    def with_baseline_defaults(self) -> "Settings":
        """These settings with the scheme's own defaults in the authors' code (`BASELINE_DEFAULTS`), for Table 1
        as they ran it; the same settings for a scheme that has none there."""
        return dataclasses.replace(self, **BASELINE_DEFAULTS.get(find_scheme(self.scheme).name, {}))

    @property
    def prompts(self) -> list:
        return [self.prompt, self.prompt_b or self.prompt]

    def level_args(self) -> dict:
        """round_levels: one level per round (whole numbers >= 1 are timesteps); else the levels range."""
        if self.round_levels is not None:
            return {"levels": [int(x) if x >= 1 else x for x in self.round_levels]}
        return {"low": self.levels[0], "high": self.levels[1]}

    def plan(self):
        """The scheme's plan of rounds for these settings (a UserError for settings it cannot run)."""
        chosen = find_scheme(self.scheme)
        if self.text not in ("slerp", "lerp"):
            raise UserError(f"text interpolation is slerp or lerp, not {self.text!r}")
        if self.pose and not chosen.poses:
            raise UserError(f"the {chosen.name} scheme has no pose guidance: leave out --pose and --poses")
        if self.warp is not None and not chosen.warps:
            raise UserError(f"--warp moves the parents of each new frame, which the {chosen.name} scheme does not "
                            "have: use --scheme ours or ours-no-shared-noise")
        return chosen.plan(self.frames, self.steps, **self.level_args(), schedule=self.schedule,
                                             candidates=self.candidates)

    def requested_size(self):
        """(width, height) asked for, or None for the model's native size at the first image's aspect; a
        UserError for a size that is not multiples of 64 or (unless it ends in "!") has an aspect beyond 4:1
        (`ldm.images.check_frame_size`; the side's limit, twice the model's native size, once it is loaded)."""
        return check_frame_size(self.size)

    def record(self) -> dict:
        """The settings the frames depend on, as run.json holds them."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RESOURCES}
        fields["warp"] = None if self.warp is None else dataclasses.asdict(self.warp)
        return fields
