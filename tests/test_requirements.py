"""Declared = imported: the distributions that setup.py's install_requires declares are exactly those the
packages ldm, interp and pose import (every import statement, function-level ones included), so that nothing
arrives only as another package's dependency and nothing is installed for nothing."""
import ast
import re
import sys

from conftest import ROOT

PACKAGES = ("ldm", "interp", "pose")

# Import name -> the distribution on the package index that provides it.
DISTRIBUTION = {
    "torch": "torch",
    "numpy": "numpy",
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "huggingface_hub": "huggingface-hub",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "open_clip": "open-clip-torch",
}

# Third-party imports that the packages may make without declaring them: each only inside a function, under
# try/except ImportError, with the reason. None today: interp/apps/batch.py's guarded `import fcntl` is the
# standard library's (absent on Windows), and selenium is imported by the tests only.
OPTIONAL = {}


def canonical(name):
    """A distribution name as the package index compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_keywords():
    """The literal keyword arguments of the setup() call in setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text(), "setup.py")
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup"]
    assert len(calls) == 1, "setup.py should call setup() once"
    return {kw.arg: kw.value for kw in calls[0].keywords if kw.arg}


def declared():
    """{canonical distribution name: requirement} of install_requires."""
    requirements = ast.literal_eval(setup_keywords()["install_requires"])
    return {canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)): r for r in requirements}


def _guarded(node, parents):
    """Whether `node` sits in the body of a try whose handlers catch ImportError (or ModuleNotFoundError)."""
    child = node
    while child in parents:
        parent = parents[child]
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                if handler.type is None:  # a bare except
                    return True
                names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if any(getattr(n, "id", None) in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
        child = parent
    return False


def imports(root, packages=PACKAGES):
    """{top-level import name: [(file, line, guarded)]} of every absolute import in the packages' modules
    (import and from-import statements at any depth, and importlib.import_module / __import__ with a literal
    name), the standard library's and our own packages' left out."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), rel)
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == "import_module"
                                                     or getattr(node.func, "id", None) in ("import_module",
                                                                                           "__import__")):
                    arg = node.args[0] if node.args else None
                    anchor = node.args[1] if len(node.args) > 1 else next(
                        (kw.value for kw in node.keywords if kw.arg == "package"), None)
                    if getattr(anchor, "id", None) in ("__name__", "__package__"):
                        continue  # relative to this very package (ldm's lazy exports): no distribution
                    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), \
                        f"{rel}:{node.lineno}: an import by a computed name, which this test cannot check"
                    names = [] if arg.value.startswith(".") else [arg.value]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, []).append((rel, node.lineno, _guarded(node, parents)))
    return found


def where(places):
    return ", ".join(f"{file}:{line}" for file, line, _ in places)


def test_the_declared_requirements_are_exactly_the_imported_ones():
    found = imports(ROOT)
    unknown = {name: where(places) for name, places in found.items()
               if name not in DISTRIBUTION and name not in OPTIONAL}
    assert not unknown, f"imports with no known distribution (add them to DISTRIBUTION): {unknown}"
    imported = {canonical(DISTRIBUTION[name]): name for name in found if name not in OPTIONAL}
    wanted = declared()
    undeclared = {dist: where(found[name]) for dist, name in imported.items() if dist not in wanted}
    unused = {dist: req for dist, req in wanted.items() if dist not in imported}
    assert not undeclared and not unused, (f"imported but not in setup.py's install_requires: {undeclared}; "
                                           f"in install_requires but imported nowhere in {PACKAGES}: {unused}")


def test_optional_imports_are_guarded_and_undeclared():
    found = imports(ROOT)
    for name, reason in OPTIONAL.items():
        assert name in found, f"{name} is on the optional list ({reason}) but imported nowhere: remove it"
        unguarded = [p for p in found[name] if not p[2]]
        assert not unguarded, f"{name} is optional ({reason}) but imported without an ImportError guard: " \
                              f"{where(unguarded)}"
        assert canonical(DISTRIBUTION.get(name, name)) not in declared(), f"{name} is optional and declared"


def test_open_clip_is_an_extra_and_never_imported():
    found = imports(ROOT)
    assert "open_clip" not in found, f"open_clip is imported at {where(found['open_clip'])}"
    extras = ast.literal_eval(setup_keywords()["extras_require"])
    assert "open-clip-torch" in extras["openclip"] and "open-clip-torch" not in declared()


def test_the_scan_sees_every_kind_of_import(tmp_path):
    """The scan itself: function-level, guarded, from- and importlib imports count; relative, stdlib and
    our own packages' do not."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("import os, numpy.linalg\nfrom . import sub\nimport ldm.nets\n")
    (tmp_path / "pkg" / "sub" / "m.py").write_text(
        "import importlib\n"
        "def f():\n"
        "    from PIL import Image\n"
        "    try:\n"
        "        import yaml\n"
        "    except (ValueError, ModuleNotFoundError):\n"
        "        pass\n"
        "    importlib.import_module('.sub', __name__)\n"
        "    return importlib.import_module('requests.adapters')\n")
    found = imports(tmp_path, ("pkg",))
    assert sorted(found) == ["PIL", "numpy", "requests", "yaml"]
    assert found["yaml"] == [("pkg/sub/m.py", 5, True)] and found["PIL"] == [("pkg/sub/m.py", 3, False)]
