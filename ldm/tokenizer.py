"""The CLIP / OpenCLIP byte-level BPE tokenizer (open_clip `SimpleTokenizer`), without dependencies.

Text is cleaned (HTML entities, Unicode NFC, curly quotes made straight, runs of whitespace), lower-cased,
split into words, numbers and punctuation runs, and each piece is encoded with byte-pair merges from
`data/bpe_simple_vocab_16e6.txt.gz` (the vocabulary file OpenAI CLIP and open_clip ship). A prompt becomes
[SOT] + pieces + [EOT], truncated to 77 with the last token forced to EOT, and padded with 0.

open_clip additionally runs `ftfy.fix_text` (repairs mis-decoded text such as 'Ã©'); for well-formed text
the cleaning here gives the same result.
"""
import functools
import gzip
import html
import unicodedata
from pathlib import Path

import torch

SOT, EOT, CONTEXT_LENGTH = 49406, 49407, 77
VOCAB_PATH = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})


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


def clean(text: str) -> str:
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    return " ".join(text.split()).lower()


def _kind(ch: str) -> str:
    cat = unicodedata.category(ch)
    return "L" if cat[0] == "L" else "N" if cat[0] == "N" else "S" if ch.isspace() else "P"


def split_words(text: str) -> list:
    """The pre-tokenizer, equivalent to open_clip's regex
    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`:
    at each position the first alternative that matches wins, and runs are greedy."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        special = next((s for s in ("<start_of_text>", "<end_of_text>") + _CONTRACTIONS if text.startswith(s, i)), None)
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
