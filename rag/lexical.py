"""Lexical (BM25) search over chunks: the tokenisation, and the query syntax for SQLite FTS5.

The index itself is an FTS5 table in the catalog (rag.catalog): it adds and deletes chunks in place,
inside the same transaction that publishes a new index generation, so an update costs what changed,
not the corpus. Tokens are stemmed and stopworded here (the project's stopword list plus bm25s'
English list is a subset of it, so nothing changed when bm25s was replaced), so FTS5 only splits on spaces.
"""

from __future__ import annotations

import re
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # bm25s' default token pattern: words of two or more characters


def tokens(text: str) -> list[str]:
    """Stemmed lexical tokens of `text` (lower-cased, stopwords dropped)."""
    from rag.text import STOPWORDS, stemmer

    stem = stemmer()
    return [stem(w) for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS]


def document(text: str) -> str:
    """What a chunk is indexed as: its tokens, space-separated."""
    return " ".join(tokens(text))


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression OR-ing the query's tokens (each quoted, so no token is read as syntax);
    None when the query has no token."""
    terms = list(dict.fromkeys(tokens(query)))
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
