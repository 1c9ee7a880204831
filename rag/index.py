"""Build and open the index: Chroma chunks + BM25 + the paper records + a manifest.

Ingest is incremental and resumable. The manifest lists, per paper, the content hash that is
fully written to the store; it is rewritten after every batch, so an ingest stopped by Ctrl-C or
`kill -9` continues where it stopped. Vectors are cached by content hash, so unchanged text is
never embedded twice, and an unchanged corpus does not even load the model.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path


from rag.chunking import Chunker, content_terms
from rag.corpus import corpus_files, corpus_fingerprint, iter_unique, scan_corpus
from rag.embeddings import EmbeddingCache, embed_with_cache, embedder_name, make_embedder
from rag.errors import ConfigError, IndexCorruptError, IndexLockedError, IndexMissingError, RagError
from rag.records import Paper

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
PARSER_VERSION = 4  # bump when parsing or cleaning changes what a paper's text is
PAPER_BATCH = 256


@dataclass
class IngestReport:
    papers: int = 0
    chunks: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    rebuilt: bool = False
    reason: str = ""
    seconds: float = 0.0
    entries: int = 0
    duplicates: int = 0
    issues: list[str] = field(default_factory=list)
    chroma_mode: str = "embedded"

    def to_dict(self) -> dict:
        return asdict(self)


def index_params(settings, model_name: str) -> dict:
    """What the stored vectors depend on: a change here forces a rebuild."""
    return {
        "embedding_model": model_name,
        "parser_version": PARSER_VERSION,
        "chunk_size": settings.chunk_size,
        "chunk_overlap": settings.chunk_overlap,
        "tokenizer": settings.tokenizer,
        "collection": settings.collection,
        "chroma_url": settings.chroma_url,
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_manifest(data_dir: Path) -> dict | None:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
            raise ValueError("unknown manifest version")
        return manifest
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(
            f"index manifest {path} is unreadable ({exc}): run `rag ingest --rebuild`"
        ) from None


def _ensure_writable(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ConfigError(f"no space left on the device holding {data_dir}: free some space or set RAG_DATA_DIR") from None
        raise ConfigError(
            f"data dir {data_dir} is not writable ({exc.strerror}): fix its permissions or set RAG_DATA_DIR"
        ) from None


@contextmanager
def ingest_lock(data_dir: Path):
    """One writer at a time; the OS releases the lock if the process dies."""
    path = data_dir / "ingest.lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise IndexLockedError(
            f"the index in {data_dir} is being written by {holder}: wait for that `rag ingest` to finish"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def load_term_df(data_dir: Path) -> tuple[int, dict[str, int]]:
    path = Path(data_dir) / "term_df.json"
    try:
        data = json.loads(path.read_text())
        return int(data["n"]), data["df"]
    except (OSError, ValueError, KeyError) as exc:
        raise IndexCorruptError(f"{path} is unreadable ({exc.__class__.__name__}): run `rag ingest --rebuild`") from None


def ingest(
    settings,
    corpus_paths: list[Path] | None = None,
    strict: bool = False,
    rebuild: bool = False,
    embedder=None,
    store=None,
    progress: bool = True,
) -> IngestReport:
    """Bring the index in `settings.data_dir` up to date with the corpus.

    Two streaming passes: the first hashes every paper (no texts kept), the second embeds and
    writes the new or changed ones in batches, committing the manifest after each batch.
    """
    from tqdm import tqdm

    from rag.bm25 import BM25Index
    from rag.store import ChromaStore

    started = time.perf_counter()
    data_dir = Path(settings.data_dir)
    _ensure_writable(data_dir)
    report = IngestReport(chroma_mode="server" if settings.chroma_url else "embedded")
    with ingest_lock(data_dir):
        try:
            previous = read_manifest(data_dir)
        except IndexCorruptError:
            previous = None
        paths = [Path(p) for p in corpus_paths] if corpus_paths else indexed_corpus(settings, previous)
        files = corpus_files(paths)
        fingerprint = corpus_fingerprint(files)
        model_name = embedder.name if embedder is not None else embedder_name(settings)
        params = index_params(settings, model_name)
        try:
            manifest = read_manifest(data_dir)
        except IndexCorruptError as exc:
            log.warning("%s; rebuilding", exc)
            manifest, rebuild = None, True
        if manifest and manifest.get("params") != params:
            rebuild, report.reason = True, "embedding model or chunking changed"
        if manifest and not rebuild and manifest.get("complete") and manifest.get("corpus_fingerprint") == fingerprint:
            counts = manifest.get("counts", {})
            report.papers = report.unchanged = counts.get("papers", 0)
            report.chunks = counts.get("chunks", 0)
            report.reason = "corpus unchanged"
            report.seconds = time.perf_counter() - started
            return report

        scan = scan_corpus(files, strict=strict)
        report.entries, report.duplicates = scan.entries, scan.duplicates
        report.issues = [str(i) for i in scan.issues]
        store = store or ChromaStore(data_dir, settings.chroma_url, settings.collection)
        cache = EmbeddingCache(data_dir / "embed_cache.sqlite")
        live = {"model": embedder}

        def get_embedder():
            if live["model"] is None:
                live["model"] = make_embedder(settings)
            return live["model"]

        stored: dict[str, str] = {}
        if manifest and not rebuild:
            stored = dict(manifest.get("papers", {}))
        else:
            report.rebuilt = manifest is not None or rebuild
            report.reason = report.reason or ("rebuild requested" if rebuild else "new index")
            store.drop()
        state = {
            "version": MANIFEST_VERSION,
            "params": params,
            "papers": stored,
            "complete": False,
            "corpus_paths": [str(p.resolve()) for p in paths],
        }

        hashes = scan.hashes
        removed = [pid for pid in stored if pid not in hashes]
        changed = [pid for pid, h in hashes.items() if pid in stored and stored[pid] != h]
        report.added = sum(1 for pid in hashes if pid not in stored)
        report.changed, report.removed = len(changed), len(removed)
        report.unchanged = len(hashes) - report.added - report.changed
        if removed or changed:
            store.delete_papers(removed + changed)
            for pid in removed + changed:
                stored.pop(pid, None)
        _atomic_write(data_dir / MANIFEST, json.dumps(state))

        chunker = Chunker(settings.chunk_size, settings.chunk_overlap, settings.tokenizer)
        todo = sum(1 for pid in hashes if pid not in stored)
        bar = tqdm(total=todo, desc="embedding papers", unit="paper", disable=None if progress and todo else True)  # None: only on a terminal
        chunk_ids: list[str] = []
        chunk_texts: list[str] = []
        df: dict[str, int] = {}
        batch: list = []

        def flush() -> None:
            chunks = chunker.chunk_all(batch)
            vectors, n = embed_with_cache(None, cache, [c.text for c in chunks], model_name, get_embedder)
            report.embedded += n
            store.delete_papers([p.paper_id for p in batch])  # partial leftovers of a killed run
            store.upsert(chunks, vectors)
            for p in batch:
                stored[p.paper_id] = hashes[p.paper_id]
            _atomic_write(data_dir / MANIFEST, json.dumps(state))
            bar.update(len(batch))
            batch.clear()

        papers_tmp = data_dir / "papers.jsonl.tmp"
        with open(papers_tmp, "w") as papers_out:
            for paper in iter_unique(scan):
                papers_out.write(json.dumps(paper.to_dict()) + "\n")
                for chunk in chunker.chunk(paper):
                    chunk_ids.append(chunk.chunk_id)
                    chunk_texts.append(chunk.text)
                for term in set(content_terms(paper.title + " " + paper.abstract)):
                    df[term] = df.get(term, 0) + 1
                if paper.paper_id not in stored:
                    batch.append(paper)
                    if len(batch) >= PAPER_BATCH:
                        flush()
            if batch:
                flush()
        bar.close()
        cache.close()

        # Derived from the whole corpus on every change: BM25 over all chunks, term statistics, papers.
        BM25Index.build(chunk_ids, chunk_texts).save(data_dir / "bm25")
        _atomic_write(data_dir / "term_df.json", json.dumps({"n": len(hashes), "df": df}))
        papers_tmp.replace(data_dir / "papers.jsonl")

        report.papers, report.chunks = len(hashes), len(chunk_ids)
        state.update(
            complete=True,
            corpus_fingerprint=fingerprint,
            corpus_files=[str(f) for f in files],
            counts={"papers": report.papers, "chunks": report.chunks},
            updated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        _atomic_write(data_dir / MANIFEST, json.dumps(state))
    report.seconds = time.perf_counter() - started
    return report


def indexed_corpus(settings, manifest: dict | None) -> list[Path]:
    """RAG_CORPUS when set; else the corpus this index was built from; else the vendored corpus."""
    if settings.corpus:
        return settings.corpus_paths
    if manifest and manifest.get("corpus_paths"):
        return [Path(p) for p in manifest["corpus_paths"]]
    return settings.corpus_paths


@dataclass
class IndexState:
    """What a reader needs to know about the index on disk."""

    manifest: dict
    stale: str | None

    @property
    def papers(self) -> int:
        return self.manifest.get("counts", {}).get("papers", 0)


def open_index_state(settings, check_stale: bool = True) -> IndexState:
    """Manifest of a complete index, or a clear error saying how to build one."""
    data_dir = Path(settings.data_dir)
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise IndexMissingError(
            f"no index in {data_dir.resolve()}: build it with `rag ingest` (or set RAG_DATA_DIR)"
        )
    if not manifest.get("complete"):
        raise IndexMissingError(
            f"the index in {data_dir.resolve()} is incomplete (an ingest was interrupted): run `rag ingest` to finish it"
        )
    if manifest.get("params", {}).get("chroma_url") != settings.chroma_url:
        raise ConfigError(
            f"the index in {data_dir} was built for Chroma at {manifest['params'].get('chroma_url') or 'embedded'}, "
            f"not {settings.chroma_url or 'embedded'}: run `rag ingest` with the current RAG_CHROMA_URL"
        )
    stale = None
    if check_stale:
        try:
            files = corpus_files(indexed_corpus(settings, manifest))
            if corpus_fingerprint(files) != manifest.get("corpus_fingerprint"):
                stale = "the corpus changed since the last ingest: run `rag ingest` to update the index"
        except RagError:
            stale = None  # corpus not present here: the index stands alone
    return IndexState(manifest, stale)


def load_papers(data_dir: Path) -> dict[str, Paper]:
    path = Path(data_dir) / "papers.jsonl"
    try:
        with path.open() as fh:
            return {p.paper_id: p for p in (Paper.from_dict(json.loads(line)) for line in fh)}
    except (OSError, ValueError, TypeError) as exc:
        raise IndexCorruptError(f"{path} is unreadable ({exc.__class__.__name__}): run `rag ingest --rebuild`") from None
