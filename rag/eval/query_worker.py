"""Query latency of one index for `rag bench --parts scale-ingest`, in a process of its own.

    python -m rag.eval.query_worker QUERIES_JSON REPEATS [CHROMA_URL]

Opens the index of RAG_DATA_DIR (its Chroma files served by `chroma run` at CHROMA_URL when given) and
times search per retrieval mode; embedded, it also compares the row-budgeted BM25 of rag.index.lexical
with exhaustive BM25 (time and top-10/50 overlap). Prints one JSON line, with the process's peak RSS
(a process of its own, so the figure is the client's alone).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

from rag.eval.timing import summary, time_each
from rag.index import lexical
from rag.index.catalog import CATALOG, Catalog
from rag.index.chroma_store import ChromaStore
from rag.retrieve.hybrid import Retriever
from rag.settings import load_settings

MODES = ("hybrid", "dense", "bm25")


def time_modes(retriever: Retriever, queries: list[str], repeats: int) -> dict:
    """p50/p95 of search per mode, after one warm-up round (caches, HNSW pages, FTS5 pages)."""
    out = {}
    for mode in MODES:
        def search(q: str, m: str = mode):
            return retriever.search(q, 10, m)

        time_each(search, queries, 1)
        out[mode] = summary(time_each(search, queries, repeats))
    return out


def exhaustive_bm25(retriever: Retriever, data_dir: Path, queries: list[str]) -> dict:
    """What the row budget of rag.index.lexical costs in ranking, and saves in time, against exhaustive BM25."""
    catalog = Catalog(data_dir / CATALOG)

    def exact(q: str):
        return catalog.lexical(lexical.match_expression(q), 50)

    ts, top10, top50 = time_each(exact, queries, 1), [], []
    for q in queries:
        best, got = exact(q), retriever.index.lexical(q, 50)
        for k, acc in ((10, top10), (50, top50)):
            want = {c for c, _ in best[:k]}
            acc.append(len(want & {c for c, _ in got[:k]}) / max(1, len(want)))
    return {**summary(ts), "overlap_at_10": round(statistics.mean(top10), 3),
            "overlap_at_50": round(statistics.mean(top50), 3),
            "row_budget": lexical.ROW_BUDGET, "rescore_pool": lexical.RESCORE_POOL}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    queries, repeats, url = json.loads(args[0]), int(args[1]), (args[2] if len(args) == 3 else None)
    settings = load_settings()
    # served: the same Chroma files, queried over HTTP
    store = ChromaStore(Path(settings.data_dir), url, settings.collection) if url else None
    t = time.perf_counter()
    retriever = Retriever.from_settings(settings, store=store, check_stale=False)
    out = {"open_s": round(time.perf_counter() - t, 2), "modes": time_modes(retriever, queries, repeats)}
    if not url:
        out["bm25_exhaustive"] = exhaustive_bm25(retriever, Path(settings.data_dir), queries)
    out["client_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
