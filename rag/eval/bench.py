"""Benchmarks: ingest throughput, warm latency, embedding speed, and scaling of the store and BM25.

    rag bench [--parts ingest,latency,evidence,embedding,scale,reingest] [--sizes 1000,10000,100000]
              [--reingest-n 100000] [--out DIR]

Each part prints a table and writes DIR/<part>.json; a PNG plot goes with the scale part.
Speed claims in the README come from here, never from timed tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _table(title, rows):
    print(f"\n## {title}")
    for row in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))


def _save(out: Path, name: str, data) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))


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
    _table(f"ingest ({backend}, vendored corpus)", rows)
    _save(out, "ingest", data)
    return data


def bench_reingest(out: Path, n: int) -> dict:
    """A large synthetic JSONL ingested cold, re-ingested unchanged, then with 10 papers appended
    (hash backend: this measures the pipeline, not the model). Real `rag ingest` processes."""
    from rag.eval.synth import synthetic_papers, write_jsonl

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
    with open(corpus, "a") as fh:
        for obj in synthetic_papers(10, seed=1):
            obj["title"] = obj["title"].replace("Synthetic Paper", "Appended Paper")
            fh.write(json.dumps(obj) + "\n")
    run("10 papers appended")
    shutil.rmtree(tmp, ignore_errors=True)
    data = {"n": n, "backend": "hash", "runs": rows}
    _table(f"re-ingest at {n} papers", rows)
    _save(out, "reingest", data)
    return data


def bench_latency(out: Path, repeats: int = 5) -> dict:
    """Warm in-process latency of search (per mode) and of the extractive ask, on the index in RAG_DATA_DIR."""
    from rag.answer import Assistant
    from rag.retrieve import Retriever
    from rag.settings import load_settings

    settings = load_settings()
    retriever = Retriever.from_settings(settings)
    assistant = Assistant.from_settings(settings, retriever=retriever)
    for q in QUESTIONS:  # warm-up
        retriever.search(q, 10)
    rows = []
    for mode in ("hybrid", "dense", "bm25"):
        ts = []
        for _ in range(repeats):
            for q in QUESTIONS:
                t = time.perf_counter()
                retriever.search(q, 10, mode)
                ts.append((time.perf_counter() - t) * 1000)
        rows.append({"op": f"search/{mode}", "n": len(ts), "p50_ms": round(_pct(ts, 50), 2), "p95_ms": round(_pct(ts, 95), 2)})
    ts = []
    for _ in range(repeats):
        for q in QUESTIONS:
            t = time.perf_counter()
            assistant.ask(q, extractive=True)
            ts.append((time.perf_counter() - t) * 1000)
    rows.append({"op": "ask/extractive", "n": len(ts), "p50_ms": round(_pct(ts, 50), 2), "p95_ms": round(_pct(ts, 95), 2)})
    _table("warm latency (in-process)", rows)
    _save(out, "latency", {"rows": rows})
    return {"rows": rows}


def bench_evidence(out: Path, papers: int = 15, repeats: int = 3) -> dict:
    """What the LLM evidence step adds over retrieval, against a zero-delay OpenAI-protocol server that
    judges every paper relevant (quoting its first sentence): the client, HTTP, parsing and quote checks,
    not an LLM. No cache, so every paper is a real call."""
    from rag.eval.fake_openai import FakeOpenAI, relevance_oracle
    from rag.evidence import EvidenceCache, EvidenceStep
    from rag.llm import OpenAIChatLLM
    from rag.prompts import load_prompts
    from rag.retrieve import Retriever
    from rag.settings import load_settings

    settings = load_settings()
    retriever = Retriever.from_settings(settings)
    index = retriever.index
    pools = {q: retriever.retrieve(q, papers).hits for q in QUESTIONS}
    gold = {q: [h.title for h in hits] for q, hits in pools.items()}
    rows = []
    with FakeOpenAI(responder=relevance_oracle(gold)) as fake:
        llm = OpenAIChatLLM(fake.base_url, "sk-bench", "oracle", timeout=30, max_attempts=1)
        step = EvidenceStep(llm, load_prompts(), EvidenceCache(None), concurrency=settings.evidence_concurrency)
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
        rows.append({"op": op, "n": len(ts), "p50_ms": round(_pct(ts, 50), 1), "p95_ms": round(_pct(ts, 95), 1)})
    data = {"papers": papers, "concurrency": settings.evidence_concurrency, "rows": rows,
            "evidence_over_retrieval_p50_ms": rows[1]["p50_ms"], "goal_ms": 300}
    _table("LLM evidence step over retrieval (zero-delay fake server)", rows)
    print(f"  evidence step adds {rows[1]['p50_ms']} ms p50 ({rows[1]['p95_ms']} ms p95) over retrieval for {papers} "
          "papers (goal <= 300 ms)")
    _save(out, "evidence", data)
    return data


def bench_embedding(out: Path, n: int = 256, rounds: int = 5) -> dict:
    """Texts/s of torch fp32 and torch bf16 on the same real chunk texts, interleaved in one run, and the
    cosine of bf16 vectors to fp32. (The ONNX export, measured the same way before it was removed, is in
    eval/bench/embedding-onnx-vs-bf16.json.)

    The machine is shared, so other work only ever slows a run down: ratios use each backend's best
    round (the least disturbed); the median round and the per-round ratios are reported too."""
    import statistics

    import numpy as np

    from rag.chunking import Chunker
    from rag.corpus import load_corpus
    from rag.embeddings import TorchEmbedder, native_bf16
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
    _table(f"embedding throughput ({len(texts)} real chunk texts, {rounds} interleaved rounds, texts/s)", rows)
    _table("ratios and parity vs torch fp32", [ratios] + [{"backend": k, **v} for k, v in parity.items()])
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")
    _save(out, "embedding", data)
    return data


SCALE_WORKER = r"""
import json, os, resource, sys, time, statistics
import numpy as np
import rag
from rag.store import ChromaStore
from rag.records import Chunk
from rag.eval.synth import synthetic_papers
n, mode, data_dir, url = int(sys.argv[1]), sys.argv[2], sys.argv[3], (sys.argv[4] if len(sys.argv) > 4 else None)
rng = np.random.default_rng(0)
store = ChromaStore(data_dir, url, "bench")
t = time.perf_counter()
step = 5000
papers = list(synthetic_papers(n))
for i in range(0, n, step):
    part = papers[i:i + step]
    vecs = rng.standard_normal((len(part), 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [Chunk(f"s{i + j}:0", f"s{i + j}", p["title"], 0, p["title"], p["abstract"][:300]) for j, p in enumerate(part)]
    store.upsert(chunks, vecs)
add_s = time.perf_counter() - t
qs = rng.standard_normal((60, 384)).astype(np.float32)
qs /= np.linalg.norm(qs, axis=1, keepdims=True)
for q in qs[:10]:
    store.query(q, 50)
ts = []
for q in qs[10:]:
    t = time.perf_counter(); store.query(q, 50); ts.append((time.perf_counter() - t) * 1000)
out = {"n": n, "mode": mode, "store_add_s": round(add_s, 1), "store_query_p50_ms": round(statistics.median(ts), 2),
       "store_query_p95_ms": round(sorted(ts)[int(0.95 * (len(ts) - 1))], 2)}
if mode == "embedded":
    from pathlib import Path
    from rag.catalog import Catalog
    from rag.lexical import document, match_expression
    from rag.records import Paper
    t = time.perf_counter()
    catalog = Catalog(Path(data_dir) / "bench.sqlite", create=True)
    with catalog.transaction() as tx:
        for i, p in enumerate(papers):
            paper = Paper(f"s{i}", p["title"], p["abstract"])
            chunk = Chunk(f"s{i}:0", f"s{i}", p["title"], 0, p["title"] + " " + p["abstract"], p["abstract"])
            tx.add_paper(paper, str(i), [chunk], [document(chunk.text)])
    out["bm25_build_s"] = round(time.perf_counter() - t, 1)
    words = ["diffusion attention", "sparse autoencoder interpretability", "reward alignment", "graph pruning quantization"]
    for w in words: catalog.lexical(match_expression(w), 50)
    ts = []
    for _ in range(10):
        for w in words:
            t = time.perf_counter(); catalog.lexical(match_expression(w), 50); ts.append((time.perf_counter() - t) * 1000)
    out["bm25_query_p50_ms"] = round(statistics.median(ts), 2)
    out["bm25_query_p95_ms"] = round(sorted(ts)[int(0.95 * (len(ts) - 1))], 2)
out["process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
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
            args = [sys.executable, "-c", SCALE_WORKER, str(n), mode, str(tmp)]
            if mode == "server":
                server, url = _chroma_server(tmp / "server")
                args.append(url)
            r = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
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
            _table(f"scale n={n} {mode}", [row])
            shutil.rmtree(tmp, ignore_errors=True)
    data = {"rows": rows}
    _save(out, "scale", data)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rag bench", description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="ingest,latency,embedding,scale")
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--reingest-n", type=int, default=100000, help="papers for the reingest part")
    p.add_argument("--backend", default="auto", help="embedding backend for the ingest part (auto = torch, bf16 where native)")
    p.add_argument("--out", type=Path, default=Path("eval/bench"))
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    if "ingest" in parts:
        bench_ingest(args.out, args.backend)
    if "latency" in parts:
        bench_latency(args.out)
    if "evidence" in parts:
        bench_evidence(args.out)
    if "embedding" in parts:
        bench_embedding(args.out)
    if "reingest" in parts:
        bench_reingest(args.out, args.reingest_n)
    if "scale" in parts:
        bench_scale(args.out, [int(s) for s in args.sizes.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
