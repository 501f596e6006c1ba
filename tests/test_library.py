"""The method as a library (`interp.Pipeline`), on the tiny models: in memory end to end, a program's own choice
of candidates, cancellation, revising, chains, and the same bytes as the `interpolate` command."""
import os

import numpy as np
import pytest

import golden_runs
import interp
import interp.settings
from conftest import DATA
from interp.apps.interpolate import main as interpolate_main

SETTINGS = interp.Settings(prompt="a ball", frames=5, steps=4, size=64, inversion_steps=1, candidates=2, seed=3,
                           eta=0.0, negative="", pose=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    golden_runs.make_inputs(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(tiny_sd, tiny_controlnet, clip_tiny):
    import ldm
    clip = ldm.load_clip(clip_tiny, config=DATA / "clip" / "clip_config.json")
    return interp.Pipeline(tiny_sd, controlnet=tiny_controlnet, clip=clip)


def keypoints(inputs, names="ab"):
    return [inputs / f"{k}.json" for k in names]


def test_a_program_interpolates_in_memory_without_touching_the_disk(pipe, inputs, tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("SD_INTERP_CACHE", raising=False)
    monkeypatch.chdir(cwd)
    from PIL import Image
    a, b = (Image.open(inputs / f"{k}.png").convert("RGB") for k in "ab")
    steps = []
    result = pipe(a, b, SETTINGS, keypoints=keypoints(inputs), on_progress=lambda *step: steps.append(step))
    assert [f.size for f in result.frames] == [(64, 64)] * 5 and result.frames[0] is not None
    assert set(result.latents) == {0, 1, 2, 3, 4} and result.latents[2].shape == (1, 4, 8, 8)
    record = result.record
    assert record["scheme"] == "ours" and record["unet_calls"] == 5 and record["poses"]["people_matched"] == 1
    assert len(record["inversion_losses"]) == 1 and record["candidates"]["2"]["kept"] in (0, 1)
    assert [r["frames"] for r in record["rounds"]] == [[2], [1, 3]]
    assert ("inversion", 1, 1) in steps and ("frames", 5, 5) in steps
    assert list(home.rglob("*")) == [] and list(cwd.rglob("*")) == []  # nothing written, not even a cache


def test_a_programs_own_choice_and_cancellation(pipe, inputs):
    picked = []

    def last(pool):  # keep every frame's last candidate
        picked.append(sorted(pool.indices))
        return {i: pool.count(i) - 1 for i in pool.indices}
    result = pipe(*(inputs / f"{k}.png" for k in "ab"), SETTINGS, keypoints=keypoints(inputs), choose=last)
    assert picked == [[2], [1, 3]]
    assert all(result.record["frames"][str(i)]["kept"] == 1 for i in (1, 2, 3))
    first = pipe(*(inputs / f"{k}.png" for k in "ab"), SETTINGS, keypoints=keypoints(inputs),
                 choose=lambda pool: dict.fromkeys(pool.indices, 0))
    assert not np.array_equal(np.asarray(first.frames[2]), np.asarray(result.frames[2]))

    # a re-roll is a piece of work of its own for on_progress: the frames' count never runs past its total
    steps = []

    def reroll_once(pool):
        if 2 in pool.indices:
            pool.reroll(2)
        return dict.fromkeys(pool.indices, 0)
    pipe(*(inputs / f"{k}.png" for k in "ab"), SETTINGS, keypoints=keypoints(inputs), choose=reroll_once,
         on_progress=lambda *step: steps.append(step))
    frames, rerolls = ([s for s in steps if s[0] == stage] for stage in ("frames", "reroll"))
    assert [s[1] for s in frames] == list(range(1, 6)) and all(s[2] == 5 for s in frames)
    assert rerolls == [("reroll", 1, 3), ("reroll", 2, 3), ("reroll", 3, 3)]  # round 0's 3 steps again

    # on_progress returning False stops the run between two steps, keeping what was finished
    with pytest.raises(interp.Cancelled) as stop:
        pipe(*(inputs / f"{k}.png" for k in "ab"), SETTINGS, keypoints=keypoints(inputs),
             on_progress=lambda stage, step, total: not (stage == "frames" and step == 4))
    assert stop.value.stage == "frames"
    assert sorted(stop.value.result.images) == [0, 2, 4]  # the inputs and round 1; round 2 was stopped
    with pytest.raises(interp.Cancelled, match="inversion"):
        pipe(*(inputs / f"{k}.png" for k in "ab"), SETTINGS, keypoints=keypoints(inputs),
             on_progress=lambda stage, step, total: stage != "inversion")


def test_resume_and_revise(pipe, inputs):
    images = [inputs / f"{k}.png" for k in "ab"]
    whole = pipe(*images, SETTINGS, keypoints=keypoints(inputs))
    # frames handed in as latents are kept; the rest is made exactly as in one go
    resumed = pipe(*images, SETTINGS, keypoints=keypoints(inputs), done={0: whole.latents[0], 2: whole.latents[2]},
                   embeddings=None)
    assert sorted(resumed.images) == [1, 3, 4]
    for i in (1, 3):
        assert np.array_equal(np.asarray(resumed.frames[i]), np.asarray(whole.frames[i]))
    # revising frame 2 with the other candidate remakes it and the frames made from it, not the inputs
    job = pipe.prepare(*images, SETTINGS, keypoints=keypoints(inputs))
    first = job.run()
    other = 1 - first.record["candidates"]["2"]["kept"]
    revised = job.revise(2, choose=lambda pool: {i: other if i == 2 else 0 for i in pool.indices})
    assert sorted(revised.images) == [1, 2, 3] and revised.record["candidates"]["2"]["kept"] == other
    assert not np.array_equal(np.asarray(revised.frames[2]), np.asarray(first.frames[2]))


def test_a_chain_has_one_frame_size(pipe, inputs):
    """The second pair starts from a wide image, yet its frames take the first pair's (square) size."""
    from PIL import Image
    wide = Image.open(inputs / "c.png").resize((128, 64))
    results = pipe.chain([inputs / "a.png", wide, inputs / "b.png"], interp.Settings(
        prompt="a ball", frames=3, steps=4, inversion_steps=0, candidates=1, pose=False))
    side = max(pipe.sd().config.image_size, interp.settings.LONG_SIDE)
    assert results[0].size == results[1].size == (side, side)
    assert np.array_equal(np.asarray(results[0].frames[-1]), np.asarray(results[1].frames[0]))


def test_the_library_and_the_command_give_the_same_bytes(tiny_dir, clip_tiny, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_INTERP_CACHE", str(tmp_path / "cache"))
    models = {"sd": tiny_dir / "tiny.safetensors", "controlnet": tiny_dir / "controlnet.safetensors", "clip": clip_tiny}
    interpolate_main(golden_runs.arguments("ours", inputs, models, tmp_path / "run"))
    command = golden_runs.frames_of(tmp_path / "run")
    pipe = interp.Pipeline.from_files(sd=str(models["sd"]), controlnet=str(models["controlnet"]), clip=str(clip_tiny),
                                      clip_config=str(golden_runs.CLIP_CONFIG), device="cpu")
    result = pipe(inputs / "a.png", inputs / "b.png", SETTINGS, keypoints=keypoints(inputs))
    assert len(command) == 5
    for i, frame in enumerate(result.frames):
        assert np.array_equal(np.asarray(frame), command[i]), i
    assert os.path.isfile(tmp_path / "run" / "run.json")
