"""Split abstracts into token-counted chunks: llama-index's SentenceSplitter with a tiktoken counter,
the paper's title carried into each chunk so every vector knows what paper it is about."""

from __future__ import annotations

from collections.abc import Iterable

from rag.records import Chunk, Paper
from rag.tokens import encoding


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
            )
            for no, body in enumerate(bodies)
        ]

    def chunk_all(self, papers: Iterable[Paper]) -> list[Chunk]:
        return [c for p in papers for c in self.chunk(p)]
