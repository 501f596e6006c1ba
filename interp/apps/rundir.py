"""The run directory of the `interpolate` command: frames, their latents, candidates, videos, run.json.

Layout of a run directory DIR for F = N + 1 frames (names padded to at least 4 digits):

    DIR/run.json                            settings, status, timings, frame records (see below)
    DIR/frames/frame_0000.png ...           frame 0 and frame N are the inputs
    DIR/latents/frame_0000.safetensors ...  the clean latent [1, 4, h, w] float32 of each frame (key "latent")
    DIR/candidates/frame_0005_c0.png ...    every ranked candidate of a frame, c0 first
    DIR/embeddings.safetensors              the text embeddings textual inversion fitted ("cond", "uncond")
    DIR/video.webm (or .mp4), animation.gif, contact_sheet.png   written by `finish` (interp/apps/video.py)

run.json holds `settings` (as given, JSON-normalised), `status` ("running" or "complete"), `started`
(and `resumed`, `finished`) timestamps, `frames` {"5": {"file", "latent", ...info}}, `candidates`
{"5": {"files", "scores", "kept"}}, whatever `record` adds, and after `finish` the `outputs` and `fps`.

Every file is written to a temporary name `name.part.ext` in the same folder and renamed into place
(`ldm.files`), so a crash never leaves a half-written file under a final name. A frame is written PNG first,
latent second, run.json entry last, and counts as done only when all three are present: a crash
between the steps just makes the frame again on resume.
"""
import glob
import json
import math
import os
from datetime import datetime

import torch
from PIL import Image, ImageDraw

from ldm.errors import UserError
from ldm.files import atomic_path, part_path
from ldm.images import save_png
from ldm.load import safetensors_io

from ..inversion import save_embeddings
from . import video

OUTPUTS = {"gif": "animation.gif", "contact_sheet": "contact_sheet.png"}  # and the video (`video.codec`)
OUTPUT_NAMES = (*OUTPUTS.values(), *video.NAMES)  # every name `finish` may write
SHEET_MAX_WIDTH = 4096  # contact-sheet thumbnails are shrunk to keep the sheet at most this wide
SHEET_GAP = 4           # pixels between and around contact-sheet thumbnails
EMBEDDINGS = "embeddings.safetensors"
_RESERVED = {"settings", "status", "started", "resumed", "finished", "frames", "candidates", "outputs", "fps",
             "embeddings", "video_codec"}


def _default(obj):
    """JSON fallback for paths and numpy/torch scalars or arrays; anything else is a bug."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def normalise(obj):
    """`obj` as it reads back from JSON (tuples become lists, paths strings), for comparisons."""
    return json.loads(json.dumps(obj, default=_default))


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class RunDir:
    """One interpolation run on disk; `resume=True` keeps the finished frames of an identical run,
    `resume=False` deletes the previous run's files (only files of this layout) and starts over."""

    unchanged = False  # opened by `complete`: a finished run left as it was

    def __init__(self, path, settings: dict, resume: bool = True):
        self._name_files(path, settings)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UserError(f"{self.path} is a file, not a folder: choose another --out")
        for sub in ("frames", "latents", "candidates"):
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)
        previous = self._read_previous() if resume else None
        if previous is None:
            self._clear()
            self.state = {"settings": self.settings, "status": "running", "started": _now(),
                          "frames": {}, "candidates": {}}
        else:
            self._remove(self._parts())  # leftovers of a crash
            self.state = previous
            self.state.update(status="running", resumed=previous.get("resumed", []) + [_now()])
            self.state.pop("finished", None)
        self._save_state()

    def _name_files(self, path, settings: dict) -> None:
        self.path = os.fspath(path)
        if not isinstance(settings, dict):
            raise TypeError("settings must be a dict")
        self.settings = normalise(settings)
        count = self.settings.get("frames")
        if not isinstance(count, int) or isinstance(count, bool) or count < 3:
            raise UserError(f"the number of frames must be an integer >= 3 (the two inputs and at least one "
                            f"in between), got {count!r}")
        self.count = count
        self.width = max(4, len(str(count - 1)))

    @classmethod
    def complete(cls, path, settings: dict, fps: float):
        """The finished run of `settings` at `fps` in `path`, opened without writing anything (a rerun of a
        finished run has nothing to do); None unless run.json says it is complete with these settings and
        every frame and output is there."""
        run = cls.__new__(cls)
        run._name_files(path, settings)
        try:
            with open(os.path.join(run.path, "run.json"), encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        if not (isinstance(state, dict) and state.get("status") == "complete" and state.get("settings") == run.settings
                and state.get("fps") == fps and isinstance(state.get("outputs"), dict)
                and all(isinstance(state.get(k), dict) for k in ("frames", "candidates"))):
            return None
        run.state = state
        outputs = state["outputs"].values()
        if run.missing() or not all(isinstance(name, str) and os.path.isfile(os.path.join(run.path, name))
                                    for name in outputs):
            return None
        run.unchanged = True
        return run

    # --- file names -------------------------------------------------------------------------

    def _name(self, index: int) -> str:
        return f"frame_{index:0{self.width}d}"

    def frame_path(self, index: int) -> str:
        return os.path.join(self.path, "frames", self._name(index) + ".png")

    def latent_path(self, index: int) -> str:
        return os.path.join(self.path, "latents", self._name(index) + ".safetensors")

    @property
    def embeddings_path(self) -> str:
        return os.path.join(self.path, EMBEDDINGS)

    def candidate_path(self, index: int, k: int) -> str:
        return os.path.join(self.path, "candidates", f"{self._name(index)}_c{k}.png")

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.path).replace(os.sep, "/")

    # --- frames -----------------------------------------------------------------------------

    def done(self, index: int) -> bool:
        """Frame `index` is finished: run.json lists it and its PNG and latent exist."""
        return (str(index) in self.state["frames"] and os.path.isfile(self.frame_path(index))
                and os.path.isfile(self.latent_path(index)))

    def missing(self) -> list:
        """The indices of the frames not finished yet."""
        return [i for i in range(self.count) if not self.done(i)]

    def load_latent(self, index: int) -> torch.Tensor:
        """The clean latent of finished frame `index` ([1, 4, h, w] float32)."""
        self._check_index(index)
        if not self.done(index):
            raise UserError(f"frame {index} of {self.path} is not finished, so it has no latent yet")
        return safetensors_io.SafetensorsFile(self.latent_path(index)).read("latent")

    def save_frame(self, index: int, image: Image.Image, latent: torch.Tensor, info: dict = None) -> None:
        """Write frame `index`: PNG, then latent, then its run.json entry {...info, "file", "latent"}."""
        self._check_index(index)
        if self.state["frames"].pop(str(index), None) is not None:
            self._save_state()  # replacing a frame: it is not done until all three are written again
        save_png(image, self.frame_path(index), {"frame": index})
        latent = latent.detach().to("cpu", torch.float32)
        safetensors_io.write(self.latent_path(index), {"latent": (tuple(latent.shape), torch.float32)},
                             lambda key: latent, {"frame": index})
        self.state["frames"][str(index)] = {**normalise(info or {}), "file": self._relative(self.frame_path(index)),
                                            "latent": self._relative(self.latent_path(index))}
        self._save_state()

    def unmake(self, indices) -> None:
        """Frames `indices` are to be made again: they are no longer done (their files stay until replaced)."""
        for index in indices:
            self._check_index(index)
            self.state["frames"].pop(str(index), None)
        self._save_state()

    def save_candidates(self, index: int, images: list, scores: list = None, kept: int = 0) -> None:
        """Write every candidate of frame `index` (c0, c1, ...) and record their scores and the kept one."""
        self._check_index(index)
        if not images:
            raise ValueError("save_candidates needs at least one image")
        if scores is not None and len(scores) != len(images):
            raise ValueError(f"{len(scores)} scores for {len(images)} candidates")
        if not 0 <= kept < len(images):
            raise ValueError(f"kept candidate {kept} is not one of 0..{len(images) - 1}")
        files = [self.candidate_path(index, k) for k in range(len(images))]
        earlier = glob.glob(os.path.join(glob.escape(self.path), "candidates", f"{self._name(index)}_c*.png"))
        self._remove(set(earlier) - set(files))  # extra candidates of an earlier attempt at this frame
        for k, (image, path) in enumerate(zip(images, files)):
            save_png(image, path, {"frame": index, "candidate": k})
        self.state["candidates"][str(index)] = {"files": [self._relative(p) for p in files],
                                                "scores": normalise(scores), "kept": kept}
        self._save_state()

    def save_embeddings(self, cond, uncond) -> None:
        """Keep the inverted text embeddings, so that the run folder alone reproduces the run."""
        save_embeddings(self.embeddings_path, cond, uncond)
        self.state["embeddings"] = EMBEDDINGS
        self._save_state()

    def record(self, **fields) -> None:
        """Merge top-level fields (timings, model notes, counters) into run.json."""
        clash = sorted(_RESERVED & fields.keys())
        if clash:
            raise ValueError(f"record cannot set {', '.join(clash)}: they are managed by RunDir")
        self.state.update(normalise(fields))
        self._save_state()

    # --- outputs ----------------------------------------------------------------------------

    def finish(self, fps: float = 8) -> dict:
        """Write the video, animation.gif and contact_sheet.png from all frames and mark the run complete;
        returns the output paths. Refuses while any frame is missing."""
        missing = self.missing()
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise UserError(f"cannot finish {self.path}: {len(missing)} of {self.count} frames are not "
                            f"made yet ({shown}); run the command again to resume")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise UserError(f"fps must be a positive number, got {fps!r}")
        outputs, what = write_outputs(self.path, [self._open_frame(i) for i in range(self.count)], fps)
        self.state.update(status="complete", finished=_now(), fps=fps, outputs=outputs, video_codec=what)
        self._save_state()
        return {key: os.path.join(self.path, name) for key, name in outputs.items()}

    def _open_frame(self, index: int) -> Image.Image:
        return open_frame(self.frame_path(index))

    # --- helpers ----------------------------------------------------------------------------

    def _check_index(self, index) -> None:
        if not isinstance(index, int) or not 0 <= index < self.count:
            raise ValueError(f"frame index {index!r} is not one of 0..{self.count - 1}")

    def _read_previous(self):
        """The previous run.json when it belongs to a run with the same settings; None when there is none,
        or when it made nothing but the input frames (a run that failed early: its folder is reused)."""
        path = os.path.join(self.path, "run.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except ValueError:
            previous = None
        if not (isinstance(previous, dict) and all(isinstance(previous.get(k), dict)
                                                   for k in ("settings", "frames", "candidates"))):
            raise UserError(f"{path} is not a run.json of this program: use another --out or delete {self.path}")
        old, new = previous["settings"], self.settings
        if old != new:
            if all(isinstance(f, dict) and f.get("input") for f in previous["frames"].values()):
                return None
            keys = sorted(k for k in old.keys() | new.keys() if k not in old or k not in new or old[k] != new[k])
            raise UserError(f"{self.path} holds a run with different settings ({', '.join(keys[:5])}"
                            f"{', ...' if len(keys) > 5 else ''}): use another --out, or --overwrite to replace it")
        return previous

    def _parts(self) -> list:
        """Temporary files a crash may have left (`name.part.ext`)."""
        d = glob.escape(self.path)
        parts = [p for sub in ("frames", "latents", "candidates") for p in glob.glob(os.path.join(d, sub, "*.part.*"))]
        return parts + [part_path(os.path.join(self.path, name)) for name in ("run.json", EMBEDDINGS, *OUTPUT_NAMES)]

    def _clear(self) -> None:
        """Delete the files of a previous run (only names of this layout)."""
        d = glob.escape(self.path)
        patterns = [os.path.join(d, "frames", "frame_*.png"), os.path.join(d, "latents", "frame_*.safetensors"),
                    os.path.join(d, "candidates", "frame_*_c*.png"), os.path.join(d, "run.json"),
                    os.path.join(d, EMBEDDINGS)]
        patterns += [os.path.join(d, name) for name in OUTPUT_NAMES]
        self._remove([p for pattern in patterns for p in glob.glob(pattern)] + self._parts())

    @staticmethod
    def _remove(paths) -> None:
        for p in paths:
            if os.path.isfile(p):
                os.remove(p)

    def _save_state(self) -> None:
        write_json(os.path.join(self.path, "run.json"), self.state)


def _atomic(path: str, write) -> None:
    """Call write(tmp) with the temporary name of `path`, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_json(path: str, state: dict) -> None:
    """`state` as indented JSON at `path`, written atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, default=_default)
            f.write("\n")
    _atomic(path, write)


def open_frame(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def write_outputs(folder: str, frames: list, fps: float) -> tuple:
    """The video, animation.gif and contact_sheet.png of `frames`, each written atomically into `folder`;
    returns ({"video": ..., "gif": ..., "contact_sheet": ...} file names, the video codec's name)."""
    fourcc, name, what = video.codec(frames[0].size)
    outputs = {"video": name, **OUTPUTS}
    paths = {key: os.path.join(folder, file) for key, file in outputs.items()}
    _atomic(paths["video"], lambda tmp: video.write_video(tmp, fourcc, frames, fps))
    _atomic(paths["gif"], lambda tmp: _write_gif(tmp, frames, fps))
    _atomic(paths["contact_sheet"], lambda tmp: contact_sheet(frames).save(tmp, format="PNG"))
    return outputs, what


def _write_gif(path: str, frames: list, fps: float) -> None:
    """A looping GIF; GIF delays are whole hundredths of a second, so fps is rounded to fit."""
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=max(2, round(100 / fps)) * 10)


def contact_sheet(frames: list) -> Image.Image:
    """All frames in a grid of ceil(sqrt(F)) columns, frame numbers in the top-left corners,
    thumbnails shrunk so the sheet is at most SHEET_MAX_WIDTH pixels wide."""
    cols = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / cols)
    w, h = frames[0].size
    tw = min(w, (SHEET_MAX_WIDTH - SHEET_GAP * (cols + 1)) // cols)
    th = max(1, round(h * tw / w))
    sheet = Image.new("RGB", (cols * tw + (cols + 1) * SHEET_GAP, rows * th + (rows + 1) * SHEET_GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(frames):
        x = SHEET_GAP + (i % cols) * (tw + SHEET_GAP)
        y = SHEET_GAP + (i // cols) * (th + SHEET_GAP)
        sheet.paste(im.resize((tw, th), Image.LANCZOS) if im.size != (tw, th) else im, (x, y))
        left, top, right, bottom = draw.textbbox((x + 3, y + 2), str(i))
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill="black")
        draw.text((x + 3, y + 2), str(i), fill="white")
    return sheet
