"""The weights catalog: lookups, verification and the offline error."""
import hashlib
import socket
import urllib.error

import pytest

from ldm.errors import UserError
from ldm.load import weights


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SD_INTERP_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(weights, "_reachable", lambda url: True)  # the Hub itself is faked in each test
    return tmp_path


def test_catalog_entries_are_complete():
    entries = weights.catalog()
    assert {"sd21-768-v", "sd21-512-base", "controlnet-sd21-openpose"} <= entries.keys()
    for name, entry in entries.items():
        assert entry["kind"] and entry["file"] and entry["mirrors"], name
        assert all(m["url"].startswith("https://") if "url" in m else m["repo"].count("/") == 1 and m["path"]
                   for m in entry["mirrors"]), name
        assert entry.get("sha256") is None or len(entry["sha256"]) == 64, name
        assert entry.get("sha256_prefix") is None or entry["sha256_prefix"] in entry["file"], name
    assert entries["sd21-768-v"]["prediction"] == "v" and entries["sd21-512-base"]["prediction"] == "eps"
    assert entries["sd21-768-v"]["mirrors"][0]["repo"] == "webui/stable-diffusion-2-1"


def hub_urls(name):
    """The URL of each mirror of catalog entry `name`, as a person opens it."""
    from huggingface_hub import hf_hub_url
    return [m.get("url") or hf_hub_url(m["repo"], m["path"], revision=m.get("revision"))
            for m in weights.catalog()[name]["mirrors"]]


class ConnectError(Exception):
    """httpx's (and huggingface-hub's httpx fork's) error for a connection that did not open; it wraps the
    socket's error."""


def name_not_resolved():
    try:
        raise socket.gaierror(-2, "Name or service not known")
    except OSError as e:
        raise ConnectError("[Errno -2] Name or service not known") from e


def refused():
    raise ConnectionRefusedError(111, "Connection refused")


def requests_connection_error():
    requests = pytest.importorskip("requests")
    raise requests.ConnectionError("HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded")


def urllib_error():
    raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))


@pytest.mark.parametrize("fail, words", [
    (name_not_resolved, "no connection: host name not resolved"),
    (refused, "no connection: refused"),
    (requests_connection_error, "no connection"),
    (urllib_error, "no connection: host name not resolved"),
], ids=["httpx", "socket", "requests", "urllib"])
def test_offline_the_message_says_so_and_names_every_file_and_every_mirrors_url(weights_dir, monkeypatch, fail,
                                                                                  words):
    import huggingface_hub
    asked = []

    def offline(url, **kwargs):
        asked.append(url)
        fail()
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    names = ["sd21-512-base", "controlnet-sd21-openpose", "openpose-coco-prototxt", "alexnet"]
    with pytest.raises(UserError) as e:
        weights.resolve_all([(name, weights.catalog()[name]["kind"]) for name in names])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("4 files are missing and could not be downloaded; "
                                               "the network could not be reached (offline?). "), msg
    urls = [url for name in names for url in hub_urls(name)]
    assert asked == urls and len(urls) == 7  # every mirror of every file was tried
    for name in names:
        entry = weights.catalog()[name]
        assert f"{name}: {entry['file']} ({weights._size(entry)}), tried " in msg
    for url in urls:
        assert url.startswith("https://") and f"{url} ({words})" in msg
    assert "https://huggingface.co/thibaud/controlnet-sd21/resolve/main/openpose-sd21-safe.safetensors" in msg \
        or huggingface_hub.constants.ENDPOINT != "https://huggingface.co"
    assert "controlnet-sd21-openpose: openpose-sd21-safe.safetensors (728.49 MB)" in msg
    assert f"into {weights_dir} (or set $SD_INTERP_WEIGHTS" in msg and "not found" not in msg

    # one file alone: the same facts, and the path to put it at
    with pytest.raises(UserError) as e:
        weights.fetch("sd21-768-v")
    msg = str(e.value)
    assert msg.startswith("could not download v2-1_768-ema-pruned.safetensors (5.21 GB); the network could not "
                          "be reached (offline?): tried "), msg
    assert all(f"{url} ({words})" in msg for url in hub_urls("sd21-768-v"))
    assert msg.endswith(f"put it at {weights_dir / 'v2-1_768-ema-pruned.safetensors'}")
    with pytest.raises(UserError, match="is missing") as e:
        weights.fetch("sd21-768-v", download=False)
    assert all(url in str(e.value) for url in hub_urls("sd21-768-v"))


def test_an_unreachable_host_is_not_asked_for_each_file(weights_dir, monkeypatch):
    """The first TCP connection to a host tells that it cannot be reached (without huggingface-hub's 20 s of
    retries); no mirror on it is asked then."""
    import huggingface_hub
    monkeypatch.setattr(weights, "_reachable", lambda url: False)
    monkeypatch.setattr(weights, "_probe", lambda host, port: "no connection: host name not resolved")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: pytest.fail("asked"))
    with pytest.raises(UserError) as e:
        weights.resolve_all([("sd21-768-v", "sd"), ("lpips-alex-v0.1", "lpips-heads")])
    msg = str(e.value)
    assert "the network could not be reached (offline?)" in msg
    for url in hub_urls("sd21-768-v") + hub_urls("lpips-alex-v0.1"):
        assert f"{url} (no connection: host name not resolved)" in msg


def test_a_real_connection_error_of_huggingface_hub_reads_as_offline(weights_dir, monkeypatch):
    """What the installed huggingface-hub raises for a port nothing listens on (no network needed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/x.pth"
    monkeypatch.setattr(weights, "catalog", lambda: {"x": {"kind": "x", "file": "x.pth", "mirrors": [{"url": url}]}})
    with pytest.raises(UserError) as e:
        weights.fetch("x")
    assert str(e.value).startswith(f"could not download x.pth (size unknown); the network could not be reached "
                                   f"(offline?): tried {url} (no connection"), str(e.value)


def test_offline_mode_lists_the_urls_and_asks_nothing(weights_dir, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: pytest.fail("asked"))
    with pytest.raises(UserError) as e:
        weights.fetch("openpose-coco-prototxt")
    msg = str(e.value)
    assert "offline: huggingface-hub's offline mode is on (HF_HUB_OFFLINE is set)" in msg
    assert " or ".join(hub_urls("openpose-coco-prototxt")) in msg and "tried" not in msg


def status_error(status):
    """The HTTP errors of requests (huggingface-hub < 1) and urllib."""
    requests = pytest.importorskip("requests")
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize("error, kind, words", [
    (lambda: status_error(404), weights.NOT_FOUND, "not found on that mirror, HTTP 404"),
    (lambda: urllib.error.HTTPError("https://x/y", 404, "Not Found", {}, None), weights.NOT_FOUND,
     "not found on that mirror, HTTP 404"),
    (lambda: status_error(403), weights.FAILED, "access refused (HTTP 403)"),
    (lambda: status_error(503), weights.FAILED, "HTTP 503, try again later"),
    (lambda: ValueError("something else"), weights.OTHER, "ValueError: something else"),
], ids=["requests-404", "urllib-404", "403", "503", "other"])
def test_http_errors_are_not_read_as_offline(error, kind, words):
    assert weights._why(error()) == (kind, words)


def test_a_connection_lost_mid_file_keeps_the_part_and_says_to_run_again(weights_dir, monkeypatch):
    import types

    import huggingface_hub
    import huggingface_hub.file_download
    meta = types.SimpleNamespace(etag="ab" * 32, location="https://cdn.example/x", size=3_000_000, commit_hash=None)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **k: meta)

    def lost(url, f, **kwargs):
        f.write(b"x" * 1_200_000)
        raise ConnectionResetError(104, "Connection reset by peer")
    monkeypatch.setattr(huggingface_hub.file_download, "http_get", lost)
    with pytest.raises(UserError) as e:
        weights.fetch("controlnet-sd21-openpose")
    url, = hub_urls("controlnet-sd21-openpose")
    assert (f"the network was reachable, but no mirror served a good copy: tried {url} (connection lost after "
            "1.2 MB, run again to resume)") in str(e.value), str(e.value)
    part, = weights_dir.glob("*.part")
    assert part.stat().st_size == 1_200_000


def test_verified_file_is_stamped(weights_dir, monkeypatch):
    entry = {"file": "x.safetensors", "sha256": hashlib.sha256(b"abc").hexdigest(), "mirrors": []}
    path = weights_dir / "x.safetensors"
    path.write_bytes(b"abc")
    weights._verify(path, entry)
    assert (weights_dir / "x.safetensors.sha256").read_text().strip() == entry["sha256"]


def test_a_file_placed_by_hand_is_checked_against_the_prefix_its_name_carries(weights_dir):
    entry = {"file": "w-ba7816bf.pth", "sha256": None, "sha256_prefix": hashlib.sha256(b"abc").hexdigest()[:8]}
    path = weights_dir / entry["file"]
    path.write_bytes(b"abd")
    with pytest.raises(UserError, match="but the published one starts with ba7816bf: delete the file"):
        weights._verify(path, entry)
    path.write_bytes(b"abc")
    weights._verify(path, entry)
    assert (weights_dir / "w-ba7816bf.pth.sha256").exists()


def test_resolve(tmp_path):
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"x")
    assert weights.resolve(existing, "sd") == existing
    with pytest.raises(UserError, match="not a catalog name"):
        weights.resolve(tmp_path / "missing.safetensors", "sd")
    with pytest.raises(UserError, match="is a controlnet, not a sd"):
        weights.resolve("controlnet-sd21-openpose", "sd")


def test_every_missing_file_is_named_at_once(weights_dir, monkeypatch, tmp_path):
    """The files a command needs are checked together: a bad path fails before any download, and all the
    catalog files that could not be had are listed in one line with their sizes, their URLs and the folder."""
    import huggingface_hub
    tried = []

    def offline(url, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    download = weights._download
    monkeypatch.setattr(weights, "_download", lambda entry, dest: (tried.append(entry["file"]), download(entry, dest)))
    with pytest.raises(UserError, match="nowhere.safetensors does not exist"):
        weights.resolve_all([("sd21-512-base", "sd"), (tmp_path / "nowhere.safetensors", "clip")])
    assert tried == []  # nothing downloaded before every request was known good
    have = tmp_path / "mine.safetensors"
    have.write_bytes(b"x")
    with pytest.raises(UserError) as e:
        weights.resolve_all([("sd21-512-base", "sd"), (have, "clip"), ("controlnet-sd21-openpose", "controlnet"),
                             ("sd21-512-base", "sd")])
    msg = str(e.value)
    assert tried == ["v2-1_512-ema-pruned.safetensors", "openpose-sd21-safe.safetensors"]  # each once
    assert "\n" not in msg and msg.startswith("2 files are missing") and str(weights_dir) in msg
    assert (f"openpose-sd21-safe.safetensors (728.49 MB), tried {hub_urls('controlnet-sd21-openpose')[0]} "
            "(no connection: refused)") in msg


def test_interpolate_names_all_its_missing_files_before_loading_anything(weights_dir, monkeypatch, tmp_path, capsys):
    import huggingface_hub
    import interp.apps.interpolate
    import interp.models
    from PIL import Image
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: refused())
    monkeypatch.setattr(interp.models, "load_model", lambda *a: pytest.fail("nothing loads before the files are there"))
    for name in ("a", "b"):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{name}.png")
    with pytest.raises(SystemExit) as e:
        interp.apps.interpolate.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompt", "x", "--candidates", "3",
                                      "--pose", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: 5 files are missing and could not be downloaded; the network could not be reached")
    for name in ("sd21-512-base", "controlnet-sd21-openpose", "openpose-coco-prototxt", "openpose-coco-caffemodel",
                 "clip-vit-l14-openai"):
        assert name in err


def test_fetch_only_gets_the_files_and_stops(tiny_ckpt, tmp_path, capsys):
    import interp.apps.interpolate
    from PIL import Image
    for name in ("a", "b"):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{name}.png")
    interp.apps.interpolate.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompt", "x", "--ckpt", str(tiny_ckpt),
                     "--no-pose", "--candidates", "1", "--fetch-only", "--out", str(tmp_path / "run")])
    assert capsys.readouterr().out.strip() == f"sd: {tiny_ckpt}"
    assert not (tmp_path / "run").exists()
