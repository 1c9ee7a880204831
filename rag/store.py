"""The Chroma vector store: embedded `PersistentClient` under the data dir, or a server via `RAG_CHROMA_URL`.

Vectors are always passed in (never Chroma's default embedding function, which downloads a model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from rag.errors import StoreUnavailableError
from rag.records import Chunk

log = logging.getLogger(__name__)
HTTP_TIMEOUT_S = 30.0
HTTP_CONNECT_TIMEOUT_S = 5.0


@dataclass
class DenseHit:
    chunk_id: str
    paper_id: str
    similarity: float
    body: str
    vector: np.ndarray | None = None


def _chroma_settings():
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def _unavailable(url: str, exc: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"cannot reach the Chroma server at {url} ({exc.__class__.__name__}): start it with "
        f"`chroma run --path DIR --host 127.0.0.1 --port PORT`, or unset RAG_CHROMA_URL for embedded Chroma"
    )


@dataclass
class PaperVector:
    paper_id: str
    similarity: float
    vector: np.ndarray


PAPERS_SUFFIX = "-papers"


class ChromaStore:
    """Chunks with metadata (paper_id, title, chunk_no) and their vectors, and one vector per paper
    (the normalised mean of its chunks' vectors) in a second collection, `<collection>-papers`."""

    def __init__(self, data_dir: Path, chroma_url: str | None = None, collection: str = "papers"):
        import chromadb

        self.url = chroma_url
        self.mode = "server" if chroma_url else "embedded"
        self.collection_name = collection
        try:
            if chroma_url:
                import httpx

                parsed = urlparse(chroma_url)
                self._client = chromadb.HttpClient(
                    host=parsed.hostname,
                    port=parsed.port or (443 if parsed.scheme == "https" else 80),
                    ssl=parsed.scheme == "https",
                    settings=_chroma_settings(),
                )
                # Chroma's HTTP client waits forever by default; bound every call.
                self._client._server._session.timeout = httpx.Timeout(
                    HTTP_TIMEOUT_S, connect=HTTP_CONNECT_TIMEOUT_S
                )
            else:
                path = Path(data_dir) / "chroma"
                path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(path), settings=_chroma_settings())
            self._col, self._papers = self._collections()
        except Exception as exc:  # chromadb raises many types for a dead server
            if chroma_url and _is_connection_error(exc):
                raise _unavailable(chroma_url, exc) from None
            raise

    def _collections(self):
        def get(name):
            return self._client.get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
            )

        return get(self.collection_name), get(self.collection_name + PAPERS_SUFFIX)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if self.url and _is_connection_error(exc):
                raise _unavailable(self.url, exc) from None
            raise

    def count(self) -> int:
        return self._call(self._col.count)

    def max_batch(self) -> int:
        try:
            return max(1, min(5000, int(self._client.get_max_batch_size())))
        except Exception:
            return 1000

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        step = self.max_batch()
        for i in range(0, len(chunks), step):
            part = chunks[i : i + step]
            self._call(
                self._col.upsert,
                ids=[c.chunk_id for c in part],
                embeddings=np.asarray(vectors[i : i + step], dtype=np.float32),
                documents=[c.body for c in part],
                metadatas=[
                    {
                        "paper_id": c.paper_id,
                        "title": c.title,
                        "chunk_no": c.chunk_no,
                    }
                    for c in part
                ],
            )

    def delete_papers(self, paper_ids: Sequence[str]) -> None:
        ids = list(paper_ids)
        for i in range(0, len(ids), 500):
            self._call(self._col.delete, where={"paper_id": {"$in": ids[i : i + 500]}})
            self._call(self._papers.delete, ids=ids[i : i + 500])

    def upsert_paper_vectors(self, paper_ids: Sequence[str], vectors: np.ndarray) -> None:
        step = self.max_batch()
        for i in range(0, len(paper_ids), step):
            self._call(self._papers.upsert, ids=list(paper_ids[i : i + step]),
                       embeddings=np.asarray(vectors[i : i + step], dtype=np.float32))

    def nearest_papers(self, vector: np.ndarray, n: int) -> list[PaperVector]:
        """The papers whose vectors are nearest to `vector`, best first, with their vectors."""
        res = self._call(self._papers.query, query_embeddings=[np.asarray(vector, dtype=np.float32)],
                         n_results=n, include=["embeddings", "distances"])
        embeddings = res["embeddings"][0] if res.get("embeddings") is not None else []
        return [PaperVector(pid, 1.0 - float(dist), np.asarray(vec, dtype=np.float32))
                for pid, dist, vec in zip(res["ids"][0], res["distances"][0], embeddings)]

    def paper_vectors(self, paper_ids: Sequence[str]) -> dict[str, np.ndarray]:
        got = self._call(self._papers.get, ids=list(paper_ids), include=["embeddings"])
        return {pid: np.asarray(v, dtype=np.float32) for pid, v in zip(got["ids"], got["embeddings"])}

    def count_paper_vectors(self) -> int:
        return self._call(self._papers.count)

    def paper_ids(self) -> set[str]:
        """Every paper with at least one chunk in the store (for integrity checks of the index)."""
        out: set[str] = set()
        offset, step = 0, 5000
        while True:
            got = self._call(self._col.get, include=["metadatas"], limit=step, offset=offset)
            metas = got["metadatas"] or []
            out.update(m["paper_id"] for m in metas)
            if len(metas) < step:
                return out
            offset += step

    def query(self, vector: np.ndarray, n: int, with_vectors: bool = False) -> list[DenseHit]:
        """The `n` chunks nearest to `vector`, best first (their vectors too, if asked)."""
        include = ["metadatas", "documents", "distances"] + (["embeddings"] if with_vectors else [])
        res = self._call(
            self._col.query,
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=n,
            include=include,
        )
        vectors = res["embeddings"][0] if with_vectors else [None] * len(res["ids"][0])
        hits = []
        for cid, meta, doc, dist, vec in zip(
            res["ids"][0], res["metadatas"][0], res["documents"][0], res["distances"][0], vectors
        ):
            hits.append(DenseHit(cid, meta["paper_id"], 1.0 - float(dist), doc,
                                 None if vec is None else np.asarray(vec, dtype=np.float32)))
        return hits

    def drop(self) -> None:
        """Delete the collections (used by --rebuild) and recreate them empty."""
        for name in (self.collection_name, self.collection_name + PAPERS_SUFFIX):
            try:
                self._call(self._client.delete_collection, name)
            except Exception as exc:  # noqa: BLE001 - absent already: nothing to drop
                if isinstance(exc, StoreUnavailableError):
                    raise
        self._col, self._papers = self._call(self._collections)


def _is_connection_error(exc: Exception) -> bool:
    import httpx

    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    text = f"{exc.__class__.__name__} {exc}".lower()
    return any(s in text for s in ("connect", "timed out", "timeout", "could not connect", "refused"))
