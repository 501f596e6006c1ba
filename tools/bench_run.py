#!/usr/bin/env python3
"""Time the method end to end on this machine (not a test), split into its phases: start-up (loading the
networks), textual inversion (with the encoding of the inputs), and the frames; the UNet, ControlNet and
VAE encoder and decoder calls are timed apart; each phase and each network with the minor page faults and
the system time it caused, and the run's peak RSS. With `--peer openvino`, the run's UNet calls without
gradients are timed again under OpenVINO (its conversion of the diffusers UNet with the same weights, at
each batch the run used, called as often as the run called ours): what the same arithmetic costs there.

    python tools/bench_run.py --ckpt sd21.safetensors --controlnet cn.safetensors -- --preview --frames 17
    python tools/bench_run.py --ckpt sd21.safetensors --controlnet cn.safetensors --peer openvino \\
        -- --frames 17 --size 512 --steps 20 --inversion-steps 50 --candidates 1

The options after `--` are the interpolate command's (the images, --ckpt, --controlnet, --poses and --out
are this tool's; --prompt has a default). The inputs are two generated pictures; with --controlnet, a
stick figure given as keypoints for each (pose guidance without OpenPose weights). Synthetic weights in
the real layout (tools/make_fixture_weights.py) time the same as real ones. OpenVINO and diffusers are
not dependencies of the package: install them in a throwaway environment.
"""
import argparse
import collections
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import interp  # noqa: E402
from bench import PeerUNet, diffusers_peer, machine_line, machine_meta, openvino_model, openvino_call, once, sync  # noqa: E402
from interp.apps.options import parse  # noqa: E402
from ldm.errors import UserError  # noqa: E402

# A standing figure in the 18 OpenPose keypoints (x, y in a unit square), its arms raised in image B.
FIGURE = [(.50, .16), (.50, .28), (.38, .28), (.31, .44), (.28, .59), (.62, .28), (.69, .44), (.72, .59),
          (.42, .59), (.41, .75), (.41, .91), (.58, .59), (.59, .75), (.59, .91), (.47, .13), (.53, .13),
          (.44, .14), (.56, .14)]
RAISED = {4: .20, 7: .20}  # the wrists, in image B


class Usage:
    """Wall seconds, minor page faults and system seconds of this process since `start`."""

    def __init__(self):
        self.seconds = self.faults = self.system = 0.0

    def start(self):
        u = resource.getrusage(resource.RUSAGE_SELF)
        self.t0, self.f0, self.s0 = time.perf_counter(), u.ru_minflt, u.ru_stime

    def stop(self):
        u = resource.getrusage(resource.RUSAGE_SELF)
        self.seconds += time.perf_counter() - self.t0
        self.faults += u.ru_minflt - self.f0
        self.system += u.ru_stime - self.s0

    def row(self) -> dict:
        return {"seconds": round(self.seconds, 3), "minor_faults": int(self.faults), "system_s": round(self.system, 3)}


class Clock:
    """What a network's forward calls cost (forward hooks), apart for calls with and without autograd
    recording (textual inversion's forward passes; the frames' calls), and how many calls of each input shape
    ran without it."""

    def __init__(self, module, device):
        self.device, self.usage = device, {True: Usage(), False: Usage()}
        self.shapes, self.shape_seconds = collections.Counter(), collections.Counter()
        module.register_forward_pre_hook(self.enter)
        module.register_forward_hook(self.leave)

    def enter(self, module, args):
        sync(self.device)
        self.usage[torch.is_grad_enabled()].start()

    def leave(self, module, args, out):
        sync(self.device)
        grad = torch.is_grad_enabled()
        before = self.usage[grad].seconds
        self.usage[grad].stop()
        if not grad:
            shape = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            self.shapes[shape] += 1
            self.shape_seconds[shape] += self.usage[grad].seconds - before


def pictures(folder: Path, side: int, pose: bool) -> tuple:
    """Two generated pictures in `folder` (and, with `pose`, a keypoint file of the figure for each)."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    images, poses = [], []
    for name, rgb, lift in (("a", (xx, yy, 1 - xx), {}), ("b", (1 - yy, xx * yy, yy), RAISED)):
        images.append(folder / f"{name}.png")
        Image.fromarray((np.stack(rgb, -1) * 255).astype(np.uint8)).save(images[-1])
        points = [[x * side, lift.get(j, y) * side, 1.0] for j, (x, y) in enumerate(FIGURE)]
        poses.append(folder / f"{name}.json")
        poses[-1].write_text(json.dumps({"width": side, "height": side, "people": [{"keypoints": points}]}))
    return images, poses if pose else None


def openvino_reference(unet, shapes: collections.Counter, dtype, repeats: int) -> dict:
    """The UNet calls of `shapes` ({(x, t, context) shapes: calls}) under OpenVINO: seconds per call at each shape
    (median of `repeats` after a warm-up call) and their total over the run's calls."""
    peer, note = diffusers_peer(unet)
    if peer is None:
        raise SystemExit(f"error: --peer openvino needs diffusers and openvino ({note}): install them in a throwaway environment")
    peer = PeerUNet(peer)
    model = None
    per_call = {}
    for shape, calls in sorted(shapes.items()):
        g = torch.Generator().manual_seed(0)
        x, ctx = (torch.randn(shape[i], generator=g) for i in (0, 2))
        t = torch.full(shape[1], 500)
        if model is None:  # converted once, reshaped to each shape
            model = openvino_model(peer, x, t, ctx)
        call = openvino_call(model, x, t, ctx, dtype)
        call()
        per_call[shape] = statistics.median(once(call, torch.device("cpu")) for _ in range(repeats))
        del call
    return {"per_call_s": {"x".join(map(str, s[0])): round(v, 3) for s, v in per_call.items()},
            "unet_s": round(sum(per_call[s] * n for s, n in shapes.items()), 3)}


def bench_run(args) -> tuple:
    """The run of `args`: its row, and the UNet with its dtype and the clock of its calls."""
    with tempfile.TemporaryDirectory() as tmp:
        images, poses = pictures(Path(tmp), 512, pose=args.controlnet is not None)
        argv = [*map(str, images), "--ckpt", args.ckpt, "--out", f"{tmp}/run", *args.run]
        if "--prompt" not in args.run:
            argv += ["--prompt", "a photograph of a person"]
        if poses:
            argv += ["--controlnet", args.controlnet, "--poses", *map(str, poses)]
        o = parse(argv)
        if o.files.compile:
            raise SystemExit("error: the phases are timed with hooks on the eager networks: time compiled networks with tools/bench.py --compile")
        phases = {name: Usage() for name in ("start-up", "inversion", "frames")}
        phases["start-up"].start()
        pipe = interp.Pipeline.from_files(o.files)
        sd = pipe.sd()
        job = pipe.prepare(*map(str, images), o.settings, keypoints=o.poses)
        controlnet = pipe.controlnet() if job.settings.pose and job.scheme.denoises else None
        phases["start-up"].stop()
        rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        clocks = {"unet": Clock(sd.unet, sd.device), "encoder": Clock(sd.vae.encoder, sd.device),
                  "decoder": Clock(sd.vae.decoder, sd.device)}
        if controlnet is not None:
            clocks["controlnet"] = Clock(controlnet, sd.device)

        def progress(stage, step, total):
            if stage == "frames" and step == 1:  # the frames' first DDIM step: inversion (and encoding) is over
                phases["inversion"].stop()
                phases["frames"].start()

        phases["inversion"].start()
        result = job.run(on_progress=progress)
        phases["frames"].stop()
    s = job.settings
    row = {"part": "run", "argv": args.run, "dtype": str(sd.dtype).removeprefix("torch."), "size": list(result.size),
           "frames": s.frames, "steps": s.steps, "inversion_steps": s.inversion_steps, "pose": controlnet is not None,
           "unet_calls": result.record["unet_calls"],
           "phases": {name: u.row() for name, u in phases.items()},
           "networks": {f"{name} {'with' if grad else 'without'} gradients": c.usage[grad].row()
                        for name, c in clocks.items() for grad in (True, False) if c.usage[grad].seconds},
           "calls": {name: {"x".join(map(str, k[0])): {"calls": n, "seconds": round(c.shape_seconds[k], 3)}
                            for k, n in c.shapes.items()} for name, c in clocks.items()},
           "rss_after_loading_gib": round(rss_loaded, 2),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    return row, sd.unet, sd.dtype, clocks["unet"]


def print_row(row: dict):
    print(f"\n{' '.join(row['argv'])}: {row['dtype']}, {row['size'][0]}x{row['size'][1]}, {row['frames']} frames, "
          f"{row['unet_calls']} UNet calls, peak RSS {row['peak_rss_gib']:.2f} GiB")
    print(f"{'':<36}{'seconds':>10}{'minor faults':>14}{'system s':>10}")
    for title, parts in (("", row["phases"]), ("  ", row["networks"])):
        for name, u in parts.items():
            print(f"{title + name:<36}{u['seconds']:>10.1f}{u['minor_faults']:>14,}{u['system_s']:>10.1f}")
    for name, shapes in row["calls"].items():
        print(f"{name} calls without gradients: " + ", ".join(
            f"{shape} x{c['calls']} ({c['seconds'] / c['calls']:.2f} s each)" for shape, c in shapes.items()))
    if "openvino" in row:
        v = row["openvino"]
        print(f"the same UNet calls: ours {v['ours_unet_s']:.1f} s, OpenVINO {v['unet_s']:.1f} s ({v['ratio']:.2f}x); "
              f"OpenVINO per call {v['per_call_s']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="SD 2.1 checkpoint (synthetic weights time the same)")
    p.add_argument("--controlnet", default=None, help="OpenPose ControlNet: pose guidance with given keypoints")
    p.add_argument("--peer", nargs="+", choices=["openvino"], default=[],
                   help="time the run's UNet calls under OpenVINO too (needs diffusers and openvino)")
    p.add_argument("--repeats", type=int, default=2, help="OpenVINO calls timed per batch shape")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("run", nargs=argparse.REMAINDER, help="-- then the interpolate command's options")
    a = p.parse_args(argv)
    a.run = a.run[1:] if a.run[:1] == ["--"] else a.run
    print(machine_line())
    try:
        row, unet, dtype, clock = bench_run(a)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    report(row, a.json)
    if "openvino" in a.peer:  # after the run is reported: converting the UNet takes minutes
        row["openvino"] = openvino_reference(unet, clock.shapes, dtype, a.repeats)
        row["openvino"]["ours_unet_s"] = round(clock.usage[False].seconds, 3)
        row["openvino"]["ratio"] = round(clock.usage[False].seconds / row["openvino"]["unet_s"], 3)
        report(row, a.json)


def report(row: dict, path):
    print_row(row)
    if path:
        Path(path).write_text(json.dumps({"meta": machine_meta(), "results": [row]}, indent=2))


if __name__ == "__main__":
    main()
