"""The weights catalog (`weights/catalog.json`, installed with the package as `ldm/catalog/catalog.json`)
and downloads into the user's cache (`~/.cache/sd-interp/weights`, or `$SD_INTERP_WEIGHTS`).

A catalog entry names a checkpoint the project knows: its mirrors (on the Hugging Face Hub, or plain HTTPS
URLs), its file name, the pinned sha256 (where known) and facts the tensors cannot tell (prediction type,
native image size).
`fetch(name)` returns a verified local path, downloading with huggingface-hub on first use.
"""
import errno
import functools
import hashlib
import json
import os
import re
import socket
import sys
import urllib.error
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
def _probe(host: str, port: int, timeout: float = 5.0):
    """Why a TCP connection to host:port does not open (None: it opens)."""
    try:
        socket.create_connection((host, port), timeout).close()
        return None
    except OSError as e:
        return _no_connection(e)


def _host(url: str) -> tuple:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _reachable(url: str) -> bool:
    """Whether a TCP connection to the host of `url` opens (huggingface-hub retries an unreachable host for
    about 20 s, printing each retry, before it gives up); probed once per host and process, not once per file."""
    return _probe(*_host(url)) is None


def _lfs_sha256(etag):
    """The Hub's ETag of a large (LFS) file is its sha256; other ETags say nothing about the bytes."""
    return etag if etag and re.fullmatch(r"[0-9a-f]{64}", etag) else None


def _url(mirror: dict) -> str:
    """The URL a mirror serves the file at, one a person can open: a Hugging Face Hub mirror's
    `<endpoint>/<repo>/resolve/<revision>/<path>` (the catalog may pin a `revision`; else main), or the plain
    HTTPS `url` of a file published outside the Hub (e.g. torchvision's and pytorch-fid's)."""
    if "url" in mirror:
        return mirror["url"]
    from huggingface_hub import hf_hub_url
    return hf_hub_url(mirror["repo"], mirror["path"], revision=mirror.get("revision"))


# Why a mirror failed: a kind (what the message's line on the network is made of) and a few words. FAILED: the
# server answered, but not with the file (an HTTP error, a lost connection); OTHER: an error that says neither.
OFFLINE, OFFLINE_MODE, NOT_FOUND, CHECKSUM, FAILED, OTHER, NOT_TRIED = (
    "offline", "offline mode", "not found", "checksum", "failed", "other", "not tried")


def _causes(e):
    """`e` and the exceptions under it (raised from, or while handling; a urllib URLError's reason)."""
    seen = []
    while isinstance(e, BaseException) and e not in seen and len(seen) < 16:
        seen.append(e)
        reason = getattr(e, "reason", None) if isinstance(e, urllib.error.URLError) else None
        e = reason if isinstance(reason, BaseException) else e.__cause__ or e.__context__
    return seen


def _names(e) -> set:
    return {c.__name__ for c in type(e).__mro__}


def _no_connection(e):
    """A few words on why no connection opened, if that is what `e` (or an exception under it) says, else None:
    socket errors, huggingface-hub's offline mode and the connection errors of httpx, requests/urllib3 and
    urllib (each wraps the socket's error, which the words come from when it is there)."""
    causes = _causes(e)
    names = set().union(*map(_names, causes))
    if "OfflineModeIsEnabled" in names:
        return "HF_HUB_OFFLINE is set"
    if names & {"ReadTimeout", "ReadTimeoutError", "WriteTimeout", "PoolTimeout"}:
        return None  # connected, but no answer in time
    for c in reversed(causes):  # the innermost says the most
        if isinstance(c, socket.gaierror) or "NameResolutionError" in _names(c):
            return "no connection: host name not resolved"
        if isinstance(c, ConnectionRefusedError):
            return "no connection: refused"
        if "SSLError" in _names(c):
            return "no connection: TLS failed (a proxy?)"
        if isinstance(c, OSError) and c.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
            return "no connection: network unreachable"
        if isinstance(c, TimeoutError) or _names(c) & {"ConnectTimeout", "ConnectTimeoutError"}:
            return "no connection: timed out"
    if any(_names(c) & {"ConnectError", "ConnectionError", "NewConnectionError", "ProxyError", "URLError"}
           and not _status(c) for c in causes):
        return "no connection"
    return None


def _status(e):
    """The HTTP status an exception carries (huggingface-hub's, httpx's and requests' errors keep the
    response; urllib's HTTPError is one), else None."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code
    try:
        status = getattr(getattr(e, "response", None), "status_code", None)
    except Exception:  # httpx raises where an error has no response
        return None
    return status if isinstance(status, int) and 100 <= status < 600 else None


def _why(e) -> tuple:
    """(kind, a few words) for an exception raised while asking a mirror for a file (or while downloading it)."""
    causes = _causes(e)
    names = set().union(*map(_names, causes))
    status = next(filter(None, map(_status, causes)), None)
    if "GatedRepoError" in names:
        return FAILED, "gated: accept its terms on that page, then `hf auth login`"
    words = None if status else _no_connection(e)
    if words:
        return (OFFLINE_MODE if "HF_HUB_OFFLINE" in words else OFFLINE), words
    if names & {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError"} or status in (404, 410):
        return NOT_FOUND, "not found on that mirror" + (f", HTTP {status}" if status else "")
    if status in (401, 403):
        return FAILED, f"access refused (HTTP {status})"
    if status:
        return FAILED, (f"HTTP {status}, try again later" if status == 429 or status >= 500 else f"HTTP {status}")
    if "Timeout" in " ".join(names) or isinstance(e, TimeoutError):
        return FAILED, "no answer in time"
    detail = str(e).strip().splitlines()[0][:80] if str(e).strip() else ""
    return OTHER, type(e).__name__ + (f": {detail}" if detail else "")


def _network(kinds) -> str:
    """The message's line on the network, from the kinds of every mirror's failure."""
    kinds = set(kinds) - {NOT_TRIED}
    if not kinds:
        return ""
    if OFFLINE_MODE in kinds:
        return "offline: huggingface-hub's offline mode is on (HF_HUB_OFFLINE is set), so no mirror was asked"
    if kinds == {OFFLINE}:
        return "the network could not be reached (offline?)"
    if OFFLINE in kinds:
        return "some mirrors could not be reached (offline, or a firewall or proxy?)"
    if kinds == {NOT_FOUND}:
        return "the network was reachable, but no mirror has the file"
    if kinds & {NOT_FOUND, CHECKSUM, FAILED}:
        return "the network was reachable, but no mirror served a good copy"
    return "no mirror could be used"


class DownloadFailed(UserError):
    """A catalog file that is not here and could not be downloaded: its name, size and destination, and each
    mirror's URL (one a person can open) with why it failed there; `tried` is [(url, kind, words)]."""

    def __init__(self, entry: dict, dest: Path, tried: list):
        self.entry, self.dest, self.tried = entry, Path(dest), tried
        if not self.attempted():
            where = "from " + " or ".join(url for url, _, _ in tried)
            if all(kind == NOT_TRIED for _, kind, _ in tried):  # fetch(download=False)
                super().__init__(f"{self.dest} is missing: download {entry['file']} ({_size(entry)}) {where} "
                                 f"into {self.dest.parent}")
                return
        else:
            where = "from " + ("one of those" if len(tried) > 1 else "there")
        network = _network(kind for _, kind, _ in tried)
        super().__init__(f"could not download {entry['file']} ({_size(entry)}); {network}"
                         f"{': ' + self.mirrors() if self.attempted() else ''}. Download it by hand {where} and put "
                         f"it at {self.dest}")

    def attempted(self) -> bool:
        """Whether any mirror was asked (not so in huggingface-hub's offline mode, or without downloads)."""
        return any(kind not in (NOT_TRIED, OFFLINE_MODE) for _, kind, _ in self.tried)

    def mirrors(self) -> str:
        """`tried URL (why), URL (why)`, or `from URL or URL` where no mirror was asked."""
        if not self.attempted():
            return "from " + " or ".join(url for url, _, _ in self.tried)
        return "tried " + ", ".join(f"{url} ({words})" for url, _, words in self.tried)


def _download(entry: dict, dest: Path) -> None:
    """Download `entry` to `dest` from the first mirror that serves it with the right sha256 (the pinned
    one, else the Hub's own LFS sha256; a `sha256_prefix` is the 8 digits a file's published name carries).
    The bytes go to `<dest>.<etag>.part` first; an interrupted download (Ctrl-C, a lost connection, a killed
    process) leaves that file, and the next try resumes it with an HTTP Range request. Where no mirror serves
    it, a DownloadFailed says why each failed and whether the network could be reached."""
    try:
        from huggingface_hub import constants, get_hf_file_metadata
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
    except ImportError:  # pragma: no cover - huggingface-hub is a declared dependency
        raise UserError("huggingface-hub is not installed: pip install huggingface-hub") from None
    from tqdm import tqdm
    if constants.HF_HUB_OFFLINE:
        raise DownloadFailed(entry, dest, [(_url(m), OFFLINE_MODE, "HF_HUB_OFFLINE is set")
                                           for m in entry["mirrors"]])
    tried = []
    for mirror in entry["mirrors"]:
        hub = "url" not in mirror
        url = _url(mirror)
        if not _reachable(constants.ENDPOINT if hub else url):
            tried.append((url, OFFLINE, _probe(*_host(constants.ENDPOINT if hub else url)) or "no connection"))
            continue
        token = None if hub else False  # the user's Hugging Face token goes to the Hub only
        try:
            meta = get_hf_file_metadata(url, token=token)
        except Exception as e:  # gated, removed, a server error, no connection: try the next mirror
            tried.append((url, *_why(e)))
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
                         expected_size=meta.size, displayed_filename=(mirror.get("path") or url).rsplit("/", 1)[-1],
                         tqdm_class=tqdm)
        except Exception as e:  # the part file stays, for the next try to resume
            kind, words = _why(e)
            if kind != NOT_FOUND:  # the server answered: not an offline machine
                kept = part.stat().st_size if part.exists() else 0
                kind, words = FAILED, (f"{'connection lost' if kind == OFFLINE else words} after {kept / 1e6:.1f} MB, "
                                       "run again to resume")
            tried.append((url, kind, words))
            continue
        actual = sha256_of(part)
        wrong = None
        if expected is not None and actual != expected:
            wrong = f"not the {'pinned' if entry.get('sha256') else 'Hub-listed'} {expected}"
        elif not actual.startswith(entry.get("sha256_prefix", "")):
            wrong = f"not one starting with {entry['sha256_prefix']}"
        if wrong:  # never put a wrong file in place
            part.unlink()
            tried.append((url, CHECKSUM, f"served sha256 {actual}, {wrong}"))
            continue
        part.replace(dest)
        _stamp(dest, actual)
        return
    raise DownloadFailed(entry, dest, tried)


def fetch(name: str, download: bool = True) -> Path:
    """Local, verified path of catalog entry `name`, downloading it on first use."""
    entries = catalog()
    if name not in entries:
        raise UserError(f"unknown catalog name {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    dest = weights_dir() / entry["file"]
    if not dest.exists():
        if not download:
            raise DownloadFailed(entry, dest, [(_url(m), NOT_TRIED, "not tried") for m in entry["mirrors"]])
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
    message (names, sizes, where to put them, each mirror's URL and why it failed, and whether the network could
    be reached), so a user learns of every missing file at once."""
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
        network = _network(kind for _, e in failed if isinstance(e, DownloadFailed) for _, kind, _ in e.tried)
        listed = "; ".join(f"{name}: {e.entry['file']} ({_size(e.entry)}), {e.mirrors()}"
                           if isinstance(e, DownloadFailed) else f"{name}: {e}" for name, e in failed)
        network = f"; {network}" if network else ""
        raise UserError(f"{len(failed)} files are missing and could not be downloaded{network}. {listed}. Download "
                        f"each from one of its URLs into {weights_dir()} (or set $SD_INTERP_WEIGHTS to another folder)")
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
