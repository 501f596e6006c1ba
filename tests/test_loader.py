"""Checkpoint loading: round trip, dtypes, prediction type, and one clear line for every bad file."""
import shutil

import pytest
import torch

import ldm
from ldm.errors import UserError
from ldm.load import safetensors_io
from ldm.load.controlnet import load_controlnet
from ldm.load.safetensors_io import SafetensorsFile


def write(path, tensors: dict):
    safetensors_io.write(path, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, tensors.__getitem__)


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_round_trip_through_public_api(tiny_ckpt, tiny_config, cases):
    """The tool writes the real key layout; the loader reads it back (config given explicitly, or beside the file)."""
    st = SafetensorsFile(tiny_ckpt)
    assert any(k.startswith("model.diffusion_model.") for k in st.keys())
    assert "alphas_cumprod" in st.keys()
    sd = ldm.load_checkpoint(tiny_ckpt, config=tiny_config)
    assert sd.config.prediction == "v" and sd.config.image_size == 256 and sd.config.latent_scale == 0.18215
    assert sd.config.schedule.timesteps == 1000
    assert sd.dtype == torch.float32 and not any(p.requires_grad for p in sd.unet.parameters())
    assert any("from the config" in n for n in sd.notes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_load(tiny_ckpt, cases, dtype):
    sd = ldm.load_checkpoint(tiny_ckpt, dtype=dtype)
    assert {p.dtype for p in sd.unet.parameters()} == {dtype}
    with torch.no_grad():
        out = sd.unet(cases["unet_x"].to(dtype), cases["unet_t"], cases["unet_context"].to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), cases["unet_out"], atol=0.15, rtol=0.05)
    with torch.no_grad():
        text = sd.text_encoder(cases["text_tokens"])
        image = sd.vae.decode(cases["vae_dec_z"].to(dtype))
    assert text.dtype == image.dtype == dtype
    torch.testing.assert_close(text.float(), cases["text_out"], atol=0.1, rtol=0.05)
    torch.testing.assert_close(image.float(), cases["vae_dec_out"], atol=0.1, rtol=0.05)


def test_half_file_loads_as_float32(tmp_path, tiny_ckpt, cases):
    st = SafetensorsFile(tiny_ckpt)
    half = tmp_path / "half.safetensors"
    safetensors_io.write(half, {k: (st.shape(k), torch.float16) for k in st.keys()}, st.read)
    shutil.copy(str(tiny_ckpt) + ".json", str(half) + ".json")
    sd = ldm.load_checkpoint(half, dtype="float32")
    assert sd.dtype == torch.float32
    with torch.no_grad():
        out = sd.unet(cases["unet_x"], cases["unet_t"], cases["unet_context"])
    torch.testing.assert_close(out, cases["unet_out"], atol=0.05, rtol=0.02)


def test_prediction_type_sources(tmp_path, tiny_ckpt):
    assert "given explicitly" in ldm.load_checkpoint(tiny_ckpt, prediction="eps").notes[0]
    assert ldm.load_checkpoint(tiny_ckpt, prediction="eps").config.prediction == "eps"
    # The catalog knows the real file names: the 512 base is eps, whatever the config says.
    named = tmp_path / "v2-1_512-ema-pruned.safetensors"
    named.symlink_to(tiny_ckpt)
    shutil.copy(str(tiny_ckpt) + ".json", str(named) + ".json")
    sd = ldm.load_checkpoint(named)
    assert sd.config.prediction == "eps" and sd.config.image_size == 512 and "catalog" in sd.notes[0]
    with pytest.raises(UserError, match="'v' or 'eps'"):
        ldm.load_checkpoint(tiny_ckpt, prediction="x0")


def test_prediction_type_heuristic(tmp_path, tiny_ckpt, tiny_config):
    """With no catalog entry, argument or config value, the spread of a probe tensor decides (and says so)."""
    import json
    cfg = json.loads(tiny_config.read_text())
    del cfg["parameterization"]
    st = SafetensorsFile(tiny_ckpt)
    probe = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    for spread, expected in ((0.2, "v"), (0.02, "eps")):
        path = tmp_path / f"spread{spread}.safetensors"
        make = lambda k: torch.randn(st.shape(k)) * spread if k == probe else st.read(k)  # noqa: E731
        safetensors_io.write(path, {k: (st.shape(k), st.dtype(k)) for k in st.keys()}, make)
        sd = ldm.load_checkpoint(path, config=cfg)
        assert sd.config.prediction == expected and "guessed from the weights" in sd.notes[0]


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(tmp_path / "nope.safetensors")
    assert "does not exist" in one_line(e)


def test_not_safetensors(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"PK\x03\x04 this is a zip/pickle file, not safetensors" * 10)
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(path)
    assert "not a .safetensors file" in one_line(e)


def test_truncated_file(tmp_path, tiny_ckpt):
    path = tmp_path / "truncated.safetensors"
    data = tiny_ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(path, config=str(tiny_ckpt) + ".json")
    assert "truncated" in one_line(e) and "download it again" in str(e.value)


def test_missing_keys_are_listed(tmp_path, tiny_ckpt):
    st = SafetensorsFile(tiny_ckpt)
    dropped = [k for k in st.keys() if k.startswith("model.diffusion_model.output_blocks.")]
    path = tmp_path / "missing.safetensors"
    keep = [k for k in st.keys() if k not in dropped]
    safetensors_io.write(path, {k: (st.shape(k), st.dtype(k)) for k in keep}, st.read)
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(path, config=str(tiny_ckpt) + ".json")
    msg = one_line(e)
    assert f"missing {len(dropped)} keys" in msg and "output_blocks.0.0" in msg and "UNet" in msg


def test_unexpected_keys_are_listed(tmp_path, tiny_ckpt):
    st = SafetensorsFile(tiny_ckpt)
    path = tmp_path / "extra.safetensors"
    extra = "first_stage_model.encoder.extra_layer.weight"
    make = lambda k: torch.zeros(3) if k == extra else st.read(k)  # noqa: E731
    safetensors_io.write(path, {**{k: (st.shape(k), st.dtype(k)) for k in st.keys()}, extra: ((3,), torch.float32)}, make)
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(path, config=str(tiny_ckpt) + ".json")
    msg = one_line(e)
    assert "1 unexpected keys" in msg and "encoder.extra_layer.weight" in msg and "VAE" in msg


def test_extra_top_level_keys_are_tolerated(tmp_path, tiny_ckpt):
    st = SafetensorsFile(tiny_ckpt)
    path = tmp_path / "ema.safetensors"
    extras = {"model_ema.decay": ((), torch.float32), "logvar": ((1000,), torch.float32)}
    make = lambda k: torch.zeros(extras[k][0]) if k in extras else st.read(k)  # noqa: E731
    safetensors_io.write(path, {**{k: (st.shape(k), st.dtype(k)) for k in st.keys()}, **extras}, make)
    ldm.load_checkpoint(path, config=str(tiny_ckpt) + ".json")


def test_wrong_architecture_shapes(tiny_ckpt):
    """The tiny file without its config is read as SD 2.1 and refused with a hint to pass --config."""
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(tiny_ckpt, config=ldm.ModelConfig())
    msg = one_line(e)
    assert "unexpected shapes" in msg and "--config" in msg


def test_sd1_checkpoint_is_refused(tmp_path):
    path = tmp_path / "v1-5.safetensors"
    write(path, {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
                 "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 768)})
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(path)
    assert "Stable Diffusion 1.x" in one_line(e) and "SD 2.x" in str(e.value)
    # The context width alone gives it away too.
    write(path, {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768)})
    with pytest.raises(UserError, match="1.x"):
        ldm.load_checkpoint(path)


def test_controlnet_file_given_as_model(tiny_dir):
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(tiny_dir / "controlnet.safetensors")
    assert "ControlNet-only file" in one_line(e)


def test_model_given_as_controlnet(tiny_ckpt):
    with pytest.raises(UserError) as e:
        load_controlnet(tiny_ckpt)
    assert "not a ControlNet" in one_line(e)


def test_combined_sd_and_controlnet_file_loads_as_either(tmp_path, tiny_dir, tiny_ckpt, cases):
    sd_st, cn_st = SafetensorsFile(tiny_ckpt), SafetensorsFile(tiny_dir / "controlnet.safetensors")
    path = tmp_path / "combined.safetensors"
    specs = {**{k: (s.shape(k), s.dtype(k)) for s in (sd_st, cn_st) for k in s.keys()}}
    safetensors_io.write(path, specs, lambda k: sd_st.read(k) if k in sd_st.keys() else cn_st.read(k))
    shutil.copy(str(tiny_ckpt) + ".json", str(path) + ".json")
    ldm.load_checkpoint(path)
    cn = load_controlnet(path)
    with torch.no_grad():
        res = cn(cases["unet_x"], cases["cn_hint"], cases["unet_t"], cases["unet_context"])
    torch.testing.assert_close(res[-1], cases["cn_res_12"], atol=1e-4, rtol=1e-4)


def test_diffusers_layout_is_refused(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    write(path, {"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2, 3, 3)})
    with pytest.raises(UserError) as e:
        ldm.load_checkpoint(path)
    assert "diffusers" in one_line(e)


def test_bad_dtype(tiny_ckpt):
    with pytest.raises(UserError, match="dtype must be one of"):
        ldm.load_checkpoint(tiny_ckpt, dtype="int8")
