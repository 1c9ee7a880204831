"""Evaluation metrics: paper-level retrieval (ir_measures), grounding of answers, abstention, aggregation.

Metric keys are stable (dashboards and `--fail-under` gates use them); see `METRICS`.
A per-question value of `None` means "not applicable" (e.g. retrieval metrics for an unanswerable
question, grounding metrics for an abstained answer) and is left out of every mean.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from rag.answer.citations import cited_numbers, claims, is_framing, strip_markup  # noqa: F401 (re-exported for the runner)
from rag.corpus.parse import clean_text, normalise_title, paper_id_for
from rag.eval.timing import percentile  # noqa: F401 (the report's latency figures)
from rag.text import content_terms, normalise_for_match, split_sentences

RETRIEVAL_METRICS = ("recall@5", "recall@10", "ndcg@10", "mrr")
GROUNDING_METRICS = (
    "citation_validity",
    "citation_precision",
    "citation_recall",
    "key_fact_recall",
    "unsupported_sentence_rate",
    "tiers_recall",  # a list answer's first tier and "also possibly relevant" together, against the gold papers
)
ABSTENTION_METRICS = ("abstention_accuracy", "false_abstention_rate")
# Against a reference answer in words (a dataset line's `reference`), offline.
REFERENCE_METRICS = ("reference_f1", "reference_fact_recall")
LATENCY_METRICS = ("latency_ms_p50", "latency_ms_p95")
TOKEN_METRICS = ("prompt_tokens_mean", "answer_tokens_mean")
METRICS = RETRIEVAL_METRICS + GROUNDING_METRICS + ABSTENTION_METRICS + LATENCY_METRICS + TOKEN_METRICS + REFERENCE_METRICS
ANSWER_METRICS = GROUNDING_METRICS + ABSTENTION_METRICS + TOKEN_METRICS + REFERENCE_METRICS
# For these, smaller is better (compare and gates need to know which way is "worse").
LOWER_IS_BETTER = {"unsupported_sentence_rate", "false_abstention_rate", "latency_ms_p50", "latency_ms_p95",
                   "prompt_tokens_mean", "answer_tokens_mean"}

LEXICAL_SUPPORT = 0.6
EMBEDDING_SUPPORT = 0.75


# ---------------------------------------------------------------- retrieval


def _ir_measures():
    import ir_measures
    from ir_measures import RR, R, nDCG

    return ir_measures, {"recall@5": R @ 5, "recall@10": R @ 10, "ndcg@10": nDCG @ 10, "mrr": RR}


def doc_key(title: str) -> str:
    """Paper identity for relevance: the normalised title (hashed, as the index's paper ids are)."""
    return paper_id_for(title)


def retrieval_metrics(runs: dict[str, Sequence[str]], gold: dict[str, Iterable[str]]) -> dict[str, dict[str, float]]:
    """Per-query R@5, R@10, nDCG@10 and RR, binary relevance by normalised title.

    `runs`: query id -> retrieved titles, best first (one per paper). `gold`: query id -> relevant titles.
    Only queries with at least one gold title are scored; a query with no hits scores 0.
    """
    ir_measures, measures = _ir_measures()
    qrels = {}
    for qid, titles in gold.items():
        keys = {doc_key(t) for t in titles}
        if keys:
            qrels[qid] = {k: 1 for k in keys}
    run = {}
    for qid, titles in runs.items():
        if qid not in qrels:
            continue
        ranked: dict[str, float] = {}
        for title in titles:
            ranked.setdefault(doc_key(title), 0.0)
        # Strictly decreasing scores so trec_eval's tie-breaking can never reorder the list.
        n = len(ranked)
        run[qid] = {k: float(n - i) for i, k in enumerate(ranked)}
    out = {qid: {name: 0.0 for name in measures} for qid in qrels}
    by_measure = {m: name for name, m in measures.items()}
    nonempty = {qid: docs for qid, docs in run.items() if docs}
    if nonempty:
        for m in ir_measures.iter_calc(list(measures.values()), {q: qrels[q] for q in nonempty}, nonempty):
            out[m.query_id][by_measure[m.measure]] = float(m.value)
    return out


# ---------------------------------------------------------------- text helpers


def normalise_text(text: str) -> str:
    """For key-fact matching: LaTeX residue removed, then rag.text.normalise_for_match."""
    return normalise_for_match(clean_text(unicodedata.normalize("NFKC", text)))


def content_tokens(text: str) -> set[str]:
    """Stemmed content words (rag.text.content_terms), as a set."""
    return set(content_terms(text))


def answer_sentences(answer: str) -> list[tuple[str, list[int]]]:
    """Answer text -> [(clean sentence, source numbers it cites)] (rag.answer.citations.claims), without the
    answerer's framing lines (labels, "No indexed paper mentions …": rag.answer.citations.is_framing)."""
    return [(c.text, list(c.refs)) for c in claims(answer) if not is_framing(c.text, c.refs)]


# ---------------------------------------------------------------- grounding


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def citation_metrics(cited_titles: Sequence[str], source_titles: Sequence[str], gold_titles: Sequence[str] | None,
                     invalid_markers: int = 0, acceptable_titles: Sequence[str] = ()) -> dict[str, float | None]:
    """citation_validity: share of citations that point at a source the answerer was given
    (markers with no such source count as invalid citations); precision / recall of the cited
    papers against the gold papers (`gold_titles=None`: not applicable, e.g. unanswerable).
    Citing an acceptable extra (a near miss recorded in the dataset) counts neither way.
    No citations at all: validity and precision are None, recall is 0."""
    cited = list(dict.fromkeys(normalise_title(t) for t in cited_titles))
    sources = {normalise_title(t) for t in source_titles}
    valid = sum(1 for t in cited if t in sources)
    out: dict[str, float | None] = {"citation_validity": _share(valid, len(cited) + invalid_markers)}
    if gold_titles is None:
        out["citation_precision"] = out["citation_recall"] = None
        return out
    gold = {normalise_title(t) for t in gold_titles}
    neutral = {normalise_title(t) for t in acceptable_titles} - gold
    judged = [t for t in cited if t not in neutral]
    correct = sum(1 for t in judged if t in gold)
    out["citation_precision"] = _share(correct, len(judged))
    out["citation_recall"] = _share(correct, len(gold))
    return out


def key_fact_recall(answer: str, key_facts: Sequence[str]) -> float | None:
    """Share of key facts found in the answer: case-insensitive, whole normalised tokens
    (so "RECE" does not match inside "Receler", and "5.3%" matches "5.3 %")."""
    if not key_facts:
        return None
    padded = f" {normalise_text(answer)} "
    found = 0
    for fact in key_facts:
        norm = normalise_text(fact)
        if (norm and f" {norm} " in padded) or (not norm and fact.strip().casefold() in answer.casefold()):
            found += 1
    return found / len(key_facts)


# A reference's facts: numbers (with a unit or %), and names (a capital or a digit after the first letter:
# "ESD", "GPT-4", "LoRA", "344K"); the words around them vary between phrasings, these do not.
_FACT = re.compile(r"\d[\d.,]*\s?(?:%|[KMB]\b)?|\b[A-Za-z][\w-]*(?:[A-Z0-9])[\w-]*")


def answer_text(answer: str) -> str:
    """The answer's claims as plain text (markup, citation markers and framing lines left out)."""
    return " ".join(text for text, _ in answer_sentences(answer))


def reference_f1(answer: str, reference: str) -> float | None:
    """Token F1 (SQuAD-style, over stemmed content terms with repeats) between answer and reference."""
    ref = Counter(content_terms(reference))
    if not ref:
        return None
    got = Counter(content_terms(answer_text(answer)))
    common = sum((ref & got).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def reference_facts(reference: str) -> list[str]:
    """The key facts of a reference answer: its numbers and names (see _FACT), in order, once each."""
    found = (m.group(0).strip().rstrip(".,") for m in _FACT.finditer(reference))
    return list(dict.fromkeys(f for f in found if f and (not f.isdigit() or len(f) > 1)))  # not a lone digit


def lexical_support(sentence: str, evidence: str) -> float:
    """Share of the sentence's stemmed content words that occur in the evidence."""
    words = content_tokens(sentence)
    if not words:
        return 1.0
    return len(words & content_tokens(evidence)) / len(words)


class SupportChecker:
    """Decides whether an answer sentence is supported by a source abstract.

    Supported = lexical support >= 0.6, or (with an embedder) cosine >= 0.75 between the sentence
    and the closest sentence of the abstract (title included). Embeddings are cached per text.
    """

    def __init__(self, embedder=None, lexical: float = LEXICAL_SUPPORT, cosine: float = EMBEDDING_SUPPORT):
        self.embedder = embedder
        self.lexical = lexical
        self.cosine = cosine
        self._vecs: dict[str, np.ndarray] = {}
        self._tokens: dict[str, set[str]] = {}

    def _content(self, text: str) -> set[str]:
        if text not in self._tokens:
            self._tokens[text] = content_tokens(text)
        return self._tokens[text]

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._vecs]
        if todo:
            for t, v in zip(todo, self.embedder.embed(todo)):
                self._vecs[t] = np.asarray(v, dtype=np.float32)
        return [self._vecs[t] for t in texts]

    def supported(self, sentence: str, abstracts: Sequence[str]) -> bool:
        words = self._content(sentence)
        if not abstracts:
            return False
        if not words:
            return True
        for abstract in abstracts:
            if len(words & self._content(abstract)) / len(words) >= self.lexical:
                return True
        if self.embedder is None:
            return False
        pieces = [p for a in abstracts for p in split_sentences(a) if p.strip()]
        if not pieces:
            return False
        qv, *vs = self._embed([sentence, *pieces])
        best = max(float(np.dot(qv, v)) for v in vs)
        return best >= self.cosine


def unsupported_sentence_rate(answer: str, sources: dict[int, str], cited: Sequence[int],
                              checker: SupportChecker) -> float | None:
    """Share of answer sentences not supported by any cited source's abstract.

    `sources`: source number -> evidence text (title + abstract). A sentence is checked against the
    sources its own [n] markers (or its line's) cite, else against every source the answer cites.
    """
    sentences = answer_sentences(answer)
    if not sentences:
        return None
    unsupported = 0
    for sentence, refs in sentences:
        use = [n for n in (refs or cited) if n in sources]
        if not checker.supported(sentence, [sources[n] for n in use]):
            unsupported += 1
    return unsupported / len(sentences)


# ---------------------------------------------------------------- aggregation


def mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def summarise(rows: Sequence[dict]) -> dict:
    """Means of the per-question metrics over the rows where they apply, latency percentiles, counts."""
    out: dict = {}
    for key in RETRIEVAL_METRICS + GROUNDING_METRICS + ABSTENTION_METRICS + REFERENCE_METRICS:
        out[key] = mean(r["metrics"].get(key) for r in rows)
    lat = [r["latency_ms"] for r in rows if r.get("latency_ms") is not None and not r.get("error")]
    out["latency_ms_p50"] = percentile(lat, 50)
    out["latency_ms_p95"] = percentile(lat, 95)
    out["prompt_tokens_mean"] = mean(r.get("prompt_tokens") for r in rows)
    out["answer_tokens_mean"] = mean(r.get("answer_tokens") for r in rows)
    out["questions"] = len(rows)
    out["answerable"] = sum(1 for r in rows if r["type"] != "unanswerable")
    out["unanswerable"] = len(rows) - out["answerable"]
    out["abstained"] = sum(1 for r in rows if r.get("abstained"))
    out["errors"] = sum(1 for r in rows if r.get("error"))
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}
