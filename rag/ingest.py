"""Build and update the index (the write side; rag.index reads it).

Ingest is incremental and resumable. The manifest lists, per paper, the content hash that is fully
written to the store; it is rewritten after every batch, so an ingest stopped by Ctrl-C or `kill -9`
continues where it stopped. Vectors are cached by content hash, so unchanged text is never embedded
twice, and an unchanged corpus does not even load the model.
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

import numpy as np

from rag.chunking import Chunker
from rag.corpus import corpus_files, corpus_fingerprint, iter_unique, scan_corpus
from rag.embeddings import EmbeddingCache, embed_with_cache, embedder_name, make_embedder
from rag.errors import ConfigError, IndexCorruptError, IndexLockedError
from rag.index import MANIFEST, MANIFEST_VERSION, atomic_write, indexed_corpus, read_manifest
from rag.text import content_terms

log = logging.getLogger(__name__)
PARSER_VERSION = 5  # bump when parsing, cleaning or the stopword list changes what is derived from a paper
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


def paper_vectors(chunks, vectors) -> tuple[list[str], np.ndarray]:
    """One vector per paper: the normalised mean of its chunks' vectors (no extra embedding)."""
    rows: dict[str, list[int]] = {}
    for i, chunk in enumerate(chunks):
        rows.setdefault(chunk.paper_id, []).append(i)
    ids = list(rows)
    means = np.stack([vectors[rows[pid]].mean(axis=0) for pid in ids]) if ids else np.zeros((0, vectors.shape[1]))
    return ids, means / np.clip(np.linalg.norm(means, axis=1, keepdims=True), 1e-12, None)


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


def ingest(settings, corpus_paths: list[Path] | None = None, strict: bool = False, rebuild: bool = False,
           embedder=None, store=None, progress: bool = True) -> IngestReport:
    """Bring the index in `settings.data_dir` up to date with the corpus.

    Two streaming passes: the first hashes every paper (no texts kept), the second embeds and writes
    the new or changed ones in batches, committing the manifest after each batch.
    """
    from tqdm import tqdm

    from rag.lexical import LexicalIndex
    from rag.store import ChromaStore

    started = time.perf_counter()
    data_dir = Path(settings.data_dir)
    _ensure_writable(data_dir)
    report = IngestReport(chroma_mode="server" if settings.chroma_url else "embedded")
    with ingest_lock(data_dir):
        try:
            manifest = read_manifest(data_dir)
        except IndexCorruptError as exc:
            log.warning("%s; rebuilding", exc)
            manifest, rebuild = None, True
        paths = [Path(p) for p in corpus_paths] if corpus_paths else indexed_corpus(settings, manifest)
        files = corpus_files(paths)
        fingerprint = corpus_fingerprint(files)
        model_name = embedder.name if embedder is not None else embedder_name(settings)
        params = index_params(settings, model_name)
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
        cache = EmbeddingCache(settings.embed_cache_path or data_dir / "embed_cache.sqlite")
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
        atomic_write(data_dir / MANIFEST, json.dumps(state))

        chunker = Chunker(settings.chunk_size, settings.chunk_overlap, settings.tokenizer)
        todo = sum(1 for pid in hashes if pid not in stored)
        bar = tqdm(total=todo, desc="embedding papers", unit="paper", disable=None if progress and todo else True)
        chunk_ids: list[str] = []
        chunk_texts: list[str] = []
        df: dict[str, int] = {}
        batch: list = []

        def flush() -> None:
            chunks = [c for _, paper_chunks in batch for c in paper_chunks]
            vectors, n = embed_with_cache(None, cache, [c.text for c in chunks], model_name, get_embedder)
            report.embedded += n
            store.delete_papers([p.paper_id for p, _ in batch])  # partial leftovers of a killed run
            store.upsert(chunks, vectors)
            store.upsert_paper_vectors(*paper_vectors(chunks, vectors))
            for p, _ in batch:
                stored[p.paper_id] = hashes[p.paper_id]
            atomic_write(data_dir / MANIFEST, json.dumps(state))
            bar.update(len(batch))
            batch.clear()

        papers_tmp = data_dir / "papers.jsonl.tmp"
        with open(papers_tmp, "w") as papers_out:
            for paper in iter_unique(scan):
                papers_out.write(json.dumps(paper.to_dict()) + "\n")
                paper_chunks = chunker.chunk(paper)
                for chunk in paper_chunks:
                    chunk_ids.append(chunk.chunk_id)
                    chunk_texts.append(chunk.text)
                for term in set(content_terms(paper.title + " " + paper.abstract)):
                    df[term] = df.get(term, 0) + 1
                if paper.paper_id not in stored:
                    batch.append((paper, paper_chunks))
                    if len(batch) >= PAPER_BATCH:
                        flush()
            if batch:
                flush()
        bar.close()
        cache.close()

        # Derived from the whole corpus on every change: the lexical index, term statistics, paper records.
        LexicalIndex.build(chunk_ids, chunk_texts).save(data_dir / "bm25")
        atomic_write(data_dir / "term_df.json", json.dumps({"n": len(hashes), "df": df}))
        papers_tmp.replace(data_dir / "papers.jsonl")

        report.papers, report.chunks = len(hashes), len(chunk_ids)
        state.update(
            complete=True,
            corpus_fingerprint=fingerprint,
            corpus_files=[str(f) for f in files],
            counts={"papers": report.papers, "chunks": report.chunks},
            embedding=live["model"].describe() if live["model"] is not None and hasattr(live["model"], "describe")
            else (manifest or {}).get("embedding"),
            updated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        atomic_write(data_dir / MANIFEST, json.dumps(state))
    report.seconds = time.perf_counter() - started
    return report
