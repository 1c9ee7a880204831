"""Serving while re-indexing: a real `rag ingest` process publishes a changed corpus while four clients
keep asking the real UI (`/ask`). No request fails, and once the new generation is published no answer
cites a removed paper; the added papers become findable without a restart."""

from __future__ import annotations

import json
import subprocess
import threading
import time

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
               "PATH": str(VENV_BIN)}
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
