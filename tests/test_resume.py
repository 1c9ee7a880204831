"""An ingest killed with SIGKILL resumes on the next run with no duplicate and no missing paper.

The kill lands at a known point: the ingest embeds through a local embedding server (the remote backend, hash
vectors) that holds the first request made after two batches were logged, until the process is dead. A small
corpus in batches of a few papers exercises the same resume path as the full one in batches of 256."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import VENV_BIN, run_cli
from fake_embeddings import FakeEmbeddings

from rag.corpus.chunk import Chunker
from rag.corpus.parse import load_corpus
from rag.eval.synth import write_jsonl
from rag.index.chroma_store import ChromaStore
from rag.index.embedders import HashEmbedder
from rag.settings import load_settings

N = 60
BATCH = 8  # papers per ingest batch (RAG_INGEST_BATCH_PAPERS)
KILL_AFTER = 2  # batches logged when the ingest is killed


def _stored(state: Path) -> int:
    """Papers whose vectors the ingest has committed to the store so far (its resume state)."""
    try:  # a new index: the head line's papers (none), then one line per stored batch (rag.index.ingest._start_state)
        lines = state.read_text().splitlines()
    except OSError:
        return 0
    count = 0
    for no, line in enumerate(lines, start=1):
        try:
            count += len(json.loads(line).get("stored", {}))
        except ValueError:
            if no < len(lines):
                raise
            break  # the last line, still being written
    return count


@pytest.mark.slow
def test_kill_9_during_ingest_then_resume_gives_exact_counts(tmp_path):
    corpus = write_jsonl(tmp_path / "papers.jsonl", N)
    data_dir = tmp_path / "index"
    state = data_dir / "ingest.json"
    held, dead = threading.Event(), threading.Event()
    hasher = HashEmbedder()

    def embed(texts):
        """Hash vectors; the first request after KILL_AFTER logged batches waits until the ingest is killed."""
        if not dead.is_set() and _stored(state) >= KILL_AFTER * BATCH:
            held.set()
            dead.wait(60)
        return hasher.embed(texts)

    with FakeEmbeddings(embed) as srv:
        env = {"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_URL": srv.base_url, "RAG_INGEST_BATCH_PAPERS": str(BATCH),
               "RAG_EMBED_BATCH_SIZE": "256"}  # one request per batch of papers
        proc = subprocess.Popen([str(VENV_BIN / "rag"), "ingest", "--jsonl", str(corpus), "--json"],
                                env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 240
            while not held.wait(0.1):  # the ingest's third batch is held inside its embedding request
                assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, "the ingest never reached its third batch"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            dead.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        partial = _stored(state)
        assert partial == KILL_AFTER * BATCH  # every logged batch, nothing of the held one

        # Nothing was published: a reader is told there is no complete index, not given half an answer.
        r = run_cli("search", "diffusion", env=env)
        assert r.returncode != 0 and "no complete index" in r.stderr and "Traceback" not in r.stderr

        r = run_cli("ingest", "--jsonl", str(corpus), "--json", env=env)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["papers"] == N
        assert report["added"] == N - partial  # only what the killed run had not committed
        assert report["unchanged"] == partial

        settings = load_settings(data_dir=data_dir)
        papers = load_corpus([corpus]).papers
        expected_chunks = Chunker(settings.chunk_size, settings.chunk_overlap).chunk_all(papers)
        store = ChromaStore(data_dir)
        assert store.paper_ids() == {p.paper_id for p in papers}
        assert store.count() == len(expected_chunks)  # no duplicates, no leftovers
        assert not state.exists()  # published

        requests = len(srv.requests)
        r = run_cli("ingest", "--jsonl", str(corpus), "--json", env=env)
        assert json.loads(r.stdout)["embedded"] == 0 and len(srv.requests) == requests
