"""`rag eval calibrate`: fit the offline judgement on the `tune` split and write rag/data/judgement.json.

    rag eval calibrate [--dataset eval/datasets/dev.jsonl] [--split tune] [--out rag/data/judgement.json] [--json]

Three things are fitted, each on tune only (the test split is never read here):
- abstention: a logistic model of P(answerable) over rag.judge.abstention.Features; the abstain point is the
  highest threshold whose cross-validated false refusals on tune stay at or below --max-false-refusals;
  the low-confidence point where --low-share of answerable questions fall below it;
- list tiers: the second tier's floor, the highest whose cross-validated recall of both tiers reaches
  --list-recall;
- list relevance: a logistic model of P(paper is a gold paper) over rag.judge.list_relevance.paper_features for the
  list questions' candidates (acceptable extras left out), kept at the threshold that maximises the
  cross-validated F1 of list precision and recall;
- extractive sentence weights (rag.answer.extractive.Weights), by grid search for key-fact recall of the answers the
  pipeline gives with the two models above (as `rag eval` scores them);
- the quoted-sentence support check (rag.judge.support): the cosine and key-term coverage below which an answer
  judged answerable is given at low confidence, on the answers the pipeline gives with all of the above.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from collections import defaultdict
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ABSTENTION_FEATURES = ("sim", "cov", "oov", "sent_sim", "miss_idf", "kw_miss")
RELEVANCE_FEATURES = ("inv_rank", "dsim", "rcov", "dss")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "judgement.json"


def collect(settings, dataset, split: str) -> dict:
    """Features of every question of `split` (and of every candidate of its list questions)."""
    from rag.answer.assistant import _embed_cache_path, is_list_question
    from rag.corpus.parse import normalise_title
    from rag.index.sentence_vectors import shared_sentence_vectors
    from rag.judge.abstention import TOP_PAPERS, features
    from rag.judge.list_relevance import list_pool, paper_features
    from rag.retrieve.hybrid import Retriever

    retriever = Retriever.from_settings(settings, check_stale=False)
    index = retriever.index
    pool = list_pool(settings.list_top_k)
    sentences = shared_sentence_vectors(retriever.embedder, _embed_cache_path(settings))
    questions, candidates = [], []
    for q in dataset.questions:
        if q.split != split:
            continue
        listing = is_list_question(q.question)  # as the answerer decides it (never from the dataset's label)
        found = retriever.retrieve(q.question, pool if listing else settings.answer_top_k, "hybrid")
        qv = retriever.embed_query(q.question)
        papers = [index.paper(h.paper_id) for h in found.hits]
        sims = sentences.best_similarity(qv, papers if listing else papers[:TOP_PAPERS])
        f = features(q.question, found.top_similarity, [h.paper_id for h in found.hits], index, sims[:TOP_PAPERS])
        questions.append({"id": q.id, "type": q.type, "answerable": q.answerable, **asdict(f)})
        if q.type == "list":  # the relevance model learns from every gold list, judged over a list's pool
            if not listing:
                found = retriever.retrieve(q.question, pool, "hybrid")
                sims = sentences.best_similarity(qv, [index.paper(h.paper_id) for h in found.hits])
            gold = {normalise_title(t) for t in q.gold_titles}
            acceptable = {normalise_title(t) for t in q.acceptable_titles}
            for hit, row in zip(found.hits, paper_features(q.question, found.hits, index, sims)):
                key = normalise_title(hit.title)
                if key not in acceptable:
                    candidates.append({"qid": q.id, "gold": int(key in gold), "gold_count": len(gold), **row})
    return {"questions": questions, "candidates": candidates, "retriever": retriever, "sentences": sentences}


def _cv_probabilities(rows, labels, feats, groups=None, folds=5):
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    from rag.judge.params import fit_logistic

    labels = np.asarray(labels)
    out = np.zeros(len(rows))
    splitter = GroupKFold(folds) if groups is not None else StratifiedKFold(folds, shuffle=True, random_state=0)
    for train, test in splitter.split(np.zeros(len(rows)), labels, groups):
        model = fit_logistic([rows[i] for i in train], labels[train], feats)
        out[test] = [model.probability(rows[i]) for i in test]
    return out


def operating_points(p_answerable, answerable) -> list[dict]:
    """Caught unanswerable vs falsely refused answerable for every threshold (abstain when p < t)."""
    p, y = np.asarray(p_answerable), np.asarray(answerable, dtype=bool)
    points = []
    for t in sorted(set(np.round(p, 6))) + [1.01]:
        below = p < t
        points.append({"threshold": float(t), "caught": int(np.sum(below & ~y)), "unanswerable": int(np.sum(~y)),
                       "false_refusals": int(np.sum(below & y)), "answerable": int(np.sum(y))})
    return points


def fit_abstention(questions, max_false: float, low_share: float):
    from rag.judge.params import fit_logistic

    labels = [int(q["answerable"]) for q in questions]
    model = fit_logistic(questions, labels, ABSTENTION_FEATURES)
    cv = _cv_probabilities(questions, labels, ABSTENTION_FEATURES)
    answerable = sum(labels)
    allowed = int(np.floor(max_false * answerable))
    points = operating_points(cv, labels)
    best = max((pt for pt in points if pt["false_refusals"] <= allowed), key=lambda pt: (pt["caught"], pt["threshold"]))
    ans_p = np.sort(cv[np.asarray(labels) == 1])
    low = float(ans_p[min(len(ans_p) - 1, int(np.floor(low_share * len(ans_p))))]) if len(ans_p) else 0.5
    return model, best["threshold"], max(low, best["threshold"]), {"cv_point": best, "cv_points": points}


def _list_quality(candidates, probs, threshold, k):
    by_q = defaultdict(list)
    for c, p in zip(candidates, probs):
        by_q[c["qid"]].append((c["inv_rank"], p, c["gold"], c["gold_count"]))
    precision, recall = [], []
    for items in by_q.values():
        items.sort(key=lambda t: -t[0])
        shown = ([t for t in items if t[1] >= threshold] or items[:1])[:k]
        hits = sum(t[2] for t in shown)
        precision.append(hits / len(shown))
        recall.append(hits / items[0][3])
    return float(np.mean(precision)), float(np.mean(recall))


def fit_relevance(candidates, k: int, min_precision: float):
    """The threshold with the best cross-validated list recall whose precision stays >= min_precision
    (else the best F1)."""
    from rag.judge.params import fit_logistic

    labels = [c["gold"] for c in candidates]
    model = fit_logistic(candidates, labels, RELEVANCE_FEATURES)
    cv = _cv_probabilities(candidates, labels, RELEVANCE_FEATURES, groups=[c["qid"] for c in candidates])
    rows = []
    for t in np.arange(0.1, 0.71, 0.025):
        p, r = _list_quality(candidates, cv, t, k)
        rows.append({"threshold": round(float(t), 3), "precision": round(p, 4), "recall": round(r, 4),
                     "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4)})
    ok = [x for x in rows if x["precision"] >= min_precision]
    best = max(ok, key=lambda x: (x["recall"], x["precision"])) if ok else max(rows, key=lambda x: x["f1"])
    return model, best["threshold"], best | {"cv_probabilities": cv}


def fit_list_floor(candidates, probs, threshold: float, k: int, target_recall: float) -> tuple[float, dict]:
    """The highest floor whose cross-validated recall of both tiers together reaches `target_recall`: the
    second tier ("also possibly relevant") is the rest of the pool at or above it, at most k papers."""
    by_q = defaultdict(list)
    for c, p in zip(candidates, probs):
        by_q[c["qid"]].append((c["inv_rank"], p, c["gold"], c["gold_count"]))
    rows = []
    for floor in np.arange(threshold, -0.001, -0.01):
        recall, first_p, second_sizes, second_hits = [], [], [], 0
        for items in by_q.values():
            items = sorted(items, key=lambda t: -t[0])
            first = ([t for t in items if t[1] >= threshold] or items[:1])[:k]
            second = [t for t in items if t not in first and t[1] >= floor][:k]
            recall.append(sum(t[2] for t in first + second) / items[0][3])
            first_p.append(sum(t[2] for t in first) / len(first))
            second_sizes.append(len(second))
            second_hits += sum(t[2] for t in second)
        rows.append({"floor": round(float(floor), 3), "recall_both": round(float(np.mean(recall)), 4),
                     "first_precision": round(float(np.mean(first_p)), 4),
                     "second_mean_size": round(float(np.mean(second_sizes)), 2),
                     "second_precision": round(second_hits / max(1, sum(second_sizes)), 4)})
    ok = [r for r in rows if r["recall_both"] >= target_recall]
    best = max(ok, key=lambda r: r["floor"]) if ok else min(rows, key=lambda r: r["floor"])
    return best["floor"], best


def fit_extractive(settings, dataset, split, collected, params):
    """Grid-search the sentence weights for key-fact recall on the split's answerable questions, over the
    sources the pipeline itself gives the answerer (an Assistant with the abstention and list relevance just
    fitted, `params`): a list answer quotes only the papers that pass, and a refused question scores 0,
    exactly as `rag eval` scores them. The weights change which sentences are quoted, not which papers."""
    from rag.answer.assistant import Assistant
    from rag.answer.extractive import Extractor, Weights
    from rag.eval.metrics import key_fact_recall

    retriever, sentences = collected["retriever"], collected["sentences"]
    assistant = Assistant(settings, retriever, None, params=params)
    cases, refused = [], 0
    for q in dataset.questions:
        if q.split != split or not q.answerable or not q.key_facts:
            continue
        answer = assistant.ask(q.question, mode="hybrid", extractive=True)
        if answer.abstained or not answer.sources:
            refused += 1  # 0 key facts whatever the weights
            continue
        sources = list(answer.sources)
        cases.append((q, answer.shape == "list", sources,
                      sentences.of([retriever.index.paper(s.paper_id) for s in sources]),
                      retriever.embed_query(q.question)))
    total = len(cases) + refused
    # semantic, lexical, result, method, position, rank, quotes (3 or 4: quotes stay short), entity
    grid = itertools.product((1.0, 2.0, 4.0), (1.0,), (0.3, 0.6), (0.2, 0.4), (0.0, 0.2), (0.0, 0.5, 1.0, 2.0), (3, 4),
                             (0.0, 0.2, 0.4, 0.8))
    best = None
    for values in grid:
        extractor = Extractor(Weights(*values))
        found = 0.0
        for q, listing, sources, sents, qv in cases:
            extract = extractor.answer(q.question, sources, listing, sents, qv)
            found += key_fact_recall(extract.text if extract else "", q.key_facts) or 0.0
        score = found / total if total else 0.0
        if best is None or score > best[0] + 1e-9:
            best = (score, asdict(extractor.weights))
    return best[1], {"key_fact_recall": round(best[0], 4), "questions": total, "refused": refused}


def fit_support(settings, dataset, split, collected, params, max_demoted: float, extra: list[dict] | None = None):
    """The quoted-sentence support thresholds (rag.judge.support): over the split's questions the pipeline answers
    with confidence (`params`, without a support check), the cuts that turn the most unanswerable ones into
    low-confidence answers while demoting at most `max_demoted` of the answerable ones. `extra`: more
    (question, answerable) pairs of the split, e.g. the absent-name set's topic near misses and named controls."""
    from rag.answer.assistant import Assistant
    from rag.judge.support import fit_thresholds

    assistant = Assistant(settings, collected["retriever"], None, params=params)
    asked = [(q.question, q.answerable) for q in dataset.questions if q.split == split] + list(extra or [])
    rows = []
    for question, answerable in asked:
        answer = assistant.ask(question, mode="hybrid", extractive=True)
        support = (answer.judgement or {}).get("support")
        if not answer.abstained and support is not None and answer.judgement.get("level") == "answer":
            rows.append({"answerable": answerable, **support})
    return fit_thresholds(rows, max_demoted)


def behaviour_questions(dataset_path: Path, split: str) -> list[tuple[str, bool]]:
    """The split's rows of the absent-name set beside the dataset (rag.eval.behaviour): an absent name or topic
    near miss is unanswerable, a named control answerable."""
    from rag.eval.behaviour import load_set

    path = dataset_path.parent / "absent_names.jsonl"
    if not path.exists():
        return []
    return [(r["question"], r["type"] == "named_control") for r in load_set(path)
            if r.get("split") == split and r.get("type") in ("absent_name", "named_control")]


def main(argv=None) -> int:
    from rag.env import configure_process

    configure_process()
    from rag.eval.dataset import load_dataset
    from rag.judge.params import JudgementParams
    from rag.retrieve.hybrid import Retriever
    from rag.settings import load_settings

    p = argparse.ArgumentParser(prog="rag eval calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=Path("eval/datasets/dev.jsonl"))
    p.add_argument("--split", default="tune", choices=("tune",), help="fitting always uses tune")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--max-false-refusals", type=float, default=0.03,
                   help="share of answerable tune questions the abstain point may refuse (default 0.03)")
    p.add_argument("--low-share", type=float, default=0.10,
                   help="share of answerable tune questions marked low confidence at most (default 0.10)")
    p.add_argument("--min-list-precision", type=float, default=0.85,
                   help="list relevance: the most recall whose cross-validated precision stays at or above this")
    p.add_argument("--list-recall", type=float, default=0.87,
                   help="lists: the recall of both tiers together the second tier's floor must reach on tune "
                        "(cross-validated; default 0.87, the 0.85 target plus a margin)")
    p.add_argument("--support-max-demoted", type=float, default=0.05,
                   help="share of the answerable tune questions answered with confidence that the quoted-sentence "
                        "support check may turn into low-confidence answers (default 0.05)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    settings = load_settings()
    titles = [x.title for x in Retriever.from_settings(settings, check_stale=False).index.papers()]
    dataset = load_dataset(args.dataset, titles)
    collected = collect(settings, dataset, args.split)
    model_a, abstain_below, low_below, a_info = fit_abstention(collected["questions"], args.max_false_refusals, args.low_share)
    model_r, relevant_at, r_info = fit_relevance(collected["candidates"], settings.list_top_k, args.min_list_precision)
    list_floor, floor_info = fit_list_floor(collected["candidates"], r_info.pop("cv_probabilities"), relevant_at,
                                            settings.list_top_k, args.list_recall)
    weights, e_info = fit_extractive(settings, dataset, args.split, collected,
                                     JudgementParams(model_a, abstain_below, low_below, model_r, relevant_at,
                                                     {"list_floor": list_floor}))
    support, s_info = fit_support(settings, dataset, args.split, collected,
                                  JudgementParams(model_a, abstain_below, low_below, model_r, relevant_at,
                                                  {"list_floor": list_floor, "extractive_weights": weights}),
                                  args.support_max_demoted, behaviour_questions(args.dataset, args.split))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip() or None
    fitted = {
        "dataset": str(args.dataset), "dataset_sha256": dataset.sha256, "split": args.split,
        "questions": len(collected["questions"]), "list_candidates": len(collected["candidates"]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": commit,
        "abstention_cv": a_info["cv_point"], "relevance_cv": r_info, "extractive_tune": e_info,
        "extractive_weights": weights, "max_false_refusals": args.max_false_refusals, "low_share": args.low_share,
        "min_list_precision": args.min_list_precision,
        "list_floor": list_floor, "list_floor_cv": floor_info, "list_recall_target": args.list_recall,
        "support": support, "support_tune": s_info, "support_max_demoted": args.support_max_demoted,
    }
    params = JudgementParams(model_a, abstain_below, low_below, model_r, relevant_at, fitted)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(params.to_dict(), indent=2) + "\n")
    summary = {"out": str(args.out), "abstain_below": round(abstain_below, 4), "low_below": round(low_below, 4),
               "relevant_at": relevant_at, **{k: v for k, v in fitted.items() if k.endswith(("_cv", "_tune"))},
               "extractive_weights": weights}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
