"""Should the answerer answer? Features of a question against what retrieval found, and a calibrated
probability that the indexed papers answer it, turned into three levels: answer, low confidence
(answer, saying these papers may not answer it), abstain.

The same `features()` feed the answerer and the calibration (`rag eval calibrate`), so the model that
is fitted is the model that runs. Features are computed from the question as asked (not from a
feedback-expanded query).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from rag.judge.params import JudgementParams, params_for
from rag.text import content_terms, is_keyword_query, matched_terms

ANSWER, LOW, ABSTAIN = "answer", "low", "abstain"
LEVELS = (ANSWER, LOW, ABSTAIN)
TOP_PAPERS = 3  # the papers whose text the features look at


class TermStats(Protocol):
    """What the features need from the index (rag.index.reader.Index)."""

    def idf(self, term: str) -> float: ...

    def df(self, term: str) -> int: ...

    def paper_terms(self, paper_id: str) -> set[str]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Features:
    """sim: best dense cosine of any chunk to the question; cov: idf-weighted share of the question's terms
    in the best of the top papers; oov: idf share of question terms the corpus never uses; sent_sim: best
    cosine of a single sentence (or title) of the top papers; miss_idf: the rarest question term missing
    from the best-covering top paper, as a share of the largest possible idf; kw_miss: miss_idf again for a
    search-box query ("legal judgment prediction indian courts", where every word is a constraint) and 0 for
    a sentence, whose wording need not occur in the paper; terms: content terms."""

    sim: float
    cov: float
    oov: float
    sent_sim: float
    miss_idf: float
    terms: int
    kw_miss: float = 0.0

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def coverage(terms: set[str], stats: TermStats, paper_ids: Sequence[str]) -> float:
    """Share of the idf-weighted `terms` found (stem-prefix aware) in the best of these papers."""
    if not terms:
        return 0.0
    total = sum(stats.idf(t) for t in terms)
    return max((sum(stats.idf(t) for t in matched_terms(terms, stats.paper_terms(pid))) / total
                for pid in paper_ids), default=0.0)


def oov_share(terms: set[str], stats: TermStats) -> float:
    """idf share of the terms the corpus never uses (an unseen term gets the largest idf)."""
    if not terms:
        return 0.0
    weights = {t: stats.idf(t) for t in terms}
    total = sum(weights.values())
    return sum(w for t, w in weights.items() if stats.df(t) == 0) / total if total else 0.0


def missing_idf(terms: set[str], stats: TermStats, paper_ids: Sequence[str]) -> float:
    """For the top paper missing the least: the idf of its rarest missing question term, over the max idf."""
    if not terms or not paper_ids:
        return 0.0
    top_idf = math.log(1 + len(stats) / 0.5)
    return min(max((stats.idf(t) for t in terms - matched_terms(terms, stats.paper_terms(pid))), default=0.0)
               for pid in paper_ids) / top_idf


def features(question: str, similarity: float | None, paper_ids: Sequence[str], stats: TermStats,
             sentence_sims: Sequence[float]) -> Features:
    """`paper_ids`: the retrieved papers, best first; `sentence_sims`: each top paper's best sentence cosine."""
    terms = set(content_terms(question))
    top = list(paper_ids)[:TOP_PAPERS]
    miss = missing_idf(terms, stats, top)
    return Features(
        sim=float(similarity) if similarity is not None and math.isfinite(similarity) else 0.0,
        cov=coverage(terms, stats, top),
        oov=oov_share(terms, stats),
        sent_sim=max(sentence_sims[:TOP_PAPERS], default=0.0),
        miss_idf=miss,
        terms=len(terms),
        kw_miss=miss if is_keyword_query(question) else 0.0,
    )


@dataclass(frozen=True)
class AbstentionVerdict:
    """The decision: `level` answer / low / abstain, and the model's P(answerable)."""

    level: str
    confidence: float
    features: Features

    @property
    def abstain(self) -> bool:
        return self.level == ABSTAIN

    def to_dict(self) -> dict:
        return {"level": self.level, "confidence": round(self.confidence, 4), "features": self.features.to_dict()}


class Abstention:
    """The calibrated decision (rag/data/judgement.json). A question with no content words ("🔥🔥🔥",
    "which papers?") is never answered: there is nothing to ground an answer in."""

    def __init__(self, params: JudgementParams, abstain_below: float | None = None, low_below: float | None = None):
        self.model = params.abstention
        self.abstain_below = params.abstain_below if abstain_below is None else abstain_below
        self.low_below = max(self.abstain_below, params.low_below if low_below is None else low_below)

    @classmethod
    def from_settings(cls, settings, params: JudgementParams | None = None) -> "Abstention":
        """With `params`, or else RAG_JUDGEMENT_PARAMS / the shipped ones; thresholds overridden by settings."""
        params = params or params_for(settings)
        return cls(params, settings.abstain_threshold, settings.low_confidence_threshold)

    def judge(self, f: Features) -> AbstentionVerdict:
        if f.terms == 0:
            return AbstentionVerdict(ABSTAIN, 0.0, f)
        p = self.model.probability(asdict(f))
        level = ABSTAIN if p < self.abstain_below else LOW if p < self.low_below else ANSWER
        return AbstentionVerdict(level, p, f)
