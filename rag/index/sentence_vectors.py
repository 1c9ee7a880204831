"""Sentence vectors of papers, embedded on demand with the index's own model and cached by content hash.

Judgement (abstention, list relevance) and the extractive answerer compare the question with single
sentences of the top papers: a paper's best sentence says more about whether it answers a question
than a 160-token chunk does. Embedding every sentence at ingest would double ingest time, so only the
sentences of papers that reach the top are embedded: once per process (an LRU of papers shared by
everything that uses the same embedder) and once per index (the embedding cache, by content hash).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from rag.records import Paper
from rag.text import sentence_spans

log = logging.getLogger(__name__)
MAX_PAPERS = 4096  # papers whose sentence vectors stay in memory
_SHARED: "weakref.WeakKeyDictionary[object, SentenceVectors]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared_sentence_vectors(embedder, cache_path=None) -> "SentenceVectors":
    """The process-wide SentenceVectors of this embedder (one memory cache for every Assistant using it)."""
    with _SHARED_LOCK:
        found = _SHARED.get(embedder)
        if found is None:
            found = _SHARED[embedder] = SentenceVectors(embedder, cache_path)
        return found


@dataclass(frozen=True)
class PaperSentences:
    """A paper's title and abstract sentences, their spans in the abstract (the title has none), and vectors."""

    texts: tuple[str, ...]
    spans: tuple[tuple[int, int] | None, ...]
    vectors: np.ndarray  # (len(texts), dim), L2-normalised


class SentenceVectors:
    """Sentence vectors per paper for one embedder (thread-safe; one embedding call per batch of papers)."""

    def __init__(self, embedder, cache_path=None, max_papers: int = MAX_PAPERS):
        """`cache_path`: an embedding cache (rag.index.embedders.EmbeddingCache file) shared with ingest; sentence
        vectors are kept there by content hash, so another process does not embed them again."""
        self._embedder = embedder
        self._cache: OrderedDict[str, PaperSentences] = OrderedDict()
        self._max = max_papers
        self._lock = threading.Lock()
        self._store = None
        self._store_lock = threading.Lock()
        if cache_path is not None:
            from rag.index.embed_cache import EmbeddingCache

            try:
                self._store = EmbeddingCache(cache_path)
            except (OSError, sqlite3.Error) as exc:  # a read-only data dir: memory only
                log.info("sentence vectors not cached on disk (%s)", exc)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Vectors of `texts`, from the disk cache where it has them."""
        if self._store is None:
            return self._embedder.embed(texts)
        from rag.index.embed_cache import embed_with_cache

        try:
            with self._store_lock:  # one sqlite connection: one user at a time (embedding is serialised anyway)
                vectors, _ = embed_with_cache(self._embedder, self._store, texts, self._embedder.name, batch_size=512)
            return vectors
        except sqlite3.Error as exc:
            log.warning("sentence vector cache unusable (%s): embedding without it", exc)
            self._store = None
            return self._embedder.embed(texts)

    def of(self, papers: list[Paper]) -> list[PaperSentences]:
        """Sentences and vectors of each paper (embedding the ones not seen yet, all in one batch)."""
        keys = [p.content_hash() for p in papers]
        with self._lock:
            missing = {k: p for k, p in zip(keys, papers) if k not in self._cache}
        if missing:
            parts = {}
            texts: list[str] = []
            for k, p in missing.items():
                spans = sentence_spans(p.abstract)
                sent_texts = [p.title] + [p.abstract[s:e] for s, e in spans]
                parts[k] = (tuple(sent_texts), (None, *spans), len(texts))
                texts.extend(sent_texts)
            vectors = self._embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
            with self._lock:
                for k, (sent_texts, spans, start) in parts.items():
                    self._cache[k] = PaperSentences(sent_texts, spans, vectors[start : start + len(sent_texts)])
                    self._cache.move_to_end(k)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        with self._lock:
            out = [self._cache[k] for k in keys]
            for k in keys:
                self._cache.move_to_end(k)
        return out

    def best_similarity(self, query_vector, papers: list[Paper]) -> list[float]:
        """For each paper, the cosine of its closest sentence (title included) to the query."""
        return [float(np.max(ps.vectors @ query_vector)) if len(ps.texts) else 0.0 for ps in self.of(papers)]
