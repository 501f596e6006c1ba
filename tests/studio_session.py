"""What the studio tests share: a pair of images with keypoints, the interpolate command on the tiny models,
and a running `interpolate --interactive` driven through its HTTP API."""
import http.client
import json
import re
import subprocess
import threading
import time
import urllib.parse

from PIL import Image, ImageDraw

from conftest import DATA

# A standing figure, 18 COCO joints (x, y, confidence) on a 64 x 64 picture.
FIGURE = [[32, 10, 1], [32, 18, 1], [24, 18, 1], [20, 28, 1], [18, 38, 1], [40, 18, 1], [44, 28, 1], [46, 38, 1],
          [27, 38, 1], [26, 48, 1], [26, 58, 1], [37, 38, 1], [38, 48, 1], [38, 58, 1], [30, 8, 1], [34, 8, 1],
          [28, 9, 1], [36, 9, 1]]


def make_pair(tmp_path):
    """Two images with a keypoint file each (the figure moves its arms)."""
    files = []
    for name, colour, arm in (("a", (200, 60, 40), 0), ("b", (40, 90, 200), 8)):
        im = Image.new("RGB", (64, 64), colour)
        ImageDraw.Draw(im).ellipse((16, 16, 48, 48), fill=(230, 220, 80))
        im.save(tmp_path / f"{name}.png")
        people = [[[x, y - arm if j in (4, 7) else y, c] for j, (x, y, c) in enumerate(FIGURE)]]
        (tmp_path / f"{name}.json").write_text(json.dumps({"width": 64, "height": 64,
                                                           "people": [{"keypoints": p} for p in people]}))
        files += [tmp_path / f"{name}.png"]
    return files


def command(tmp_path, tiny_dir, clip_tiny, out, *extra):
    return ["interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompt", "a ball",
            "--ckpt", str(tiny_dir / "tiny.safetensors"), "--controlnet", str(tiny_dir / "controlnet.safetensors"),
            "--poses", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--clip", str(clip_tiny),
            "--clip-config", str(DATA / "clip" / "clip_config.json"), "--frames", "5", "--steps", "4",
            "--size", "64", "--inversion-steps", "1", "--candidates", "2", "--out", str(out), *extra]


RUNNING = []  # every Session's process: conftest stops those a failed test left behind


class Session:
    """An `interpolate --interactive` process and its page's HTTP API."""

    def __init__(self, args, env, interactive=("--interactive",)):
        self.process = subprocess.Popen([*args, *interactive], env=env, stderr=subprocess.PIPE, text=True,
                                        stdout=subprocess.PIPE)
        RUNNING.append(self.process)
        self.lines, self.url = [], None
        self.reader = threading.Thread(target=self._read, daemon=True)  # the only reader of stderr
        self.reader.start()
        deadline = time.time() + 120
        while self.url is None:
            assert time.time() < deadline and self.process.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        parts = urllib.parse.urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self.token = urllib.parse.parse_qs(parts.query)["token"][0]

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)
            if re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=\S+\n", line):
                self.url = line.strip()

    def request(self, method, path, body=None, headers=None, host=None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = {"Host": host or f"{self.host}:{self.port}", **(headers or {})}
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, data

    def get(self, path, token=None):
        sep = "&" if "?" in path else "?"
        return self.request("GET", f"{path}{sep}token={token or self.token}")

    def post(self, action, body=None, token=None, raw=None):
        status, data = self.request("POST", f"/api/{action}", raw if raw is not None else json.dumps(body or {}),
                                    {"X-Token": token or self.token, "Content-Type": "application/json"})
        return status, json.loads(data)

    def state(self):
        status, data = self.get("/api/state")
        assert status == 200
        return json.loads(data)

    def wait(self, status, round_index=None, timeout=120):
        deadline = time.time() + timeout
        while True:
            s = self.state()
            if s["status"] == status and (round_index is None or (s["round"] or {}).get("index") == round_index):
                return s
            assert time.time() < deadline and self.process.poll() is None, (s, "".join(self.lines))
            time.sleep(0.05)

    def frame(self, s, index):
        return next(f for f in s["round"]["frames"] if f["index"] == index)

    def finish(self):
        """The exit code and stdout, once the process has ended and all of its stderr is in `lines`."""
        self.process.wait(timeout=60)  # stdout holds a few closing lines: far too few to fill its pipe
        out = self.process.stdout.read()
        self.reader.join(timeout=60)
        return self.process.returncode, out
