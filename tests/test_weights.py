"""The weights catalog: lookups, verification and the offline error."""
import hashlib

import pytest

from ldm import weights
from ldm.errors import UserError


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SD_INTERP_WEIGHTS", str(tmp_path))
    return tmp_path


def test_catalog_entries_are_complete():
    entries = weights.catalog()
    assert {"sd21-768-v", "sd21-512-base", "controlnet-sd21-openpose"} <= entries.keys()
    for name, entry in entries.items():
        assert entry["kind"] and entry["file"] and entry["mirrors"], name
        assert all(m["repo"].count("/") == 1 and m["path"] for m in entry["mirrors"]), name
        assert entry.get("sha256") is None or len(entry["sha256"]) == 64, name
    assert entries["sd21-768-v"]["prediction"] == "v" and entries["sd21-512-base"]["prediction"] == "eps"
    assert entries["sd21-768-v"]["mirrors"][0]["repo"] == "webui/stable-diffusion-2-1"


def test_offline_download_fails_with_one_clear_line(weights_dir, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(UserError) as e:
        weights.fetch("sd21-768-v")
    msg = str(e.value)
    assert "\n" not in msg and "webui/stable-diffusion-2-1" in msg and str(weights_dir) in msg
    with pytest.raises(UserError, match="is missing"):
        weights.fetch("sd21-768-v", download=False)


def test_download_is_verified_against_the_pinned_hash(weights_dir, monkeypatch):
    import huggingface_hub
    entry = weights.catalog()["controlnet-sd21-openpose"]

    def fake_download(repo, path, local_dir):
        out = weights_dir / "fake.bin"
        out.write_bytes(b"not the real weights")
        return str(out)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(UserError) as e:
        weights.fetch("controlnet-sd21-openpose")
    actual = hashlib.sha256(b"not the real weights").hexdigest()
    assert actual in str(e.value) and entry["sha256"] in str(e.value)


def test_verified_file_is_stamped(weights_dir, monkeypatch):
    entry = {"file": "x.safetensors", "sha256": hashlib.sha256(b"abc").hexdigest(), "mirrors": []}
    path = weights_dir / "x.safetensors"
    path.write_bytes(b"abc")
    weights._verify(path, entry)
    assert (weights_dir / "x.safetensors.sha256").read_text().strip() == entry["sha256"]


def test_resolve(tmp_path):
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"x")
    assert weights.resolve(existing, "sd") == existing
    with pytest.raises(UserError, match="not a catalog name"):
        weights.resolve(tmp_path / "missing.safetensors", "sd")
    with pytest.raises(UserError, match="is a controlnet, not a sd"):
        weights.resolve("controlnet-sd21-openpose", "sd")
