"""The settings of the method: everything that changes the frames, in one frozen object with the defaults in
one place. A program passes it (or its fields as keywords) to `interp.Pipeline`; the `interpolate` command
builds it from its options (interp/apps/options.py).

Defaults are the authors' released `interpolate_qc` (noise levels 0.30 -> 0.55 of the schedule, guidance 7.5,
eta 0, 8-7-6-... candidates, ControlNet strength 1 -> 1.5) with the 200 DDIM steps and 200 inversion iterations
of their scripts. `Settings.preview()` is a project profile for a quick look on a CPU.
"""
import dataclasses
from dataclasses import dataclass

from ldm.errors import UserError
from ldm.images import parse_size

from .rank import NEGATIVE, POSITIVE
from .schemes import scheme as find_scheme
from .warp import Warp

# --preview: a quick look on a CPU (256 px, 50 DDIM steps, 50 inversion iterations, one candidate per frame)
PREVIEW = {"size": "256", "steps": 50, "inversion_steps": 50, "candidates": 1}
# Change how fast the frames are made, not what they are: left out of `record` (and of a resume's check).
RESOURCES = ("max_batch", "max_decode")


@dataclass(frozen=True)
class Settings:
    # the text (Sections 4.1 and 4.2)
    prompt: str = ""
    prompt_b: str = None            # a different prompt for the second image (None: `prompt`)
    negative: str = ""              # shared by both images
    # the sequence (Section 4.1)
    frames: int = 17                # the whole sequence, both inputs included
    size: object = None             # "W", "WxH", W or (W, H); None: the first image's aspect at the model's native size
    fit: str = "resize"             # "resize" the whole picture (as the authors) or "crop" to the frame's aspect first
    scheme: str = "ours"            # ours, or a baseline of Table 1 (interp.SCHEMES)
    steps: int = 200                # DDIM schedule length
    levels: tuple = (0.30, 0.55)    # noise levels: LOW, HIGH fractions of the schedule, linear over the rounds
    round_levels: tuple = None      # instead: one level per round, first round first (fractions or timesteps)
    cfg: float = 7.5                # classifier-free guidance scale
    eta: float = 0.0                # DDIM eta
    seed: int = 0
    schedule: object = "uniform"    # interpolation schedule (Section 5.2): uniform, ease, or F positions
    warp: Warp = None               # affine latent motion (Section 5.2)
    # textual inversion (Section 4.2)
    inversion_steps: int = 200      # 0: off
    inversion_lr: float = 1e-4
    # pose guidance (Section 4.3)
    pose: bool = True
    all_people: bool = False        # match every person (default: each image's largest)
    control_strength: tuple = (1.0, 1.5)  # ControlNet strength at the inputs and at the middle frame
    # candidates and CLIP ranking (Section 4.4)
    candidates: object = "auto"     # K per frame, or "auto" = 8, 7, ... (at least 3) by round
    rank_positive: str = POSITIVE
    rank_negative: str = NEGATIVE
    # resources
    max_batch: int = None           # most rows of one UNet + ControlNet call (None: what fits in free memory)
    max_decode: int = None          # most images of one VAE decoder call (None: likewise)

    @classmethod
    def preview(cls, **changes) -> "Settings":
        return cls(**{**PREVIEW, **changes})

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
        if self.warp is not None and not chosen.warps:
            raise UserError(f"--warp moves the parents of each new frame, which the {chosen.name} scheme does not "
                            "have: use --scheme ours or ours-no-shared-noise")
        return chosen.plan(self.frames, self.steps, **self.level_args(), schedule=self.schedule,
                                             candidates=self.candidates)

    def requested_size(self):
        """(width, height) asked for, or None for the model's native size at the first image's aspect."""
        if self.size is None:
            return None
        return tuple(self.size) if isinstance(self.size, (tuple, list)) else parse_size(self.size)

    def record(self) -> dict:
        """The settings the frames depend on, as run.json holds them."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RESOURCES}
        fields["warp"] = None if self.warp is None else dataclasses.asdict(self.warp)
        return fields
