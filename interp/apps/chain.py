"""A chain: one sequence through three or more keyframes, `interpolate A.png B.png C.png ... --out DIR`.

Each consecutive pair is a run of its own, `DIR/segment_01`, `DIR/segment_02`, ... (a RunDir each, so an
interrupted chain resumes segment by segment), made at the first segment's frame size. The frame where two
segments meet is the keyframe itself and appears once. DIR gets one video, GIF and contact sheet of the
whole chain and `chain.json`:

    {"images": [...], "segments": ["segment_01", ...], "frames": [["segment_01", 0], ..., ["segment_02", 1], ...],
     "fps": 8.0, "outputs": {"video": ..., "gif": ..., "contact_sheet": ...}, "video_codec": ...}
"""
import dataclasses
import json
import os
import sys

from ldm.files import check_writable

from ..pipeline import chain_segment
from .rundir import open_frame, write_json, write_outputs

CHAIN = "chain.json"


@dataclasses.dataclass(frozen=True)
class Chain:
    path: str
    runs: list    # a RunDir per segment
    frames: list  # (RunDir, frame index) of each frame of the chain, in order


def segments(s) -> list:
    """The options of each consecutive pair of `s.images`, in its own folder under `s.out`."""
    return [dataclasses.replace(s, images=s.images[k:k + 2], poses=s.poses and s.poses[k:k + 2],
                                out=os.path.join(s.out, f"segment_{k + 1:02d}"))
            for k in range(len(s.images) - 1)]


def make(s, make_pair, check) -> Chain:
    """Make every segment with `make_pair(options)` (after `check` has checked all of them), then the
    chain's outputs; with --fetch-only, fetch what the first segment needs (all of them need the same)."""
    parts = segments(s)
    for part in parts:
        check(part)
    if s.fetch_only:
        return make_pair(parts[0])
    check_writable(s.out, "--out", folder=True, keep=False)  # made by the first segment's run
    runs = []
    for k, part in enumerate(parts):
        part = dataclasses.replace(part, settings=chain_segment(part.settings, runs[0].settings["size"] if runs else None))
        print(f"[chain] segment {k + 1} of {len(parts)}: {part.images[0]} -> {part.images[1]}", file=sys.stderr)
        runs.append(make_pair(part))
    frames = [(run, i) for k, run in enumerate(runs) for i in range(1 if k else 0, run.count)]
    record = {"segments": [os.path.basename(run.path) for run in runs],
              "frames": [[os.path.basename(run.path), i] for run, i in frames], "fps": s.fps}
    if all(run.unchanged for run in runs) and _complete(s.out, record):
        print(f"{s.out} already holds this chain, complete: nothing to do (--overwrite makes it again)")
        return Chain(s.out, runs, frames)
    outputs, codec = write_outputs(s.out, [open_frame(run.frame_path(i)) for run, i in frames], s.fps)
    write_json(os.path.join(s.out, CHAIN), {"images": list(s.images), **record, "outputs": outputs,
                                            "video_codec": codec})
    print(f"wrote a chain of {len(frames)} frames through {len(s.images)} images to {s.out}")
    return Chain(s.out, runs, frames)


def _complete(folder: str, record: dict) -> bool:
    """Whether `folder`'s chain.json records these segments, frames and fps, and its outputs are all there
    (then a rerun whose segments were all finished already rewrites nothing)."""
    try:
        with open(os.path.join(folder, CHAIN), encoding="utf-8") as f:
            state = json.load(f)
        outputs = state["outputs"].values()
        return all(state[k] == v for k, v in record.items()) and all(
            os.path.isfile(os.path.join(folder, name)) for name in outputs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
