"""The weights catalog (`weights/catalog.json`, installed with the package as `ldm/catalog/catalog.json`)
and downloads into the user's cache (`~/.cache/sd-interp/weights`, or `$SD_INTERP_WEIGHTS`).

A catalog entry names a checkpoint the project knows: its Hugging Face mirrors, its file name, the
pinned sha256 (where known) and facts the tensors cannot tell (prediction type, native image size).
`fetch(name)` returns a verified local path, downloading with huggingface-hub on first use.
"""
import functools
import hashlib
import inspect
import json
import os
import shutil
import socket
import urllib.parse
from pathlib import Path

from .errors import UserError
from .files import user_cache

HERE = Path(__file__).resolve().parent
# An installed package carries the catalog (setup.py maps weights/ to ldm/catalog/); a source tree has it in weights/.
CATALOG_PATH = HERE / "catalog" / "catalog.json"
if not CATALOG_PATH.is_file():
    CATALOG_PATH = HERE.parent / "weights" / "catalog.json"


def weights_dir() -> Path:
    """Where downloads go: $SD_INTERP_WEIGHTS, else the user's cache (never the installed package)."""
    return Path(os.environ.get("SD_INTERP_WEIGHTS") or user_cache() / "weights")


def catalog() -> dict:
    with open(CATALOG_PATH) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def sha256_of(path, chunk=1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(path) -> str:
    """A cheap identity of a checkpoint: the catalog's sha256 for a known file, else a hash of the
    file's size and safetensors header (key names, shapes, dtypes, offsets), marked as such."""
    path = Path(path)
    name, entry = lookup(path)
    if entry and entry.get("sha256"):
        return f"sha256:{entry['sha256']}"
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        head = f.read(8)
        h.update(head + f.read(int.from_bytes(head, "little") if len(head) == 8 else 0))
    return f"header-sha256:{h.hexdigest()}"


def _verify(path: Path, entry: dict) -> None:
    """Check a file against its pinned sha256 once; a `.sha256` stamp beside it records success."""
    stamp = _stamp_path(path)
    if not entry.get("sha256") or (stamp.exists() and stamp.read_text().strip() == entry["sha256"]):
        return
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise UserError(f"{path} has sha256 {actual}, but the catalog pins {entry['sha256']}: "
                        f"delete the file and download it again")
    _stamp(path, actual)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path, sha256: str) -> None:
    """Record that `path` was checked against `sha256`, so that it is not hashed again."""
    _stamp_path(path).write_text(sha256 + "\n")


@functools.lru_cache(maxsize=None)
def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the host of `url` opens (huggingface-hub retries an unreachable host for
    about 20 s, printing each retry, before it gives up); probed once per process, not once per file."""
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout).close()
        return True
    except OSError:
        return False


def _download(entry: dict, dest: Path) -> None:
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:  # pragma: no cover - huggingface-hub is a declared dependency
        raise UserError("huggingface-hub is not installed: pip install huggingface-hub") from None
    from tqdm import tqdm
    # A progress bar even when stderr is not a terminal (huggingface-hub's own shows on terminals only);
    # older huggingface-hub releases take no tqdm_class.
    bar = {"tqdm_class": tqdm} if "tqdm_class" in inspect.signature(hf_hub_download).parameters else {}
    where = ", ".join(f"{m['repo']}/{m['path']}" for m in entry["mirrors"])
    if not constants.HF_HUB_OFFLINE and not _reachable(constants.ENDPOINT):
        raise UserError(f"could not download {entry['file']} ({constants.ENDPOINT} cannot be reached: offline?): "
                        f"download it by hand from Hugging Face ({where}) and put it at {dest}")
    errors = []
    for mirror in entry["mirrors"]:
        try:
            got = Path(hf_hub_download(mirror["repo"], mirror["path"], local_dir=dest.parent / ".hf", **bar))
        except Exception as e:  # offline, gated, removed: try the next mirror
            errors.append(f"{mirror['repo']}: {type(e).__name__}")
            continue
        actual = sha256_of(got) if entry.get("sha256") else None
        if actual is not None and actual != entry["sha256"]:  # never put a wrong file in place
            got.unlink()
            errors.append(f"{mirror['repo']} served sha256 {actual}, not the pinned {entry['sha256']}")
            continue
        shutil.move(got, dest)
        if actual is not None:
            _stamp(dest, actual)
        return
    raise UserError(f"could not download {entry['file']} ({'; '.join(errors)}): download it by hand "
                    f"from Hugging Face ({where}) and put it at {dest}")


def fetch(name: str, download: bool = True) -> Path:
    """Local, verified path of catalog entry `name`, downloading it on first use."""
    entries = catalog()
    if name not in entries:
        raise UserError(f"unknown catalog name {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    dest = weights_dir() / entry["file"]
    if not dest.exists():
        if not download:
            raise UserError(f"{dest} is missing: download {entry['file']} from "
                            f"{entry['mirrors'][0]['repo']} on Hugging Face into {dest.parent}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        _download(entry, dest)
    _verify(dest, entry)
    return dest


def _check(name_or_path, kind: str, entries: dict):
    """The local path as given, or the catalog name (a UserError for neither, or a name of another kind)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name in entries:
        if entries[name]["kind"] != kind:
            raise UserError(f"catalog entry {name!r} is a {entries[name]['kind']}, not a {kind}")
        return name
    raise UserError(f"{name_or_path} does not exist and is not a catalog name "
                    f"(known {kind} names: {', '.join(k for k, v in entries.items() if v['kind'] == kind)})")


def resolve(name_or_path, kind: str) -> Path:
    """A path as given, or a catalog name of the given kind turned into a local path."""
    return resolve_all([(name_or_path, kind)])[0]


def _size(entry: dict) -> str:
    return f"{entry['size'] / 1e9:.2f} GB" if entry.get("size") else "size unknown"


def resolve_all(wanted: list, download: bool = True) -> list:
    """Local paths for [(path or catalog name, kind), ...]: every request is checked first, then the
    missing catalog files are downloaded one after another; whatever could not be had is reported in one
    message (names, sizes and where to put them), so a user learns of every missing file at once."""
    entries = catalog()
    checked = [_check(w, kind, entries) for w, kind in wanted]
    fetched, failed = {}, []
    for item in dict.fromkeys(c for c in checked if isinstance(c, str)):
        try:
            fetched[item] = fetch(item, download)
        except UserError as e:
            failed.append((item, e))
    if len(failed) == 1:
        raise failed[0][1]
    if failed:
        listed = "; ".join(f"{name} ({entries[name]['file']}, {_size(entries[name])}, from "
                           f"{entries[name]['mirrors'][0]['repo']})" for name, _ in failed)
        raise UserError(f"{len(failed)} files are missing and could not be downloaded: {listed}. Download them "
                        f"from Hugging Face into {weights_dir()} (or set $SD_INTERP_WEIGHTS)")
    return [fetched[c] if isinstance(c, str) else c for c in checked]


def lookup(path) -> tuple:
    """(name, entry) of the catalog entry a local file is, by file name, else by size and sha256."""
    path = Path(path)
    entries = catalog()
    for name, entry in entries.items():
        if entry["file"] == path.name:
            return name, entry
    size = path.stat().st_size
    for name, entry in entries.items():
        if entry.get("size") == size and entry.get("sha256") and sha256_of(path) == entry["sha256"]:
            return name, entry
    return None, None
