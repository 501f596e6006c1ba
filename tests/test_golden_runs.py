"""The frames of the golden runs (tools/golden_runs.py: every scheme, a chain, given poses, a warp, a steered
replay on the tiny models), recorded before the method became a library: a change of the code's shape must
give the same bytes."""
import json

import numpy as np
import pytest
import torch

import golden_runs
from conftest import DATA
from ldm import accel

GOLDEN = np.load(DATA / "golden_runs.npz")
RECORD = json.loads(bytes(GOLDEN["record"]))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    work = tmp_path_factory.mktemp("golden")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SD_INTERP_CACHE", str(work / "cache"))
        mp.setenv("XDG_CACHE_HOME", str(work / "cache"))
        mp.setattr(accel, "measured_paths", golden_runs.plain_paths)
        torch.set_num_threads(2)
        try:
            yield golden_runs.run_all(work, golden_runs.command("interpolate"))
        finally:
            torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(golden_runs.RUNS))
def test_the_golden_runs_give_the_recorded_frames(made, name):
    frames = made[name]
    assert len(frames) == len(RECORD["sha256"][name])
    if golden_runs.machine() == RECORD["machine"]:
        assert [golden_runs.sha256(f) for f in frames] == RECORD["sha256"][name]
    else:  # another CPU's float kernels round differently
        for i, frame in enumerate(frames):
            diff = np.abs(frame.astype(int) - GOLDEN[f"{name}/{i}"].astype(int))
            assert diff.max() <= 2, (name, i, diff.max())
