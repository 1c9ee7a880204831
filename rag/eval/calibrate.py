"""Calibrate abstention on an eval set: the best dense similarity and the question-term coverage of the
top papers, for answerable vs unanswerable questions.

    python -m rag.eval.calibrate [--dataset eval/datasets/dev.jsonl] [--json]

The rule (rag.answer.Assistant._should_abstain): abstain when similarity < abstain_threshold, or
when similarity < abstain_sim and coverage < abstain_coverage. This prints the per-question
features, the outcome with the current settings, and a grid of alternatives.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path


def features(dataset: Path, settings) -> list[dict]:
    from rag.abstention import features as question_features
    from rag.retrieve import Retriever

    retriever = Retriever.from_settings(settings)
    rows = []
    for line in dataset.read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        found = retriever.retrieve(item["question"], settings.answer_top_k, "hybrid")
        f = question_features(item["question"], found.top_similarity, [h.paper_id for h in found.hits], retriever.index)
        rows.append({
            "id": item["id"],
            "answerable": item["type"] != "unanswerable",
            "similarity": round(f.similarity, 4),
            "coverage": round(f.coverage, 4),
            "question": item["question"],
        })
    return rows


def outcome(rows, floor: float, sim: float, cov: float) -> dict:
    def abstains(r):
        return r["similarity"] < floor or (r["similarity"] < sim and r["coverage"] < cov)

    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    return {
        "abstain_threshold": floor, "abstain_sim": sim, "abstain_coverage": cov,
        "abstained_unanswerable": sum(map(abstains, una)), "unanswerable": len(una),
        "false_abstentions": sum(map(abstains, ans)), "answerable": len(ans),
    }


def main(argv=None) -> int:
    from rag.env import configure_process

    configure_process()
    from rag.settings import load_settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=Path("eval/datasets/dev.jsonl"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    settings = load_settings()
    rows = features(args.dataset, settings)
    current = outcome(rows, settings.abstain_threshold, settings.abstain_sim, settings.abstain_coverage)
    grid = [outcome(rows, f, s, c) for f, s, c in itertools.product(
        [0.25, 0.30, 0.35], [0.40, 0.45, 0.50], [0.45, 0.50, 0.55, 0.60])]
    if args.json:
        print(json.dumps({"rows": rows, "current": current, "grid": grid}))
        return 0
    for r in sorted(rows, key=lambda r: (r["answerable"], r["similarity"])):
        if not r["answerable"] or r["similarity"] < 0.5:
            print(f"{'ANS' if r['answerable'] else 'UNA'} sim={r['similarity']:.3f} cov={r['coverage']:.2f}  {r['question'][:80]}")
    print("\ncurrent settings:", current)
    print("grid (threshold, sim, coverage → unanswerable abstained, answerable wrongly abstained):")
    for g in grid:
        print(f"  {g['abstain_threshold']:.2f} {g['abstain_sim']:.2f} {g['abstain_coverage']:.2f} → "
              f"{g['abstained_unanswerable']}/{g['unanswerable']}, {g['false_abstentions']}/{g['answerable']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
