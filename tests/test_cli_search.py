"""The `rag search` / `rag ingest` command-line contract, through the real console script in a subprocess.

Fast tests use a 20-paper index built with the hash backend (RAG_EMBED_BACKEND=hash); the slow ones
use the real-model index of the whole corpus (`real_index`) and the real model for `rag ingest`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli, write_listing

from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest
from rag.index.layout import ingest_lock
from rag.settings import load_settings

HIT_KEYS = ["rank", "paper_id", "title", "score", "snippet"]
QUESTION = "which papers erase concepts in diffusion models?"
ERASURE = re.compile(r"eras|unlearn|forget|remov", re.I)


def assert_one_error_line(proc, *needles: str) -> str:
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout.strip() == "", proc.stdout
    return lines[0]


def assert_hits(hits, top_k: int) -> None:
    assert isinstance(hits, list) and len(hits) == top_k
    for i, hit in enumerate(hits, start=1):
        assert list(hit) == HIT_KEYS  # exactly these keys, in this order
        assert hit["rank"] == i
        assert isinstance(hit["paper_id"], str) and re.fullmatch(r"[0-9a-f]{16}", hit["paper_id"])
        assert isinstance(hit["title"], str) and hit["title"]
        assert isinstance(hit["score"], float)
        assert isinstance(hit["snippet"], str) and hit["snippet"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h["paper_id"] for h in hits}) == top_k


# ---------------------------------------------------------------- fast: a hash-backend index


@pytest.fixture(scope="module")
def hash_index(tmp_path_factory, small_papers):
    root = tmp_path_factory.mktemp("cli-hash")
    corpus = root / "corpus"
    write_listing(corpus / "a.txt", small_papers)
    settings = load_settings(data_dir=root / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    return {"RAG_DATA_DIR": str(settings.data_dir), "RAG_CORPUS": str(corpus), "RAG_EMBED_BACKEND": "hash"}


def test_search_json_contract(hash_index, small_papers):
    target = small_papers[-1]
    proc = run_cli("search", target.title, "--json", "--top-k", "4", env=hash_index)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    hits = json.loads(proc.stdout)
    assert_hits(hits, 4)
    assert hits[0]["paper_id"] == target.paper_id and hits[0]["title"] == target.title
    assert proc.stdout.count("\n") == 1  # one JSON document on one line


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_search_modes(hash_index, small_papers, mode):
    target = small_papers[2]
    proc = run_cli("search", target.title, "--json", "--top-k", "3", "--mode", mode, env=hash_index)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert_hits(hits, 3)
    assert hits[0]["paper_id"] == target.paper_id


def test_search_default_top_k_is_10(hash_index):
    proc = run_cli("search", "diffusion models", "--json", env=hash_index)
    assert proc.returncode == 0, proc.stderr
    assert_hits(json.loads(proc.stdout), 10)


def test_search_table_output(hash_index, small_papers):
    target = small_papers[0]
    proc = run_cli("search", target.title, "--top-k", "3", env=hash_index)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ValueError):
        json.loads(proc.stdout)
    lines = proc.stdout.rstrip("\n").split("\n")
    assert len(lines) == 6  # a title line and a snippet line per hit
    assert re.match(r"^\s*1\s+\d+\.\d{4}\s+\S", lines[0]) and target.title[:40] in lines[0]
    assert re.match(r"^\s*2\s+\d+\.\d{4}\s+\S", lines[2])
    assert re.match(r"^\s*3\s+\d+\.\d{4}\s+\S", lines[4])
    assert lines[1].startswith("     ") and lines[1].strip()


def test_search_questions_file(hash_index, small_papers, tmp_path):
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text(
        json.dumps({"id": "q-a", "question": small_papers[0].title}) + "\n"
        + "this is not json\n"  # line 2
        + json.dumps({"text": "no question key"}) + "\n"  # line 3
        + "\n"
        + json.dumps({"question": small_papers[5].title}) + "\n"  # line 5, no id
        + json.dumps(["a", "list"]) + "\n",  # line 6
        encoding="utf-8",
    )
    proc = run_cli("search", "--questions", str(qfile), "--json", "--top-k", "2", env=hash_index)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == 2
    assert [o["id"] for o in out] == ["q-a", "5"]
    assert [o["question"] for o in out] == [small_papers[0].title, small_papers[5].title]
    for o, p in zip(out, (small_papers[0], small_papers[5])):
        assert set(o) == {"id", "question", "hits"}
        assert_hits(o["hits"], 2)
        assert o["hits"][0]["paper_id"] == p.paper_id
    warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 3, proc.stderr
    assert all(ln.startswith("warning: ") and "skipped" in ln for ln in warnings)
    assert [re.search(r":(\d+): ", ln).group(1) for ln in warnings] == ["2", "3", "6"]
    assert "Traceback" not in proc.stderr


def test_search_questions_file_empty_question_is_skipped_not_fatal(hash_index, small_papers, tmp_path):
    """An empty question in a batch is a bad line: warned about and skipped; the batch goes on."""
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text(
        json.dumps({"id": "blank", "question": "   "}) + "\n"
        + json.dumps({"id": "ok", "question": small_papers[1].title}) + "\n"
    )
    proc = run_cli("search", "--questions", str(qfile), "--json", "--top-k", "2", env=hash_index)
    assert "Traceback" not in proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == ["ok"], (proc.returncode, proc.stderr)
    assert proc.returncode == 0
    assert "blank" in proc.stderr or ":1:" in proc.stderr


def test_stale_index_still_searches_with_a_warning(hash_index, small_papers, tmp_path):
    changed = tmp_path / "changed"
    write_listing(changed / "a.txt", small_papers[:5])
    env = hash_index | {"RAG_CORPUS": str(changed)}
    proc = run_cli("search", small_papers[0].title, "--json", "--top-k", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    assert_hits(json.loads(proc.stdout), 2)
    assert "rag ingest" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- errors (fast: no model is loaded)


def test_no_index_is_one_line_mentioning_rag_ingest(tmp_path):
    proc = run_cli("search", QUESTION, "--json", env={"RAG_DATA_DIR": str(tmp_path / "none")})
    line = assert_one_error_line(proc, "rag ingest")
    assert str(tmp_path / "none") in line


def test_corrupt_catalog_is_one_line_mentioning_ingest(tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "index.sqlite").write_bytes(b"{truncated" * 50)
    proc = run_cli("search", QUESTION, env={"RAG_DATA_DIR": str(tmp_path / "idx")})
    assert_one_error_line(proc, "rag ingest")


def test_unknown_mode_is_rejected(tmp_path):
    proc = run_cli("search", QUESTION, "--mode", "semantic", env={"RAG_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert_one_error_line(proc, "--mode")


@pytest.mark.parametrize("top_k", ["0", "-1", "201", "ten"])
def test_bad_top_k_is_rejected(tmp_path, top_k):
    proc = run_cli("search", QUESTION, "--top-k", top_k, env={"RAG_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert_one_error_line(proc, "--top-k")


@pytest.mark.parametrize("args", [("",), ("   ",), ()])
def test_empty_or_missing_question_is_one_line(hash_index, args):
    proc = run_cli("search", *args, "--json", env=hash_index)
    assert_one_error_line(proc)


def test_missing_questions_file_is_one_line(hash_index, tmp_path):
    proc = run_cli("search", "--questions", str(tmp_path / "nope.jsonl"), env=hash_index)
    assert_one_error_line(proc, "nope.jsonl")


def test_bad_setting_in_env_is_one_line(hash_index):
    proc = run_cli("search", QUESTION, env=hash_index | {"RAG_CHROMA_URL": "not-a-url"})
    assert_one_error_line(proc, "RAG_CHROMA_URL")


# ---------------------------------------------------------------- rag ingest


def _ingest_env(tmp_path, corpus, **extra) -> dict:
    return {"RAG_DATA_DIR": str(tmp_path / "index"), "RAG_CORPUS": str(corpus), **extra}


def test_ingest_json_report_hash_backend(tmp_path, small_corpus):
    env = _ingest_env(tmp_path, small_corpus, RAG_EMBED_BACKEND="hash")
    first = run_cli("ingest", "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)  # stdout is the JSON report alone (no progress bar)
    assert report["papers"] == 20 and report["added"] == 20 and report["embedded"] == report["chunks"] > 0
    assert report["chroma_mode"] == "embedded" and report["issues"] == []
    second = run_cli("ingest", "--json", env=env)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["embedded"] == 0 and again["added"] == 0 and again["papers"] == 20
    assert again["reason"] == "corpus unchanged"
    # the human summary is one line on stdout
    third = run_cli("ingest", env=env)
    assert third.returncode == 0, third.stderr
    assert len(third.stdout.strip().splitlines()) == 1
    assert third.stderr.strip() == "" and first.stderr.strip() == ""  # no library debug chatter
    assert "20 papers" in third.stdout and "embedded 0" in third.stdout


def test_ingest_reports_issues_on_stderr_and_strict_fails(tmp_path, small_corpus):
    with open(small_corpus / "b.txt", "a", encoding="utf-8") as fh:
        fh.write("Orphaned Title At The End\n")
    env = _ingest_env(tmp_path, small_corpus, RAG_EMBED_BACKEND="hash")
    strict = run_cli("ingest", "--strict", env=env)
    assert_one_error_line(strict, "b.txt:", "strict")
    proc = run_cli("ingest", env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^warning: b\.txt:\d+: title without abstract", proc.stderr, re.M)
    assert "20 papers" in proc.stdout


def test_ingest_errors_are_one_line(tmp_path, small_corpus):
    env = _ingest_env(tmp_path, tmp_path / "missing", RAG_EMBED_BACKEND="hash")
    assert_one_error_line(run_cli("ingest", env=env), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "page.txt").write_text("new\n\nSubscribe\n")
    assert_one_error_line(run_cli("ingest", env=_ingest_env(tmp_path, empty, RAG_EMBED_BACKEND="hash")), "no papers")


def test_ingest_while_locked_is_one_line(tmp_path, small_corpus):
    env = _ingest_env(tmp_path, small_corpus, RAG_EMBED_BACKEND="hash")
    data_dir = Path(env["RAG_DATA_DIR"])
    data_dir.mkdir()
    with ingest_lock(data_dir):
        proc = run_cli("ingest", "--json", env=env)
    assert_one_error_line(proc, "rag ingest")
    assert run_cli("ingest", "--json", env=env).returncode == 0


# ---------------------------------------------------------------- slow: the real model


@pytest.fixture(scope="module")
def real_env(real_index):
    return {"RAG_DATA_DIR": str(real_index.data_dir), "RAG_EMBED_CACHE_PATH": str(real_index.embed_cache_path)}


@pytest.mark.slow
def test_real_search_json(real_env):
    proc = run_cli("search", QUESTION, "--json", "--top-k", "5", env=real_env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    hits = json.loads(proc.stdout)
    assert_hits(hits, 5)
    assert all(ERASURE.search(h["title"]) for h in hits), [h["title"] for h in hits]


@pytest.mark.slow
def test_real_search_matches_library(real_env, real_retriever):
    proc = run_cli("search", QUESTION, "--json", "--top-k", "8", "--mode", "dense", env=real_env)
    assert proc.returncode == 0, proc.stderr
    cli = [(h["paper_id"], h["score"]) for h in json.loads(proc.stdout)]
    lib = [(h.paper_id, round(h.score, 6)) for h in real_retriever.search(QUESTION, top_k=8, mode="dense")]
    assert [p for p, _ in cli] == [p for p, _ in lib]
    assert [s for _, s in cli] == pytest.approx([s for _, s in lib], abs=1e-4)


@pytest.mark.slow
def test_real_search_questions_file(real_env, tmp_path):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(
        json.dumps({"id": "erase", "question": QUESTION}) + "\n"
        + "{broken\n"
        + json.dumps({"id": "vit", "question": "vision transformers for image classification"}) + "\n"
    )
    proc = run_cli("search", "--questions", str(qfile), "--json", "--top-k", "3", env=real_env)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == ["erase", "vit"]
    for o in out:
        assert_hits(o["hits"], 3)
    assert all(ERASURE.search(h["title"]) for h in out[0]["hits"])
    warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and ":2:" in warnings[0]


@pytest.mark.slow
def test_real_search_table(real_env):
    proc = run_cli("search", QUESTION, "--top-k", "2", env=real_env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").split("\n")
    assert len(lines) == 4 and lines[0].lstrip().startswith("1 ") and lines[2].lstrip().startswith("2 ")


@pytest.mark.slow
def test_real_search_empty_question(real_env):
    assert_one_error_line(run_cli("search", " ", env=real_env), "empty")


@pytest.mark.slow
@pytest.mark.slow
def test_real_model_ingest_json(tmp_path, small_corpus):
    env = _ingest_env(tmp_path, small_corpus)
    first = run_cli("ingest", "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["papers"] == 20 and report["added"] == 20
    assert report["embedded"] == report["chunks"] > 0
    second = json.loads(run_cli("ingest", "--json", env=env).stdout)
    assert second["embedded"] == 0 and second["papers"] == 20
    # and the fresh index answers through the CLI with the real model
    proc = run_cli("search", QUESTION, "--json", "--top-k", "3", env=env)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert_hits(hits, 3)
    assert all(ERASURE.search(h["title"]) for h in hits), [h["title"] for h in hits]
