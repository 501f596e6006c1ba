"""A non-editable install runs on its own: the catalog and the tokenizer vocabulary travel as package data,
and downloads go to the user's cache, never into site-packages (a copy of the source is installed into a
fresh virtual environment that sees this one's packages, and used from another folder)."""
import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from conftest import ROOT

SCRIPT = """
import json, sys
import ldm
from ldm.load import weights
from interp.apps import studio
sd = ldm.load_checkpoint(sys.argv[1])  # looks the file up in the catalog
print(json.dumps({"ldm": ldm.__file__, "catalog": str(weights.CATALOG_PATH), "names": sorted(weights.catalog()),
                  "weights_dir": str(weights.weights_dir()), "tokens": ldm.tokenize(["a photograph"])[0, :4].tolist(),
                  "page": str(studio.PAGE), "page_installed": studio.PAGE.is_file()}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, bin folder, home) of a venv with the package installed from a copy of the source tree."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for part in ("ldm", "interp", "pose", "weights"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env_dir = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(src)], check=True, capture_output=True)
    shutil.rmtree(src)  # nothing may read the source tree any more
    home = tmp / "home"
    home.mkdir()
    return python, bin_dir, home


def env_for(home):
    env = {k: v for k, v in os.environ.items() if k not in ("SD_INTERP_WEIGHTS", "XDG_CACHE_HOME", "PYTHONPATH")}
    return {**env, "HOME": str(home), "HF_HUB_OFFLINE": "1"}


def test_a_non_editable_install_loads_and_knows_its_catalog(installed, tiny_ckpt, tmp_path):
    python, _, home = installed
    out = subprocess.run([str(python), "-c", SCRIPT, str(tiny_ckpt)], cwd=tmp_path, env=env_for(home),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    site = str(python.parent.parent)
    assert got["ldm"].startswith(site) and got["catalog"].startswith(site), got
    assert "sd21-512-base" in got["names"]
    assert got["page_installed"] and got["page"].startswith(site)  # the studio's page is package data
    assert got["weights_dir"] == str(home / ".cache" / "sd-interp" / "weights")
    assert got["tokens"][0] == 49406  # the start token: the vocabulary was installed


def test_a_missing_download_names_the_user_cache(installed, tmp_path):
    python, bin_dir, home = installed
    out = subprocess.run([str(bin_dir / "txt2img"), "--prompt", "a", "--out", str(tmp_path / "x.png")],
                         cwd=tmp_path, env=env_for(home), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error:") and str(home / ".cache" / "sd-interp" / "weights") in out.stderr
    assert not (python.parent.parent / "weights").exists()
