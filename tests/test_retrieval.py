"""Retrieval over the whole corpus with the real packaged model; the index is built once per session."""

from __future__ import annotations

import re

import pytest

from rag.errors import ConfigError
from rag.retrieve.hybrid import MODES, by_paper, check_mode, check_top_k, rrf

ERASURE = re.compile(r"eras|unlearn|forget|remov|ablat", re.I)
QUESTION = "which papers erase concepts in diffusion models?"


def _norm(text: str) -> str:
    return " ".join(text.split())


def assert_well_formed(hits, retriever, top_k):
    assert len(hits) == top_k
    assert [h.rank for h in hits] == list(range(1, top_k + 1))
    assert len({h.paper_id for h in hits}) == top_k, "one hit per paper"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True), "best first"
    for h in hits:
        paper = retriever.index[h.paper_id]
        assert h.title == paper.title
        assert h.snippet and len(h.snippet) <= 300
        body = h.snippet.removesuffix("…")
        assert _norm(body) in _norm(paper.abstract), (h.title, h.snippet)
        public = h.public()
        assert list(public) == ["rank", "paper_id", "title", "score", "snippet"]


@pytest.mark.slow
def test_concept_erasure_question_top5_hybrid_are_all_erasure_papers(real_retriever):
    hits = real_retriever.search(QUESTION, top_k=5, mode="hybrid")
    titles = [h.title for h in hits]
    assert len(hits) == 5
    assert all(ERASURE.search(t) for t in titles), titles
    assert all(re.search(r"diffusion|text-to-image", real_retriever.index[h.paper_id].abstract, re.I) for h in hits)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_concept_erasure_question_each_mode_mostly_erasure(real_retriever, mode):
    hits = real_retriever.search(QUESTION, top_k=10, mode=mode)
    on_topic = [h.title for h in hits if ERASURE.search(h.title)]
    assert len(on_topic) >= 6, [h.title for h in hits]
    assert ERASURE.search(hits[0].title)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("top_k", [1, 7, 25])
def test_each_mode_returns_top_k_unique_papers_with_snippets(real_retriever, mode, top_k):
    hits = real_retriever.search("contrastive learning of visual representations", top_k=top_k, mode=mode)
    assert_well_formed(hits, real_retriever, top_k)
    if mode == "dense":  # keyword query: ranked by the Rocchio-expanded vector, similarity still to the query
        assert all(-1.0 <= h.score <= 1.0001 for h in hits)
        assert all(h.similarity is not None and -1.0 <= h.similarity <= 1.0001 for h in hits)
        question = real_retriever.search("Which papers learn visual representations contrastively?", top_k=top_k, mode=mode)
        assert all(h.similarity == h.score for h in question)  # no feedback for a full question
    if mode == "hybrid":
        assert all(0 < h.score <= 2 / (real_retriever.settings.rrf_k + 1) for h in hits)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_exact_title_ranks_its_paper_first(real_retriever, mode):
    title = "MACE: Mass Concept Erasure in Diffusion Models"
    hits = real_retriever.search(title, top_k=3, mode=mode)
    if mode == "dense":  # a bare title is a short query: dense alone only has to place it near the top
        assert title in [h.title for h in hits]
    else:
        assert hits[0].title == title


@pytest.mark.slow
def test_default_top_k_and_mode_come_from_settings(real_retriever):
    hits = real_retriever.search(QUESTION)
    assert len(hits) == real_retriever.settings.top_k == 10
    assert hits == real_retriever.search(QUESTION, top_k=10, mode="hybrid")


@pytest.mark.slow
def test_query_with_no_known_terms(real_retriever):
    assert real_retriever.search("zxqv qwzx", top_k=5, mode="bm25") == []
    hits = real_retriever.search("zxqv qwzx", top_k=5, mode="hybrid")  # dense still answers
    assert len(hits) == 5


@pytest.mark.slow
def test_search_is_deterministic(real_retriever):
    a = [(h.paper_id, h.score) for h in real_retriever.search(QUESTION, top_k=20)]
    b = [(h.paper_id, h.score) for h in real_retriever.search(QUESTION, top_k=20)]
    assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["semantic", "", "HYBRID", "bm-25"])
def test_invalid_mode_raises_config_error(real_retriever, mode):
    with pytest.raises(ConfigError, match="mode"):
        real_retriever.search(QUESTION, top_k=5, mode=mode or "   ")


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [0, -1, 201, 2.5])
def test_invalid_top_k_raises_config_error(real_retriever, top_k):
    with pytest.raises(ConfigError, match="top-k"):
        real_retriever.search(QUESTION, top_k=top_k)


# ---------------------------------------------------------------- fast unit checks (no index)


def test_check_mode_and_top_k():
    for mode in ("hybrid", "dense", "bm25"):
        assert check_mode(mode) == mode
    with pytest.raises(ConfigError, match="hybrid, dense, bm25"):
        check_mode("sparse")
    assert check_top_k(1) == 1 and check_top_k(200) == 200
    for bad in (0, -3, 201, "5", None):
        with pytest.raises(ConfigError):
            check_top_k(bad)


def test_rrf_fuses_per_paper():
    dense = by_paper([("a:0", 0.9), ("a:1", 0.8), ("b:0", 0.7)])
    bm25 = by_paper([("b:2", 9.0), ("c:0", 5.0)])
    assert dense["a"].rank == 1 and dense["a"].chunk_id == "a:0" and dense["b"].rank == 2
    fused = rrf([dense, bm25], k=60)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["c"] == pytest.approx(1 / 62)
    assert max(fused, key=fused.get) == "b"
