"""The remote embedding backend end to end: the whole vendored corpus ingested through an
OpenAI-compatible /v1/embeddings server backed by the packaged model gives the same retrieval
figures as the local index (dev set, test split)."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import EMBED_CACHE, run_cli
from fake_embeddings import FakeEmbeddings

pytestmark = pytest.mark.slow

DATASET = "eval/datasets/dev.jsonl"


def _retrieval(data_dir, extra_env=None) -> dict:
    r = run_cli("eval", "--dataset", DATASET, "--split", "test", "--answer", "none", "--modes", "hybrid,dense",
                "--out", data_dir / "eval", "--json", env={"RAG_DATA_DIR": str(data_dir)} | (extra_env or {}))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["summary"]


def test_the_corpus_ingested_through_an_embedding_server_retrieves_like_the_local_index(real_index, real_retrieval_eval,
                                                                                       tmp_path):
    from rag.index.embed_cache import embed_with_cache, open_embedding_cache
    from rag.index.embedders import DEFAULT_MODEL_NAME, make_embedder
    from rag.index.ingest import ingest
    from rag.settings import load_settings

    lock = threading.Lock()
    local = {}

    def served(texts):
        """The server's model: the packaged one (vectors it already computed come from the shared cache)."""
        with lock:
            cache = open_embedding_cache(EMBED_CACHE)
            try:
                factory = lambda: local.setdefault("m", make_embedder(real_index))  # noqa: E731
                vectors, _ = embed_with_cache(None, cache, list(texts), DEFAULT_MODEL_NAME, factory)
            finally:
                cache.close()
            return vectors

    with FakeEmbeddings(served, model=DEFAULT_MODEL_NAME) as srv:
        remote_dir = tmp_path / "remote-index"
        env = {"embed_url": srv.base_url, "embed_model": DEFAULT_MODEL_NAME, "embed_batch_size": 64,
               "embed_concurrency": 2}
        settings = load_settings(data_dir=remote_dir, embed_cache_path=tmp_path / "client-cache.sqlite", **env)
        report = ingest(settings, progress=False)
        assert report.papers == 701 and report.embedded == report.chunks  # every chunk went to the server
        assert len(srv.requests) >= report.chunks // 64
        remote = _retrieval(remote_dir, {"RAG_EMBED_URL": srv.base_url, "RAG_EMBED_CACHE_PATH": str(tmp_path / "q.sqlite")})
    here = real_retrieval_eval  # the same evaluation of the local index (one run per session, conftest)
    for mode in ("hybrid", "dense"):
        for metric in ("recall@10", "ndcg@10", "mrr"):
            assert abs(remote[mode][metric] - here[mode][metric]) <= 0.005, (mode, metric, remote[mode], here[mode])
    print("\nremote vs local (test split): " + ", ".join(
        f"{m} {k} {remote[m][k]:.3f}/{here[m][k]:.3f}" for m in ("hybrid", "dense") for k in ("recall@10", "ndcg@10")))
