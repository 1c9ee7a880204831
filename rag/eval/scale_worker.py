"""One point of `rag bench --parts scale`: the store (and, embedded, BM25) at `n` synthetic papers.

    python -m rag.eval.scale_worker N MODE DATA_DIR [CHROMA_URL]

MODE is "embedded" or "server" (then CHROMA_URL is the `chroma run` to use). Random unit vectors stand in
for embeddings: this measures the store, not the model. Prints one JSON line: add time, query p50/p95,
BM25 build and query times (embedded only) and the process's peak RSS. A separate process per point, so
each peak RSS is that size's alone.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from rag.eval.synth import synthetic_papers
from rag.eval.timing import summary, time_each
from rag.index.catalog import Catalog
from rag.index.chroma_store import ChromaStore
from rag.index.lexical import match_expression
from rag.records import Chunk, Paper
from rag.text import term_document

DIM = 384  # MiniLM's dimension, so the HNSW index is the size the product's would be
BATCH = 5000
BM25_QUERIES = ["diffusion attention", "sparse autoencoder interpretability", "reward alignment",
                "graph pruning quantization"]


def _unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    vecs = rng.standard_normal((rows, DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def measure_store(data_dir: Path, url: str | None, papers: list[dict]) -> dict:
    """Add `papers` to a Chroma collection in batches, then query it (p50/p95 of 50 queries after 10 warm-ups)."""
    rng = np.random.default_rng(0)
    store = ChromaStore(data_dir, url, "bench")
    t = time.perf_counter()
    for i in range(0, len(papers), BATCH):
        part = papers[i:i + BATCH]
        chunks = [Chunk(f"s{i + j}:0", f"s{i + j}", p["title"], 0, p["title"], p["abstract"][:300])
                  for j, p in enumerate(part)]
        store.upsert(chunks, _unit(rng, len(part)))
    add_s = time.perf_counter() - t
    queries = _unit(rng, 60)
    time_each(lambda q: store.query(q, 50), queries[:10], 1)  # warm-up
    s = summary(time_each(lambda q: store.query(q, 50), queries[10:], 1))
    return {"store_add_s": round(add_s, 1), "store_query_p50_ms": s["p50_ms"], "store_query_p95_ms": s["p95_ms"]}


def measure_bm25(data_dir: Path, papers: list[dict]) -> dict:
    """Build the FTS5 catalog of `papers`, then time BM25 queries (10 rounds after a warm-up)."""
    t = time.perf_counter()
    catalog = Catalog(data_dir / "bench.sqlite", create=True)
    with catalog.transaction() as tx:
        for i, p in enumerate(papers):
            chunk = Chunk(f"s{i}:0", f"s{i}", p["title"], 0, p["title"] + " " + p["abstract"], p["abstract"])
            tx.add_paper(Paper(f"s{i}", p["title"], p["abstract"]), str(i), [chunk], [term_document(chunk.text)])
    build_s = time.perf_counter() - t

    def search(q: str):
        return catalog.lexical(match_expression(q), 50)

    time_each(search, BM25_QUERIES, 1)  # warm-up
    s = summary(time_each(search, BM25_QUERIES, 10))
    return {"bm25_build_s": round(build_s, 1), "bm25_query_p50_ms": s["p50_ms"], "bm25_query_p95_ms": s["p95_ms"]}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4) or args[1] not in ("embedded", "server") or (args[1] == "server") != (len(args) == 4):
        print(__doc__, file=sys.stderr)
        return 2
    n, mode, data_dir, url = int(args[0]), args[1], Path(args[2]), (args[3] if len(args) == 4 else None)
    papers = list(synthetic_papers(n))
    out = {"n": n, "mode": mode, **measure_store(data_dir, url, papers)}
    if mode == "embedded":
        out |= measure_bm25(data_dir, papers)
    out["process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
