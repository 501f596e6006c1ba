"""The weights catalog: lookups, verification and the offline error."""
import hashlib

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


def test_offline_download_fails_with_one_clear_line(weights_dir, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    with pytest.raises(UserError) as e:
        weights.fetch("sd21-768-v")
    msg = str(e.value)
    assert "\n" not in msg and "webui/stable-diffusion-2-1" in msg and str(weights_dir) in msg
    with pytest.raises(UserError, match="is missing"):
        weights.fetch("sd21-768-v", download=False)


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
    catalog files that could not be had are listed in one line with their sizes and the folder."""
    tried = []

    def offline(entry, dest):
        tried.append(entry["file"])
        raise UserError(f"could not download {entry['file']}")
    monkeypatch.setattr(weights, "_download", offline)
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
    assert "openpose-sd21-safe.safetensors, 728.49 MB, from thibaud/controlnet-sd21" in msg


def test_interpolate_names_all_its_missing_files_before_loading_anything(weights_dir, monkeypatch, tmp_path, capsys):
    import interp.apps.interpolate
    import interp.models
    from PIL import Image
    monkeypatch.setattr(weights, "_download", lambda entry, dest: (_ for _ in ()).throw(UserError("offline")))
    monkeypatch.setattr(interp.models, "load_model", lambda *a: pytest.fail("nothing loads before the files are there"))
    for name in ("a", "b"):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{name}.png")
    with pytest.raises(SystemExit) as e:
        interp.apps.interpolate.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompt", "x", "--candidates", "3",
                         "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: 5 files are missing") and err.count("\n") == 1
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
