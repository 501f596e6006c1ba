"""The layout is the architecture: pose/'s library code imports nothing of ldm/ (or torch), ldm/ nothing of
interp/ or pose/."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pose_library_imports_nothing_of_ldm_or_torch():
    for path in (ROOT / "pose").glob("*.py"):
        if path.name != "cli.py":  # the command fetches the model files through ldm.weights
            assert not imported(path) & {"ldm", "interp", "torch"}, path.name


def test_ldm_imports_nothing_of_interp_or_pose():
    for path in (ROOT / "ldm").rglob("*.py"):
        assert not imported(path) & {"interp", "pose"}, path.name


def test_no_command_imports_another():
    def modules(path):
        return {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m in ("ldm.cli", "pose.cli") for m in modules(ROOT / "interp" / "cli.py"))
    assert not any(m in ("ldm.cli", "interp.cli") for m in modules(ROOT / "pose" / "cli.py"))
    for path in (ROOT / "interp").glob("*.py"):
        assert "ldm.cli" not in modules(path), path.name


MODEL_FILES = ("blocks.py", "unet.py", "vae.py", "controlnet.py", "transformer.py", "clip.py", "text.py", "attention.py")
MACHINE_WORDS = ("device.type", "cpu_flags", "is_compiling", "cuda", "onednn", "mkl", "avx", "amx", "channels_last",
                 "GFLOP", "page fault")


def test_model_files_hold_the_architecture_only():
    """No device tests, machine knowledge or performance figures in the model files: those live in ldm/accel/."""
    for name in MODEL_FILES:
        text = (ROOT / "ldm" / name).read_text().lower()
        assert not [w for w in MACHINE_WORDS if w.lower() in text], name
