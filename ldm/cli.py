"""The `txt2img` and `img2img` commands: thin wrappers over `ldm.sample.pipeline` with model loading,
progress bars and one-line errors."""
import argparse
import time

from .files import check_writable
from .images import fit, open_image, parse_size, save_png
from .load.model import load_model
from .runtime import Parser, add_model_args, model_options, number, print_notes, progress, run
from .sample.ddim import ddim_timesteps
from .sample.pipeline import img2img, img2img_start, txt2img


def _sampling_args(p: argparse.ArgumentParser, steps: int = 200, cfg: float = 9.0) -> None:
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt (the unconditional side of guidance)")
    p.add_argument("--steps", type=number(int, 1, 1000), default=steps, help="DDIM schedule length")
    p.add_argument("--cfg", type=number(float, 0), default=cfg, help="classifier-free guidance scale")
    p.add_argument("--eta", type=number(float, 0, 1), default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=number(int, 0), default=0)
    p.add_argument("--out", required=True, help="output PNG")
    add_model_args(p)


def _load(args):
    sd = load_model(model_options(args))
    print_notes(sd.notes)
    return sd


def txt2img_main(argv=None):
    p = Parser(prog="txt2img", description="Generate an image from a prompt with SD 2.x (DDIM).")
    _sampling_args(p)
    p.add_argument("--size", default=None, help="W or WxH, multiples of 64 (default: the model's native size)")
    args = p.parse_args(argv)

    def body():
        size = parse_size(args.size) if args.size else None
        check_writable(args.out, "--out")
        sd = _load(args)
        t0 = time.perf_counter()
        image = txt2img(sd, args.prompt, args.negative, args.steps, args.cfg, args.seed, size, args.eta,
                        callback=progress(len(ddim_timesteps(args.steps)), "txt2img"))
        save_png(image, args.out, {"prompt": args.prompt, "negative": args.negative, "seed": args.seed,
                                   "steps": args.steps, "cfg": args.cfg})
        print(f"wrote {args.out} ({image.size[0]}x{image.size[1]}, {time.perf_counter() - t0:.1f} s)")
    run(body)


def img2img_main(argv=None):
    p = Parser(prog="img2img", description="Re-imagine an image with SD 2.x (DDIM from a noised latent).")
    p.add_argument("--image", required=True)
    p.add_argument("--strength", type=number(float, 0, 1, low_open=True), default=0.5, help="fraction of the schedule to re-run (0, 1]")
    _sampling_args(p)
    p.add_argument("--size", default=None,
                   help="W or WxH (default: the image's size rounded down to multiples of 64); "
                        "the image is centre-cropped to the aspect ratio, then resized")
    args = p.parse_args(argv)

    def body():
        image = fit(open_image(args.image), parse_size(args.size) if args.size else None)
        start = img2img_start(args.strength, len(ddim_timesteps(args.steps)))  # fail before loading the model
        check_writable(args.out, "--out")
        sd = _load(args)
        t0 = time.perf_counter()
        out = img2img(sd, image, args.prompt, args.negative, args.strength, args.steps, args.cfg, args.seed, args.eta,
                      callback=progress(start + 1, "img2img"))
        save_png(out, args.out, {"prompt": args.prompt, "negative": args.negative, "seed": args.seed,
                                 "steps": args.steps, "cfg": args.cfg, "strength": args.strength})
        print(f"wrote {args.out} ({out.size[0]}x{out.size[1]}, {time.perf_counter() - t0:.1f} s)")
    run(body)
