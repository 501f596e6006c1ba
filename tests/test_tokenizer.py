"""The hand-written OpenCLIP tokenizer against ids produced by open_clip itself."""
import torch

import ldm
from ldm.tokenizer import EOT, SOT, clean, split_words


def ids(text):
    row = ldm.tokenize([text])[0]
    return row[: int(row.argmax()) + 1].tolist()


def test_open_clip_ids_of_ranking_prompts():
    # From shared/reference/README.md section 5.2 (open_clip.tokenize output).
    assert ids("high quality, detailed, 2D") == [49406, 1400, 3027, 267, 12609, 267, 273, 323, 49407]
    assert ids("blurry, distorted, 3D render") == [49406, 21977, 267, 23781, 775, 267, 274, 323, 13024, 49407]
    assert ids("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_shape_padding_and_truncation():
    tokens = ldm.tokenize(["a", "word " * 100])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :3].tolist() == [SOT, 320, EOT] and tokens[0, 3:].eq(0).all()
    assert tokens[1, 0] == SOT and tokens[1, -1] == EOT and tokens[1].ne(0).all()
    assert ldm.tokenize("a photo").shape == (1, 77)


def test_cleaning_and_splitting():
    assert clean("  A&amp;B\n\tC  ") == "a&b c"
    assert clean("it\u2019s") == "it's"
    assert split_words("it's 2023, isn't it?!") == ["it", "'s", "2", "0", "2", "3", ",", "isn", "'t", "it", "?!"]
    assert split_words("naïve café") == ["naïve", "café"]
    assert split_words("<start_of_text>hi") == ["<start_of_text>", "hi"]
    # A punctuation run swallows an apostrophe, as the reference regex does.
    assert split_words("!'s") == ["!'", "s"]


def test_case_and_whitespace_do_not_matter():
    assert torch.equal(ldm.tokenize(["A  Photo\nOF a CAT"]), ldm.tokenize(["a photo of a cat"]))
