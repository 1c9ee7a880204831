"""Validate the held-out behaviour sets against the corpus (titles exist, invented names are absent, real names
are present in their gold papers, key facts occur, set follow-up gold comes from the previous turn's list).

    PYTHONPATH=. python eval/datasets/heldout/check.py        # exit 1 on any error
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from rag.corpus.parse import load_corpus

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def rows(name):
    return [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> int:
    papers = {p.title: p.abstract for p in load_corpus([ROOT / "data" / "corpus"]).papers}
    text = {t: (t + "\n" + a).lower() for t, a in papers.items()}
    flat = {t: re.sub(r"[^0-9a-z]", "", s) for t, s in text.items()}
    errors: list[str] = []

    def title_ok(rid, titles):
        for t in titles:
            if t not in papers:
                errors.append(f"{rid}: not a corpus title: {t!r}")
        if len(set(titles)) != len(titles):
            errors.append(f"{rid}: duplicate titles")

    def absent(rid, name):
        n = name.lower()
        nn = re.sub(r"[^0-9a-z]", "", n)
        hits = [t for t in papers if n in text[t] or (nn and nn in flat[t])]
        if hits:
            errors.append(f"{rid}: absent name {name!r} occurs in {hits[:3]}")

    def present(rid, name, titles):
        for t in titles:
            if name.lower() not in text.get(t, ""):
                errors.append(f"{rid}: name {name!r} not in gold {t!r}")

    for r in rows("dialogues.jsonl"):
        rid, turns = r["id"], r["turns"]
        t1, t1acc = r["turn1_gold_titles"], r.get("turn1_acceptable_titles", [])
        title_ok(rid, t1 + t1acc)
        if set(t1) & set(t1acc):
            errors.append(f"{rid}: turn-1 gold and acceptable overlap")
        if len(turns) not in (2, 3):
            errors.append(f"{rid}: {len(turns)} turns")
        prev_gold = t1
        for k, turn in enumerate(turns[1:], start=2):
            if turn["refers"] == "set":
                g, acc = turn["gold_titles"], turn["acceptable_titles"]
                title_ok(f"{rid}/t{k}", g + acc)
                if not set(g) <= set(prev_gold):
                    errors.append(f"{rid}/t{k}: set gold not within the previous turn's gold")
                if k == 2 and not set(acc) <= set(t1) | set(t1acc):
                    errors.append(f"{rid}/t{k}: acceptable not from turn 1")
                if set(g) & set(acc):
                    errors.append(f"{rid}/t{k}: gold and acceptable overlap")
                prev_gold = g
            elif turn["refers"] == "ordinal":
                n = turn["ordinal"]
                if not (n == -1 or 1 <= n <= len(prev_gold)):
                    errors.append(f"{rid}/t{k}: ordinal {n} outside the previous gold list ({len(prev_gold)})")
                if turn["ask"] not in ("about", "similar"):
                    errors.append(f"{rid}/t{k}: ask {turn['ask']!r}")
                prev_gold = []
            else:
                errors.append(f"{rid}/t{k}: refers {turn['refers']!r}")
        # the row-level fields the scorer reads describe turn 2
        t2 = turns[1]
        if t2["refers"] == "set" and r.get("gold_titles") != t2["gold_titles"]:
            errors.append(f"{rid}: row gold_titles differ from turn 2")
        if t2["refers"] == "ordinal" and (r.get("ordinal"), r.get("ask")) != (t2["ordinal"], t2["ask"]):
            errors.append(f"{rid}: row ordinal/ask differ from turn 2")

    for r in rows("comparisons.jsonl"):
        rid = r["id"]
        q = r["question"].lower()
        for item in r["items"]:
            title_ok(rid, item["gold_titles"])
            if item["absent"]:
                if item["gold_titles"]:
                    errors.append(f"{rid}: absent item with gold")
                absent(rid, item["name"])
                if item["name"].lower() not in q:
                    errors.append(f"{rid}: absent name {item['name']!r} not in the question")
            else:
                if not item["gold_titles"]:
                    errors.append(f"{rid}: present item {item['name']!r} without gold")
                if r["type"] == "comparison":
                    if item["name"].lower() not in q:
                        errors.append(f"{rid}: item {item['name']!r} not in the question")
                    if not item["name"].startswith("the paper that"):
                        present(rid, item["name"], item["gold_titles"])
                for fact in item.get("key_facts", []):
                    present(rid, fact, item["gold_titles"])

    for r in rows("absent_names.jsonl"):
        rid = r["id"]
        title_ok(rid, r["gold_titles"])
        if r["type"] == "absent_name":
            if r["gold_titles"]:
                errors.append(f"{rid}: absent question with gold")
            for name in r["names"]:
                absent(rid, name)
        elif r["type"] == "named_control":
            if not r["gold_titles"] or not r["names"]:
                errors.append(f"{rid}: control without gold or names")
            for name in r["names"]:
                present(rid, name, r["gold_titles"])
                if name.lower() not in r["question"].lower():
                    errors.append(f"{rid}: control name {name!r} not in the question")
        else:
            errors.append(f"{rid}: type {r['type']!r}")

    for name in ("dialogues.jsonl", "comparisons.jsonl", "absent_names.jsonl"):
        rs = rows(name)
        ids = [r["id"] for r in rs]
        if len(set(ids)) != len(ids):
            errors.append(f"{name}: duplicate ids")
        if any(r["split"] != "test" for r in rs):
            errors.append(f"{name}: a row outside split test")
    for e in errors:
        print("error:", e)
    print(f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
