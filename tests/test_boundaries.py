"""The layout is the architecture, checked on the import graph of the whole project (every import statement of
every module, function-level ones included, relative ones resolved):

- the networks (ldm/nets/) import only networks, the one exception type and the standard library, torch, numpy;
- ldm/ imports nothing of interp/ or pose/; pose/'s library code nothing of ldm/, interp/ or torch;
- the method (interp/, outside interp/apps/) imports no app, and knows nothing of commands;
- no command imports another command, directly or through other modules;
- no import cycles anywhere.
"""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ldm", "interp", "pose")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _target(name: str) -> str:
    """The project module `name` stands for: itself, or the nearest package above it that is one."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> set:
    """The modules of the project that `module` imports (`from package import submodule` counts as the submodule)."""
    path, found = MODULES[module], set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in map(_target, names) if t and t != module}
    return found


GRAPH = {m: imports(m) for m in MODULES}
# the console scripts of setup.py: every command of the project
COMMANDS = sorted(set(re.findall(r'= ([\w.]+):\w+"', (ROOT / "setup.py").read_text())))


def reachable(start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def third_party(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_graph_is_read():
    assert {"interp.apps.interpolate", "interp.apps.batch", "ldm.cli", "pose.cli"} <= set(COMMANDS)
    assert "interp.pipeline" in GRAPH["interp.apps.run"] and "ldm.nets.unet" in GRAPH["ldm.load.checkpoint"]


def test_no_import_cycles():
    """Tarjan's strongly connected components: every one a single module."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(GRAPH)))
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_command_imports_another():
    for command in COMMANDS:
        assert not reachable(command) & (set(COMMANDS) - {command}), command


def test_the_method_imports_no_app():
    method = [m for m in MODULES if m.startswith("interp") and not m.startswith("interp.apps")]
    assert "interp.pipeline" in method and "interp.schemes" in method
    for m in method:
        assert not {d for d in reachable(m) if d.startswith("interp.apps")}, m


def test_ldm_imports_nothing_of_interp_or_pose():
    for m in MODULES:
        if m.startswith("ldm"):
            assert not {d for d in GRAPH[m] if d.startswith(("interp", "pose"))}, m


def test_pose_library_imports_nothing_of_ldm_interp_or_torch():
    for m, path in MODULES.items():
        if m.startswith("pose") and m not in COMMANDS:  # the command fetches the model files through ldm.load.weights
            assert not third_party(path) & {"ldm", "interp", "torch"}, m


def test_nets_import_only_nets():
    """The networks are the bottom layer: their files import each other, the one exception type (ldm/errors.py),
    the standard library, torch and numpy; no loader, sampler, acceleration path or file I/O of ldm comes in."""
    nets = [m for m in MODULES if m.startswith("ldm.nets.")]
    assert {"ldm.nets.unet", "ldm.nets.clip", "ldm.nets.tokenizer"} <= set(nets)
    for m in nets:
        assert GRAPH[m] <= {n for n in MODULES if n.startswith("ldm.nets")} | {"ldm.errors"}, m
        assert third_party(MODULES[m]) <= set(sys.stdlib_module_names) | {"torch", "numpy", "ldm"}, m


MODEL_FILES = ("blocks.py", "unet.py", "vae.py", "controlnet.py", "transformer.py", "clip.py", "text.py", "attention.py",
               "inception.py", "lpips.py")
MACHINE_WORDS = ("device.type", "cpu_flags", "is_compiling", "cuda", "onednn", "mkl", "avx", "amx", "channels_last",
                 "GFLOP", "page fault")


def test_model_files_hold_the_architecture_only():
    """No device tests, machine knowledge or performance figures in the model files: those live in ldm/accel/."""
    for name in MODEL_FILES:
        text = (ROOT / "ldm" / "nets" / name).read_text().lower()
        assert not [w for w in MACHINE_WORDS if w.lower() in text], name


def test_no_private_name_is_imported_across_files():
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not [a.name for a in node.names if a.name.startswith("_")], (m, node.module)
