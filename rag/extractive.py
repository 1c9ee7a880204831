"""The offline answerer: sentences quoted verbatim from the source abstracts, each cited.

It returns its quotes as records (source number, paper, character span in the abstract), so the UI
highlights and the eval checks exactly what was quoted instead of searching for it again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rag.records import Quote, Source
from rag.text import content_terms, sentence_spans

SPECIFIC_QUOTES = 3  # sentences quoted for a specific (non-list) question


@dataclass(frozen=True)
class Scored:
    score: float
    source: Source
    start: int
    end: int

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
    """Picks the abstract sentences most relevant to a question (lexical, stemmed, idf-weighted)."""

    def rank(self, question: str, sources: Sequence[Source]) -> list[Scored]:
        q_terms = set(content_terms(question))
        rows = []
        for src in sources:
            for pos, (start, end) in enumerate(sentence_spans(src.abstract)):
                rows.append((src, pos, start, end, set(content_terms(src.abstract[start:end]))))
        if not rows:
            return []
        df: dict[str, int] = {}
        for *_, terms in rows:
            for t in terms:
                df[t] = df.get(t, 0) + 1
        n = len(rows)
        scored = []
        for src, pos, start, end, terms in rows:
            lexical = sum(math.log(1 + n / df[t]) for t in q_terms & terms)
            in_snippet = 0.5 if src.abstract[start : start + 60] in src.snippet else 0.0
            position = 0.3 / (1 + pos)  # opening sentences tend to state the topic
            scored.append(Scored(lexical + in_snippet + position, src, start, end))
        scored.sort(key=lambda r: r.score, reverse=True)
        return scored

    def answer(self, question: str, sources: Sequence[Source], list_question: bool,
               keep: set[int] | None = None) -> Extract | None:
        """Bullets of quoted sentences; None when no source has a sentence to quote."""
        ranked = self.rank(question, sources)
        if not ranked:
            return None
        if list_question:
            best: dict[int, Scored] = {}
            for row in ranked:
                best.setdefault(row.source.n, row)
            if keep is not None:  # papers judged relevant enough to list; always the top one
                best = {n: row for n, row in best.items() if n in keep or n == min(best)}
            rows = sorted(best.values(), key=lambda r: r.source.n)
            lines = [f"- **{r.source.title}** — {r.text} [{r.source.n}]" for r in rows]
            return Extract("\n".join(lines), [_quote(r) for r in rows], [r.source.n for r in rows])
        picked = ranked[:SPECIFIC_QUOTES]
        order: list[int] = []
        for r in picked:
            if r.source.n not in order:
                order.append(r.source.n)
        lines, quotes = [], []
        for n in order:
            mine = [r for r in picked if r.source.n == n]
            src = mine[0].source
            lines.append(f"- **{src.title}** — " + " ".join(f"{r.text} [{n}]" for r in mine))
            quotes.extend(_quote(r) for r in mine)
        return Extract("\n".join(lines), quotes, sorted(order))


def _quote(row: Scored) -> Quote:
    return Quote(n=row.source.n, paper_id=row.source.paper_id, start=row.start, end=row.end, text=row.text)
