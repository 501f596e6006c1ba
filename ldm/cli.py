"""The `txt2img` and `img2img` commands: thin wrappers over `ldm.pipeline` with model loading,
progress bars and one-line errors."""
import argparse
import sys
import time

import torch

from .accel import compile_model, default_dtype
from .checkpoint import load_checkpoint, parse_dtype
from .errors import UserError
from .images import fit, open_image, parse_size, save_png
from .ddim import ddim_timesteps
from .pipeline import img2img, img2img_start, txt2img
from .weights import resolve

DEFAULT_MODEL = "sd21-512-base"


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options every command that loads SD takes."""
    p.add_argument("--ckpt", default=DEFAULT_MODEL,
                   help=f"checkpoint path or weights-catalog name (default {DEFAULT_MODEL}, downloaded on first use)")
    p.add_argument("--config", default=None, help="architecture JSON for non-SD-2.1 checkpoints")
    p.add_argument("--prediction", choices=["v", "eps"], default=None, help="override the model's prediction type")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto",
                   help="float32, float16, bfloat16, or auto: float16 on CUDA, bfloat16 on CPUs with native "
                        "bfloat16 (AVX512-BF16 or AMX), else float32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (and ControlNet): faster steps on GPUs after a slow first one")


def check_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return parse_dtype(name)
    return default_dtype(device)


def load_model(args):
    device = check_device(args.device)
    sd = load_checkpoint(resolve(args.ckpt, "sd"), device=device, dtype=resolve_dtype(args.dtype, device),
                         prediction=args.prediction, config=args.config)
    if args.compile:
        compile_model(sd.unet, device)
    for note in sd.notes:
        print(f"[model] {note}", file=sys.stderr)
    return sd


def progress(total: int, desc: str):
    """A tqdm bar as a callback of any signature (a sampler step, an inversion step): one tick per call."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def tick(*_):
        bar.update(1)
        if bar.n >= bar.total:
            bar.close()
    return tick


def _sampling_args(p: argparse.ArgumentParser, steps: int = 200, cfg: float = 9.0) -> None:
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt (the unconditional side of guidance)")
    p.add_argument("--steps", type=int, default=steps, help="DDIM schedule length")
    p.add_argument("--cfg", type=float, default=cfg, help="classifier-free guidance scale")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output PNG")
    add_model_args(p)


def run(main, errors=(UserError,)):
    """Run a command body, turning `errors` (the problems a user can fix) into `error: ...` and exit status 2."""
    try:
        main()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def txt2img_main(argv=None):
    p = argparse.ArgumentParser(prog="txt2img", description="Generate an image from a prompt with SD 2.x (DDIM).")
    _sampling_args(p)
    p.add_argument("--size", default=None, help="W or WxH, multiples of 64 (default: the model's native size)")
    args = p.parse_args(argv)

    def body():
        size = parse_size(args.size) if args.size else None
        sd = load_model(args)
        t0 = time.perf_counter()
        image = txt2img(sd, args.prompt, args.negative, args.steps, args.cfg, args.seed, size, args.eta,
                        callback=progress(len(ddim_timesteps(args.steps)), "txt2img"))
        save_png(image, args.out, {"prompt": args.prompt, "negative": args.negative, "seed": args.seed,
                                   "steps": args.steps, "cfg": args.cfg})
        print(f"wrote {args.out} ({image.size[0]}x{image.size[1]}, {time.perf_counter() - t0:.1f} s)")
    run(body)


def img2img_main(argv=None):
    p = argparse.ArgumentParser(prog="img2img", description="Re-imagine an image with SD 2.x (DDIM from a noised latent).")
    p.add_argument("--image", required=True)
    p.add_argument("--strength", type=float, default=0.5, help="fraction of the schedule to re-run (0, 1]")
    _sampling_args(p)
    p.add_argument("--size", default=None,
                   help="W or WxH (default: the image's size rounded down to multiples of 64); "
                        "the image is centre-cropped to the aspect ratio, then resized")
    args = p.parse_args(argv)

    def body():
        image = fit(open_image(args.image), parse_size(args.size) if args.size else None)
        start = img2img_start(args.strength, len(ddim_timesteps(args.steps)))  # fail before loading the model
        sd = load_model(args)
        t0 = time.perf_counter()
        out = img2img(sd, image, args.prompt, args.negative, args.strength, args.steps, args.cfg, args.seed, args.eta,
                      callback=progress(start + 1, "img2img"))
        save_png(out, args.out, {"prompt": args.prompt, "negative": args.negative, "seed": args.seed,
                                 "steps": args.steps, "cfg": args.cfg, "strength": args.strength})
        print(f"wrote {args.out} ({out.size[0]}x{out.size[1]}, {time.perf_counter() - t0:.1f} s)")
    run(body)
