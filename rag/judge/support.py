"""Do the quoted sentences carry the question? A topic word that occurs only incidentally ("watermarks" as an
unwanted concept in a diffusion abstract, for "which papers propose watermarking for LLM-generated text?") lets
retrieval and the paper-level judgement find a paper, but no sentence of it says what the question asks.

An answer is supported when at least one quoted sentence carries the question's meaning (its cosine to the
question, the index's own sentence vectors) or its key terms (the idf-weighted share of the question's content
terms the sentence holds, stem-prefix aware, so the rare terms count most). An unsupported answer is given at
low confidence, as the closest papers. Both thresholds are fitted on the tune split by `rag eval calibrate`
(`fit_support`); without them (older parameter files) nothing is checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from rag.judge.abstention import TermStats
from rag.records import Quote
from rag.text import content_terms, matched_terms


@dataclass(frozen=True)
class Support:
    """The best quoted sentence's cosine to the question, and the best key-term coverage of a quoted sentence."""

    cosine: float
    coverage: float

    def to_dict(self) -> dict:
        return {"cosine": round(self.cosine, 4), "coverage": round(self.coverage, 4)}


def key_coverage(question_terms: set[str], text: str, stats: TermStats) -> float:
    """idf-weighted share of the question's content terms that `text` carries."""
    total = sum(stats.idf(t) for t in question_terms)
    if not total:
        return 0.0
    return sum(stats.idf(t) for t in matched_terms(question_terms, set(content_terms(text)))) / total


def quote_support(question: str, quotes: Sequence[Quote], sentences: Mapping[str, object], query_vector,
                  stats: TermStats) -> Support:
    """`sentences`: paper id -> rag.index.sentence_vectors.PaperSentences of the quoted papers; `query_vector`:
    the question's vector (same embedder). A quote cut to a clause is judged by its whole sentence."""
    terms = set(content_terms(question))
    best_cos, best_cov = 0.0, 0.0
    for quote in quotes:
        ps = sentences.get(quote.paper_id)
        text = quote.text
        if ps is not None:
            for k, span in enumerate(ps.spans):
                if span is not None and span[0] <= quote.start < span[1]:
                    text = ps.texts[k]
                    if query_vector is not None:
                        best_cos = max(best_cos, float(ps.vectors[k] @ query_vector))
                    break
        best_cov = max(best_cov, key_coverage(terms, text, stats))
    return Support(best_cos, best_cov)


@dataclass(frozen=True)
class SupportCheck:
    """Supported when the best quoted sentence reaches `min_cosine` or `min_coverage`."""

    min_cosine: float
    min_coverage: float

    @classmethod
    def from_fitted(cls, fitted: Mapping) -> SupportCheck | None:
        got = fitted.get("support")
        if not got:
            return None
        return cls(float(got["min_cosine"]), float(got["min_coverage"]))

    def supported(self, support: Support) -> bool:
        return support.cosine >= self.min_cosine or support.coverage >= self.min_coverage

    def reason(self, support: Support) -> str:
        return (f"no quoted sentence carries the question's key terms or meaning (best cosine {support.cosine:.2f}, "
                f"key-term coverage {support.coverage:.2f})")


def fit_thresholds(rows: Sequence[Mapping], max_demoted: float) -> tuple[dict, dict]:
    """The thresholds that turn the most unanswerable questions answered with confidence into low-confidence
    answers while demoting at most `max_demoted` of the answerable ones answered with confidence. `rows`:
    {"answerable": bool, "cosine": float, "coverage": float} for the questions answered at level "answer"."""
    answerable = [r for r in rows if r["answerable"]]
    allowed = int(max_demoted * len(answerable))
    best = None
    cosines, coverages = _cuts(r["cosine"] for r in rows), _cuts(r["coverage"] for r in rows)
    for c in cosines:
        for v in coverages:
            check = SupportCheck(c, v)
            demoted = sum(not check.supported(Support(r["cosine"], r["coverage"])) for r in answerable)
            caught = sum(not check.supported(Support(r["cosine"], r["coverage"])) for r in rows if not r["answerable"])
            if demoted > allowed:
                continue
            key = (caught, -demoted, -c, -v)
            if best is None or key > best[0]:
                best = (key, {"min_cosine": c, "min_coverage": v},
                        {"caught": caught, "unanswerable": len(rows) - len(answerable), "demoted": demoted,
                         "answerable": len(answerable)})
    if best is None:
        return {"min_cosine": 0.0, "min_coverage": 0.0}, {"caught": 0, "demoted": 0}
    return best[1], best[2]


def _cuts(values) -> list[float]:
    """0 (check nothing) and the midpoints between consecutive distinct values: a cut never sits on a case."""
    v = sorted({round(x, 4) for x in values})
    return [0.0] + [round((a + b) / 2, 4) for a, b in pairwise(v)]
