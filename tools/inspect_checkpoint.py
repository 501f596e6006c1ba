#!/usr/bin/env python3
"""Say what a .safetensors checkpoint is without loading its tensors: detected model, components with
parameter counts and dtypes, total size, keys that match no known component, and how the keys compare
with the architecture this project builds (SD 2.1 unless --config says otherwise).

    python tools/inspect_checkpoint.py weights/v2-1_768-ema-pruned.safetensors
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ldm.errors import UserError  # noqa: E402
from ldm.load import weights  # noqa: E402
from ldm.load.checkpoint import PREFIXES, config_for, detect  # noqa: E402
from ldm.load.safetensors_io import SafetensorsFile  # noqa: E402
from ldm.sample.schedule import schedule_buffers  # noqa: E402


def expected_shapes(config) -> dict:
    """{prefix: {key: shape}} of the modules this project would load the file into."""
    from ldm.nets.controlnet import ControlNet
    from ldm.nets.text import TextTransformer
    from ldm.nets.unet import UNetModel
    from ldm.nets.vae import AutoencoderKL
    with torch.device("meta"):
        modules = {"unet": UNetModel(config.unet), "vae": AutoencoderKL(config.vae),
                   "text": TextTransformer(config.text), "controlnet": ControlNet(config.unet)}
    return {PREFIXES[name]: {k: tuple(v.shape) for k, v in m.state_dict().items()} for name, m in modules.items()}


def report(path, config=None) -> str:
    st = SafetensorsFile(path)
    lines = [f"file        {path} ({Path(path).stat().st_size / 1e9:.3f} GB)",
             f"detected    {detect(st)}"]
    name, entry = weights.lookup(path)
    if name:
        lines.append(f"catalog     {name}: {entry['what']}")
    expected = expected_shapes(config_for(Path(path), config))
    known = set(schedule_buffers())
    for prefix in PREFIXES.values():
        keys = [k for k in st.keys() if k.startswith(prefix)]
        if not keys:
            continue
        known.update(keys)
        present = {k[len(prefix):] for k in keys}
        dtypes = Counter(str(st.dtype(k)).replace("torch.", "") for k in keys)
        params = sum(st.numel(k) for k in keys)
        nbytes = sum(st.nbytes(k) for k in keys)
        want = expected[prefix]
        missing, extra = want.keys() - present, present - want.keys()
        reshaped = [k for k in present & want.keys() if st.shape(prefix + k) != want[k]]
        check = (f"{len(missing)} missing, {len(extra)} unexpected, {len(reshaped)} reshaped keys"
                 if missing or extra or reshaped else "keys and shapes match")
        lines.append(f"{prefix:<26}{len(keys):5d} tensors {params / 1e6:9.1f} M params {nbytes / 1e9:6.3f} GB "
                     f"{dict(dtypes)}  ({check})")
    buffers = [k for k in st.keys() if k in schedule_buffers()]
    lines.append(f"schedule    {len(buffers)} of 12 buffers")
    other = sorted(set(st.keys()) - known)
    if other:
        groups = Counter(k.split(".")[0] for k in other)
        lines.append(f"other keys  {len(other)}: " + ", ".join(f"{g}.* x{n}" if n > 1 else g for g, n in groups.items()))
    total = sum(st.nbytes(k) for k in st.keys())
    lines.append(f"tensors     {len(st.keys())} in all, {total / 1e9:.3f} GB of data")
    if st.metadata:
        lines.append(f"metadata    {dict(list(st.metadata.items())[:8])}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--config", default=None, help="architecture JSON for non-SD-2.1 files")
    a = p.parse_args(argv)
    try:
        print(report(a.file, a.config))
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
