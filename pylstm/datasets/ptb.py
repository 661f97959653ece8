"""The Penn Treebank language-modelling corpus (Mikolov's split), loaded exactly as DLfS2's
``dataset/ptb.py`` does: each line's words plus one ``<eos>``, ids in order of first appearance
in the train split (so ids are identical to the book's and its trained weights apply).

Files are looked for, in order: the ``data_dir`` argument, ``$PYLSTM_DATA_DIR``, the cache
directory (``$XDG_CACHE_HOME/pylstm`` or ``~/.cache/pylstm``); otherwise they are downloaded
from the URL DLfS2 uses into the cache and verified by sha256. Offline with no files, a
``FileNotFoundError`` says where to put them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from typing import Optional

import numpy as np

__all__ = ["load_data", "find_file", "FILES", "SHA256", "URL_BASE"]

URL_BASE = "https://raw.githubusercontent.com/tomsercu/lstm/master/data/"
FILES = {"train": "ptb.train.txt", "val": "ptb.valid.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pylstm")


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(name: str, dest_dir: str) -> str:
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, name)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(URL_BASE + name, timeout=30) as r:
            f.write(r.read())
        got = file_sha256(tmp)
        if got != SHA256[name]:
            raise OSError(f"{name}: downloaded file has sha256 {got}, expected {SHA256[name]}")
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_file(name: str, data_dir: Optional[str] = None, download: bool = True) -> str:
    """Path of a PTB file, from the first place that has it (see the module docstring)."""
    places = [d for d in (data_dir, os.environ.get("PYLSTM_DATA_DIR"), cache_dir()) if d]
    for d in places:
        for candidate in (os.path.join(d, name), os.path.join(d, "ptb", name)):
            if os.path.isfile(candidate):
                return candidate
    if download:
        try:
            return _download(name, cache_dir())
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = exc
    else:
        reason = "download disabled"
    raise FileNotFoundError(
        f"{name} not found in {places} and could not be downloaded ({reason}). Put the PTB files "
        f"({', '.join(sorted(SHA256))}) in one of those folders, or set PYLSTM_DATA_DIR."
    )


def _read_words(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return f.read().replace("\n", "<eos>").strip().split()


def load_data(data_type: str = "train", data_dir: Optional[str] = None, download: bool = True):
    """Returns ``(corpus, word_to_id, id_to_word)``: corpus is an int32 array of ids.

    data_type: 'train' | 'val' (or 'valid') | 'test'. The vocabulary always comes from train.
    """
    if data_type not in FILES:
        raise ValueError(f"data_type must be one of {sorted(FILES)}, got {data_type!r}")
    train_words = _read_words(find_file(FILES["train"], data_dir, download))
    word_to_id: dict = {}
    id_to_word: dict = {}
    for w in train_words:
        if w not in word_to_id:
            id_to_word[len(word_to_id)] = w
            word_to_id[w] = len(word_to_id)
    words = train_words if data_type == "train" else _read_words(find_file(FILES[data_type], data_dir, download))
    try:
        corpus = np.array([word_to_id[w] for w in words], dtype=np.int32)
    except KeyError as exc:
        raise ValueError(f"{data_type}: word {exc.args[0]!r} is not in the train vocabulary") from exc
    return corpus, word_to_id, id_to_word
