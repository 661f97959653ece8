"""Datasets: Penn Treebank (``ptb``) and any UTF-8 text or the embedded corpus (``text``)."""

from . import ptb, text

__all__ = ["ptb", "text"]
