"""An index that checks itself: damaged or missing parts give one line naming the fix (never a wrong
answer, a crash or a traceback), `rag ingest` repairs them without --rebuild, reusing cached vectors,
and `rag doctor` says what it finds. Real damaged files; the hash embedder keeps it fast."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import CORPUS, run_cli

from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The whole corpus, hash-embedded (enough chunks for Chroma to write its native index files)."""
    from rag.settings import load_settings

    root = tmp_path_factory.mktemp("damage")
    settings = load_settings(data_dir=root / "index", corpus=str(CORPUS), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    return root / "index"


@pytest.fixture
def index(built, tmp_path):
    """A private copy of the built index, with env vars for the CLI."""
    data_dir = tmp_path / "index"
    shutil.copytree(built, data_dir)
    env = {"RAG_DATA_DIR": str(data_dir), "RAG_EMBED_BACKEND": "hash", "RAG_CORPUS": str(CORPUS)}
    return data_dir, env


def one_error_line(result, *needles):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def repaired_search_works(env) -> None:
    r = run_cli("ingest", "--json", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["reason"] != "corpus unchanged" and report["repaired"]
    assert report["embedded"] == 0  # every vector came back from the cache
    assert report["papers"] == 701 and report["added"] == 0
    r = run_cli("search", "Erasing Concepts from Diffusion Models", "--json", "--top-k", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["title"] == "Erasing Concepts from Diffusion Models"
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout


def test_an_emptied_vector_store_is_refused_then_repaired(index):
    data_dir, env = index
    from rag.index.chroma_store import ChromaStore

    store = ChromaStore(data_dir, None, "papers")
    store.drop()  # everything gone, collections still there
    store.close()
    one_error_line(run_cli("ask", "which papers erase concepts in diffusion models?", env=env), "0 of", "rag ingest")
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 1 and "chunk vectors: 0 of" in doctor.stdout
    repaired_search_works(env)


def test_a_missing_vector_store_is_refused_then_repaired(index):
    data_dir, env = index
    shutil.rmtree(data_dir / "chroma")
    one_error_line(run_cli("search", "concept erasure", env=env), "rag ingest")
    repaired_search_works(env)


def test_a_damaged_chroma_database_is_refused_then_repaired(index):
    data_dir, env = index
    (data_dir / "chroma" / "chroma.sqlite3").write_bytes(b"this is not sqlite " * 500)
    one_error_line(run_cli("search", "concept erasure", env=env), "rag ingest")
    repaired_search_works(env)
    assert list(data_dir.glob("chroma.damaged-*"))


def test_damaged_native_index_files_never_crash_the_reader(index):
    data_dir, env = index
    damaged = list((data_dir / "chroma").glob("*/data_level0.bin"))
    assert damaged, "the store should have native index files"
    for path in damaged:
        with open(path, "r+b") as fh:
            fh.truncate(1000)
    for header in (data_dir / "chroma").glob("*/header.bin"):
        header.write_bytes(b"\xff" * 100)
    r = run_cli("search", "concept erasure", env=env, process=True)  # a crash would kill this process
    assert r.returncode == 1, (r.returncode, r.stderr)
    one_error_line(r, "vector store", "rag ingest")
    repaired_search_works(env)


def test_a_damaged_embedding_cache_is_set_aside_with_a_warning(index, tmp_path):
    data_dir, env = index
    cache = data_dir / "embed_cache.sqlite"
    cache.write_bytes(b"garbage" * 1000)
    corpus = tmp_path / "more.jsonl"
    corpus.write_text(json.dumps({"title": "A brand new paper on zymurgy", "abstract": "We brew transformers with yeast; "
                                  "the attention anneals like a fermenting culture and beats baselines."}) + "\n")
    r = run_cli("ingest", "--json", "--corpus", str(CORPUS), "--jsonl", str(corpus), env=env)
    assert r.returncode == 0, r.stderr
    assert "embed_cache.sqlite" in r.stderr and "damaged" in r.stderr  # the warning names the file
    report = json.loads(r.stdout)
    assert report["added"] == 1 and any("embedding cache" in x for x in report["repaired"])
    assert list(data_dir.glob("embed_cache.sqlite.damaged-*"))


def test_an_ingest_lock_that_is_a_directory_does_not_block_ingest(index):
    data_dir, env = index
    (data_dir / "ingest.lock").unlink()
    (data_dir / "ingest.lock").mkdir()
    r = run_cli("ingest", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert (data_dir / "ingest.lock").is_file()


def test_rebuild_succeeds_from_damage_to_every_derived_file(index):
    data_dir, env = index
    (data_dir / "index.sqlite").write_bytes(b"x" * 4096)
    (data_dir / "chroma" / "chroma.sqlite3").write_bytes(b"y" * 4096)
    (data_dir / "embed_cache.sqlite").write_bytes(b"z" * 4096)
    r = run_cli("ingest", "--rebuild", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["papers"] == 701
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout


def test_doctor_json_lists_each_check(index):
    data_dir, env = index
    r = run_cli("doctor", "--json", env=env)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["ok"] is True
    assert {c["name"] for c in out["checks"]} >= {"catalog", "vector store", "parts agree", "corpus", "embedding model"}
    (data_dir / "ingest.json").write_text(json.dumps({"params": {}, "stored": {}}))
    out = json.loads(run_cli("doctor", "--json", env=env).stdout)
    assert not out["ok"] and any(c["name"] == "ingest" and "resumes" in c["repair"] for c in out["checks"])


@pytest.mark.parametrize("state", [{"params": {"embedding_model": "another"}, "stored": {}}, "not json"])
def test_ingest_repairs_what_doctor_reports_when_the_corpus_is_unchanged(index, state):
    """A stale or unreadable resume state: `rag doctor` reports it, and the `rag ingest` it recommends clears it
    (the "corpus unchanged" shortcut no longer skips repairs), after which doctor passes."""
    data_dir, env = index
    (data_dir / "ingest.json").write_text(state if isinstance(state, str) else json.dumps(state))
    assert run_cli("doctor", env=env).returncode == 1
    r = run_cli("ingest", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert any("ingest state" in x for x in json.loads(r.stdout)["repaired"])
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout


def test_a_search_leaves_the_store_verified_so_the_next_process_skips_the_probe(index, monkeypatch):
    """Chroma rewrites the paper vectors' native files when a reader first queries them (fewer than its sync
    threshold): the search must record them as verified again, or every later command pays the probe's
    subprocess (a second interpreter importing chromadb)."""
    import subprocess

    from rag.index.chroma_store import probe_embedded

    data_dir, env = index
    r = run_cli("search", "concept erasure diffusion", "--json", env=env, process=True)  # a keyword query: paper vectors too
    assert r.returncode == 0, r.stderr

    def no_probe(*args, **kwargs):
        raise AssertionError("the store was probed again although only a reader touched it")

    monkeypatch.setattr(subprocess, "run", no_probe)
    assert probe_embedded(data_dir, "papers") is None


# ------------------------------------------------------------------------------ the damage matrix

GENERATED = 1050  # one-chunk papers: above Chroma's sync threshold (1,000), so its native files are authoritative
QUERIES = 8


def _generated_corpus(path):
    import random

    rng = random.Random(26)
    words = [f"{a}{b}" for a in ("neur", "diffus", "token", "graph", "spars", "robust", "causal", "vision")
             for b in ("al", "ion", "er", "ity", "ing", "ed", "ous", "ic")]
    with open(path, "w") as fh:
        for i in range(GENERATED):
            title = " ".join(rng.choice(words) for _ in range(5)).title() + f" {i}"
            abstract = " ".join(rng.choice(words) for _ in range(30)) + "."
            fh.write(json.dumps({"title": title, "abstract": abstract}) + "\n")
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A hash-embedded index of GENERATED papers, its corpus, and the results of a few searches on it."""
    from rag.settings import load_settings

    root = tmp_path_factory.mktemp("matrix")
    corpus = _generated_corpus(root / "corpus.jsonl")
    settings = load_settings(data_dir=root / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    titles = [json.loads(line)["title"] for line in corpus.read_text().splitlines()]
    queries = titles[:: len(titles) // QUERIES][:QUERIES]
    baseline = _search(settings, queries)
    assert not isinstance(baseline, str), baseline
    return root / "index", corpus, queries, baseline


def _search(settings, queries):
    """Top-10 paper ids per query (dense, with paper-vector feedback, and hybrid), or the error's message."""
    from rag.errors import RagError
    from rag.retrieve.hybrid import Retriever

    try:
        retriever = Retriever.from_settings(settings, embedder=HashEmbedder(), check_stale=False)
    except RagError as exc:
        return str(exc)
    try:
        return [[h.paper_id for h in retriever.search(q, 10, mode=mode)] for q in queries for mode in ("dense", "hybrid")]
    except RagError as exc:
        return str(exc)
    finally:
        retriever.index.close()


def _damage(path, how):
    import random

    if how == "delete":
        path.unlink()
    elif how == "truncate":  # as a partial copy leaves it
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
    else:  # garbage in one page that holds data (SQLite: a b-tree page in use) or, in a small file, its second half
        size = path.stat().st_size
        start, length = ((size // 2) // 4096 * 4096, 4096) if size >= 3 * 4096 else (size // 2, size - size // 2)
        if path.name.endswith((".sqlite", ".sqlite3")):
            import sqlite3

            db = sqlite3.connect(path)
            try:
                page_size = db.execute("PRAGMA page_size").fetchone()[0]
                pages = [n for (n,) in db.execute("SELECT pageno FROM dbstat WHERE pageno > 1 ORDER BY pageno")]
            finally:
                db.close()
            start, length = (pages[len(pages) // 2] - 1) * page_size, page_size
        with open(path, "r+b") as fh:
            fh.seek(start)
            fh.write(random.Random(7).randbytes(length))


MATRIX = [  # (file, damage): every one is refused with the fix or served correctly, and healed by `rag ingest`
    *((f, d) for f in ("index.sqlite", "chroma/chroma.sqlite3", "chunks/data_level0.bin", "embed_cache.sqlite")
      for d in ("truncate", "garble", "delete")),
    *((f, d) for f in ("papers/data_level0.bin", "chunks/header.bin", "chunks/link_lists.bin", "chunks/length.bin",
                       "chunks/index_metadata.pickle") for d in ("truncate", "garble", "delete")),
    ("index.seal", "garble"), ("index.seal", "delete"),
]


def _file(data_dir, name):
    """`chunks/<file>` and `papers/<file>`: a native file of the chunk or paper vectors' segment (Chroma keeps
    one folder per vector segment, named by its id in chroma.sqlite3)."""
    import sqlite3

    if not name.startswith(("chunks/", "papers/")):
        return data_dir / name
    kind, fname = name.split("/")
    db = sqlite3.connect(data_dir / "chroma" / "chroma.sqlite3")
    try:
        collection = "papers" + ("-papers" if kind == "papers" else "")
        (segment,) = db.execute("SELECT s.id FROM segments s JOIN collections c ON c.id = s.collection "
                                "WHERE c.name = ? AND s.scope = 'VECTOR'", (collection,)).fetchone()
    finally:
        db.close()
    return data_dir / "chroma" / segment / fname


@pytest.mark.parametrize("name,how", MATRIX, ids=[f"{n}-{d}" for n, d in MATRIX])
def test_damage_matrix(generated, tmp_path, name, how):
    """Each index file truncated, garbled or deleted: the damage is refused with the fix or the results are the
    published ones (never different results); `rag doctor` agrees; one `rag ingest` heals it."""
    from rag.apps.doctor import run_checks
    from rag.settings import load_settings

    built, corpus, queries, baseline = generated
    data_dir = tmp_path / "index"
    shutil.copytree(built, data_dir)
    settings = load_settings(data_dir=data_dir, corpus=str(corpus), embed_backend="hash")
    path = _file(data_dir, name)
    assert path.is_file(), path
    _damage(path, how)

    got = _search(settings, queries)
    print(f"MATRIX {name} {how}: " + (f"refused: {got}" if isinstance(got, str) else "served, same results"))
    if isinstance(got, str):
        assert "rag ingest" in got, got
    else:
        assert got == baseline, "served different results"
    doctor = run_checks(settings)
    print(f"MATRIX-DOCTOR {name} {how}: " + "; ".join(f"{c.name}: {c.detail}" for c in doctor if not c.ok))
    if isinstance(got, str) or (name.endswith(".sqlite") or name.endswith(".sqlite3")) and how != "delete":
        assert not all(c.ok for c in doctor), "damage that rag doctor does not report"

    report = ingest(settings, embedder=HashEmbedder(), progress=False)
    print(f"MATRIX-HEAL {name} {how}: {report.reason}; {report.repaired}")
    assert report.papers == GENERATED
    bad = [c for c in run_checks(settings) if not c.ok]
    assert not bad, bad
    assert _search(settings, queries) == baseline


def test_rebuild_succeeds_from_garbage_in_a_page_of_each_sqlite_file(index):
    """Garbage in one page in use of the catalog, of Chroma's database and of the embedding cache:
    `rag ingest --rebuild` sets every derived file aside and rebuilds (it failed with "unexpected
    DatabaseError"); doctor passes and search works."""
    data_dir, env = index
    for name in ("index.sqlite", "chroma/chroma.sqlite3", "embed_cache.sqlite"):
        _damage(data_dir / name, "garble")
    r = run_cli("ingest", "--rebuild", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["papers"] == 701
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout
    r = run_cli("search", "Erasing Concepts from Diffusion Models", "--json", "--top-k", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["title"] == "Erasing Concepts from Diffusion Models"
    assert not list(data_dir.glob("*.old-*")), "the files set aside by --rebuild are deleted once it is published"


def test_a_damaged_store_during_an_interrupted_update_is_rebuilt_whole(index, tmp_path):
    """An update interrupted after its first batch, then the store's native files damaged: `rag ingest` sets the
    store aside and rebuilds it from cached vectors; the resume log, which described the old store, is not
    trusted (the index would otherwise lack the published papers' vectors)."""
    from rag.settings import load_settings

    class FailsSecondTime(HashEmbedder):
        calls = 0

        def embed(self, texts):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt("simulated Ctrl-C after the first batch")
            return super().embed(texts)

    data_dir, env = index
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({"title": f"Zymurgical Transformer {i}", "abstract": f"We brew model {i} "
                                        "with yeast schedules; the attention anneals like a fermenting culture."})
                            + "\n" for i in range(300)))
    settings = load_settings(data_dir=data_dir, embed_backend="hash")
    with pytest.raises(KeyboardInterrupt):
        ingest(settings, [CORPUS, more], embedder=FailsSecondTime(), progress=False)
    assert (data_dir / "ingest.json").is_file()
    for path in (data_dir / "chroma").glob("*/header.bin"):
        path.write_bytes(b"\xff" * 100)
    report = ingest(settings, [CORPUS, more], embedder=HashEmbedder(), progress=False)
    assert report.papers == 701 + 300 and any("vector store" in x for x in report.repaired)
    env = {k: v for k, v in env.items() if k != "RAG_CORPUS"}  # the corpus it was built from
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout
    r = run_cli("search", "zymurgical transformer yeast", "--json", env=env)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert hits[0]["title"].startswith("Zymurgical Transformer")
