"""Lexical search on the catalog's FTS5 index: exhaustive BM25 within the row budget, and beyond it the
rare terms' candidates ranked by BM25 over every query term, scored exactly as FTS5 scores them."""

from __future__ import annotations

import pytest

from rag.index import lexical
from rag.index.catalog import Catalog
from rag.records import Chunk, Paper


@pytest.fixture
def catalog(tmp_path, corpus_papers):
    catalog = Catalog(tmp_path / "index.sqlite", create=True)
    with catalog.transaction() as tx:
        for p in corpus_papers[:300]:
            chunk = Chunk(f"{p.paper_id}:0", p.paper_id, p.title, 0, f"{p.title}\n{p.abstract}", p.abstract)
            tx.add_paper(Paper(p.paper_id, p.title, p.abstract), "h", [chunk], [lexical.term_document(chunk.text)])
    return catalog


QUERIES = ["which papers erase concepts in diffusion models?", "sparse autoencoders for language model features",
           "reinforcement learning from human feedback reward model", "vision transformer robustness"]


def exhaustive(catalog, query, n=50):
    return catalog.lexical(lexical.match_expression(query), n)


@pytest.mark.parametrize("query", QUERIES)
def test_rescoring_gives_fts5_scores(catalog, query):
    """Candidates found by the rarest term, ranked over all terms: the scores FTS5 gives the same chunks."""
    terms = lexical.query_terms(query)
    rows = {t: catalog.term_rows(t) for t in terms}
    present = [t for t in terms if rows[t]]
    rarest = min(present, key=rows.get)
    got = lexical.bm25_scores(catalog.lexical_candidates([rarest], 1000), present, rows, catalog.lexical_totals())
    truth = dict(exhaustive(catalog, query, 100000))
    assert got and all(truth[cid] == pytest.approx(score, rel=1e-9) for cid, score in got)
    assert catalog.lexical_totals()[0] == 300


def test_within_budget_keeps_the_rarest_terms_and_at_least_one():
    rows = {"model": 900, "diffus": 200, "eras": 30, "concept": 60, "absent": 0}
    terms = ["eras", "concept", "diffus", "model", "absent"]
    assert lexical.within_budget(terms, rows, budget=100) == ["eras", "concept"]
    assert lexical.within_budget(terms, rows, budget=10) == ["eras"]
    assert lexical.within_budget(terms, rows, budget=10_000) == ["eras", "concept", "diffus", "model"]


def test_search_over_budget_ranks_its_candidates_exactly(catalog, monkeypatch, make_settings):
    """With a budget well below the common terms' rows: every hit carries its exhaustive BM25 score, the best
    hit is exhaustive BM25's, and most of its top 10 is found."""
    from rag.index.reader import Index

    index = Index(make_settings(), catalog, store=None, meta={"counts": {"chunks": 300}})
    monkeypatch.setattr(lexical, "ROW_BUDGET", 60)
    overlaps = []
    for query in QUERIES:
        terms = lexical.query_terms(query)
        assert sum(catalog.term_rows(t) for t in terms) > 60  # over the budget: rescored candidates
        truth = dict(exhaustive(catalog, query, 100000))
        top = exhaustive(catalog, query, 10)
        got = index.lexical(query, 10)
        assert got[0][0] == top[0][0]
        assert all(truth[cid] == pytest.approx(score, rel=1e-9) for cid, score in got)
        overlaps.append(len({c for c, _ in got} & {c for c, _ in top}) / len(top))
    assert sum(overlaps) / len(overlaps) >= 0.7, overlaps


def test_no_dev_question_reaches_the_budget_on_the_vendored_corpus(tmp_path, corpus_papers):
    """So the dev-set figures are exhaustive BM25's: the row budget only acts on larger corpora."""
    import json

    from rag.corpus.chunk import Chunker
    from rag.settings import load_settings, repo_root

    settings = load_settings()
    chunker = Chunker(settings.chunk_size, settings.chunk_overlap, settings.tokenizer)
    catalog = Catalog(tmp_path / "dev.sqlite", create=True)
    with catalog.transaction() as tx:
        for p in corpus_papers:
            chunks = chunker.chunk(p)
            tx.add_paper(p, "h", chunks, [lexical.term_document(c.text) for c in chunks])
    questions = [json.loads(line)["question"] for line in
                 (repo_root() / "eval" / "datasets" / "dev.jsonl").read_text().splitlines() if line.strip()]
    rows = max(sum(catalog.term_rows(t) for t in lexical.query_terms(q)) for q in questions)
    assert 0 < rows <= lexical.ROW_BUDGET, rows


# ---------------------------------------------------------------- one tokenizer

def test_bm25_and_term_coverage_use_the_same_terms():
    from rag.text import content_terms

    for text in ["Text-to-image diffusion models", "A naïve Bayes baseline", "Café-scale RLHF, re-ranking"]:
        assert lexical.term_document(text).split() == content_terms(text)
        assert lexical.query_terms(text) == list(dict.fromkeys(content_terms(text)))
    assert content_terms("text-to-image") == content_terms("text to image") == ["text", "imag"]
    assert content_terms("naïve") == content_terms("NAIVE") == ["naiv"]


def test_a_change_of_terms_rebuilds_the_lexical_index(make_settings, small_corpus, monkeypatch):
    """An index whose lexical documents were made by another tokenizer is rebuilt, not searched."""
    from rag.index import ingest as ingest_module
    from rag.index.embedders import HashEmbedder
    from rag.index.reader import Index

    settings = make_settings(corpus=str(small_corpus))
    ingest_module.ingest(settings, embedder=HashEmbedder(), progress=False)
    monkeypatch.setattr(ingest_module, "TERMS_VERSION", ingest_module.TERMS_VERSION + 1)
    report = ingest_module.ingest(settings, embedder=HashEmbedder(), progress=False)
    assert report.rebuilt is True and report.embedded == 0  # vectors come from the cache
    assert Index.open(settings).info()["papers"] == 20
