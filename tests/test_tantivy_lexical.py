"""The tantivy lexical index (rag.index.tantivy_lexical): our terms kept verbatim, exact BM25 top 10 against
an exhaustive reference, filters inside the engine, generations, deletes, the writer lock, damage."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rag.errors import IndexCorruptError, IndexLockedError, IndexMissingError
from rag.eval.bench_lexical import Bm25Reference, fieldnorm_id, fieldnorm_table, overlap
from rag.index.tantivy_lexical import TantivyLexical
from rag.text import content_terms, term_document


@pytest.fixture
def lex(tmp_path):
    index = TantivyLexical(tmp_path / "lexical", create=True, writer_heap=20_000_000)
    yield index
    index.close()


def _ids(hits):
    return [c for c, _ in hits]


def test_terms_are_ours_verbatim(lex):
    """The whitespace tokenizer neither splits our terms further nor lowercases or stems them again."""
    lex.add("p1:0", "p1", term_document("Text-to-Image diffusion with naïve Bayes"))
    lex.add("p2:0", "p2", term_document("Images of text rendered to screens"))
    lex.add("p3:0", "p3", term_document("Naive baselines"))
    lex.add("p4:0", "p4", "MixedCase untouched")  # whatever a document holds is indexed as is
    lex.commit()
    lex.reload()
    assert set(_ids(lex.search("text to image", 10))) == {"p1:0", "p2:0"}  # "text-to-image" -> text, imag
    assert set(_ids(lex.search("naive", 10))) == {"p1:0", "p3:0"}  # "naïve" folded at indexing and in the query
    assert set(_ids(lex.search("NAÏVE", 10))) == {"p1:0", "p3:0"}
    assert lex.search("the of and", 10) == []  # stopwords only: no terms
    searcher = lex._index.searcher()
    assert searcher.doc_freq("terms", "imag") == 2
    assert searcher.doc_freq("terms", "MixedCase") == 1 and searcher.doc_freq("terms", "mixedcase") == 0


def test_fieldnorm_table_is_tantivys():
    table = fieldnorm_table()
    # values from tantivy's src/fieldnorm/code.rs
    assert table[:41].tolist() == list(range(41)) and table[41] == 42 and table[56] == 88
    assert table[88] == 1_048 and table[255] == 2_013_265_944
    assert np.all(np.diff(table) > 0)
    assert fieldnorm_id(40) == 40 and fieldnorm_id(43) == 41 and fieldnorm_id(100) == 57


def _synthetic_docs(n: int, seed: int = 7) -> list[str]:
    """Zipf-ish vocabulary, varied lengths (5-300 terms, so quantized lengths matter), repeated terms."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    weights = [1 / (i + 1) ** 1.1 for i in range(len(vocab))]
    return [" ".join(rng.choices(vocab, weights, k=rng.choice([5, 12, 30, 60, 120, 300]) + rng.randint(0, 9)))
            for _ in range(n)]


def test_top10_is_exhaustive_bm25(lex):
    """Block-max WAND returns the exact top 10 under tantivy's BM25 (quantized lengths), on 400 documents;
    the scores match the numpy reference to float32 precision; filtered, the top 10 is the reference's
    among the documents that pass the filter."""
    docs = _synthetic_docs(400)
    years = [2000 + i % 20 for i in range(len(docs))]
    for i, doc in enumerate(docs):
        lex.add(f"d{i}", f"d{i}", doc, year=years[i])
        if i == 200:
            lex.commit()  # two segments: statistics are summed over them
    lex.commit()
    lex.reload()
    ref = Bm25Reference(docs)
    ids = {f"d{i}": i for i in range(len(docs))}
    rng = random.Random(3)
    for _ in range(60):
        query = " ".join(f"w{rng.randrange(0, 400)}" for _ in range(rng.randint(1, 6)))
        got = lex.search(query, 10)
        scores = ref.scores(content_terms(query))
        strict, tied = overlap(_ids(got), scores, ids)
        assert tied == 1.0, (query, strict)
        for chunk_id, score in got:
            assert score == pytest.approx(float(scores[ids[chunk_id]]), rel=1e-5)
        masked = np.where(np.array(years) >= 2017, scores, 0).astype(np.float32)  # 3 documents in 20
        assert overlap(_ids(lex.search(query, 10, since=2017)), masked, ids)[1] == 1.0, query


def test_reference_counts_term_frequencies():
    ref = Bm25Reference(["a a b", "b c", "c c c d"], vocabulary={"a", "c"})
    assert ref.n_docs == 3 and ref.total_tokens == 9
    assert ref.scores(["b"]).tolist() == [0, 0, 0]  # outside the vocabulary it was built for
    s = ref.scores(["c"])
    assert s[0] == 0 and s[2] > s[1] > 0  # tf 3 in 4 tokens beats tf 1 in 2


def _filtered_index(lex):
    """60 chunks about "diffusion": the 50 best-matching from 2024 in cs.CV; 10 weaker from 2019 in cs.LG."""
    for i in range(50):
        lex.add(f"strong{i}:0", f"strong{i}", "diffus " * 5 + f"x{i}", year=2024, categories=("cs.CV",),
                authors=("Ada Lovelace",))
    for i in range(10):
        lex.add(f"weak{i}:0", f"weak{i}", "diffus " + "filler " * 30, year=2019, categories=("cs.LG", "stat.ML"),
                authors=("Élodie Dupont", "Alan Turing"))
    lex.add("undated:0", "undated", "diffus")  # no year, no category
    lex.commit()
    lex.reload()


def test_filters_apply_inside_the_engine(lex):
    """A filter whose matches all rank below the unfiltered top 10 still fills its page, and leaves the
    BM25 scores unchanged."""
    _filtered_index(lex)
    top = lex.search("diffusion", 10)
    assert all(c.startswith("strong") for c in _ids(top))
    old = lex.search("diffusion", 10, until=2020)
    assert sorted(_ids(old)) == sorted(f"weak{i}:0" for i in range(10))
    assert lex.search("diffusion", 10, since=2024, until=2024) == top
    assert len(lex.search("diffusion", 20, categories=["stat.ML"])) == 10
    assert len(lex.search("diffusion", 100, categories=["stat.ML", "cs.CV"])) == 60
    assert len(lex.search("diffusion", 100, authors=["elodie  DUPONT"])) == 10  # folded like the index
    assert lex.search("diffusion", 10, authors=["Nobody"]) == []
    assert lex.search("diffusion", 10, since=2019, categories=["cs.CV"], authors=["Alan Turing"]) == []
    assert len(lex.search("diffusion", 100)) == 61  # the undated chunk is found unless a year is asked for
    assert "undated:0" not in _ids(lex.search("diffusion", 100, since=1900))
    unfiltered = dict(lex.search("diffusion", 100))
    for chunk_id, score in old:
        assert score == unfiltered[chunk_id]  # the filter clauses add nothing to the score


def test_delete_and_generations(lex, tmp_path):
    lex.add("a:0", "a", "alpha beta", generation=1)
    lex.add("a:1", "a", "alpha gamma", generation=1)
    lex.add("b:0", "b", "alpha", generation=1)
    lex.commit()
    reader = TantivyLexical(tmp_path / "lexical")  # another reader of the same folder
    reader.reload()
    assert reader.doc_count() == 3
    lex.add("c:0", "c", "alpha alpha", generation=2)
    lex.delete(["a:0", "a:1"])
    lex.commit()
    assert reader.doc_count() == 3  # a reader sees a commit when it reloads, not before
    reader.reload()
    assert set(_ids(reader.search("alpha", 10))) == {"b:0", "c:0"}
    assert _ids(reader.search("alpha", 10, visible_through=1)) == ["b:0"]  # generation 2 not published yet
    assert _ids(reader.search("alpha", 10, exclude={"c:0"})) == ["b:0"]
    lex.delete_after(1)  # an unpublished generation's leftovers
    lex.commit()
    reader.reload()
    assert _ids(reader.search("alpha", 10)) == ["b:0"] and reader.doc_count() == 1


def test_one_writer(lex, tmp_path):
    lex.add("a:0", "a", "alpha")  # this handle now holds the writer lock
    other = TantivyLexical(tmp_path / "lexical")
    with pytest.raises(IndexLockedError, match="another process is writing"):
        other.add("b:0", "b", "beta")
    lex.commit()
    lex.close()  # releases it
    other.add("b:0", "b", "beta")
    other.commit()
    other.close()
    lex.reload()
    assert lex.doc_count() == 2


def test_missing_and_damaged(tmp_path):
    with pytest.raises(IndexMissingError, match="rag ingest"):
        TantivyLexical(tmp_path / "nothing")
    folder = tmp_path / "lexical"
    index = TantivyLexical(folder, create=True, writer_heap=20_000_000)
    index.add("a:0", "a", "alpha")
    index.commit()
    index.close()
    assert TantivyLexical(folder).check() == 1
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="rag ingest"):
        TantivyLexical(folder).check()
    folder2 = tmp_path / "lexical2"
    index = TantivyLexical(folder2, create=True, writer_heap=20_000_000)
    index.add("a:0", "a", "alpha")
    index.commit()
    index.close()
    for f in folder2.iterdir():  # segment files gone, meta intact: the searcher cannot open them
        if f.suffix in (".idx", ".term"):
            f.unlink()
    with pytest.raises(IndexCorruptError, match="rag ingest"):
        TantivyLexical(folder2).check()
    (folder2 / "rag_lexical.json").write_text('{"format": 0, "terms_version": 0}')
    with pytest.raises(IndexCorruptError, match="another version"):
        TantivyLexical(folder2)


def test_clear_and_check_index(lex, tmp_path):
    from rag.index.tantivy_lexical import check_index

    lex.add("a:0", "a", "alpha")
    lex.add("b:0", "b", "beta")
    lex.commit()
    assert check_index(tmp_path / "lexical") == 2
    lex.clear()
    lex.add("c:0", "c", "alpha")
    lex.commit()
    lex.reload()
    assert _ids(lex.search("alpha beta", 10)) == ["c:0"]
    assert check_index(tmp_path / "lexical") == 1


def test_changed_paper_keeps_its_chunk_ids(lex):
    """A changed paper's new chunks reuse its ids (paper_id:no): readers of the new generation hide the old
    copies until their deletion is committed, and that deletion spares the new ones."""
    lex.add("a:0", "a", "alpha stale", generation=1)
    lex.add("b:0", "b", "alpha", generation=1)
    lex.commit()
    lex.add("a:0", "a", "alpha fresh", generation=2)  # ingest: new copy committed before publication
    lex.commit()
    lex.reload()
    assert sorted(_ids(lex.search("alpha stale fresh", 10, visible_through=1))) == ["a:0", "b:0"]
    hits = lex.search("fresh stale", 10, visible_through=2, exclude={"a:0"})  # published 2, delete pending
    assert len(hits) == 1 and _ids(lex.search("stale", 10, visible_through=2, exclude={"a:0"})) == []
    lex.delete(["a:0"], before=2)
    lex.commit()
    lex.reload()
    assert _ids(lex.search("stale", 10)) == [] and _ids(lex.search("fresh", 10)) == ["a:0"]
    assert lex.doc_count() == 2


def test_create_replaces_only_a_half_made_index(tmp_path):
    folder = tmp_path / "lexical"
    index = TantivyLexical(folder, create=True, writer_heap=20_000_000)
    index.add("a:0", "a", "alpha")
    index.commit()
    index.close()
    (folder / "rag_lexical.json").unlink()  # as if the process died before writing its marker
    assert TantivyLexical(folder, create=True).doc_count() == 0
    other = tmp_path / "papers"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(IndexCorruptError, match="not a lexical index"):
        TantivyLexical(other, create=True)
    assert (other / "notes.txt").is_file()
