"""`interp-eval RUN_DIR... [--features inception,lpips-alex,...] [--out report/]`: Table 1 for a set of runs.

The run folders (or folders holding them: an interp-batch output) are grouped by scheme and by pair (the
inputs' content). Per scheme, as in Section 5.1: FID between the input images and the frames, once with two
random frames of every sequence (the paper's sampling, seeded) and once with all of them; the path length in
each feature space (Table 1's PPL in Inception space, mean ± std over sequences), the largest step and the
smoothness 1 - Gini(steps). Beside Table 1, the peers' protocols (interp/metrics/protocols.py): FreeMorph's
LPIPS_sum, FID_mean and PPL_sum over 7 frames, DiffMorpher's FID, PPL and PDV over 17, each measured on the runs
that hold frames at its positions. Written to OUT: report.md (one row per scheme), report.csv, protocols.csv,
sequences.csv (each sequence and its steps), report.json, and plots/ (bars per scheme; each sequence's steps
along the path).
"""
import argparse
import csv
import os
import sys
from datetime import datetime

import numpy as np
from tqdm import tqdm

from ldm.errors import UserError
from ldm.files import atomic_path, check_writable
from ldm.load import weights
from ldm.load.model import check_device
from ldm.runtime import Parser, add_device_arg, number, run

from ..metrics import plots
from ..metrics.measure import (AUTHORS_LABEL, SPACES, Cache, FeatureFiles, Sequence, add_feature_args, fid, find_runs,
                               input_frames, load_spaces, parse_spaces, path_metrics, wanted_files)
from ..metrics.protocols import PROTOCOLS, SPACE as PROTOCOL_SPACE
from ..schemes import SCHEMES
from .rundir import write_json


def parser(cls=Parser):
    p = cls(prog="interp-eval", description="Measure interpolation runs as in Table 1 (FID, PPL) and by the "
            "peers' smoothness metrics (total and largest LPIPS step, 1 - Gini).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of interpolate, or folders holding them")
    p.add_argument("--features", type=_spaces, default=("inception",),
                   help=f"feature spaces of the steps, comma-separated: {', '.join(SPACES)} (FID always uses "
                        "inception)")
    p.add_argument("--out", default="report", help="folder of the report (its cache makes a rerun fast)")
    p.add_argument("--protocols", type=_protocols, default=tuple(PROTOCOLS), metavar="NAMES",
                   help="the peers' protocols reported beside Table 1, comma-separated: "
                        + "; ".join(f"{p.name} ({p.frames} frames: {', '.join(h for _, h in p.columns)})"
                                    for p in PROTOCOLS.values())
                        + " (default: both; 'none': neither). A run is measured by the frames at the protocol's "
                          "positions: make 7, 13 or 17 frames, or 49 for both")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the random frames drawn for FID")
    add_device_arg(p)
    add_feature_args(p)
    return p


def _spaces(text: str) -> tuple:
    try:
        return parse_spaces(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _protocols(text: str) -> tuple:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown protocol {', '.join(unknown) or repr(text)}: use "
                                         f"{', '.join(PROTOCOLS)} (several: comma-separated), or none")
    return names


def _sequences(folders) -> list:
    """The finished runs among `folders`; an unfinished one is named and left out."""
    found = []
    for folder in folders:
        try:
            found.append(Sequence.read(folder))
        except UserError as e:
            print(f"warning: {e}", file=sys.stderr)
    if not found:
        raise UserError("none of the runs given is finished: finish them first (run their commands again)")
    return found


def _two_random(sequences, seed: int) -> list:
    """Two distinct frames between the inputs of every sequence (all of them where there are fewer)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for seq in sequences:
        inner = list(seq.frames[1:-1])
        chosen += [inner[k] for k in sorted(rng.choice(len(inner), size=min(2, len(inner)), replace=False))]
    return chosen


def _mean_std(values) -> tuple:
    return float(np.mean(values)), float(np.std(values))


def by_scheme(sequences) -> dict:
    """{scheme: its sequences} in Table 1's order, a baseline at the authors' defaults beside the same scheme
    held equal."""
    order = {name: k for k, name in enumerate(SCHEMES)}
    def rank(name):
        return order.get(name.removesuffix(AUTHORS_LABEL), len(order)), name
    return {scheme: [s for s in sequences if s.scheme == scheme]
            for scheme in sorted({s.scheme for s in sequences}, key=rank)}


def scheme_rows(groups: dict, spaces, paths: dict, inception, seed: int) -> dict:
    """{scheme: row} of `groups` ({scheme: its sequences}, `by_scheme`); `paths` is {(folder, space): path_metrics
    of its steps} for each space of `spaces`."""
    rows = {}
    for scheme, group in groups.items():
        reference = inception.vectors(input_frames(s.frames for s in group))
        row = {"sequences": len(group), "pairs": len({s.pair_key for s in group}),
               "fid_two_random": fid(reference, inception.vectors(_two_random(group, seed))),
               "fid_all": fid(reference, inception.vectors([f for s in group for f in s.frames[1:-1]])),
               "spaces": {}}
        for space in spaces:
            each = [paths[s.folder, space] for s in group]
            total, total_std = _mean_std([p["total"] for p in each])
            row["spaces"][space] = {"total_mean": total, "total_std": total_std,
                                    "max_mean": float(np.mean([p["max"] for p in each])),
                                    "smoothness_mean": float(np.mean([p["smoothness"] for p in each]))}
        rows[scheme] = row
    return rows


def _number(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def _table(report: dict) -> list:
    """Table 1's layout, one row per scheme, as Markdown lines."""
    spaces, rows = report["features"], report["schemes"]
    head = ["Scheme", "n", "FID (2 random)", "FID (all)"]
    for space in spaces:
        head += [f"path length, {space}", f"largest step, {space}", f"1 - Gini, {space}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scheme, row in rows.items():
        cells = [scheme, str(row["sequences"]), _number(row["fid_two_random"], 4), _number(row["fid_all"], 4)]
        for space in spaces:
            m = row["spaces"][space]
            cells += [f"{_number(m['total_mean'])} ± {_number(m['total_std'], 2)}", _number(m["max_mean"]),
                      _number(m["smoothness_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _protocol_tables(report: dict) -> list:
    """One Markdown table per peer protocol, rows by scheme."""
    lines = []
    for name, measured in report["protocols"].items():
        protocol = PROTOCOLS[name]
        lines += [f"### {protocol.source}: {protocol.frames} frames, LPIPS on AlexNet", "",
                  "| Scheme | n | " + " | ".join(h for _, h in protocol.columns) + " |",
                  "|" + "---|" * (2 + len(protocol.columns))]
        for scheme, row in measured["schemes"].items():
            cells = [_number(row.get(key), 5) for key, _ in protocol.columns]  # n/a where none was measured
            lines.append(f"| {scheme} | {row['sequences']} | " + " | ".join(cells) + " |")
        left = {scheme: row["left_out"] for scheme, row in measured["schemes"].items() if row["left_out"]}
        if left:
            lines.append(f"\nLeft out, without frames at the positions k/{protocol.frames - 1}: "
                         + ", ".join(f"{n} of {scheme}" for scheme, n in left.items()) + ".")
        lines += ["", f"For comparison, {protocol.published}.", ""]
    return lines


def _markdown(report: dict) -> str:
    lines = [f"# Interpolation report ({report['created']})", "",
             f"{len(report['sequences'])} sequences of {report['pairs']} pairs. FID between the input images and "
             f"the frames (two random frames per sequence, seed {report['seed']}; and all frames). Path length: the "
             "sum of the steps between adjacent frames (Table 1's PPL in inception space), mean ± std over "
             "sequences; largest step and 1 - Gini(steps), means over sequences.", "", *_table(report),
             "", "What these numbers say and do not say (Section 5.1): FID measures how far the frames' feature "
              "statistics are from the inputs', and path length how far the sequence travels; both favour "
              "sequences that stay close to an alpha blend of the inputs, which people do not prefer. With few "
              "pairs FID rests on a rank-deficient covariance and compares schemes only roughly.", "",
              "Plots: plots/metrics.png (per scheme) and plots/steps_<space>.png (each sequence's steps along "
              "the path)."]
    if report["protocols"]:
        lines += ["", "## The peers' protocols", "", "Measured as interp/metrics/protocols.py defines them (neither "
                  "paper publishes its evaluation code). Their tables are for 768 px frames of MorphBench or "
                  "Morph4Data: compare runs of those pairs at that size.", "", *_protocol_tables(report)]
    return "\n".join(lines) + "\n"


def _write_csv(path, header: list, rows: list) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_report(out: str, report: dict) -> None:
    spaces, rows = report["features"], report["schemes"]
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    write_json(os.path.join(out, "report.json"), report)
    measures = ("total_mean", "total_std", "max_mean", "smoothness_mean")
    _write_csv(os.path.join(out, "report.csv"),
               ["scheme", "sequences", "pairs", "fid_two_random", "fid_all"] + [f"{s}_{m}" for s in spaces for m in measures],
               [[name, r["sequences"], r["pairs"], r["fid_two_random"], r["fid_all"]]
                + [r["spaces"][s][m] for s in spaces for m in measures] for name, r in rows.items()])
    _write_csv(os.path.join(out, "sequences.csv"), ["run", "scheme", "pair", "space", "total", "max", "smoothness", "steps"],
               [[q["run"], q["scheme"], q["pair"], s, m["total"], m["max"], m["smoothness"], ";".join(f"{d:.6g}" for d in m["steps"])]
                for q in report["sequences"] for s, m in q["spaces"].items()])
    _write_csv(os.path.join(out, "protocols.csv"), ["protocol", "scheme", "sequences", "left_out", "measure", "value"],
               [[name, scheme, row["sequences"], row["left_out"], key, row.get(key)]
                for name, measured in report["protocols"].items() for scheme, row in measured["schemes"].items()
                for key, _ in PROTOCOLS[name].columns])
    with atomic_path(os.path.join(out, "report.md")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(_markdown(report))
    names = list(rows)
    panels = [("FID, 2 random frames", [rows[n]["fid_two_random"] for n in names], [None] * len(names)),
              ("FID, all frames", [rows[n]["fid_all"] for n in names], [None] * len(names))]
    for space in spaces:
        panels += [(f"path length ({space})", [rows[n]["spaces"][space]["total_mean"] for n in names],
                    [rows[n]["spaces"][space]["total_std"] for n in names]),
                   (f"1 - Gini ({space})", [rows[n]["spaces"][space]["smoothness_mean"] for n in names], [None] * len(names))]
    plots.bars(os.path.join(out, "plots", "metrics.png"), "interpolation schemes", names, panels)
    colour = {n: k for k, n in enumerate(names)}
    for space in spaces:
        series = [(colour[q["scheme"]], [((a + b) / 2, d) for a, b, d in zip(q["positions"], q["positions"][1:],
                                                                              q["spaces"][space]["steps"])])
                  for q in report["sequences"]]
        plots.curves(os.path.join(out, "plots", f"steps_{space}.png"), f"steps between adjacent frames ({space})",
                     "position along the path (between the two frames of a step)", series, names)


def evaluate(args) -> dict:
    check_writable(args.out, "--out", folder=True)
    sequences = _sequences(find_runs(args.runs))
    device = check_device(args.device)
    protocols = [PROTOCOLS[name] for name in args.protocols]
    measurable = any(p.picks(s) is not None for p in protocols for s in sequences)
    spaces = tuple(dict.fromkeys(("inception", *args.features, *[PROTOCOL_SPACE] * measurable)))  # FID: inception
    features = FeatureFiles.of(args)
    files = wanted_files(spaces, features)
    resolved = iter(weights.resolve_all([want for wants in files.values() for want in wants]))
    paths = {space: [next(resolved) for _ in wants] for space, wants in files.items()}
    cache = Cache(os.path.join(args.out, "cache.safetensors"))
    loaded = load_spaces(spaces, paths, features, device, cache)
    paths = {}  # (folder, space) -> the path's metrics and its steps
    try:
        for seq in tqdm(sequences, desc="sequences", file=sys.stderr, leave=False):
            for space in args.features:
                steps = loaded[space].steps(seq.frames)
                paths[seq.folder, space] = {**path_metrics(steps), "steps": steps}
        groups = by_scheme(sequences)
        rows = scheme_rows(groups, args.features, paths, loaded["inception"], args.seed)
        peers = {p.name: {"source": p.source, "frames": p.frames,
                          "schemes": {scheme: p.measure(group, loaded.get(PROTOCOL_SPACE), loaded["inception"], args.seed)
                                      for scheme, group in groups.items()}} for p in protocols}
    finally:
        cache.save()  # what was computed is kept, even when interrupted
    report = {"created": datetime.now().astimezone().isoformat(timespec="seconds"), "features": list(args.features),
              "seed": args.seed, "pairs": len({s.pair_key for s in sequences}), "schemes": rows, "protocols": peers,
              "sequences": [{"run": s.folder, "scheme": s.scheme, "pair": s.pair, "positions": list(s.positions),
                             "spaces": {sp: paths[s.folder, sp] for sp in args.features}} for s in sequences]}
    write_report(args.out, report)
    print("\n".join(_table(report)))
    if peers:
        print("\n" + "\n".join(_protocol_tables(report)).rstrip())
    print(f"wrote {os.path.join(args.out, 'report.md')} (and report.csv, protocols.csv, sequences.csv, report.json, "
          "plots/)")
    return report


def main(argv=None):
    args = parser().parse_args(argv)
    run(lambda: evaluate(args), interrupted=f"interrupted: {args.out} keeps the features computed so far")
