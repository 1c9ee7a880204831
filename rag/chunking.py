"""Split abstracts into token-counted chunks (llama-index's SentenceSplitter + tiktoken) and sentences."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from rag.records import Chunk, Paper


@lru_cache(maxsize=4)
def encoding(name: str = "cl100k_base"):
    """The tiktoken encoding; `rag._env` points tiktoken at llama-index's bundled cache first."""
    import tiktoken

    return tiktoken.get_encoding(name)


def count_tokens(text: str, name: str = "cl100k_base") -> int:
    return len(encoding(name).encode(text, disallowed_special=()))


class Chunker:
    """Title-carrying chunks small enough for MiniLM's 256-wordpiece window."""

    def __init__(self, chunk_size: int, chunk_overlap: int, tokenizer: str = "cl100k_base"):
        from llama_index.core.node_parser import SentenceSplitter

        enc = encoding(tokenizer)
        self.params = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "tokenizer": tokenizer}
        self._splitter = SentenceSplitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            tokenizer=lambda t: enc.encode(t, disallowed_special=()),
        )

    def chunk(self, paper: Paper) -> list[Chunk]:
        bodies = self._splitter.split_text(paper.abstract) or [paper.abstract]
        return [
            Chunk(
                chunk_id=f"{paper.paper_id}:{no}",
                paper_id=paper.paper_id,
                title=paper.title,
                chunk_no=no,
                text=f"{paper.title}\n{body}",
                body=body,
                sources=paper.sources,
            )
            for no, body in enumerate(bodies)
        ]

    def chunk_all(self, papers: Iterable[Paper]) -> list[Chunk]:
        return [c for p in papers for c in self.chunk(p)]


# Abbreviations that end with a period but do not end a sentence.
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|Fig|Eq|approx|resp|w\.r\.t|a\.k\.a)\.|\b[A-Z]\.)$")
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences as verbatim substrings of `text` (needed for quote-exact extractive answers)."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        candidate = text[start : match.start()].rstrip()
        if _ABBREV.search(candidate):
            continue
        if candidate:
            sentences.append(text[start : match.start()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
STOPWORDS = frozenset(
    "a an the of in on for to and or with by from at as is are was were be been being this that these those "
    "which what who whom whose how why when where do does did can could should would may might will shall "
    "paper papers work works study studies method methods approach approaches propose proposed use using used "
    "about any some there their them they it its into than then also between over under via not no "
    "many much there such but if i me my we our you your one ones show find list give tell".split()
)


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english").stemWord


def content_terms(text: str) -> list[str]:
    """Stemmed content words (stopwords and question filler removed), for lexical relevance."""
    stem = _stemmer()
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def matched_terms(query_terms: set[str], text_terms: set[str]) -> set[str]:
    """Query terms present in the text, exactly or as a stem prefix of at least 4 letters
    (the Porter stems of "erase" and "erasure" are "eras" and "erasur")."""
    found = query_terms & text_terms
    for q in query_terms - found:
        if len(q) >= 4 and any(t.startswith(q) for t in text_terms):
            found.add(q)
    return found
