"""Incremental ingest into embedded Chroma and the catalog with the hash embedder (real Chroma, real
SQLite FTS5, no model)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import write_listing

from rag.corpus.chunk import Chunker
from rag.corpus.parse import LINE_KEYS, load_corpus
from rag.errors import (
    CorpusError,
    IndexCorruptError,
    IndexLockedError,
    IndexMissingError,
    ParseError,
)
from rag.index.catalog import CATALOG, Catalog
from rag.index.chroma_store import ChromaStore
from rag.index.embedders import HashEmbedder
from rag.index.ingest import STATE, ingest, plan_ingest, resume_state
from rag.index.layout import ingest_lock
from rag.index.reader import Index
from rag.records import Paper
from rag.retrieve.hybrid import Retriever

NEW_ABSTRACT = (
    "Zymurgical transformers brew quasiperiodic embeddings: we introduce a fermentation-inspired attention "
    "schedule that anneals keys and values like yeast cultures, and report state-of-the-art results on the "
    "Zymurgy-42 benchmark while halving the compute budget of comparable sparse-attention baselines."
)


class RecordingEmbedder(HashEmbedder):
    """The real hash embedder, remembering every text it was asked to embed."""

    def __init__(self, fail_on_call: int | None = None):
        super().__init__()
        self.texts: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def embed(self, texts):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated Ctrl-C during embedding")
        self.texts.extend(texts)
        return super().embed(texts)


@pytest.fixture
def settings(make_settings, small_corpus):
    return make_settings(corpus=str(small_corpus))


def run(settings, embedder=None, **kw):
    return ingest(settings, embedder=embedder or HashEmbedder(), progress=False, **kw)


def catalog_of(settings) -> Catalog:
    return Catalog(Path(settings.data_dir) / CATALOG)


def load_papers(data_dir) -> dict[str, Paper]:
    return {p.paper_id: p for p in Catalog(Path(data_dir) / CATALOG).papers()}


def read_meta(data_dir) -> dict:
    return Catalog(Path(data_dir) / CATALOG).meta()


def store_of(settings) -> ChromaStore:
    return ChromaStore(settings.data_dir, settings.chroma_url, settings.collection)


def chunker_of(settings) -> Chunker:
    return Chunker(settings.chunk_size, settings.chunk_overlap, settings.tokenizer)


def docs_of(store: ChromaStore, paper_id: str) -> dict[str, str]:
    got = store._col.get(where={"paper_id": paper_id}, include=["documents"])
    return dict(zip(got["ids"], got["documents"]))


def assert_consistent(settings, papers: list[Paper]) -> None:
    """Chroma, BM25, papers.jsonl and the manifest all describe exactly `papers`."""
    data_dir = Path(settings.data_dir)
    chunks = chunker_of(settings).chunk_all(papers)
    store = store_of(settings)
    assert store.paper_ids() == {p.paper_id for p in papers}
    assert store.count() == len(chunks)
    assert set(store._col.get(include=[])["ids"]) == {c.chunk_id for c in chunks}
    assert store.count_paper_vectors() == len(papers)
    catalog = catalog_of(settings)
    assert catalog.count_chunks() == catalog.count_lexical() == len(chunks)
    assert set(load_papers(data_dir)) == {p.paper_id for p in papers}
    index = Index.open(settings)
    assert index.stale is None
    assert len(index) == index.info()["papers"] == len(papers)
    meta = read_meta(data_dir)
    assert meta["complete"] is True and meta["counts"] == {"papers": len(papers), "chunks": len(chunks)}
    assert not (data_dir / STATE).exists()  # published: no resume state left


def rewrite_abstract(corpus_file: Path, title: str, new_abstract: str) -> None:
    lines = corpus_file.read_text(encoding="utf-8").split("\n")
    i = lines.index(title)
    j = next(k for k in range(i + 1, len(lines)) if lines[k].strip())
    lines[j] = new_abstract
    corpus_file.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------- first and repeated ingest


def test_first_ingest_embeds_everything(settings, small_papers):
    emb = RecordingEmbedder()
    report = run(settings, emb)
    chunks = chunker_of(settings).chunk_all(small_papers)
    assert report.papers == 20 and report.added == 20
    assert report.changed == report.removed == report.unchanged == 0
    assert report.chunks == len(chunks) and report.chunks > 20  # some abstracts span several chunks
    assert report.embedded == len({c.text for c in chunks})
    assert sorted(set(emb.texts)) == sorted({c.text for c in chunks})
    assert report.rebuilt is False and report.reason == "new index"
    assert report.chroma_mode == "embedded" and report.issues == []
    assert report.entries == 20 and report.duplicates == 0
    assert (Path(settings.data_dir) / CATALOG).exists()
    assert_consistent(settings, small_papers)
    # stored metadata and documents are the chunk bodies of the right papers
    p = small_papers[0]
    assert set(docs_of(store_of(settings), p.paper_id).values()) == {c.body for c in chunker_of(settings).chunk(p)}


def test_second_ingest_embeds_nothing_and_reports_corpus_unchanged(settings, small_papers):
    first = run(settings)
    emb = RecordingEmbedder()
    report = run(settings, emb)
    assert report.embedded == 0 and emb.calls == 0
    assert report.reason == "corpus unchanged"
    assert report.added == report.changed == report.removed == 0
    assert report.unchanged == report.papers == 20
    assert report.chunks == first.chunks
    assert_consistent(settings, small_papers)


def test_changed_abstract_reembeds_only_that_paper(settings, small_corpus, small_papers):
    run(settings)
    target = small_papers[3]
    before = docs_of(store_of(settings), target.paper_id)
    rewrite_abstract(small_corpus / "a.txt", target.title, NEW_ABSTRACT)
    emb = RecordingEmbedder()
    report = run(settings, emb)
    assert (report.added, report.changed, report.removed, report.unchanged) == (0, 1, 0, 19)
    assert report.rebuilt is False
    new_paper = Paper(target.paper_id, target.title, NEW_ABSTRACT, sources=target.sources)
    new_chunks = chunker_of(settings).chunk(new_paper)
    assert report.embedded == len(new_chunks)
    assert emb.texts and all(t.startswith(target.title + "\n") for t in emb.texts)
    after = docs_of(store_of(settings), target.paper_id)
    assert set(after.values()) == {c.body for c in new_chunks}
    assert not set(after.values()) & set(before.values())
    assert load_papers(settings.data_dir)[target.paper_id].abstract == NEW_ABSTRACT
    papers = [new_paper if p.paper_id == target.paper_id else p for p in small_papers]
    assert_consistent(settings, papers)
    # the new text is searchable (BM25 over the new words, dense via the same hash vectors)
    hits = Retriever.from_settings(settings, embedder=HashEmbedder()).search("zymurgical fermentation yeast", top_k=3)
    assert hits[0].paper_id == target.paper_id


def test_added_paper(settings, small_corpus, small_papers):
    run(settings)
    extra = Paper("x", "Zymurgical Transformers for Sequence Brewing", NEW_ABSTRACT)
    write_listing(small_corpus / "c.txt", [extra])
    emb = RecordingEmbedder()
    report = run(settings, emb)
    assert (report.added, report.changed, report.removed, report.unchanged) == (1, 0, 0, 20)
    assert report.papers == 21
    assert all(t.startswith(extra.title + "\n") for t in emb.texts) and report.embedded >= 1
    new_papers = load_corpus([small_corpus]).papers
    assert_consistent(settings, new_papers)
    hits = Retriever.from_settings(settings, embedder=HashEmbedder()).search("Zymurgical Transformers Sequence Brewing", top_k=1)
    assert hits[0].title == extra.title


def plan_of(settings, corpus_paths=None):
    catalog, store = catalog_of(settings), store_of(settings)
    try:
        return plan_ingest(settings, catalog, store, corpus_paths, model_name=HashEmbedder().name)
    finally:
        catalog.close()
        store.close()


def test_plan_of_an_unchanged_corpus_is_no_work_and_of_an_appended_paper_exactly_one(make_settings, tmp_path,
                                                                                     small_papers):
    """The plan step alone (a JSONL corpus, whose unchanged lines are not read again): the diff of corpus against
    the published index, without writing anything."""
    corpus = _jsonl(tmp_path / "papers.jsonl", small_papers[:15])
    settings = make_settings(corpus=str(corpus))
    run(settings)
    meta = read_meta(settings.data_dir)
    assert plan_of(settings).up_to_date
    _jsonl(corpus, small_papers[:16])
    plan = plan_of(settings)
    assert not plan.up_to_date
    assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (1, 0, 0, 15)
    assert plan.need == {small_papers[15].paper_id} and plan.to_embed == 1
    assert plan.delete == [] and plan.gone == [] and not plan.drop_store and not plan.rebuild
    assert plan.base_generation == meta["generation"]  # the resume log names the published papers
    # planning wrote nothing: no resume state, the same published generation
    assert not (Path(settings.data_dir) / STATE).exists()
    assert read_meta(settings.data_dir) == meta
    # a changed abstract: its vectors are deleted and it is read and embedded again
    _jsonl(corpus, [replace(small_papers[0], abstract=NEW_ABSTRACT), *small_papers[1:15]])
    plan = plan_of(settings)
    assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (0, 1, 0, 14)
    assert plan.delete == [small_papers[0].paper_id] and plan.need == {small_papers[0].paper_id}
    assert plan.to_embed == 1


def test_removed_paper_is_gone_from_chroma(settings, small_corpus, small_papers):
    run(settings)
    gone = small_papers[-1]  # last paper of b.txt
    assert gone.paper_id in store_of(settings).paper_ids()
    write_listing(small_corpus / "b.txt", small_papers[10:-1])
    emb = RecordingEmbedder()
    report = run(settings, emb)
    assert (report.added, report.changed, report.removed, report.unchanged) == (0, 0, 1, 19)
    assert report.embedded == 0 and emb.calls == 0
    store = store_of(settings)
    assert gone.paper_id not in store.paper_ids()
    assert docs_of(store, gone.paper_id) == {}
    assert gone.paper_id not in load_papers(settings.data_dir)
    assert_consistent(settings, small_papers[:-1])
    hits = Retriever.from_settings(settings, embedder=HashEmbedder()).search(gone.title, top_k=19, mode="hybrid")
    assert gone.paper_id not in {h.paper_id for h in hits}


def test_removing_a_whole_file(settings, small_corpus, small_papers):
    run(settings)
    (small_corpus / "b.txt").unlink()
    report = run(settings)
    assert report.removed == 10 and report.papers == 10
    assert_consistent(settings, small_papers[:10])


def test_duplicate_in_new_file_adds_a_source_not_a_paper(settings, small_corpus, small_papers):
    run(settings)
    dup = small_papers[0]
    write_listing(small_corpus / "c.txt", [Paper("x", dup.title.upper(), dup.abstract)])
    report = run(settings)
    assert report.papers == 20 and report.duplicates == 1 and report.entries == 21
    assert report.added == 0 and report.embedded == 0
    assert load_papers(settings.data_dir)[dup.paper_id].sources == ("a.txt", "c.txt")


# ---------------------------------------------------------------- rebuilds


def test_changing_chunk_size_triggers_a_rebuild(settings, make_settings, small_corpus, small_papers):
    first = run(settings)
    small = make_settings(corpus=str(small_corpus), chunk_size=48, chunk_overlap=8)
    report = run(small)
    assert report.rebuilt is True
    assert "chunking" in report.reason
    assert report.chunks > first.chunks  # smaller chunks, more of them
    assert report.embedded > 0
    assert_consistent(small, small_papers)  # no chunk of the old size left behind
    # and back: the old vectors come from the cache
    back = run(settings)
    assert back.rebuilt is True and back.embedded == 0
    assert_consistent(settings, small_papers)


def test_different_embedder_triggers_a_rebuild(settings, small_papers):
    run(settings)
    report = run(settings, HashEmbedder(dim=64))
    assert report.rebuilt is True and report.embedded == report.chunks
    assert_consistent(settings, small_papers)


def test_rebuild_flag_rebuilds(settings, small_papers):
    first = run(settings)
    report = run(settings, rebuild=True)
    assert report.rebuilt is True and report.reason == "rebuild requested"
    assert report.added == 20 and report.unchanged == 0
    assert report.chunks == first.chunks
    assert report.embedded == 0  # vectors are cached by content hash
    assert_consistent(settings, small_papers)


def test_corrupt_catalog_names_the_fix_and_ingest_repairs_it(settings, small_papers):
    run(settings)
    catalog = Path(settings.data_dir) / CATALOG
    catalog.write_bytes(b"\x00\x01 not a database " * 100)
    for extra in ("-wal", "-shm"):
        Path(str(catalog) + extra).unlink(missing_ok=True)
    with pytest.raises(IndexCorruptError, match=r"rag ingest"):
        Index.open(settings)
    with pytest.raises(IndexCorruptError, match=r"rag ingest"):
        Retriever.from_settings(settings, embedder=HashEmbedder())
    emb = RecordingEmbedder()
    report = run(settings, emb)  # no --rebuild needed; the damaged file is set aside
    assert report.papers == 20 and any("catalog" in r for r in report.repaired)
    assert emb.texts == []  # every vector came from the cache
    assert list(Path(settings.data_dir).glob(f"{CATALOG}.damaged-*"))
    assert_consistent(settings, small_papers)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"SQLite format 3\x00" + b"\xff" * 200])
def test_unreadable_catalog_variants(settings, content):
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / CATALOG).write_bytes(content)
    with pytest.raises((IndexCorruptError, IndexMissingError), match=r"rag ingest"):
        Index.open(settings)


def test_missing_index(settings):
    with pytest.raises(IndexMissingError, match=r"`rag ingest`") as err:
        Index.open(settings)
    assert str(Path(settings.data_dir).resolve()) in str(err.value)
    with pytest.raises(IndexMissingError, match=r"rag ingest"):
        Retriever.from_settings(settings, embedder=HashEmbedder())


def test_stale_index_when_corpus_changes_after_ingest(settings, small_corpus, small_papers):
    run(settings)
    assert Index.open(settings).stale is None
    rewrite_abstract(small_corpus / "b.txt", small_papers[12].title, NEW_ABSTRACT)
    state = Index.open(settings)
    assert state.stale and "rag ingest" in state.stale
    assert Index.open(settings, check_stale=False).stale is None
    # the stale index is still searchable, and a re-ingest makes it fresh
    Retriever.from_settings(settings, embedder=HashEmbedder()).search("diffusion", top_k=3)
    assert run(settings).changed == 1
    assert Index.open(settings).stale is None


# ---------------------------------------------------------------- locking and interruption


def test_concurrent_ingest_is_refused_while_the_lock_is_held(settings, small_papers):
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True)
    with ingest_lock(data_dir):
        with pytest.raises(IndexLockedError, match=r"rag ingest") as err:
            run(settings)
        assert "pid" in str(err.value)
    assert not Catalog(data_dir / CATALOG, create=True).meta()
    assert run(settings).papers == 20  # the lock is released afterwards
    assert_consistent(settings, small_papers)


def test_lock_held_by_another_thread_blocks_ingest(settings):
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True)
    held, release = threading.Event(), threading.Event()

    def holder():
        with ingest_lock(data_dir):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(IndexLockedError):
            run(settings)
    finally:
        release.set()
        t.join(10)


def test_interrupted_ingest_resumes(settings, small_papers):
    with pytest.raises(KeyboardInterrupt):
        run(settings.model_copy(update={"ingest_batch_papers": 5}), RecordingEmbedder(fail_on_call=3))  # two batches of 5 papers written, then Ctrl-C
    with pytest.raises(IndexMissingError, match=r"rag ingest"):
        Index.open(settings)  # nothing was published
    state = resume_state(settings.data_dir)
    assert len(state["stored"]) == 10
    assert len((Path(settings.data_dir) / STATE).read_text().splitlines()) == 3  # a head, then a line per batch
    assert len(store_of(settings).paper_ids()) == 10

    emb = RecordingEmbedder()
    report = run(settings, emb)
    assert report.added == 10 and report.unchanged == 10 and report.papers == 20
    done = {p.paper_id for p in small_papers if p.paper_id in state["stored"]}
    assert not any(t.split("\n", 1)[0] in {p.title for p in small_papers if p.paper_id in done} for t in emb.texts)
    assert_consistent(settings, small_papers)


# ---------------------------------------------------------------- bad corpora


def test_parse_issues_are_reported_in_the_ingest_report(settings, small_corpus):
    run(settings)
    with open(small_corpus / "b.txt", "a", encoding="utf-8") as fh:
        fh.write("A Title Whose Abstract Went Missing\n")
    with pytest.raises(ParseError, match=r"b\.txt:\d+: .*A Title Whose Abstract Went Missing"):
        run(settings, strict=True)
    index = Index.open(settings, check_stale=False)  # the strict failure left the index alone
    assert len(index) == 20 and read_meta(settings.data_dir)["complete"] is True
    report = run(settings)
    assert report.papers == 20 and report.added == report.changed == report.removed == 0
    assert len(report.issues) == 1
    assert report.issues[0].startswith("b.txt:") and "without abstract" in report.issues[0]


def test_empty_corpus_fails_cleanly(make_settings, tmp_path):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    (corpus / "page.txt").write_text("new\n\nSubscribe\n")
    s = make_settings(corpus=str(corpus))
    with pytest.raises(CorpusError, match="no papers"):
        run(s)
    assert not (Path(s.data_dir) / CATALOG).exists() or not read_meta(s.data_dir)
    with pytest.raises(CorpusError, match="does not exist"):
        run(make_settings(corpus=str(tmp_path / "missing")))


def test_corpus_paths_argument_overrides_settings(make_settings, small_corpus, small_papers):
    s = make_settings(corpus=str(small_corpus / "a.txt"))
    report = ingest(s, corpus_paths=[small_corpus / "b.txt"], embedder=HashEmbedder(), progress=False)
    assert report.papers == 10
    assert store_of(s).paper_ids() == {p.paper_id for p in small_papers[10:]}


def test_published_metadata_has_params_counts_and_a_generation(settings):
    first = run(settings)
    manifest = read_meta(settings.data_dir)
    assert manifest["generation"] == first.generation
    assert manifest["params"]["embedding_model"] == "hash-384"
    assert manifest["params"]["chunk_size"] == settings.chunk_size
    assert manifest["counts"] == {"papers": 20, "chunks": manifest["counts"]["chunks"]}
    assert manifest["corpus_fingerprint"]


# ---------------------------------------------------------------- large JSONL files: only what changed is read


def _jsonl(path: Path, papers: list[Paper], categories: str = "cs.LG") -> Path:
    path.write_text("".join(json.dumps({"title": p.title, "abstract": p.abstract, "categories": categories}) + "\n"
                            for p in papers))
    return path


def test_jsonl_append_and_remove_parse_only_new_lines(make_settings, tmp_path, small_papers, monkeypatch):
    corpus = _jsonl(tmp_path / "papers.jsonl", small_papers[:15])
    settings = make_settings(corpus=str(corpus))
    run(settings)
    import rag.corpus.parse

    parsed = []
    real = rag.corpus.parse._jsonl_object
    monkeypatch.setattr(rag.corpus.parse, "_jsonl_object", lambda *a: parsed.append(a[1]) or real(*a))
    _jsonl(corpus, small_papers[:17])  # 2 appended
    report = run(settings)
    assert (report.added, report.removed, report.unchanged, report.papers) == (2, 0, 15, 17)
    assert sorted(set(parsed)) == [16, 17]  # scanned and read again: the two new lines only
    parsed.clear()
    _jsonl(corpus, small_papers[2:17])  # the first two removed
    report = run(settings)
    assert (report.added, report.removed, report.papers) == (0, 2, 15)
    assert parsed == []
    assert_consistent(settings, load_corpus([corpus]).papers)


def test_jsonl_metadata_change_updates_the_record_without_embedding(make_settings, tmp_path, small_papers):
    corpus = _jsonl(tmp_path / "papers.jsonl", small_papers[:5])
    settings = make_settings(corpus=str(corpus))
    run(settings)
    _jsonl(corpus, small_papers[:5], categories="cs.CV")  # same texts: same content hashes
    emb = RecordingEmbedder()
    report = run(settings, emb)
    assert (report.added, report.changed, report.removed, report.unchanged) == (0, 0, 0, 5)
    assert emb.calls == 0
    assert {p.categories for p in load_papers(settings.data_dir).values()} == {("cs.CV",)}
    assert_consistent(settings, load_corpus([corpus]).papers)


def test_upgrading_an_index_of_the_previous_layout_gives_a_whole_index(make_settings, small_corpus):
    """The previous layout (manifest.json, no catalog, no paper vectors) is upgraded in one ingest."""
    import json as _json

    from rag.apps.doctor import run_checks
    from rag.index.catalog import CATALOG, Catalog
    from rag.index.chroma_store import ChromaStore

    settings = make_settings(corpus=str(small_corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    data_dir = settings.data_dir
    catalog = Catalog(data_dir / CATALOG)
    params, papers = catalog.meta()["params"], catalog.paper_hashes()
    catalog.close()
    (data_dir / "manifest.json").write_text(_json.dumps({"params": params, "papers": papers}))
    for suffix in ("", "-wal", "-shm"):
        (data_dir / (CATALOG + suffix)).unlink(missing_ok=True)
    store = ChromaStore(data_dir, None, settings.collection)
    store._call(store._papers.delete, ids=list(papers))  # the chunk vectors stay, as in the old layout
    assert store.count_paper_vectors() == 0
    store.close()

    report = ingest(settings, embedder=HashEmbedder(), progress=False)
    assert report.reason == "upgraded" and report.papers == len(papers)
    checks = run_checks(settings)
    assert all(c.ok for c in checks), [str(c) for c in checks if not c.ok]


def test_interrupted_update_resumes_against_the_published_catalog(make_settings, tmp_path, small_papers):
    """An update (2 papers removed, 1 changed, 5 added) stopped after its first batch: the resume state names
    the published generation instead of copying every stored paper, and the next run finishes the update."""
    corpus = _jsonl(tmp_path / "papers.jsonl", small_papers[:15])
    settings = make_settings(corpus=str(corpus))
    run(settings)
    generation = read_meta(settings.data_dir)["generation"]
    changed = replace(small_papers[2], abstract=NEW_ABSTRACT)
    after = [small_papers[0], small_papers[1], changed, *small_papers[3:13], *small_papers[15:20]]
    _jsonl(corpus, after)
    with pytest.raises(KeyboardInterrupt):
        run(settings.model_copy(update={"ingest_batch_papers": 2}), RecordingEmbedder(fail_on_call=2))
    head = json.loads((Path(settings.data_dir) / STATE).read_text().splitlines()[0])
    assert head["base_generation"] == generation and "stored" not in head
    assert head["dropped"] == []  # copy-on-write: nothing published is deleted before the publication
    state = resume_state(settings.data_dir)
    # the published papers, plus one batch (the changed paper, now with its new hash, and one added paper)
    assert set(state["stored"]) >= {p.paper_id for p in small_papers[:15]} and len(state["stored"]) == 16
    assert state["stored"][changed.paper_id] != small_papers[2].content_hash()
    report = run(settings)
    assert report.papers == len(after)
    assert_consistent(settings, after)


@pytest.mark.parametrize("broken", [False, True])
def test_chunk_worker_chunks_exactly_like_this_process(small_papers, broken, monkeypatch, caplog):
    """`rag ingest` chunks in a child process (rag.corpus.chunk.ChunkWorker): same chunks and lexical documents
    as in-process chunking, in order; a child that cannot start leaves the chunking to this process."""
    from rag.corpus.chunk import ChunkWorker, LocalChunking

    if broken:
        monkeypatch.setattr("sys.executable", "/nonexistent/python")
    worker = ChunkWorker(160, 32)
    try:
        got = list(worker.stream(small_papers, batch=3))
    finally:
        worker.close()
    expected = list(LocalChunking(160, 32).stream(small_papers))
    assert [(p.paper_id, [c.text for c in cs], docs) for p, cs, docs in got] == \
           [(p.paper_id, [c.text for c in cs], docs) for p, cs, docs in expected]
    assert (worker.failure is not None) == broken
    if broken:
        assert "chunking in this process" in caplog.text


def test_a_missing_model_fails_the_ingest_with_its_fix_not_a_thread_traceback(tmp_path, small_corpus):
    """A new index preloads the model in a thread (rag.index.ingest); its failure is reported once, by the ingest."""
    from tests.conftest import run_cli

    env = {"RAG_DATA_DIR": str(tmp_path / "index"), "RAG_EMBED_MODEL_PATH": str(tmp_path / "no-model"),
           "RAG_EMBED_BACKEND": "torch"}
    r = run_cli("ingest", "--corpus", str(small_corpus), env=env, process=True)
    assert r.returncode != 0
    assert "RAG_EMBED_MODEL_PATH" in r.stderr and "Traceback" not in r.stderr


def test_corpus_change_is_a_cheap_guess_that_never_claims_too_much(make_settings, tmp_path, small_papers):
    from rag.index.ingest import corpus_change

    corpus = _jsonl(tmp_path / "papers.jsonl", small_papers[:5])
    settings = make_settings(corpus=str(corpus))
    assert corpus_change(settings) == "unknown"  # no index yet
    run(settings)
    assert corpus_change(settings) == "unchanged"
    _jsonl(corpus, small_papers[:6])
    assert corpus_change(settings) == "grown"
    _jsonl(corpus, small_papers[:4])
    assert corpus_change(settings) == "shrunk"
    (Path(settings.data_dir) / CATALOG).write_bytes(b"not a database")
    assert corpus_change(settings) == "unknown"


def test_a_line_cache_keyed_another_way_is_rebuilt_by_the_next_ingest(make_settings, tmp_path, small_papers):
    """An index whose JSONL line cache was keyed by an older scheme: the next ingest (even with the corpus
    unchanged) re-keys it, so the first real update after an upgrade does not pay a full parse."""
    import sqlite3

    corpus = _jsonl(tmp_path / "papers.jsonl", small_papers[:8])
    settings = make_settings(corpus=str(corpus))
    run(settings)
    db_path = Path(settings.data_dir) / CATALOG
    with sqlite3.connect(db_path) as db:
        keys = {k for (k,) in db.execute("SELECT key FROM lines")}
        assert len(keys) == 8
        db.execute("UPDATE lines SET key = 'old-' || key")
        db.execute("UPDATE meta SET value = ? WHERE key = 'line_keys'", (json.dumps("blake2b"),))
    report = run(settings)
    assert report.reason != "corpus unchanged" and report.embedded == 0 and report.added == report.removed == 0
    with sqlite3.connect(db_path) as db:
        assert {k for (k,) in db.execute("SELECT key FROM lines")} == keys
    assert read_meta(settings.data_dir)["line_keys"] == LINE_KEYS
    assert run(settings).reason == "corpus unchanged"
    assert_consistent(settings, small_papers[:8])


def test_an_open_index_finds_nearest_papers_of_the_newly_published_generation(settings, small_corpus, small_papers):
    """The nearest papers (Rocchio feedback, "more like this") come from paper vectors held in memory per
    generation: exact, and a paper removed by a re-ingest is gone from an index opened before it."""
    run(settings)
    index = Index.open(settings)
    gone = small_papers[-1]
    vector = store_of(settings).paper_vectors([gone.paper_id])[gone.paper_id]
    near = index.nearest_papers(vector, 5)
    assert near[0].paper_id == gone.paper_id and near[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [p.paper_id for p in near] == [p.paper_id for p in store_of(settings).nearest_papers(vector, 5)]
    assert [p.similarity for p in near] == sorted((p.similarity for p in near), reverse=True)
    write_listing(small_corpus / "b.txt", small_papers[10:-1])
    run(settings)
    assert index.refresh()
    after = index.nearest_papers(vector, 30)
    assert gone.paper_id not in {p.paper_id for p in after} and len(after) == len(small_papers) - 1
    index.close()
