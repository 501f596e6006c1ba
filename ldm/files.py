"""Where the project keeps files of its own (`user_cache`), and writing files so that a crash never leaves
a half-written file under its final name: everything is written to a temporary name beside the file and
renamed into place. The temporary name of `dir/name.ext` is `dir/name.part.ext` (the extension stays, so
that writers that pick a format by it still work)."""
import json
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def user_cache() -> Path:
    """This project's folder in the user's cache: $XDG_CACHE_HOME/sd-interp, else ~/.cache/sd-interp."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sd-interp"


def missing_folders(path) -> list:
    """The folders of `path` (itself included) that do not exist yet, deepest first."""
    whole = Path(os.path.abspath(path))
    return [p for p in (whole, *whole.parents) if not os.path.lexists(p)]


def check_writable(path, option: str, folder: bool = False, keep: bool = True) -> None:
    """A UserError naming `option` unless `path` (a file, or with `folder` a folder) can be written: its
    folder is made and a probe file written and removed there. Commands call it before anything slow. With
    `keep=False` the folders it made are removed again (a command that may still refuse the run leaves nothing
    behind; it makes them when it writes)."""
    where = Path(path) if folder else Path(path).parent
    if where.exists() and not where.is_dir():
        raise UserError(f"cannot write to {where}: it is a file, not a folder: choose another {option}")
    made = missing_folders(where)
    probe = where / f".write-probe-{os.getpid()}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {where} ({e.strerror or e}): choose another {option}") from None
    finally:
        for folder_made in made if not keep else ():
            try:
                os.rmdir(folder_made)  # only ever an empty folder
            except OSError:
                break


def part_path(path) -> str:
    """The temporary name of `path`."""
    stem, ext = os.path.splitext(os.fspath(path))
    return f"{stem}.part{ext}"


@contextmanager
def atomic_path(path):
    """`with atomic_path(path) as tmp:` write `tmp`; on success it replaces `path`, on failure it is removed."""
    tmp = part_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def json_cached(path: Path, key: str, compute, valid=lambda value: True):
    """The value stored under `key` in the JSON file `path` if `valid(value)` holds, else `compute()`, stored
    there for next time. A file that cannot be read is computed again; one that cannot be written keeps the
    value in memory only."""
    try:
        cache = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    try:
        if key in cache and valid(cache[key]):
            return cache[key]
    except (KeyError, TypeError, ValueError):
        pass
    cache[key] = compute()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(cache, indent=1))
    except OSError:
        pass
    return cache[key]
