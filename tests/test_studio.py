"""The interactive studio over HTTP, on the tiny models: every action (pick, accept, re-roll, prompt, pose,
revise, close), resuming an interrupted interactive run with its choices, replaying the choices without a
person, and the security checks (token, Host, paths, bodies, indices)."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from studio_session import Session, command, make_pair

@pytest.fixture
def pair(tmp_path):
    return make_pair(tmp_path)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "SD_INTERP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}


def frames(folder):
    return [p.read_bytes() for p in sorted((folder / "frames").glob("*.png"))]


def test_every_action_is_recorded_and_replayed_without_a_person(tmp_path, tiny_dir, clip_tiny, pair, env):
    run = tmp_path / "run"
    studio = Session(command(tmp_path, tiny_dir, clip_tiny, run), env)
    s = studio.wait("choosing", 0)  # round 0: frame 2
    two = studio.frame(s, 2)
    assert len(two["candidates"]) == 2 and two["pick"] is None and s["can_reroll"] and s["can_pose"]
    assert all(isinstance(c["score"], float) for c in two["candidates"]) and two["clip_pick"] in (0, 1)
    assert studio.get("/files/" + two["candidates"][0]["file"])[0] == 200  # the page can show them
    assert studio.post("reroll", {"frame": 2}) == (200, {"ok": True})
    s = studio.wait("choosing", 0)
    assert len(studio.frame(s, 2)["candidates"]) == 4
    assert studio.post("prompt", {"frame": 2, "prompt": "a red ball"})[0] == 200
    assert studio.post("reroll", {"frame": 2})[0] == 200
    s, shown = studio.state(), []  # the progress while it re-rolls: that re-roll's steps, never past them
    while s["status"] != "choosing" or len(studio.frame(s, 2)["candidates"]) < 6:
        if s["progress"] is not None:
            shown.append(s["progress"])
        s = studio.state()
    assert all(p["step"] <= p["steps"] and (p["seconds_left"] is None or p["seconds_left"] >= 0) for p in shown), shown
    assert {p["what"] for p in shown} <= {"re-rolling frame 2"} and s["progress"] is None  # cleared while it waits
    assert studio.frame(s, 2)["prompt"] == "a red ball"
    assert [c["roll"] for c in studio.frame(s, 2)["candidates"]] == [0, 0, 1, 1, 2, 2]
    assert studio.post("pick", {"frame": 2, "candidate": 5})[0] == 200
    s = studio.wait("choosing", 1)  # round 1: frames 1 and 3
    moved = [[[x + 2 if j == 4 else x, y, c] for j, (x, y, c) in enumerate(person)]
             for person in studio.frame(s, 1)["keypoints"]]
    assert studio.post("pose", {"frame": 1, "keypoints": moved})[0] == 200
    assert studio.post("reroll", {"frame": 1})[0] == 200
    s = studio.wait("choosing", 1)
    while len(studio.frame(s, 1)["candidates"]) < 4:
        s = studio.wait("choosing", 1)
    assert studio.post("pick", {"frame": 1, "candidate": 3})[0] == 200
    assert studio.post("accept")[0] == 200  # frame 3: CLIP's pick
    s = studio.wait("finished")
    for name in s["outputs"].values():
        assert studio.get(f"/files/{name}")[0] == 200
    assert studio.post("close")[0] == 200
    code, out = studio.finish()
    assert code == 0 and "wrote 5 frames" in out

    record = json.loads((run / "run.json").read_text())
    steering = record["steering"]
    assert steering["2"] == {"rolls": [{"prompt": None, "keypoints": None}, {"prompt": "a red ball", "keypoints": None}],
                             "pick": 5, "by": "person", "prompt": "a red ball"}
    assert steering["1"]["rolls"] == [{"prompt": None, "keypoints": moved}] and steering["1"]["pick"] == 3
    assert steering["1"]["keypoints"] == moved  # the pose set, recorded before the re-roll that used it
    assert steering["3"]["by"] == "clip" and steering["3"]["pick"] == record["frames"]["3"]["kept"]
    assert record["frames"]["2"]["prompt"] == "a red ball" and record["frames"]["2"]["kept"] == 5
    assert record["frames"]["1"]["keypoints"] == moved and len(record["candidates"]["2"]["files"]) == 6

    # Without a person: the same folder, its frames gone but its choices kept, is remade byte for byte.
    replay = tmp_path / "replay"
    shutil.copytree(run, replay)
    state = json.loads((replay / "run.json").read_text())
    state["frames"] = {k: v for k, v in state["frames"].items() if k in ("0", "4")}
    (replay / "run.json").write_text(json.dumps(state))
    done = subprocess.run(command(tmp_path, tiny_dir, clip_tiny, replay), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert frames(replay) == frames(run)


def test_an_interrupted_interactive_run_resumes_with_its_choices(tmp_path, tiny_dir, clip_tiny, pair, env):
    run = tmp_path / "run"
    studio = Session(command(tmp_path, tiny_dir, clip_tiny, run), env)
    studio.wait("choosing", 0)
    studio.post("pick", {"frame": 2, "candidate": 1})
    studio.wait("choosing", 1)
    studio.post("reroll", {"frame": 3})
    s = studio.wait("choosing", 1)
    while len(studio.frame(s, 3)["candidates"]) < 4:
        s = studio.wait("choosing", 1)
    studio.post("pick", {"frame": 3, "candidate": 2})
    time.sleep(0.5)
    studio.process.send_signal(signal.SIGINT)  # Ctrl-C while frame 1 waits
    code, _ = studio.finish()
    assert code == 130 and "interrupted" in "".join(studio.lines)

    again = Session(command(tmp_path, tiny_dir, clip_tiny, run), env)
    s = again.wait("choosing", 1)  # round 0 is done; round 1 comes back with frame 3's re-roll and pick
    assert again.frame(s, 3)["pick"] == 2 and len(again.frame(s, 3)["candidates"]) == 4
    assert again.frame(s, 1)["pick"] is None
    again.post("pick", {"frame": 1, "candidate": 0})
    again.wait("finished")
    # a finished run is revised: frame 2 and the frames made from it are chosen again
    assert again.post("revise", {"frame": 2})[0] == 200
    s = again.wait("choosing", 0)
    assert len(again.frame(s, 2)["candidates"]) == 2 and again.frame(s, 2)["pick"] is None
    again.post("pick", {"frame": 2, "candidate": 0})
    s = again.wait("choosing", 1)
    assert {f["index"] for f in s["round"]["frames"]} == {1, 3}
    again.post("accept")
    again.wait("finished")
    again.post("close")
    code, _ = again.finish()
    record = json.loads((run / "run.json").read_text())
    assert code == 0 and record["steering"]["2"]["pick"] == 0 and record["status"] == "complete"
    assert record["steering"]["3"]["by"] == "clip" and len(record["steering"]["3"]["rolls"]) == 1


def test_interp_studio_reopens_a_finished_run(tmp_path, tiny_dir, clip_tiny, pair, env):
    run = tmp_path / "run"
    done = subprocess.run(command(tmp_path, tiny_dir, clip_tiny, run), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    made = frames(run)
    studio = Session(["interp-studio", str(run)], env, interactive=())
    s = studio.wait("finished")  # the settings come back from run.json: the same run, nothing to make
    assert s["outputs"]["gif"] == "animation.gif" and all(f["file"] for f in s["frames"])
    assert studio.post("close")[0] == 200
    code, out = studio.finish()
    assert code == 0 and "0 UNet calls" in out and frames(run) == made
    bad = subprocess.run(["interp-studio", str(tmp_path)], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: {tmp_path} holds no run of interpolate")


def test_the_studio_refuses_what_it_should(tmp_path, tiny_dir, clip_tiny, pair, env):
    run = tmp_path / "run"
    studio = Session(command(tmp_path, tiny_dir, clip_tiny, run), env)
    studio.wait("choosing", 0)
    assert studio.get("/api/state", token="wrong")[0] == 403
    assert studio.request("GET", "/api/state")[0] == 403                       # no token at all
    assert studio.request("GET", f"/api/state?token={studio.token}", host="evil.example:80")[0] == 403  # rebinding
    assert studio.request("GET", f"/api/state?token={studio.token}", host=f"localhost:{studio.port}")[0] == 200
    assert studio.request("GET", "/favicon.ico")[0] == 200  # the browser asks for it without the token
    assert studio.request("GET", "/favicon.svg", host="evil.example:80")[0] == 403
    assert studio.post("pick", {"frame": 2, "candidate": 0}, token="wrong")[0] == 403
    status, _ = studio.request("POST", f"/api/pick?token={studio.token}", json.dumps({"frame": 2, "candidate": 0}))
    assert status == 403  # a POST needs the header, which another site's page cannot send
    for path in ("/files/../run.json", "/files/%2e%2e/a.png", "/files/frames/../../a.png", "/files//etc/passwd"):
        assert studio.get(path)[0] == 404, path
    os.symlink(tmp_path / "a.json", run / "link.json")
    assert studio.get("/files/link.json")[0] == 404  # a symlink out of the folder is not followed
    assert studio.get("/files/run.json")[0] == 200
    assert studio.post("pick", raw="{not json")[0] == 400
    assert studio.post("pick", raw="[1, 2]")[0] == 400
    for body, message in (({"frame": 7, "candidate": 0}, "not one of this round's frames"),
                          ({"frame": 2, "candidate": 9}, "candidates 0 to 1"),
                          ({"frame": "2", "candidate": 0}, "frame must be an integer"),
                          ({"frame": 2}, "candidate must be an integer")):
        status, answer = studio.post("pick", body)
        assert status == 400 and message in answer["error"], answer
    assert "at most 500" in studio.post("prompt", {"frame": 2, "prompt": "x" * 501})[1]["error"]
    bad_pose = [[[999, 0, 1]] * 18]
    assert "keypoints must be" in studio.post("pose", {"frame": 2, "keypoints": bad_pose})[1]["error"]
    assert "keypoints must be" in studio.post("pose", {"frame": 2, "keypoints": [[[1, 2]]]})[1]["error"]
    assert "for a finished run" in studio.post("revise", {"frame": 2})[1]["error"]
    assert "unknown action" in studio.post("delete", {})[1]["error"]
    assert studio.state()["error"]  # the page shows the last refusal
    assert studio.frame(studio.state(), 2)["pick"] is None  # nothing was changed by them
    # a double click: the second pick, queued while round 0 ends, is not carried out in round 1
    assert studio.post("pick", {"frame": 2, "candidate": 0})[0] == 200
    studio.post("pick", {"frame": 2, "candidate": 1})
    s = studio.wait("choosing", 1)
    time.sleep(0.5)
    s = studio.state()
    assert [f["pick"] for f in s["round"]["frames"]] == [None, None] and s["status"] == "choosing"
    assert json.loads((run / "run.json").read_text())["steering"]["2"]["pick"] == 0  # the first click stands
    studio.process.send_signal(signal.SIGINT)
    studio.finish()


def test_a_studio_open_to_the_network_says_so(tmp_path, capsys):
    from interp.apps.rundir import RunDir
    from interp.apps.run import open_studio
    from interp.schemes import scheme
    from interp.apps.options import parse
    s = parse(["a.png", "b.png", "--prompt", "x", "--interactive", "--host", "0.0.0.0", "--frames", "5"])
    assert "interactive" not in s.record() and "host" not in s.record()  # not part of a run's identity
    studio = open_studio(s, RunDir(tmp_path / "run", {"frames": 5, "size": [64, 64]}), scheme("ours").plan(5, 10))
    try:
        err = capsys.readouterr().err
        assert "warning: the studio is served on 0.0.0.0" in err and studio.url in err.splitlines()
        assert f"127.0.0.1:{studio.port}" in studio.hosts and "0.0.0.0" not in studio.url
    finally:
        studio.close()


def test_a_freemorph_run_in_the_studio(tmp_path, tiny_dir, pair, env):
    """FreeMorph makes its frames together and no candidates: the studio shows its one round for acceptance
    (one candidate per frame, nothing to re-roll, no pose to edit) and refuses a revision, saying why."""
    s = Session(["interpolate", str(pair[0]), str(pair[1]), "--prompt", "a ball", "--scheme", "freemorph", "--ckpt",
                 str(tiny_dir / "tiny.safetensors"), "--size", "64", "--steps", "5", "--out", str(tmp_path / "run")], env)
    choosing = s.wait("choosing")
    assert not choosing["can_reroll"] and not choosing["can_pose"] and choosing["rounds"] == 1
    assert [len(f["candidates"]) for f in choosing["round"]["frames"]] == [1] * 5
    assert s.post("accept")[0] == 200
    assert s.wait("finished")["outputs"]
    status, answer = s.post("revise", {"frame": 2})
    assert status == 400 and "makes no candidates: there is nothing to choose again" in answer["error"]
    assert s.post("close")[0] == 200
    code, out = s.finish()
    assert code == 0 and len(list((tmp_path / "run" / "frames").glob("*.png"))) == 7
