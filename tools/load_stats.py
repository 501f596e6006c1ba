#!/usr/bin/env python3
"""Load a checkpoint through `ldm.load_checkpoint` and report load time and peak memory (RSS).

    python tools/load_stats.py weights/v2-1_768-ema-pruned.safetensors --dtype float16

Peak RSS is the whole process (interpreter and torch included), taken from getrusage; the ratio is
against the bytes of the tensors the loader reads (UNet, VAE, text encoder) in the file.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--config", default=None)
    a = p.parse_args(argv)
    import torch  # noqa: F401  (imported before the baseline so it is not counted as loading)
    import ldm
    from ldm.load.checkpoint import PREFIXES
    from ldm.load.safetensors_io import SafetensorsFile
    st = SafetensorsFile(a.file)
    tensor_bytes = sum(st.nbytes(k) for k in st.keys() if k.startswith(tuple(PREFIXES[c] for c in ("unet", "vae", "text"))))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    sd = ldm.load_checkpoint(a.file, dtype=a.dtype, config=a.config)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"loaded {a.file} as {sd.dtype} in {seconds:.1f} s; file tensors {tensor_bytes / 2**30:.2f} GiB; "
          f"peak RSS {peak / 2**30:.2f} GiB = {peak / tensor_bytes:.2f}x (before loading {base / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
