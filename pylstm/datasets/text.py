"""Corpora from any UTF-8 text, at character or word level, and the corpus embedded in the
package (tiny-shakespeare, xz-compressed, ~360 KB) that ``pylstm train`` uses offline.

``Vocab`` maps tokens to ids in order of first appearance; ``split`` cuts a corpus into
contiguous train / validation / test parts.
"""

from __future__ import annotations

import lzma
import os
from importlib import resources
from typing import Optional, Sequence

import numpy as np

__all__ = ["Vocab", "load_text", "load_embedded", "split", "tokenize", "EMBEDDED"]

EMBEDDED = {"tinyshakespeare": "tinyshakespeare.txt.xz"}


class Vocab:
    """Token <-> id tables in order of first appearance (ids 0..V-1)."""

    def __init__(self, tokens: Sequence[str] = (), level: str = "char"):
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        self.level = level
        self.word_to_id: dict = {}
        self.id_to_word: dict = {}
        for t in tokens:
            if t not in self.word_to_id:
                self.id_to_word[len(self.word_to_id)] = t
                self.word_to_id[t] = len(self.word_to_id)

    def __len__(self) -> int:
        return len(self.word_to_id)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        missing = [t for t in tokens if t not in self.word_to_id]
        if missing:
            shown = ", ".join(repr(t) for t in list(dict.fromkeys(missing))[:5])
            raise ValueError(f"{len(missing)} token(s) are not in the vocabulary ({len(self)} {self.level}s): {shown}")
        return np.array([self.word_to_id[t] for t in tokens], dtype=np.int32)

    def decode(self, ids) -> str:
        sep = "" if self.level == "char" else " "
        return sep.join(self.id_to_word[int(i)] for i in ids)

    def to_list(self) -> list:
        return [self.id_to_word[i] for i in range(len(self))]


def tokenize(text: str, level: str) -> list:
    """Characters, or whitespace-separated words with one '<eos>' per line (the PTB convention)."""
    if level == "char":
        return list(text)
    if level == "word":
        out = []
        for line in text.splitlines():
            words = line.split()
            if words:
                out += words + ["<eos>"]
        return out
    raise ValueError(f"level must be 'char' or 'word', got {level!r}")


def _corpus(text: str, level: str, vocab: Optional[Vocab]):
    tokens = tokenize(text, level)
    if not tokens:
        raise ValueError("the text is empty: no tokens to build a corpus from")
    vocab = vocab or Vocab(tokens, level)
    return vocab.encode(tokens), vocab


def load_text(path: str, level: str = "char", vocab: Optional[Vocab] = None):
    """Read a UTF-8 text file. Returns ``(corpus int32, vocab)``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return _corpus(text, level, vocab)


def embedded_text(name: str = "tinyshakespeare") -> str:
    if name not in EMBEDDED:
        raise ValueError(f"name must be one of {sorted(EMBEDDED)}, got {name!r}")
    data = resources.files("pylstm").joinpath("data", EMBEDDED[name]).read_bytes()
    return lzma.decompress(data).decode("utf-8")


def load_embedded(name: str = "tinyshakespeare", level: str = "char"):
    """The corpus shipped inside the package. Returns ``(corpus int32, vocab)``."""
    return _corpus(embedded_text(name), level, None)


def split(corpus: np.ndarray, fractions=(0.9, 0.05, 0.05)):
    """Contiguous train / val / test parts of a corpus (fractions of its length)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    n = len(corpus)
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    return corpus[:a], corpus[a:b], corpus[b:]


