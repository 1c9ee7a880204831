"""The lexical (BM25) index over the same chunks as the vector store (bm25s + the Snowball stemmer).

Tokenisation uses the project's one stopword list (rag.text) plus bm25s' English list, so question
filler such as "which papers" never dominates a query.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.errors import IndexCorruptError


def _bm25s():
    """Import bm25s without its import-time `setLevel(DEBUG)` overriding the application's log level."""
    logger = logging.getLogger("bm25s")
    level = logger.level
    import bm25s

    logger.setLevel(level)
    return bm25s


def _tokenizer():
    from bm25s.stopwords import STOPWORDS_EN
    from bm25s.tokenization import Tokenizer

    from rag.text import STOPWORDS, stemmer

    return Tokenizer(stopwords=sorted(set(STOPWORDS_EN) | STOPWORDS), stemmer=stemmer())


class LexicalIndex:
    """BM25 over chunk texts; ids are chunk ids."""

    def __init__(self, retriever, tokenizer, ids: list[str]):
        self._retriever = retriever
        self._tokenizer = tokenizer
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str]) -> "LexicalIndex":
        bm25s = _bm25s()
        tok = _tokenizer()
        tokens = tok.tokenize(list(texts), update_vocab=True, return_as="tuple", show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, tok, list(ids))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._retriever.save(str(directory), show_progress=False)
        self._tokenizer.save_vocab(str(directory))
        tmp = directory / "ids.json.tmp"
        tmp.write_text(json.dumps(self.ids))
        tmp.replace(directory / "ids.json")

    @classmethod
    def load(cls, directory: Path) -> "LexicalIndex":
        bm25s = _bm25s()
        try:
            retriever = bm25s.BM25.load(str(directory), show_progress=False, mmap=False)
            tok = _tokenizer()
            tok.load_vocab(str(directory))
            ids = json.loads((directory / "ids.json").read_text())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexCorruptError(
                f"the lexical index in {directory} is unreadable ({exc.__class__.__name__}): run `rag ingest`"
            ) from None
        return cls(retriever, tok, ids)

    def query(self, text: str, k: int) -> list[tuple[str, float]]:
        """Top-k (chunk_id, score), best first; empty when no query term is in the vocabulary."""
        words = self._tokenizer.tokenize([text], update_vocab=False, return_as="string", show_progress=False)
        vocab = self._retriever.vocab_dict
        terms = [w for w in words[0] if w and w in vocab]
        if not terms or not self.ids:
            return []
        k = min(k, len(self.ids))
        docs, scores = self._retriever.retrieve([terms], k=k, show_progress=False, n_threads=1)
        out = []
        for doc, score in zip(np.asarray(docs)[0], np.asarray(scores)[0]):
            if score > 0:
                out.append((self.ids[int(doc)], float(score)))
        return out
