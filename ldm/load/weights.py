"""The weights catalog (`weights/catalog.json`, installed with the package as `ldm/catalog/catalog.json`)
and downloads into the user's cache (`~/.cache/sd-interp/weights`, or `$SD_INTERP_WEIGHTS`).

A catalog entry names a checkpoint the project knows: its mirrors (on the Hugging Face Hub, or plain HTTPS
URLs), its file name, the pinned sha256 (where known) and facts the tensors cannot tell (prediction type,
native image size).
`fetch(name)` returns a verified local path, downloading with huggingface-hub on first use.
"""
import functools
import hashlib
import json
import os
import re
import socket
import sys
import urllib.parse
from pathlib import Path

from ..errors import UserError
from ..files import user_cache

HERE = Path(__file__).resolve().parents[1]  # the ldm package
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
    """Check a file against its pinned sha256 (or the `sha256_prefix` its published name carries) once; a
    `.sha256` stamp beside it records success."""
    pinned, prefix = entry.get("sha256"), entry.get("sha256_prefix") or ""
    if not (pinned or prefix):
        return
    stamp = _stamp_path(path)
    known = stamp.read_text().strip() if stamp.exists() else None
    if known and (known == pinned or (not pinned and known.startswith(prefix))):
        return
    actual = sha256_of(path)
    if (pinned and actual != pinned) or not actual.startswith(prefix):
        expected = f"the catalog pins {pinned}" if pinned else f"the published one starts with {prefix}"
        raise UserError(f"{path} has sha256 {actual}, but {expected}: delete the file and download it again")
    _stamp(path, actual)


def file_sha256(path) -> str:
    """A file's sha256: the one its `.sha256` stamp records (the catalog check hashed it already), else computed."""
    stamp = _stamp_path(Path(path))
    return stamp.read_text().strip() if stamp.exists() else sha256_of(path)


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


def _lfs_sha256(etag):
    """The Hub's ETag of a large (LFS) file is its sha256; other ETags say nothing about the bytes."""
    return etag if etag and re.fullmatch(r"[0-9a-f]{64}", etag) else None


def _source(mirror: dict) -> str:
    """Where a mirror serves the file: `repo/path` on the Hugging Face Hub, or a plain HTTPS `url` (files
    published outside the Hub, e.g. torchvision's and pytorch-fid's)."""
    return mirror.get("url") or f"{mirror['repo']}/{mirror['path']}"


def _download(entry: dict, dest: Path) -> None:
    """Download `entry` to `dest` from the first mirror that serves it with the right sha256 (the pinned
    one, else the Hub's own LFS sha256; a `sha256_prefix` is the 8 digits a file's published name carries).
    The bytes go to `<dest>.<etag>.part` first; an interrupted download (Ctrl-C, a lost connection, a killed
    process) leaves that file, and the next try resumes it with an HTTP Range request."""
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
    except ImportError:  # pragma: no cover - huggingface-hub is a declared dependency
        raise UserError("huggingface-hub is not installed: pip install huggingface-hub") from None
    from tqdm import tqdm
    by_hand = f"download it by hand ({', '.join(map(_source, entry['mirrors']))}) and put it at {dest}"
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"could not download {entry['file']} (HF_HUB_OFFLINE is set): {by_hand}")
    errors = []
    for mirror in entry["mirrors"]:
        hub = "url" not in mirror
        url = hf_hub_url(mirror["repo"], mirror["path"]) if hub else mirror["url"]
        name = mirror["repo"] if hub else urllib.parse.urlsplit(url).hostname
        if not _reachable(constants.ENDPOINT if hub else url):
            errors.append(f"{name} cannot be reached (offline?)")
            continue
        token = None if hub else False  # the user's Hugging Face token goes to the Hub only
        try:
            meta = get_hf_file_metadata(url, token=token)
        except Exception as e:  # gated, removed, a server error: try the next mirror
            errors.append(f"{name}: {type(e).__name__}")
            continue
        expected = entry.get("sha256") or (_lfs_sha256(meta.etag) if hub else None)
        part = dest.with_name(f"{dest.name}.{(meta.etag or 'no-etag')[:16]}.part")
        done = part.stat().st_size if part.exists() else 0
        if meta.size is not None and done > meta.size:  # not a prefix of this file
            part.unlink()
            done = 0
        if done:
            total = f" of {meta.size / 1e6:.1f}" if meta.size else ""
            print(f"resuming the download of {entry['file']}: {done / 1e6:.1f}{total} MB are already here",
                  file=sys.stderr)
        try:
            with open(part, "ab") as f:
                # a progress bar even when stderr is not a terminal (huggingface-hub's own shows on terminals only)
                http_get(meta.location, f, resume_size=done, headers=build_hf_headers(token=token),
                         expected_size=meta.size, displayed_filename=_source(mirror).rsplit("/", 1)[-1],
                         tqdm_class=tqdm)
        except Exception as e:  # the part file stays, for the next try to resume
            errors.append(f"{name}: {type(e).__name__} (run again to resume)")
            continue
        actual = sha256_of(part)
        wrong = None
        if expected is not None and actual != expected:
            wrong = f"not the {'pinned' if entry.get('sha256') else 'Hub-listed'} {expected}"
        elif not actual.startswith(entry.get("sha256_prefix", "")):
            wrong = f"not one starting with {entry['sha256_prefix']}"
        if wrong:  # never put a wrong file in place
            part.unlink()
            errors.append(f"{name} served sha256 {actual}, {wrong}")
            continue
        part.replace(dest)
        _stamp(dest, actual)
        return
    raise UserError(f"could not download {entry['file']} ({'; '.join(errors)}): {by_hand}")


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
                            f"{_source(entry['mirrors'][0])} into {dest.parent}")
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
    size = entry.get("size")
    if not size:
        return "size unknown"
    unit, scale = next((u, k) for u, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("bytes", 1)) if size >= k)
    return f"{size / scale:.2f} {unit}" if scale > 1 else f"{size} bytes"


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
                           f"{_source(entries[name]['mirrors'][0])})" for name, _ in failed)
        raise UserError(f"{len(failed)} files are missing and could not be downloaded: {listed}. Download them "
                        f"into {weights_dir()} (or set $SD_INTERP_WEIGHTS)")
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
