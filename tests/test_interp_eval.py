"""interp-eval and perceptual re-timing on tiny-model runs of all six schemes, with the metric networks at
seeded synthetic weights (tests/metric_weights.py): the report's files and plots, its numbers recomputed by
hand, the cache, the bad inputs, and re-timing evening out the steps."""
import csv
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA
from metric_weights import manifest, synthetic_state
from studio_session import make_pair

from interp.apps import evaluate
from interp.metrics import measure
from interp import even_positions
from interp.schemes import SCHEMES


def tiny_run(tmp_path, tiny_dir, clip_tiny, out, scheme, *extra, pair="a"):
    args = ["interpolate", str(tmp_path / f"{pair}.png"), str(tmp_path / "b.png"), "--prompt", "a ball",
            "--ckpt", str(tiny_dir / "tiny.safetensors"), "--controlnet", str(tiny_dir / "controlnet.safetensors"),
            *(["--poses", str(tmp_path / f"{pair}.json"), str(tmp_path / "b.json")] if SCHEMES[scheme].poses else []),
            "--clip", str(clip_tiny),
            "--clip-config", str(DATA / "clip" / "clip_config.json"), "--frames", "5", "--steps", "10",
            "--size", "64", "--inversion-steps", "1", "--scheme", scheme,
            "--candidates", "2" if scheme.startswith("ours") else "1", "--out", str(out), *extra]
    done = subprocess.run(args, capture_output=True, text=True,
                          env={**os.environ, "SD_INTERP_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir, clip_tiny):
    """Two pairs (a -> b and c -> b), the first under every scheme, in an interp-batch-like tree."""
    root = tmp_path_factory.mktemp("runs")
    make_pair(root)
    c = Image.open(root / "a.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    c.save(root / "c.png")
    (root / "c.json").write_text((root / "a.json").read_text())
    for scheme in SCHEMES:
        tiny_run(root, tiny_dir, clip_tiny, root / "out" / "ab" / scheme, scheme)
    for scheme in ("did", "ours"):
        tiny_run(root, tiny_dir, clip_tiny, root / "out" / "cb" / scheme, scheme, pair="c")
    return root


@pytest.fixture(scope="module")
def metric_files(tmp_path_factory):
    """The metric networks' weights, seeded and in the real layouts: Inception as .safetensors (as a user
    converts it), AlexNet and the LPIPS heads as .pth (as published)."""
    from safetensors.torch import save_file
    d = tmp_path_factory.mktemp("metric_weights")
    save_file(synthetic_state(manifest("inception")), d / "inception.safetensors")
    features = {k: shape for k, shape in manifest("alexnet").items() if not k.startswith("classifier.")}
    torch.save(synthetic_state(features), d / "alexnet.pth")  # the classifier, unused by LPIPS, left out
    torch.save(synthetic_state(manifest("lpips_alex_heads")), d / "alex.pth")
    return d


def weight_args(metric_files, clip_tiny):
    return ["--inception", str(metric_files / "inception.safetensors"), "--lpips-backbone",
            str(metric_files / "alexnet.pth"), "--lpips-heads", str(metric_files / "alex.pth"),
            "--clip", str(clip_tiny), "--clip-config", str(DATA / "clip" / "clip_config.json")]


def test_gini_and_path_metrics():
    assert measure.gini([1, 1, 1]) == 0 and measure.gini([0, 0, 3]) == pytest.approx(2 / 3)
    m = measure.path_metrics([0.1, 0.3, 0.2])
    assert m["total"] == pytest.approx(0.6) and m["max"] == 0.3
    assert m["smoothness"] == pytest.approx(1 - (2 * (0.2 + 0.1 + 0.1)) / (2 * 9 * 0.2))


def test_frames_of_different_sizes_are_encoded_in_separate_batches(tmp_path):
    frames = []
    for k, size in enumerate([(8, 8), (8, 12), (8, 8)]):
        Image.new("RGB", size, (40 * k, 0, 0)).save(tmp_path / f"{k}.png")
        frames.append(measure.Frame.of(tmp_path / f"{k}.png"))
    calls = []

    def encode(x):
        calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))
    space = measure.VectorSpace("mean-0", encode, measure.Cache(None))
    assert space.steps(frames) == pytest.approx([40 / 255, 40 / 255])
    assert sorted(calls) == [(1, 3, 12, 8), (2, 3, 8, 8)]


def test_even_positions_invert_the_path_length():
    # steps proportional to the squares of the position gaps' ends: s(p) = p^2, so even s lands at sqrt(i / N)
    p = np.linspace(0, 1, 9)
    s = p ** 2
    new = even_positions(p, np.diff(s))
    assert new[0] == 0.0 and new[-1] == 1.0 and all(b > a for a, b in zip(new, new[1:]))
    expected = np.interp(np.linspace(0, 1, 9), s, p)  # the piecewise-linear inverse of s at the frames
    assert np.allclose(new, expected, atol=1e-12)
    assert np.allclose(even_positions(p, np.full(8, 0.3)), p)  # already even: unchanged
    flat = even_positions(p, [0, 0, 1, 0, 0, 0, 0, 0])  # zero steps still give distinct positions
    assert all(b > a for a, b in zip(flat, flat[1:]))


def test_interp_eval_writes_table_1_for_every_scheme(runs, metric_files, clip_tiny, tmp_path, capsys):
    out = tmp_path / "report"
    report = evaluate.evaluate(evaluate.parser().parse_args(
        [str(runs / "out"), "--features", "inception,lpips-alex,clip", "--out", str(out),
         *weight_args(metric_files, clip_tiny)]))
    printed = capsys.readouterr().out
    assert list(report["schemes"]) == list(SCHEMES) and report["pairs"] == 2 and len(report["sequences"]) == 9
    assert report["schemes"]["ours"]["sequences"] == 2 and report["schemes"]["ours"]["pairs"] == 2
    for name, row in report["schemes"].items():
        assert row["fid_all"] is not None and np.isfinite(row["fid_all"]) and row["fid_all"] >= 0
        for space in ("inception", "lpips-alex", "clip"):
            m = row["spaces"][space]
            assert m["total_mean"] > 0 and m["max_mean"] <= m["total_mean"] and 0 <= m["smoothness_mean"] <= 1
    assert "| ours | 2 |" in printed and f"wrote {out / 'report.md'}" in printed

    # The path length of one sequence, recomputed from its frames with the network itself.
    from ldm.load.inception import load_inception
    net = load_inception(metric_files / "inception.safetensors")
    seq = measure.Sequence.read(runs / "out" / "ab" / "did")
    with torch.no_grad():
        v = net(torch.cat([f.tensor() for f in seq.frames])).double()
    entry = next(q for q in report["sequences"] if q["run"] == seq.folder)
    assert entry["spaces"]["inception"]["total"] == pytest.approx(float((v[1:] - v[:-1]).norm(dim=1).sum()), rel=1e-5)
    assert entry["positions"] == [0.0, 0.25, 0.5, 0.75, 1.0]

    table = (out / "report.md").read_text()
    assert all(f"| {name} |" in table for name in SCHEMES) and "Section 5.1" in table
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["scheme"] for r in rows] == list(SCHEMES) and float(rows[4]["clip_total_mean"]) > 0
    with open(out / "sequences.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 9 * 3
    assert json.loads((out / "report.json").read_text())["features"] == ["inception", "lpips-alex", "clip"]
    for name in ("metrics", "steps_inception", "steps_lpips-alex", "steps_clip"):
        with Image.open(out / "plots" / f"{name}.png") as im:
            colours = len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0))
            assert im.width >= 360 and colours > 8, name  # drawn: bars, curves, text in several colours


def test_a_rerun_computes_only_what_is_new(runs, metric_files, clip_tiny, tmp_path, monkeypatch):
    from ldm.nets.inception import InceptionV3
    seen = []
    forward = InceptionV3.forward
    monkeypatch.setattr(InceptionV3, "forward", lambda self, x: seen.append(len(x)) or forward(self, x))
    args = [str(runs / "out" / "ab" / "did"), "--out", str(tmp_path / "r"), *weight_args(metric_files, clip_tiny)]
    first = evaluate.evaluate(evaluate.parser().parse_args(args))
    assert sum(seen) == 5
    seen.clear()
    both = evaluate.evaluate(evaluate.parser().parse_args([*args[:1], str(runs / "out" / "ab" / "ours"), *args[1:]]))
    assert sum(seen) == 3  # the inputs are shared; only ours' three frames between them are new
    assert both["sequences"][0] == first["sequences"][0]


def test_interp_eval_refuses_what_it_should(runs, tmp_path, capsys):
    def eval_cli(*argv):
        with pytest.raises(SystemExit) as e:
            evaluate.main(list(argv))
        return e.value.code, capsys.readouterr().err
    code, err = eval_cli(str(runs / "out"), "--features", "pixels")
    assert code == 2 and "unknown feature space pixels" in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = eval_cli(str(empty), "--out", str(tmp_path / "r"))
    assert code == 2 and err == f"error: {empty} holds no run of interpolate (no run.json in it or below it)\n"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"status": "running", "frames": {}, "settings": {"frames": 5}}))
    code, err = eval_cli(str(unfinished), "--out", str(tmp_path / "r"))
    assert code == 2 and "is not finished" in err and err.strip().splitlines()[-1].startswith("error: none of the runs")


def test_retime_evens_out_the_steps(runs, tiny_dir, clip_tiny, tmp_path):
    out = tmp_path / "eased"
    done = tiny_run(runs, tiny_dir, clip_tiny, out, "interpolate-only", "--frames", "9", "--schedule", "ease",
                    "--retime", "clip")
    record = json.loads((out / "retime.json").read_text())
    before, after = record["before"], record["after"]
    assert after["smoothness"] > before["smoothness"] + 0.1 and after["max"] < before["max"]
    retimed = json.loads((out / "retimed" / "run.json").read_text())
    assert retimed["settings"]["schedule"] == after["positions"] != before["positions"]
    assert "re-timed in clip space: 1 - Gini" in done.stderr
    again = subprocess.run(["interp-retime", str(out), "--features", "clip"], capture_output=True, text=True,
                           env={**os.environ, "SD_INTERP_CACHE": str(runs / "cache")})
    assert again.returncode == 0, again.stderr  # both passes are kept, complete: nothing is made again
    assert again.stdout.count("already holds this run, complete") == 2 and "UNet calls" not in again.stdout
    assert json.loads((out / "retime.json").read_text())["after"] == after
    fetched = tiny_run(runs, tiny_dir, clip_tiny, tmp_path / "fetch", "interpolate-only", "--retime", "clip",
                       "--fetch-only")
    assert f"clip: {clip_tiny}" in fetched.stdout.splitlines()  # the measuring network is fetched too


@pytest.fixture(scope="module")
def peer_runs(runs, tiny_dir, clip_tiny):
    """ours and freemorph at the peers' frame counts: 7 frames of both pairs, 17 of the first."""
    out = runs / "peers"
    for scheme in ("ours", "freemorph"):
        for pair in ("a", "c"):
            tiny_run(runs, tiny_dir, clip_tiny, out / "7" / pair / scheme, scheme, "--frames", "7", pair=pair)
        tiny_run(runs, tiny_dir, clip_tiny, out / "17" / "a" / scheme, scheme, "--frames", "17", "--steps", "20")
    return out


def test_interp_eval_reports_the_peers_protocols(runs, peer_runs, metric_files, clip_tiny, tmp_path, capsys):
    from interp.metrics.protocols import PROTOCOLS
    out = tmp_path / "report"
    report = evaluate.evaluate(evaluate.parser().parse_args(
        [str(peer_runs), str(runs / "out" / "ab" / "did"), "--out", str(out), *weight_args(metric_files, clip_tiny)]))
    printed = capsys.readouterr().out
    fm, dm = report["protocols"]["freemorph"]["schemes"], report["protocols"]["diffmorpher"]["schemes"]
    assert list(fm) == list(dm) == ["did", "ours", "freemorph"]
    for scheme in ("ours", "freemorph"):
        assert (fm[scheme]["sequences"], fm[scheme]["left_out"]) == (2, 1)  # the 7-frame runs
        assert (dm[scheme]["sequences"], dm[scheme]["left_out"]) == (1, 2)  # the 17-frame run
    assert fm["did"] == dm["did"] == {"sequences": 0, "left_out": 1}  # 5 frames: in neither protocol

    # Each figure recomputed from the frames with the networks themselves.
    from ldm.load.inception import load_inception
    from ldm.load.lpips import load_lpips
    lpips = load_lpips("alex", metric_files / "alexnet.pth", metric_files / "alex.pth")
    inception = load_inception(metric_files / "inception.safetensors")

    def distances(seq):
        with torch.no_grad():
            taps = [lpips.layers(f.tensor() * 2 - 1) for f in seq.frames]
            return [float(lpips.distance(a, b)) for a, b in zip(taps, taps[1:])]

    def vectors(frames):
        with torch.no_grad():
            return torch.cat([inception(f.tensor()) for f in frames]).float()

    for scheme in ("ours", "freemorph"):
        seven = [measure.Sequence.read(peer_runs / "7" / p / scheme) for p in ("a", "c")]
        steps = [distances(s) for s in seven]
        assert fm[scheme]["lpips_sum"] == pytest.approx(sum(map(sum, steps)), rel=1e-5)
        assert fm[scheme]["ppl_sum"] == pytest.approx(6 * fm[scheme]["lpips_sum"], rel=1e-9)  # 1/eps^2 x mean
        inputs = vectors(list({f.sha256: f for s in seven for f in (s.frames[0], s.frames[-1])}.values()))
        fids = [measure.fid(inputs, vectors([s.frames[j] for s in seven])) for j in range(1, 6)]
        assert fm[scheme]["fid_mean"] == pytest.approx(np.mean(fids), rel=1e-4)

        seventeen = measure.Sequence.read(peer_runs / "17" / "a" / scheme)
        d = distances(seventeen)
        assert dm[scheme]["ppl"] == pytest.approx(16 * sum(d), rel=1e-5)
        assert dm[scheme]["pdv"] == pytest.approx(np.var(d), rel=1e-4)
        rng, ends = np.random.default_rng(0), vectors([seventeen.frames[0], seventeen.frames[-1]])
        draws = [measure.fid(ends, vectors([seventeen.frames[1 + k] for k in sorted(rng.choice(15, 2, replace=False))]))
                 for _ in range(10)]
        assert dm[scheme]["fid"] == pytest.approx(np.mean(draws), rel=1e-4)

    table = (out / "report.md").read_text()
    for protocol in PROTOCOLS.values():
        assert f"### {protocol.source}: {protocol.frames} frames" in table and protocol.published in table
    assert "84.91 / 141.32 / 2122.80" in table and "| freemorph | 2 |" in printed
    assert "Left out, without frames at the positions k/16: 1 of did, 2 of ours, 2 of freemorph." in table
    with open(out / "protocols.csv", newline="") as f:
        rows = {(r["protocol"], r["scheme"], r["measure"]): r for r in csv.DictReader(f)}
    assert float(rows["diffmorpher", "ours", "pdv"]["value"]) == pytest.approx(dm["ours"]["pdv"])
    assert len(rows) == 3 * 3 * 2


def test_without_protocols_no_lpips_is_loaded(peer_runs, metric_files, tmp_path, capsys):
    args = [str(peer_runs / "7" / "a" / "freemorph"), "--out", str(tmp_path / "r"), "--inception",
            str(metric_files / "inception.safetensors"), "--lpips-backbone", str(tmp_path / "missing.pth")]
    assert evaluate.evaluate(evaluate.parser().parse_args([*args, "--protocols", "none"]))["protocols"] == {}
    with pytest.raises(SystemExit) as e:
        evaluate.main([*args, "--protocols", "freemorph"])  # measurable: its LPIPS weights are wanted
    assert e.value.code == 2 and "missing.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate.main([*args, "--protocols", "impus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown protocol impus: use freemorph, diffmorpher" in err and err.count("\n") == 1


def test_retime_remakes_a_freemorph_run(runs, tiny_dir, clip_tiny, tmp_path):
    out = tmp_path / "fm"
    done = tiny_run(runs, tiny_dir, clip_tiny, out, "freemorph", "--frames", "7", "--retime", "clip")
    record = json.loads((out / "retime.json").read_text())
    retimed = json.loads((out / "retimed" / "run.json").read_text())
    assert retimed["scheme"] == "freemorph" and retimed["status"] == "complete"
    assert retimed["settings"]["schedule"] == record["after"]["positions"] != record["before"]["positions"]
    assert len(list((out / "retimed" / "frames").glob("*.png"))) == 7 and "re-timed in clip space" in done.stderr
