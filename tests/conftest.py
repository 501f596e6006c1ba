"""Shared fixtures: the reference's tiny golden cases and the tiny weights regenerated from their rule."""
import json
import shutil
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT / "tools"))

import make_fixture_weights  # noqa: E402


def run_command(main, args, capsys):
    """Run a command's main on `args` (stringified); returns (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="session", autouse=True)
def machine_caches(tmp_path_factory):
    """What the project finds out once per machine (the acceleration layer's verdicts, the memory model's
    costs) goes to a temporary folder, not the user's cache."""
    from ldm.accel import machine, memory
    folder = tmp_path_factory.mktemp("machine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(machine, "cache_file", lambda: folder / "accel-paths.json")
        mp.setattr(memory, "cache_file", lambda: folder / "memory-costs.json")
        yield folder


@pytest.fixture(autouse=True)
def no_studio_left_running():
    """A studio test that fails leaves no `interpolate --interactive` process behind (tests/studio_session.py)."""
    yield
    session = sys.modules.get("studio_session")
    while session is not None and session.RUNNING:
        process = session.RUNNING.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def cases():
    """Inputs and reference outputs computed with the original SD 2.1 / ControlNet code."""
    return load_file(DATA / "cases.safetensors")


@pytest.fixture(scope="session")
def case_prompts():
    meta = safe_open(DATA / "cases.safetensors", "pt").metadata()
    return {"prompts": json.loads(meta["prompts"]), "long": meta["long_prompt"], "empty": meta["empty_prompt"]}


@pytest.fixture(scope="session")
def tiny_config():
    return DATA / "config.json"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_config):
    """tiny.safetensors (with its config beside it as tiny.safetensors.json) and controlnet.safetensors,
    regenerated bit for bit from the fixture rule (seed 1234)."""
    d = tmp_path_factory.mktemp("tiny")
    make_fixture_weights.main(["sd", "--config", str(tiny_config), "--seed", "1234", "--out", str(d / "tiny.safetensors")])
    make_fixture_weights.main(["controlnet", "--config", str(tiny_config), "--seed", "1234",
                               "--out", str(d / "controlnet.safetensors")])
    shutil.copy(tiny_config, d / "tiny.safetensors.json")
    shutil.copy(tiny_config, d / "controlnet.safetensors.json")
    return d


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dir):
    return tiny_dir / "tiny.safetensors"


@pytest.fixture(scope="session")
def tiny_sd(tiny_ckpt):
    import ldm
    return ldm.load_checkpoint(tiny_ckpt)


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_dir):
    from ldm.load.controlnet import load_controlnet
    return load_controlnet(tiny_dir / "controlnet.safetensors")


@pytest.fixture(scope="session")
def clip_tiny(tmp_path_factory):
    """The tiny CLIP, regenerated bit for bit from the fixture rule (seed 4242)."""
    path = tmp_path_factory.mktemp("clip") / "clip_tiny.safetensors"
    make_fixture_weights.main(["clip", "--config", str(DATA / "clip" / "clip_config.json"), "--seed", "4242",
                               "--out", str(path)])
    return path
