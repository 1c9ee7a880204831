"""Should the answerer answer? Features of a question against what retrieval found, and the decision.

The same `features()` feed the answerer and the calibration script (`rag eval calibrate`), so the
rule that is fitted is the rule that runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from rag.text import content_terms, matched_terms

ANSWER, LOW, ABSTAIN = "answer", "low", "abstain"
LEVELS = (ANSWER, LOW, ABSTAIN)


class TermStats(Protocol):
    """What the features need from the index: term statistics and paper text."""

    def idf(self, term: str) -> float: ...

    def df(self, term: str) -> int: ...

    def paper_terms(self, paper_id: str) -> set[str]: ...


@dataclass(frozen=True)
class Features:
    """similarity: best dense cosine of any chunk; coverage: idf-weighted share of the question's terms
    found in the best of the top papers; oov_share: idf share of question terms that occur nowhere in
    the corpus; terms: how many content terms the question has."""

    similarity: float
    coverage: float
    oov_share: float
    terms: int

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def coverage(terms: set[str], stats: TermStats, paper_ids: Sequence[str]) -> float:
    """Share of the idf-weighted `terms` found (stem-prefix aware) in the best of these papers."""
    if not terms:
        return 0.0
    total = sum(stats.idf(t) for t in terms)
    best = 0.0
    for pid in paper_ids:
        present = matched_terms(terms, stats.paper_terms(pid))
        best = max(best, sum(stats.idf(t) for t in present) / total)
    return best


def oov_share(terms: set[str], stats: TermStats) -> float:
    """idf share of the terms the corpus never uses (an unseen term gets the largest idf)."""
    if not terms:
        return 0.0
    weights = {t: stats.idf(t) for t in terms}
    total = sum(weights.values())
    return sum(w for t, w in weights.items() if stats.df(t) == 0) / total if total else 0.0


def features(question: str, similarity: float | None, paper_ids: Sequence[str], stats: TermStats, top: int = 3) -> Features:
    terms = set(content_terms(question))
    return Features(
        similarity=float(similarity) if similarity is not None and math.isfinite(similarity) else 0.0,
        coverage=coverage(terms, stats, list(paper_ids)[:top]),
        oov_share=oov_share(terms, stats),
        terms=len(terms),
    )


@dataclass(frozen=True)
class Judgement:
    """The decision: `level` answer / low / abstain, with the model's P(answerable) when it has one."""

    level: str
    confidence: float | None
    features: Features

    @property
    def abstain(self) -> bool:
        return self.level == ABSTAIN

    def to_dict(self) -> dict:
        return {"level": self.level, "confidence": None if self.confidence is None else round(self.confidence, 4),
                "features": self.features.to_dict()}


class ThresholdRule:
    """Abstain when similarity < floor, or < sim while coverage < cov (hand-set on the dev set)."""

    def __init__(self, floor: float, sim: float, cov: float):
        self.floor, self.sim, self.cov = floor, sim, cov

    @classmethod
    def from_settings(cls, settings) -> "ThresholdRule":
        return cls(settings.abstain_threshold, settings.abstain_sim, settings.abstain_coverage)

    def judge(self, f: Features) -> Judgement:
        if f.terms == 0:
            return Judgement(ABSTAIN, None, f)
        abstain = f.similarity < self.floor or (f.similarity < self.sim and f.coverage < self.cov)
        return Judgement(ABSTAIN if abstain else ANSWER, None, f)
