#!/usr/bin/env python3
"""Golden runs: the frames of a few `interpolate` runs on the tiny fixture models, every scheme, a chain, given
poses, a warp and a steered replay, so that a change of the code's shape (not of the method) is proven to give
the same bytes (`tests/test_golden_runs.py`).

    python tools/golden_runs.py --out tests/data/golden_runs.npz

The runs take the plain paths of the acceleration layer (its measured CPU paths are a per-machine choice by
timing, and another kernel may move a pixel by 1/255), two threads, and a fresh inversion cache. Frames are
compared bit for bit (sha256) on the kind of machine that recorded them (CPU vector extensions, torch version);
elsewhere to within 2/255, as float kernels of other CPUs round differently.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import make_fixture_weights  # noqa: E402

CONFIG = ROOT / "tests" / "data" / "config.json"
CLIP_CONFIG = ROOT / "tests" / "data" / "clip" / "clip_config.json"
# A standing figure, 18 COCO joints (x, y, confidence) on a 64 x 64 picture; each image raises its arms more.
FIGURE = [[32, 10, 1], [32, 18, 1], [24, 18, 1], [20, 28, 1], [18, 38, 1], [40, 18, 1], [44, 28, 1], [46, 38, 1],
          [27, 38, 1], [26, 48, 1], [26, 58, 1], [37, 38, 1], [38, 48, 1], [38, 58, 1], [30, 8, 1], [34, 8, 1],
          [28, 9, 1], [36, 9, 1]]
IMAGES = (("a", (200, 60, 40), 0), ("b", (40, 90, 200), 8), ("c", (60, 160, 70), 4))
COMMON = ["--frames", "5", "--steps", "4", "--size", "64", "--inversion-steps", "1", "--seed", "3"]
# The defaults these runs were recorded with, pinned (a run's own options come after them and win)
PINNED = ["--eta", "0", "--negative", ""]
POSES = ["--poses", "{a}", "{b}"]  # the keypoint files of the images
# name -> (images, options); every run also gets COMMON and the tiny models.
RUNS = {
    "ours": ("ab", [*POSES, "--candidates", "2"]),
    "ours-no-shared-noise": ("ab", [*POSES, "--scheme", "ours-no-shared-noise", "--candidates", "1"]),
    "interpolate-only": ("ab", ["--scheme", "interpolate-only", "--candidates", "1"]),
    "interpolate-denoise": ("ab", [*POSES, "--scheme", "interpolate-denoise", "--candidates", "1"]),
    "did": ("ab", [*POSES, "--scheme", "did", "--candidates", "1"]),
    "did-no-shared-noise": ("ab", [*POSES, "--scheme", "did-no-shared-noise", "--candidates", "1"]),
    "warp-ease-eta": ("ab", ["--no-pose", "--warp", "zoom=1.2,rotate=5", "--schedule", "ease", "--eta", "0.1",
                             "--negative", "blurry", "--prompt-b", "a cube", "--candidates", "1"]),
    "round-levels": ("ab", [*POSES, "--round-levels", "0.6,0.35", "--candidates", "1", "--control-strength", "0.5,2"]),
    "chain": ("abc", ["--poses", "{a}", "{b}", "{c}", "--candidates", "1"]),
    "steered": ("ab", [*POSES, "--candidates", "2"]),  # then replayed with a recorded re-roll and pick
}
# The steered run's record: frame 2 re-rolled with a prompt of its own, its 4th candidate kept by a person.
STEERING = {"2": {"rolls": [{"prompt": "a red ball", "keypoints": None}], "pick": 3, "by": "person",
                  "prompt": None, "keypoints": None}}


def command(name: str):
    """The function behind the console script `name`, as setup.py declares it."""
    spec = re.search(rf'"{re.escape(name)} = ([\w.]+):(\w+)"', (ROOT / "setup.py").read_text()).groups()
    module = __import__(spec[0], fromlist=[spec[1]])
    return getattr(module, spec[1])


def make_inputs(folder: Path) -> None:
    """Three 64 x 64 images with the figure's keypoints beside each (`pose-detect --json` layout)."""
    for name, colour, arm in IMAGES:
        im = Image.new("RGB", (64, 64), colour)
        ImageDraw.Draw(im).ellipse((16, 16, 48, 48), fill=(230, 220, 80))
        im.save(folder / f"{name}.png")
        person = [[x, y - arm if j in (4, 7) else y, c] for j, (x, y, c) in enumerate(FIGURE)]
        (folder / f"{name}.json").write_text(json.dumps({"width": 64, "height": 64, "people": [{"keypoints": person}]}))


def make_models(folder: Path) -> dict:
    """The tiny SD, ControlNet and CLIP, regenerated from their seeded rule (as tests/conftest.py does)."""
    make_fixture_weights.main(["sd", "--config", str(CONFIG), "--seed", "1234", "--out", str(folder / "tiny.safetensors")])
    make_fixture_weights.main(["controlnet", "--config", str(CONFIG), "--seed", "1234",
                               "--out", str(folder / "controlnet.safetensors")])
    make_fixture_weights.main(["clip", "--config", str(CLIP_CONFIG), "--seed", "4242", "--out", str(folder / "clip.safetensors")])
    for name in ("tiny", "controlnet"):
        shutil.copy(CONFIG, folder / f"{name}.safetensors.json")
    return {"sd": folder / "tiny.safetensors", "controlnet": folder / "controlnet.safetensors",
            "clip": folder / "clip.safetensors"}


def arguments(name: str, inputs: Path, models: dict, out: Path) -> list:
    images, options = RUNS[name]
    files = {k: str(inputs / f"{k}.json") for k in "abc"}
    return [*(str(inputs / f"{k}.png") for k in images), "--prompt", "a ball", *PINNED, *(o.format(**files) for o in options),
            *COMMON, "--ckpt", str(models["sd"]), "--controlnet", str(models["controlnet"]), "--clip", str(models["clip"]),
            "--clip-config", str(CLIP_CONFIG), "--out", str(out)]


def frames_of(out: Path) -> list:
    """The run's frames in order (a chain: every segment's, the shared keyframes once)."""
    chain = out / "chain.json"
    if chain.is_file():
        listed = json.loads(chain.read_text())["frames"]
        return [frames_of(out / segment)[i] for segment, i in listed]
    state = json.loads((out / "run.json").read_text())
    return [np.asarray(Image.open(out / state["frames"][str(i)]["file"]).convert("RGB"))
            for i in range(len(state["frames"]))]


def steer(out: Path) -> None:
    """Turn the finished run in `out` into one a person steered: frames 1-3 to be made again, replaying STEERING."""
    path = out / "run.json"
    state = json.loads(path.read_text())
    for i in ("1", "2", "3"):
        state["frames"].pop(i)
    state.update(status="running", steering=STEERING)
    path.write_text(json.dumps(state))


def run_all(work: Path, interpolate) -> dict:
    """{run name: [frame arrays]} of every run, made under `work` with `interpolate(argv)`."""
    inputs, runs = work / "inputs", work / "runs"
    inputs.mkdir(parents=True)
    make_inputs(inputs)
    models = make_models(work)
    made = {}
    for name in RUNS:
        argv = arguments(name, inputs, models, runs / name)
        interpolate(argv)
        if name == "steered":
            steer(runs / name)
            interpolate(argv)
        made[name] = frames_of(runs / name)
    return made


def machine() -> str:
    """What decides the float kernels: the CPU's vector extensions and the torch version."""
    import torch
    from ldm.accel import cpu_flags
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
    return f"torch {torch.__version__}; " + " ".join(f for f in wanted if f in cpu_flags())


def sha256(frame: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()


def plain_paths(dtype) -> dict:
    """In place of `ldm.accel.measured_paths`: the plain CPU paths, whatever this machine's timings would choose."""
    from ldm import accel
    return dict.fromkeys(accel.path_names(dtype), False)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "tests" / "data" / "golden_runs.npz"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SD_INTERP_CACHE"] = os.environ["XDG_CACHE_HOME"] = tmp
        import torch
        from ldm import accel
        accel.measured_paths = plain_paths
        torch.set_num_threads(2)
        made = run_all(Path(tmp) / "work", command("interpolate"))
    arrays = {f"{name}/{i}": frame for name, frames in made.items() for i, frame in enumerate(frames)}
    record = {"machine": machine(), "sha256": {name: [sha256(f) for f in frames] for name, frames in made.items()}}
    np.savez_compressed(args.out, record=np.frombuffer(json.dumps(record).encode(), dtype=np.uint8), **arrays)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
