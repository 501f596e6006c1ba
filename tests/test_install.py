"""A non-editable install runs on its own: the catalog, the tokenizer vocabulary and the studio's page travel as
package data, the console scripts load, and downloads go to the user's cache, never into site-packages.

A wheel is built from a copy of the source tree with the running interpreter's own pip and setuptools, offline
(no build isolation), and installed into a fresh virtual environment that sees the running environment's
packages (torch, numpy, ...) through a .pth file, and is used from another folder. Nothing is taken from the
base interpreter behind the running one: the tests behave the same from a fresh venv, a conda env or a system
interpreter. Where the running environment cannot build offline they are skipped, naming what is missing."""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from importlib.util import find_spec

import pytest

from conftest import ROOT

SCRIPT = """
import json, sys
from importlib import metadata
import ldm
from ldm.load import weights
from interp.apps import studio
sd = ldm.load_checkpoint(sys.argv[1])  # looks the file up in the catalog
dist = metadata.distribution("sd-interp")
scripts = {ep.name: callable(ep.load()) for ep in dist.entry_points if ep.group == "console_scripts"}
print(json.dumps({"ldm": ldm.__file__, "catalog": str(weights.CATALOG_PATH), "names": sorted(weights.catalog()),
                  "weights_dir": str(weights.weights_dir()), "tokens": ldm.tokenize(["a photograph"])[0, :4].tolist(),
                  "page": str(studio.PAGE), "page_installed": studio.PAGE.is_file(),
                  "dist": str(dist.locate_file("")), "scripts": scripts}))
"""


def _release(version):
    """(major, minor) of a version string such as '65.5.0' or '70.1.0.post1'."""
    return tuple(int(n) for n in re.findall(r"\d+", version)[:2])


def build_tools_missing():
    """What the running environment lacks to build this package offline with its own tools ([] if nothing).

    setuptools builds the wheel; before 70.1 its bdist_wheel command came from the separate `wheel` package
    (without it: "error: invalid command 'bdist_wheel'")."""
    missing = []
    if find_spec("pip") is None:
        missing.append("pip")
    try:
        setuptools_version = metadata.version("setuptools") if find_spec("setuptools") else None
    except metadata.PackageNotFoundError:
        setuptools_version = None
    if setuptools_version is None:
        missing.append("setuptools")
    elif _release(setuptools_version) < (70, 1) and find_spec("wheel") is None:
        missing.append(f"wheel (setuptools {setuptools_version} has no bdist_wheel of its own before 70.1)")
    return missing


def running_site_dirs():
    """The folders the running interpreter's packages lie in: its site-packages (a venv's own, and its base's
    where it was made with --system-site-packages; a conda env's; a system interpreter's), and the user's."""
    dirs = list(getattr(site, "getsitepackages", list)())  # virtualenv < 20 had a site module without it
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    paths = sysconfig.get_paths()
    dirs += [paths["purelib"], paths["platlib"]]
    unique = []
    for d in dirs:
        if os.path.isdir(d) and os.path.abspath(d) not in unique:
            unique.append(os.path.abspath(d))
    return unique


def run_checked(cmd, what, **kwargs):
    """Run `cmd`; on failure, fail the test showing its whole stdout and stderr (pip says why only there)."""
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        pytest.fail(f"{what} failed with exit code {out.returncode}: {' '.join(map(str, cmd))}\n"
                    f"--- stdout ---\n{out.stdout}\n--- stderr ---\n{out.stderr}", pytrace=False)
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, bin folder, home) of a venv with the package installed from a wheel built from a copy of the
    source tree."""
    missing = build_tools_missing()
    if missing:
        pytest.skip(f"cannot build the package offline: the running interpreter ({sys.executable}) has no "
                    + ", no ".join(missing) + " (pip install -e \".[test]\" installs them)")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for part in ("ldm", "interp", "pose", "weights"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp / "wheels"
    run_checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "--wheel-dir", wheels, src], "building the wheel with the running interpreter")
    shutil.rmtree(src)  # nothing may read the source tree any more
    (wheel,) = wheels.glob("sd_interp-*.whl")

    # A venv of its own (not --system-site-packages: from a venv that would see the base interpreter, not the
    # running environment), whose .pth file adds the running environment's site folders after its own.
    env_dir = tmp / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    purelib = run_checked([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          "asking the venv for its site-packages").stdout.strip()
    # Plain folders, so their own .pth files are not read: an editable install of this package in the
    # running environment stays out of sight.
    with open(os.path.join(purelib, "_running_environment.pth"), "w") as f:
        f.write("".join(d + "\n" for d in running_site_dirs()))
    # The venv's python runs the running environment's pip (seen through the .pth file) and installs into the
    # venv; --ignore-installed: the running environment's own sd-interp is not this venv's to uninstall.
    run_checked([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel],
                "installing the wheel into the test venv")
    home = tmp / "home"
    home.mkdir()
    return python, bin_dir, home


def env_for(home):
    env = {k: v for k, v in os.environ.items() if k not in ("SD_INTERP_WEIGHTS", "XDG_CACHE_HOME", "PYTHONPATH")}
    return {**env, "HOME": str(home), "HF_HUB_OFFLINE": "1"}


def test_a_non_editable_install_loads_and_knows_its_catalog(installed, tiny_ckpt, tmp_path):
    python, bin_dir, home = installed
    out = subprocess.run([str(python), "-c", SCRIPT, str(tiny_ckpt)], cwd=tmp_path, env=env_for(home),
                         capture_output=True, text=True)
    assert out.returncode == 0, f"--- stdout ---\n{out.stdout}\n--- stderr ---\n{out.stderr}"
    got = json.loads(out.stdout.strip().splitlines()[-1])
    site_dir = str(python.parent.parent)
    assert got["ldm"].startswith(site_dir) and got["catalog"].startswith(site_dir), got
    assert got["dist"].startswith(site_dir), got  # the installed metadata, not the running environment's
    assert "sd21-512-base" in got["names"]
    assert got["page_installed"] and got["page"].startswith(site_dir)  # the studio's page is package data
    assert got["weights_dir"] == str(home / ".cache" / "sd-interp" / "weights")
    assert got["tokens"][0] == 49406  # the start token: the vocabulary was installed
    assert "txt2img" in got["scripts"] and all(got["scripts"].values()), got["scripts"]  # entry points load
    for name in got["scripts"]:
        assert (bin_dir / name).exists() or (bin_dir / f"{name}.exe").exists(), name


def test_a_missing_download_names_the_user_cache(installed, tmp_path):
    python, bin_dir, home = installed
    out = subprocess.run([str(bin_dir / "txt2img"), "--prompt", "a", "--out", str(tmp_path / "x.png")],
                         cwd=tmp_path, env=env_for(home), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error:") and str(home / ".cache" / "sd-interp" / "weights") in out.stderr
    assert not (python.parent.parent / "weights").exists()
