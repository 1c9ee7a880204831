#!/usr/bin/env python3
"""Validate the follow-up eval sets: dialogues.jsonl, comparisons.jsonl, absent_names.jsonl.

The corpus is parsed by the project's loader (rag.corpus.parse), so titles here are the index's titles.

    .venv/bin/python eval/datasets/check_followups.py          # exit 1 on any error

Checks: schema (keys, order, types, id prefixes, unique ids); every title is a corpus title; dialogues'
`turn1_gold_titles` equal the gold of the dev question `turn1_dev_id` and turn 1 is that question; set
references' gold and acceptable titles are disjoint subsets of turn 1's gold / gold+acceptable; ordinals fit
turn 1's gold list; every present name (comparison items, control names) occurs (case-insensitive) in the
title or abstract of each of its gold papers; multipart key facts occur in their gold papers; every absent
name occurs nowhere in the corpus, neither case-insensitively nor with all non-alphanumerics removed (so
`ImageNet 9K` and `imagenet9k` count as `ImageNet-9K`); minimum sizes; tune/test balanced within every kind.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = ROOT / "data" / "corpus"

def load_corpus() -> dict[str, str]:
    """Title -> abstract, parsed by the project's own loader (the titles gold must match are the loader's)."""
    sys.path.insert(0, str(ROOT))
    from rag.corpus.parse import load_corpus as parse

    return {p.title: p.abstract for p in parse([CORPUS]).papers}


def squash(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


class Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.papers = load_corpus()
        self.text = {t: f"{t}\n{a}".casefold() for t, a in self.papers.items()}
        self.all_text = "\n".join(self.text.values())
        self.all_squashed = squash(self.all_text)
        self.dev = {r["id"]: r for r in self.read("dev.jsonl")}

    def err(self, rid: str, msg: str) -> None:
        self.errors.append(f"{rid}: {msg}")

    @staticmethod
    def read(name: str) -> list[dict]:
        with open(HERE / name, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    # -- shared checks --------------------------------------------------------------------------------
    def keys(self, rid: str, rec: dict, required: list[str], optional: tuple[str, ...] = ()) -> None:
        order = [k for k in required + list(optional) if k in rec]
        if list(rec) != order or any(k not in rec for k in required):
            self.err(rid, f"keys {list(rec)} != expected order {required} (+ optional {list(optional)})")

    def titles(self, rid: str, titles, field: str) -> None:
        if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
            self.err(rid, f"{field} must be a list of strings")
            return
        if len(set(titles)) != len(titles):
            self.err(rid, f"{field} has duplicates")
        for t in titles:
            if t not in self.papers:
                self.err(rid, f"{field}: not a corpus title: {t!r}")

    def present(self, rid: str, name: str, gold: list[str], what: str = "name") -> None:
        for t in gold:
            if t in self.text and name.casefold() not in self.text[t]:
                self.err(rid, f"{what} {name!r} does not occur in gold paper {t!r}")

    def absent(self, rid: str, name: str) -> None:
        if name.casefold() in self.all_text:
            self.err(rid, f"absent name {name!r} occurs in the corpus")
        elif squash(name) and squash(name) in self.all_squashed:
            self.err(rid, f"absent name {name!r} occurs in the corpus once punctuation/spaces are ignored")

    def splits(self, name: str, recs: list[dict], kind_of) -> Counter:
        counts: Counter = Counter()
        for r in recs:
            if r.get("split") not in ("tune", "test"):
                self.err(r.get("id", "?"), f"split {r.get('split')!r} not tune/test")
            counts[(kind_of(r), r.get("split"))] += 1
        for kind in sorted({k for k, _ in counts}):
            if abs(counts[(kind, "tune")] - counts[(kind, "test")]) > 1:
                self.err(name, f"kind {kind}: tune {counts[(kind, 'tune')]} vs test {counts[(kind, 'test')]}")
        return counts

    def ids(self, name: str, recs: list[dict], prefixes) -> None:
        ids = [r.get("id") for r in recs]
        for rid, n in Counter(ids).items():
            if n > 1:
                self.err(name, f"duplicate id {rid}")
        for r in recs:
            if not re.fullmatch(r"[a-z]+-\d{2,}", str(r.get("id"))) or r["id"].split("-")[0] not in prefixes(r):
                self.err(str(r.get("id")), f"bad id for this record (expected prefix {prefixes(r)})")

    def text_field(self, rid: str, rec: dict, key: str) -> None:
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            self.err(rid, f"{key} must be a non-empty string")

    # -- dialogues ------------------------------------------------------------------------------------
    def dialogues(self) -> Counter:
        recs = self.read("dialogues.jsonl")
        self.ids("dialogues", recs, lambda r: ("dlg",))
        for r in recs:
            rid = r.get("id", "?")
            turns = r.get("turns")
            if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, dict) for t in turns)):
                self.err(rid, "turns must be a list of two objects")
                continue
            refers = turns[1].get("refers")
            if list(turns[0]) != ["question"] or list(turns[1]) != ["question", "refers"]:
                self.err(rid, "turn keys must be [question] and [question, refers]")
            for t in turns:
                self.text_field(rid, t, "question")
            base = ["id", "split", "turns", "turn1_dev_id", "turn1_gold_titles"]
            if refers == "set":
                self.keys(rid, r, base + ["gold_titles", "acceptable_titles", "notes"])
            elif refers == "ordinal":
                self.keys(rid, r, base + ["ordinal", "ask", "notes"])
            else:
                self.err(rid, f"refers {refers!r} not set/ordinal")
                continue
            self.text_field(rid, r, "notes")
            dev = self.dev.get(r.get("turn1_dev_id"))
            if dev is None or dev["type"] != "list":
                self.err(rid, f"turn1_dev_id {r.get('turn1_dev_id')!r} is not a dev list question")
                continue
            if turns[0]["question"] != dev["question"]:
                self.err(rid, "turn 1 is not the dev question's text")
            t1 = r["turn1_gold_titles"]
            self.titles(rid, t1, "turn1_gold_titles")
            if t1 != dev["gold_titles"]:
                self.err(rid, "turn1_gold_titles differ from the dev gold")
            if refers == "set":
                gold, acc = r["gold_titles"], r["acceptable_titles"]
                self.titles(rid, gold, "gold_titles")
                self.titles(rid, acc, "acceptable_titles")
                if not set(gold) <= set(t1):
                    self.err(rid, "set-reference gold must be a subset of turn1_gold_titles")
                if set(gold) & set(acc):
                    self.err(rid, "gold and acceptable titles overlap")
                if not set(acc) <= set(t1) | set(dev["acceptable_titles"]):
                    self.err(rid, "acceptable titles must come from turn 1's gold or acceptable titles")
            else:
                o = r["ordinal"]
                if not isinstance(o, int) or isinstance(o, bool) or not (o == -1 or 1 <= o <= len(t1)):
                    self.err(rid, f"ordinal {o!r} must be -1 or 1..{len(t1)}")
                if r["ask"] not in ("about", "similar"):
                    self.err(rid, f"ask {r['ask']!r} not about/similar")
        kinds = lambda r: ("ordinal" if r["turns"][1].get("refers") == "ordinal"
                           else "set-empty" if not r.get("gold_titles") else "set")
        counts = self.splits("dialogues", recs, kinds)
        n_set = sum(v for (k, _), v in counts.items() if k != "ordinal")
        if len(recs) < 24:
            self.err("dialogues", f"{len(recs)} dialogues < 24")
        if not 0.5 <= n_set / max(len(recs), 1) <= 0.7:
            self.err("dialogues", f"set references are {n_set}/{len(recs)}, not ~60%")
        return counts

    # -- comparisons ----------------------------------------------------------------------------------
    def comparisons(self) -> Counter:
        recs = self.read("comparisons.jsonl")
        self.ids("comparisons", recs, lambda r: ("cmp",))
        for r in recs:
            rid = r.get("id", "?")
            self.keys(rid, r, ["id", "split", "type", "question", "items", "notes"])
            self.text_field(rid, r, "question")
            self.text_field(rid, r, "notes")
            typ = r.get("type")
            if typ not in ("comparison", "multipart"):
                self.err(rid, f"type {typ!r} not comparison/multipart")
                continue
            items = r.get("items")
            if not isinstance(items, list) or len(items) < 2:
                self.err(rid, "items must list at least two entries")
                continue
            for it in items:
                name = it.get("name")
                if not isinstance(name, str) or not name.strip() or not isinstance(it.get("absent"), bool):
                    self.err(rid, f"item {it!r}: needs a name and a boolean absent")
                    continue
                extra = ("key_facts",) if typ == "multipart" else ()
                self.keys(f"{rid}/{name}", it, ["name", "gold_titles", "absent"] + list(extra))
                self.titles(rid, it.get("gold_titles"), f"items[{name}].gold_titles")
                if it["absent"]:
                    if it["gold_titles"]:
                        self.err(rid, f"absent item {name!r} has gold titles")
                    self.absent(rid, name)
                    if name.casefold() not in r["question"].casefold():
                        self.err(rid, f"absent item {name!r} is not named in the question")
                    continue
                if not it["gold_titles"]:
                    self.err(rid, f"present item {name!r} has no gold titles")
                if typ == "comparison":
                    if name.casefold() not in r["question"].casefold():
                        self.err(rid, f"item {name!r} is not named in the question")
                    self.present(rid, name, it["gold_titles"])
                else:
                    facts = it.get("key_facts")
                    if not isinstance(facts, list) or not facts:
                        self.err(rid, f"multipart item {name!r} needs key_facts")
                        continue
                    for fact in facts:
                        self.present(rid, fact, it["gold_titles"], "key fact")
            if typ == "comparison":
                names = [it["name"].casefold() for it in items]
                pos = [r["question"].casefold().find(n) for n in names]
                if pos != sorted(pos):
                    self.err(rid, "items are not in the question's order")
        kinds = lambda r: ("multipart" if r["type"] == "multipart" else
                           "comparison-absent" if any(it.get("absent") for it in r["items"]) else "comparison")
        counts = self.splits("comparisons", recs, kinds)
        if len(recs) < 24:
            self.err("comparisons", f"{len(recs)} questions < 24")
        if sum(v for (k, _), v in counts.items() if k == "comparison-absent") < 4:
            self.err("comparisons", "fewer than 4 comparisons with an absent item")
        return counts

    # -- absent names ---------------------------------------------------------------------------------
    def absent_names(self) -> Counter:
        recs = self.read("absent_names.jsonl")
        self.ids("absent_names", recs, lambda r: ("abs",) if r.get("type") == "absent_name" else ("ctl",))
        for r in recs:
            rid = r.get("id", "?")
            self.keys(rid, r, ["id", "split", "type", "question", "names", "gold_titles", "notes"])
            self.text_field(rid, r, "question")
            self.text_field(rid, r, "notes")
            names = r.get("names")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                self.err(rid, "names must be a non-empty list of strings")
                continue
            self.titles(rid, r.get("gold_titles"), "gold_titles")
            if r["type"] == "absent_name":
                if r["gold_titles"]:
                    self.err(rid, "absent_name record has gold titles")
                for n in names:
                    self.absent(rid, n)
            elif r["type"] == "named_control":
                if not r["gold_titles"]:
                    self.err(rid, "named_control record has no gold titles")
                for n in names:
                    self.present(rid, n, r["gold_titles"])
            else:
                self.err(rid, f"type {r['type']!r} not absent_name/named_control")
        counts = self.splits("absent_names", recs, lambda r: r["type"])
        for kind in ("absent_name", "named_control"):
            n = counts[(kind, "tune")] + counts[(kind, "test")]
            if n < 20:
                self.err("absent_names", f"{n} {kind} records < 20")
        return counts


def main() -> int:
    c = Checker()
    tables = {"dialogues.jsonl": c.dialogues(), "comparisons.jsonl": c.comparisons(),
              "absent_names.jsonl": c.absent_names()}
    print(f"corpus: {len(c.papers)} unique titles")
    for name, counts in tables.items():
        kinds = sorted({k for k, _ in counts})
        total = sum(counts.values())
        parts = ", ".join(f"{k} {counts[(k, 'tune')]}/{counts[(k, 'test')]}" for k in kinds)
        print(f"{name}: {total} records (tune/test) {parts}")
    for e in c.errors:
        print("ERROR", e)
    print("OK" if not c.errors else f"{len(c.errors)} error(s)")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main())
