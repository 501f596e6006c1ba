"""Write tests/data/tokenizer_cases.json: open_clip 2.7.0's token ids and ftfy's `fix_text` for test texts.

Runs in a throwaway environment that has the reference tokenizer (never the project's own):

    python -m venv /tmp/ocenv
    /tmp/ocenv/bin/pip install ftfy==6.1.1 regex==2023.6.3 torch==2.13.0
    /tmp/ocenv/bin/pip install open_clip_torch==2.7.0 --no-deps
    /tmp/ocenv/bin/python tools/make_tokenizer_fixtures.py

Each case holds the input `text`, ftfy's `fixed` text and open_clip's `ids` (its row without the padding).
`mojibake` says whether ftfy's mojibake repair (`fix_encoding`, which ldm/nets/tokenizer.py leaves out) changes
the fixed text; where it does, `unrepaired` is ftfy's result without that repair. The cases are
about 30 hand-written prompts and a few thousand seeded random strings.
"""
import argparse
import importlib.util
import json
import random
import sys
import unicodedata
from importlib.metadata import version
from pathlib import Path

import ftfy

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tokenizer_cases.json"

PROMPTS = [
    "a photo of a cat",
    "high quality, detailed, 2D",
    "A photograph of an astronaut riding a horse, 4k, trending on ArtStation!!",
    "it's a dog's life; they're here, we've won, I'm sure you'll see, he'd go",
    "ＡＢＣ１２３ ＬＯＵＤ　ＮＯＩＳＥＳ ｱｲｳ ﾀｰﾝ",
    "ﬁne ﬂour, ﬀ ﬃ ﬄ ﬅ ﬆ, ĳs Ĳ ŉ Ǳ ǅ ǉ Ǌ",
    "tab\tbell\x07null\x00del\x7f vt\x0b ff\x0c esc\x1b unit\x1f",
    "\x1b[31mred\x1b[0m and \x1b[1;4mbold\x1b[m text",
    "deprecated\u206aarabic\u206bcontrols\u206c\u206d\u206e\u206f here",
    "\ufeffbom \ufff9annotated\ufffa\ufffb object\ufffc",
    "\u201ccurly\u201d \u2018quotes\u2019 \u201alow\u201b \u201elow\u201f it\u02bcs",
    "Tom &amp; Jerry &lt;3 &quot;cartoon&quot; &#39;classic&#39; &eacute; &EACUTE; &#x263A; &nbsp;",
    "&amp;amp; twice &amp;lt; escaped, &notanentity; &amp &#65x; &#x110000; &#128512;",
    "a <b>bold</b> &amp; brave\nnext line &amp; more",
    "first line &amp; ok\nsecond <tag> &amp;\nthird &amp; stays",
    "non\u00a0breaking\u2002en\u2003em\u2009thin\u200bzero\u3000ideographic\u202fnarrow\u205fmath",
    "line\r\nbreaks\rmac\u2028sep\u2029para\x85next",
    "cafe\u0301 nai\u0308ve A\u030a vs café naïve Å",
    "a cute 🐱 with 👩\u200d🚀 and 🇫🇷 flags ✨",
    "東京の夜景、ネオン街 한국어 中文提示词",
    "cafÃ© Ã©tÃ© donâ€™t â€œquotedâ€\x9d",
    "mojibake: âœ” No problems, ÃŸ, Ã¼ber",
    "c1 controls \x80 \x91smart\x92 \x93quotes\x94 \x81\x8d\x9d",
    "lone surrogate \ud83d here and pair \ud83d\udc31",
    "it\u2019\u017f and <\u017ftart_of_text> <start_of_text>a cat<end_of_text>",
    "Ⅻ ① ² ½ ™ ℃ ㎏ ﬀ fullwidth ＜tag＞ ＆amp；",
    "Ｕ\u0308 composed after width ＡＥ\u0301",
    "ἀρχή Ελληνικά русский текст עברית العربية हिन्दी",
    "  leading and trailing   spaces  \n\n",
    "word " * 100,
    "",
]

# Pools the random strings draw from: (weight, generator of one piece).
SPECIAL = (
    [chr(c) for c in range(0xFF01, 0xFFF0)] + ["\u3000"] + list("ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬅﬆſ")
    + [chr(c) for c in range(0x206A, 0x2070)] + ["\ufeff", "\ufff9", "\ufffa", "\ufffb", "\ufffc"]
    + [chr(c) for c in range(0x2018, 0x2020)] + ["\u02bc", "\u2028", "\u2029", "\r\n", "\u00a0", "\u2003"]
    + [chr(c) for c in range(0x0300, 0x0370, 7)] + [chr(c) for c in range(0xD800, 0xE000, 97)]
    + ["\x1b[31m", "\x1b[0;1m", "\x1b[m", "\x1b[", "&amp;", "&lt;", "&#x41;", "&#65;", "&EACUTE;", "&nbsp;",
       "&#x1b;", "&#xFF21;", "&#0;", "&#x80;", "&", ";", "#", "<", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
)


def _random_text(rng: random.Random) -> str:
    pools = [
        (35, lambda: chr(rng.randrange(0x20, 0x7F))),
        (8, lambda: chr(rng.choice(list(range(0x20)) + [0x7F]))),
        (12, lambda: chr(rng.randrange(0x80, 0x100))),
        (25, lambda: rng.choice(SPECIAL)),
        (20, lambda: chr(rng.randrange(0x10000))),
    ]
    weights = [w for w, _ in pools]
    return "".join(rng.choices(pools, weights)[0][1]() for _ in range(rng.randint(1, 12)))


def _load_open_clip_tokenizer():
    """open_clip/tokenizer.py alone, so that the rest of the package (torchvision, ...) is not needed."""
    location = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", Path(location) / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(open_clip_tokenizer, text: str) -> dict:
    # The row without its padding: SOT, the text's ids, EOT, cut to the context length (a text may hold
    # '<end_of_text>' itself, and id 0 is '!', so neither EOT nor 0 tells where the row ends).
    length = min(len(open_clip_tokenizer._tokenizer.encode(text)) + 2, 77)
    case = {"text": text, "fixed": ftfy.fix_text(text),
            "ids": open_clip_tokenizer.tokenize([text])[0, :length].tolist()}
    unrepaired = ftfy.fix_text(text, fix_encoding=False)
    case["mojibake"] = unrepaired != case["fixed"]
    if case["mojibake"]:
        case["unrepaired"] = unrepaired
    return case


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="random strings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    open_clip_tokenizer = _load_open_clip_tokenizer()
    rng = random.Random(args.seed)
    data = {
        "versions": {"open_clip_torch": version("open_clip_torch"), "ftfy": ftfy.__version__,
                     "regex": version("regex"), "python": sys.version.split()[0],
                     "unicodedata": unicodedata.unidata_version},
        "seed": args.seed,
        "prompts": [_case(open_clip_tokenizer, text) for text in PROMPTS],
        "random": [_case(open_clip_tokenizer, _random_text(rng)) for _ in range(args.count)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # ensure_ascii: lone surrogates in the inputs cannot be written as UTF-8.
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}: {len(data['prompts'])} prompts, {len(data['random'])} random strings")


if __name__ == "__main__":
    main()
