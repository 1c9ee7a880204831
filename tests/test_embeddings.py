"""Embedding backends: torch bf16 vs fp32 on the real model, and the remote backend against a local
OpenAI-compatible embeddings server (fake_embeddings.py) with injected faults."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from fake_embeddings import FakeEmbeddings

from rag.corpus.chunk import Chunker
from rag.errors import ConfigError, RagError
from rag.index.embedders import (
    DEFAULT_MODEL_NAME,
    HashEmbedder,
    TorchEmbedder,
    embedder_name,
    make_embedder,
    native_bf16,
)
from rag.index.remote_embedder import RemoteEmbedder
from rag.settings import load_settings

KEY = "sk-test-secret-0123456789"
TEXTS = [f"paper {i} about diffusion models, sparse autoencoders and concept erasure" for i in range(10)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.fixture
def hash_server():
    """A strict fake server embedding with a 64-dim hash (so `dim` visibly comes from the reply)."""
    with FakeEmbeddings(HashEmbedder(dim=64).embed, model="hash-test") as srv:
        yield srv


def remote(srv: FakeEmbeddings, **kw) -> tuple[RemoteEmbedder, list[float]]:
    """A RemoteEmbedder on `srv` whose retry waits are recorded instead of slept."""
    sleeps: list[float] = []
    kw = {"batch_size": 16, "concurrency": 4, "timeout": 5.0, "sleep": sleeps.append} | kw
    return RemoteEmbedder(srv.base_url, srv.model, **kw), sleeps


# ---------------------------------------------------------------- remote backend, fast (hash-backed server)


def test_remote_vectors_come_from_the_server_normalised_with_dim_from_the_reply(hash_server):
    emb, _ = remote(hash_server)
    assert emb.describe() == {"backend": "remote", "precision": None, "model": "hash-test", "dim": None,
                              "url": hash_server.base_url}
    vecs = emb.embed(TEXTS)
    assert vecs.dtype == np.float32 and vecs.shape == (10, 64)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    assert np.allclose(vecs, HashEmbedder(dim=64).embed(TEXTS), atol=1e-6)
    assert emb.dim == 64 and emb.describe()["dim"] == 64
    assert emb.embed([]).shape == (0, 64)
    assert len(hash_server.requests) == 1


def test_remote_sends_ceil_n_over_batch_requests_and_keeps_order(hash_server):
    emb, _ = remote(hash_server, batch_size=3)
    vecs = emb.embed(TEXTS)
    sizes = sorted(len(r["body"]["input"]) for r in hash_server.requests)
    assert sizes == [1, 3, 3, 3]
    assert np.allclose(vecs, HashEmbedder(dim=64).embed(TEXTS), atol=1e-6)


def test_remote_keeps_at_most_concurrency_requests_in_flight(hash_server):
    hash_server.hold = 0.25
    emb, _ = remote(hash_server, batch_size=1, concurrency=3)
    emb.embed(TEXTS[:9])
    assert len(hash_server.requests) == 9
    assert hash_server.max_in_flight == 3


def test_429_waits_the_retry_after_then_succeeds(hash_server):
    hash_server.queue_error(429, retry_after=7)
    emb, sleeps = remote(hash_server)
    vecs = emb.embed(TEXTS[:2])
    assert vecs.shape == (2, 64)
    assert sleeps == [7.0]
    assert len(hash_server.requests) == 2


@pytest.mark.parametrize("fault", ["500", "503", "drop"])
def test_server_errors_and_dropped_connections_are_retried(hash_server, fault):
    if fault == "drop":
        hash_server.queue_drop()
    else:
        hash_server.queue_error(int(fault))
    emb, sleeps = remote(hash_server)
    assert emb.embed(TEXTS[:2]).shape == (2, 64)
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 4
    assert len(hash_server.requests) == 2


def test_a_reply_slower_than_the_timeout_is_retried(hash_server):
    hash_server.queue_delay(10)
    emb, sleeps = remote(hash_server, timeout=1.0, deadline=6.0)
    started = time.monotonic()
    assert emb.embed(TEXTS[:2]).shape == (2, 64)
    assert time.monotonic() - started < 5.0
    assert len(sleeps) == 1 and len(hash_server.requests) == 2


def test_400_fails_at_once_with_the_servers_reason(hash_server):
    hash_server.queue_error(400, message="input is longer than the maximum of 512 tokens")
    emb, sleeps = remote(hash_server)
    with pytest.raises(ConfigError) as err:
        emb.embed(TEXTS[:2])
    msg = str(err.value)
    assert "HTTP 400" in msg and "maximum of 512 tokens" in msg and "RAG_EMBED_BATCH_SIZE" in msg
    assert sleeps == [] and len(hash_server.requests) == 1


def test_a_failed_batch_stops_the_rest_of_the_call(hash_server):
    hash_server.hold = 0.2
    hash_server.queue_error(400)
    emb, _ = remote(hash_server, batch_size=1, concurrency=2)
    with pytest.raises(ConfigError, match="HTTP 400"):
        emb.embed(TEXTS)
    assert len(hash_server.requests) <= 3  # of 10 batches


@pytest.mark.parametrize("status", [401, 404])
def test_auth_and_not_found_are_not_retried_and_say_what_to_check(hash_server, status):
    hash_server.queue_error(status)
    emb, sleeps = remote(hash_server)
    with pytest.raises(ConfigError, match="RAG_EMBED_API_KEY" if status == 401 else "RAG_EMBED_MODEL"):
        emb.embed(TEXTS[:2])
    assert sleeps == [] and len(hash_server.requests) == 1


def test_persistent_5xx_gives_up_after_max_attempts_with_advice(hash_server):
    for _ in range(3):
        hash_server.queue_error(502)
    emb, sleeps = remote(hash_server, max_attempts=3)
    with pytest.raises(RagError, match=r"kept failing \(HTTP 502\): check its logs"):
        emb.embed(TEXTS[:2])
    assert len(hash_server.requests) == 3 and len(sleeps) == 2


def test_api_key_is_sent_as_bearer_and_never_appears_in_errors(hash_server):
    emb, _ = remote(hash_server, api_key=KEY)
    emb.embed(TEXTS[:1])
    assert hash_server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    for status, message in ((400, f"bad request from key {KEY}"), (401, f"invalid api key {KEY}")):
        hash_server.queue_error(status, message=message)
        with pytest.raises(RagError) as err:
            emb.embed(TEXTS[:1])
        assert KEY not in str(err.value) and KEY not in repr(err.value)


def test_dead_port_fails_fast_with_the_fix_in_the_message():
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    emb = RemoteEmbedder(url, "all-MiniLM-L6-v2", api_key=KEY, timeout=5.0)  # real retry waits
    started = time.monotonic()
    with pytest.raises(RagError) as err:
        emb.embed(TEXTS)
    assert time.monotonic() - started < 5.0
    msg = str(err.value)
    assert msg == f"cannot connect to the embedding server at {url}: is it running? (RAG_EMBED_URL)"


def test_slow_server_fails_within_the_deadline(hash_server):
    hash_server.hold = 30
    emb, _ = remote(hash_server, timeout=0.4, deadline=1.5, batch_size=2, concurrency=2)
    started = time.monotonic()
    with pytest.raises(RagError, match="did not embed 10 texts within 1.5s.*RAG_EMBED_TIMEOUT"):
        emb.embed(TEXTS)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5
    assert len(hash_server.requests) >= 2


def test_a_reply_with_the_wrong_number_of_vectors_is_refused(hash_server):
    hash_server.embed_fn = lambda texts: HashEmbedder(dim=64).embed(texts[:-1])
    emb, _ = remote(hash_server)
    with pytest.raises(RagError, match="1 vectors for 2 texts"):
        emb.embed(TEXTS[:2])


# ---------------------------------------------------------------- settings select the backend (no model load)


def test_embed_url_selects_the_remote_backend_named_after_the_model(hash_server, tmp_path):
    settings = load_settings(data_dir=tmp_path, embed_url=hash_server.base_url, embed_model="hash-test",
                             embed_api_key=KEY, embed_batch_size=4, embed_concurrency=2, embed_timeout=3)
    emb = make_embedder(settings)
    assert emb.describe()["backend"] == "remote"
    assert emb.name == embedder_name(settings) == "hash-test"
    assert hash_server.requests == []  # building the embedder does not call the server
    assert emb.embed(TEXTS).shape == (10, 64) and len(hash_server.requests) == 3
    assert KEY not in repr(settings)


def test_backend_settings_are_checked(tmp_path):
    assert embedder_name(load_settings(data_dir=tmp_path)) == DEFAULT_MODEL_NAME
    assert embedder_name(load_settings(data_dir=tmp_path, embed_backend="hash")) == HashEmbedder().name
    with pytest.raises(ConfigError, match="RAG_EMBED_BACKEND=remote needs RAG_EMBED_URL"):
        make_embedder(load_settings(data_dir=tmp_path, embed_backend="remote"))
    with pytest.raises(ConfigError, match="RAG_EMBED_URL must be an http"):
        load_settings(data_dir=tmp_path, embed_url="localhost:8080")
    with pytest.raises(ConfigError, match="RAG_EMBED_PRECISION"):
        load_settings(data_dir=tmp_path, embed_precision="fp16")


def test_hash_embedder_describes_itself():
    assert HashEmbedder().describe() == {"backend": "hash", "precision": "fp32", "model": "hash-384", "dim": 384}


# ---------------------------------------------------------------- the real packaged model (slow)


@pytest.fixture(scope="module")
def model_path() -> str:
    return load_settings().model_path()


@pytest.fixture(scope="module")
def fp32(model_path) -> TorchEmbedder:
    return TorchEmbedder(model_path, precision="fp32")


@pytest.fixture(scope="module")
def local(model_path) -> TorchEmbedder:
    """The default local embedder (precision auto)."""
    return TorchEmbedder(model_path)


@pytest.fixture(scope="module")
def chunk_texts(corpus_papers) -> list[str]:
    """64 real chunk texts (title + part of an abstract), from across the vendored corpus."""
    chunks = Chunker(160, 32).chunk_all(corpus_papers[::7])
    return [c.text for c in chunks][:64]


@pytest.mark.slow
def test_auto_precision_is_bf16_on_a_bf16_cpu_and_matches_fp32(local, fp32, chunk_texts):
    expected = "bf16" if native_bf16() else "fp32"
    info = local.describe()
    assert info["backend"] == "torch" and info["precision"] == expected
    assert info["model"] == DEFAULT_MODEL_NAME and info["dim"] == 384
    a, b = local.embed(chunk_texts), fp32.embed(chunk_texts)
    assert a.dtype == np.float32 and a.shape == (len(chunk_texts), 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert cosines(a, b).min() >= 0.999


@pytest.mark.slow
def test_forcing_fp32_skips_bf16(fp32, chunk_texts):
    info = fp32.describe()
    assert info["precision"] == "fp32" and "bf16_probe_min_cosine" not in info
    again = fp32.embed(chunk_texts[:8])
    assert np.allclose(again, fp32.embed(chunk_texts[:8]), atol=1e-6)  # deterministic


@pytest.mark.slow
def test_a_failed_probe_check_falls_back_to_fp32_with_a_warning(model_path, fp32, chunk_texts, caplog):
    with caplog.at_level(logging.WARNING, logger="rag.index.embedders"):
        emb = TorchEmbedder(model_path, precision="bf16", min_cosine=1.01)  # no bf16 vector can pass
    assert emb.describe()["precision"] == "fp32"
    assert emb.describe()["bf16_probe_min_cosine"] < 1.01
    assert any("using fp32" in r.getMessage() for r in caplog.records)
    assert np.allclose(emb.embed(chunk_texts[:8]), fp32.embed(chunk_texts[:8]), atol=1e-6)


@pytest.mark.slow
def test_the_packaged_model_served_remotely_matches_the_local_one(fp32, local, chunk_texts):
    with FakeEmbeddings(fp32.embed, model=DEFAULT_MODEL_NAME) as srv:
        emb = RemoteEmbedder(srv.base_url, DEFAULT_MODEL_NAME, batch_size=16, concurrency=2)
        vecs = emb.embed(chunk_texts)
        assert len(srv.requests) == 4
    assert emb.dim == local.dim == 384
    assert emb.name == local.name
    assert cosines(vecs, local.embed(chunk_texts)).min() >= 0.999


@pytest.mark.slow
def test_an_index_built_locally_serves_queries_embedded_remotely(fp32, local, make_settings, small_corpus):
    from rag.index.ingest import ingest
    from rag.retrieve.hybrid import Retriever

    settings = make_settings(corpus=str(small_corpus))
    ingest(settings, embedder=local, progress=False)
    question = "which papers erase concepts in diffusion models?"
    expected = [h.paper_id for h in Retriever.from_settings(settings, embedder=local).search(question, 5, "dense")]
    with FakeEmbeddings(fp32.embed, model=DEFAULT_MODEL_NAME) as srv:
        remote_settings = make_settings(corpus=str(small_corpus), embed_url=srv.base_url)
        hits = Retriever.from_settings(remote_settings).search(question, 5, "dense")
        assert [h.paper_id for h in hits] == expected
        other = make_settings(corpus=str(small_corpus), embed_url=srv.base_url, embed_model="bge-small-en-v1.5")
        with pytest.raises(ConfigError, match="bge-small-en-v1.5"):
            Retriever.from_settings(other)
