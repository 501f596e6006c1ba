"""CLIP (open_clip layout): full-size key manifests, tiny golden outputs of open_clip 2.7.0, preprocessing, loader.

Tolerances are the reference README's (section 5.5): atol = rtol = 1e-4 on raw features, atol 1e-5 on
normalised features, similarities and logits, exact for tokens and for the PIL preprocessing.
"""
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import ldm
import make_fixture_weights
from conftest import DATA
from ldm.clip_transform import center_crop, clip_preprocess, resize_shorter_side
from ldm.errors import UserError
from ldm.load.clip import infer_config, load_clip
from ldm.load.safetensors_io import SafetensorsFile, write
from ldm.nets.clip import CLIP, cosine_similarity, parse_clip_config

CLIP_DATA = DATA / "clip"
CONFIGS = {"": CLIP_DATA / "clip_config.json", "_quickgelu": CLIP_DATA / "clip_config_quickgelu.json"}
PROMPTS = ["high quality, detailed, 2D", "blurry, distorted, 3D render", "a photo of a cat"]


@pytest.fixture(scope="module")
def clip_cases():
    return load_file(CLIP_DATA / "clip_cases.safetensors")


def rewrite(src, dst, rename=lambda k: k, drop=(), add=None, reshape=None):
    """Copy a safetensors file with keys renamed/dropped/added and shapes changed (loader edge cases)."""
    st = SafetensorsFile(src)
    tensors = {rename(k): st.read(k) for k in st.keys() if k not in drop}
    tensors.update(add or {})
    for key, shape in (reshape or {}).items():
        tensors[key] = tensors[key].reshape(shape)
    write(dst, {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}, tensors.__getitem__)
    return dst


# --- architecture --------------------------------------------------------------------------------------

@pytest.mark.parametrize("manifest", ["openclip_vit_l14_keys.json", "openclip_vit_h14_keys.json"])
def test_full_size_keys_and_shapes_match_open_clip(manifest):
    ref = json.loads((CLIP_DATA / manifest).read_text())
    expected = {**ref["visual"], **ref["text"], **ref["logit_scale"]}
    with torch.device("meta"):
        model = CLIP(parse_clip_config(ref["meta"]["open_clip_config"]))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours.keys() - expected.keys()) == []
    assert sorted(expected.keys() - ours.keys()) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert sum(torch.Size(s).numel() for s in ours.values()) == ref["meta"]["counts"]["total_values"]
    assert model.config.quick_gelu == ref["meta"]["open_clip_config"].get("quick_gelu", False)


def test_default_config_is_vit_l14_openai():
    ref = json.loads((CLIP_DATA / "openclip_vit_l14_keys.json").read_text())
    assert parse_clip_config(None) == parse_clip_config(ref["meta"]["open_clip_config"])


# --- tiny golden outputs -------------------------------------------------------------------------------

def test_regenerated_weights_are_the_reference_bit_for_bit(clip_tiny):
    ref = json.loads((CLIP_DATA / "clip_tiny_digest.json").read_text())
    st = SafetensorsFile(clip_tiny)
    digest = hashlib.sha256()
    for key in sorted(st.keys()):
        digest.update(key.encode("utf-8"))
        digest.update(st.read(key).reshape(-1).view(torch.uint8).numpy().tobytes())
    assert (len(st.keys()), sum(st.numel(k) for k in st.keys())) == (ref["tensors"], ref["values"])
    assert digest.hexdigest() == ref["sha256"]


@pytest.mark.parametrize("suffix", ["", "_quickgelu"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@torch.no_grad()
def test_features_similarity_logits(clip_tiny, clip_cases, suffix, fast):
    model = load_clip(clip_tiny, config=CONFIGS[suffix], fast=fast)
    img = model.encode_image(clip_cases["images"])
    txt = model.encode_text(clip_cases["text_tokens"])
    logits = model(clip_cases["images"], clip_cases["text_tokens"])
    c = {k[:-len(suffix)] if suffix else k: v for k, v in clip_cases.items() if k.endswith(suffix)}
    torch.testing.assert_close(img, c["image_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(txt, c["text_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(F.normalize(img, dim=-1), c["image_features_normalized"], atol=1e-5, rtol=0)
    torch.testing.assert_close(F.normalize(txt, dim=-1), c["text_features_normalized"], atol=1e-5, rtol=0)
    torch.testing.assert_close(cosine_similarity(img, txt), c["similarity"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, c["logits_per_image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.logit_scale.exp(), clip_cases["logit_scale_exp"], atol=1e-7, rtol=0)


@torch.no_grad()
def test_intermediates(clip_tiny, clip_cases):
    model = load_clip(clip_tiny, config=CONFIGS[""])
    emb = model.visual.embed(clip_cases["images"])
    torch.testing.assert_close(emb, clip_cases["debug_image_embeddings"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.visual.ln_pre(emb), clip_cases["debug_image_ln_pre"], atol=1e-5, rtol=0)
    pooled = model.visual.pool(clip_cases["images"])
    torch.testing.assert_close(pooled, clip_cases["debug_image_pooled"], atol=1e-4, rtol=1e-4)
    last = model.encode(clip_cases["text_tokens"], layer="last")
    torch.testing.assert_close(last, clip_cases["debug_text_ln_final"], atol=1e-4, rtol=1e-4)
    eot = clip_cases["text_tokens"].argmax(-1)
    assert torch.equal(eot, clip_cases["text_eot_index"])
    torch.testing.assert_close(last[torch.arange(3), eot], clip_cases["debug_text_pooled"], atol=1e-4, rtol=1e-4)


def test_tokens(clip_cases):
    meta = SafetensorsFile(CLIP_DATA / "clip_cases.safetensors").metadata
    assert json.loads(meta["prompts"]) == PROMPTS
    assert torch.equal(ldm.tokenize(PROMPTS), clip_cases["text_tokens"])


def test_wrong_image_size_is_a_clear_error(clip_tiny):
    model = load_clip(clip_tiny, config=CONFIGS[""])
    with pytest.raises(UserError, match=r"expects images \[B,3,32,32\].*clip_preprocess"):
        model.encode_image(torch.zeros(1, 3, 224, 224))


# --- preprocessing -------------------------------------------------------------------------------------

def hwc(chw):
    return chw.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("case", "abc")
def test_preprocess_matches_open_clip_exactly(clip_cases, case):
    src = hwc(clip_cases[f"pre_{case}_image_uint8"])
    resized = resize_shorter_side(Image.fromarray(src), 32)
    assert np.array_equal(np.array(resized), hwc(clip_cases[f"pre_{case}_resized_uint8"]))
    assert np.array_equal(np.array(center_crop(resized, 32)), hwc(clip_cases[f"pre_{case}_cropped_uint8"]))
    expected = clip_cases[f"pre_{case}_output"]
    for images in (src, Image.fromarray(src), [src], [Image.fromarray(src)]):
        out = clip_preprocess(images, 32)
        assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out[0], expected)


def test_preprocess_tensors_and_batches(clip_cases):
    u8 = [clip_cases[f"pre_{c}_image_uint8"] for c in "ab"]
    expected = torch.stack([clip_cases[f"pre_{c}_output"] for c in "ab"])
    assert torch.equal(clip_preprocess([hwc(t) for t in u8], 32), expected)
    b = u8[1][None].float()  # [1,3,64,64]
    assert torch.equal(clip_preprocess(b / 255, 32, value_range=(0, 1))[0], expected[1])
    assert torch.equal(clip_preprocess(b / 127.5 - 1, 32)[0], expected[1])  # default: [-1, 1] (VAE output)
    assert torch.equal(clip_preprocess(u8[1], 32)[0], expected[1])  # uint8 CHW tensor
    assert torch.equal(clip_preprocess(np.stack([hwc(u8[1])] * 2), 32)[1], expected[1])


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), torch.zeros(1, 1, 8, 8), [1]])
def test_preprocess_bad_input(bad):
    with pytest.raises(UserError, match="clip_preprocess"):
        clip_preprocess(bad, 32)


# --- loader --------------------------------------------------------------------------------------------

@torch.no_grad()
def test_openai_and_dataparallel_variants_load(clip_tiny, clip_cases, tmp_path):
    """`module.` prefix, logit_scale stored as [1] and OpenAI's integer extras, as open_clip accepts them."""
    extras = {k: torch.tensor(v) for k, v in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408))}
    path = rewrite(clip_tiny, tmp_path / "variant.safetensors", rename=lambda k: "module." + k, add=extras,
                   reshape={"module.logit_scale": [1]})
    model = load_clip(path, config=CONFIGS[""])
    assert model.logit_scale.shape == ()
    features = model.encode_image(clip_cases["images"])
    torch.testing.assert_close(features, clip_cases["image_features"], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_fp16_file_is_cast(clip_tiny, clip_cases, tmp_path):
    path = tmp_path / "fp16.safetensors"
    make_fixture_weights.main(["clip", "--config", str(CONFIGS[""]), "--seed", "4242", "--dtype", "fp16",
                               "--out", str(path)])
    model = load_clip(path, config=CONFIGS[""])
    assert model.visual.proj.dtype == torch.float32
    features = model.encode_text(clip_cases["text_tokens"])
    torch.testing.assert_close(features, clip_cases["text_features"], atol=0.05, rtol=0.05)
    assert load_clip(path, config=CONFIGS[""], dtype="bf16").visual.proj.dtype == torch.bfloat16


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key,what", [
    ("model.diffusion_model.input_blocks.0.0.weight", "is a Stable Diffusion checkpoint, not a CLIP model"),
    ("control_model.input_hint_block.0.weight", "is a ControlNet file, not a CLIP model"),
    ("text_model.embeddings.token_embedding.weight", "Hugging Face transformers/diffusers layout"),
    ("something.else", "holds no CLIP image tower"),
])
def test_wrong_kind_of_file(tmp_path, key, what):
    path = tmp_path / "other.safetensors"
    write(path, {key: ((2, 2), torch.float32)}, lambda k: torch.zeros(2, 2))
    with pytest.raises(UserError) as e:
        load_clip(path)
    assert what in one_line(e) and "open_clip" in str(e.value)


def test_not_safetensors(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UserError) as e:
        load_clip(path)
    assert "is not a .safetensors file" in one_line(e)


def test_missing_unexpected_and_misshapen_keys(clip_tiny, tmp_path):
    path = rewrite(clip_tiny, tmp_path / "broken.safetensors", drop={"visual.ln_post.weight"},
                   add={"visual.extra": torch.zeros(1)})
    with pytest.raises(UserError) as e:
        load_clip(path, config=CONFIGS[""])
    assert "missing 1 keys (visual.ln_post.weight)" in one_line(e) and "1 unexpected keys (visual.extra)" in str(e.value)
    config = {**json.loads(CONFIGS[""].read_text()), "embed_dim": 16}
    with pytest.raises(UserError) as e:
        load_clip(clip_tiny, config=config)
    assert "2 CLIP model tensors have unexpected shapes" in one_line(e) and "expected [64, 16]" in str(e.value)


def test_config_errors(tmp_path):
    with pytest.raises(UserError, match="unknown setting 'timm_model_name'"):
        parse_clip_config({"embed_dim": 8, "vision_cfg": {"timm_model_name": "vit"}})
    with pytest.raises(UserError, match="unsupported settings"):
        parse_clip_config({"embed_dim": 8, "custom_text": True})
    with pytest.raises(UserError, match="not a multiple of head_width"):
        parse_clip_config({"embed_dim": 8, "vision_cfg": {"width": 100}})
    with pytest.raises(UserError, match="cannot read CLIP config"):
        parse_clip_config(tmp_path / "missing.json")


def test_inference_refuses_unknown_head_widths(clip_tiny):
    """The tiny towers (4 heads of 16) are not a released size: the heads cannot be inferred."""
    with pytest.raises(UserError) as e:
        load_clip(clip_tiny, quick_gelu=False)
    assert "cannot tell the attention heads of a 64-wide CLIP visual tower" in one_line(e) and "config=" in str(e.value)


SMALL_STANDARD = {"embed_dim": 64, "quick_gelu": True,
                  "vision_cfg": {"image_size": 28, "patch_size": 14, "width": 768, "layers": 1},
                  "text_cfg": {"context_length": 77, "vocab_size": 500, "width": 512, "heads": 8, "layers": 1}}


@pytest.fixture(scope="module")
def standard_widths(tmp_path_factory):
    """A one-block CLIP with released tower widths (ViT-B vision, 512 text), so its heads can be inferred."""
    d = tmp_path_factory.mktemp("clip_std")
    make_fixture_weights.write_fixture(d / "small.safetensors", make_fixture_weights.clip_specs(SMALL_STANDARD), 7,
                                       schedule=False)
    (d / "clip-vit-l14-openai.safetensors").symlink_to(d / "small.safetensors")  # a catalog file name
    return d


@torch.no_grad()
def test_inference_from_shapes_and_activation_sources(standard_widths):
    small = standard_widths / "small.safetensors"
    assert infer_config(SafetensorsFile(small), True) == parse_clip_config(SMALL_STANDARD)
    stated = load_clip(small, config=SMALL_STANDARD)
    images, tokens = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0)), ldm.tokenize(PROMPTS)
    tokens = tokens.clamp(max=499)  # the small vocabulary; EOT stays the largest id
    expected = stated(images, tokens)

    guessed = load_clip(small)
    assert guessed.config.quick_gelu is False and "assumed GELU" in guessed.notes[1]
    assert not torch.allclose(guessed(images, tokens), expected)
    explicit = load_clip(small, quick_gelu=True)
    assert explicit.notes == ["architecture read from the tensor shapes", "activation QuickGELU: given explicitly"]
    torch.testing.assert_close(explicit(images, tokens), expected, atol=0, rtol=0)
    catalog = load_clip(standard_widths / "clip-vit-l14-openai.safetensors")
    assert catalog.config.quick_gelu is True and "from the weights catalog (clip-vit-l14-openai)" in catalog.notes[1]
