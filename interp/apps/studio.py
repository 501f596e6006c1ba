"""The interactive mode (end of Section 4.4: "users can manually select desired interpolations or even specify
a new prompt or pose for a particular image"): `interpolate ... --interactive`, or `interp-studio RUN_DIR`
for an existing run, serves a local web page (`studio.html`, no build step, nothing from the network).

The page shows the frame strip, the current round's candidates with their CLIP scores and CLIP's pick, and
what the run is making (a round, a re-roll of one frame, a revision) with its step and the time left. For
each frame of a round the person picks a candidate (or accepts CLIP's picks for the whole round), re-rolls
(k more candidates with new seeds), gives the frame a prompt of its own or drags the joints of its skeleton,
then re-rolls. The run waits for the choices; each is recorded in run.json as it is made
(interp/steering.py). A finished run can be revised: a frame and its descendants in the frame tree are made
again. When the run is finished the page shows the video, the GIF and the contact sheet.

Security: the server binds to 127.0.0.1 unless told otherwise; every request needs the random token of the
printed URL (GETs in the query, POSTs in the X-Token header, which another site's page cannot send), except
the page's icon; a request whose Host header names neither the bound address nor, for a loopback address,
`localhost` or `127.0.0.1` is refused (DNS rebinding); only files inside the run folder are served (symlinks
resolved, never followed out of it); every input is validated and answered with a JSON error, never a
traceback.
"""
import hmac
import http.server
import ipaddress
import json
import os
import queue
import secrets
import socket
import threading
import time
import urllib.parse
from pathlib import Path

from ldm.errors import UserError

PAGE = Path(__file__).with_name("studio.html")
# Asked for by the browser itself, without the token: two discs, one fading into the other.
ICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="5.5" cy="8" r="4.5" fill="#f3b94d"/>'
        b'<circle cx="10.5" cy="8" r="4.5" fill="#5fa8ff" fill-opacity=".8"/></svg>')
MAX_BODY = 1 << 20
MAX_PROMPT = 500
MAX_PEOPLE = 10
NEXT_ROUND = "making the next round"


class BadRequest(Exception):
    pass


def _address(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _addresses(name: str) -> list:
    try:
        return socket.getaddrinfo(name, None)
    except OSError:
        return []


def _int(body: dict, key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{key} must be an integer")
    return value


class Pace:
    """Seconds per step of one piece of work, from the intervals between its steps; an interval in which the
    run waited for the person (`Studio.waiting`) is left out."""

    def __init__(self):
        self.seconds, self.steps, self.last = 0.0, 0, None

    def step(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.seconds += now - self.last
            self.steps += 1
        self.last = now

    def left(self, steps: int):
        return round(self.seconds / self.steps * steps, 1) if self.steps else None


class Studio:
    """The page's server and the state it shows; the run's thread waits on `commands` for the person."""

    def __init__(self, out, plan, host: str = "127.0.0.1", port: int = 0, can_reroll: bool = True,
                 can_pose: bool = False):
        self.out, self.plan, self.can_reroll, self.can_pose = out, plan, can_reroll, can_pose
        self.token = secrets.token_urlsafe(24)
        self.commands = queue.Queue()
        self.lock = threading.Lock()
        self.answering = threading.Lock()  # a command's answer and its place in the queue (`do_POST`)
        self.view = {"status": "working", "round": None, "progress": None, "outputs": None, "error": None,
                     "message": "loading"}
        self.version = 0
        self.choosing = None  # {frame: candidate count} while a round waits for the person
        self.turn = 0         # which wait that is: a command sent during one is never carried out in another
        self.paces = {}       # stage -> Pace of the piece of work under way
        self.candidates = self.revising = None  # the round's candidates (`Candidates`), the frame being revised
        self.kept_before = {}  # {frame: candidate} kept before the revision under way (its candidates are remade alike)
        try:
            self.server = http.server.ThreadingHTTPServer((host, port), _Handler)
        except OSError as e:
            raise UserError(f"cannot serve the studio on {host}:{port} ({e.strerror or e}): choose another --port") from None
        self.server.studio = self
        self.port = self.server.server_address[1]
        names, address = {host}, _address(host)
        self.exposed = not (host == "localhost" or (address is not None and address.is_loopback))
        if address is not None and address.is_loopback:
            names |= {"localhost", "127.0.0.1"}
        if address is not None and address.is_unspecified:  # every interface: the machine's names
            names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()}
            names |= {a[4][0] for a in _addresses(socket.gethostname())}
            host = socket.gethostname()
        self.hosts = {f"{n}:{self.port}" for n in names}
        self.url = f"http://{host}:{self.port}/?token={self.token}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what the run tells the page -------------------------------------------------------------

    def show(self, **fields) -> None:
        with self.lock:
            self.view.update(fields)
            self.version += 1

    def state(self) -> dict:
        with self.lock:
            frames = [{"index": i, "file": self.out.state["frames"].get(str(i), {}).get("file")}
                      for i in range(self.out.count)]
            return {**self.view, "version": self.version, "frames": frames, "size": self.out.settings.get("size"),
                    "can_reroll": self.can_reroll, "can_pose": self.can_pose, "rounds": len(self.plan.rounds)}

    def progress(self, stage: str, step: int, total: int) -> None:
        """Tell the page what the run is making, the step of that piece of work (the library counts each from
        1 to its total: `interp.Interpolation.run`) and the time left at the pace of its steps so far."""
        if step == 1 or stage not in self.paces:
            self.paces[stage] = Pace()
        pace = self.paces[stage]
        pace.step()
        what, unit = self._making(stage)
        self.show(progress={"what": what, "unit": unit, "step": step, "steps": total,
                            "seconds_left": pace.left(total - step)})

    def _making(self, stage: str) -> tuple:
        """(what is being made, what a step is called) for the progress line."""
        if stage == "inversion":
            return "fitting the prompt embeddings", "iteration"
        if stage == "reroll":
            return f"re-rolling frame {self.candidates.rolling}", "step"
        what = "making the frames" if self.revising is None else f"revising frame {self.revising}"
        if self.plan.scheme.ranks:  # its rounds are made one after another: the first one not finished is under way
            made = self.out.state["frames"]
            unfinished = (r for r, frames in enumerate(self.plan.rounds) if any(str(f.index) not in made for f in frames))
            r = next(unfinished, None)
            if r is not None:
                what += f", round {r + 1} of {len(self.plan.rounds)}"
        return what, "step"

    def waiting(self, **fields) -> None:
        """The run waits for the person (and shows `fields`): no work is under way, and the wait counts in
        no step's pace."""
        for pace in self.paces.values():
            pace.last = None
        self.show(progress=None, **fields)

    # --- the person's side: validated here, carried out by the run's thread ----------------------

    def command(self, kind: str, body: dict) -> dict:
        """The command a request asks for, validated (else BadRequest); the handler queues it once answered."""
        with self.lock:
            choosing, turn = self.choosing, self.turn
            finished = self.view["status"] == "finished"
        if kind in ("pick", "reroll", "prompt", "pose"):
            if choosing is None:
                raise BadRequest("no round is waiting for a choice now")
            frame = _int(body, "frame")
            if frame not in choosing:
                raise BadRequest(f"frame {frame} is not one of this round's frames ({', '.join(map(str, choosing))})")
            command = {"kind": kind, "frame": frame}
            if kind == "pick":
                candidate = _int(body, "candidate")
                if not 0 <= candidate < choosing[frame]:
                    raise BadRequest(f"frame {frame} has candidates 0 to {choosing[frame] - 1}, not {candidate}")
                command["candidate"] = candidate
            elif kind == "reroll" and not self.can_reroll:
                raise BadRequest("this scheme draws no fresh noise per frame: nothing to re-roll")
            elif kind == "prompt":
                prompt = body.get("prompt")
                if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT):
                    raise BadRequest(f"prompt must be text of at most {MAX_PROMPT} characters, or null")
                command["prompt"] = (prompt or "").strip() or None
            elif kind == "pose":
                command["keypoints"] = self._keypoints(body.get("keypoints"))
        elif kind == "accept":
            if choosing is None:
                raise BadRequest("no round is waiting for a choice now")
            command = {"kind": "accept"}
        elif kind in ("revise", "close"):
            if not finished:
                raise BadRequest(f"{kind} is for a finished run")
            command = {"kind": kind}
            if kind == "revise":
                frame = _int(body, "frame")
                if not 0 < frame < self.out.count - 1:
                    raise BadRequest(f"frame must be one of 1 to {self.out.count - 2} (0 and {self.out.count - 1} "
                                     "are the inputs)")
                if not self.can_reroll:
                    raise BadRequest("this scheme makes no candidates: there is nothing to choose again")
                command["frame"] = frame
        else:
            raise BadRequest(f"unknown action {kind!r}")
        return {**command, "turn": turn}

    def _keypoints(self, people) -> list:
        if not self.can_pose:
            raise BadRequest("this run has no pose guidance (--pose with people found in both images)")
        w, h = self.out.settings["size"]
        ok = isinstance(people, list) and len(people) <= MAX_PEOPLE and all(
            isinstance(person, list) and len(person) == 18 and all(
                isinstance(j, list) and len(j) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in j)
                and 0 <= j[0] <= w and 0 <= j[1] <= h and 0 <= j[2] <= 1 for j in person) for person in people)
        if not ok:
            raise BadRequest(f"keypoints must be people x 18 x [x, y, confidence], x in 0..{w}, y in 0..{h}, "
                             f"confidence in 0..1, at most {MAX_PEOPLE} people")
        return [[[float(v) for v in j] for j in person] for person in people]

    def under_way(self, command: dict) -> None:
        """A command that starts work shows as under way from the moment it is answered (the run's thread takes it
        from the queue a moment later), so that no one reads the round it replaces as still waiting. The one
        place a command's work is announced: every command reaches the run's thread through here."""
        starts = {"reroll": f"re-rolling frame {command.get('frame')}", "accept": NEXT_ROUND,
                  "revise": f"revising frame {command.get('frame')}"}
        if command["kind"] in starts:
            self.show(status="working", message=starts[command["kind"]])

    # --- the run's side ------------------------------------------------------------------------

    def chooser(self, steering):
        return Chooser(self, steering)

    def finished(self, outputs: dict) -> None:
        self.revising, self.kept_before = None, {}
        self.show(status="finished", round=None, outputs=outputs, progress=None, message="the run is finished")

    def after_finish(self):
        """Wait for the person: a frame to revise, or None to close the studio."""
        while True:
            command = self.commands.get()
            if command["kind"] == "close":
                self.show(status="closed", message="the studio is closed")
                return None
            if command["kind"] == "revise":
                frame = self.revising = command["frame"]
                kept = self.out.state["frames"].get(str(frame), {}).get("kept")
                self.kept_before = {} if kept is None else {frame: kept}
                self.show(outputs=None)  # (working, as `under_way` showed it)
                return frame


class Chooser:
    """Decides a round with the person: recorded decisions first (a resumed run), then waits for picks."""

    def __init__(self, studio: Studio, steering):
        self.studio, self.steering = studio, steering
        self.saved = {}  # frame -> how many of its candidates are on disk

    def _publish(self, pool, picks, own) -> None:
        out = self.studio.out
        frames = []
        for i in pool.indices:
            if self.saved.get(i) != pool.count(i):  # on disk as they are made, for the page to show
                scores = None if None in pool.scores[i] else pool.scores[i]
                out.save_candidates(i, pool.images[i], scores, pool.clip_pick(i))
                self.saved[i] = pool.count(i)
            files = out.state["candidates"][str(i)]["files"]
            frames.append({"index": i, "position": pool.runner.plan.positions[i], "clip_pick": pool.clip_pick(i),
                           "pick": picks[i], "kept_before": self.studio.kept_before.get(i), "prompt": own[i]["prompt"],
                           "keypoints": own[i]["keypoints"] or pool.runner.conditioning(i).get("keypoints"),
                           "candidates": [{"file": f, "score": s, "roll": c // pool.k}
                                          for c, (f, s) in enumerate(zip(files, pool.scores[i]))]})
        with self.studio.lock:
            self.studio.choosing = {i: pool.count(i) for i in pool.indices}
            self.turn = self.studio.turn
        round_index = pool.runner.round_of[pool.indices[0]]
        shown = {"index": round_index, "turn": self.turn, "k": pool.k, "frames": frames}
        self.studio.waiting(status="choosing", round=shown, error=None,
                            message=f"round {round_index + 1} of {len(pool.runner.plan.rounds)}: choose a candidate "
                                    "for each frame")

    def __call__(self, pool) -> dict:
        self.studio.can_pose = pool.runner.controlnet is not None
        self.studio.candidates = pool
        self.steering.replay(pool)
        picks = {i: self.steering.recorded_pick(pool, i) for i in pool.indices}
        own = {i: self.steering.conditioning(i) for i in pool.indices}
        self.saved = {}
        with self.studio.lock:
            self.studio.turn += 1
        while any(p is None for p in picks.values()):
            self._publish(pool, picks, own)
            command = self.studio.commands.get()
            if command["turn"] != self.turn:  # sent while an earlier round waited (a double click)
                continue
            kind, i = command["kind"], command.get("frame")
            if kind == "pick":
                picks[i] = command["candidate"]
                self.steering.note_pick(i, picks[i], "person")
            elif kind == "accept":
                for j in pool.indices:
                    if picks[j] is None:
                        picks[j] = pool.clip_pick(j)
                        self.steering.note_pick(j, picks[j], "clip")
            elif kind == "prompt":
                own[i]["prompt"] = command["prompt"]
                self.steering.note_conditioning(i, prompt=command["prompt"])
            elif kind == "pose":
                own[i]["keypoints"] = command["keypoints"]
                self.steering.note_conditioning(i, keypoints=command["keypoints"])
            elif kind == "reroll":  # (working, as `under_way` showed it)
                pool.reroll(i, **own[i])
                self.steering.note_roll(i, **own[i])
        with self.studio.lock:
            self.studio.choosing = None
        self.studio.show(status="working", round=None, message=NEXT_ROUND)  # also after a round's last pick
        return picks


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "interp-studio"

    def log_message(self, *args):
        pass

    @property
    def studio(self) -> Studio:
        return self.server.studio

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; media-src 'self'; "
                         "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host(self) -> bool:
        """The Host header names the bound address; else a 403 has been sent."""
        if self.headers.get("Host") not in self.studio.hosts:
            self._json(403, {"error": "wrong Host header: open the printed URL"})
            return False
        return True

    def _allowed(self, token) -> bool:
        """The Host header names the bound address and the token matches; else a 403 has been sent."""
        if not self._host():
            return False
        if not isinstance(token, str) or not hmac.compare_digest(token, self.studio.token):
            self._json(403, {"error": "missing or wrong token: open the printed URL"})
            return False
        return True

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path in ("/favicon.ico", "/favicon.svg"):
            if self._host():
                self._send(200, ICON, "image/svg+xml")
            return
        if not self._allowed((query.get("token") or [None])[0]):
            return
        if url.path == "/":
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/api/state":
            self._json(200, self.studio.state())
        elif url.path.startswith("/files/"):
            self._file(urllib.parse.unquote(url.path[len("/files/"):]))
        else:
            self._json(404, {"error": f"no such page: {url.path}"})

    def _file(self, relative: str) -> None:
        root = os.path.realpath(self.studio.out.path)
        path = os.path.realpath(os.path.join(root, relative))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            self._json(404, {"error": "no such file in the run folder"})
            return
        kind = {".png": "image/png", ".gif": "image/gif", ".webm": "video/webm", ".mp4": "video/mp4",
                ".json": "application/json"}.get(os.path.splitext(path)[1].lower(), "application/octet-stream")
        with open(path, "rb") as f:
            self._send(200, f.read(), kind)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if not self._allowed(self.headers.get("X-Token")):
            return
        if not url.path.startswith("/api/"):
            self._json(404, {"error": f"no such action: {url.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                raise BadRequest("the request body is too large")
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            command = self.studio.command(url.path[len("/api/"):], body)
        except (ValueError, BadRequest) as e:
            message = str(e) if isinstance(e, BadRequest) else f"the request body is not JSON ({e})"
            self.studio.show(error=message)
            self._json(400, {"error": message})
            return
        # Answered, then queued ("close" ends the process), as one step: a command answered first is queued
        # first, even when the next request (a pick, then accept) reaches another handler thread at once.
        with self.studio.answering:
            self.studio.under_way(command)  # before answering: the next state read already shows the work it starts
            self._json(200, {"ok": True})
            self.studio.commands.put(command)
