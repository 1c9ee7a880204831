"""Corpus parser: the vendored listing pages, and synthetic broken inputs (all fast, no model)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from conftest import CORPUS, write_listing

from rag.corpus.parse import (
    BOILERPLATE,
    clean_text,
    find_code_urls,
    id_paper_id,
    iter_raw_papers,
    load_corpus,
    normalise_title,
    paper_id_for,
)
from rag.errors import CorpusError, ParseError
from rag.records import Paper

ABSTRACT_A = (
    "We propose a fine-tuning method that removes unwanted visual concepts from pre-trained text-to-image "
    "diffusion models, using only the name of the concept and negative guidance as a teacher. We evaluate "
    "the method on artistic styles, explicit content and object classes, and compare it with prior work."
)
ABSTRACT_B = (
    "Transformers process sequences with self-attention alone, dispensing with recurrence and convolutions "
    "entirely. Experiments on two machine translation tasks show these models to be superior in quality "
    "while being more parallelizable and requiring significantly less time to train than earlier models."
)
ABSTRACT_C = (
    "Graph neural networks learn node representations by aggregating messages from neighbours. We study their "
    "expressive power through the Weisfeiler-Lehman test and propose a simple architecture that is provably as "
    "powerful as the test, achieving state-of-the-art accuracy on graph classification benchmarks."
)


@pytest.fixture(scope="module")
def vendored():
    return load_corpus([CORPUS])


def _issue_strs(load) -> list[str]:
    return [str(i) for i in load.issues]


# ---------------------------------------------------------------- the vendored corpus


def test_vendored_corpus_gives_701_unique_papers_from_796_entries(vendored):
    assert len(vendored.files) == 5
    assert vendored.entries == 796
    assert len(vendored.papers) == 701
    assert vendored.duplicates == 796 - 701
    assert vendored.issues == []  # every line of the vendored corpus parses
    assert len({p.paper_id for p in vendored.papers}) == 701
    assert len({normalise_title(p.title) for p in vendored.papers}) == 701


def test_vendored_corpus_parses_in_strict_mode():
    assert len(load_corpus([CORPUS], strict=True).papers) == 701


def test_no_boilerplate_or_subscribe_titles(vendored):
    date = re.compile(r"^(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}(, \d{4})?$", re.I)
    for p in vendored.papers:
        assert not p.title.casefold().startswith("subscribe"), p.title
        assert p.title.casefold() not in BOILERPLATE, p.title
        assert "trending papers" not in p.title.casefold(), p.title
        assert "research community" not in p.title.casefold(), p.title
        assert not date.match(p.title), p.title
        assert p.title == p.title.strip() and p.title
        assert len(p.abstract) > len(p.title), p.title  # titles and abstracts were not swapped/shifted


def test_title_glued_to_subscribe_is_recovered(vendored):
    # 002_*.txt has "SubscribecMIM: A Contrastive Mutual Information Framework ..." as its first title line.
    titles = {p.title for p in vendored.papers}
    assert any(t.startswith("cMIM: A Contrastive Mutual Information Framework") for t in titles)


def test_latex_escapes_are_cleaned(vendored):
    raw_with_escape = [
        line
        for f in sorted(CORPUS.glob("*.txt"))
        for line in f.read_text(encoding="utf-8").splitlines()
        if "\\%" in line
    ]
    assert len(raw_with_escape) >= 10  # the vendored files really contain `\%`
    all_text = [p.title + "\n" + p.abstract for p in vendored.papers]
    assert not any("\\%" in t for t in all_text)
    abstracts = {p.abstract for p in vendored.papers} | {p.title for p in vendored.papers}
    for line in raw_with_escape:
        cleaned = clean_text(line)
        assert "\\%" not in cleaned and "%" in cleaned
        assert cleaned in abstracts


def test_clean_text_unit():
    assert clean_text("improves accuracy by 12\\%  and \\emph{F1}\n by 3\\_ points") == (
        "improves accuracy by 12% and F1 by 3_ points"
    )


def test_duplicates_merge_their_sources(vendored):
    files_of: dict[str, set[str]] = {}
    for fname, _no, paper in iter_raw_papers(sorted(CORPUS.glob("*.txt")), []):
        files_of.setdefault(paper.paper_id, set()).add(fname)
    by_id = {p.paper_id: p for p in vendored.papers}
    assert set(by_id) == set(files_of)
    for pid, files in files_of.items():
        sources = by_id[pid].sources
        assert len(sources) == len(set(sources)), sources  # no file listed twice
        assert set(sources) == files
    multi = [p for p in vendored.papers if len(p.sources) > 1]
    assert len(multi) >= 50
    assert any(len(p.sources) >= 3 for p in multi)


def test_paper_id_is_stable_across_case_and_punctuation():
    pid = paper_id_for("Erasing Concepts from Diffusion Models")
    assert re.fullmatch(r"[0-9a-f]{16}", pid)
    for variant in (
        "erasing concepts from diffusion models",
        "ERASING CONCEPTS FROM DIFFUSION MODELS.",
        "  Erasing   Concepts: from Diffusion-Models! ",
        "Erasing Concepts from Diffusion Models",
    ):
        assert paper_id_for(variant) == pid, variant
    assert paper_id_for("Erasing Concepts from Language Models") != pid
    # stable across runs/processes: a plain sha1 of the normalised title
    assert pid == paper_id_for(normalise_title("Erasing Concepts from Diffusion Models"))


def test_content_hash_is_pinned():
    """The index, the sentence vectors and the evidence cache are keyed by it: a new value re-embeds everything."""
    paper = Paper("p1", "Erasing Concepts", "We erase concepts.\nFrom models.", sources=("a.txt",))
    assert paper.content_hash() == hashlib.sha1("Erasing Concepts\nWe erase concepts.\nFrom models.".encode()).hexdigest()
    # only the text counts: the id and where it was found do not
    assert Paper("other", paper.title, paper.abstract).content_hash() == paper.content_hash()


def test_duplicate_with_different_case_merges_across_files(tmp_path):
    write_listing(tmp_path / "one.txt", [Paper("x", "Attention Is All You Need", ABSTRACT_B)])
    write_listing(
        tmp_path / "two.txt",
        [Paper("x", "attention is all you need!", ABSTRACT_B), Paper("x", "Graph Networks", ABSTRACT_C)],
    )
    load = load_corpus([tmp_path])
    assert load.entries == 3 and load.duplicates == 1
    by_title = {p.title: p for p in load.papers}
    assert set(by_title) == {"Attention Is All You Need", "Graph Networks"}
    assert by_title["Attention Is All You Need"].sources == ("one.txt", "two.txt")
    assert by_title["Graph Networks"].sources == ("two.txt",)


def test_code_urls_found_in_vendored_corpus(vendored):
    with_links = [p for p in vendored.papers if re.search(r"github\.(com|io)", p.abstract, re.I)]
    assert len(with_links) >= 100
    for p in with_links:
        assert any("github." in u.lower() for u in p.code_urls), (p.title, p.abstract[-200:])
    for p in vendored.papers:
        for url in p.code_urls:
            assert url.startswith(("http://", "https://")), url
            assert url[-1] not in ".,;:)]", url
            assert url in p.abstract or url.removeprefix("https://") in p.abstract, url
    # a known paper with its repository
    uniformer = [p for p in vendored.papers if "https://github.com/OpenGVLab/UniFormerV2" in p.code_urls]
    assert len(uniformer) == 1


@pytest.mark.parametrize(
    "text, urls",
    [
        ("Code is at https://github.com/rohitgandikota/erasing.", ("https://github.com/rohitgandikota/erasing",)),
        ("see github.com/a/b, and www.example.org/x;", ("https://github.com/a/b", "https://www.example.org/x")),
        ("Project page: muse-bench.github.io", ("https://muse-bench.github.io",)),
        ("(https://github.com/x/y) and again https://github.com/x/y", ("https://github.com/x/y",)),
        ("The code will be released on GitHub.", ()),
    ],
)
def test_find_code_urls(text, urls):
    assert find_code_urls(text) == urls


# ---------------------------------------------------------------- synthetic listing files


def test_title_without_abstract_is_reported_with_file_and_line_and_skipped(tmp_path):
    f = tmp_path / "page.txt"
    f.write_text(
        "new\n\nSubscribe\n\nMar 14\n\n"  # lines 1-5
        "Good Paper One\n\n" + ABSTRACT_A + "\n\n"  # lines 7, 9
        "Orphan Title Without Abstract\n\n"  # line 11
        "Good Paper Two\n\n" + ABSTRACT_B + "\n\n"  # lines 13, 15
        "Trailing Orphan\n",  # line 17
        encoding="utf-8",
    )
    load = load_corpus([tmp_path])
    assert [p.title for p in load.papers] == ["Good Paper One", "Good Paper Two"]
    assert [p.abstract for p in load.papers] == [ABSTRACT_A, ABSTRACT_B]
    issues = _issue_strs(load)
    assert len(issues) == 2
    assert issues[0].startswith("page.txt:11: ") and "Orphan Title Without Abstract" in issues[0]
    assert issues[1].startswith("page.txt:17: ") and "Trailing Orphan" in issues[1]
    assert all("without abstract" in i for i in issues)


def test_strict_mode_raises_parse_error_with_location(tmp_path):
    (tmp_path / "page.txt").write_text(
        f"Good Paper One\n{ABSTRACT_A}\nOrphan Title\nGood Paper Two\n{ABSTRACT_B}\n", encoding="utf-8"
    )
    with pytest.raises(ParseError, match=r"page\.txt:3: .*Orphan Title.*strict"):
        load_corpus([tmp_path], strict=True)
    assert len(load_corpus([tmp_path]).papers) == 2  # non-strict still ingests the rest
    assert issubclass(ParseError, CorpusError)


def test_invalid_utf8_line_is_reported_and_skipped(tmp_path):
    f = tmp_path / "page.txt"
    f.write_bytes(
        b"Good Paper One\n" + ABSTRACT_A.encode() + b"\n"
        + b"Broken \xff\xfe Title\n" + ABSTRACT_C.encode() + b"\n"  # lines 3, 4
        + b"Good Paper Two\n" + ABSTRACT_B.encode() + b"\n"
    )
    load = load_corpus([tmp_path])
    assert [p.title for p in load.papers] == ["Good Paper One", "Good Paper Two"]
    issues = _issue_strs(load)
    assert any(i.startswith("page.txt:3: ") and "UTF-8" in i for i in issues), issues
    # the orphaned abstract under the broken title is reported too, never used as a title
    assert any(i.startswith("page.txt:4: ") for i in issues), issues
    assert not any("\ufffd" in p.title + p.abstract for p in load.papers)


def test_invalid_utf8_abstract_skips_its_paper(tmp_path):
    (tmp_path / "page.txt").write_bytes(
        b"Good Paper One\n" + ABSTRACT_A.encode() + b"\n"
        + b"Paper With Broken Abstract\n" + ABSTRACT_C.encode()[:50] + b"\xc3\x28" + ABSTRACT_C.encode()[50:] + b"\n"
        + b"Good Paper Two\n" + ABSTRACT_B.encode() + b"\n"
    )
    load = load_corpus([tmp_path])
    assert [p.title for p in load.papers] == ["Good Paper One", "Good Paper Two"]
    issues = _issue_strs(load)
    assert any(i.startswith("page.txt:4: ") and "UTF-8" in i for i in issues), issues
    assert any(i.startswith("page.txt:3: ") and "Paper With Broken Abstract" in i for i in issues), issues


def test_binary_file_is_reported_and_skipped(tmp_path):
    write_listing(tmp_path / "good.txt", [Paper("x", "Good Paper One", ABSTRACT_A)])
    (tmp_path / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    load = load_corpus([tmp_path])
    assert [p.title for p in load.papers] == ["Good Paper One"]
    issues = _issue_strs(load)
    assert len(issues) == 1 and issues[0].startswith("blob.txt:1: ") and "binary" in issues[0]


def test_only_binary_corpus_is_a_corpus_error(tmp_path):
    (tmp_path / "blob.txt").write_bytes(b"\x00" * 100)
    with pytest.raises(CorpusError, match="no papers.*binary"):
        load_corpus([tmp_path])


def test_empty_file_is_a_corpus_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match=r"holds no papers.*empty\.txt"):
        load_corpus([tmp_path])


def test_boilerplate_only_corpus_is_a_corpus_error(tmp_path):
    (tmp_path / "page.txt").write_text(
        "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\nbyAK and the research community\n\nMar 14\n"
    )
    with pytest.raises(CorpusError, match=r"holds no papers.*page\.txt") as err:
        load_corpus([tmp_path])
    assert not isinstance(err.value, ParseError)


def test_directory_without_corpus_files_is_a_corpus_error(tmp_path):
    (tmp_path / "notes.md").write_text("# not a corpus")
    with pytest.raises(CorpusError, match=r"no corpus files \(\.txt or \.jsonl\)"):
        load_corpus([tmp_path])


def test_missing_path_is_a_corpus_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CorpusError, match="does not exist") as err:
        load_corpus([missing])
    assert str(missing) in str(err.value) and "--corpus" in str(err.value)


def test_huge_abstract_is_truncated_with_a_report(tmp_path):
    huge = ("word " * 30_000).strip() + "."
    (tmp_path / "page.txt").write_text(f"Huge Paper\n{huge}\nGood Paper Two\n{ABSTRACT_B}\n")
    load = load_corpus([tmp_path])
    by_title = {p.title: p for p in load.papers}
    assert set(by_title) == {"Huge Paper", "Good Paper Two"}
    assert len(by_title["Huge Paper"].abstract) == 20_000
    assert by_title["Good Paper Two"].abstract == ABSTRACT_B
    issues = _issue_strs(load)
    assert len(issues) == 1 and issues[0].startswith("page.txt:1: ") and "truncated" in issues[0]


# ---------------------------------------------------------------- JSONL


def test_jsonl_with_metadata(tmp_path):
    rows = [
        {
            "id": "2303.07345",
            "title": "Erasing Concepts\n  from Diffusion Models",
            "abstract": ABSTRACT_A + " Code: https://github.com/rohitgandikota/erasing",
            "authors": "Rohit Gandikota, Joanna Materzynska, Jaden Fiotto-Kaufman and David Bau",
            "categories": "cs.CV cs.LG",
            "update_date": "2023-06-20",
        },
        {
            "id": "custom-1",
            "title": "Attention Is All You Need",
            "abstract": ABSTRACT_B,
            "authors": ["Ashish Vaswani", "Noam Shazeer"],
            "categories": ["cs.CL"],
            "date": "2017-06-12",
            "url": "https://example.org/attention",
        },
    ]
    (tmp_path / "papers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    load = load_corpus([tmp_path / "papers.jsonl"])
    assert load.issues == []
    a, b = load.papers
    assert a.title == "Erasing Concepts from Diffusion Models"
    assert a.paper_id == id_paper_id("2303.07345")  # a line with an id is identified by it
    assert a.authors == ("Rohit Gandikota", "Joanna Materzynska", "Jaden Fiotto-Kaufman", "David Bau")
    assert a.categories == ("cs.CV", "cs.LG")
    assert a.date == "2023-06-20"
    assert a.url == "https://arxiv.org/abs/2303.07345"
    assert a.code_urls == ("https://github.com/rohitgandikota/erasing",)
    assert a.sources == ("papers.jsonl",)
    assert b.authors == ("Ashish Vaswani", "Noam Shazeer")
    assert b.categories == ("cs.CL",)
    assert b.date == "2017-06-12"
    assert b.url == "https://example.org/attention"


def test_jsonl_and_listing_mix_and_dedupe(tmp_path):
    write_listing(tmp_path / "page.txt", [Paper("x", "Attention Is All You Need", ABSTRACT_B)])
    (tmp_path / "more.jsonl").write_text(
        json.dumps({"title": "ATTENTION is all you need", "abstract": ABSTRACT_B}) + "\n"
        + json.dumps({"title": "Graph Networks", "abstract": ABSTRACT_C}) + "\n"
    )
    load = load_corpus([tmp_path])
    assert len(load.papers) == 2 and load.duplicates == 1
    att = next(p for p in load.papers if p.title.lower().startswith("attention"))
    assert set(att.sources) == {"page.txt", "more.jsonl"}


def test_malformed_jsonl_lines_are_reported_with_line_numbers(tmp_path):
    lines = [
        json.dumps({"title": "Good One", "abstract": ABSTRACT_A}),  # 1
        "{not json",  # 2
        json.dumps({"abstract": ABSTRACT_B}),  # 3 missing title
        json.dumps({"title": "No Abstract"}),  # 4 missing abstract
        "",  # 5 blank: ignored silently
        json.dumps(["a", "list"]),  # 6 not an object
        json.dumps({"title": "   ", "abstract": ABSTRACT_B}),  # 7 empty title
        json.dumps({"title": "Good Two", "abstract": ABSTRACT_C}),  # 8
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    load = load_corpus([tmp_path])
    assert [p.title for p in load.papers] == ["Good One", "Good Two"]
    issues = _issue_strs(load)
    assert [i.split(": ", 1)[0] for i in issues] == ["p.jsonl:2", "p.jsonl:3", "p.jsonl:4", "p.jsonl:6", "p.jsonl:7"]
    assert "JSON" in issues[0]
    assert "title" in issues[1]
    assert "abstract" in issues[2]
    with pytest.raises(ParseError, match=r"p\.jsonl:2"):
        load_corpus([tmp_path], strict=True)


def test_jsonl_invalid_utf8_and_huge_abstract(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(
        json.dumps({"title": "Huge", "abstract": "token " * 10_000}).encode() + b"\n"
        + b'{"title": "bad \xff", "abstract": "x"}\n'
        + json.dumps({"title": "Fine", "abstract": ABSTRACT_C}).encode() + b"\n"
    )
    load = load_corpus([f])
    by_title = {p.title: p for p in load.papers}
    assert set(by_title) == {"Huge", "Fine"}
    assert len(by_title["Huge"].abstract) == 20_000
    issues = _issue_strs(load)
    assert any(i.startswith("p.jsonl:1: ") and "truncated" in i for i in issues)
    assert any(i.startswith("p.jsonl:2: ") for i in issues)


@pytest.mark.parametrize("bad, reason", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"title": "Deep", "abstract": "x", "extra": ' + "[" * 5_000 + "]" * 5_000 + "}", "nested too deeply"),
    ('{"title": "Big", "abstract": "x", "n": ' + "1" * 100_000 + "}", "refuses"),
    ('{"title": "Lone \\ud800 surrogate", "abstract": "' + ABSTRACT_B + '"}', "surrogate"),
    ('{"title": "Swapped \\udc00\\ud800 pair", "abstract": "' + ABSTRACT_B + '"}', "surrogate"),
])
def test_a_line_the_json_decoder_or_utf8_refuses_is_reported_and_skipped(tmp_path, bad, reason):
    """Deep nesting, a 100,000-digit number or a lone surrogate used to abort the whole ingest with an
    unexpected RecursionError / ValueError / UnicodeEncodeError and no file:line."""
    lines = [json.dumps({"title": "Good One", "abstract": ABSTRACT_A}), bad,
             json.dumps({"title": "Good \U0001F600 Two", "abstract": ABSTRACT_C}, ensure_ascii=True)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    load = load_corpus([tmp_path])
    assert [p.title for p in load.papers] == ["Good One", "Good \U0001F600 Two"]  # a valid surrogate pair is fine
    issues = _issue_strs(load)
    assert len(issues) == 1 and issues[0].startswith("p.jsonl:2: ") and reason in issues[0], issues
    with pytest.raises(ParseError, match=r"p\.jsonl:2: .*" + reason):
        load_corpus([tmp_path], strict=True)


def test_metadata_of_unexpected_types_does_not_stop_the_parse(tmp_path):
    row = {"title": "Odd Metadata", "abstract": ABSTRACT_A, "authors": [["Lee", ["Ann"]], {"x": 1}],
           "categories": {"a": 1}, "date": [2023], "url": 5, "id": {"nested": "id"}}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    (paper,) = load_corpus([tmp_path]).papers
    assert paper.url is None and paper.authors[0] == "Lee" and paper.paper_id == paper_id_for("Odd Metadata")


def test_a_byte_order_mark_does_not_lose_the_first_line(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps({"title": "First", "abstract": ABSTRACT_A})
                                       + "\n" + json.dumps({"title": "Second", "abstract": ABSTRACT_B}) + "\n").encode())
    listing = write_listing(tmp_path / "page.txt", [Paper("x", "Third", ABSTRACT_C)])
    listing.write_bytes(b"\xef\xbb\xbf" + listing.read_bytes())  # the header ("new") must still be boilerplate
    load = load_corpus([tmp_path], strict=True)
    assert [p.title for p in load.papers] == ["First", "Second", "Third"]
    assert load.issues == []


def test_id_is_the_papers_identity_a_revision_replaces_it(tmp_path):
    """A revised abstract (or title) under the same id is the same paper, the later line winning; arXiv
    version suffixes name one paper; different ids are different papers even with one title."""
    revised = ABSTRACT_A.replace("We evaluate", "We further evaluate")
    rows = [
        {"id": "2303.07345", "title": "Erasing Concepts from Diffusion Models", "abstract": ABSTRACT_A},
        {"id": "x-1", "title": "Graph Networks", "abstract": ABSTRACT_C},
        {"id": "x-2", "title": "Graph Networks", "abstract": ABSTRACT_C},
        {"id": "2303.07345v2", "title": "Erasing Concepts from Diffusion Models (v2)", "abstract": revised},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    load = load_corpus([tmp_path])
    assert [(p.title, p.abstract) for p in load.papers] == [  # in corpus order: a revision where it was read
        ("Graph Networks", ABSTRACT_C), ("Graph Networks", ABSTRACT_C),
        ("Erasing Concepts from Diffusion Models (v2)", revised)]
    assert load.papers[2].paper_id == id_paper_id("2303.07345")
    assert len({p.paper_id for p in load.papers}) == 3
    assert _issue_strs(load) == ["p.jsonl:4: same id as p.jsonl:1 with another title or abstract: replaces it"]
    load_corpus([tmp_path], strict=True)  # a revision is a notice, not an error


def test_without_an_id_identity_is_still_the_title(tmp_path):
    """Listing pages and JSONL lines without an id keep today's identity (their paper ids do not change)."""
    write_listing(tmp_path / "page.txt", [Paper("x", "Attention Is All You Need", ABSTRACT_B)])
    (tmp_path / "more.jsonl").write_text(json.dumps({"title": "Graph Networks", "abstract": ABSTRACT_C}) + "\n")
    load = load_corpus([tmp_path])
    assert {p.paper_id for p in load.papers} == {paper_id_for("Attention Is All You Need"),
                                                 paper_id_for("Graph Networks")}


def test_jsonl_only_bad_lines_is_a_corpus_error_naming_the_first_issue(tmp_path):
    (tmp_path / "p.jsonl").write_text("{oops\n" + json.dumps({"title": "t"}) + "\n")
    with pytest.raises(CorpusError, match=r"holds no papers.*2 lines could not be parsed.*p\.jsonl:1"):
        load_corpus([tmp_path])


def test_explicit_file_paths_and_multiple_paths(tmp_path):
    a = write_listing(tmp_path / "x" / "a.txt", [Paper("x", "Paper A", ABSTRACT_A)])
    b = write_listing(tmp_path / "y" / "b.txt", [Paper("x", "Paper B", ABSTRACT_B)])
    load = load_corpus([a, b.parent])
    assert [p.title for p in load.papers] == ["Paper A", "Paper B"]
    assert load.files == [str(a), str(b)]
    assert isinstance(load.files[0], str) and Path(load.files[0]).exists()


@pytest.mark.parametrize("edit", ["rewritten", "truncated"])
def test_a_file_changed_between_the_two_passes_is_refused_not_misread(tmp_path, edit):
    """Pass two re-reads only the wanted lines (by byte offset); if the file changed since pass one read it,
    the ingest stops with the fix instead of indexing other text under the scanned hashes."""
    from rag.corpus.parse import iter_unique, scan_corpus

    path = tmp_path / "papers.jsonl"
    rows = [{"title": f"Paper number {i}", "abstract": f"An abstract about topic {i} and its results."} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scan = scan_corpus([path])
    assert len(list(iter_unique(scan, list(scan.hashes)[-2:]))) == 2  # unchanged: read back by offset
    if edit == "rewritten":
        rows[3]["abstract"] = "Quite another abstract, written after the first pass."
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    with pytest.raises(CorpusError, match="changed while it was being ingested"):
        list(iter_unique(scan, list(scan.hashes)[-2:]))


# ---------------------------------------------------------------- through `rag ingest`


def _ingest(tmp_path, *extra):
    from conftest import run_cli

    env = {"RAG_DATA_DIR": str(tmp_path / "index"), "RAG_CORPUS": str(tmp_path / "corpus"), "RAG_EMBED_BACKEND": "hash"}
    return run_cli("ingest", *extra, env=env)


@pytest.mark.parametrize("bad", ["{not json", "[" * 100_000 + "]" * 100_000])
def test_rag_ingest_reports_a_bad_line_once_and_skips_it(tmp_path, bad):
    """Every ingest warning used to be printed twice (a log line and the CLI's list); a line the decoder
    refused aborted the ingest."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "p.jsonl").write_text(json.dumps({"title": "Good One", "abstract": ABSTRACT_A}) + "\n" + bad + "\n"
                                    + json.dumps({"title": "Good Two", "abstract": ABSTRACT_B}) + "\n")
    strict = _ingest(tmp_path, "--strict")
    assert strict.returncode != 0 and "p.jsonl:2: " in strict.stderr and "drop --strict" in strict.stderr
    r = _ingest(tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("p.jsonl:2:") == 1, r.stderr
    assert r.stdout.startswith("2 papers")


def test_rag_ingest_replaces_a_paper_revised_under_its_id(tmp_path):
    from rag.index.reader import Index
    from rag.settings import load_settings

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    first = [{"id": "2303.07345", "title": "Erasing Concepts", "abstract": ABSTRACT_A},
             {"id": "custom-1", "title": "Attention Is All You Need", "abstract": ABSTRACT_B}]
    (corpus / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first))
    assert _ingest(tmp_path).returncode == 0
    revised = ABSTRACT_A + " We also release a benchmark of erased concepts."
    (corpus / "updates.jsonl").write_text(json.dumps({"id": "2303.07345v2", "title": "Erasing Concepts",
                                                      "abstract": revised}) + "\n")
    r = _ingest(tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["papers"], report["changed"], report["added"]) == (2, 1, 0), report
    index = Index.open(load_settings(data_dir=tmp_path / "index", embed_backend="hash"), check_stale=False)
    erasing = index.get(id_paper_id("2303.07345"))
    assert erasing.abstract == revised and len(index) == 2
