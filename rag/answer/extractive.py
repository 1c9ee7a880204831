"""The offline answerer: sentences quoted verbatim from the source abstracts, each cited.

Sentences are chosen by meaning and by words: the cosine of the sentence to the question (the index's
own model, rag.index.sentence_vectors) plus an idf-weighted overlap of stemmed terms, with a preference for sentences
that state results when the question asks for results, and for sentences that say what a paper does
otherwise. Over-long sentences are cut to their best clause (still verbatim, marked with "…"). The
weights are fitted on the tune split (rag/data/judgement.json, `extractive`).

It returns its quotes as records (source number, paper, character span in the abstract), so the UI
highlights and the eval checks exactly what was quoted instead of searching for it again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.records import Quote, Source
from rag.text import content_terms

MAX_QUOTE_WORDS = 45  # longer sentences are cut to their best clause

_ASKS_RESULT = re.compile(
    r"\b(how (many|much|well|large|long|fast|often)|results?|accuracy|score|perform\w*|improv\w*|outperform\w*|"
    r"achiev\w*|reach\w*|gain|better|best|faster|speed-?up|f1|bleu|wer|rate|percent\w*|number of|size|hours)\b", re.I)
_STATES_RESULT = re.compile(
    r"\d|\b(outperform\w*|improv\w*|achiev\w*|surpass\w*|state-of-the-art|sota|better|gains?|reduc\w*|"
    r"increas\w*|speed-?ups?|faster|accuracy|results? show)\b", re.I)
_STATES_METHOD = re.compile(
    r"\b(we (propose|introduce|present|develop|design|show|find|study)|this (paper|work)|our (method|approach|model|"
    r"framework)|(is|are) (proposed|introduced))\b", re.I)
# A name or a figure: a word with two capitals ("AdvUnlearn", "TEEN", "aTLAS"), letters with digits ("wav2vec",
# "GPT-3", "Llama-2") or a number of two digits or more ("57.6%", "680,000").
_NAME = re.compile(r"\b(?:\w*[A-Z]\w*[A-Z]\w*|[A-Za-z]+\d\w*|\d\w*[A-Za-z]\w*|[A-Za-z]+-\d\w*|\d[\d.,]*\d%?)(?:-\w+)*")
# The author speaking about their own work: the first sentence that does so opens the contribution; the
# sentences before it are background and motivation ("The rapid expansion of … has raised concerns").
_OWN_WORK = re.compile(r"\b(we|our|us|this (paper|work|study|article|letter)|the proposed|here,? we)\b", re.I)
# A sentence about others' work ("Existing concept erasure methods are restricted to …") is background too,
# unless the authors speak in it ("In contrast, we …").
_OTHERS_WORK = re.compile(r"\b(existing|previous|prior|current|conventional|traditional|recent|most|many)\s+(\S+\s+){0,3}?"
                          r"(methods?|approaches|works?|techniques|studies|models|systems|solutions|efforts)\b", re.I)
_CLAUSE = re.compile(r"(?<=[;,:])\s+|\s+(?=(?:which|while|whereas|where|and|but|thereby|by)\s)")


@dataclass(frozen=True)
class Weights:
    """How a sentence's score is made (fitted on tune: rag eval calibrate)."""

    semantic: float = 2.0  # times the cosine to the question
    lexical: float = 1.0  # times the idf-weighted term overlap, normalised by the question's total idf
    result: float = 0.3  # bonus when the question asks for results and the sentence states one
    method: float = 0.2  # bonus for "we propose…" sentences when the question does not ask for results
    position: float = 0.2  # bonus / (1 + position) for early sentences
    rank: float = 0.5  # bonus / source number: sentences of better-ranked papers first
    quotes: int = 3  # sentences quoted for a specific (non-list) question
    entity: float = 0.0  # list bullets: bonus for a sentence naming what the question does not (a method, a figure)


@dataclass(frozen=True)
class Scored:
    """A candidate quote: `source.abstract[start:end]`, part of the sentence [sentence_start, sentence_end)."""

    score: float
    source: Source
    start: int
    end: int
    sentence_start: int = -1
    sentence_end: int = -1
    background: bool = False  # before the abstract's first sentence about the authors' own work

    def __post_init__(self):
        if self.sentence_start < 0:
            object.__setattr__(self, "sentence_start", self.start)
        if self.sentence_end < 0:
            object.__setattr__(self, "sentence_end", self.end)

    @property
    def text(self) -> str:
        return self.source.abstract[self.start : self.end]


@dataclass
class Extract:
    """Markdown bullets, the quotes behind them, and the source numbers cited (in citation order)."""

    text: str
    quotes: list[Quote]
    cited: list[int]


class Extractor:
    """Picks the abstract sentences that best answer a question."""

    def __init__(self, weights: Weights | None = None):
        self.weights = weights or Weights()

    def rank(self, question: str, sources: Sequence[Source], sentences=None, query_vector=None) -> list[Scored]:
        """Every sentence of every source, best first.

        `sentences`: rag.index.sentence_vectors.PaperSentences per source (same order) and `query_vector`: the question's
        vector, for the semantic part; without them the score is lexical only.
        """
        w = self.weights
        q_terms = set(content_terms(question))
        wants_result = asks_for_result(question)
        rows = []
        for i, src in enumerate(sources):
            ps = sentences[i] if sentences is not None else None
            if ps is None:
                from rag.text import sentence_spans

                spans, cos = sentence_spans(src.abstract), None
            else:
                spans = [s for s in ps.spans if s is not None]
                cos = (ps.vectors[1:] @ query_vector) if query_vector is not None else None
            opens = next((k for k, (a, b) in enumerate(spans) if _OWN_WORK.search(src.abstract[a:b])), 0)
            for pos, (start, end) in enumerate(spans):
                rows.append((src, pos, start, end, set(content_terms(src.abstract[start:end])),
                             float(cos[pos]) if cos is not None else 0.0, pos < opens or _about_others(src.abstract[start:end])))
        if not rows:
            return []
        df: dict[str, int] = {}
        for *_, terms, _cos, _bg in rows:
            for t in terms:
                df[t] = df.get(t, 0) + 1
        n = len(rows)
        idf = {t: math.log(1 + n / df.get(t, 1)) for t in q_terms}
        total = sum(idf.values()) or 1.0
        scored = []
        for src, pos, start, end, terms, cos, background in rows:
            text = src.abstract[start:end]
            score = w.semantic * cos + w.lexical * sum(idf[t] for t in q_terms & terms) / total
            if wants_result and _STATES_RESULT.search(text):
                score += w.result
            elif not wants_result and _STATES_METHOD.search(text):
                score += w.method
            score += w.position / (1 + pos) + w.rank / src.n
            scored.append(Scored(score, src, start, end, background=background))
        scored.sort(key=lambda r: r.score, reverse=True)
        return scored

    def answer(self, question: str, sources: Sequence[Source], list_question: bool, sentences=None,
               query_vector=None) -> Extract | None:
        """Bullets of quoted sentences; None when no source has a sentence to quote.

        A list answer has one bullet per source (every source given is listed, in order), quoting what the
        paper does: its best sentence from the contribution on, background only when nothing else is left;
        a specific answer quotes the best `weights.quotes` sentences, grouped by paper.
        """
        ranked = self.rank(question, sources, sentences, query_vector)
        if not ranked:
            return None
        q_terms = set(content_terms(question))
        if list_question:
            # One bullet per paper, the papers already chosen: the bonus for naming the paper's method or
            # result changes which sentence is quoted, never which paper is cited.
            q_words = {w.strip(".,;:!?()[]\"'") for w in question.casefold().split()}
            best: dict[int, Scored] = {}
            for row in sorted(ranked, key=lambda r: (r.background, -(r.score + self.weights.entity * _names(r.text, q_words)))):
                best.setdefault(row.source.n, row)
            rows = [_shorten(best[s.n], q_terms) for s in sources if s.n in best]
            lines = [f"- **{r.source.title}** — {_quoted(r)} [{r.source.n}]" for r in rows]
            return Extract("\n".join(lines), [_quote(r) for r in rows], [r.source.n for r in rows])
        picked = [_shorten(r, q_terms) for r in ranked[: self.weights.quotes]]
        order: list[int] = []
        for r in picked:
            if r.source.n not in order:
                order.append(r.source.n)
        lines, quotes = [], []
        for n in order:
            mine = sorted((r for r in picked if r.source.n == n), key=lambda r: r.start)
            src = mine[0].source
            lines.append(f"- **{src.title}** — " + " ".join(f"{_quoted(r)} [{n}]" for r in mine))
            quotes.extend(_quote(r) for r in mine)
        return Extract("\n".join(lines), quotes, sorted(order))


def _names(text: str, known: set[str]) -> float:
    """How much `text` names (methods, models, figures) beyond the words in `known`: 0, 1/3, 2/3 or 1."""
    return min(len({m.group(0).casefold() for m in _NAME.finditer(text)} - known), 3) / 3


def _about_others(sentence: str) -> bool:
    return bool(_OTHERS_WORK.search(sentence)) and not _OWN_WORK.search(sentence)


def asks_for_result(question: str) -> bool:
    """The question asks for a number, a score or an outcome ("how many…", "accuracy", "improves…")."""
    return bool(_ASKS_RESULT.search(question))


def _shorten(row: Scored, q_terms: set[str]) -> Scored:
    """An over-long sentence cut to its best clause (most question terms; earliest on ties), grown with
    neighbouring clauses while it stays under MAX_QUOTE_WORDS words; always a verbatim span."""
    text = row.text
    if len(text.split()) <= MAX_QUOTE_WORDS:
        return row
    pieces, pos = [], 0
    for m in _CLAUSE.finditer(text):
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, len(text)))
    scores = [len(q_terms & set(content_terms(text[s:e]))) for s, e in pieces]
    lo = hi = max(range(len(pieces)), key=lambda k: (scores[k], -k))
    grew = True
    while grew:
        grew = False
        for j in (hi + 1, lo - 1):
            if 0 <= j < len(pieces) and len(text[pieces[min(lo, j)][0] : pieces[max(hi, j)][1]].split()) <= MAX_QUOTE_WORDS:
                lo, hi, grew = min(lo, j), max(hi, j), True
                break
    start, end = pieces[lo][0], pieces[hi][1]
    words = list(re.finditer(r"\S+", text[start:end]))
    if len(words) > MAX_QUOTE_WORDS:  # a single clause that is itself too long: its first words
        end = start + words[MAX_QUOTE_WORDS - 1].end()
    while end > start and text[end - 1] in " ,;:":
        end -= 1
    return Scored(row.score, row.source, row.start + start, row.start + end, row.sentence_start, row.sentence_end,
                  row.background)


def _quoted(row: Scored) -> str:
    """The quote as shown: verbatim, with "…" where the sentence was cut."""
    return ("… " if row.start > row.sentence_start else "") + row.text + (" …" if row.end < row.sentence_end else "")


def _quote(row: Scored) -> Quote:
    return Quote(n=row.source.n, paper_id=row.source.paper_id, start=row.start, end=row.end, text=row.text)
