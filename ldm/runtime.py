"""What every command shares: the model options (parsed into `ldm.load.model.ModelOptions`), progress bars and
the one-line error exit. The commands (`ldm.cli`, `interp.apps.*`) import it; no command imports another
command."""
import argparse
import sys

from .accel import COMPILED_BATCH
from .errors import UserError
from .load.model import DEFAULT_MODEL, ModelOptions, default_device


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one `error:` line (exit 2) instead of the whole usage."""

    def error(self, message):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


def number(kind, low=None, high=None, low_open: bool = False):
    """An argparse type: a `kind` (int or float) in [low, high] (low excluded with `low_open`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, not {text!r}") from None
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high) or value != value:
            if high is None:
                bounds = f"{'>' if low_open else '>='} {low}"
            else:
                bounds = f"in ({low}, {high}]" if low_open else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
        return value
    return parse


def add_device_arg(p) -> None:
    """--device, the GPU when there is one."""
    p.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N or mps")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options every command that loads SD takes."""
    p.add_argument("--ckpt", default=DEFAULT_MODEL,
                   help=f"checkpoint path or weights-catalog name (default {DEFAULT_MODEL}, downloaded on first use)")
    p.add_argument("--config", default=None, help="architecture JSON for non-SD-2.1 checkpoints")
    p.add_argument("--prediction", choices=["v", "eps"], default=None, help="override the model's prediction type")
    add_device_arg(p)
    p.add_argument("--dtype", default="auto",
                   help="float32, float16, bfloat16, or auto: on CUDA bfloat16 where the card has it, else "
                        "float16; bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX); else float32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and ControlNet (on CUDA the VAE decoder too): faster steps on GPUs "
                        "after a slow first one; on CPUs with frozen, prepacked weights (a second copy of them in "
                        "memory, minutes to compile, 5-14%% faster steps on a Zen 4: off unless asked), and "
                        f"interpolations then call them with a fixed batch (--max-batch, default {COMPILED_BATCH}) "
                        "so that they compile once")


def model_options(args) -> ModelOptions:
    """The typed model options of a command's parsed `add_model_args` options."""
    return ModelOptions(ckpt=args.ckpt, config=args.config, prediction=args.prediction, device=args.device,
                        dtype=args.dtype, compile=args.compile)


def print_notes(notes, tag: str = "model") -> None:
    for note in notes:
        print(f"[{tag}] {note}", file=sys.stderr)


def progress(total: int, desc: str):
    """A tqdm bar as a callback of any signature (a sampler step, an inversion step): one tick per call."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def tick(*_):
        bar.update(1)
        if bar.n >= bar.total:
            bar.close()
    return tick


def run(main, errors=(UserError,), interrupted: str = "interrupted"):
    """Run a command body, turning `errors` (the problems a user can fix) into `error: ...` and exit status 2,
    and Ctrl-C into the line `interrupted` (on a line of its own, after any progress bar) and status 130."""
    try:
        main()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a file that could not be read or written after the checks (disk full, removed...)
        print(f"error: {e.filename or 'a file'}: {e.strerror or e}: check the path, its permissions and the free "
              "space, then run the command again", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        sys.exit(130)
