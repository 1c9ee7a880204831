"""The Chroma vector store: embedded `PersistentClient` under the data dir, or a server via `RAG_CHROMA_URL`.

Vectors are always passed in (never Chroma's default embedding function, which downloads a model).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from rag.errors import StoreUnavailableError
from rag.files import files_signature
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
# HNSW's search breadth. Chroma's default (100) left dense results depending on float-level differences
# between equal models (one test-split question moved from rank 1 to 4 when the same vectors came back
# through an embedding server); 200 (4x the 50 candidates asked for) gives the same results as exact
# search (ef 1000) on both dev-set splits. Not tuned for quality: it removes approximation error.
EF_SEARCH = 200


def import_chromadb():
    """`import chromadb` (and its Rust client module) without the `overrides` package's signature checks.

    Hand-written because it measurably serves the one-shot CLI: chromadb decorates ~200 methods with
    `overrides.override`, which disassembles the caller's frame and compares signatures at import time
    (about a third of chromadb's import under cProfile; `rag bench --parts cli` prints what the imports cost
    now). The checks only guard
    chromadb's own development; the marker they set (`__override__`, read by EnforceOverrides) is kept.
    The library's functions are restored afterwards, so nobody else's imports are affected."""
    import sys

    if "chromadb.api.rust" in sys.modules:
        return sys.modules["chromadb"]
    import overrides

    def mark(method=None, **_options):
        if method is None:
            return mark
        method.__override__ = True
        return method

    saved = overrides.override, overrides.overrides
    overrides.override = overrides.overrides = mark
    try:
        import chromadb
        import chromadb.api.rust  # noqa: F401  (imported by PersistentClient on first use)
    finally:
        overrides.override, overrides.overrides = saved
    return chromadb


class ChromaStore:
    """Chunks with metadata (paper_id, title, chunk_no) and their vectors, and one vector per paper
    (the normalised mean of its chunks' vectors) in a second collection, `<collection>-papers`."""

    def __init__(self, data_dir: Path, chroma_url: str | None = None, collection: str = "papers"):
        self.url = chroma_url
        self.mode = "server" if chroma_url else "embedded"
        self.collection_name = collection
        self._data_dir = Path(data_dir)
        self._warming = None
        self._connect()

    def _connect(self) -> None:
        chromadb = import_chromadb()

        chroma_url, data_dir = self.url, self._data_dir
        self._loaded: set[str] = set()  # collections this client has queried (see _after_first_query)
        self._verified_at_open = False
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
                self._verified_at_open = _is_verified(Path(data_dir))  # before this client touches a file
                self._client = chromadb.PersistentClient(path=str(path), settings=_chroma_settings())
            self._col, self._papers = self._collections()
        except Exception as exc:  # chromadb raises many types for a dead server
            if chroma_url and _is_connection_error(exc):
                raise _unavailable(chroma_url, exc) from None
            if not chroma_url:
                forget_system(Path(data_dir) / "chroma")
            raise

    def warm_up(self) -> None:
        """Load the embedded store's vector indexes in a background thread: the first write to a collection
        otherwise loads its whole HNSW index first (1.8 s for both at 100k papers), and Chroma releases the
        GIL while loading, so the caller's own work (scanning the corpus) goes on meanwhile. Every other call
        waits for it to finish. A server loads its indexes itself: nothing to do."""
        if self.mode != "embedded" or self._warming is not None:
            return
        import threading

        def load() -> None:
            try:
                for col in (self._col, self._papers):
                    one = col.get(limit=1, include=["embeddings"])
                    if one["ids"]:
                        col.query(query_embeddings=[np.asarray(one["embeddings"][0], dtype=np.float32)], n_results=1,
                                  include=[])
            except Exception as exc:  # noqa: BLE001 - only a head start: the real call will report any problem
                log.debug("warming up the vector store: %s", exc)

        self._warming = threading.Thread(target=load, daemon=True, name="rag-store-warm-up")
        self._warming.start()

    def _wait_warm(self) -> None:
        if self._warming is not None:
            self._warming.join()
            self._warming = None

    def close(self) -> None:
        """Release the client (embedded: the last client of a path frees its in-memory index)."""
        self._wait_warm()
        try:
            self._client.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead server connection is not an error
            log.debug("closing the Chroma client: %s", exc)

    def reopen(self) -> None:
        """See what another process wrote: an embedded client keeps its vector index in memory and does not
        notice other processes' writes, so the client is closed and opened again (after a new generation)."""
        self.close()
        self._connect()

    def _after_first_query(self, which: str) -> None:
        """Record the native files as verified again after this process loaded them. Chroma rewrites a
        collection's HNSW files when a reader first queries it while they were never persisted in full (the
        paper vectors below its sync threshold, 1,000), so the verified mark went stale at every query and
        the next process paid probe_embedded's subprocess (a second interpreter importing chromadb, most of
        a one-shot `rag search`'s wall time). Files that were verified when this client opened them and
        were then rewritten by it are as good as the ones it loaded."""
        if which in self._loaded:
            return
        self._loaded.add(which)
        if self.mode == "embedded" and self._verified_at_open:
            remember_verified(self._data_dir)

    def _collections(self):
        def get(name):
            col = self._client.get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine", "ef_search": EF_SEARCH}}
            )
            try:  # collections made before EF_SEARCH was set keep Chroma's default (100) until modified
                if (col.configuration_json or {}).get("hnsw", {}).get("ef_search", EF_SEARCH) < EF_SEARCH:
                    col.modify(configuration={"hnsw": {"ef_search": EF_SEARCH}})
            except Exception as exc:  # noqa: BLE001 - an old server without the field: its default stays
                log.info("cannot raise ef_search of %s: %s", name, exc)
            return col

        return get(self.collection_name), get(self.collection_name + PAPERS_SUFFIX)

    def _call(self, fn, *args, **kwargs):
        self._wait_warm()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if self.url and _is_connection_error(exc):
                raise _unavailable(self.url, exc) from None
            raise

    def count(self) -> int:
        n = self._call(self._col.count)
        self._after_first_query("chunks")  # counting loads the collection (and may rewrite its files)
        return n

    def max_batch(self) -> int:
        self._wait_warm()
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

    def delete_papers(self, paper_ids: Sequence[str], chunk_ids: Mapping[str, Sequence[str]] | None = None) -> None:
        """Drop these papers' chunk and paper vectors. `chunk_ids`: each paper's chunk ids where known (the
        catalog's); the others are found by a metadata filter, which costs a scan (0.8 s at 100k papers)."""
        ids = list(paper_ids)
        known = chunk_ids or {}
        by_id = [cid for pid in ids if pid in known for cid in known[pid]]
        filtered = [pid for pid in ids if pid not in known]
        for i in range(0, len(by_id), 1000):
            self._call(self._col.delete, ids=by_id[i : i + 1000])
        for i in range(0, len(filtered), 500):
            self._call(self._col.delete, where={"paper_id": {"$in": filtered[i : i + 500]}})
        for i in range(0, len(ids), 1000):
            self._call(self._papers.delete, ids=ids[i : i + 1000])

    def delete_ids(self, chunk_ids: Sequence[str], paper_ids: Sequence[str]) -> None:
        """Drop these chunk vectors and these paper vectors (by id: no scan)."""
        for col, ids in ((self._col, list(chunk_ids)), (self._papers, list(paper_ids))):
            for i in range(0, len(ids), 1000):
                self._call(col.delete, ids=ids[i : i + 1000])

    def chunk_ids_of(self, paper_ids: Sequence[str]) -> set[str]:
        """The ids of every chunk vector of these papers (a metadata filter: a scan)."""
        out: set[str] = set()
        ids = list(paper_ids)
        for i in range(0, len(ids), 500):
            got = self._call(self._col.get, where={"paper_id": {"$in": ids[i : i + 500]}}, include=[])
            out.update(got["ids"])
        return out

    def upsert_paper_vectors(self, paper_ids: Sequence[str], vectors: np.ndarray) -> None:
        step = self.max_batch()
        for i in range(0, len(paper_ids), step):
            self._call(self._papers.upsert, ids=list(paper_ids[i : i + step]),
                       embeddings=np.asarray(vectors[i : i + step], dtype=np.float32))

    def nearest_papers(self, vector: np.ndarray, n: int) -> list[PaperVector]:
        """The papers whose vectors are nearest to `vector`, best first, with their vectors."""
        res = self._call(self._papers.query, query_embeddings=[np.asarray(vector, dtype=np.float32)],
                         n_results=n, include=["embeddings", "distances"])
        self._after_first_query("papers")
        embeddings = res["embeddings"][0] if res.get("embeddings") is not None else []
        return [PaperVector(pid, 1.0 - float(dist), np.asarray(vec, dtype=np.float32))
                for pid, dist, vec in zip(res["ids"][0], res["distances"][0], embeddings)]

    def all_paper_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every paper vector: (paper ids, float32 matrix with one row per id), read in pages."""
        ids: list[str] = []
        rows: list[np.ndarray] = []
        offset, step = 0, 5000
        while True:
            got = self._call(self._papers.get, include=["embeddings"], limit=step, offset=offset)
            ids.extend(got["ids"])
            if len(got["ids"]):
                rows.append(np.asarray(got["embeddings"], dtype=np.float32))
            if len(got["ids"]) < step:
                break
            offset += step
        self._after_first_query("papers")  # reading them loads (and may rewrite) the collection's files too
        return ids, (np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32))

    def paper_vectors(self, paper_ids: Sequence[str]) -> dict[str, np.ndarray]:
        got = self._call(self._papers.get, ids=list(paper_ids), include=["embeddings"])
        return {pid: np.asarray(v, dtype=np.float32) for pid, v in zip(got["ids"], got["embeddings"])}

    def count_paper_vectors(self) -> int:
        n = self._call(self._papers.count)
        self._after_first_query("papers")  # counting loads the collection (and may rewrite its files)
        return n

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

    def nearest(self, vector: np.ndarray, n: int) -> list[tuple[str, float]]:
        """(chunk_id, similarity) of the `n` chunks nearest to `vector`, best first: ids and distances only,
        no documents, metadata or vectors (fetching the documents of 50 chunks costs more than the search).
        A chunk deleted by another process since this client loaded its index may be among them: `chunks`
        will not find it."""
        res = self._call(self._col.query, query_embeddings=[np.asarray(vector, dtype=np.float32)], n_results=n,
                         include=["distances"])
        return [(cid, 1.0 - float(dist)) for cid, dist in zip(res["ids"][0], res["distances"][0])]

    def chunks(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> dict[str, tuple[str, np.ndarray | None]]:
        """{chunk_id: (body, vector or None)} of the chunks that exist (deleted ones are left out)."""
        if not chunk_ids:
            return {}
        got = self._call(self._col.get, ids=list(chunk_ids),
                         include=["documents"] + (["embeddings"] if with_vectors else []))
        vectors = got["embeddings"] if with_vectors else [None] * len(got["ids"])
        return {cid: (doc, None if vec is None else np.asarray(vec, dtype=np.float32))
                for cid, doc, vec in zip(got["ids"], got["documents"], vectors)}

    def query(self, vector: np.ndarray, n: int, with_vectors: bool = False) -> list[DenseHit]:
        """The `n` chunks nearest to `vector`, best first (their vectors too, if asked)."""
        include = ["metadatas", "documents", "distances"] + (["embeddings"] if with_vectors else [])
        res = self._call(
            self._col.query,
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=n,
            include=include,
        )
        self._after_first_query("chunks")
        vectors = res["embeddings"][0] if with_vectors else [None] * len(res["ids"][0])
        hits = []
        for cid, meta, doc, dist, vec in zip(
            res["ids"][0], res["metadatas"][0], res["documents"][0], res["distances"][0], vectors
        ):
            if meta is None:  # deleted by an ingest in another process since this client loaded its index
                continue
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


def forget_system(path: Path) -> None:
    """Drop chromadb's process-wide cache entry for an embedded path whose client failed to open.

    chromadb keeps one System per path for the life of the process, even a half-started one, so after the
    damaged folder is replaced a new client would get the broken System back. (Private API: there is no
    public way to forget a path.)"""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient._identifier_to_system.pop(str(path), None)
        SharedSystemClient._identifier_to_refcount.pop(str(path), None)
    except (ImportError, AttributeError):
        pass


def _is_connection_error(exc: Exception) -> bool:
    import httpx

    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    text = f"{exc.__class__.__name__} {exc}".lower()
    return any(s in text for s in ("connect", "timed out", "timeout", "could not connect", "refused"))


# ------------------------------------------------------------------------------ damaged files

def _is_verified(data_dir: Path) -> bool:
    """The native files are as the seal records them (a stat of each: no file is read)."""
    from rag.index.integrity import store_unchanged

    return store_unchanged(data_dir)


def remember_verified(data_dir: Path) -> None:
    """Record the store's files as good after this process checked them and its client rewrote some."""
    from rag.index.integrity import remember_store_files

    remember_store_files(data_dir)


COUNTS = "chroma.counts"


def _files_signature(chroma_dir: Path) -> str:
    """Every file of the embedded store."""
    return files_signature((p for p in sorted(chroma_dir.rglob("*")) if p.is_file()), chroma_dir)


def remember_counts(data_dir: Path, chunks: int, papers: int) -> None:
    """Record the vector counts of the embedded store an ingest just closed, with its files' signature."""
    chroma_dir = Path(data_dir) / "chroma"
    try:
        (Path(data_dir) / COUNTS).write_text(json.dumps(
            {"chunks": chunks, "papers": papers, "files": _files_signature(chroma_dir)}))
    except OSError:
        pass


def recorded_counts(data_dir: Path) -> tuple[int, int] | None:
    """(chunk vectors, paper vectors) as recorded by the last ingest, if not one file of the store changed
    since (any change, a reader's included, means counting again); else None."""
    try:
        got = json.loads((Path(data_dir) / COUNTS).read_text())
        if got["files"] == _files_signature(Path(data_dir) / "chroma"):
            return int(got["chunks"]), int(got["papers"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def probe_embedded(data_dir: Path, collection: str, thorough: bool = False, published=None) -> str | None:
    """None when the embedded store is as published, or answers its canary queries as it did then; else what
    went wrong (see rag.index.integrity: a child process runs the test queries, so a damaged file that
    crashes the native library is reported instead of killing this process)."""
    from rag.index.integrity import check_store

    if not (Path(data_dir) / "chroma").is_dir():
        return None
    return check_store(data_dir, collection, thorough=thorough, published=published)
