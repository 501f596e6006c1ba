"""The hand-written OpenCLIP tokenizer against ids produced by open_clip itself.

tests/data/tokenizer_cases.json (tools/make_tokenizer_fixtures.py) holds open_clip 2.7.0's ids and ftfy's
`fix_text` for hand-written prompts and seeded random strings; only text that needs ftfy's mojibake repair,
which ldm/nets/tokenizer.py leaves out, may tokenize differently.
"""
import json

import pytest
import torch

import ldm
from conftest import DATA
from ldm.nets.tokenizer import CONTEXT_LENGTH, EOT, SOT, clean, fix_text, split_words

FIXTURE = json.loads((DATA / "tokenizer_cases.json").read_text())
CASES = FIXTURE["prompts"] + FIXTURE["random"]


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


def test_fixture_is_open_clip_2_7_with_ftfy_6_1():
    assert FIXTURE["versions"]["open_clip_torch"] == "2.7.0" and FIXTURE["versions"]["ftfy"] == "6.1.1"
    assert len(FIXTURE["prompts"]) >= 30 and len(FIXTURE["random"]) >= 3000


@pytest.mark.parametrize("part", ["prompts", "random"])
def test_ids_equal_open_clip_unless_mojibake(part):
    cases = [c for c in FIXTURE[part] if not c["mojibake"]]
    expected = torch.tensor([c["ids"] + [0] * (CONTEXT_LENGTH - len(c["ids"])) for c in cases])
    ours = ldm.tokenize([c["text"] for c in cases])
    wrong = [(c["text"], ours[i].tolist()) for i, c in enumerate(cases) if not torch.equal(ours[i], expected[i])]
    assert wrong == []


def test_fix_text_is_ftfy_without_mojibake_repair():
    wrong = [(c["text"], fix_text(c["text"])) for c in CASES if fix_text(c["text"]) != c.get("unrepaired", c["fixed"])]
    assert wrong == []


def test_only_mojibake_repair_is_left_out():
    # The flag is exact (ftfy with and without fix_encoding differ), few cases have it, and each is
    # mis-decoded text of the kind 'Ã©' / 'â€™' or a random string that happens to look like one.
    mojibake = [c for c in CASES if c["mojibake"]]
    assert all(c["unrepaired"] != c["fixed"] for c in mojibake)
    assert all("unrepaired" not in c for c in CASES if not c["mojibake"])
    assert [c["text"][:4] for c in FIXTURE["prompts"] if c["mojibake"]] == ["cafÃ", "moji"]
    assert len(mojibake) <= 0.01 * len(CASES)


def test_ftfy_fixes():
    assert fix_text("ＡＢＣ１２３\u3000ｱｲｳ") == "ABC123 アイウ"
    assert fix_text("ﬁne ﬂour ĳs ŉ") == "fine flour ijs 'n"
    assert fix_text("a\x00b\x07c\x7f\u206ad\ufeffe\ufffc\tf") == "abcde\tf"
    assert fix_text("\x1b[1;31mred\x1b[0m") == "red"
    assert fix_text("\x91quoted\x92 \x80 \x81") == "'quoted' € \x81"  # C1 controls as Windows-1252
    assert fix_text("\u201cit\u2019s\u201d it\u02bcs") == '"it\'s" it\'s'
    assert fix_text("a\r\nb\rc\u2028d") == "a\nb\nc\nd"
    assert fix_text("\ud83d\udc31 \ud83d") == "\U0001f431 \ufffd"
    assert fix_text("cafe\u0301") == "café"
    assert fix_text("&amp;amp; &EACUTE; &#x41; &notanentity;") == "& É A &notanentity;"
    assert fix_text("&#65x;") == "&#65x;"  # a numeric reference is decoded whole or not at all
    assert fix_text("cafÃ©") == "cafÃ©"  # mojibake stays (ftfy: "café")


def test_html_is_left_alone_from_the_first_line_with_a_tag():
    assert fix_text("a &amp; b\n<b> &amp;\nc &amp;") == "a & b\n<b> &amp;\nc &amp;"
    assert clean("a &amp;amp; b\n<b> &amp;amp;") == "a & b <b> &"  # open_clip unescapes twice more


def test_special_tokens_and_long_s():
    # Written in the text, the special tokens are SOT and EOT.
    assert ldm.tokenize("a<start_of_text>b<end_of_text>")[0, :6].tolist() == [SOT, 320, SOT, 321, EOT, EOT]
    # open_clip's regex ignores case, so the long s is an 's' to the contractions (not to the BPE).
    assert split_words("it'\u017f") == ["it", "'\u017f"]
    assert split_words("<\u017ftart_of_text>") == ["<\u017ftart_of_text>"]
