#!/usr/bin/env python3
"""Print counts of eval/datasets/dev.jsonl by type x style x split (stdlib only).

Also prints totals per type, per style and per split, and how many unanswerable questions are
near misses (their notes contain "near-miss:").

    python eval/datasets/split_stats.py [--dev PATH]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

DEFAULT_DEV = Path(__file__).resolve().parent / "dev.jsonl"
TYPES = ("list", "specific", "paraphrase", "multi_hop", "unanswerable")
STYLES = ("terse", "question")
SPLITS = ("tune", "test")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    args = ap.parse_args()

    records = [json.loads(line) for line in args.dev.read_text(encoding="utf-8").splitlines() if line.strip()]
    cells = Counter((r["type"], r["style"], r["split"]) for r in records)
    near_miss = sum(1 for r in records if r["type"] == "unanswerable" and "near-miss:" in r["notes"])
    n_unans = sum(1 for r in records if r["type"] == "unanswerable")

    cols = [(st, sp) for st in STYLES for sp in SPLITS]
    header = f"{'type':13s} " + " ".join(f"{st + '/' + sp:>14s}" for st, sp in cols) + f" {'tune':>5s} {'test':>5s} {'total':>6s}"
    print(header)
    print("-" * len(header))
    for kind in TYPES:
        row = [cells[(kind, st, sp)] for st, sp in cols]
        tune = sum(cells[(kind, st, "tune")] for st in STYLES)
        test = sum(cells[(kind, st, "test")] for st in STYLES)
        print(f"{kind:13s} " + " ".join(f"{n:14d}" for n in row) + f" {tune:5d} {test:5d} {tune + test:6d}")
    print("-" * len(header))
    row = [sum(cells[(k, st, sp)] for k in TYPES) for st, sp in cols]
    tune = sum(cells[(k, st, "tune")] for k in TYPES for st in STYLES)
    test = sum(cells[(k, st, "test")] for k in TYPES for st in STYLES)
    print(f"{'all':13s} " + " ".join(f"{n:14d}" for n in row) + f" {tune:5d} {test:5d} {tune + test:6d}")
    print()
    for st in STYLES:
        print(f"style {st:8s}: {sum(cells[(k, st, sp)] for k in TYPES for sp in SPLITS)}")
    unknown = [r["id"] for r in records if (r["type"], r["style"], r["split"]) not in
               {(k, st, sp) for k in TYPES for st in STYLES for sp in SPLITS}]
    if unknown:
        print(f"records with unknown type/style/split: {unknown}")
    nm_split = Counter(r["split"] for r in records if r["type"] == "unanswerable" and "near-miss:" in r["notes"])
    print(f"unanswerable near misses: {near_miss} of {n_unans} (tune {nm_split['tune']}, test {nm_split['test']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
