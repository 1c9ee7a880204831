"""`rag doctor`: check every part of an index and say what `rag ingest` would repair.

Each check is (name, ok, detail, repair). Nothing is changed here; `rag ingest` does the repairs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rag.errors import RagError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    repair: str = ""


def run_checks(settings) -> list[Check]:
    from rag.index.catalog import CATALOG, SCHEMA_VERSION, Catalog
    from rag.index.chroma_store import ChromaStore, probe_embedded
    from rag.index.integrity import published_filter
    from rag.index.layout import GARBAGE, STATE, disk_full, ingest_running, read_only_fs
    from rag.index.reader import check_parts, stale_reason

    data_dir = Path(settings.data_dir)
    checks: list[Check] = []
    if not data_dir.is_dir():
        return [Check("data dir", False, f"{data_dir} does not exist", "`rag ingest` builds the index")]
    checks.append(Check("data dir", True, str(data_dir.resolve())))
    if ingest_running(data_dir):
        checks.append(Check("ingest", True, "an ingest is running now: readers use the last published generation"))
    if (data_dir / STATE).exists() and not ingest_running(data_dir):
        checks.append(Check("ingest", False, "an ingest was interrupted", "`rag ingest` resumes it"))

    catalog, meta = None, {}
    path = data_dir / CATALOG
    if not path.is_file():
        legacy = (data_dir / "manifest.json").is_file()
        checks.append(Check("catalog", False, "index built by an older version" if legacy else "missing",
                            "`rag ingest` builds it (stored vectors are reused)"))
    else:
        try:
            catalog = Catalog(path)
            integrity = catalog.integrity()
            meta = catalog.meta()
            if integrity != "ok":
                checks.append(Check("catalog", False, f"damaged ({integrity[:120]})", "`rag ingest` sets it aside and rebuilds it"))
            elif not meta.get("complete") or meta.get("version") != SCHEMA_VERSION:
                checks.append(Check("catalog", False, "nothing published yet", "`rag ingest` builds it"))
            else:
                counts = meta.get("counts", {})
                checks.append(Check("catalog", True, f"{counts.get('papers'):,} papers, {counts.get('chunks'):,} chunks, "
                                                     f"generation {meta.get('generation')}"))
        except RagError as exc:
            checks.append(Check("catalog", False, str(exc).split(":")[0] + " (unreadable)", "`rag ingest` sets it aside and rebuilds it"))
            catalog = None

    if (data_dir / GARBAGE).exists() and not ingest_running(data_dir):
        checks.append(Check("ingest", False, "an update published but did not finish deleting the vectors it replaced",
                            "`rag ingest` finishes it"))

    store = None
    store_dir, scratch = data_dir, None
    if settings.chroma_url is None and (data_dir / "chroma").exists() and read_only_fs(data_dir):
        from rag.index.reader import private_store_copy

        try:  # Chroma's embedded client writes to its files even to read them: check a copy
            scratch = store_dir = private_store_copy(data_dir)
        except RagError as exc:
            checks.append(Check("vector store", False, f"not checked: {exc}", "free space in the temp dir"))
    if settings.chroma_url is None and (not checks or checks[-1].name != "vector store"):
        problem = probe_embedded(store_dir, settings.collection, thorough=True, published=published_filter(catalog)) \
            if (data_dir / "chroma").exists() else "missing"
        if problem and disk_full(problem) and scratch is None:  # not damage: check a copy where there is space
            from rag.index.reader import private_store_copy

            try:
                scratch = store_dir = private_store_copy(data_dir)
                problem = probe_embedded(store_dir, settings.collection, thorough=True,
                                         published=published_filter(catalog))
            except RagError as exc:
                problem = str(exc)
        if problem and disk_full(problem):
            checks.append(Check("vector store", False, f"not checked: no space left on the device ({problem})",
                                "free some space on the device holding the data dir"))
        elif problem:
            checks.append(Check("vector store", False, problem, "`rag ingest` rebuilds it from cached vectors"))
    if not checks or checks[-1].name != "vector store":
        try:
            store = ChromaStore(store_dir, settings.chroma_url, settings.collection)
            checks.append(Check("vector store", True, f"{store.mode}: {store.count():,} chunk vectors, "
                                                      f"{store.count_paper_vectors():,} paper vectors"))
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks.append(Check("vector store", False, f"unreadable ({exc.__class__.__name__})",
                                "`rag ingest` rebuilds it from cached vectors"))

    catalog_ok = any(c.name == "catalog" and c.ok for c in checks)
    if catalog_ok and store is not None and meta.get("complete"):
        wrong = check_parts(catalog, store, meta, data_dir)
        checks.append(Check("parts agree", not wrong, "; ".join(wrong) or "papers, chunks, lexical documents and vectors match",
                            "`rag ingest` repairs the parts that disagree (cached vectors are reused)" if wrong else ""))

    cache_path = settings.embed_cache_file()
    if cache_path.exists():
        import sqlite3

        from rag.index.embed_cache import EmbeddingCache

        try:
            if read_only_fs(cache_path):
                db = sqlite3.connect(f"file:{cache_path}?immutable=1", uri=True)
                try:
                    result = db.execute("PRAGMA quick_check(1)").fetchone()[0]
                finally:
                    db.close()
                if result != "ok":
                    raise sqlite3.DatabaseError(result)
            else:
                cache = EmbeddingCache(cache_path)
                cache.check()
                cache.close()
            checks.append(Check("embedding cache", True, str(cache_path)))
        except sqlite3.OperationalError as exc:  # not damage: the file cannot be opened or written here
            checks.append(Check("embedding cache", False, f"{cache_path} cannot be opened ({exc})",
                                "check the data dir's permissions and free space"))
        except sqlite3.DatabaseError as exc:
            checks.append(Check("embedding cache", False, f"{cache_path} is damaged ({exc})",
                                "`rag ingest` sets it aside and embeds again"))
    if meta.get("complete"):
        stale = stale_reason(settings, meta)
        checks.append(Check("corpus", not stale, stale or "the index mirrors its corpus", "`rag ingest` updates it" if stale else ""))
        from rag.index.embedders import embedder_name

        want = embedder_name(settings)
        have = meta.get("params", {}).get("embedding_model")
        checks.append(Check("embedding model", want == have, f"index {have!r}, configured {want!r}",
                            "" if want == have else "`rag ingest` rebuilds the index for the configured model, "
                            "or set the embedding settings back"))
    if store is not None:
        store.close()
    if scratch is not None:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    if catalog is not None:
        catalog.close()
    return checks


def print_checks(checks: list[Check], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            print(f"{'ok ' if c.ok else 'BAD'}  {c.name}: {c.detail}" + (f"\n     → {c.repair}" if c.repair else ""))
        print("all checks passed" if all(c.ok for c in checks) else "problems found: `rag ingest` repairs them")
    return 0 if all(c.ok for c in checks) else 1
