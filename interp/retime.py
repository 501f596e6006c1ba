"""Perceptual re-timing (Section 5.2): evenly spaced positions do not change the picture at an even rate, so
after a pass the steps between adjacent frames are measured (interp/measure.py) and the sequence is made again
at positions where its perceptual length grows evenly.

The path is the one the method moves along, from the first input's latent to the second's (an input image is
one VAE round trip from its decoded latent, a gap no position can close). Its length is known at the frames,
s_0 = 0 and s_i = d_1 + ... + d_i at positions p_0 < ... < p_N, and is taken as linear between them. Frame i
moves to where s reaches i S / N (S = s_N): the new positions increase, both inputs stay where they are, and
a step that was twice the average now covers about half as much of the path. The second pass goes through
`--schedule p_0,...,p_N` into RUN/retimed; it reuses the inputs, the prompt embeddings (the inversion cache)
and the loaded networks, while every frame between the inputs sits at a new position and is made anew.

`interpolate A B --retime SPACE ...` runs both passes; `interp-retime RUN [--features SPACE]` re-times a
finished run.
"""
import dataclasses
import os
import sys

import numpy as np

from ldm import weights
from ldm.errors import UserError
from ldm.runtime import Parser, check_device, run

from .measure import SPACES, Cache, Frame, Sequence, add_feature_args, load_spaces, path_metrics, wanted_files
from .output import write_json

RETIMED = "retimed"
RECORD = "retime.json"  # written once the re-timed run is complete


def even_positions(positions, steps) -> tuple:
    """Positions p*_0 = 0 < ... < p*_N = 1 at which the piecewise-linear path length s(p) grows by S / N per frame."""
    p, d = np.asarray(positions, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    floor = 1e-6 * max(float(d.sum()), 1e-12)  # a step of zero still moves the frame a little: positions stay distinct
    s = np.concatenate([[0.0], np.cumsum(np.maximum(d, floor))])
    new = np.interp(np.linspace(0.0, s[-1], len(p)), s, p)
    new[0], new[-1] = 0.0, 1.0
    return tuple(float(x) for x in new)


def _summary(seq: Sequence, steps: list) -> dict:
    return {"positions": list(seq.positions), "steps": steps, **path_metrics(steps)}


def _path(seq: Sequence, ends: tuple) -> tuple:
    """The frames of the path the method moves along: the inputs as their latents decode (`ends`: one VAE round
    trip from the images themselves, a gap no position can close), and the frames between them."""
    return (ends[0], *seq.frames[1:-1], ends[1])


def retime(s, make, decoded_ends) -> dict:
    """Make the run of settings `s` with `make(settings)`, measure its steps in space `s.retime`, and make it again
    at even positions in `s.out`/retimed; returns what retime.json records (before and after), None with
    --fetch-only. `decoded_ends(run folder)` gives the two inputs decoded from their latents."""
    make(s)
    paths = weights.resolve_all(wanted_files((s.retime,), s)[s.retime])
    if s.fetch_only:
        print(f"{s.retime}: {', '.join(map(str, paths))}")
        return None
    loaded = load_spaces((s.retime,), {s.retime: paths}, s, check_device(s.device),
                         Cache(os.path.join(s.out, "features.safetensors")))[s.retime]
    try:
        first = Sequence.read(s.out)
        # both passes start from the same inputs, so their decoded latents are the same
        ends = tuple(Frame.of_image(im, f"decoded input {k}") for k, im in zip((0, "N"), decoded_ends(s.out)))
        before = _summary(first, loaded.steps(_path(first, ends)))
        target = dataclasses.replace(s, schedule=even_positions(first.positions, before["steps"]),
                                     out=os.path.join(s.out, RETIMED), retime=None)
        make(target)
        second = Sequence.read(target.out)
        after = _summary(second, loaded.steps(_path(second, ends)))
    finally:
        loaded.cache.save()
    record = {"space": s.retime, "folder": RETIMED, "before": before, "after": after}
    write_json(os.path.join(s.out, RECORD), record)
    print(f"re-timed in {s.retime} space: 1 - Gini {before['smoothness']:.3f} -> {after['smoothness']:.3f}, "
          f"largest step {before['max']:.4g} -> {after['max']:.4g} (path length {before['total']:.4g} -> "
          f"{after['total']:.4g}); the re-timed run is {target.out}", file=sys.stderr)
    return record


def main(argv=None):
    """`interp-retime RUN_DIR [--features SPACE]`: re-time a finished run of interpolate."""
    from pose.errors import PoseError

    from .cli import interpolate
    from .settings import from_run
    p = Parser(prog="interp-retime", description="Make a finished run again at positions that even out the "
               "perceptual steps between its frames (Section 5.2); the result goes to RUN_DIR/retimed.")
    p.add_argument("run_dir")
    p.add_argument("--features", choices=list(SPACES), default="lpips-alex", help="the space the steps are measured in")
    add_feature_args(p, clip=False)  # the clip space uses the run's own --clip
    args = p.parse_args(argv)

    run(lambda: interpolate(from_run(args.run_dir, retime=args.features, inception=args.inception,
                                     lpips_backbone=args.lpips_backbone, lpips_heads=args.lpips_heads)),
        errors=(UserError, PoseError),
        interrupted=f"interrupted: run the same command again to resume ({args.run_dir} keeps what is made)")
