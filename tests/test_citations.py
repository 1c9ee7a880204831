"""The citation grammar (rag.answer.citations): verification, normalisation, claims and spans."""

from __future__ import annotations

import pytest

from rag.answer.citations import (
    Claim,
    cited_numbers,
    claims,
    claims_by_source,
    find_spans,
    verify,
)
from rag.records import Source


def _sources(k: int = 6) -> dict[int, Source]:
    return {i: Source(i, f"p{i}", f"Title {i}", "snippet", 1.0 / i, "abstract") for i in range(1, k + 1)}


@pytest.mark.parametrize(
    "text, clean, cited, invalid",
    [
        ("A [1] and B [9].", "A [1] and B.", [1], 1),
        ("A [1][9].", "A [1].", [1], 1),
        ("A [9, 1] and [2; 7].", "A [1] and [2].", [1, 2], 2),
        ("Only fiction [0] [12].", "Only fiction.", [], 2),
        ("All of them [1,2,3].", "All of them [1, 2, 3].", [1, 2, 3], 0),
        ("No citations at all.", "No citations at all.", [], 0),
        ("Negative [-1] and [ 2 ].", "Negative and [2].", [2], 1),
        ("Repeated [1][1] [1].", "Repeated [1].", [1], 0),
        ("Adjacent [1] [2].", "Adjacent [1, 2].", [1, 2], 0),
        ("Dupes [2, 2, 1].", "Dupes [2, 1].", [1, 2], 0),
    ],
)
def test_verify(text, clean, cited, invalid):
    out = verify(text, _sources())
    assert out.text == clean
    assert [c["n"] for c in out.citations] == cited
    assert all(c["paper_id"] == f"p{c['n']}" and c["title"] == f"Title {c['n']}" for c in out.citations)
    assert out.invalid == invalid


@pytest.mark.parametrize(
    "text, clean, cited, invalid",
    [
        ("Several papers do this [2-4].", "Several papers do this [2, 3, 4].", [2, 3, 4], 0),
        ("Several papers do this [2–9].", "Several papers do this [2, 3, 4, 5, 6].", [2, 3, 4, 5, 6], 3),
        ("Several papers do this [5 - 8].", "Several papers do this [5, 6].", [5, 6], 2),
        ("Mixed [1, 3-4; 9].", "Mixed [1, 3, 4].", [1, 3, 4], 1),
        ("Backwards [9-2].", "Backwards.", [], 1),
        ("Absurd [1-99999999999].", "Absurd.", [], 1),
    ],
)
def test_citation_ranges_are_verified_too(text, clean, cited, invalid):
    """A range is a citation as well: numbers past the sources must not survive in the text."""
    out = verify(text, _sources(6))
    assert out.text == clean
    assert [c["n"] for c in out.citations] == cited
    assert out.invalid == invalid


def test_two_thousand_repeated_markers_collapse_to_one():
    out = verify("Claim " + "[1]" * 2000 + ".", _sources())
    assert out.text == "Claim [1]." and out.invalid == 0


def test_cited_numbers_expand_ranges_in_order():
    assert cited_numbers("a [3] b [1-2] c [3, 5]") == [3, 1, 2, 5]


def test_claims_split_lines_and_sentences_and_inherit_line_markers():
    answer = (
        "- **Erasing Concepts** — We fine-tune the model. It forgets styles [1]\n"
        "Two papers agree [2, 3]. A claim. [4] Next claim without a marker."
    )
    got = claims(answer)
    assert got[0] == Claim("We fine-tune the model.", (1,))  # inherits the line's marker
    assert got[1] == Claim("It forgets styles", (1,))
    assert got[2] == Claim("Two papers agree.", (2, 3))
    assert got[3] == Claim("A claim.", (4,))  # a marker opening a sentence belongs to the one before
    assert claims_by_source(answer)[1] == ["We fine-tune the model.", "It forgets styles"]


def test_find_spans_exact_whitespace_tolerant_and_paraphrased():
    abstract = "We propose a new method.  It erases concepts from diffusion models quickly. Results are strong."
    exact = find_spans(["It erases concepts from diffusion models quickly."], abstract)
    assert exact == [(abstract.index("It erases"), abstract.index(". Results"), True)]  # the final period is not needed
    assert abstract[slice(*exact[0][:2])].startswith("It erases")
    spaced = find_spans(["We propose a new method. It erases concepts"], abstract)
    assert spaced and all(x for *_, x in spaced)
    para = find_spans(["The method quickly erases concepts from diffusion models"], abstract)
    assert para and para[0][2] is False
    assert find_spans(["Nothing like the abstract at all, really"], abstract) == []
