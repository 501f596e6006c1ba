"""interp-batch on the tiny models: the manifest's checks, one process, two torchrun workers (CPU, claims
through the c10d store), a worker killed mid-run; and `interpolate` through a chain of three images."""
import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image, ImageDraw

import interp.models
from interp.apps.batch import main as batch_main
from interp.apps.interpolate import main as interpolate_main
from conftest import run_command

FAST = ["--steps", 4, "--size", 64, "--inversion-steps", 1, "--candidates", 1, "--no-pose", "--frames", 3]


def picture(path, seed, size=(80, 72)):
    g = torch.Generator().manual_seed(seed)
    colour, fill = (tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g)) for _ in range(2))
    im = Image.new("RGB", size, colour)
    ImageDraw.Draw(im).ellipse((8, 8, 8 + size[0] // 2, 8 + size[1] // 2), fill=fill)
    im.save(path)
    return path


def manifest(folder, pairs: int, **extra_columns) -> str:
    """pairs.csv of `pairs` rows (ids p0, p1, ...), images in `folder/images`, given by relative paths."""
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    for k in range(pairs):
        a, b = (picture(folder / "images" / f"{k}{s}.png", 10 * k + j) for j, s in enumerate("ab"))
        rows.append({"id": f"p{k}", "image_a": f"images/{a.name}", "image_b": f"images/{b.name}",
                     "prompt": f"picture {k}", "seed": k, **extra_columns})
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def worker_env(tmp_path, machine_caches):
    """A child's environment: one thread per worker, the test's caches (the accel verdicts and memory costs
    found in this process are copied, so that every process takes the same paths)."""
    xdg = tmp_path / "xdg"
    (xdg / "sd-interp").mkdir(parents=True, exist_ok=True)
    for found in machine_caches.glob("*.json"):
        shutil.copy(found, xdg / "sd-interp" / found.name)
    return {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(xdg),
            "SD_INTERP_CACHE": str(tmp_path / "cache-batch")}


def torchrun(args, env, **kwargs):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "interp.apps.batch", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def frames_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob("*/*/frames/*.png"))}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_manifest_with_bad_rows_is_refused_naming_each_row(tmp_path, tiny_ckpt, capsys):
    path = manifest(tmp_path, 2, poses="")
    with open(path, "a") as f:
        f.write("p9,images/missing.png,images/0b.png,x,0,\n")     # line 4: no such image
        f.write("p0,images/0a.png,images/0b.png,x,0,\n")           # line 5: an id used twice
        f.write("p7,images/0a.png,images/0b.png,,0,\n")            # line 6: no prompt
        f.write("p8,images/0a.png,images/0b.png,x,-3,\n")          # line 7: a negative seed
        f.write("p6,images/0a.png,images/0b.png,x,0,nowhere.json;0b.json\n")  # line 8: no such keypoints
    code, err = run_command(batch_main, [path, "--out", tmp_path / "runs", "--ckpt", tiny_ckpt, *FAST], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("error: 5 of the rows of") and "nothing was started" in lines[0], err
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["line 4", "line 5", "line 6", "line 7", "line 8"], err
    assert "missing.png" in lines[1] and "also the id of line 2" in lines[2] and "--prompt" in lines[3]
    assert "--seed" in lines[4] and "nowhere.json does not exist" in lines[5] and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing made before every row is known good

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_a": "images/0a.png", "image_b": "images/0b.png", "prompt": "x", "colour": 3}\n'
                   '{"images": ["images/0a.png"], "prompt": "x", "scheme": "did"}\n')
    code, err = run_command(batch_main, [bad, "--out", tmp_path / "runs", "--ckpt", tiny_ckpt, *FAST], capsys)
    assert code == 2 and "line 1: unknown column 'colour'" in err and "line 2: column 'scheme'" in err, err
    code, err = run_command(batch_main, [path, "--out", tmp_path / "runs", "--cfg", "-1"], capsys)
    assert code == 2 and err.startswith("error: the options for every row: argument --cfg"), err
    code, err = run_command(batch_main, [path, "--out", tmp_path / "runs", "--interactive"], capsys)
    assert code == 2 and "interp-batch runs without a person" in err, err


def test_one_process_loads_the_models_once_and_resumes_nothing_twice(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.setenv("SD_INTERP_CACHE", str(tmp_path / "cache"))
    loads = []
    load = interp.models.load_model
    monkeypatch.setattr(interp.models, "load_model", lambda *a: loads.append(a) or load(*a))
    path = manifest(tmp_path, 3)
    args = [path, "--out", tmp_path / "runs", "--schemes", "ours,did", "--ckpt", tiny_ckpt, *FAST]
    code, err = run_command(batch_main, args, capsys)
    assert code == 0, err
    assert len(loads) == 1  # six runs, one load
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert [(r["pair"], r["scheme"], r["status"], r["frames"]) for r in summary["runs"]] == [
        (f"p{k}", s, "complete", "3/3") for k in range(3) for s in ("ours", "did")]
    assert "wrote 3 frames to" in (tmp_path / "runs" / "p1" / "did" / "log.txt").read_text()  # the run's own output
    assert err.count("complete in") == 6 and "p2/did" in (tmp_path / "runs" / "summary.md").read_text()
    code, err = run_command(batch_main, args, capsys)
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert code == 0 and {r["status"] for r in summary["runs"]} == {"skipped"}, err


def test_two_torchrun_workers_make_what_interpolate_makes_alone(tmp_path, tiny_ckpt, monkeypatch, capsys,
                                                               machine_caches, one_thread):
    path = manifest(tmp_path, 6)
    monkeypatch.setenv("SD_INTERP_CACHE", str(tmp_path / "cache-alone"))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for scheme in ("ours", "did"):
            code, err = run_command(interpolate_main, [
                tmp_path / row["image_a"], tmp_path / row["image_b"], "--prompt", row["prompt"], "--seed", row["seed"],
                "--scheme", scheme, "--out", tmp_path / "alone" / row["id"] / scheme, "--ckpt", tiny_ckpt, *FAST], capsys)
            assert code == 0, err
    child = torchrun([path, "--out", tmp_path / "runs", "--schemes", "ours,did", "--ckpt", tiny_ckpt, *FAST],
                     worker_env(tmp_path, machine_caches))
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    alone, batch = frames_of(tmp_path / "alone"), frames_of(tmp_path / "runs")
    assert len(alone) == 36 and alone == batch
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["workers"] == 2 and {r["status"] for r in summary["runs"]} == {"complete"}
    assert {r["worker"] for r in summary["runs"]} == {0, 1}  # the work was shared
    assert "12 runs: 12 complete, 0 failed" in out and err.count("complete in") == 12


def _done_frames(runs):
    """{frame file: mtime} of every frame a run.json under `runs` lists as made."""
    made = {}
    for record in runs.glob("*/*/run.json"):
        try:
            state = json.loads(record.read_text())
        except ValueError:
            continue
        for frame in state["frames"].values():
            made[record.parent / frame["file"]] = (record.parent / frame["file"]).stat().st_mtime_ns
    return made


def test_a_killed_worker_loses_only_its_frame_and_a_rerun_finishes(tmp_path, tiny_ckpt, machine_caches):
    path = manifest(tmp_path, 4)
    runs = tmp_path / "runs"
    args = [path, "--out", runs, "--ckpt", tiny_ckpt, *FAST, "--frames", 9, "--steps", 8]
    env = worker_env(tmp_path, machine_caches)
    child = torchrun(args, env)
    deadline = time.time() + 240
    while True:  # until one run is complete and another one is half made
        assert time.time() < deadline and child.poll() is None, child.communicate()
        states = [json.loads(p.read_text()) for p in runs.glob("*/*/run.json") if p.stat().st_size]
        if any(s["status"] == "complete" for s in states) and any(
                s["status"] == "running" and len(s["frames"]) > 2 for s in states):
            break
        time.sleep(0.02)
    workers = [int(p.name) for p in os.scandir("/proc") if p.name.isdigit()
               and _parent(p.name) == child.pid]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode != 0
    before = _done_frames(runs)
    child = torchrun(args, env)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    after = _done_frames(runs)
    assert len(after) == 4 * 9 and all(after[f] == mtime for f, mtime in before.items())  # nothing made twice
    summary = json.loads((runs / "summary.json").read_text())
    assert "skipped" in {r["status"] for r in summary["runs"]} <= {"skipped", "complete"}


def _parent(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_a_chain_through_three_images_is_one_sequence(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.setenv("SD_INTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("interp.pipeline.LONG_SIDE", 0)  # the tiny model's native size: a quicker first frame size
    images = [picture(tmp_path / f"{k}.png", k, size) for k, size in enumerate([(96, 80), (70, 90), (80, 80)])]
    fast = [a for a in FAST if a not in ("--size", 64)]  # each segment at the first one's frame size
    code, err = run_command(interpolate_main, [*images, "--prompt", "x", "--out", tmp_path / "chain",
                                               "--ckpt", tiny_ckpt, *fast], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "chain" / "chain.json").read_text())
    assert record["segments"] == ["segment_01", "segment_02"]
    assert record["frames"] == [["segment_01", 0], ["segment_01", 1], ["segment_01", 2], ["segment_02", 1],
                                ["segment_02", 2]]
    assert (tmp_path / "chain" / record["outputs"]["video"]).is_file()
    sizes = {Image.open(tmp_path / "chain" / seg / "frames" / f"frame_{i:04d}.png").size for seg, i in record["frames"]}
    assert len(sizes) == 1 and sizes != {(64, 64)}
    # the first segment is the pair run alone, and the shared keyframe is the second image
    code, err = run_command(interpolate_main, [*images[:2], "--prompt", "x", "--out", tmp_path / "pair",
                                               "--ckpt", tiny_ckpt, *fast], capsys)
    assert code == 0, err
    for i in range(3):
        name = f"frame_{i:04d}.png"
        assert (tmp_path / "pair" / "frames" / name).read_bytes() == \
            (tmp_path / "chain" / "segment_01" / "frames" / name).read_bytes()
    code, err = run_command(interpolate_main, [*images, "--prompt", "x", "--poses", "a.json", "b.json",
                                               "--out", tmp_path / "c2", "--ckpt", tiny_ckpt], capsys)
    assert code == 2 and "--poses takes one keypoint file per image: 3, not 2" in err


def test_a_row_with_retime_is_finished_only_once_it_is_retimed(tmp_path):
    """interp-batch skips a finished row; with --retime the row is finished when the re-timed run is, in the
    space it asks for."""
    from interp.apps import batch
    from interp.apps.options import parse
    from interp.apps.rundir import normalise
    from interp.apps.run import RETIME_RECORD
    s = parse(["a.png", "b.png", "--prompt", "a photo", "--out", str(tmp_path / "run"), "--retime", "lpips-alex"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"status": "complete", "settings": normalise(s.record())}))
    assert batch._finished(dataclasses.replace(s, retime=None))
    assert not batch._finished(s)
    (tmp_path / "run" / RETIME_RECORD).write_text(json.dumps({"space": "lpips-vgg"}))
    assert not batch._finished(s)
    (tmp_path / "run" / RETIME_RECORD).write_text(json.dumps({"space": "lpips-alex"}))
    assert batch._finished(s)
