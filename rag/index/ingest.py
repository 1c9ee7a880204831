"""Build and update the index (the write side; rag.index.reader reads it).

An ingest is incremental, resumable and published atomically:
- vectors go to Chroma in batches; `DATA_DIR/ingest.json` records after every batch which papers' vectors
  are stored, so an ingest stopped by Ctrl-C or `kill -9` continues where it stopped; vectors come from
  the embedding cache (by content hash) whenever they were computed before, so repairs and rebuilds do
  not embed again;
- paper records, term statistics and the lexical index change inside one transaction of the catalog
  (rag.index.catalog) that commits together with a new generation id: readers see the old index until then,
  the new one after, never a mix;
- copy-on-write: nothing published is deleted or overwritten before that commit (chunk ids name the paper's
  content hash, so a changed paper's new vectors go beside the old ones); the vectors it leaves unused are
  deleted after it (_AfterPublication), so a killed, failed or disk-full update leaves the published index
  serving;
- damaged or missing parts (catalog, Chroma store, embedding cache: the checks `rag doctor` makes, see
  rag.index.integrity) are detected and rebuilt, the damaged file set aside with a warning; a finished
  ingest seals what it published.
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
    CorpusScan,
    corpus_files,
    corpus_fingerprint,
    iter_unique,
    scan_corpus,
)
from rag.errors import ConfigError, IndexCorruptError, StoreUnavailableError
from rag.index.catalog import CATALOG, SCHEMA_VERSION, Catalog
from rag.index.embed_cache import (
    embed_with_cache,
    open_embedding_cache,
    remember_cache_verified,
)
from rag.index.embedders import embedder_name, make_embedder
from rag.index.integrity import published_filter
from rag.index.layout import (
    GARBAGE,
    STATE,
    atomic_write,
    disk_full,
    ensure_writable,
    ingest_lock,
    set_aside,
)
from rag.index.reader import indexed_corpus
from rag.index.vectors import paper_vectors
from rag.records import Paper
from rag.text import TERMS_VERSION

log = logging.getLogger(__name__)
PARSER_VERSION = 6  # bump when parsing, cleaning or the stopword list changes what is derived from a paper
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
    space_needed: int = 0  # bytes this update is expected to add (reported if the disk fills up)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("space_needed")
        return out


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
        "chunk_ids": "versioned",  # "<paper>:<content hash>.<n>" (copy-on-write updates): older indexes are rebuilt
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
        _set_aside_catalog(data_dir, str(exc))
        report.repaired.append("catalog (damaged: rebuilt)")
        return Catalog(path, create=True)


def _open_store(settings, data_dir: Path, report: IngestReport):
    """The Chroma store; a damaged embedded store is set aside and started afresh."""
    from rag.index.chroma_store import ChromaStore

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
    started = time.perf_counter()
    data_dir = Path(settings.data_dir)
    ensure_writable(data_dir)
    report = IngestReport(chroma_mode="server" if settings.chroma_url else "embedded")
    try:
        return _ingest_locked(settings, data_dir, report, started, corpus_paths, strict, rebuild, embedder, store,
                              progress, chunking)
    except Exception as exc:
        if not disk_full(exc):
            raise
        raise ConfigError(_disk_full_message(data_dir, report)) from None


def _disk_full_message(data_dir: Path, report: IngestReport) -> str:
    free = shutil.disk_usage(data_dir).free
    need = report.space_needed or 64 * 2**20
    return (f"no space left on the device holding {data_dir} ({free / 2**20:,.0f} MB free; this update needs about "
            f"{need / 2**20:,.0f} MB more): free some space and run `rag ingest` again (it resumes where it stopped; "
            "the published index keeps serving)")


def _space_needed(data_dir: Path, plan: "IngestPlan") -> int:
    """Roughly what an update adds on disk: the index's bytes per chunk (16 KiB for a new one) times the chunks
    to write, plus a margin for Chroma's compaction and the catalog's write-ahead log."""
    counts = plan.published.get("counts", {})
    chunks, papers = counts.get("chunks") or 0, counts.get("papers") or 0
    try:
        size = sum(p.stat().st_size for name in ("chroma", CATALOG) for p in [data_dir / name, *(data_dir / name).rglob("*")]
                   if p.is_file())
    except OSError:
        size = 0
    per_chunk = size / chunks if chunks and size else 16 * 1024
    per_paper = chunks / papers if papers else 3
    return int(per_chunk * per_paper * plan.to_embed) + 64 * 2**20


def _ingest_locked(settings, data_dir: Path, report: IngestReport, started: float, corpus_paths, strict: bool,
                   rebuild: bool, embedder, store, progress: bool, chunking) -> IngestReport:
    with ingest_lock(data_dir):
        embedded = settings.chroma_url is None and store is None
        set_aside_old = _set_aside_derived(data_dir, embedded) if rebuild else []
        if not rebuild:
            _check_damage(settings, data_dir, report, embedded)
        _check_cache(settings, report)
        catalog = _open_catalog(data_dir, report)
        own_store = store is None
        recorded = None
        if own_store and settings.chroma_url is None:
            from rag.index.chroma_store import recorded_counts

            recorded = recorded_counts(data_dir)  # read before a client opens (and may touch) the files
        if own_store:
            store = _open_store(settings, data_dir, report)
        done = False
        queries = None
        try:
            if (data_dir / GARBAGE).is_file():
                collect_leftover_garbage(data_dir, catalog, store, report)
                recorded = None
            plan = plan_ingest(settings, catalog, store, corpus_paths, strict=strict, rebuild=rebuild,
                               model_name=embedder.name if embedder is not None else embedder_name(settings),
                               # a cache set aside needs no rewrite of the index; a part set aside does
                               repaired=any(not r.startswith("embedding cache") for r in report.repaired),
                               recorded=recorded)
            if plan.up_to_date:
                _report_unchanged(report, plan)
                if (data_dir / STATE).exists():  # unusable (another model, a generation since): nothing to resume
                    (data_dir / STATE).unlink()
                    report.repaired.append("stale ingest state (removed)")
                if report.repaired:
                    report.reason = "repaired"
            else:
                _update(settings, plan, catalog, store, report, embedder, progress, chunking)
            report.seconds = time.perf_counter() - started
            if embedder is None:  # the configured model: export its fast query embedder once (rag.index.query_model)
                from rag.index.query_model import ensure_exported

                ensure_exported(settings)
            if own_store and settings.chroma_url is None:
                from rag.index.integrity import canaries, read_seal

                sealed = read_seal(data_dir) or {}
                if not plan.up_to_date or sealed.get("generation") != report.generation or not sealed.get("canaries"):
                    queries = canaries(store, catalog.all_chunk_ids(), catalog.all_paper_ids())
            done = True
            return report
        finally:
            catalog.close()
            if own_store:
                store.close()  # flushes the embedded store's files, so they can be recorded as good
                if settings.chroma_url is None:
                    from rag.index.chroma_store import remember_counts
                    from rag.index.integrity import seal

                    if done:
                        remember_counts(data_dir, report.chunks, report.papers)
                        seal(data_dir, queries, embedded=True, generation=report.generation,
                             collection=settings.collection)
            if done:
                for path in set_aside_old:  # the rebuild succeeded: the files it replaced go
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


DERIVED = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "chroma.counts", "chroma.verified", STATE)


def _set_aside_derived(data_dir: Path, embedded: bool) -> list[Path]:
    """--rebuild: every derived file (catalog, embedded store, seal, resume state) is moved aside before
    anything opens it, whatever state it is in; they are deleted once the rebuild has published."""
    from rag.index.integrity import drop_seal

    moved = []
    for name in DERIVED + (("chroma",) if embedded else ()):
        target = set_aside(data_dir / name, "replaced by --rebuild", label="old", quiet=True)
        if target is not None:
            moved.append(target)
    drop_seal(data_dir)
    return moved


def _check_damage(settings, data_dir: Path, report: IngestReport, embedded: bool) -> None:
    """The checks `rag doctor` makes (rag.index.integrity): a damaged catalog or embedded store is set aside,
    to be rebuilt (the store from cached vectors, the catalog from the corpus)."""
    from rag.index.integrity import check_catalog, check_store

    if (data_dir / CATALOG).is_file():
        problem = check_catalog(data_dir, thorough=True)
        if problem:
            _set_aside_catalog(data_dir, problem)
            report.repaired.append(f"catalog ({problem}: rebuilt)")
    if embedded and (data_dir / "chroma").exists():
        try:
            catalog = Catalog(data_dir / CATALOG)
        except (OSError, IndexCorruptError):
            catalog = None
        try:
            problem = check_store(data_dir, settings.collection, thorough=True, published=published_filter(catalog))
        finally:
            if catalog is not None:
                catalog.close()
        if problem:
            from rag.index.chroma_store import forget_system
            from rag.index.integrity import drop_seal

            set_aside(data_dir / "chroma", problem)
            forget_system(data_dir / "chroma")  # a client of this process may have opened it
            drop_seal(data_dir)
            for name in (STATE, GARBAGE):  # they describe the store that was set aside
                (data_dir / name).unlink(missing_ok=True)
            report.repaired.append(f"vector store ({problem}: rebuilt from cached vectors)")


def _set_aside_catalog(data_dir: Path, why: str) -> None:
    path = data_dir / CATALOG
    set_aside(path, why)
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)


def _check_cache(settings, report: IngestReport) -> None:
    """A damaged embedding cache is set aside now, even when nothing else is to be done."""
    path = settings.embed_cache_file()
    if path.exists():
        before = len(report.repaired)
        open_embedding_cache(path, report.repaired).close()
        if len(report.repaired) == before:
            remember_cache_verified(path)


@dataclass
class IngestPlan:
    """What an ingest has to do, decided from the corpus, the published index and any resume state before
    anything is written (plan_ingest); `_update` carries it out."""

    paths: list[Path]  # the corpus asked for
    files: list[Path]  # its files
    fingerprint: str  # of their contents
    params: dict  # what the vectors depend on (index_params)
    model_name: str
    published: dict  # the published catalog's metadata ({}: none, or of another schema)
    rebuild: bool  # start from nothing (asked for, or the params changed)
    same_keys: bool  # the catalog's line digests are keyed the current way (else they are re-keyed)
    up_to_date: bool = False  # the published index mirrors the corpus: nothing below is filled in
    # None: "new index", or "repaired" if opening a part repaired it (known only once all are open)
    reason: str | None = ""
    rebuilt: bool = False
    repairs: list[str] = field(default_factory=list)  # for the report: repairs this plan makes
    scan: CorpusScan | None = None  # pass one over the corpus
    known_lines: dict = field(default_factory=dict)  # the line digests the catalog remembers
    # The vector store: what it holds as the ingest starts (the resume log's first line), how to get it
    # there (drop it all, finish the deletes an interrupted ingest began), and the papers whose vectors go.
    stored: dict[str, str] = field(default_factory=dict)
    base_generation: str | None = None  # set when `stored` is the published catalog's papers
    leftovers_possible: bool = False  # vectors in the store of papers not in `stored`
    drop_store: bool = False
    redo_deletes: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # removed and changed papers
    kept: dict[str, str] = field(default_factory=dict)  # `stored` less `delete`: the vectors that stay
    to_embed: int = 0  # papers whose vectors are to be made (from the cache, or by the model)
    # Published papers whose content changed: their new chunk vectors are stored beside the published ones
    # (new ids), their paper vectors replaced after publication (same id; see _AfterPublication).
    replaced: set[str] = field(default_factory=set)
    # The catalog: its papers' hashes (empty when it starts afresh), which records go or stay, and the papers
    # to read again and chunk (new, changed, vectors missing, or their line or list of files changed).
    in_catalog: dict[str, str] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    keep: set[str] = field(default_factory=set)
    forgotten: list[str] = field(default_factory=list)  # remembered lines no longer in the corpus
    need: set[str] = field(default_factory=set)
    # Against what readers saw, for the report.
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0


def plan_ingest(settings, catalog: Catalog, store, corpus_paths: list[Path] | None = None, *, model_name: str,
                strict: bool = False, rebuild: bool = False, repaired: bool = False,
                recorded: tuple[int, int] | None = None) -> IngestPlan:
    """Compare the corpus with the published index (and an interrupted ingest's resume state): what changed,
    what the store holds, what to delete and what to read again. Reads only (the store may warm up).

    `repaired`: opening the catalog or the store repaired it (the index is rewritten even if the corpus is
    unchanged); `recorded`: see _healthy."""
    data_dir = Path(settings.data_dir)
    published = catalog.meta() or {}
    if published and published.get("version") != SCHEMA_VERSION:
        published = {}
    paths = [Path(p) for p in corpus_paths] if corpus_paths else indexed_corpus(settings, published or None)
    files = corpus_files(paths)
    fingerprint = corpus_fingerprint(files)
    params = index_params(settings, model_name)
    reason = ""
    if published and published.get("params") != params:
        rebuild, reason = True, "embedding model or chunking changed"
    state = None if rebuild else _read_state(data_dir / STATE, catalog, published)
    if state and state.get("params") != params:
        state = None
    counts = published.get("counts", {})
    healthy = bool(published) and _healthy(catalog, store, counts, recorded)
    same_keys = bool(published) and published.get("line_keys") == LINE_KEYS  # else the line cache is re-keyed now
    plan = IngestPlan(paths, files, fingerprint, params, model_name, published, rebuild, same_keys, reason=reason)
    if (healthy and not rebuild and state is None and published.get("corpus_fingerprint") == fingerprint
            and same_keys and not repaired):
        plan.up_to_date = True
        return plan

    if not rebuild and hasattr(store, "warm_up"):
        store.warm_up()  # its vector indexes load while the corpus is scanned
    plan.known_lines = catalog.scanned_lines() if same_keys and not rebuild else {}
    plan.scan = scan = scan_corpus(files, strict=strict, known=plan.known_lines)
    in_catalog = catalog.paper_hashes() if published and not rebuild else {}
    previously = dict(in_catalog)  # what readers saw: the report counts changes against it
    if rebuild or (not published and not state):
        stored = {} if rebuild else _legacy_stored(data_dir, params)
        plan.leftovers_possible = bool(stored)
        if stored and store.count_paper_vectors() < len(stored):
            # the previous layout had no paper vectors: its chunk vectors cannot be kept without them
            # (they are re-made from the embedding cache), or the upgraded index would not be whole
            stored = {}
            plan.reason = "upgraded"
        plan.rebuilt = bool(published) or rebuild
        plan.reason = plan.reason or ("rebuild requested" if rebuild else "upgraded" if stored else None)
        plan.drop_store = not stored
    elif state is not None:
        stored = dict(state["stored"])  # an interrupted ingest: these papers' vectors are in the store
        plan.leftovers_possible = True  # and the batch it was writing may be partly there
        # the deletes it began may be unfinished (a paper stored again since was deleted before that)
        plan.redo_deletes = [pid for pid in state["dropped"] if pid not in stored]
    elif healthy:
        stored = dict(in_catalog)
        plan.base_generation = published.get("generation")
    else:
        # the parts disagree: put every vector back (from the cache) and derive the catalog again
        stored, in_catalog = {}, {}
        plan.drop_store = True
        plan.repairs.append("index parts disagreed (rebuilt from cached vectors)")
        plan.reason = "repaired"
    plan.stored, plan.in_catalog = stored, in_catalog

    hashes = scan.hashes
    # Set operations on dict views run in C: at 100k papers these comparisons take milliseconds, where the
    # loops they replace took most of a second (measured: rag bench --parts scale-ingest).
    differ = hashes.items() - stored.items()  # (paper, hash) new or changed, against the vector store
    removed = list(stored.keys() - hashes.keys())
    changed = [pid for pid, _ in differ if pid in stored]
    plan.delete = removed + changed
    dropped = set(plan.delete)
    plan.kept = kept = {pid: h for pid, h in stored.items() if pid not in dropped}
    plan.to_embed = len(hashes.keys() - kept.keys())
    plan.replaced = {pid for pid, h in in_catalog.items() if pid in hashes and hashes[pid] != h}
    base = previously if previously else (in_catalog if in_catalog else stored)
    base_differ = hashes.items() - base.items()
    plan.changed = sum(1 for pid, _ in base_differ if pid in base)
    plan.added = len(base_differ) - plan.changed
    plan.removed = len(base.keys() - hashes.keys())
    plan.unchanged = len(hashes) - plan.added - plan.changed

    # Only papers with something to do are read again and chunked: new or changed ones, ones whose vectors
    # are missing, and ones whose line changed or whose list of files did (their record is rewritten).
    # An unchanged paper costs neither a parse nor the chunker (whose import alone takes seconds).
    known_lines = plan.known_lines
    plan.forgotten = list(known_lines.keys() - scan.lines.keys())
    plan.gone = [pid for pid, _ in in_catalog.items() - hashes.items()]
    plan.keep = keep = in_catalog.keys() - set(plan.gone)  # papers whose catalog record stays
    # a paper keeps its list of files unless one of its lines is new (fresh) or gone (forgotten)
    maybe_moved = {pid for key in plan.forgotten for pid in (known_lines[key].title_id, known_lines[key].variant_id)}
    maybe_moved &= keep
    listed = catalog.paper_sources(maybe_moved) if maybe_moved else {}
    plan.need = ((hashes.keys() - keep) | (hashes.keys() - kept.keys()) | (scan.fresh & hashes.keys())
                 | {pid for pid, files in listed.items() if pid in hashes and files != scan.sources[pid]})
    return plan


def _report_unchanged(report: IngestReport, plan: IngestPlan) -> None:
    counts = plan.published.get("counts", {})
    report.papers = report.unchanged = counts.get("papers", 0)
    report.chunks = counts.get("chunks", 0)
    report.reason = "corpus unchanged"
    report.generation = plan.published.get("generation")


def _update(settings, plan: IngestPlan, catalog: Catalog, store, report: IngestReport, embedder, progress: bool,
            chunking) -> None:
    """Carry out the plan: prepare the store, then embed and publish in one pass over the papers to read."""
    scan = plan.scan
    report.entries, report.duplicates = scan.entries, scan.duplicates
    report.issues = [str(i) for i in scan.issues]
    cache_path = settings.embed_cache_file()
    cache = open_embedding_cache(cache_path, report.repaired)
    report.repaired.extend(plan.repairs)
    report.rebuilt = plan.rebuilt
    report.reason = plan.reason if plan.reason is not None else ("repaired" if report.repaired else "new index")
    report.added, report.changed, report.removed, report.unchanged = plan.added, plan.changed, plan.removed, plan.unchanged

    data_dir = Path(settings.data_dir)
    report.space_needed = _space_needed(data_dir, plan)
    _prepare_store(plan, store, data_dir / STATE)
    # Copy-on-write: the vectors of removed and changed papers stay until the new generation is published
    # (readers keep the published one whole); their ids are recorded before the commit and deleted after.
    garbage = _AfterPublication(data_dir, catalog, plan)
    model = _ModelLoader(settings, embedder)
    if plan.to_embed and embedder is None and not cache.has_model(plan.model_name):
        # Nothing of this model is cached (a new index): it will be needed, and loading it (torch, the
        # weights: seconds) overlaps the chunking child's start and the first batch.
        model.preload()
    vectors = _Vectors(plan, store, cache, cache_path, model, data_dir / STATE, progress, catalog.published_ids,
                       settings.ingest_batch_papers)
    if chunking is None:
        chunking = LocalChunking(settings.chunk_size, settings.chunk_overlap, settings.tokenizer)
    report.generation = _publish(plan, catalog, chunking, vectors, model, report)
    _clean_up(data_dir)
    garbage.collect(store)



class _AfterPublication:
    """What the next publication leaves to do in the store, written to `DATA_DIR/ingest.garbage` before the
    commit: delete the vectors no longer published (the chunks of removed and changed papers, the paper vectors
    of removed ones) and replace the paper vectors of changed papers (kept as published until then). A kill in
    between leaves the file, and the next ingest finishes it (collect_leftover_garbage). Until then the store
    holds more vectors than the catalog: readers skip them."""

    def __init__(self, data_dir: Path, catalog: Catalog, plan: IngestPlan):
        self._path = data_dir / GARBAGE
        self._catalog = catalog
        old = set(plan.delete) | plan.replaced
        chunks = catalog.chunk_ids(old) if old else {}
        self.ids = {"chunks": [c for ids in chunks.values() for c in ids], "papers": sorted(old),
                    "replaced": sorted(plan.replaced)}
        if old:
            atomic_write(self._path, json.dumps(self.ids))

    def collect(self, store) -> None:
        if not self.ids["papers"]:
            return
        _collect(store, self._catalog, self.ids)
        self._path.unlink(missing_ok=True)


def _collect(store, catalog: Catalog, ids: dict) -> None:
    from types import SimpleNamespace

    import numpy as np

    replaced = list(ids.get("replaced") or [])
    if replaced:  # their paper vectors, from their published chunks' vectors
        chunk_ids = catalog.chunk_ids(replaced)
        found = store.chunks([c for cs in chunk_ids.values() for c in cs], with_vectors=True)
        chunks = [SimpleNamespace(paper_id=pid) for pid, cs in chunk_ids.items() for c in cs if c in found]
        vecs = [found[c][1] for cs in chunk_ids.values() for c in cs if c in found]
        if chunks:
            store.upsert_paper_vectors(*paper_vectors(chunks, np.stack(vecs)))
    published = catalog.published_ids(ids["chunks"] + ids["papers"])
    store.delete_ids([c for c in ids["chunks"] if c not in published], [p for p in ids["papers"] if p not in published])


def collect_leftover_garbage(data_dir: Path, catalog: Catalog, store, report: IngestReport) -> None:
    """Finish the deletes of an ingest stopped after it published (see _AfterPublication)."""
    path = data_dir / GARBAGE
    if not path.is_file():
        return
    try:
        ids = json.loads(path.read_text())
        _collect(store, catalog, {"chunks": list(ids["chunks"]), "papers": list(ids["papers"]),
                                  "replaced": list(ids.get("replaced") or [])})
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): the index parts are compared instead", path, exc)
    path.unlink(missing_ok=True)
    report.repaired.append("unused vectors of the previous generation (deleted)")


def _prepare_store(plan: IngestPlan, store, state_path: Path) -> None:
    """The store writes before any embedding: start it afresh or finish an earlier version's interrupted
    deletes, then begin the resume log. Nothing published is deleted before the publication (see _AfterPublication):
    the log records no deletes, and a changed paper's vectors are overwritten when its new ones are stored."""
    if plan.drop_store:
        store.drop()
    if plan.redo_deletes:
        store.delete_papers(plan.redo_deletes)
    _start_state(state_path, plan.params, plan.base_generation, plan.stored, [])


class _ModelLoader:
    """The embedding model, loaded at first use, or ahead of it in a thread (preload)."""

    def __init__(self, settings, model=None):
        self._settings = settings
        self.model = model
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def get(self):
        with self._lock:  # the preloading thread, if any, holds it while it loads
            if self.model is None:
                self.model = make_embedder(self._settings)
            return self.model

    def preload(self) -> None:
        """Load in a thread; its errors surface at first use, from get() in the ingesting thread."""
        def load() -> None:
            try:
                self.get()
            except Exception as exc:  # noqa: BLE001
                log.debug("preloading the embedding model: %s", exc)

        self._thread = threading.Thread(target=load, daemon=True, name="rag-model-preload")
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def describe(self, default: dict | None) -> dict | None:
        """The loaded model's description, or `default` if none was loaded (or it cannot describe itself)."""
        return self.model.describe() if self.model is not None and hasattr(self.model, "describe") else default


class _Vectors:
    """The embed step: chunked papers are batched, embedded through the cache (only texts this model never
    embedded reach it), and each batch is written to the store and logged in the resume state before the next,
    so an interrupted ingest continues after its last logged batch."""

    def __init__(self, plan: IngestPlan, store, cache, cache_path: Path, model: _ModelLoader, state_path: Path,
                 progress: bool, published, batch_papers: int):
        from tqdm import tqdm

        self.stored = dict(plan.kept)  # papers whose vectors are in the store, growing batch by batch
        self.embedded = 0  # texts the model embedded (the rest came from the cache)
        self._hashes = plan.scan.hashes
        self._model_name = plan.model_name
        self._leftovers_possible = plan.leftovers_possible
        self._store, self._cache, self._cache_path = store, cache, cache_path
        self._model, self._state_path = model, state_path
        self._published = published
        self._deferred = plan.replaced
        self._batch: list = []
        self._batch_papers = batch_papers
        self._bar = tqdm(total=plan.to_embed, desc="embedding papers", unit="paper",
                         disable=None if progress and plan.to_embed else True)

    def add(self, paper: Paper, chunks: list) -> None:
        self._batch.append((paper, chunks))
        if len(self._batch) >= self._batch_papers:
            self.flush()

    def flush(self) -> None:
        batch = self._batch
        chunks = [c for _, paper_chunks in batch for c in paper_chunks]
        vectors, n = embed_with_cache(None, self._cache, [c.text for c in chunks], self._model_name, self._model.get)
        self.embedded += n
        if self._leftovers_possible:  # partial leftovers of a killed run (a metadata-filtered get: not free)
            new = {c.chunk_id for c in chunks}
            found = self._store.chunk_ids_of([p.paper_id for p, _ in batch])
            extra = [c for c in found if c not in new]
            if extra:
                published = self._published(extra)
                self._store.delete_ids([c for c in extra if c not in published], [])
        self._store.upsert(chunks, vectors)
        ids, means = paper_vectors(chunks, vectors)
        rows = [i for i, pid in enumerate(ids) if pid not in self._deferred]  # published: replaced after publication
        if rows:
            self._store.upsert_paper_vectors([ids[i] for i in rows], means[rows])
        done = {p.paper_id: self._hashes[p.paper_id] for p, _ in batch}
        self.stored.update(done)
        _add_state(self._state_path, done)
        self._bar.update(len(batch))
        batch.clear()

    def close(self) -> None:
        """Write the last batch; wait for the preloading thread; close the cache and remember it as checked."""
        if self._batch:
            self.flush()
        self._bar.close()
        self._model.join()
        self._cache.close()
        remember_cache_verified(self._cache_path)


def _publish(plan: IngestPlan, catalog: Catalog, chunking, vectors: _Vectors, model: _ModelLoader,
             report: IngestReport) -> str:
    """The catalog transaction that publishes a new generation: records of gone papers removed, of moved ones
    rewritten, of new ones added as they are chunked (their vectors made on the way), then the line digests and
    the metadata. Readers see the previous generation until it commits. Returns the new generation."""
    scan, keep, hashes = plan.scan, plan.keep, plan.scan.hashes
    generation = new_generation()
    cleared = plan.rebuild or not plan.in_catalog
    with catalog.transaction() as tx:
        if cleared:
            tx.clear()
        tx.remove_papers(plan.gone)

        def to_chunk():
            for paper in iter_unique(scan, plan.need):
                pid = paper.paper_id
                if pid in keep:
                    tx.update_sources(paper, hashes[pid])
                    if pid in vectors.stored:
                        continue
                yield paper

        for paper, paper_chunks, documents in chunking.stream(to_chunk()):
            pid = paper.paper_id
            if pid not in keep:
                tx.add_paper(paper, hashes[pid], paper_chunks, documents)
            if pid not in vectors.stored:
                vectors.add(paper, paper_chunks)
        vectors.close()
        report.embedded = vectors.embedded
        if cleared or not plan.same_keys:  # the line digests went with the rest, or are re-keyed: remember them all
            if not cleared:
                tx.forget_lines()
            tx.remember_lines(scan.lines)
        else:
            tx.remember_lines({k: d for k, d in scan.lines.items() if k not in plan.known_lines},
                              forget=plan.forgotten)
        report.papers, report.chunks = len(hashes), tx.count_chunks()
        tx.set_meta({
            "version": SCHEMA_VERSION,
            "generation": generation,
            "params": plan.params,
            "complete": True,
            "corpus_paths": [str(p.resolve()) for p in plan.paths],
            "corpus_files": [str(f) for f in plan.files],
            "corpus_fingerprint": plan.fingerprint,
            "corpus_stat": _stat(plan.files),  # for corpus_change()
            "line_keys": LINE_KEYS,
            "counts": {"papers": report.papers, "chunks": report.chunks},
            "embedding": model.describe(plan.published.get("embedding")),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    return generation


def _clean_up(data_dir: Path) -> None:
    """Published: the resume state and any index of the previous layout are no longer needed."""
    (data_dir / STATE).unlink(missing_ok=True)
    for name in LEGACY:
        legacy = data_dir / name
        if legacy.is_dir():
            shutil.rmtree(legacy, ignore_errors=True)
        else:
            legacy.unlink(missing_ok=True)


def _healthy(catalog: Catalog, store, counts: dict, recorded: tuple[int, int] | None = None) -> bool:
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
