"""The benchmark workers run as `rag bench` starts them (`python -m`, one process per measurement) on tiny
inputs, embedded and against a `chroma run` server: the figures are not checked, only that each worker
runs and prints the JSON line the bench reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ChromaServer, hash_index

pytestmark = pytest.mark.slow  # each worker is a fresh interpreter importing Chroma (and torch)


def _run(module: str, *args: str, env: dict | None = None) -> dict:
    r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_scale_worker_measures_the_store_and_bm25(tmp_path, chroma_mode):
    mode = "server" if chroma_mode else "embedded"
    out = _run("rag.eval.scale_worker", "60", mode, str(tmp_path), *([chroma_mode] if chroma_mode else []))
    assert out["n"] == 60 and out["mode"] == mode
    assert out["store_query_p50_ms"] > 0 and out["store_query_p95_ms"] >= out["store_query_p50_ms"]
    assert ("bm25_query_p50_ms" in out) == (mode == "embedded")  # BM25 does not depend on where Chroma runs
    assert out["process_max_rss_mb"] > 0


def test_scale_worker_says_how_to_call_it():
    r = subprocess.run([sys.executable, "-m", "rag.eval.scale_worker", "60", "server", "/tmp/x"],  # no URL
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "python -m rag.eval.scale_worker N MODE DATA_DIR [CHROMA_URL]" in r.stderr


def test_query_worker_times_every_mode_embedded_and_served(tmp_path, corpus_papers):
    settings = hash_index(tmp_path / "root", [(p.title, p.abstract) for p in corpus_papers[:40]])
    env = os.environ | {"RAG_DATA_DIR": str(settings.data_dir), "RAG_EMBED_BACKEND": "hash",
                        "RAG_CORPUS": str(tmp_path / "root" / "papers.jsonl")}
    queries = json.dumps(["concept erasure in diffusion models", "sparse autoencoders"])

    local = _run("rag.eval.query_worker", queries, "1", env=env)
    assert {m: s["n"] for m, s in local["modes"].items()} == {"hybrid": 2, "dense": 2, "bm25": 2}
    assert local["bm25_exhaustive"]["n"] == 2 and 0 <= local["bm25_exhaustive"]["overlap_at_10"] <= 1

    served = tmp_path / "served"
    shutil.copytree(settings.data_dir / "chroma", served)
    server = ChromaServer(served).start()
    try:
        remote = _run("rag.eval.query_worker", queries, "1", server.url, env=env)
    finally:
        server.stop()
    assert {m: s["n"] for m, s in remote["modes"].items()} == {"hybrid": 2, "dense": 2, "bm25": 2}
    assert "bm25_exhaustive" not in remote  # compared once, on the embedded index
