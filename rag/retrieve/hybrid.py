"""Hybrid paper retrieval: dense (Chroma) + lexical (BM25) chunk hits, one entry per paper, fused with
reciprocal-rank fusion (RRF).

Measured on the dev set, per-paper RRF with k=10 beats llama-index's fixed k=60 fusion; see README.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from rag.errors import ConfigError
from rag.index.embedders import Embedder
from rag.records import Hit, Paper, Retrieval
from rag.text import content_terms, is_keyword_query, matched_terms, split_sentences

if TYPE_CHECKING:
    from rag.index.reader import Index

log = logging.getLogger(__name__)
MODES = ("hybrid", "dense", "bm25")
TOP_K_LIMIT = 200


@dataclass
class PaperEvidence:
    """Per-paper best rank, score and chunk from one retriever."""

    rank: int
    score: float
    chunk_id: str


def by_paper(pairs: list[tuple[str, float]]) -> dict[str, PaperEvidence]:
    """Collapse ranked (chunk_id, score) pairs to one entry per paper, keeping the best chunk."""
    out: dict[str, PaperEvidence] = {}
    for chunk_id, score in pairs:
        pid = chunk_id.rsplit(":", 1)[0]
        if pid not in out:
            out[pid] = PaperEvidence(len(out) + 1, score, chunk_id)
    return out


def rrf(rankings: list[dict[str, PaperEvidence]], k: int, weights: list[float] | None = None) -> dict[str, float]:
    """Reciprocal-rank fusion: sum of w / (k + rank) over the rankings a paper appears in."""
    weights = weights or [1.0] * len(rankings)
    fused: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        for pid, ev in ranking.items():
            fused[pid] = fused.get(pid, 0.0) + w / (k + ev.rank)
    return fused


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def check_top_k(top_k: int, limit: int = TOP_K_LIMIT) -> int:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1 or top_k > limit:
        raise ConfigError(f"top-k must be between 1 and {limit}, got {top_k}")
    return top_k


@runtime_checkable
class PaperSearch(Protocol):
    """What the answerer, eval and adapters need from a retriever (Retriever is the implementation)."""

    @property
    def index(self): ...

    def search(self, query: str, top_k: int | None = None, mode: str | None = None) -> list[Hit]: ...

    def retrieve(self, query: str, top_k: int | None = None, mode: str | None = None) -> Retrieval: ...


class Retriever:
    """Searches an `Index` with an `Embedder`. Keeps no per-call state: one instance serves concurrent requests."""

    def __init__(self, settings, index: "Index", embedder: Embedder):
        if embedder.name != index.embedding_model:
            raise ConfigError(
                f"the index was built with embedding model {index.embedding_model!r} but {embedder.name!r} is "
                "configured: run `rag ingest` to rebuild, or set the embedding settings back"
            )
        self.settings = settings
        self._index = index
        self._embedder = embedder
        # A repeated query (retrieve then answer, a regenerate, eval's two passes) is embedded once.
        self._query_vector = functools.lru_cache(maxsize=1024)(self._embed_one)

    @classmethod
    def from_settings(cls, settings, embedder=None, store=None, check_stale: bool = True) -> "Retriever":
        """Open the index in `settings.data_dir` and the configured embedder."""
        from rag.index.reader import Index

        index = Index.open(settings, store=store, check_stale=check_stale)
        if embedder is None:
            from rag.index.query_model import make_query_embedder

            embedder = make_query_embedder(settings)  # the ONNX export when there is one: no torch import
        return cls(settings, index, embedder)

    @property
    def index(self):
        """The read-side index this retriever searches (rag.index.reader.Index)."""
        return self._index

    @property
    def embedder(self):
        """The query embedder (rag.index.embedders.Embedder)."""
        return self._embedder

    def embed_query(self, text: str):
        """The query's vector (cached per text; treat it as read-only)."""
        return self._query_vector(text)

    def _embed_one(self, text: str):
        vector = self._embedder.embed([text])[0]
        vector.setflags(write=False)
        return vector

    def search(self, query: str, top_k: int | None = None, mode: str | None = None) -> list[Hit]:
        """Best `top_k` papers for `query`, one hit per paper, best first (bm25 mode needs no vectors)."""
        return self._retrieve(query, top_k, mode, similarity=False).hits

    def retrieve(self, query: str, top_k: int | None = None, mode: str | None = None,
                 dense_text: str | None = None) -> Retrieval:
        """Like `search`, plus the best dense similarity, which is computed in every mode.

        `dense_text` (e.g. a hypothetical abstract written by an LLM, HyDE) replaces the question for the
        dense search; the lexical search and the reported similarity still use the question itself."""
        return self._retrieve(query, top_k, mode, similarity=True, dense_text=dense_text)

    def _retrieve(self, query: str, top_k: int | None, mode: str | None, similarity: bool,
                  dense_text: str | None = None) -> Retrieval:
        self._index.refresh()  # a newly published generation is picked up here, per request
        top_k = check_top_k(self.settings.top_k if top_k is None else top_k)
        mode = check_mode(mode or self.settings.mode)
        n = max(self.settings.candidates, top_k * 3)
        qv = self.embed_query(query)
        # The dense ranking comes from the question's vector, or from a replacement for it: a hypothetical
        # abstract (HyDE) or Rocchio feedback. One store query per ranking; the question's own search is
        # made only for what needs it (its ranking, or the reported best similarity: then 1 chunk is enough).
        searched = None
        if mode != "bm25":
            if dense_text:
                searched = self._embedder.embed([dense_text])[0]
            elif self._use_feedback(query):
                searched = self._feedback_vector(qv)
        own_n = n if searched is None and (mode != "bm25" or similarity) else 1 if similarity else 0
        own = self._index.dense(qv, own_n) if own_n else []
        top_similarity = own[0][1] if own else None  # of the question itself, always
        ranked = self._index.dense(searched, n) if searched is not None else own if mode != "bm25" or similarity else []
        lexical_ev = by_paper(self._index.lexical(query, n)) if mode != "dense" else {}

        while True:
            dense_ev = by_paper(ranked)  # ranked by the searched vector
            if mode == "dense":
                scored = {pid: ev.score for pid, ev in dense_ev.items()}
            elif mode == "bm25":
                scored = {pid: ev.score for pid, ev in lexical_ev.items()}
            else:
                scored = rrf([dense_ev, lexical_ev], self.settings.rrf_k)
            chosen: list[tuple[str, float, Paper]] = []
            for pid, score in sorted(scored.items(), key=lambda kv: kv[1], reverse=True):
                if len(chosen) == top_k:
                    break
                paper = self._index.get(pid)
                if paper is None:  # store and paper records disagree: skip rather than show a ghost
                    log.warning("paper %s is in the search results but not in the paper records", pid)
                    continue
                chosen.append((pid, score, paper))
            # Bodies (for snippets) and, for a replaced query, vectors (to score against the question) are
            # fetched for the shown chunks only.
            shown = [dense_ev[pid].chunk_id for pid, _, _ in chosen if pid in dense_ev] if mode != "bm25" else []
            found = self._index.chunks(shown, with_vectors=searched is not None) if shown else {}
            gone = set(shown) - set(found)
            if not gone:
                break
            # deleted by an ingest in another process since the store's client loaded its index
            ranked = [(cid, sim) for cid, sim in ranked if cid not in gone]

        sim_to_q = dict(ranked) if searched is None else {
            cid: float(np.dot(qv, vec)) for cid, (_, vec) in found.items()}
        hits: list[Hit] = []
        for pid, score, paper in chosen:
            ev = dense_ev.get(pid)
            body = found[ev.chunk_id][0] if ev and ev.chunk_id in found else None
            hits.append(Hit(
                rank=len(hits) + 1,
                paper_id=pid,
                title=paper.title,
                score=score,
                snippet=shorten(body) if body else best_sentence(query, paper),
                similarity=sim_to_q.get(ev.chunk_id) if ev else None,
            ))
        return Retrieval(query=query, mode=mode, hits=hits, top_similarity=top_similarity)

    def _use_feedback(self, query: str) -> bool:
        """Rocchio feedback helps keyword queries and slightly hurts full questions (tune split: nDCG@10
        +0.034 terse, -0.013 questions), so it is applied to keyword-style queries only."""
        return self.settings.rocchio_beta > 0 and is_keyword_query(query, self.settings.rocchio_max_words)

    def _feedback_vector(self, qv):
        """Dense Rocchio feedback: normalise(q + beta * v_p*), v_p* the vector of the paper nearest to q
        (measured on the tune split: see README, Evaluation); None when there are no papers."""
        nearest = self._index.nearest_papers(qv, 1)
        if not nearest:
            return None
        q2 = qv + self.settings.rocchio_beta * nearest[0].vector
        return q2 / (np.linalg.norm(q2) or 1.0)


def shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def best_sentence(query: str, paper: Paper) -> str:
    """Snippet for a lexical hit: the abstract sentence sharing most terms with the query."""
    terms = set(content_terms(query))
    best = max(sentence_terms(paper.abstract), key=lambda st: len(matched_terms(terms, st[1])))
    return shorten(best[0])


@functools.lru_cache(maxsize=4096)
def sentence_terms(abstract: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """Each sentence of an abstract with its content terms (cached by text: tokenizing every sentence of
    every lexical hit's abstract was ~10% of a warm search)."""
    return tuple((s, frozenset(content_terms(s))) for s in split_sentences(abstract) or [abstract])
