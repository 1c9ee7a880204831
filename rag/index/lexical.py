"""Lexical (BM25) search over chunks: the query syntax for SQLite FTS5 and bounded exact BM25.

The index itself is an FTS5 table in the catalog (rag.index.catalog): it adds and deletes chunks in place,
inside the same transaction that publishes a new index generation, so an update costs what changed,
not the corpus. Documents and queries are `rag.text.content_terms` (the one tokenizer), stored space-separated, so FTS5 only
splits on spaces.

A query's cost is the rows its terms match: FTS5 scores every matching row with bm25(), about a microsecond
each, so an exhaustive OR query holding "model" scores most of the corpus (214 ms p50 at 100k papers).
So when a query's terms match more than `ROW_BUDGET` rows, its rarest terms that fit the budget (the ones
carrying BM25's weight) pick the `RESCORE_POOL` best candidates, and those are ranked by BM25 over all the
query's terms, computed here exactly as FTS5 does (same IDF, k1, b and lengths). Latency is then bounded
by the budget instead of growing with the corpus; the price is that a chunk matching only the common terms,
or ranked low by the rare ones, can be missed. `rag bench --parts scale-ingest` prints the overlap with
exhaustive BM25's top 10 and top 50 at each corpus size. Small corpora (the 701 papers) never exceed the
budget, so their ranking is exhaustive BM25's.
"""

from __future__ import annotations

import math

from rag.text import content_terms, term_document

__all__ = ["term_document"]  # chunks are indexed as rag.text.term_document(chunk text)


ROW_BUDGET = 5_000  # rows FTS5 scores per query (beyond it, the rarest terms' candidates are rescored)
RESCORE_POOL = 300  # candidates ranked over all terms; top-10 overlap with exhaustive BM25: 0.98 at 10k, 0.62 at 100k
K1, B = 1.2, 0.75  # FTS5's bm25() constants


def query_terms(query: str) -> list[str]:
    """The query's distinct tokens, in order."""
    return list(dict.fromkeys(content_terms(query)))


def expression(terms: list[str]) -> str | None:
    """An FTS5 MATCH expression OR-ing `terms` (each quoted, so no token is read as syntax); None if none."""
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def match_expression(query: str) -> str | None:
    """The exhaustive MATCH expression of a query: every token (None when it has none)."""
    return expression(query_terms(query))


def within_budget(terms: list[str], rows: dict[str, int], budget: int | None = None) -> list[str]:
    """The terms to search with: rarest first while their rows (chunks containing them) fit `budget`
    (default `ROW_BUDGET`), and at least the rarest one; terms in no row are dropped (they match nothing).
    Query order is kept."""
    budget = ROW_BUDGET if budget is None else budget
    kept, total = set(), 0
    for term in sorted((t for t in terms if rows.get(t, 0) > 0), key=lambda t: rows[t]):
        if kept and total + rows[term] > budget:
            break
        kept.add(term)
        total += rows[term]
    return [t for t in terms if t in kept]



def bm25_scores(candidates: list[tuple[str, float, str, int, set[str]]], terms: list[str], rows: dict[str, int],
                totals: tuple[int, int]) -> list[tuple[str, float]]:
    """(chunk_id, score) best first: FTS5's bm25() over `terms` for each candidate (chunk_id, FTS5's score for
    the terms it was found by, document, length); the terms missing from its score are added here, computed
    as FTS5 does. `rows` holds each term's row count and `totals` the index's (rows, tokens)."""
    n_rows, n_tokens = totals
    avg_len = n_tokens / n_rows if n_rows and n_tokens else 1.0
    idf = {t: max(math.log((n_rows - rows[t] + 0.5) / (rows[t] + 0.5)), 1e-6) for t in terms if rows.get(t)}
    scored = []
    for chunk_id, found_score, document, length, found_by in candidates:
        norm = K1 * (1 - B + B * length / avg_len)
        words = document.split()
        score = found_score
        for term, weight in idf.items():
            if term not in found_by:
                tf = words.count(term)
                if tf:
                    score += weight * tf * (K1 + 1) / (tf + norm)
        scored.append((chunk_id, score))
    scored.sort(key=lambda cs: cs[1], reverse=True)
    return scored


def bounded_search(catalog, query: str, n: int, term_rows=None) -> list[tuple[str, float]]:
    """(chunk_id, BM25 score) best first over the catalog's FTS5 index: exhaustive while the query's terms fit
    `ROW_BUDGET`, else the rarest terms' best candidates ranked by BM25 over all the terms. `term_rows`: the
    catalog's row counts per term (a reader passes its cached lookup)."""
    term_rows = term_rows or catalog.term_rows
    terms = query_terms(query)
    rows = {t: term_rows(t) for t in terms}
    present = [t for t in terms if rows[t]]
    kept = within_budget(present, rows)
    if not kept:
        return []
    if len(kept) == len(present):  # within the budget: exhaustive BM25
        return catalog.lexical(expression(kept), n)
    candidates = catalog.lexical_candidates(kept, max(n, RESCORE_POOL))
    return bm25_scores(candidates, present, rows, catalog.lexical_totals())[:n]
