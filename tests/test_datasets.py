"""Datasets: PTB ids identical to the book's loader (checked on the PTB files when present:
$PYLSTM_DATA_DIR, else a shared data folder beside the checkout), where files are looked for,
offline errors, checksum verification; text corpora."""

import io
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from pylstm.datasets import ptb, text


def _ptb_dir() -> Path:
    """The PTB files' folder: $PYLSTM_DATA_DIR (or its ptb/), else shared/data/ptb beside the checkout."""
    env = os.environ.get("PYLSTM_DATA_DIR", "")
    for d in ([Path(env), Path(env) / "ptb"] if env else []):
        if (d / "ptb.train.txt").exists():
            return d
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"


SHARED_PTB = _ptb_dir()
needs_ptb = pytest.mark.skipif(not (SHARED_PTB / "ptb.train.txt").exists(),
                               reason="no PTB files (set PYLSTM_DATA_DIR to their folder)")


@needs_ptb
def test_ptb_ids_match_the_books_loader():
    corpus, w2i, i2w = ptb.load_data("train", data_dir=str(SHARED_PTB), download=False)
    assert corpus.dtype == np.int32 and len(corpus) == 929589 and len(w2i) == 10000
    assert [i2w[i] for i in range(3)] == ["aer", "banknote", "berlitz"]
    assert w2i["<eos>"] == 24 and w2i["<unk>"] == 26 and w2i["car"] == 3856 and w2i["lexus"] == 7426
    np.testing.assert_array_equal(corpus[:30], np.arange(30))
    val, _, _ = ptb.load_data("val", data_dir=str(SHARED_PTB), download=False)
    test, _, _ = ptb.load_data("test", data_dir=str(SHARED_PTB), download=False)
    assert len(val) == 73760 and len(test) == 82430


@needs_ptb
def test_ptb_env_var_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("PYLSTM_DATA_DIR", str(SHARED_PTB.parent))  # finds ptb/ below it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ptb.find_file("ptb.test.txt", download=False) == str(SHARED_PTB / "ptb.test.txt")


def test_ptb_offline_error_says_where_to_put_files(monkeypatch, tmp_path):
    monkeypatch.delenv("PYLSTM_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ptb.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="PYLSTM_DATA_DIR"):
        ptb.load_data("test")
    assert not any(tmp_path.rglob("*.txt"))


def test_ptb_download_with_wrong_checksum_is_rejected(monkeypatch, tmp_path):
    monkeypatch.delenv("PYLSTM_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ptb.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b" not ptb \n"))
    with pytest.raises(FileNotFoundError, match="sha256"):
        ptb.find_file("ptb.test.txt")
    assert not (tmp_path / "pylstm" / "ptb.test.txt").exists()
    assert not [p for p in (tmp_path / "pylstm").iterdir() if p.name.startswith(".tmp")]


def test_ptb_rejects_unknown_split():
    with pytest.raises(ValueError, match="^data_type"):
        ptb.load_data("dev")


def test_text_char_and_word_levels(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("ab ba\nc a\n", encoding="utf-8")
    c, v = text.load_text(str(p), "char")
    assert v.to_list() == ["a", "b", " ", "\n", "c"]
    assert v.decode(c) == "ab ba\nc a\n"
    w, wv = text.load_text(str(p), "word")
    assert wv.to_list() == ["ab", "ba", "<eos>", "c", "a"]
    np.testing.assert_array_equal(w, [0, 1, 2, 3, 4, 2])


def test_text_errors(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        text.load_text(str(p))
    with pytest.raises(FileNotFoundError, match="^path"):
        text.load_text(str(tmp_path / "nope.txt"))
    v = text.Vocab("abc")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("abz")
    with pytest.raises(ValueError, match="^level"):
        text.Vocab("ab", level="byte")


def test_embedded_corpus_is_tiny_shakespeare():
    corpus, vocab = text.load_embedded()
    assert len(corpus) == 1115394 and len(vocab) == 65
    assert vocab.decode(corpus[:14]) == "First Citizen:"
    tr, va, te = text.split(corpus)
    assert len(tr) + len(va) + len(te) == len(corpus) and len(va) > 50000
