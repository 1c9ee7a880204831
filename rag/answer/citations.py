"""Citation markers: the one grammar for `[n]`, verification against the numbered sources, the claims
an answer makes (sentence → cited numbers), and where a claim sits in a source abstract.

Answer, UI and eval all call this module; nobody else parses `[n]`.

Grammar: `[1]`, `[1, 3]`, `[1; 3]`, `[2-4]` / `[2–4]` (ranges), and combinations. Numbers that name no
source (`[0]`, `[-1]`, `[99]`) and ranges wider than `MAX_RANGE` are invalid and removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rag.corpus.parse import normalise_title
from rag.text import content_terms, sentence_spans, split_sentences

_ITEM = r"[-+]?\d+(?:\s*[-–]\s*[-+]?\d+)?"
MARKER = re.compile(rf"\[\s*({_ITEM}(?:\s*[,;]\s*{_ITEM})*)\s*\]")
_RANGE = re.compile(r"^([-+]?\d+)\s*[-–]\s*([-+]?\d+)$")
MAX_RANGE = 50  # "[1-200]" is not a sensible citation


def expand(body: str) -> tuple[list[int], int]:
    """The numbers one marker body names ("1, 3-5" -> [1, 3, 4, 5]), in order, each once, and how
    many items were malformed (reversed or over-wide ranges)."""
    numbers: list[int] = []
    bad = 0
    for part in re.split(r"\s*[,;]\s*", body.strip()):
        m = _RANGE.match(part)
        lo, hi = (int(m.group(1)), int(m.group(2))) if m else (int(part), int(part))
        if hi < lo or hi - lo > MAX_RANGE:
            bad += 1
            continue
        for n in range(lo, hi + 1):
            if n not in numbers:
                numbers.append(n)
    return numbers, bad


def cited_numbers(text: str) -> list[int]:
    """Every number the markers in `text` name, in order of first appearance (not checked against sources)."""
    out: list[int] = []
    for match in MARKER.finditer(text):
        for n in expand(match.group(1))[0]:
            if n not in out:
                out.append(n)
    return out


@dataclass
class Verified:
    """An answer text with only valid markers left, the cited sources, and what was removed."""

    text: str
    citations: list[dict]
    invalid: int


def verify(text: str, valid: Mapping[int, object]) -> Verified:
    """Keep only markers naming a source in `valid` (n -> Source, with paper_id and title).

    Invalid numbers are dropped and counted; a marker left empty disappears; adjacent markers are
    merged and repeats collapsed, so "[1][1] [1]" becomes "[1]".
    """
    invalid = 0
    cited: list[int] = []

    def fix(match: re.Match) -> str:
        nonlocal invalid
        numbers, bad = expand(match.group(1))
        invalid += bad
        keep = []
        for n in numbers:
            if n in valid:
                keep.append(n)
                if n not in cited:
                    cited.append(n)
            else:
                invalid += 1
        return "[" + ", ".join(map(str, keep)) + "]" if keep else ""

    clean = MARKER.sub(fix, text)
    clean = _merge_adjacent(clean)
    clean = re.sub(r"[ \t]+([.,;:])", r"\1", clean)
    clean = re.sub(r"[ \t]{2,}", " ", clean).strip()
    citations = [{"n": n, "paper_id": valid[n].paper_id, "title": valid[n].title} for n in sorted(cited)]
    return Verified(clean, citations, invalid)


_ADJACENT = re.compile(r"\[([\d, ]+)\](?:[ \t]*\[([\d, ]+)\])+")


def _merge_adjacent(text: str) -> str:
    def merge(match: re.Match) -> str:
        numbers: list[int] = []
        for body in re.findall(r"\[([\d, ]+)\]", match.group(0)):
            for n in (int(x) for x in body.split(",") if x.strip()):
                if n not in numbers:
                    numbers.append(n)
        return "[" + ", ".join(map(str, numbers)) + "]"

    return _ADJACENT.sub(merge, text)


def strip_markers(text: str) -> str:
    return MARKER.sub("", text)


# ------------------------------------------------------------------------------ claims

_TITLE_PREFIX = re.compile(r"^\s*\*\*[^*\n]+\*\*\s*(?:[—–:]|-{1,2})\s*")
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_HEADING = re.compile(r"^\s*#{1,6}\s*")
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^)]+)\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_LEADING_MARKERS = re.compile(rf"^(?:\s*{MARKER.pattern})+\s*")


@dataclass(frozen=True)
class Claim:
    """One sentence of an answer (markup and markers stripped) and the source numbers it cites."""

    text: str
    refs: tuple[int, ...]


def strip_markup(text: str) -> str:
    """Drop bullets, headings, the "**Title** —" prefix, markdown emphasis/links and [n] markers."""
    text = _BULLET.sub("", text)
    text = _HEADING.sub("", text)
    text = _TITLE_PREFIX.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    text = MARKER.sub("", text)
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return " ".join(text.split())


def claims(answer: str) -> list[Claim]:
    """The answer's sentences with the numbers each cites.

    Lines (bullets, paragraphs) are split into sentences; a sentence without its own marker inherits
    its line's markers; a marker opening a sentence ("claim. [1] Next") belongs to the sentence before.
    Fragments without content words are dropped.
    """
    out: list[Claim] = []
    for line in answer.splitlines():
        if not line.strip():
            continue
        line_refs = cited_numbers(line)
        body = _TITLE_PREFIX.sub("", _BULLET.sub("", line)).strip()
        pieces: list[list] = []  # [raw sentence, its own numbers]
        for raw in split_sentences(body):
            lead = _LEADING_MARKERS.match(raw)
            if lead and pieces:
                pieces[-1][1] += [n for n in cited_numbers(lead.group(0)) if n not in pieces[-1][1]]
                raw = raw[lead.end():]
            pieces.append([raw, cited_numbers(raw)])
        for raw, refs in pieces:
            clean = strip_markup(raw)
            if content_terms(clean) or re.search(r"\d", clean):
                out.append(Claim(clean, tuple(refs or line_refs)))
    return out


def claims_by_source(answer: str) -> dict[int, list[str]]:
    """Source number -> the answer sentences citing it."""
    out: dict[int, list[str]] = {}
    for claim in claims(answer):
        for n in claim.refs:
            out.setdefault(n, []).append(claim.text)
    return out


# ------------------------------------------------------------------------------ spans in a source

Span = tuple[int, int, bool]  # (start, end, exact) in an abstract
_WORDS = re.compile(r"[a-z0-9]+")
PARAPHRASE_OVERLAP = 0.35  # word Jaccard with the closest abstract sentence to mark it as paraphrased support


def find_spans(sentences: Iterable[str], abstract: str) -> list[Span]:
    """Where the given answer sentences sit in `abstract`.

    Exact when a sentence (or one of its sentences, or the text with whitespace normalised) is verbatim in
    the abstract; otherwise the abstract sentence sharing most words with it, if the overlap is at least
    `PARAPHRASE_OVERLAP` (marked not exact).
    """
    if not abstract:
        return []
    spans: list[Span] = []
    abstract_sentences = None
    for sentence in sentences:
        target = sentence.strip().rstrip(".").strip()
        found = False
        for cand in [sentence] + [s for s in split_sentences(sentence) if s != sentence]:
            cand = cand.strip().rstrip(".").strip().rstrip("…").strip()
            if len(cand) < 12:
                continue
            span = _locate(cand, abstract)
            if span:
                spans.append((*span, True))
                found = True
                if cand == target:
                    break
        if found:
            continue
        last = (split_sentences(sentence) or [sentence])[-1]
        words = set(_WORDS.findall(last.lower()))
        if len(words) < 4:
            continue
        if abstract_sentences is None:
            abstract_sentences = [(s, e, set(_WORDS.findall(abstract[s:e].lower()))) for s, e in sentence_spans(abstract)]
        best = max(abstract_sentences, key=lambda r: _jaccard(words, r[2]), default=None)
        if best and _jaccard(words, best[2]) >= PARAPHRASE_OVERLAP:
            spans.append((best[0], best[1], False))
    return merge_spans(spans)


def _locate(quote: str, abstract: str) -> tuple[int, int] | None:
    idx = abstract.find(quote)
    if idx >= 0:
        return idx, idx + len(quote)
    match = re.search(r"\s+".join(re.escape(w) for w in quote.split()), abstract)
    return (match.start(), match.end()) if match else None


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / (len(a | b) or 1)


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end, exact in sorted(spans):
        if merged and start <= merged[-1][1]:
            s0, e0, x0 = merged[-1]
            merged[-1] = (s0, max(e0, end), x0 or exact)
        else:
            merged.append((start, end, exact))
    return merged


_FRAMING = re.compile(r"^(?:\*\*[^*]+\*\* — )?No indexed paper mentions .+\.$|^None of the \d+ papers of the previous answer matches")


def is_framing(sentence: str, refs) -> bool:
    """A line the answerer writes about the answer or the index, not a claim about a paper: a label ending with
    ":" ("Also possibly relevant:", "Among the 8 papers of the previous answer:") or a statement that no
    indexed paper mentions something. Grounding metrics leave these out; they cite nothing by design."""
    text = sentence.strip()
    return not refs and (text.endswith(":") or bool(_FRAMING.match(text)))


# ------------------------------------------------------------------------------ papers named in an answer

# A bold title: the answerer is told to name each paper by its exact title in bold (prompts/system.md).
_BOLD = re.compile(r"\*\*([^*\n]+?)\*\*")
_NAME = r"[^\W\d_][\w'’-]*"
_YEAR = r"(?:1[89]|20)\d\d"
# "(Smith et al., 2031)", "(Smith and Jones 2020)", "(Smith, 2020)": a reference in parentheses, removed when it
# names no source; "Smith et al. (2031)", "Smith and Jones, 2020": the sentence's subject, kept and flagged.
_AUTHOR_YEAR = re.compile(
    rf"\(\s*(?P<p_author>{_NAME})(?:\s+et\s+al\.?|\s+(?:and|&)\s+{_NAME})?,?\s+(?P<p_year>{_YEAR})[a-z]?\s*\)"
    rf"|\b(?P<n_author>{_NAME})\s+(?:et\s+al\.?|(?:and|&)\s+{_NAME})\s*,?\s*\(?(?P<n_year>{_YEAR})[a-z]?\)?"
)
_TRAILING_MARKERS = re.compile(rf"(?:[ \t]*{MARKER.pattern})+")
TITLE_MIN_WORDS = 4  # a Title-Cased bold span this long names a paper (shorter ones are emphasis), as does "**X** —"
TITLE_OVERLAP = 0.6  # word Jaccard with a source title for a bold span to name that source (titles get shortened)


def _title_like(text: str) -> bool:
    """A bold span in running text that reads as a paper's title, not emphasis: at least `TITLE_MIN_WORDS` words,
    most of its longer words capitalised ("Quantum Concept Erasure for Diffusion Transformers", not "negative
    guidance as a teacher")."""
    words = text.split()
    long = [w for w in words if len(w) >= 4]
    return len(words) >= TITLE_MIN_WORDS and bool(long) and sum(w[0].isupper() for w in long) / len(long) >= 0.6


@dataclass(frozen=True)
class Named:
    """A source as an answer may name it: its number, title, and (when the corpus has them) authors and year;
    `text` is what the answerer read (title and abstract), where a name it uses may also come from."""

    n: int
    title: str
    text: str = ""
    authors: tuple[str, ...] = ()
    year: str | None = None


@dataclass
class NameCheck:
    """The answer with the citations of sentences naming no source removed (and their parenthetical author-year
    references), and those sentences flagged ({sentence, cited, reason, kind})."""

    text: str
    flagged: list[dict]


def check_names(text: str, sources: Iterable[Named]) -> NameCheck:
    """Find the papers an answer names by bold title or author-year reference that match none of `sources`.

    Like an invalid `[n]`, such a name cannot be verified: the citations of its sentence (of its whole line when
    it is the line's "**Title** —" prefix) are removed and the sentence is flagged; a parenthetical author-year
    reference is removed from the text."""
    sources = list(sources)
    titles = [(f" {normalise_title(s.title)} ", set(normalise_title(s.title).split())) for s in sources]
    texts = [f" {normalise_title(s.text)} " for s in sources]

    def known_title(name: str) -> bool:
        norm = normalise_title(name)
        words = set(norm.split())
        for title, title_words in titles:
            if f" {norm} " in title or (len(words) >= 3 and title.strip() in norm):
                return True  # the title, part of it ("MACE" for "MACE: Mass Concept Erasure…"), or it quoted
            if _jaccard(words, title_words) >= TITLE_OVERLAP:
                return True
        # a short name the abstract uses ("ESD", "Task Arithmetic")
        return len(words) < TITLE_MIN_WORDS and any(f" {norm} " in text for text in texts)

    def known_author(author: str, year: str) -> bool:
        name = author.casefold()
        for s in sources:
            surnames = {a.split()[-1].casefold() for a in s.authors if a.split()}
            if name in surnames and (s.year is None or s.year == year):
                return True
            if not s.authors and re.search(rf"\b{re.escape(author)}\b", s.text):
                return True  # a name from the abstract (e.g. "Kolmogorov-Arnold"), not an invented reference
        return False

    lines, flagged = [], []
    for line in text.split("\n"):
        bullet = _BULLET.match(line)
        body_at = bullet.end() if bullet else 0
        prefix = _TITLE_PREFIX.match(line[body_at:])
        problems: list[tuple[int, int, str, bool]] = []  # (start, end, name, is the line's title prefix)
        for match in _BOLD.finditer(line):
            name = match.group(1).strip()
            is_prefix = prefix is not None and match.start() == body_at + (len(line[body_at:]) - len(line[body_at:].lstrip()))
            if not re.search(r"[^\W\d_]", name) or (not is_prefix and not _title_like(name)):
                continue
            if not known_title(name):
                problems.append((match.start(), match.end(), f"**{name}**", is_prefix))
        cut: list[tuple[int, int]] = []  # parenthetical references to remove
        for match in _AUTHOR_YEAR.finditer(line):
            author = match.group("p_author") or match.group("n_author")
            year = match.group("p_year") or match.group("n_year")
            if not author[0].isupper() or known_author(author, year):
                continue
            shown = match.group(0).strip()
            problems.append((match.start(), match.end(), shown[1:-1] if shown.startswith("(") else shown, False))
            if match.group("p_author"):
                cut.append((match.start(), match.end()))
        if not problems:
            lines.append(line)
            continue
        spans = sentence_spans(line)
        ranges = []
        for start, end, name, whole_line in problems:
            if whole_line:
                lo, hi = 0, len(line)
            else:
                lo, hi = next(((s, e) for s, e in spans if s <= start < e), (start, end))
            tail = _TRAILING_MARKERS.match(line, hi)  # "claim. [1]": the marker belongs to the sentence before
            hi = tail.end() if tail else hi
            ranges.append((lo, hi))
            sentence = line[lo:hi]
            cited = cited_numbers(sentence)
            shown = " ".join(MARKER.sub("", _EMPHASIS.sub("", _BULLET.sub("", sentence))).split())
            flagged.append({"sentence": re.sub(r"\s+([.,;:!?])", r"\1", shown), "cited": cited, "kind": "unknown_paper",
                            "reason": f"names {name}, which is not among the sources"
                                      + (": its citation was removed" if cited else "")})
        out, at = [], 0
        for lo, hi in sorted(set(ranges)):
            if lo < at:
                lo = at
            out.append(line[at:lo])
            piece = line[lo:hi]
            for c_lo, c_hi in sorted(cut, reverse=True):
                if lo <= c_lo and c_hi <= hi:
                    piece = piece[: c_lo - lo] + piece[c_hi - lo:]
            out.append(MARKER.sub("", piece))
            at = max(at, hi)
        out.append(line[at:])
        fixed = re.sub(r"[ \t]+([.,;:])", r"\1", "".join(out))
        lines.append(re.sub(r"(?<=\S)[ \t]{2,}", " ", fixed).rstrip())
    return NameCheck("\n".join(lines), flagged)


# ------------------------------------------------------------------------------ claims their sources support

SUPPORT_MIN_TERMS = 3  # shorter claims ("**Title** answers this [1]") are not judged
SUPPORT_COVERAGE = 0.5  # share of a claim's content terms its cited abstracts must contain
_NUMBER = re.compile(r"(?<![\w.-])\d+(?:[.,]\d+)?(?![\w.-]*\w)")  # a figure, not "GPT-4" or "v2"


def unsupported(text: str, abstracts: Mapping[int, str]) -> list[dict]:
    """The answer's sentences that their cited sources do not support, by term overlap (no model needed): fewer
    than `SUPPORT_COVERAGE` of the sentence's content terms in the cited titles and abstracts (`abstracts`: n ->
    title and abstract), or a figure none of them contains. Flags ({sentence, cited, reason, kind}): the claim may
    be a fair paraphrase, but nothing in what it cites shows it."""
    out = []
    for claim in claims(text):
        refs = [n for n in claim.refs if n in abstracts]
        if not refs:
            continue
        support = " ".join(abstracts[n] for n in refs)
        words = _claim_words(claim.text)
        if len(words) < SUPPORT_MIN_TERMS:
            continue
        have = set(content_terms(support))
        missing = [w for w, term in words.items() if not _term_in(term, have)]
        figures = [f for f in dict.fromkeys(_NUMBER.findall(claim.text))
                   if not re.search(rf"(?<![\w.]){re.escape(f)}(?![\w]|\.\d)", support)]
        if len(missing) / len(words) <= 1 - SUPPORT_COVERAGE and not figures:
            continue
        cited = ", ".join(f"[{n}]" for n in refs)
        what = "; ".join(part for part in (
            f"the figure{'s' if len(figures) > 1 else ''} {', '.join(figures)}" if figures else "",
            f"{', '.join(missing[:6])}" if len(missing) / len(words) > 1 - SUPPORT_COVERAGE else "") if part)
        out.append({"sentence": claim.text, "cited": refs, "kind": "unsupported",
                    "reason": f"not supported by {cited}: its abstract does not mention {what}"})
    return out


def _claim_words(text: str) -> dict[str, str]:
    """A claim's content words (first spelling) -> their stemmed terms."""
    words: dict[str, str] = {}
    for word in re.findall(r"[^\W_]{2,}", text):
        terms = content_terms(word)
        if terms and terms[0] not in words.values() and not word.isdigit():
            words[word] = terms[0]
    return words


def _term_in(term: str, have: set[str]) -> bool:
    """The term, or a stem sharing its first 4+ letters either way ("eras" / "erasur")."""
    if term in have:
        return True
    return len(term) >= 4 and any(t.startswith(term) or (len(t) >= 4 and term.startswith(t)) for t in have)
