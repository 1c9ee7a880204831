"""Benchmarks: ingest throughput, warm latency, embedding speed, and scaling of the store and BM25.

    rag bench [--parts ingest,latency,evidence,embedding,ui,scale,reingest,scale-ingest,lexical-scale]
              [--sizes 1000,10000,100000]
              [--reingest-n 100000] [--workdir DIR] [--no-server] [--report] [--out DIR]

Each part prints a table and writes DIR/<part>.json; a PNG plot goes with the scale part.
Speed claims in the README come from here, never from timed tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rag.eval.timing import free_port, print_table, save_json, summary, time_each

QUESTIONS = [
    "which papers erase concepts in diffusion models?",
    "papers on sparse autoencoders for LLM interpretability",
    "concept bottleneck models",
    "How many instruction-following samples does Robin3D construct?",
    "direct preference optimization for reasoning",
    "memorization in diffusion models",
    "retrieval augmented generation hallucination",
    "vision transformer robustness to distribution shift",
    "machine unlearning benchmarks",
    "protein folding",
]


def bench_ingest(out: Path, backend: str) -> dict:
    """Cold ingest of the vendored corpus into a fresh data dir, then an unchanged re-run (CLI, real processes)."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    env = os.environ | {"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_BACKEND": backend}
    rag = str(Path(sys.executable).parent / "rag")
    rows = []
    for label in ("cold", "unchanged"):
        t = time.perf_counter()
        r = subprocess.run([rag, "ingest", "--json"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode:
            raise SystemExit(f"ingest failed: {r.stderr.strip()}")
        rep = json.loads(r.stdout)
        rows.append({"run": label, "wall_s": round(wall, 2), "in_process_s": round(rep["seconds"], 2),
                     "papers": rep["papers"], "chunks": rep["chunks"], "embedded": rep["embedded"],
                     "papers_per_s": round(rep["papers"] / wall, 1) if rep["embedded"] else None})
    shutil.rmtree(data_dir, ignore_errors=True)
    data = {"backend": backend, "runs": rows}
    print_table(f"ingest ({backend}, vendored corpus)", rows)
    save_json(out, "ingest", data)
    return data


def bench_reingest(out: Path, n: int) -> dict:
    """A large synthetic JSONL ingested cold, re-ingested unchanged, then with 10 papers appended
    (hash backend: this measures the pipeline, not the model). Real `rag ingest` processes."""
    from rag.eval.synth import write_jsonl

    tmp = Path(tempfile.mkdtemp(prefix="bench-reingest-"))
    corpus = write_jsonl(tmp / "papers.jsonl", n)
    env = os.environ | {"RAG_DATA_DIR": str(tmp / "index"), "RAG_EMBED_BACKEND": "hash"}
    rag = str(Path(sys.executable).parent / "rag")
    rows = []

    def run(label: str) -> None:
        t = time.perf_counter()
        r = subprocess.run([rag, "ingest", "--jsonl", str(corpus), "--json"], env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"ingest failed: {r.stderr.strip()}")
        rep = json.loads(r.stdout)
        rows.append({"run": label, "papers": rep["papers"], "chunks": rep["chunks"], "added": rep["added"],
                     "embedded": rep["embedded"], "wall_s": round(time.perf_counter() - t, 1)})

    run("cold")
    run("unchanged")
    _append_papers(corpus, n)
    run("10 papers appended")
    shutil.rmtree(tmp, ignore_errors=True)
    data = {"n": n, "backend": "hash", "runs": rows}
    print_table(f"re-ingest at {n} papers", rows)
    save_json(out, "reingest", data)
    return data


def bench_latency(out: Path, repeats: int = 5) -> dict:
    """Warm in-process latency of search (per mode) and of the extractive ask, on the index in RAG_DATA_DIR;
    hybrid search side by side with a llama-index peer (QueryFusionRetriever, dense + BM25, reciprocal rank
    fusion) over the same papers and model, measured in alternating rounds."""
    import numpy as np
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import (
        BaseRetriever,
        QueryFusionRetriever,
        VectorIndexRetriever,
    )
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from rag.answer.assistant import Assistant
    from rag.index.embed_cache import embed_with_cache, open_embedding_cache
    from rag.retrieve.hybrid import Retriever
    from rag.settings import load_settings
    from rag.text import content_terms

    settings = load_settings()
    retriever = Retriever.from_settings(settings)
    assistant = Assistant.from_settings(settings, retriever=retriever)

    # The peer: one node per paper (title + abstract) embedded by the same packaged model (through the
    # embedding cache), llama-index's in-memory vector store, and BM25; each retriever returns as many
    # candidates as ours, fused by reciprocal rank (llama-index's k=60) to the top 10. The query vector comes
    # from the same per-text cache as ours (warm: neither side re-embeds a repeated question).
    class QueryVectors(BaseEmbedding):
        def _get_query_embedding(self, query):
            return retriever.embed_query(query).tolist()

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text):
            return self._get_query_embedding(text)

    class Bm25(BaseRetriever):
        """Okapi BM25 (k1 1.5, b 0.75) over the nodes with precomputed per-term scores, as
        llama-index-retrievers-bm25 does with bm25s (used instead when that package is installed)."""

        def __init__(self, nodes, top_k):
            super().__init__(callback_manager=CallbackManager([]))
            self._nodes, self._top_k = nodes, top_k
            docs = [content_terms(node.text) for node in nodes]
            avg = sum(map(len, docs)) / max(1, len(docs))
            postings: dict[str, dict[int, int]] = {}
            for i, terms in enumerate(docs):
                for t in terms:
                    postings.setdefault(t, {}).setdefault(i, 0)
                    postings[t][i] += 1
            self._scores = {}
            for t, tfs in postings.items():
                idf = np.log(1 + (len(docs) - len(tfs) + 0.5) / (len(tfs) + 0.5))
                rows = np.fromiter(tfs, dtype=np.int64)
                tf = np.fromiter(tfs.values(), dtype=np.float32)
                lengths = np.array([len(docs[i]) for i in rows], dtype=np.float32)
                self._scores[t] = rows, idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * lengths / avg))

        def _retrieve(self, query_bundle):
            total = np.zeros(len(self._nodes), dtype=np.float32)
            for t in set(content_terms(query_bundle.query_str)):
                if t in self._scores:
                    rows, scores = self._scores[t]
                    total[rows] += scores
            top = np.argsort(-total)[: self._top_k]
            return [NodeWithScore(node=self._nodes[i], score=float(total[i])) for i in top if total[i] > 0]

    t0 = time.perf_counter()
    papers = retriever.index.papers()
    texts = [f"{p.title}\n\n{p.abstract}" for p in papers]
    cache = open_embedding_cache(Path(settings.embed_cache_path or Path(settings.data_dir) / "embed_cache.sqlite"))
    vectors, _ = embed_with_cache(retriever.embedder, cache, texts, retriever.embedder.name)
    cache.close()
    nodes = [TextNode(id_=p.paper_id, text=text, embedding=v.tolist()) for p, text, v in zip(papers, texts, vectors)]
    callbacks, embed = CallbackManager([]), QueryVectors(model_name=retriever.embedder.name)
    vector_index = VectorStoreIndex(nodes, embed_model=embed, callback_manager=callbacks,
                                    storage_context=StorageContext.from_defaults(vector_store=SimpleVectorStore()))
    n = settings.candidates
    dense = VectorIndexRetriever(vector_index, similarity_top_k=n, embed_model=embed, callback_manager=callbacks)
    try:
        from llama_index.retrievers.bm25 import BM25Retriever

        lexical, lexical_name = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=n), "llama-index BM25Retriever"
    except ImportError:
        lexical, lexical_name = Bm25(nodes, n), "numpy BM25 (llama-index-retrievers-bm25 not installed)"
    peer = QueryFusionRetriever([dense, lexical], llm=MockLLM(), mode="reciprocal_rerank", similarity_top_k=10,
                                num_queries=1, use_async=False, callback_manager=callbacks)
    setup_s = time.perf_counter() - t0

    for q in QUESTIONS:  # warm-up
        retriever.search(q, 10)
        peer.retrieve(q)
    ours, theirs = [], []
    for _ in range(repeats):  # alternating rounds: both sides see the same machine load
        ours += time_each(lambda q: retriever.search(q, 10, "hybrid"), QUESTIONS, 1)
        theirs += time_each(peer.retrieve, QUESTIONS, 1)
    hybrid, peer_row = summary(ours), summary(theirs)
    rows = [{"op": "search/hybrid", **hybrid, "vs_peer_p50": round(hybrid["p50_ms"] / peer_row["p50_ms"], 2)},
            {"op": "peer/llama-index fusion", **peer_row}]
    rows += [{"op": f"search/{mode}", **summary(time_each(lambda q, m=mode: retriever.search(q, 10, m), QUESTIONS, repeats))}
             for mode in ("dense", "bm25")]
    rows.append({"op": "ask/extractive", **summary(time_each(lambda q: assistant.ask(q, extractive=True), QUESTIONS, repeats))})
    peer_about = {"retriever": "QueryFusionRetriever(reciprocal_rerank, num_queries=1)", "dense": "VectorIndexRetriever "
                  "over SimpleVectorStore, one node per paper (title + abstract)", "lexical": lexical_name,
                  "candidates_per_retriever": n, "papers": len(nodes), "setup_s": round(setup_s, 1)}
    print_table("warm latency (in-process)", rows)
    print(f"  peer: {peer_about}")
    save_json(out, "latency", {"rows": rows, "peer": peer_about})
    return {"rows": rows, "peer": peer_about}


CLI_TARGETS_S = {"search": 2.0, "ask --extractive": 2.5}  # issue 23's one-shot targets at 701 papers
HEAVY_IMPORTS = ("torch", "transformers", "sentence_transformers", "sklearn", "llama_index", "gradio", "openai")
# What loading the query embedder adds to a command that has its settings and numpy already (every one has):
# the embedder module, onnxruntime, tokenizers and the session (or torch, on the fallback path).
_EMBEDDER_LOAD = """
import time
import numpy
from rag.settings import load_settings
settings = load_settings()
t, c = time.perf_counter(), time.process_time()
from rag.index.query_model import make_query_embedder
embedder = make_query_embedder(settings)
print(time.perf_counter() - t, time.process_time() - c, embedder.describe()["backend"])
"""


def _import_entries(stderr: str) -> list[dict]:
    """`-X importtime` lines as package entry points: an import whose parent belongs to another package
    (or to none), with its cumulative time; summed per package, largest first."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _own, cumulative, name = line[len("import time:"):].split("|")
        rows.append((int(cumulative), (len(name) - len(name.lstrip())) // 2, name.strip()))
    totals: dict[str, int] = {}
    for i, (cumulative, depth, name) in enumerate(rows):  # a parent is printed after its children
        parent = next((r[2] for r in rows[i + 1:] if r[1] < depth), None)
        root = name.split(".")[0]
        if parent is None or parent.split(".")[0] != root:
            totals[root] = totals.get(root, 0) + cumulative
    return [{"package": k, "cumulative_ms": round(v / 1000, 1)} for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]


def bench_cli(out: Path, repeats: int = 5, question: str = QUESTIONS[0]) -> dict:
    """One-shot wall time of `rag --help`, `rag search Q` and `rag ask Q --extractive` (real processes on the
    index in RAG_DATA_DIR, median of `repeats` after one unmeasured run each), the query embedder's load
    time in a fresh process, and what `rag search` imports (-X importtime, top 10 packages)."""
    import resource

    from rag.index.reader import open_catalog
    from rag.settings import load_settings

    settings = load_settings()
    catalog = open_catalog(Path(settings.data_dir))
    papers = catalog.meta().get("counts", {}).get("papers")
    catalog.close()
    rag = str(Path(sys.executable).parent / "rag")
    commands = {"--help": ["--help"], "search": ["search", question], "ask --extractive": ["ask", question, "--extractive"]}
    rows = []
    for label, args in commands.items():
        walls, cpus = [], []
        for i in range(repeats + 1):  # the first run warms the page cache (and exports a missing query model)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            r = subprocess.run([rag, *args], capture_output=True, text=True, env=os.environ)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if r.returncode:
                raise SystemExit(f"rag {' '.join(args)} failed: {r.stderr.strip()}")
            if i:
                walls.append(wall)
                cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        p50 = statistics.median(walls)
        target = CLI_TARGETS_S.get(label)
        rows.append({"command": f"rag {label}", "p50_s": round(p50, 2), "min_s": round(min(walls), 2),
                     "max_s": round(max(walls), 2), "cpu_p50_s": round(statistics.median(cpus), 2),
                     "target_s": target, "met": None if target is None else p50 <= target,
                     "runs_s": [round(w, 2) for w in walls]})
    loads, load_cpus = [], []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", _EMBEDDER_LOAD], capture_output=True, text=True, env=os.environ)
        if r.returncode:
            raise SystemExit(f"loading the query embedder failed: {r.stderr.strip()}")
        seconds, cpu, backend = r.stdout.split()
        loads.append(float(seconds))
        load_cpus.append(float(cpu))
    rows.append({"command": f"query embedder load ({backend}, fresh process, its imports included)",
                 "p50_s": round(statistics.median(loads), 3), "min_s": round(min(loads), 3), "max_s": round(max(loads), 3),
                 "cpu_p50_s": round(statistics.median(load_cpus), 3), "target_s": 0.5,
                 "met": statistics.median(loads) <= 0.5, "runs_s": [round(x, 3) for x in loads]})
    r = subprocess.run([sys.executable, "-X", "importtime", rag, "search", question], capture_output=True, text=True,
                       env=os.environ)
    entries = _import_entries(r.stderr)
    heavy = [e["package"] for e in entries if e["package"] in HEAVY_IMPORTS]
    data = {"question": question, "papers": papers, "repeats": repeats, "rows": rows,
            "search_imports_top10": entries[:10], "search_heavy_imports": heavy,
            "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    print_table(f"one-shot CLI ({papers} papers, median of {repeats}; load average {data['load_average'][0]})", rows)
    print_table("rag search: top 10 imports by cumulative time (-X importtime, per package)", entries[:10])
    print(f"  heavy libraries imported by rag search: {', '.join(heavy) or 'none'}")
    save_json(out, "cli", data)
    return data


def bench_evidence(out: Path, papers: int = 15, repeats: int = 3) -> dict:
    """What the LLM evidence step adds over retrieval, with an in-process zero-delay LLM (the relevance
    oracle) that judges every paper relevant, quoting its first sentence: prompts, concurrency, parsing and
    quote checks, not an LLM nor its HTTP round trips. No cache, so every paper is a call."""
    from rag.eval.oracle import RelevanceOracle
    from rag.judge.llm_evidence import EvidenceCache, EvidenceStep
    from rag.prompts import load_prompts
    from rag.retrieve.hybrid import Retriever
    from rag.settings import load_settings

    settings = load_settings()
    retriever = Retriever.from_settings(settings)
    index = retriever.index
    pools = {q: retriever.retrieve(q, papers).hits for q in QUESTIONS}
    gold = {q: [h.title for h in hits] for q, hits in pools.items()}
    rows = []
    step = EvidenceStep(RelevanceOracle(gold), load_prompts(), EvidenceCache(None), concurrency=settings.evidence_concurrency)
    step.judge(QUESTIONS[0], [index.paper(h.paper_id) for h in pools[QUESTIONS[0]]], time.monotonic() + 60)  # warm-up
    retrieve_ms, evidence_ms = [], []
    for _ in range(repeats):
        for q in QUESTIONS:
            t = time.perf_counter()
            hits = retriever.retrieve(q, papers).hits
            retrieve_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            result = step.judge(q, [index.paper(h.paper_id) for h in hits], time.monotonic() + 60)
            evidence_ms.append((time.perf_counter() - t) * 1000)
            if result.unanswered or result.invalid:
                raise SystemExit(f"evidence bench: {result.unanswered} unanswered, {result.invalid} invalid for {q!r}")
    for op, ts in (("retrieve", retrieve_ms), (f"evidence ({papers} papers, concurrency "
                                                f"{settings.evidence_concurrency})", evidence_ms)):
        rows.append({"op": op, **summary(ts, 1)})
    data = {"papers": papers, "concurrency": settings.evidence_concurrency, "rows": rows,
            "evidence_over_retrieval_p50_ms": rows[1]["p50_ms"], "goal_ms": 300}
    print_table("LLM evidence step over retrieval (zero-delay in-process oracle)", rows)
    print(f"  evidence step adds {rows[1]['p50_ms']} ms p50 ({rows[1]['p95_ms']} ms p95) over retrieval for {papers} "
          "papers (goal <= 300 ms)")
    save_json(out, "evidence", data)
    return data


def bench_embedding(out: Path, n: int = 256, rounds: int = 5) -> dict:
    """Texts/s of torch fp32 and torch bf16 on the same real chunk texts, interleaved in one run, and the
    cosine of bf16 vectors to fp32. (ONNX Runtime for bulk embedding, measured the same way, is in
    eval/bench/embedding-onnx-vs-bf16.json.)

    The machine is shared, so other work only ever slows a run down: ratios use each backend's best
    round (the least disturbed); the median round and the per-round ratios are reported too."""
    import statistics

    import numpy as np

    from rag.corpus.chunk import Chunker
    from rag.corpus.parse import load_corpus
    from rag.index.embedders import TorchEmbedder, native_bf16
    from rag.settings import load_settings

    settings = load_settings()
    papers = load_corpus(settings.corpus_paths).papers
    chunks = Chunker(settings.chunk_size, settings.chunk_overlap, settings.tokenizer).chunk_all(papers)
    texts = [c.text for c in chunks[:: max(1, len(chunks) // n)]][:n]  # spread over the whole corpus
    batch, path = settings.embed_batch_size, settings.model_path()
    backends = {
        "torch fp32": TorchEmbedder(path, batch_size=batch, precision="fp32"),
        "torch bf16": TorchEmbedder(path, batch_size=batch, precision="bf16"),
    }
    skipped = {}
    names = list(backends)
    for emb in backends.values():
        emb.embed(texts[:16])  # warm-up
    speeds = {name: [] for name in names}
    vecs = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            t = time.perf_counter()
            vecs[name] = backends[name].embed(texts)
            speeds[name].append(len(texts) / (time.perf_counter() - t))
    rows = []
    for name in names:
        info = backends[name].describe()
        rows.append({"backend": name, "precision": info["precision"], "texts": len(texts), "batch": batch,
                     "best_texts_per_s": round(max(speeds[name]), 1),
                     "median_texts_per_s": round(statistics.median(speeds[name]), 1),
                     "runs": [round(v, 1) for v in speeds[name]]})
    ratios, parity = {}, {}
    for name in names[1:]:
        label = name.split()[-1]
        per_round = [a / b for a, b in zip(speeds[name], speeds["torch fp32"])]
        ratios[f"{label}/fp32"] = round(max(speeds[name]) / max(speeds["torch fp32"]), 2)
        ratios[f"{label}/fp32_per_round_median"] = round(statistics.median(per_round), 2)
        cos = np.sum(vecs[name] * vecs["torch fp32"], axis=1)
        parity[name] = {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}
    data = {"texts": len(texts), "batch_size": batch, "rounds": rounds, "cpu_native_bf16": native_bf16(),
            "rows": rows, "ratios": ratios, "cosine_vs_fp32": parity, "skipped": skipped}
    print_table(f"embedding throughput ({len(texts)} real chunk texts, {rounds} interleaved rounds, texts/s)", rows)
    print_table("ratios and parity vs torch fp32", [ratios] + [{"backend": k, **v} for k, v in parity.items()])
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")
    save_json(out, "embedding", data)
    return data


def _chroma_server(path: Path):
    import urllib.request

    port = free_port()
    chroma = str(Path(sys.executable).parent / "chroma")
    proc = subprocess.Popen([chroma, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/api/v2/heartbeat", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("chroma server did not start")


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB (VmRSS: now; VmHWM: its peak), NaN when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def bench_scale(out: Path, sizes: list[int]) -> dict:
    """Store and BM25 query latency and memory at growing synthetic sizes (random unit vectors), embedded vs server."""
    rows = []
    for n in sizes:
        for mode in ("embedded", "server"):
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
            server = None
            args = [sys.executable, "-m", "rag.eval.scale_worker", str(n), mode, str(tmp)]
            if mode == "server":
                server, url = _chroma_server(tmp / "server")
                args.append(url)
            r = subprocess.run(args, capture_output=True, text=True)
            if server is not None:
                row_server_rss = _rss_mb(server.pid)
                server.terminate()
                server.wait()
            if r.returncode:
                raise SystemExit(f"scale worker failed at n={n} {mode}: {r.stderr[-800:]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            if server is not None:
                row["server_rss_mb"] = row_server_rss
            rows.append(row)
            print_table(f"scale n={n} {mode}", [row])
            shutil.rmtree(tmp, ignore_errors=True)
    data = {"rows": rows}
    save_json(out, "scale", data)
    _plot_scale(out, rows)
    return data


def _plot_scale(out: Path, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in (("embedded", "o"), ("server", "s")):
        rs = [r for r in rows if r["mode"] == mode]
        axes[0].plot([r["n"] for r in rs], [r["store_query_p50_ms"] for r in rs], marker=marker, label=f"Chroma {mode} p50")
    rs = [r for r in rows if "bm25_query_p50_ms" in r]
    axes[0].plot([r["n"] for r in rs], [r["bm25_query_p50_ms"] for r in rs], marker="^", label="BM25 p50")
    axes[0].set(xscale="log", xlabel="papers", ylabel="query ms", title="Query latency")
    axes[0].legend()
    for mode, marker in (("embedded", "o"), ("server", "s")):
        rs = [r for r in rows if r["mode"] == mode]
        axes[1].plot([r["n"] for r in rs], [r["process_max_rss_mb"] for r in rs], marker=marker, label=f"client process ({mode})")
    rs = [r for r in rows if "server_rss_mb" in r]
    axes[1].plot([r["n"] for r in rs], [r["server_rss_mb"] for r in rs], marker="x", label="chroma server")
    axes[1].set(xscale="log", xlabel="papers", ylabel="RSS MB", title="Memory")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ ingest and query at scale

def _bench_queries(n: int = 50) -> list[str]:
    """`n` questions of the dev set, spread over its types (list, factoid, keyword...)."""
    path = Path(__file__).resolve().parents[2] / "eval" / "datasets" / "dev.jsonl"
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
    step = max(1, len(questions) // n)
    return questions[::step][:n]


def _query_run(env: dict, queries: list[str], repeats: int, url: str | None = None) -> dict:
    args = [sys.executable, "-m", "rag.eval.query_worker", json.dumps(queries), str(repeats)] + ([url] if url else [])
    r = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"query worker failed: {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _append_papers(corpus: Path, n_existing: int, k: int = 10) -> None:
    """`k` new papers at the end of the JSONL (titles prefixed, so they cannot repeat an existing one)."""
    from rag.eval.synth import synthetic_papers

    with open(corpus, "a") as fh:
        for i, obj in enumerate(synthetic_papers(k, seed=n_existing + 1, start=n_existing)):
            obj["title"] = f"Appended study {i}: {obj['title']}"
            fh.write(json.dumps(obj) + "\n")


def bench_scale_ingest(out: Path, sizes: list[int], workdir: Path | None = None, repeats: int = 2,
                       server: bool = True) -> dict:
    """At each size: `rag ingest --jsonl` (real processes, hash embedder) cold, unchanged, 10 papers appended
    and the same 10 removed again (papers missing from the file are removed); then query p50/p95 per
    retrieval mode on that index, Chroma embedded and served by `chroma run`, with client and server RSS.

    `workdir` keeps each size's JSONL and index (a later run reuses them and skips the cold ingest, which
    it then reports from the previous JSON)."""
    keep = workdir is not None
    root_all = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="bench-scale-ingest-"))
    rag = str(Path(sys.executable).parent / "rag")
    queries = _bench_queries()
    previous = {}
    try:
        previous = {r["n"]: r for r in json.loads((out / "scale_ingest.json").read_text())["rows"]}
    except (OSError, ValueError, KeyError):
        pass
    rows = []
    for n in sizes:
        root = root_all / f"n{n}"
        root.mkdir(parents=True, exist_ok=True)
        corpus, data_dir = root / "papers.jsonl", root / "index"
        row: dict = {"n": n}
        if not corpus.is_file():
            from rag.eval.synth import write_jsonl

            t = time.perf_counter()
            write_jsonl(corpus.with_suffix(".tmp"), n).rename(corpus)
            row["synth_s"] = round(time.perf_counter() - t, 1)
        size = corpus.stat().st_size
        env = {k: v for k, v in os.environ.items() if k not in ("RAG_CHROMA_URL", "RAG_CORPUS", "RAG_EMBED_URL")}
        env |= {"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_BACKEND": "hash"}

        def ingest(label: str, expect: dict | None = None, n=n, corpus=corpus, env=env) -> dict:
            import resource

            t, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            r = subprocess.run([rag, "ingest", "--jsonl", str(corpus), "--json"], env=env, capture_output=True, text=True,
                               check=False)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU seconds: unaffected by other work on the machine
            cpu_s = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
            if r.returncode:
                raise SystemExit(f"ingest ({label}, n={n}) failed: {r.stderr.strip()[-1500:]}")
            rep = json.loads(r.stdout)
            for key, value in (expect or {}).items():
                if rep[key] != value:
                    raise SystemExit(f"ingest ({label}, n={n}): {key} = {rep[key]}, expected {value}")
            print(f"  n={n} {label}: {wall:.1f} s ({cpu_s:.1f} s CPU)", flush=True)
            return {"wall_s": round(wall, 2), "cpu_s": round(cpu_s, 2), "in_process_s": round(rep["seconds"], 2),
                    "papers": rep["papers"],
                    "chunks": rep["chunks"], "added": rep["added"], "removed": rep["removed"], "embedded": rep["embedded"]}

        reused = keep and (data_dir / "index.sqlite").is_file()
        if reused:
            row["cold"] = dict(previous.get(n, {}).get("cold") or {}, reused_index=True)
            # not a figure: brings a kept index in line with its file (and with this version's caches)
            row["sync"] = ingest("sync of the kept index (not a figure)")
        else:
            row["cold"] = ingest("cold")
            save_json(out, "scale_ingest", _scale_ingest_data(rows + [row], previous))  # kept if a later step fails
        row["unchanged"] = ingest("unchanged", {"added": 0, "removed": 0, "embedded": 0})
        _append_papers(corpus, n)
        try:
            row["append_10"] = ingest("10 papers appended", {"added": 10, "removed": 0})
        finally:
            with open(corpus, "r+b") as fh:  # the same 10 papers gone from the file again
                fh.truncate(size)
        row["remove_10"] = ingest("10 papers removed", {"added": 0, "removed": 10})
        import sqlite3

        with sqlite3.connect(data_dir / "index.sqlite") as db:
            row["distinct_terms"] = db.execute("SELECT count(*) FROM terms").fetchone()[0]
        row["index_mb"] = round(sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file()) / 2**20, 1)
        row["embedded_queries"] = _query_run(env, queries, repeats)
        print(f"  n={n} queries (embedded): {row['embedded_queries']['modes']}", flush=True)
        if server:
            served = root / "server"
            shutil.rmtree(served, ignore_errors=True)
            shutil.copytree(data_dir / "chroma", served)
            proc, url = _chroma_server(served)
            try:
                row["server_queries"] = _query_run(env, queries, repeats, url)
                row["server_queries"]["server_peak_rss_mb"] = _rss_mb(proc.pid, "VmHWM")
            finally:
                proc.terminate()
                proc.wait()
                shutil.rmtree(served, ignore_errors=True)
            print(f"  n={n} queries (server): {row['server_queries']['modes']}", flush=True)
        rows.append(row)
        save_json(out, "scale_ingest", _scale_ingest_data(rows, previous))
    if not keep:
        shutil.rmtree(root_all, ignore_errors=True)
    data = _scale_ingest_data(rows, previous)
    save_json(out, "scale_ingest", data)
    _print_scale_ingest(data)
    return data


FIGURES = {  # name -> (unit, where in a row)
    "cold_s": ("s", ("cold", "wall_s")),
    "cold_cpu_s": ("s", ("cold", "cpu_s")),
    "unchanged_s": ("s", ("unchanged", "wall_s")),
    "append_10_s": ("s", ("append_10", "wall_s")),
    "remove_10_s": ("s", ("remove_10", "wall_s")),
    "append_10_cpu_s": ("s", ("append_10", "cpu_s")),
    "remove_10_cpu_s": ("s", ("remove_10", "cpu_s")),
    **{f"{where}_{mode}_{q}_ms": ("ms", (f"{where}_queries", "modes", mode, f"{q}_ms"))
       for where in ("embedded", "server") for mode in ("hybrid", "dense", "bm25") for q in ("p50", "p95")},
    "bm25_exhaustive_p50_ms": ("ms", ("embedded_queries", "bm25_exhaustive", "p50_ms")),
    "bm25_exhaustive_p95_ms": ("ms", ("embedded_queries", "bm25_exhaustive", "p95_ms")),
    "bm25_overlap_at_10": ("", ("embedded_queries", "bm25_exhaustive", "overlap_at_10")),
    "bm25_overlap_at_50": ("", ("embedded_queries", "bm25_exhaustive", "overlap_at_50")),
    "embedded_client_rss_mb": ("MB", ("embedded_queries", "client_max_rss_mb")),
    "server_client_rss_mb": ("MB", ("server_queries", "client_max_rss_mb")),
    "server_rss_mb": ("MB", ("server_queries", "server_peak_rss_mb")),
    "chunks": ("", ("remove_10", "chunks")),
    "distinct_terms": ("", ("distinct_terms",)),
    "index_mb": ("MB", ("index_mb",)),
}
EXTRAPOLATE_TO = {"300k": 300_000, "1M": 1_000_000, "10M": 10_000_000}
GOALS = {"append_10_s": {100000: 5.0, 300000: 10.0}, "remove_10_s": {100000: 5.0, 300000: 10.0},
         "embedded_hybrid_p50_ms": {300000: 30.0}}


def _figure(row: dict, path: tuple):
    for key in path:
        if not isinstance(row, dict) or key not in row:
            return None
        row = row[key]
    return row if isinstance(row, (int, float)) else None


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(a, b) of y = a * n^b, least squares in log-log; None with fewer than two sizes."""
    import math

    points = [(n, y) for n, y in points if n > 0 and y and y > 0]
    if len({n for n, _ in points}) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - b * mx), b


def _scale_ingest_data(rows: list[dict], previous: dict) -> dict:
    import platform
    import sqlite3

    import chromadb

    merged = {**previous, **{r["n"]: r for r in rows}}
    rows = [merged[n] for n in sorted(merged)]
    table = [{"n": r["n"], **{name: _figure(r, path) for name, (_, path) in FIGURES.items()}} for r in rows]
    fits = {}
    for name, (unit, _) in FIGURES.items():
        fit = fit_power_law([(t["n"], t[name]) for t in table if t[name] is not None])
        if fit:
            a, b = fit
            fits[name] = {"unit": unit, "a": a, "b": b, "sizes": [t["n"] for t in table if t[name]],
                          **{f"extrapolated_{label}": round(a * n ** b, 3 if name.startswith("bm25_overlap") else 1)
                             for label, n in EXTRAPOLATE_TO.items()}}
    goals = []
    for name, by_n in GOALS.items():
        for n, limit in by_n.items():
            got = next((t[name] for t in table if t["n"] == n), None)
            fit = fits.get(name)
            extrapolated = round(fit["a"] * n ** fit["b"], 1) if got is None and fit else None
            goals.append({"figure": name, "n": n, "goal": limit, "measured": got, "extrapolated": extrapolated,
                          "met": None if got is None else got <= limit})
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "chromadb": chromadb.__version__,
                    "sqlite": sqlite3.sqlite_version,
                    "note": "shared machine (another engineer's test runs in parallel; bench under nice -n 5): "
                            "timings are upper bounds"},
        "backend": "hash (RAG_EMBED_BACKEND=hash: the pipeline, not the model)",
        "rows": rows, "table": table, "fits": fits, "goals": goals,
    }


def _print_scale_ingest(data: dict) -> None:
    table = data["table"]
    print("\n## ingest and query at scale (hash embedder; " + data["machine"]["note"] + ")")
    print("  measured".ljust(29) + "".join(f"{t['n']:>12,}" for t in table) + "  | fit a*n^b: b"
          + "".join(f"{label + ' (extr.)':>15}" for label in EXTRAPOLATE_TO))
    for name, (unit, _) in FIGURES.items():
        cells = "".join(f"{'-' if t[name] is None else round(t[name], 2):>12}" for t in table)
        fit = data["fits"].get(name)
        tail = (f"  | {round(fit['b'], 3):>12}" + "".join(f"{fit['extrapolated_' + label]:>15,}" for label in EXTRAPOLATE_TO)
                if fit else "")
        print("  " + f"{name} ({unit})".ljust(27) + cells + tail)
    for g in data["goals"]:
        if g["met"] is None:
            state = f"not measured; {g['extrapolated']} extrapolated" if g.get("extrapolated") else "not measured"
        else:
            state = "met" if g["met"] else "MISSED"
        print(f"  goal {g['figure']} at {g['n']:,} <= {g['goal']}: {g['measured']} ({state})")


def report_scale_ingest(out: Path) -> dict:
    """Print the saved scale-ingest results, refitted (and saved refitted), without measuring again."""
    path = out / "scale_ingest.json"
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        raise SystemExit(f"no saved scale-ingest results in {path}: run `rag bench --parts scale-ingest` first") from None
    data = _scale_ingest_data([], {r["n"]: r for r in rows})
    data["machine"] = json.loads(path.read_text()).get("machine", data["machine"])
    _print_scale_ingest(data)
    save_json(out, "scale_ingest", data)
    return data


PARTS = ("ingest", "latency", "embedding", "evidence", "ui", "reingest", "scale-ingest", "scale", "cli", "lexical-scale")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rag bench", description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="ingest,latency,embedding,scale")
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--reingest-n", type=int, default=100000, help="papers for the reingest part")
    p.add_argument("--workdir", type=Path, help="scale-ingest: keep each size's JSONL and index here and reuse them")
    p.add_argument("--no-server", action="store_true", help="scale-ingest: skip the Chroma server queries")
    p.add_argument("--no-fts5", action="store_true", help="lexical-scale: skip the FTS5 comparison")
    p.add_argument("--report", action="store_true", help="scale-ingest: print and refit the saved results, measure nothing")
    p.add_argument("--backend", default="auto", help="embedding backend for the ingest part (auto = torch, bf16 where native)")
    p.add_argument("--out", type=Path, default=Path("eval/bench"))
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}: choose from {', '.join(PARTS)}")
    if "ingest" in parts:
        bench_ingest(args.out, args.backend)
    if "latency" in parts:
        bench_latency(args.out)
    if "evidence" in parts:
        bench_evidence(args.out)
    if "embedding" in parts:
        bench_embedding(args.out)
    if "ui" in parts:
        from rag.eval.bench_ui import bench_ui

        bench_ui(args.out)
    if "reingest" in parts:
        bench_reingest(args.out, args.reingest_n)
    if "scale-ingest" in parts and args.report:
        report_scale_ingest(args.out)
    elif "scale-ingest" in parts:
        bench_scale_ingest(args.out, [int(s) for s in args.sizes.split(",")], args.workdir, server=not args.no_server)
    if "scale" in parts:
        bench_scale(args.out, [int(s) for s in args.sizes.split(",")])
    if "cli" in parts:
        bench_cli(args.out)
    if "lexical-scale" in parts:
        from rag.eval.bench_lexical import bench_lexical_scale

        bench_lexical_scale(args.out, [int(s) for s in args.sizes.split(",")], fts5=not args.no_fts5,
                            workdir=args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
