"""The CLIP / OpenCLIP byte-level BPE tokenizer (open_clip 2.7.0 `SimpleTokenizer`), without dependencies.

Text is cleaned as open_clip cleans it: ftfy's `fix_text` with its default fixes (HTML entities, C1 controls
read as Windows-1252, Latin ligatures, full- and half-width forms, curly quotes, line breaks, UTF-16
surrogates, terminal escapes, invisible control characters, NFC; see `fix_text`), then HTML entities twice
more, runs of whitespace made one space, and lower case. It is split into words, numbers and punctuation
runs, and each piece is encoded with byte-pair merges from `ldm/data/bpe_simple_vocab_16e6.txt.gz` (the
vocabulary file OpenAI CLIP and open_clip ship). A prompt becomes [SOT] + pieces + [EOT], truncated to 77
with the last token forced to EOT, and padded with 0.

Left out: ftfy's mojibake repair (`fix_encoding`: 'cafÃ©' -> 'café'), which guesses at mis-decoded text
with heuristics and tables of its own. Such text keeps its mojibake here and may tokenize differently; for
all other text the ids are open_clip's (tests/test_tokenizer.py, against ids from open_clip and ftfy 6.1.1).
"""
import functools
import gzip
import html.entities
import itertools
import re
import unicodedata
from pathlib import Path

import torch

SOT, EOT, CONTEXT_LENGTH = 49406, 49407, 77
VOCAB_PATH = Path(__file__).resolve().parents[1] / "data" / "bpe_simple_vocab_16e6.txt.gz"  # ldm/data/
_SPECIAL = ("<start_of_text>", "<end_of_text>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _bytes_to_unicode() -> dict:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable bytes map to themselves, the rest to 256, 257, ...; the order of the values is the
    order of the first 256 vocabulary entries, so it must stay exactly this.
    """
    byte_values = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(byte_values)
    unprintable = [b for b in range(256) if b not in byte_values]
    byte_values += unprintable
    chars += [256 + i for i in range(len(unprintable))]
    return dict(zip(byte_values, map(chr, chars)))


# ftfy 6.1's `fix_text` with default settings, less `fix_encoding`: the tables and steps it applies.

def _entity_table() -> dict:
    """HTML5 entities that end in ';', and all-caps spellings of the lower-case ones ('&EACUTE;' -> 'É')
    where the all-caps spelling is no entity of its own."""
    table = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            table["&" + name] = char
            upper = "&" + name.upper()
            if name == name.lower() and html.unescape(upper) == upper:
                table[upper] = char.upper()
    return table


_ENTITIES = _entity_table()
_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")


def _unescape_entity(match) -> str:
    entity = match.group(0)
    if entity in _ENTITIES:
        return _ENTITIES[entity]
    if entity.startswith("&#"):
        char = html.unescape(entity)
        return entity if ";" in char else char  # a numeric reference counts only if decoded whole
    return entity


def _windows_1252(byte: int) -> str:
    """A C1 control read as its Windows-1252 byte; the five bytes Windows-1252 leaves unassigned stay."""
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)


_C1 = {chr(b): _windows_1252(b) for b in range(0x80, 0xA0)}
_LIGATURES = {  # Latin ligatures and legacy digraphs; æ, œ and the like are meant and stay
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
    "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
}
# The half- and full-width forms (U+FF01-U+FFEF) as their NFKC equivalents, and the ideographic space.
_WIDTH = {"\u3000": " "} | {chr(c): unicodedata.normalize("NFKC", chr(c)) for c in range(0xFF01, 0xFFF0)}
_QUOTES = {chr(c): "'" for c in (0x02BC, *range(0x2018, 0x201C))} | {chr(c): '"' for c in range(0x201C, 0x2020)}


def _chained(*maps) -> dict:
    """One str.translate table that does what the character maps do one after the other."""
    table = {}
    for char in set().union(*maps):
        out = char
        for m in maps:
            out = "".join(m.get(c, c) for c in out)
        table[ord(char)] = out
    return table


_CHARACTER_FIXES = _chained(_C1, _LIGATURES, _WIDTH, _QUOTES)
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_TERMINAL_ESCAPE_RE = re.compile(r"\x1b\[[\d;]*[a-zA-Z]")  # ANSI colours etc.; \d is any Unicode digit
# Invisible controls: C0 but tab, newline, form feed and CR; DEL; deprecated Arabic format controls
# U+206A-U+206F; the byte order mark; interlinear annotation and object replacement U+FFF9-U+FFFC.
_CONTROLS = dict.fromkeys(itertools.chain(range(0x09), [0x0B], range(0x0E, 0x20), [0x7F], range(0x206A, 0x2070),
                                          [0xFEFF], range(0xFFF9, 0xFFFD)))


def _join_surrogates(match) -> str:
    high, low = map(ord, match.group(0))
    return chr(0x10000 + (high - 0xD800) * 0x400 + (low - 0xDC00))


def _fix_segment(text: str, unescape: bool) -> str:
    """ftfy's fix_and_explain: its fixes in its order, repeated until nothing changes."""
    while True:
        before = text
        if unescape:
            text = _ENTITY_RE.sub(_unescape_entity, text)
        text = text.translate(_CHARACTER_FIXES)  # C1 controls, ligatures, character width, curly quotes
        # Line breaks to '\n' (U+0085 is '…' by now, from the C1 step).
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
        text = _SURROGATE_RE.sub("\ufffd", _SURROGATE_PAIR_RE.sub(_join_surrogates, text))
        text = _TERMINAL_ESCAPE_RE.sub("", text)
        text = unicodedata.normalize("NFC", text.translate(_CONTROLS))
        if text == before:
            return text


def fix_text(text: str) -> str:
    """`ftfy.fix_text(text)` of ftfy 6.1 without mojibake repair.

    Like ftfy, it fixes each line (with its newline) on its own, and decodes no HTML entities from the
    first line that holds a '<' on (the text may be HTML, where entities are meant). ftfy also cuts lines
    of over a million characters into pieces, which no prompt needs.
    """
    lines = text.split("\n")
    out, unescape = [], True
    for segment in [line + "\n" for line in lines[:-1]] + lines[-1:]:
        unescape = unescape and "<" not in segment
        out.append(_fix_segment(segment, unescape))
    return "".join(out)


def clean(text: str) -> str:
    """open_clip's cleaning: fix_text, HTML entities twice more, whitespace runs to one space, lower case."""
    text = html.unescape(html.unescape(fix_text(text)))
    # str.split's whitespace is open_clip's regex \s plus U+001C-U+001F, which fix_text has removed.
    return " ".join(text.split()).lower()


def _kind(ch: str) -> str:
    cat = unicodedata.category(ch)
    return "L" if cat[0] == "L" else "N" if cat[0] == "N" else "S" if ch.isspace() else "P"


def split_words(text: str) -> list:
    """The pre-tokenizer, equivalent to open_clip's regex
    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`:
    at each position the first alternative that matches wins, and runs are greedy. The regex ignores case,
    which after lower-casing still makes the long s 'ſ' match an 's' there."""
    folded = text.replace("ſ", "s")
    pieces, i, n = [], 0, len(text)
    while i < n:
        special = next((s for s in _SPECIAL if folded.startswith(s, i)), None)
        kind = _kind(text[i])
        if special:
            j = i + len(special)
        elif kind == "S":
            i += 1
            continue
        elif kind == "N":
            j = i + 1
        else:
            j = i + 1
            while j < n and _kind(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class Tokenizer:
    def __init__(self, vocab_path=VOCAB_PATH):
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1:49152 - 256 - 2 + 1]]
        self.byte_encoder = _bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}

    @functools.lru_cache(maxsize=10000)
    def bpe(self, word: str) -> tuple:
        """Merge the characters of one word (the last marked '</w>') by merge rank, best first."""
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list:
        ids = []
        for word in split_words(clean(text)):
            if word in ("<start_of_text>", "<end_of_text>"):  # written in the text, they are SOT and EOT
                ids.append(self.encoder[word])
                continue
            word = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(word))
        return ids

    def __call__(self, texts, context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """Prompts -> LongTensor [B, context_length]."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [SOT] + self.encode(text) + [EOT]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = EOT
            out[row, :len(ids)] = torch.tensor(ids)
        return out


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts, context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """`ldm.tokenize(["a photo", ...])` -> LongTensor [B, 77] of OpenCLIP token ids."""
    return default_tokenizer()(texts, context_length)
