"""An ingest killed with SIGKILL resumes on the next run with no duplicate and no missing paper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import VENV_BIN, run_cli

from rag.corpus.chunk import Chunker
from rag.corpus.parse import load_corpus
from rag.eval.synth import write_jsonl
from rag.index.chroma_store import ChromaStore
from rag.settings import load_settings

N = 1500


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
    env = os.environ | {"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_BACKEND": "hash"}
    proc = subprocess.Popen(
        [str(VENV_BIN / "rag"), "ingest", "--jsonl", str(corpus), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    state = data_dir / "ingest.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and _stored(state) < 256:
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed: raise N"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _stored(state)
    assert 0 < partial < N

    # Nothing was published: a reader is told there is no complete index, not given half an answer.
    r = run_cli("search", "diffusion", env={"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_BACKEND": "hash"})
    assert r.returncode != 0 and "no complete index" in r.stderr and "Traceback" not in r.stderr

    r = run_cli("ingest", "--jsonl", str(corpus), "--json", env={"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_BACKEND": "hash"})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["papers"] == N
    assert report["added"] == N - partial  # only what the killed run had not committed
    assert report["unchanged"] == partial

    settings = load_settings(data_dir=data_dir, embed_backend="hash")
    papers = load_corpus([corpus]).papers
    expected_chunks = Chunker(settings.chunk_size, settings.chunk_overlap).chunk_all(papers)
    store = ChromaStore(data_dir)
    assert store.paper_ids() == {p.paper_id for p in papers}
    assert store.count() == len(expected_chunks)  # no duplicates, no leftovers
    assert not state.exists()  # published

    r = run_cli("ingest", "--jsonl", str(corpus), "--json", env={"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_BACKEND": "hash"})
    assert json.loads(r.stdout)["embedded"] == 0
