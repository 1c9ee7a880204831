"""The index on disk and its read side.

An index in `DATA_DIR` is: `manifest.json` (what was built, from which corpus, with which model),
`papers.jsonl` (the paper records), `term_df.json` (document frequencies of content terms), the
lexical index (`bm25/`) and the Chroma collection (embedded under `chroma/`, or on a server).
`rag.ingest` writes it; `Index.open` reads it, and everything else (retriever, answerer, UI, eval,
MCP) goes through `Index` methods.
"""

from __future__ import annotations

import json
import logging
import math
import os
from functools import lru_cache
from pathlib import Path

from rag.errors import ConfigError, IndexCorruptError, IndexMissingError, RagError
from rag.records import Paper
from rag.text import content_terms

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never a partial one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_manifest(data_dir: Path) -> dict | None:
    """The manifest, None when there is none, IndexCorruptError when it is unreadable."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
            raise ValueError("unknown manifest version")
        return manifest
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"index manifest {path} is unreadable ({exc}): run `rag ingest --rebuild`") from None


def indexed_corpus(settings, manifest: dict | None) -> list[Path]:
    """RAG_CORPUS when set; else the corpus this index was built from; else the default corpus."""
    if settings.corpus:
        return settings.corpus_paths
    if manifest and manifest.get("corpus_paths"):
        return [Path(p) for p in manifest["corpus_paths"]]
    return settings.corpus_paths


def check_manifest(settings, manifest: dict | None) -> dict:
    """The manifest of a complete index for these settings, or an error saying how to get one."""
    data_dir = Path(settings.data_dir)
    if manifest is None:
        raise IndexMissingError(f"no index in {data_dir.resolve()}: build it with `rag ingest` (or set RAG_DATA_DIR)")
    if not manifest.get("complete"):
        raise IndexMissingError(
            f"the index in {data_dir.resolve()} is incomplete (an ingest was interrupted): run `rag ingest` to finish it"
        )
    if manifest.get("params", {}).get("chroma_url") != settings.chroma_url:
        raise ConfigError(
            f"the index in {data_dir} was built for Chroma at {manifest['params'].get('chroma_url') or 'embedded'}, "
            f"not {settings.chroma_url or 'embedded'}: run `rag ingest` with the current RAG_CHROMA_URL"
        )
    return manifest


def stale_reason(settings, manifest: dict) -> str | None:
    """Why the index no longer mirrors its corpus, or None (also None when the corpus is not here)."""
    from rag.corpus import corpus_files, corpus_fingerprint

    try:
        files = corpus_files(indexed_corpus(settings, manifest))
        if corpus_fingerprint(files) != manifest.get("corpus_fingerprint"):
            return "the corpus changed since the last ingest: run `rag ingest` to update the index"
    except RagError:
        return None  # corpus not present here: the index stands alone
    return None


def load_papers(data_dir: Path) -> dict[str, Paper]:
    path = Path(data_dir) / "papers.jsonl"
    try:
        with path.open() as fh:
            return {p.paper_id: p for p in (Paper.from_dict(json.loads(line)) for line in fh)}
    except (OSError, ValueError, TypeError) as exc:
        raise IndexCorruptError(f"{path} is unreadable ({exc.__class__.__name__}): run `rag ingest --rebuild`") from None


def load_term_df(data_dir: Path) -> tuple[int, dict[str, int]]:
    path = Path(data_dir) / "term_df.json"
    try:
        data = json.loads(path.read_text())
        return int(data["n"]), data["df"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"{path} is unreadable ({exc.__class__.__name__}): run `rag ingest --rebuild`") from None


class Index:
    """Read side of an index: papers, term statistics, the dense store and the lexical index."""

    def __init__(self, *, manifest: dict, papers: dict[str, Paper], n_docs: int, df: dict[str, int],
                 store, lexical, stale: str | None = None):
        self._manifest = manifest
        self._papers = papers
        self._n_docs = n_docs
        self._df = df
        self._store = store
        self._lexical = lexical
        self.stale = stale
        self._terms = lru_cache(maxsize=8192)(self._paper_terms)

    @classmethod
    def open(cls, settings, store=None, check_stale: bool = True) -> "Index":
        """Open the index in `settings.data_dir`; one clear error if it is missing, partial or unreadable."""
        from rag.lexical import LexicalIndex
        from rag.store import ChromaStore

        data_dir = Path(settings.data_dir)
        manifest = check_manifest(settings, read_manifest(data_dir))
        stale = stale_reason(settings, manifest) if check_stale else None
        if stale:
            log.warning("%s", stale)
        papers = load_papers(data_dir)
        n_docs, df = load_term_df(data_dir)
        lexical = LexicalIndex.load(data_dir / "bm25")
        store = store or ChromaStore(data_dir, settings.chroma_url, settings.collection)
        return cls(manifest=manifest, papers=papers, n_docs=n_docs, df=df, store=store, lexical=lexical, stale=stale)

    # -- papers ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._papers)

    def __contains__(self, paper_id: object) -> bool:
        return paper_id in self._papers

    def get(self, paper_id: str) -> Paper | None:
        return self._papers.get(paper_id)

    def paper(self, paper_id: str) -> Paper:
        """The paper, or KeyError."""
        return self._papers[paper_id]

    __getitem__ = paper

    def papers(self) -> list[Paper]:
        return list(self._papers.values())

    def paper_terms(self, paper_id: str) -> set[str]:
        """Content terms of the paper's title and abstract (cached)."""
        return self._terms(paper_id)

    def _paper_terms(self, paper_id: str) -> frozenset[str]:
        paper = self._papers.get(paper_id)
        return frozenset(content_terms(f"{paper.title} {paper.abstract}")) if paper else frozenset()

    # -- term statistics -------------------------------------------------------------------

    def df(self, term: str) -> int:
        """Papers whose title or abstract contains the content term (see rag.text.content_terms)."""
        return int(self._df.get(term, 0))

    def idf(self, term: str) -> float:
        return math.log(1 + self._n_docs / (self._df.get(term, 0) + 0.5))

    # -- search ----------------------------------------------------------------------------

    def dense(self, vector, n: int):
        """Chunks nearest to `vector`, best first (rag.store.DenseHit: chunk_id, paper_id, similarity, body)."""
        return self._store.query(vector, n)

    def dense_with_vectors(self, vector, n: int):
        """Like `dense`, with each chunk's vector (to score it against another query vector)."""
        return self._store.query(vector, n, with_vectors=True)

    def nearest_papers(self, vector, n: int):
        """Papers whose paper vector (mean of their chunks) is nearest, best first (rag.store.PaperVector)."""
        return self._store.nearest_papers(vector, n)

    def paper_vectors(self, paper_ids) -> dict:
        return self._store.paper_vectors(paper_ids)

    def lexical(self, query: str, n: int) -> list[tuple[str, float]]:
        """(chunk_id, BM25 score) best first."""
        return self._lexical.query(query, n)

    # -- about -----------------------------------------------------------------------------

    @property
    def embedding_model(self) -> str:
        return self._manifest["params"]["embedding_model"]

    @property
    def chroma_mode(self) -> str:
        return self._store.mode

    def info(self) -> dict:
        """What the UI status line, `rag doctor` and eval reports show about the index."""
        counts = self._manifest.get("counts", {})
        return {
            "papers": counts.get("papers", len(self._papers)),
            "chunks": counts.get("chunks"),
            "chroma": self._store.mode,
            "embedding_model": self.embedding_model,
            "embedding": self._manifest.get("embedding"),
            "index_params": self._manifest.get("params"),
            "corpus_fingerprint": self._manifest.get("corpus_fingerprint"),
            "updated_at": self._manifest.get("updated_at"),
            "stale": self.stale,
        }
