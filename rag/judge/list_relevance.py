"""Which retrieved papers belong in a list answer ("which papers …")?

Each candidate gets P(relevant) from a logistic model over features relative to the best candidate of
the same question (fitted on the tune split's list questions by `rag eval calibrate`): its rank, and how
far its dense similarity, term coverage and best-sentence similarity fall below the best candidate's.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.judge.abstention import TermStats
from rag.judge.params import JudgementParams
from rag.records import Hit
from rag.text import content_terms, matched_terms

LIST_POOL = 15  # candidates a list question is judged over (a specific question looks at top-k only)


def paper_features(question: str, hits: Sequence[Hit], stats: TermStats, sentence_sims: Sequence[float]) -> list[dict]:
    """One feature dict per hit (same order): inv_rank, dsim, rcov, dss (and the raw sim, cov, sent_sim)."""
    terms = set(content_terms(question))
    total = sum(stats.idf(t) for t in terms) or 1.0
    rows = []
    for hit, sent in zip(hits, sentence_sims):
        cov = sum(stats.idf(t) for t in matched_terms(terms, stats.paper_terms(hit.paper_id))) / total if terms else 0.0
        rows.append({"inv_rank": 1.0 / hit.rank, "sim": hit.similarity or 0.0, "cov": cov, "sent_sim": sent})
    if not rows:
        return rows
    top_sim = max(r["sim"] for r in rows)
    top_cov = max(r["cov"] for r in rows) or 1.0
    top_sent = max(r["sent_sim"] for r in rows)
    for r in rows:
        r.update(dsim=r["sim"] - top_sim, rcov=r["cov"] / top_cov, dss=r["sent_sim"] - top_sent)
    return rows


class ListRelevance:
    def __init__(self, params: JudgementParams):
        self.model = params.relevance
        self.threshold = params.relevant_at

    def probabilities(self, rows: Sequence[dict]) -> list[float]:
        return [self.model.probability(r) for r in rows]
