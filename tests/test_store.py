"""ChromaStore against embedded Chroma and a real `chroma run` server (the `chroma_mode` fixture)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from conftest import free_port

from rag.errors import ConfigError, StoreUnavailableError
from rag.index.chroma_store import ChromaStore
from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest
from rag.index.reader import Index
from rag.records import Chunk
from rag.retrieve.hybrid import Retriever

pytestmark = pytest.mark.timeout(300)


def _chunks(paper_no: int, n: int) -> list[Chunk]:
    pid = f"paper{paper_no:03d}"
    return [
        Chunk(
            chunk_id=f"{pid}:{i}",
            paper_id=pid,
            title=f"Title of paper {paper_no}",
            chunk_no=i,
            text=f"Title of paper {paper_no}\nbody {paper_no} {i} topic{paper_no} words",
            body=f"body {paper_no} {i} topic{paper_no} words",
        )
        for i in range(n)
    ]


@pytest.fixture
def store(chroma_mode, tmp_path, collection_name):
    return ChromaStore(tmp_path / "index", chroma_mode, collection_name)


def _mode_param(request) -> str:
    return request.node.callspec.params["chroma_mode"]


def test_store_roundtrip(store, chroma_mode):
    emb = HashEmbedder()
    assert store.mode == ("server" if chroma_mode else "embedded")
    assert store.count() == 0 and store.paper_ids() == set()
    chunks = [c for n in range(6) for c in _chunks(n, 1 + n % 3)]
    vectors = emb.embed([c.text for c in chunks])
    assert store.query(vectors[0], 5) == []  # an empty collection answers, with nothing
    store.upsert(chunks, vectors)
    assert store.count() == len(chunks)
    assert store.paper_ids() == {f"paper{n:03d}" for n in range(6)}

    # query: the exact vector of a chunk finds that chunk first, with cosine similarity ~1
    target = chunks[4]
    hits = store.query(vectors[4], 3)
    assert len(hits) == 3
    assert hits[0].chunk_id == target.chunk_id and hits[0].paper_id == target.paper_id
    assert hits[0].body == target.body
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert hits[0].similarity >= hits[1].similarity >= hits[2].similarity
    # asking for more than exists returns everything once
    assert len(store.query(vectors[0], 1000)) == len(chunks)

    # metadata is stored as documented
    got = store._col.get(ids=[chunks[1].chunk_id], include=["metadatas", "documents"])
    assert got["metadatas"][0] == {"paper_id": "paper001", "title": "Title of paper 1", "chunk_no": 0}

    # upsert is idempotent and replaces documents
    changed = [Chunk(**{**chunks[0].__dict__, "body": "replaced body"})]
    store.upsert(changed, vectors[:1])
    assert store.count() == len(chunks)
    assert store._col.get(ids=[chunks[0].chunk_id], include=["documents"])["documents"] == ["replaced body"]

    # delete_papers removes every chunk of those papers and nothing else
    store.delete_papers(["paper002", "paper005", "not-there"])
    assert store.paper_ids() == {"paper000", "paper001", "paper003", "paper004"}
    assert store.count() == len(chunks) - len(_chunks(2, 3)) - len(_chunks(5, 3))
    assert all(h.paper_id not in {"paper002", "paper005"} for h in store.query(vectors[0], 100))
    store.delete_papers([])
    assert store.count() == len(chunks) - 6

    # drop empties the collection, and the store stays usable
    store.drop()
    assert store.count() == 0 and store.paper_ids() == set()
    store.upsert(chunks[:2], vectors[:2])
    assert store.count() == 2


def test_store_persists_across_clients(chroma_mode, tmp_path, collection_name):
    emb = HashEmbedder()
    chunks = _chunks(1, 2)
    ChromaStore(tmp_path / "index", chroma_mode, collection_name).upsert(chunks, emb.embed([c.text for c in chunks]))
    again = ChromaStore(tmp_path / "index", chroma_mode, collection_name)
    assert again.count() == 2 and again.paper_ids() == {"paper001"}
    # collections are separate
    assert ChromaStore(tmp_path / "index", chroma_mode, collection_name + "-other").count() == 0


def test_store_large_batches_and_paging(store):
    """More chunks than one `get` page / delete batch (5000 and 500 in the store)."""
    n = 5200
    chunks = [
        Chunk(f"p{i % 700:04d}:{i // 700}", f"p{i % 700:04d}", f"t{i}", i // 700, f"text {i}", f"text {i}")
        for i in range(n)
    ]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert(chunks, vectors)
    assert store.count() == n
    ids = store.paper_ids()
    assert len(ids) == 700
    store.delete_papers(sorted(ids)[:600])  # more than one delete batch of 500
    assert store.paper_ids() == set(sorted(ids)[600:])


def test_ingest_and_search_in_each_chroma_mode(chroma_mode, make_settings, small_corpus, small_papers, collection_name):
    settings = make_settings(corpus=str(small_corpus), chroma_url=chroma_mode, collection=collection_name)
    report = ingest(settings, embedder=HashEmbedder(), progress=False)
    assert report.chroma_mode == ("server" if chroma_mode else "embedded")
    assert report.papers == 20 and report.embedded > 0
    store = ChromaStore(settings.data_dir, settings.chroma_url, settings.collection)
    assert store.paper_ids() == {p.paper_id for p in small_papers}
    assert store.count() == report.chunks

    retriever = Retriever.from_settings(settings, embedder=HashEmbedder())
    target = small_papers[-1]
    for mode in ("hybrid", "dense", "bm25"):
        hits = retriever.search(target.title, top_k=5, mode=mode)
        assert hits and hits[0].paper_id == target.paper_id, (mode, [h.title for h in hits])
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert len({h.paper_id for h in hits}) == len(hits)
    assert ingest(settings, embedder=HashEmbedder(), progress=False).reason == "corpus unchanged"


def test_index_is_bound_to_its_chroma_mode(make_settings, small_corpus, shared_chroma, collection_name):
    """An index built against a server is not silently read from embedded Chroma (and vice versa)."""
    server_settings = make_settings(corpus=str(small_corpus), chroma_url=shared_chroma.url, collection=collection_name)
    ingest(server_settings, embedder=HashEmbedder(), progress=False)
    assert len(Index.open(server_settings)) == 20
    with pytest.raises(ConfigError, match="RAG_CHROMA_URL"):
        Index.open(make_settings(corpus=str(small_corpus), collection=collection_name))
    # switching the same data dir to embedded Chroma is a rebuild
    embedded = make_settings(corpus=str(small_corpus), collection=collection_name)
    report = ingest(embedded, embedder=HashEmbedder(), progress=False)
    assert report.rebuilt is True and report.chroma_mode == "embedded"
    assert ChromaStore(embedded.data_dir, None, embedded.collection).count() == report.chunks


def _dead_url() -> str:
    port = free_port()  # bound then released: nothing listens there
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return f"http://127.0.0.1:{port}"


def test_dead_server_url_gives_store_unavailable_quickly(tmp_path):
    url = _dead_url()
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        ChromaStore(tmp_path / "index", url, "papers")
    assert time.monotonic() - start < 15
    msg = str(err.value)
    assert "chroma run" in msg and url in msg
    assert "\n" not in msg


def test_ingest_against_dead_server_gives_store_unavailable(make_settings, small_corpus):
    settings = make_settings(corpus=str(small_corpus), chroma_url=_dead_url())
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="chroma run"):
        ingest(settings, embedder=HashEmbedder(), progress=False)
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_server_going_away_mid_session_gives_store_unavailable(make_settings, small_corpus, chroma_server):
    settings = make_settings(corpus=str(small_corpus), chroma_url=chroma_server.url)
    ingest(settings, embedder=HashEmbedder(), progress=False)
    retriever = Retriever.from_settings(settings, embedder=HashEmbedder())
    assert retriever.search("diffusion", top_k=3, mode="dense")
    chroma_server.stop()
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="chroma run"):
        retriever.search("diffusion", top_k=3, mode="dense")
    assert time.monotonic() - start < 30
    # BM25 lives in the data dir and keeps working without the server
    assert retriever.search("diffusion", top_k=3, mode="bm25")


def test_a_reader_that_only_counts_leaves_the_store_verified_for_the_next_one(tmp_path):
    """Chroma rewrites a collection's HNSW files when a client loads it (the paper vectors sit below its sync
    threshold); a reader whose question needs no paper-vector read (no Rocchio) only counts them. The files it
    rewrote must be recorded as verified, or every next one-shot command pays the probe subprocess."""
    from conftest import hash_index

    from rag.index.integrity import store_unchanged
    from rag.retrieve.hybrid import Retriever

    papers = [(f"Concept erasure method {i}", f"We erase concept {i} from diffusion models with method {i}.")
              for i in range(40)]
    settings = hash_index(tmp_path, papers)
    retriever = Retriever.from_settings(settings)
    assert retriever.search("which papers erase concepts in diffusion models?", 3)
    retriever.index.close()
    assert store_unchanged(settings.data_dir)
