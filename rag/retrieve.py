"""Hybrid paper retrieval: dense (Chroma) + BM25 chunk hits, fused per paper with reciprocal-rank fusion."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.chunking import content_terms, matched_terms, split_sentences
from rag.errors import ConfigError
from rag.records import Hit, Paper

log = logging.getLogger(__name__)
MODES = ("hybrid", "dense", "bm25")


@dataclass
class PaperEvidence:
    """Per-paper best rank and snippet from one retriever."""

    rank: int
    score: float
    chunk_id: str


def _by_paper(pairs: list[tuple[str, float]]) -> dict[str, PaperEvidence]:
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


def check_top_k(top_k: int, limit: int = 200) -> int:
    if not isinstance(top_k, int) or top_k < 1 or top_k > limit:
        raise ConfigError(f"top-k must be between 1 and {limit}, got {top_k}")
    return top_k


class Retriever:
    """Searches an index built by `rag ingest`. Heavy parts (model, Chroma) are opened once."""

    def __init__(self, settings, embedder=None, store=None, check_stale: bool = True):
        from rag.bm25 import BM25Index
        from rag.index import load_papers, load_term_df, open_index_state
        from rag.store import ChromaStore

        self.settings = settings
        data_dir = Path(settings.data_dir)
        self.state = open_index_state(settings, check_stale=check_stale)
        if self.state.stale:
            log.warning("%s", self.state.stale)
        self.papers: dict[str, Paper] = load_papers(data_dir)
        self.bm25 = BM25Index.load(data_dir / "bm25")
        self._n_docs, self._df = load_term_df(data_dir)
        self.store = store or ChromaStore(data_dir, settings.chroma_url, settings.collection)
        model = self.state.manifest["params"]["embedding_model"]
        if embedder is None:
            from rag.embeddings import make_embedder

            embedder = make_embedder(settings)
        if embedder.name != model:
            raise ConfigError(
                f"the index was built with embedding model {model!r} but {embedder.name!r} is configured: "
                "run `rag ingest` to rebuild, or set RAG_EMBED_MODEL_PATH back"
            )
        self.embedder = embedder

    def idf(self, term: str) -> float:
        """Inverse document frequency of a content term (see rag.chunking.content_terms)."""
        return math.log(1 + self._n_docs / (self._df.get(term, 0) + 0.5))

    def embed_query(self, text: str) -> np.ndarray:
        return self.embedder.embed([text])[0]

    def dense(self, query_vec: np.ndarray, n: int) -> tuple[list[tuple[str, float]], dict[str, str]]:
        """Ranked (chunk_id, cosine similarity) pairs and the chunk bodies, from Chroma."""
        hits = self.store.query(query_vec, n)
        return [(h.chunk_id, h.similarity) for h in hits], {h.chunk_id: h.body for h in hits}

    def search(self, query: str, top_k: int | None = None, mode: str | None = None, query_vec=None) -> list[Hit]:
        """Best `top_k` papers for `query`, one hit per paper, best first."""
        return self.retrieve(query, top_k, mode, query_vec).hits

    def retrieve(self, query: str, top_k: int | None = None, mode: str | None = None, query_vec=None) -> "Retrieval":
        """Like `search`, plus the best dense similarity (the answerer's relevance signal).

        Keeps no per-call state on the instance, so one Retriever serves concurrent requests.
        `query_vec` (if given) also runs the dense search in bm25 mode, for that similarity.
        """
        top_k = check_top_k(self.settings.top_k if top_k is None else top_k)
        mode = check_mode(mode or self.settings.mode)
        n = max(self.settings.candidates, top_k * 3)
        dense_ev: dict[str, PaperEvidence] = {}
        bm25_ev: dict[str, PaperEvidence] = {}
        bodies: dict[str, str] = {}
        top_similarity = None
        if mode in ("dense", "hybrid") or query_vec is not None:
            qv = query_vec if query_vec is not None else self.embed_query(query)
            pairs, bodies = self.dense(qv, n)
            dense_ev = _by_paper(pairs)
            top_similarity = pairs[0][1] if pairs else None
        if mode in ("bm25", "hybrid"):
            bm25_ev = _by_paper(self.bm25.query(query, n))

        if mode == "dense":
            scored = {pid: ev.score for pid, ev in dense_ev.items()}
        elif mode == "bm25":
            scored = {pid: ev.score for pid, ev in bm25_ev.items()}
        else:
            scored = rrf([dense_ev, bm25_ev], self.settings.rrf_k)
        ranked = sorted(scored.items(), key=lambda kv: kv[1], reverse=True)[:top_k]
        hits = []
        for pid, score in ranked:
            paper = self.papers.get(pid)
            if paper is None:  # store and papers.jsonl disagree: skip rather than show a ghost
                continue
            ev = dense_ev.get(pid) if mode != "bm25" else None
            body = bodies.get(ev.chunk_id) if ev else None
            hits.append(
                Hit(
                    rank=len(hits) + 1,
                    paper_id=pid,
                    title=paper.title,
                    score=score,
                    snippet=_shorten(body) if body else _best_sentence(query, paper),
                    dense_sim=dense_ev[pid].score if pid in dense_ev else None,
                )
            )
        return Retrieval(hits, top_similarity)


@dataclass
class Retrieval:
    hits: list[Hit]
    top_similarity: float | None


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def _best_sentence(query: str, paper: Paper) -> str:
    """Snippet for a lexical hit: the abstract sentence sharing most terms with the query."""
    terms = set(content_terms(query))
    sentences = split_sentences(paper.abstract) or [paper.abstract]
    best = max(sentences, key=lambda s: len(matched_terms(terms, set(content_terms(s)))))
    return _shorten(best)
