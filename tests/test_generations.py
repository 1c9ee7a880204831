"""Serving while re-indexing: a real `rag ingest` process publishes a changed corpus while four clients
keep asking the real UI (`/ask`). No request fails, and once the new generation is published no answer
cites a removed paper; the added papers become findable without a restart."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import VENV_BIN, free_port

from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest
from rag.records import Paper
from rag.settings import load_settings

pytestmark = pytest.mark.slow


def _write(path, papers):
    path.write_text("".join(json.dumps({"title": p.title, "abstract": p.abstract}) + "\n" for p in papers))


def test_reingest_while_four_clients_query_the_ui(tmp_path, corpus_papers):
    from gradio_client import Client

    from rag.apps.ui.app import build_app

    kept, removed = corpus_papers[:260], corpus_papers[260:300]
    added = [Paper(paper_id="", title=f"Zymurgical Transformer Number {i}",
                         abstract=f"We ferment attention heads number {i} with yeast schedules; zymurgical transformers "
                                  "anneal keys like brewing cultures and beat every baseline on Zymurgy-42.")
             for i in range(10)]
    corpus = tmp_path / "corpus.jsonl"
    _write(corpus, kept + removed)
    settings = load_settings(data_dir=tmp_path / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)

    app = build_app(settings)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    removed_titles = {p.title for p in removed}
    questions = [p.title for p in removed[:8]] + [p.title for p in kept[:4]] + ["zymurgical transformers yeast"]
    results, errors = [], []
    stop = threading.Event()

    def client_loop(k):
        client = Client(url, verbose=False)
        i = k
        while not stop.is_set():
            q = questions[i % len(questions)]
            i += 1
            started = time.monotonic()
            try:
                reply = client.predict(q, "hybrid", 6, True, api_name="/ask")
                results.append((started, time.monotonic(), q, reply))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                errors.append((q, repr(exc)))

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(4)]
    try:
        for t in threads:
            t.start()
        waited = time.monotonic() + 120  # answers from the old generation first (slow on a busy machine)
        while len(results) < 12 and time.monotonic() < waited and not errors:
            time.sleep(0.2)
        _write(corpus, kept + added)  # the changed corpus: 40 removed, 10 added
        ingest_started = time.monotonic()
        env = {"RAG_DATA_DIR": str(settings.data_dir), "RAG_CORPUS": str(corpus), "RAG_EMBED_BACKEND": "hash",
               "PATH": str(VENV_BIN), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # a worktree under test
        proc = subprocess.run([str(VENV_BIN / "rag"), "ingest", "--json"], capture_output=True, text=True,
                              env=env | {"HOME": str(tmp_path)}, timeout=600)
        published = time.monotonic()
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["removed"] == 40 and report["added"] == 10

        def asked_after() -> list:  # asked once the new generation was surely published
            return [r for r in results if r[0] > published + 1.0]

        waited = time.monotonic() + 120  # enough answers after publication, an added-paper question among them
        while time.monotonic() < waited and not errors and not (
                len(asked_after()) >= 12 and any(q.startswith("zymurgical") for _, _, q, _ in asked_after())):
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        app.close()

    assert not errors, errors[:3]
    assert len(results) > 20
    after = [r for r in results if r[0] > published + 1.0]
    assert after, "clients kept asking after publication"
    stale = [(q, reply["citations"]) for _, _, q, reply in after if removed_titles & set(reply["citations"])]
    assert not stale, stale[:3]
    before = [reply for _, ended, _, reply in results if ended < ingest_started]
    assert any(removed_titles & set(r["citations"]) for r in before), "the check above can fail: removed papers were cited before"
    new_hits = [reply for started, _, q, reply in after if q.startswith("zymurgical") and
                any(t.startswith("Zymurgical Transformer") for t in reply["citations"] + reply["possibly_related"])]
    assert new_hits, "papers added by the ingest are found without a restart"


# ------------------------------------------------------------------------------ copy-on-write updates

class _FailingEmbedder(HashEmbedder):
    """The hash embedder, failing when asked to embed (as a full disk or a dead embedding server fails)."""

    def embed(self, texts):
        raise OSError(28, "No space left on device")


def _searches(settings, queries, store=None):
    from rag.retrieve.hybrid import Retriever

    retriever = Retriever.from_settings(settings, embedder=HashEmbedder(), store=store, check_stale=False)
    try:
        return [[h.paper_id for h in retriever.search(q, 8, mode=m)] for q in queries for m in ("dense", "hybrid")]
    finally:
        if store is None:
            retriever.index.close()


def test_a_failed_update_leaves_the_published_index_serving_and_the_next_ingest_finishes_it(tmp_path, small_papers):
    """An update (5 papers removed, 5 changed, 5 added) fails while embedding: a reader opened before and a
    reader opened after it both get the published generation's results (nothing was deleted or overwritten),
    `rag doctor` finds the store sound; the next ingest resumes and leaves no stale vector behind."""
    from dataclasses import replace

    from rag.apps.doctor import run_checks
    from rag.index.chroma_store import ChromaStore
    from rag.index.reader import Index

    corpus = tmp_path / "corpus.jsonl"
    base = small_papers[:15]
    _write(corpus, base)
    settings = load_settings(data_dir=tmp_path / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    queries = [p.title for p in small_papers[:15:2]]
    before = _searches(settings, queries)
    running = Index.open(settings, check_stale=False)

    changed = [replace(p, abstract=p.abstract + " We also release a zymurgical benchmark.") for p in base[5:10]]
    after = base[:5] + changed + list(small_papers[15:20])
    _write(corpus, after)
    from rag.errors import RagError

    with pytest.raises(RagError, match=r"no space left .* needs about [\d,]+ MB more.*run `rag ingest` again"):
        ingest(settings, embedder=_FailingEmbedder(), progress=False)

    assert _searches(settings, queries) == before  # a new reader: the published generation, whole
    from rag.retrieve.hybrid import Retriever

    old = Retriever(settings, running, HashEmbedder())
    assert [[h.paper_id for h in old.search(q, 8, mode=m)] for q in queries for m in ("dense", "hybrid")] == before
    checks = {c.name: c for c in run_checks(settings)}
    assert checks["vector store"].ok and checks["parts agree"].ok, checks
    running.close()

    report = ingest(settings, embedder=HashEmbedder(), progress=False)
    assert (report.removed, report.changed, report.added) == (5, 5, 5)
    assert all(c.ok for c in run_checks(settings)), run_checks(settings)
    store = ChromaStore(settings.data_dir, None, settings.collection)
    try:
        assert store.paper_ids() == {p.paper_id for p in after}
        assert store.count() == report.chunks and store.count_paper_vectors() == len(after)
    finally:
        store.close()
    index = Index.open(settings)
    try:
        assert "zymurgical" in index.paper(changed[0].paper_id).abstract
        assert base[10].paper_id not in index
    finally:
        index.close()


_READER_LOOP = r"""
import json, sys
from pathlib import Path
from rag.errors import RagError
from rag.index.reader import Index
from rag.settings import load_settings
settings = load_settings()
stop = Path(sys.argv[1])
while not stop.exists():
    try:
        index = Index.open(settings, check_stale=False)
        print(json.dumps({"generation": index.generation}), flush=True)
        index.close()
    except RagError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
"""


def test_readers_opening_during_publications_are_never_told_the_index_is_inconsistent(tmp_path, small_papers):
    """Three reader processes open the index again and again (checking its files, then its parts, as every
    new process does) while real `rag ingest` processes publish four updates: each open sees one generation
    (metadata and counts read together, once more across a publication) and the published vectors
    (copy-on-write), never an "inconsistent" or damaged index."""
    import sys

    corpus = tmp_path / "corpus.jsonl"
    _write(corpus, small_papers[:12])
    settings = load_settings(data_dir=tmp_path / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    env = os.environ | {"RAG_DATA_DIR": str(settings.data_dir), "RAG_CORPUS": str(corpus), "RAG_EMBED_BACKEND": "hash",
                        "HOME": str(tmp_path)}
    stop = tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, "-c", _READER_LOOP, str(stop)], stdout=subprocess.PIPE, text=True,
                                env=env) for _ in range(3)]
    try:
        for papers in (small_papers[:20], small_papers[4:16], small_papers[:20], small_papers[2:18]):
            _write(corpus, papers)
            proc = subprocess.run([str(VENV_BIN / "rag"), "ingest", "--json"], capture_output=True, text=True,
                                  env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr
    finally:
        stop.write_text("stop")
        outputs = [r.communicate(timeout=300)[0] for r in readers]
    results = [json.loads(line) for out in outputs for line in out.splitlines()]
    opened = [r["generation"] for r in results if "generation" in r]
    errors = [r["error"] for r in results if "error" in r]
    assert len(set(opened)) >= 2 and len(opened) > 10, (len(opened), set(opened))
    assert not errors, (len(errors), len(opened), errors[:3])


def test_an_update_killed_with_sigkill_leaves_the_published_index_serving(tmp_path):
    """`kill -9` of a real `rag ingest` after it stored its first batch of a large update (papers added and
    changed): a new reader opens the index without complaint and gets the published results; the next ingest
    resumes and publishes."""
    import random
    import signal
    import sys

    from rag.apps.doctor import run_checks

    rng = random.Random(3)
    words = [f"{a}{b}" for a in ("neur", "token", "graph", "spars", "causal") for b in ("al", "ion", "ity", "ous")]
    papers = [{"title": " ".join(rng.choice(words) for _ in range(5)).title() + f" {i}",
               "abstract": " ".join(rng.choice(words) for _ in range(30)) + "."} for i in range(900)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in papers[:200]))
    settings = load_settings(data_dir=tmp_path / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    queries = [p["title"] for p in papers[:200:25]]
    before = _searches(settings, queries)

    changed = [dict(p, abstract=p["abstract"] + " A zymurgical twist.") for p in papers[:20]]
    corpus.write_text("".join(json.dumps(p) + "\n" for p in changed + papers[20:]))
    env = os.environ | {"RAG_DATA_DIR": str(settings.data_dir), "RAG_CORPUS": str(corpus), "RAG_EMBED_BACKEND": "hash",
                        "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "rag.apps.cli", "ingest"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = Path(settings.data_dir) / "ingest.json"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if state.is_file() and len(state.read_bytes().splitlines()) >= 2:  # a batch stored, nothing published
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before a batch was seen: nothing tested"

    assert _searches(settings, queries) == before  # a new reader: the published generation, whole
    checks = {c.name: c for c in run_checks(settings)}
    assert checks["vector store"].ok and checks["parts agree"].ok, checks
    report = ingest(settings, embedder=HashEmbedder(), progress=False)
    assert report.papers == 900 and report.changed == 20
    assert all(c.ok for c in run_checks(settings)), run_checks(settings)
