"""`interp-batch pairs.csv --out DIR [--schemes ours,did] [interpolate options for every row]`: every
(pair, scheme) of a manifest (interp/manifest.py) as its own run folder `DIR/<pair id>/<scheme>/`, made by
`interpolate`'s own code (interp/apps/run.py) with the networks loaded once per process.

`torchrun --nproc-per-node=K -m interp.apps.batch pairs.csv --out DIR ...` runs K workers (one GPU each, or K CPU
processes). There is no fixed split: each worker takes the next unclaimed run from a counter in the c10d store
that torchrun provides, so slow and fast pairs balance. Each run's output goes to its folder's `log.txt`; rank
0 prints one line per finished run and an overall bar, and at the end writes `DIR/summary.json` and
`DIR/summary.md`. Rerunning the same command skips finished runs and resumes unfinished ones from their
frames (the run folder's resume), so a worker that dies loses at most the frame it was making; a lock on each
run folder keeps two processes from making the same run at once.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
import traceback

import torch
import torch.distributed as dist

from ldm.errors import UserError
from ldm.files import atomic_path, check_writable
from ldm.load import weights
from ldm.runtime import Parser, run
from pose.errors import PoseError

from ..models import Models
from ..schemes import ALIASES, SCHEMES
from . import chain, manifest
from .options import RESOLVED
from .rundir import normalise, write_json
from .run import RETIME_RECORD, check, make as make_run, needed_files

LOG = "log.txt"


def _schemes(text: str) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCHEMES and n not in ALIASES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"--schemes takes a comma-separated list of {', '.join(SCHEMES)}, "
                                         f"not {text!r}")
    return list(dict.fromkeys(names))


def parse_args(argv=None) -> tuple:
    """(batch options, interpolate options for every row)."""
    p = Parser(prog="interp-batch", description="Interpolate every pair of a manifest, with one or more "
               "schemes, on one process or on many with torchrun.",
               epilog="Every other option is an interpolate option for all rows (a row's own value wins); "
                      "`interpolate --help` lists them.")
    p.add_argument("manifest", help="CSV with a header row, or JSON lines (.jsonl): image_a, image_b (or images), "
                                    "prompt, and any interpolate option per row")
    p.add_argument("--out", required=True, help="folder of all runs: DIR/<pair id>/<scheme>/")
    p.add_argument("--schemes", type=_schemes, default=["ours"], help="schemes to run on every pair (default ours)")
    p.add_argument("--fetch-only", action="store_true", help="download every model file the rows need, then stop")
    return p.parse_known_args(argv)


@dataclasses.dataclass(frozen=True)
class Workers:
    """This process's place among the workers, and the store they share (a HashStore when alone)."""
    rank: int
    world: int
    local_rank: int
    store: object

    @classmethod
    def from_env(cls) -> "Workers":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(0, 1, 0, dist.HashStore())
        store, rank, world = next(dist.rendezvous("env://"))
        # torchrun keeps its store across restarts of the workers: each attempt counts its claims afresh
        job = f"interp-batch/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", "0")), dist.PrefixStore(job, store))

    def wait(self, key: str) -> str:
        """The value of `key` once some worker has set it (polled: a run may take longer than any timeout)."""
        while not self.store.check([key]):
            time.sleep(0.2)
        return self.store.get(key).decode()


class Board:
    """What rank 0 shows: one line per finished run, from whichever worker made it, and a bar over all runs.
    Workers post results to the store; rank 0 reads them in a thread while it works on runs of its own."""

    def __init__(self, workers: Workers, tasks: list, console):
        self.workers, self.tasks, self.console = workers, tasks, console
        self.results, self.shown = {}, 0
        self.bar = self.thread = None
        if workers.rank == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=len(tasks), desc="runs", unit="run", file=console)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._follow, daemon=True)
            self.thread.start()

    def post(self, index: int, result: dict) -> None:
        store = self.workers.store
        store.set(f"result/{index}", json.dumps(result))
        store.set(f"done/{store.add('finished', 1) - 1}", str(index))

    def _show(self) -> None:
        store = self.workers.store
        while self.shown < store.add("finished", 0) and store.check([f"done/{self.shown}"]):
            index = int(store.get(f"done/{self.shown}"))
            result = self.results[index] = json.loads(store.get(f"result/{index}"))
            task = self.tasks[index]
            self.bar.write(f"[worker {result['worker']}] {task.pair}/{task.scheme}: {_describe(result)}",
                           file=self.console)
            self.bar.update(1)
            self.shown += 1

    def _follow(self) -> None:
        while not self.stop.wait(0.2):
            self._show()

    def close(self) -> dict:
        """On rank 0: wait for every worker to finish, then every run's result {task index: result}."""
        while int(self.workers.store.add("workers-done", 0)) < self.workers.world:
            time.sleep(0.2)
        self.stop.set()
        self.thread.join()
        self._show()
        self.bar.close()
        return self.results


def _describe(result: dict) -> str:
    if result["status"] == "failed":
        return f"failed: {result['error']}"
    if result["status"] in ("skipped", "busy"):
        return f"{result['status']}: {result['error']}"
    return f"complete in {result['seconds']:.1f} s ({result['frames']} frames, {result['unet_calls']} UNet calls)"


def _states(s) -> list:
    """The run.json of each run folder of settings `s` (one, or a chain's segments); None where there is none."""
    states = []
    for part in (chain.segments(s) if len(s.images) > 2 else [s]):
        try:
            with open(os.path.join(part.out, "run.json"), encoding="utf-8") as f:
                states.append(json.load(f))
        except (OSError, ValueError):
            states.append(None)
    return states


def _finished(s) -> bool:
    """Whether `s.out` holds a complete run of these settings (a chain: every segment, and its outputs; with
    `retime`: the re-timed run in that space too)."""
    want = {k: v for k, v in normalise(s.record()).items() if k not in RESOLVED}
    for state in _states(s):
        if not state or state.get("status") != "complete":
            return False
        if any(state["settings"].get(k) != v for k, v in want.items()):
            return False
    if s.retime:
        try:
            with open(os.path.join(s.out, RETIME_RECORD), encoding="utf-8") as f:
                if json.load(f).get("space") != s.retime:
                    return False
        except (OSError, ValueError, AttributeError):
            return False
    return len(s.images) == 2 or os.path.isfile(os.path.join(s.out, chain.CHAIN))


def _facts(s) -> dict:
    """Frames made (of all), UNet calls and seconds of the run folder(s) of `s`, from their run.json."""
    states = [st or {} for st in _states(s)]
    made = sum(len([i for i in st.get("frames", {}) if k == 0 or i != "0"]) for k, st in enumerate(states))
    total = (s.settings.frames - 1) * (len(s.images) - 1) + 1
    return {"frames": f"{made}/{total}", "unet_calls": sum(st.get("unet_calls", 0) for st in states),
            "run_seconds": round(sum(st.get("seconds", {}).get("total", 0) for st in states), 3)}


@contextlib.contextmanager
def _locked(folder: str):
    """Yields whether this process holds the lock of `folder` (released when it ends, or dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield True
        return
    with open(os.path.join(folder, ".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def make(task, workers: Workers, models: Models) -> dict:
    """Make one run (or skip it when it is finished), its output into its folder's log; returns its result."""
    s = task.options
    if workers.world > 1 and s.files.device == "cuda":  # one GPU per worker
        s = s.replace(files={"device": f"cuda:{workers.local_rank}"})
    os.makedirs(s.out, exist_ok=True)
    t0 = time.perf_counter()
    result = {"worker": workers.rank, "status": "complete", "error": None}
    with _locked(s.out) as mine:
        if not mine:
            result.update(status="busy", error="another process is making it")
        elif not s.overwrite and _finished(s):
            result.update(status="skipped", error="already complete")
        else:
            with open(os.path.join(s.out, LOG), "a", encoding="utf-8") as log, \
                    contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    make_run(s, models)
                except (UserError, PoseError) as e:
                    print(f"error: {e}")
                    result.update(status="failed", error=str(e))
                except Exception as e:  # a bug or a device failure in one run: the others still run
                    traceback.print_exc()
                    result.update(status="failed", error=f"{type(e).__name__}: {e} (traceback in {log.name})")
    return {**result, "seconds": round(time.perf_counter() - t0, 3), **_facts(s)}


def _fetch(tasks: list, workers: Workers) -> None:
    """Rank 0 finds or downloads every file the runs need (all missing ones named at once); the others wait."""
    if workers.rank == 0:
        wanted = list(dict.fromkeys(want for task in tasks for want in needed_files(task.options)))
        try:
            weights.resolve_all(wanted)
        except UserError:
            workers.store.set("files", "missing")
            raise
        workers.store.set("files", "ok")
    elif workers.wait("files") != "ok":
        sys.exit(2)  # rank 0 says what is missing


def summary(out: str, tasks: list, results: dict, workers: Workers, seconds: float) -> list:
    rows = [{"pair": t.pair, "scheme": t.scheme, "line": t.line, "folder": os.path.relpath(t.options.out, out),
             **results.get(i, {"status": "not run"})} for i, t in enumerate(tasks)]
    write_json(os.path.join(out, "summary.json"), {"workers": workers.world, "seconds": round(seconds, 3),
                                                   "runs": rows})
    lines = [f"# interp-batch: {len(rows)} runs on {workers.world} worker(s), {seconds:.1f} s", "",
             "| pair | scheme | status | frames | seconds | UNet calls | worker | folder | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['scheme']} | {r['status']} | {r.get('frames', '')} | "
                     f"{r.get('run_seconds', '')} | {r.get('unet_calls', '')} | {r.get('worker', '')} | "
                     f"{r['folder']} | {(r.get('error') or '').replace('|', '/')} |")
    with atomic_path(os.path.join(out, "summary.md")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return rows


def batch(args, common) -> int:
    t0 = time.perf_counter()
    workers = Workers.from_env()
    try:
        tasks = manifest.tasks(args.manifest, args.out, args.schemes, common, check)
        if not args.fetch_only:
            check_writable(args.out, "--out", folder=True)
    except UserError:
        if workers.rank:
            sys.exit(2)  # rank 0 reports it
        raise
    _fetch(tasks, workers)
    if args.fetch_only:
        return 0
    if workers.world > 1 and torch.cuda.is_available():
        torch.cuda.set_device(workers.local_rank)  # what "cuda" means in this worker
    board, models = Board(workers, tasks, sys.stderr), Models()
    while (index := workers.store.add("claimed", 1) - 1) < len(tasks):
        board.post(index, make(tasks[index], workers, models))
    workers.store.add("workers-done", 1)
    if workers.rank:
        return 0
    rows = summary(args.out, tasks, board.close(), workers, time.perf_counter() - t0)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows)} runs: {len(rows) - len(failed)} complete, {len(failed)} failed; "
          f"summary in {os.path.join(args.out, 'summary.md')}")
    return 1 if failed else 0


def main(argv=None):
    args, common = parse_args(argv)
    code = []
    run(lambda: code.append(batch(args, common)), errors=(UserError, PoseError),
        interrupted="interrupted: run the same command again to resume (finished runs are kept, unfinished ones "
                    "resume from their frames)")
    sys.exit(code[0])


if __name__ == "__main__":
    main()
