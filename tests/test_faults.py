"""Faults: Chroma server down at start and mid-session, unwritable or full data dir, corrupt manifest."""

from __future__ import annotations

import json
import os

import pytest
from conftest import ChromaServer, run_cli

from rag.errors import ConfigError, StoreUnavailableError
from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest
from rag.retrieve.hybrid import Retriever

SMALL = [
    {"title": "Erasing Concepts from Diffusion Models", "abstract": "We erase a visual concept from a diffusion model by fine-tuning with negative guidance. " * 3},
    {"title": "Sparse Autoencoders for Language Model Interpretability", "abstract": "Sparse autoencoders find interpretable features in language model activations. " * 3},
    {"title": "Concept Bottleneck Models", "abstract": "Concept bottleneck models predict human concepts before the label, allowing interventions. " * 3},
]


@pytest.fixture
def small_corpus(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in SMALL))
    return path


@pytest.mark.slow
def test_chroma_server_down_at_start_and_mid_session_then_recovers(tmp_path, small_corpus, make_settings):
    server = ChromaServer(tmp_path / "chroma").start()
    settings = make_settings(chroma_url=server.url, corpus=str(small_corpus))
    ingest(settings, embedder=HashEmbedder(), progress=False)
    retriever = Retriever.from_settings(settings, embedder=HashEmbedder())
    assert retriever.search("erase concepts diffusion", 2)[0].title == SMALL[0]["title"]

    server.stop()  # mid-session outage
    with pytest.raises(StoreUnavailableError, match="chroma run"):
        retriever.search("erase concepts diffusion", 2)
    with pytest.raises(StoreUnavailableError, match=server.url):
        Retriever.from_settings(settings, embedder=HashEmbedder())  # down at start

    server.start()  # same port, same data: the same retriever recovers
    assert retriever.search("erase concepts diffusion", 2)[0].title == SMALL[0]["title"]
    server.stop()


@pytest.mark.slow
def test_cli_with_chroma_server_down_is_one_clean_line(tmp_path):
    port_closed = ChromaServer(tmp_path / "unused").url  # nothing listens there
    r = run_cli("ingest", "--json", env={"RAG_DATA_DIR": str(tmp_path / "d"), "RAG_CHROMA_URL": port_closed,
                                          "RAG_EMBED_BACKEND": "hash"}, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "chroma run" in r.stderr


def test_data_dir_not_writable(tmp_path, make_settings, small_corpus):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = make_settings(data_dir=blocker / "index", corpus=str(small_corpus))
    with pytest.raises(ConfigError, match="RAG_DATA_DIR"):
        ingest(settings, embedder=HashEmbedder(), progress=False)


def test_disk_full_is_reported(tmp_path, make_settings, small_corpus):
    data_dir = tmp_path / "index"
    data_dir.mkdir()
    os.symlink("/dev/full", data_dir / ".write-probe")  # every write there fails with ENOSPC
    settings = make_settings(data_dir=data_dir, corpus=str(small_corpus))
    with pytest.raises(ConfigError, match="no space left"):
        ingest(settings, embedder=HashEmbedder(), progress=False)
