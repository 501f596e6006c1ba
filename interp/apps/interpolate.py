"""`interpolate A.png B.png --prompt "..." [--frames 17] [--out DIR]`: the paper's method end to end, into a run
folder (`interpolate A.png B.png C.png ...`: one sequence through every image); `interp-studio DIR` reopens a
run in the studio. Both are a command line around interp/apps/run.py, which drives the method's library
(`interp.Pipeline`).
"""
from ldm.errors import UserError
from ldm.runtime import Parser, run
from pose.errors import PoseError

from .options import add_studio_args, from_run, parse
from .run import Interrupted, make


def main(argv=None):
    options = parse(argv)
    run(lambda: make(options), errors=(UserError, PoseError),
        interrupted=Interrupted(options.out))  # says whether there are finished frames to resume from


def studio_main(argv=None):
    """`interp-studio RUN_DIR [--host H] [--port P]`: reopen a run in the studio, to finish or revise it."""
    p = Parser(prog="interp-studio", description="Reopen a run folder of interpolate in the interactive studio.")
    p.add_argument("run_dir")
    add_studio_args(p)
    args = p.parse_args(argv)
    run(lambda: make(from_run(args.run_dir, interactive=True, host=args.host, port=args.port)),
        errors=(UserError, PoseError), interrupted=f"interrupted: {args.run_dir} keeps the finished frames and choices")
