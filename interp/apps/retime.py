"""`interp-retime RUN_DIR [--features SPACE]`: re-time a finished run of interpolate (Section 5.2).

The path is the one the method moves along, from the first input's latent to the second's (an input image is
one VAE round trip from its decoded latent, a gap no position can close). Its length is known at the frames,
s_0 = 0 and s_i = d_1 + ... + d_i at positions p_0 < ... < p_N, and is taken as linear between them. Frame i
moves to where s reaches i S / N (S = s_N): the new positions increase, both inputs stay where they are, and
a step that was twice the average now covers about half as much of the path (`interp.schedules.even_positions`).
The second pass goes through `--schedule p_0,...,p_N` into RUN/retimed; it reuses the inputs, the prompt
embeddings (the inversion cache) and the loaded networks, while every frame between the inputs sits at a new
position and is made anew. `interpolate A B --retime SPACE ...` runs both passes in one command.
"""
import dataclasses

from ldm.errors import UserError
from ldm.runtime import Parser, run
from pose.errors import PoseError

from ..metrics.measure import SPACES, FeatureFiles, add_feature_args
from .options import from_run
from .run import make


def main(argv=None):
    p = Parser(prog="interp-retime", description="Make a finished run again at positions that even out the "
               "perceptual steps between its frames (Section 5.2); the result goes to RUN_DIR/retimed.")
    p.add_argument("run_dir")
    p.add_argument("--features", choices=list(SPACES), default="lpips-alex", help="the space the steps are measured in")
    add_feature_args(p, clip=False)  # the clip space uses the run's own --clip

    def body():
        o = from_run(args.run_dir, retime=args.features)
        make(dataclasses.replace(o, features=FeatureFiles.of(args, clip=o.files.clip, clip_config=o.files.clip_config)))
    args = p.parse_args(argv)
    run(body, errors=(UserError, PoseError),
        interrupted=f"interrupted: run the same command again to resume ({args.run_dir} keeps what is made)")
