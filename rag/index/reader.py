"""The index on disk and its read side.

An index in `DATA_DIR` is the catalog (`index.sqlite`: paper records, term statistics, the lexical
FTS5 index and the published generation's metadata, rag.index.catalog) and the Chroma collections (chunk
vectors and paper vectors; embedded under `chroma/`, or on a server). `rag.index.ingest` writes it;
`Index.open` reads it, checks its files against the seal of the last publication (rag.index.integrity) and
that its parts agree, and `Index.refresh()` (called per request) switches to a newly published generation.
Searches keep to the published generation's chunk and paper ids (an update writes its vectors beside them
before it publishes). Everything else (retriever, answerer, UI, eval, MCP) goes through
`Index` methods.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
from functools import lru_cache
from pathlib import Path

from rag.errors import ConfigError, IndexCorruptError, IndexMissingError, RagError
from rag.index.catalog import CATALOG, SCHEMA_VERSION, Catalog
from rag.records import Paper
from rag.text import content_terms

log = logging.getLogger(__name__)
# Up to this many papers, their vectors are held in memory (1.1 MB at 701 papers, 31 MB at 20k) and the
# nearest paper is an exact numpy product (tens of microseconds at 701) instead of a Chroma query (~1-3 ms).
# Above it, Chroma's HNSW index answers: a full scan in numpy grows linearly and the matrix with it.
PAPER_VECTORS_IN_MEMORY = 20_000


def indexed_corpus(settings, meta: dict | None) -> list[Path]:
    """RAG_CORPUS when set; else the corpus this index was built from; else the default corpus."""
    if settings.corpus:
        return settings.corpus_paths
    if meta and meta.get("corpus_paths"):
        return [Path(p) for p in meta["corpus_paths"]]
    return settings.corpus_paths


def check_meta(settings, meta: dict) -> dict:
    """The metadata of a complete index for these settings, or an error saying how to get one."""
    data_dir = Path(settings.data_dir)
    if not meta or not meta.get("complete"):
        raise IndexMissingError(
            f"no complete index in {data_dir.resolve()}: build it with `rag ingest` (or set RAG_DATA_DIR)"
        )
    if meta.get("version") != SCHEMA_VERSION:
        raise IndexMissingError(f"the index in {data_dir.resolve()} was built by another version: run `rag ingest`")
    if meta.get("params", {}).get("chroma_url") != settings.chroma_url:
        raise ConfigError(
            f"the index in {data_dir} was built for Chroma at {meta['params'].get('chroma_url') or 'embedded'}, "
            f"not {settings.chroma_url or 'embedded'}: run `rag ingest` with the current RAG_CHROMA_URL"
        )
    return meta


def stale_reason(settings, meta: dict) -> str | None:
    """Why the index no longer mirrors its corpus, or None (also None when the corpus is not here)."""
    from rag.corpus.parse import corpus_files, corpus_fingerprint

    try:
        files = corpus_files(indexed_corpus(settings, meta))
        if corpus_fingerprint(files) != meta.get("corpus_fingerprint"):
            return "the corpus changed since the last ingest: run `rag ingest` to update the index"
    except RagError:
        return None  # corpus not present here: the index stands alone
    return None


def open_catalog(data_dir: Path) -> Catalog:
    path = Path(data_dir) / CATALOG
    if not path.is_file():
        if (Path(data_dir) / "manifest.json").is_file():
            raise IndexMissingError(
                f"the index in {Path(data_dir).resolve()} was built by an older version: run `rag ingest` to upgrade it "
                "(stored vectors are reused)"
            )
        raise IndexMissingError(f"no index in {Path(data_dir).resolve()}: build it with `rag ingest` (or set RAG_DATA_DIR)")
    return Catalog(path)


def update_pending(data_dir: Path) -> bool:
    """An ingest is running, or one stopped before finishing: the store may hold vectors beyond the published
    generation (written before its publication, or not yet deleted after it), which readers skip."""
    from rag.index.layout import GARBAGE, STATE, ingest_running

    data_dir = Path(data_dir)
    return (data_dir / STATE).exists() or (data_dir / GARBAGE).exists() or ingest_running(data_dir)


def check_parts(catalog: Catalog, store, meta: dict | None, data_dir: Path) -> list[str]:
    """What disagrees between the published counts, the catalog and the vector store ([] when all agree).
    (`meta` is not used: the counts are compared with the metadata read together with them.)

    The catalog's metadata and counts are read in one transaction (one generation, even while an ingest
    publishes); the store may hold more vectors than published while an update is pending (copy-on-write)."""
    meta, rows = catalog.snapshot()
    counts = meta.get("counts", {})
    pending = update_pending(data_dir)
    found = {
        "paper records": rows["papers"],
        "chunk records": rows["chunks"],
        "lexical documents": rows["lexical"],
        "chunk vectors": store.count(),
        "paper vectors": store.count_paper_vectors(),
    }
    want = {"paper records": counts.get("papers"), "chunk records": counts.get("chunks"),
            "lexical documents": counts.get("chunks"), "chunk vectors": counts.get("chunks"),
            "paper vectors": counts.get("papers")}
    at_least = {"chunk vectors", "paper vectors"} if pending else set()
    return [f"{name}: {found[name]:,} of {'?' if want[name] is None else format(want[name], ',')}" for name in found
            if want[name] is None or (found[name] < want[name] if name in at_least else found[name] != want[name])]


def private_store_copy(data_dir: Path) -> Path:
    """A copy of a read-only data dir's embedded store (and its seal) in a private temp dir: Chroma's embedded
    client writes to its files even to read them. Removed when the index is closed."""
    import tempfile

    from rag.index.integrity import SEAL

    scratch = Path(tempfile.mkdtemp(prefix="rag-read-only-"))
    try:
        shutil.copytree(data_dir / "chroma", scratch / "chroma")
        if (data_dir / SEAL).is_file():
            shutil.copy2(data_dir / SEAL, scratch / SEAL)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise IndexCorruptError(f"the data dir {data_dir} is read-only and its vector store cannot be copied to "
                                f"{scratch.parent} ({exc.strerror}): free space there or set TMPDIR") from None
    log.info("the data dir %s is read-only: serving from a copy of its vector store in %s", data_dir, scratch)
    return scratch


class Index:
    """Read side of an index: papers, term statistics, the dense store and the lexical index."""

    def __init__(self, settings, catalog: Catalog, store, meta: dict, stale: str | None = None):
        self._settings = settings
        self._catalog = catalog
        self._store = store
        self._meta = meta
        self._lock = threading.RLock()
        self.stale = stale
        self._cached_paper = lru_cache(maxsize=16384)(self._catalog.paper)
        self._terms = lru_cache(maxsize=16384)(self._paper_terms)
        self._df = lru_cache(maxsize=65536)(self._catalog.df)
        self._term_rows = lru_cache(maxsize=65536)(self._catalog.term_rows)
        self._paper_matrix: tuple[list[str], object] | None = None  # (ids, vectors), loaded on first use

    @classmethod
    def open(cls, settings, store=None, check_stale: bool = True) -> "Index":
        """Open the index in `settings.data_dir`; one clear error if it is missing, partial, damaged or
        inconsistent (the error names the fix)."""
        from rag.index.chroma_store import ChromaStore, probe_embedded
        from rag.index.integrity import check_catalog, published_filter
        from rag.index.layout import disk_full, ingest_running, read_only_fs

        data_dir = Path(settings.data_dir)
        catalog = open_catalog(data_dir)
        scratch = None
        try:
            if not ingest_running(data_dir):  # an ingest changes the file: it checks and records it itself
                problem = check_catalog(data_dir)
                if problem:
                    raise IndexCorruptError(f"{problem}: run `rag ingest` to repair it (cached vectors are reused)")
            meta = check_meta(settings, catalog.meta())
            store_dir = data_dir
            if settings.chroma_url is None and store is None:
                if not (data_dir / "chroma").is_dir():
                    raise IndexCorruptError(f"the vector store {data_dir / 'chroma'} is missing: run `rag ingest` to "
                                            "rebuild it (cached vectors are reused)")
                if read_only_fs(data_dir):
                    scratch = store_dir = private_store_copy(data_dir)
                problem = probe_embedded(store_dir, settings.collection, published=published_filter(catalog))
                if problem and disk_full(problem) and scratch is None:
                    # Chroma's embedded client writes even to read: on a full disk, serve from a copy elsewhere
                    scratch = store_dir = private_store_copy(data_dir)
                    problem = probe_embedded(store_dir, settings.collection, published=published_filter(catalog))
                if problem and disk_full(problem):
                    raise ConfigError(f"no space left on the device holding {data_dir} ({problem}): free some space "
                                      "(the index is not damaged)")
                if problem:
                    raise IndexCorruptError(f"{problem}: run `rag ingest` to repair it (cached vectors are reused)")
            if store is None:
                try:
                    try:
                        store = ChromaStore(store_dir, settings.chroma_url, settings.collection)
                    except Exception as exc:  # noqa: BLE001 - chromadb raises many kinds
                        if settings.chroma_url is not None or scratch is not None or not disk_full(str(exc)):
                            raise
                        # the files were sound (checked above), but Chroma writes when it opens them: on a full
                        # disk, serve from a copy elsewhere, as for a full disk found by the probe
                        scratch = store_dir = private_store_copy(data_dir)
                        store = ChromaStore(store_dir, settings.chroma_url, settings.collection)
                except RagError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a damaged embedded store: chromadb raises many kinds
                    if disk_full(str(exc)):
                        raise ConfigError(f"no space left on the device holding {data_dir} ({str(exc)[:160]}): free "
                                          "some space (the index is not damaged)") from None
                    raise IndexCorruptError(
                        f"the vector store in {data_dir / 'chroma'} cannot be read ({exc.__class__.__name__}: "
                        f"{str(exc)[:160]}): run `rag ingest` to repair it (cached vectors are reused)"
                    ) from None
            for attempt in (1, 2):  # once more if a generation was published while the parts were counted
                meta = check_meta(settings, catalog.meta())
                wrong = check_parts(catalog, store, meta, data_dir)
                if not wrong and catalog.generation() == meta.get("generation"):
                    break
                if catalog.generation() != meta.get("generation") and attempt == 1:
                    continue
                if wrong:
                    raise IndexCorruptError(
                        f"the index in {data_dir} is inconsistent ({'; '.join(wrong)}): run `rag ingest` to repair it"
                    )
        except BaseException:
            catalog.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        stale = stale_reason(settings, meta) if check_stale else None
        if stale:
            log.warning("%s", stale)
        index = cls(settings, catalog, store, meta, stale)
        if scratch is not None:  # removed at close, or when the process ends
            import weakref

            index._scratch = weakref.finalize(index, shutil.rmtree, scratch, True)
        return index

    # -- generations -----------------------------------------------------------------------

    @property
    def generation(self) -> str | None:
        return self._meta.get("generation")

    def refresh(self) -> bool:
        """Switch to a newly published generation, if there is one (a one-row read). True if it switched."""
        latest = self._catalog.generation()
        if latest == self.generation:
            return False
        with self._lock:
            if latest == self.generation:
                return False
            meta = self._catalog.meta()
            if not meta.get("complete"):
                return False
            self._store.reopen()  # an embedded client must reload the vectors another process wrote
            self._cached_paper.cache_clear()
            self._terms.cache_clear()
            self._df.cache_clear()
            self._term_rows.cache_clear()
            self._paper_matrix = None
            self._meta = meta
            self.stale = None
            log.info("switched to index generation %s", latest)
            return True

    # -- papers ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._meta.get("counts", {}).get("papers", 0))

    def __contains__(self, paper_id: object) -> bool:
        return isinstance(paper_id, str) and self.get(paper_id) is not None

    def get(self, paper_id: str) -> Paper | None:
        return self._cached_paper(paper_id)

    def paper(self, paper_id: str) -> Paper:
        """The paper, or KeyError."""
        found = self.get(paper_id)
        if found is None:
            raise KeyError(paper_id)
        return found

    __getitem__ = paper

    def papers(self) -> list[Paper]:
        return self._catalog.papers()

    def paper_terms(self, paper_id: str) -> set[str]:
        """Content terms of the paper's title and abstract (cached)."""
        return self._terms(paper_id)

    def _paper_terms(self, paper_id: str) -> frozenset[str]:
        paper = self.get(paper_id)
        return frozenset(content_terms(f"{paper.title} {paper.abstract}")) if paper else frozenset()

    # -- term statistics -------------------------------------------------------------------

    def df(self, term: str) -> int:
        """Papers whose title or abstract contains the content term (see rag.text.content_terms)."""
        return self._df(term)

    def idf(self, term: str) -> float:
        return math.log(1 + len(self) / (self.df(term) + 0.5))

    # -- search ----------------------------------------------------------------------------

    def dense(self, vector, n: int) -> list[tuple[str, float]]:
        """(chunk_id, cosine similarity) of the `n` chunks nearest to `vector`, best first. Only ids and
        scores: fetch what is shown with `chunks`."""
        k = n
        while True:  # vectors an update wrote but did not publish (or left for deletion) are skipped
            with self._lock:
                got = self._store.nearest(vector, k)
            published = self._catalog.published_chunks([cid for cid, _ in got])
            keep = [(cid, sim) for cid, sim in got if cid in published]
            if len(keep) >= n or len(got) < k or k >= 8 * n:
                return keep[:n]
            k *= 2

    def chunks(self, chunk_ids, with_vectors: bool = False) -> dict:
        """{chunk_id: (body, vector or None)} for the chunks still in the store (one round trip)."""
        with self._lock:
            return self._store.chunks(chunk_ids, with_vectors=with_vectors)

    def nearest_papers(self, vector, n: int):
        """Papers whose paper vector (mean of their chunks) is nearest, best first (rag.index.chroma_store.PaperVector).

        Exact, from the paper vectors held in memory (loaded once per generation) up to
        PAPER_VECTORS_IN_MEMORY papers; from Chroma's index above that."""
        import numpy as np

        from rag.index.chroma_store import PaperVector

        with self._lock:
            if len(self) > PAPER_VECTORS_IN_MEMORY:
                k = n
                while True:
                    got = self._store.nearest_papers(vector, k)
                    published = self._catalog.published_ids([p.paper_id for p in got])
                    keep = [p for p in got if p.paper_id in published]
                    if len(keep) >= n or len(got) < k or k >= 8 * n:
                        return keep[:n]
                    k *= 2
            if self._paper_matrix is None:
                ids, matrix = self._store.all_paper_vectors()
                published = self._catalog.published_ids(ids)
                if len(published) < len(ids):  # an update's vectors not (or no longer) published
                    rows = [i for i, pid in enumerate(ids) if pid in published]
                    ids, matrix = [ids[i] for i in rows], matrix[rows]
                matrix.setflags(write=False)  # rows are handed out as PaperVector.vector
                self._paper_matrix = ids, matrix
            ids, matrix = self._paper_matrix
        if not ids or n < 1:
            return []
        sims = matrix @ np.asarray(vector, dtype=np.float32)
        n = min(n, len(ids))
        top = np.argpartition(-sims, n - 1)[:n] if n < len(ids) else np.arange(len(ids))
        top = top[np.argsort(-sims[top], kind="stable")]
        return [PaperVector(ids[i], float(sims[i]), matrix[i]) for i in top]

    def paper_vectors(self, paper_ids) -> dict:
        with self._lock:
            return self._store.paper_vectors(paper_ids)

    def lexical(self, query: str, n: int) -> list[tuple[str, float]]:
        """(chunk_id, BM25 score) best first (rag.index.lexical.bounded_search)."""
        from rag.index.lexical import bounded_search

        return bounded_search(self._catalog, query, n, self._term_rows)

    # -- about -----------------------------------------------------------------------------

    @property
    def embedding_model(self) -> str:
        return self._meta["params"]["embedding_model"]

    @property
    def chroma_mode(self) -> str:
        return self._store.mode

    def info(self) -> dict:
        """What the UI status line, `rag doctor` and eval reports show about the index."""
        counts = self._meta.get("counts", {})
        return {
            "papers": counts.get("papers"),
            "chunks": counts.get("chunks"),
            "chroma": self._store.mode,
            "embedding_model": self.embedding_model,
            "embedding": self._meta.get("embedding"),
            "index_params": self._meta.get("params"),
            "corpus_fingerprint": self._meta.get("corpus_fingerprint"),
            "generation": self.generation,
            "updated_at": self._meta.get("updated_at"),
            "stale": self.stale,
        }

    def close(self) -> None:
        self._store.close()
        self._catalog.close()
        if getattr(self, "_scratch", None) is not None:
            self._scratch()
