"""Build and update the index (the write side; rag.index.reader reads it).

An ingest is incremental, resumable and published atomically:
- vectors go to Chroma in batches; `DATA_DIR/ingest.json` records after every batch which papers' vectors
  are stored, so an ingest stopped by Ctrl-C or `kill -9` continues where it stopped; vectors come from
  the embedding cache (by content hash) whenever they were computed before, so repairs and rebuilds do
  not embed again;
- paper records, term statistics and the lexical index change inside one transaction of the catalog
  (rag.index.catalog) that commits together with a new generation id: readers see the old index until then,
  the new one after, never a mix;
- damaged or missing parts (catalog, Chroma store, embedding cache) are detected and rebuilt, the damaged
  file set aside with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.corpus.chunk import LocalChunking
from rag.corpus.parse import (
    LINE_KEYS,
    corpus_files,
    corpus_fingerprint,
    iter_unique,
    scan_corpus,
)
from rag.errors import IndexCorruptError, StoreUnavailableError
from rag.index.catalog import CATALOG, SCHEMA_VERSION, Catalog
from rag.index.embed_cache import (
    embed_with_cache,
    open_embedding_cache,
    remember_cache_verified,
)
from rag.index.embedders import embedder_name, make_embedder
from rag.index.layout import atomic_write, ensure_writable, ingest_lock, set_aside
from rag.index.reader import indexed_corpus
from rag.index.vectors import paper_vectors
from rag.text import TERMS_VERSION

log = logging.getLogger(__name__)
PARSER_VERSION = 6  # bump when parsing, cleaning or the stopword list changes what is derived from a paper
PAPER_BATCH = 256
STATE = "ingest.json"
LEGACY = ("manifest.json", "papers.jsonl", "term_df.json", "bm25")


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
    generation: str | None = None
    repaired: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def index_params(settings, model_name: str) -> dict:
    """What the stored vectors and derived data depend on: a change here forces a rebuild."""
    return {
        "embedding_model": model_name,
        "parser_version": PARSER_VERSION,
        "terms_version": TERMS_VERSION,
        "chunk_size": settings.chunk_size,
        "chunk_overlap": settings.chunk_overlap,
        "tokenizer": settings.tokenizer,
        "collection": settings.collection,
        "chroma_url": settings.chroma_url,
    }


def new_generation() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _read_state(path: Path, catalog: Catalog, published: dict | None) -> dict | None:
    """The resume state an interrupted ingest left (see _start_state): {"params", "stored", "dropped"}, or None.

    "stored": the papers whose vectors are in the store; "dropped": those whose vectors it was deleting."""
    if not path.is_file():
        return None
    try:
        lines = path.read_bytes().splitlines()
        head = json.loads(lines[0]) if lines else None
        if not isinstance(head, dict) or "params" not in head:
            raise ValueError("not an ingest state")
        if head.get("base_generation") is not None:
            if not published or published.get("generation") != head["base_generation"]:
                raise ValueError("the index changed since it was written")
            stored = catalog.paper_hashes()
        elif isinstance(head.get("stored"), dict):
            stored = dict(head["stored"])
        else:
            raise ValueError("not an ingest state")
        dropped = list(head.get("dropped") or [])
        for pid in dropped:
            stored.pop(pid, None)
        for no, line in enumerate(lines[1:], start=2):
            try:
                step = json.loads(line)
            except ValueError:
                if no == len(lines):
                    break  # the last line, cut short by the kill: its batch is treated as not stored
                raise
            stored.update(step["stored"])
        return {"params": head["params"], "stored": stored, "dropped": dropped}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): checking the vector store from scratch", path, exc)
        return None


def _start_state(path: Path, params: dict, base_generation: str | None, stored: dict[str, str],
                 dropped: list[str]) -> None:
    """Begin the resume state, before the store is touched: an append-only JSON-lines file whose first line
    says what the store holds (the published catalog's papers, by generation, or else the papers themselves)
    and which papers' vectors are being deleted; each flush then appends the papers it stored (_add_state).
    Recording a batch costs that batch, not every paper stored so far."""
    head = {"params": params, "base_generation": base_generation, "dropped": dropped}
    if base_generation is None:
        head["stored"] = stored
    atomic_write(path, json.dumps(head) + "\n")


def _add_state(path: Path, stored: dict[str, str]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps({"stored": stored}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def resume_state(data_dir: Path) -> dict | None:
    """What an interrupted ingest in `data_dir` stored so far ({"params", "stored", "dropped"}), or None."""
    data_dir = Path(data_dir)
    if not (data_dir / STATE).is_file():
        return None
    catalog = Catalog(data_dir / CATALOG)  # a read: never creates one (the ingest that wrote STATE did)
    try:
        return _read_state(data_dir / STATE, catalog, catalog.meta())
    finally:
        catalog.close()


def _legacy_stored(data_dir: Path, params: dict) -> dict[str, str]:
    """Papers an index built by the previous layout (manifest.json) has in Chroma, if built the same way."""
    path = data_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    old = dict(manifest.get("params", {}))
    same = {k: v for k, v in old.items() if k != "parser_version"} == {k: v for k, v in params.items() if k != "parser_version"}
    return dict(manifest.get("papers", {})) if same else {}


def _open_catalog(data_dir: Path, report: IngestReport) -> Catalog:
    path = data_dir / CATALOG
    try:
        return Catalog(path, create=True)
    except IndexCorruptError as exc:
        set_aside(path, str(exc))
        for extra in ("-wal", "-shm"):
            Path(str(path) + extra).unlink(missing_ok=True)
        report.repaired.append("catalog (damaged: rebuilt)")
        return Catalog(path, create=True)


def _open_store(settings, data_dir: Path, report: IngestReport):
    """The Chroma store; a damaged embedded store is set aside and started afresh."""
    from rag.index.chroma_store import ChromaStore, probe_embedded

    if settings.chroma_url is None and (data_dir / "chroma").exists():
        problem = probe_embedded(data_dir, settings.collection)
        if problem:
            set_aside(data_dir / "chroma", problem)
            report.repaired.append(f"vector store ({problem}: rebuilt from cached vectors)")
    try:
        return ChromaStore(data_dir, settings.chroma_url, settings.collection)
    except StoreUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged embedded store: chromadb raises many kinds
        if settings.chroma_url:
            raise
        set_aside(data_dir / "chroma", f"{exc.__class__.__name__}: {exc}")
        report.repaired.append("vector store (unreadable: rebuilt from cached vectors)")
        return ChromaStore(data_dir, None, settings.collection)


def _stat(files) -> dict[str, list[int]]:
    return {str(f): [st.st_size, st.st_mtime_ns] for f in files for st in [Path(f).stat()]}


def corpus_change(settings, corpus_paths: list[Path] | None = None) -> str:
    """A cheap guess before an ingest, from file sizes and times against the published metadata (no file
    is read; the ingest itself checks the contents): "unchanged", "grown" (more bytes: papers probably
    added), "shrunk" (fewer or as many: probably removed or edited), or "unknown" (no index, a damaged one,
    an unreadable corpus). `rag ingest` starts its chunking child only for "grown" or "unknown"."""
    try:
        catalog = Catalog(Path(settings.data_dir) / CATALOG)
        try:
            meta = catalog.meta()
        finally:
            catalog.close()
        paths = [Path(p) for p in corpus_paths] if corpus_paths else indexed_corpus(settings, meta or None)
        now, before = _stat(corpus_files(paths)), meta.get("corpus_stat")
        if not meta or not isinstance(before, dict):
            return "unknown"
        if now == before:
            return "unchanged"
        return "grown" if sum(s for s, _ in now.values()) > sum(s for s, _ in before.values()) else "shrunk"
    except Exception:  # noqa: BLE001 - the ingest reports whatever is wrong
        return "unknown"


def ingest(settings, corpus_paths: list[Path] | None = None, strict: bool = False, rebuild: bool = False,
           embedder=None, store=None, progress: bool = True, chunking=None) -> IngestReport:
    """Bring the index in `settings.data_dir` up to date with the corpus, repairing what is damaged.

    `chunking`: a rag.corpus.chunk.ChunkWorker started by the caller (a short-lived process, `rag ingest`),
    or None to chunk in this process."""
    from tqdm import tqdm

    started = time.perf_counter()
    data_dir = Path(settings.data_dir)
    ensure_writable(data_dir)
    report = IngestReport(chroma_mode="server" if settings.chroma_url else "embedded")
    with ingest_lock(data_dir):
        catalog = _open_catalog(data_dir, report)
        own_store = store is None
        recorded = None
        if own_store and settings.chroma_url is None:
            from rag.index.chroma_store import recorded_counts

            recorded = recorded_counts(data_dir)  # read before a client opens (and may touch) the files
        if own_store:
            store = _open_store(settings, data_dir, report)
        done = False
        try:
            result = _ingest(settings, data_dir, catalog, corpus_paths, strict, rebuild, embedder, store, progress,
                             report, started, tqdm, recorded, chunking)
            if embedder is None:  # the configured model: export its fast query embedder once (rag.index.query_model)
                from rag.index.query_model import ensure_exported

                ensure_exported(settings)
            done = True
            return result
        finally:
            catalog.close()
            if own_store:
                store.close()  # flushes the embedded store's files, so they can be recorded as good
                if settings.chroma_url is None:
                    from rag.index.chroma_store import (
                        remember_counts,
                        remember_verified,
                    )

                    remember_verified(data_dir)
                    if done:
                        remember_counts(data_dir, report.chunks, report.papers)


def _ingest(settings, data_dir, catalog, corpus_paths, strict, rebuild, embedder, store, progress, report, started, tqdm,
            recorded=None, chunking=None):
    published = catalog.meta()
    if published and published.get("version") != SCHEMA_VERSION:
        published = {}
    paths = [Path(p) for p in corpus_paths] if corpus_paths else indexed_corpus(settings, published or None)
    files = corpus_files(paths)
    fingerprint = corpus_fingerprint(files)
    model_name = embedder.name if embedder is not None else embedder_name(settings)
    params = index_params(settings, model_name)
    if published and published.get("params") != params:
        rebuild, report.reason = True, "embedding model or chunking changed"

    state_path = data_dir / STATE
    state = None if rebuild else _read_state(state_path, catalog, published)
    if state and state.get("params") != params:
        state = None
    counts = published.get("counts", {}) if published else {}
    healthy = bool(published) and _healthy(catalog, store, counts, report, recorded)
    same_keys = bool(published) and published.get("line_keys") == LINE_KEYS  # else the line cache is re-keyed now
    if (healthy and not rebuild and state is None and published.get("corpus_fingerprint") == fingerprint
            and same_keys and not report.repaired):
        report.papers = report.unchanged = counts.get("papers", 0)
        report.chunks = counts.get("chunks", 0)
        report.reason = "corpus unchanged"
        report.generation = published.get("generation")
        report.seconds = time.perf_counter() - started
        return report

    if not rebuild and hasattr(store, "warm_up"):
        store.warm_up()  # its vector indexes load while the corpus is scanned
    known_lines = catalog.scanned_lines() if same_keys and not rebuild else {}
    scan = scan_corpus(files, strict=strict, known=known_lines)
    report.entries, report.duplicates = scan.entries, scan.duplicates
    report.issues = [str(i) for i in scan.issues]
    cache_path = Path(settings.embed_cache_path or data_dir / "embed_cache.sqlite")
    cache = open_embedding_cache(cache_path, report.repaired)
    live = {"model": embedder}
    model_lock = threading.Lock()

    def get_embedder():
        with model_lock:  # the preloading thread, if any, holds it while it loads
            if live["model"] is None:
                live["model"] = make_embedder(settings)
            return live["model"]

    in_catalog = catalog.paper_hashes() if published and not rebuild else {}
    previously = dict(in_catalog)  # what readers saw: the report counts changes against it
    leftovers_possible = False  # vectors in the store of papers not in `stored`
    base_generation = None  # set when `stored` is the published catalog's papers
    if rebuild or (not published and not state):
        stored = {} if rebuild else _legacy_stored(data_dir, params)
        leftovers_possible = bool(stored)
        if stored and store.count_paper_vectors() < len(stored):
            # the previous layout had no paper vectors: its chunk vectors cannot be kept without them
            # (they are re-made from the embedding cache), or the upgraded index would not be whole
            stored = {}
            report.reason = "upgraded"
        report.rebuilt = bool(published) or rebuild
        report.reason = report.reason or ("rebuild requested" if rebuild else "upgraded" if stored
                                          else "repaired" if report.repaired else "new index")
        if not stored:
            store.drop()
    elif state is not None:
        stored = dict(state["stored"])  # an interrupted ingest: these papers' vectors are in the store
        leftovers_possible = True  # and the batch it was writing may be partly there
        # the deletes it began may be unfinished (a paper stored again since was deleted before that)
        redo = [pid for pid in state["dropped"] if pid not in stored]
        if redo:
            store.delete_papers(redo)
    elif healthy:
        stored = dict(in_catalog)
        base_generation = published.get("generation")
    else:
        # the parts disagree: put every vector back (from the cache) and derive the catalog again
        stored, in_catalog = {}, {}
        store.drop()
        report.repaired.append("index parts disagreed (rebuilt from cached vectors)")
        report.reason = "repaired"

    hashes = scan.hashes
    # Set operations on dict views run in C: at 100k papers these comparisons take milliseconds, where the
    # loops they replace took most of a second (measured: rag bench --parts scale-ingest).
    differ = hashes.items() - stored.items()  # (paper, hash) new or changed, against the vector store
    removed = list(stored.keys() - hashes.keys())
    changed = [pid for pid, _ in differ if pid in stored]
    base = previously if previously else (in_catalog if in_catalog else stored)
    base_differ = hashes.items() - base.items()
    report.changed = sum(1 for pid, _ in base_differ if pid in base)
    report.added = len(base_differ) - report.changed
    report.removed = len(base.keys() - hashes.keys())
    report.unchanged = len(hashes) - report.added - report.changed
    _start_state(state_path, params, base_generation, stored, removed + changed)
    if removed or changed:
        # the catalog knows their chunk ids unless an interrupted ingest wrote vectors it never published
        known = {} if leftovers_possible else catalog.chunk_ids(removed + changed)
        store.delete_papers(removed + changed, known)
        for pid in removed + changed:
            stored.pop(pid, None)

    todo = len(hashes.keys() - stored.keys())
    preload = None
    if todo and live["model"] is None and not cache.has_model(model_name):
        # Nothing of this model is cached (a new index): it will be needed, and loading it (torch, the
        # weights: seconds) overlaps the chunking child's start and the first batch. Its errors surface
        # at first use, from get_embedder in this thread.
        def load() -> None:
            try:
                get_embedder()
            except Exception as exc:  # noqa: BLE001
                log.debug("preloading the embedding model: %s", exc)

        preload = threading.Thread(target=load, daemon=True, name="rag-model-preload")
        preload.start()
    bar = tqdm(total=todo, desc="embedding papers", unit="paper", disable=None if progress and todo else True)
    batch: list = []

    def flush() -> None:
        chunks = [c for _, paper_chunks in batch for c in paper_chunks]
        vectors, n = embed_with_cache(None, cache, [c.text for c in chunks], model_name, get_embedder)
        report.embedded += n
        if leftovers_possible:  # partial leftovers of a killed run (a metadata-filtered delete: not free)
            store.delete_papers([p.paper_id for p, _ in batch])
        store.upsert(chunks, vectors)
        store.upsert_paper_vectors(*paper_vectors(chunks, vectors))
        done = {p.paper_id: hashes[p.paper_id] for p, _ in batch}
        stored.update(done)
        _add_state(state_path, done)
        bar.update(len(batch))
        batch.clear()

    # Only papers with something to do are read again and chunked: new or changed ones, ones whose vectors
    # are missing, and ones whose line changed or whose list of files did (their record is rewritten).
    # An unchanged paper costs neither a parse nor the chunker (whose import alone takes seconds).
    forgotten = list(known_lines.keys() - scan.lines.keys())
    gone = [pid for pid, _ in in_catalog.items() - hashes.items()]
    keep = in_catalog.keys() - set(gone)  # papers whose catalog record stays
    # a paper keeps its list of files unless one of its lines is new (fresh) or gone (forgotten)
    maybe_moved = {pid for key in forgotten for pid in (known_lines[key].title_id, known_lines[key].variant_id)}
    maybe_moved &= keep
    listed = catalog.paper_sources(maybe_moved) if maybe_moved else {}
    need = ((hashes.keys() - keep) | (hashes.keys() - stored.keys()) | (scan.fresh & hashes.keys())
            | {pid for pid, files in listed.items() if pid in hashes and files != scan.sources[pid]})
    if chunking is None:
        chunking = LocalChunking(settings.chunk_size, settings.chunk_overlap, settings.tokenizer)
    generation = new_generation()
    cleared = rebuild or not in_catalog
    with catalog.transaction() as tx:
        if cleared:
            tx.clear()
        tx.remove_papers(gone)

        def to_chunk():
            for paper in iter_unique(scan, need):
                pid = paper.paper_id
                if pid in keep:
                    tx.update_sources(paper, hashes[pid])
                    if pid in stored:
                        continue
                yield paper

        for paper, paper_chunks, documents in chunking.stream(to_chunk()):
            pid = paper.paper_id
            if pid not in keep:
                tx.add_paper(paper, hashes[pid], paper_chunks, documents)
            if pid not in stored:
                batch.append((paper, paper_chunks))
                if len(batch) >= PAPER_BATCH:
                    flush()
        if batch:
            flush()
        bar.close()
        if preload is not None:
            preload.join()
        cache.close()
        remember_cache_verified(cache_path)
        if cleared or not same_keys:  # the line digests went with the rest, or are re-keyed: remember them all
            if not cleared:
                tx.forget_lines()
            tx.remember_lines(scan.lines)
        else:
            tx.remember_lines({k: d for k, d in scan.lines.items() if k not in known_lines}, forget=forgotten)
        report.papers, report.chunks = len(hashes), tx.count_chunks()
        tx.set_meta({
            "version": SCHEMA_VERSION,
            "generation": generation,
            "params": params,
            "complete": True,
            "corpus_paths": [str(p.resolve()) for p in paths],
            "corpus_files": [str(f) for f in files],
            "corpus_fingerprint": fingerprint,
            "corpus_stat": _stat(files),  # for corpus_change()
            "line_keys": LINE_KEYS,
            "counts": {"papers": report.papers, "chunks": report.chunks},
            "embedding": live["model"].describe() if live["model"] is not None and hasattr(live["model"], "describe")
            else (published or {}).get("embedding"),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    # published: the resume state and any index of the previous layout are no longer needed
    state_path.unlink(missing_ok=True)
    for name in LEGACY:
        legacy = data_dir / name
        if legacy.is_dir():
            shutil.rmtree(legacy, ignore_errors=True)
        else:
            legacy.unlink(missing_ok=True)
    report.generation = generation
    report.seconds = time.perf_counter() - started
    return report


def _healthy(catalog: Catalog, store, counts: dict, report: IngestReport, recorded: tuple[int, int] | None = None) -> bool:
    """The catalog and the vector store agree with the published counts.

    `recorded`: the store's (chunk, paper) vector counts as the last ingest left its files, when they are
    unchanged since (rag.index.chroma_store.recorded_counts); counting a large embedded store costs seconds."""
    try:
        chunk_vectors, paper_vectors = recorded if recorded else (store.count(), store.count_paper_vectors())
        ok = (catalog.count_papers() == counts.get("papers") == paper_vectors
              and catalog.count_chunks() == counts.get("chunks") == chunk_vectors == catalog.count_lexical())
    except IndexCorruptError:
        return False
    if not ok:
        log.warning("the index's parts disagree with each other: repairing")
    return ok
