"""The manifest of `interp-batch`: the pairs to interpolate, one row each, as CSV with a header row or as
JSON lines (`.jsonl`: one object per line).

Columns:
- `image_a`, `image_b`: the two images; or `images`: every keyframe of a chain, separated by `;`;
- `prompt` (unless the command line gives one for every row);
- `id` (optional): the pair's folder name, letters, digits, `.`, `_` and `-` (default: `pair-<line>`);
- any other `interpolate` option by its name, dashes or underscores alike (`prompt_b`, `negative`, `seed`,
  `frames`, `cfg`, `poses` with `;` between the files, ...); flags take true or false.
An empty cell leaves the option to the command line. Relative paths are taken from the manifest's folder.

Every row is checked against every scheme before anything runs: a bad row is reported with its line number
and what is wrong, all bad rows at once.
"""
import argparse
import csv
import json
import os
import re
from dataclasses import dataclass, replace

from ldm.errors import UserError
from ldm.runtime import Parser

from ..schemes import scheme as find_scheme
from .options import Options, parse, parser as interpolate_parser

IMAGE_COLUMNS = ("image_a", "image_b", "images")
NOT_PER_ROW = {"out": "--out of interp-batch names the folder of all runs",
               "scheme": "--schemes of interp-batch lists the schemes of all rows",
               "fetch_only": "interp-batch --fetch-only fetches for every row",
               "interactive": "interp-batch runs without a person (open a run with interp-studio)",
               "host": "interp-batch runs without a person", "port": "interp-batch runs without a person",
               "help": "not an option of a run"}
PATH_OPTIONS = ("poses", "pose_model", "ckpt", "controlnet", "clip", "clip_config", "config")
SAFE_ID = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Task:
    """One run of the batch: a row's pair made with one scheme, in `options.out`."""
    line: int
    pair: str
    scheme: str
    options: Options


class _Refuse(Parser):
    """interpolate's parser, with a bad option raised (to be reported against its row) rather than exiting."""

    def error(self, message):
        raise UserError(message)


def read_rows(path) -> list:
    """[(line number, {column: value}), ...] of a CSV or JSON-lines manifest, empty cells left out."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if str(path).endswith((".jsonl", ".ndjson")):
                rows = []
                for line, text in enumerate(f, 1):
                    if text.strip():
                        try:
                            row = json.loads(text)
                        except ValueError as e:
                            raise UserError(f"{path}, line {line}: not JSON ({e})") from None
                        if not isinstance(row, dict):
                            raise UserError(f"{path}, line {line}: a row is a JSON object of column: value")
                        rows.append((line, row))
            else:
                reader = csv.DictReader(f)
                rows = []
                for row in reader:
                    if None in row:  # csv.DictReader's key for the cells past the header's
                        raise UserError(f"{path}, line {reader.line_num}: more cells than the header has columns")
                    rows.append((reader.line_num, {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: give the manifest of pairs (CSV or JSON lines)") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is not a CSV or JSON-lines manifest ({e})") from None
    if not rows:
        raise UserError(f"{path} has no rows: one row per pair, with image_a, image_b and prompt")
    return rows


def _options() -> dict:
    """interpolate's optional arguments by their column name."""
    return {a.dest: a for a in interpolate_parser()._actions if a.option_strings}


def _list(value) -> list:
    return list(value) if isinstance(value, list) else [v.strip() for v in str(value).split(";") if v.strip()]


def _flag(value) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise UserError(f"expected true or false, not {value!r}")


def _here(base: str, path) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(str(path))))


def row_arguments(row: dict, base: str, options: dict) -> tuple:
    """(images, options) of interpolate's command line for one row, its paths taken from `base`."""
    row = {k.replace("-", "_"): v for k, v in row.items()}
    if "images" in row and ({"image_a", "image_b"} & row.keys()):
        raise UserError("give images or image_a and image_b, not both")
    images = _list(row["images"]) if "images" in row else [row.get(k) for k in ("image_a", "image_b")]
    if not all(images):
        raise UserError("needs image_a and image_b (or images)")
    args = []
    for key, value in row.items():
        if key in IMAGE_COLUMNS or key == "id":
            continue
        if key in NOT_PER_ROW:
            raise UserError(f"column {key!r} cannot be set per row: {NOT_PER_ROW[key]}")
        if key not in options:
            raise UserError(f"unknown column {key!r} (columns are image_a, image_b or images, id, and the options "
                            f"of interpolate by name)")
        action, flag = options[key], options[key].option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            args.append(flag if _flag(value) else flag.replace("--", "--no-", 1))
        elif action.nargs == 0:  # store_true
            args += [flag] if _flag(value) else []
        elif action.nargs == "+":
            values = _list(value)
            if key in PATH_OPTIONS:  # a file beside the manifest, else as given (a catalog name)
                values = [_here(base, v) if os.path.exists(_here(base, v)) else v for v in values]
            args += [flag, *values]
        else:
            value = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            if key in PATH_OPTIONS and os.path.exists(_here(base, value)):
                value = _here(base, value)
            args.append(f"{flag}={value}")  # `=`: a value may start with '-'
    return [_here(base, image) for image in images], args


def tasks(path, out: str, schemes: list, common: list, check) -> list:
    """Every (row, scheme) of the manifest at `path` as a Task in `out/<pair id>/<scheme>`, `common` being
    interpolate options for every row (a row's own value wins). Each task is checked with `check` (the
    images open, the plan is possible); all problems are raised together, one line per bad row."""
    base = os.path.dirname(os.path.abspath(path))
    options, found, problems, seen = _options(), [], [], {}
    try:
        if parse(["a.png", "b.png", "--prompt=x", *common], cls=_Refuse).interactive:
            raise UserError("--interactive: interp-batch runs without a person (open a run with interp-studio)")
    except UserError as e:
        raise UserError(f"the options for every row: {e}") from None
    for line, row in read_rows(path):
        pair = str(row.get("id") or f"pair-{line:03d}")
        try:
            if not SAFE_ID.fullmatch(pair):
                raise UserError(f"id {pair!r} is not a folder name (letters, digits, '.', '_', '-')")
            if pair in seen:
                raise UserError(f"id {pair!r} is also the id of line {seen[pair]}")
            seen[pair] = line
            images, own = row_arguments(row, base, options)
            for scheme in schemes:
                given = parse([*images, *common, *own, "--scheme", scheme, "--out", os.path.join(out, pair, scheme)],
                              cls=_Refuse)
                if not find_scheme(scheme).poses:  # the keypoints are for the schemes that use them
                    given = replace(given, poses=None, settings=replace(given.settings, pose=False))
                check(given)
                found.append(Task(line, pair, scheme, given))
        except UserError as e:
            problems.append(f"line {line}: {e}")
    if problems:
        raise UserError(f"{len(problems)} of the rows of {path} cannot be run; nothing was started:\n  "
                        + "\n  ".join(problems))
    return found
