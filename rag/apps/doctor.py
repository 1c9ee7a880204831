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
    from rag.index.ingest import STATE
    from rag.index.layout import ingest_running
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

    store = None
    if settings.chroma_url is None:
        problem = probe_embedded(data_dir, settings.collection) if (data_dir / "chroma").exists() else "missing"
        if problem:
            checks.append(Check("vector store", False, problem, "`rag ingest` rebuilds it from cached vectors"))
    if not checks or checks[-1].name != "vector store":
        try:
            store = ChromaStore(data_dir, settings.chroma_url, settings.collection)
            checks.append(Check("vector store", True, f"{store.mode}: {store.count():,} chunk vectors, "
                                                      f"{store.count_paper_vectors():,} paper vectors"))
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks.append(Check("vector store", False, f"unreadable ({exc.__class__.__name__})",
                                "`rag ingest` rebuilds it from cached vectors"))

    if catalog is not None and store is not None and meta.get("complete") and not ingest_running(data_dir):
        wrong = check_parts(catalog, store, meta, data_dir)
        checks.append(Check("parts agree", not wrong, "; ".join(wrong) or "papers, chunks, lexical documents and vectors match",
                            "`rag ingest` repairs the parts that disagree (cached vectors are reused)" if wrong else ""))

    cache_path = settings.embed_cache_file()
    if cache_path.exists():
        import sqlite3

        from rag.index.embed_cache import EmbeddingCache

        try:
            cache = EmbeddingCache(cache_path)
            cache.check()
            cache.close()
            checks.append(Check("embedding cache", True, str(cache_path)))
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
