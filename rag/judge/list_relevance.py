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

LIST_POOL = 15  # candidates a list question is judged over at least (a specific question looks at top-k only)


def list_pool(k: int) -> int:
    """Candidates a list question with `k` papers per tier is judged over: a larger k lengthens both tiers."""
    return max(LIST_POOL, 2 * k)


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
    """P(relevant) per candidate; `threshold` admits a paper to a list's first tier ("Papers that …"),
    `floor` (lower, fitted on tune for the recall of both tiers) to "Also possibly relevant"."""

    def __init__(self, params: JudgementParams):
        self.model = params.relevance
        self.threshold = params.relevant_at
        floor = params.fitted.get("list_floor")
        self.floor = float(floor) if floor is not None else None

    def tiers(self, hits: Sequence[Hit], probs: Sequence[float], k: int) -> tuple[list[Hit], list[Hit], int]:
        """(first tier, second tier, how many more passed than the first tier shows), each tier at most k,
        in rank order. The first tier always holds the best candidate."""
        passed = [h for h, p in zip(hits, probs) if p >= self.threshold] or list(hits[:1])
        first = passed[:k]
        shown = {h.paper_id for h in first}
        second = []
        if self.floor is not None:
            second = [h for h, p in zip(hits, probs) if h.paper_id not in shown and p >= self.floor][:k]
        return first, second, max(0, len(passed) - k)

    def probabilities(self, rows: Sequence[dict]) -> list[float]:
        return [self.model.probability(r) for r in rows]
