#!/usr/bin/env python3
"""Validate eval/datasets/dev.jsonl against the scraped corpus (stdlib only).

Checks every record's fields (and their order), type, style and split, that ids are unique, that
every gold and acceptable title is exactly one of the corpus title lines, that acceptable titles
are disjoint from gold, and that each (type, style) group is split evenly between tune and test.
Corpus files are parsed the simple way: drop blank lines, the page boilerplate and date lines,
strip the "Subscribe" glued to the first title, then even positions are titles and odd positions
abstracts.

Prints counts per type, style, split and source file. Exit status 1 on any error.

    python eval/datasets/check_dev.py [--dev PATH] [--corpus DIR] [--strict]

--strict also fails when a key fact is not found in the gold abstracts (by default a warning).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DEV = HERE / "dev.jsonl"
DEFAULT_CORPUS = HERE.parent.parent / "data" / "corpus"

TYPES = ("list", "specific", "paraphrase", "unanswerable", "multi_hop")
STYLES = ("terse", "question")
SPLITS = ("tune", "test")
FIELDS = {  # in the required key order
    "id": str,
    "type": str,
    "question": str,
    "gold_titles": list,
    "key_facts": list,
    "acceptable_titles": list,
    "style": str,
    "split": str,
    "notes": str,
}
PREFIX = {"list": "list", "specific": "spec", "paraphrase": "para", "multi_hop": "mhop", "unanswerable": "unans"}
MIN_QUESTIONS = 210
MIN_PER_TYPE = {"list": 45, "specific": 50, "paraphrase": 25, "multi_hop": 20, "unanswerable": 45}
MIN_TERSE = 70

BOILERPLATE = {
    "new",
    "subscribe",
    "get trending papers in your email inbox!",
    "get trending papers in your email inbox once a day!",
    "byak and the research community",
}
DATE = re.compile(r"^(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}(, \d{4})?$", re.I)
GLUED = re.compile(r"^Subscribe(?!(?:rs?|d|s)\b)(?=\S)")


def parse_corpus(corpus_dir: Path):
    """Return ({title: [source ids]}, {title: abstract}, warnings)."""
    sources: dict[str, list[str]] = defaultdict(list)
    abstracts: dict[str, str] = {}
    warnings: list[str] = []
    files = sorted(corpus_dir.glob("*.txt"))
    if not files:
        raise SystemExit(f"no corpus files in {corpus_dir}")
    for path in files:
        src = path.name.split("_", 1)[0]
        lines = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.casefold() in BOILERPLATE or DATE.match(line):
                continue
            lines.append(GLUED.sub("", line))
        if len(lines) % 2:
            warnings.append(f"{path.name}: odd number of content lines ({len(lines)}): alternation broken")
        for i in range(0, len(lines) - 1, 2):
            title, abstract = lines[i], lines[i + 1]
            if len(title) > 300 or len(abstract) < 150:
                warnings.append(f"{path.name}: suspicious pair at content line {i}: {title[:60]!r}")
            if src in sources[title]:
                warnings.append(f"{path.name}: title repeated within file: {title[:60]!r}")
            sources[title].append(src)
            abstracts.setdefault(title, abstract)
    return dict(sources), abstracts, [p.name.split("_", 1)[0] for p in files], warnings


def norm(text: str) -> str:
    return " ".join(text.replace("\\%", "%").casefold().split())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--strict", action="store_true", help="missing key facts are errors")
    args = ap.parse_args()

    title_sources, abstracts, file_ids, corpus_warnings = parse_corpus(args.corpus)
    errors: list[str] = []
    warnings: list[str] = list(corpus_warnings)
    records = []
    for no, raw in enumerate(args.dev.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            errors.append(f"line {no}: blank line")
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(f"line {no}: invalid JSON: {exc}")
            continue
        if not isinstance(rec, dict):
            errors.append(f"line {no}: not a JSON object")
            continue
        records.append((no, rec))

    ids = Counter()
    by_type = Counter()
    by_style = Counter()
    by_split = Counter()
    by_group = Counter()
    by_source = Counter()
    src_questions = Counter()
    near_miss = 0
    for no, rec in records:
        where = f"line {no} ({rec.get('id', '?')})"
        missing = set(FIELDS) - set(rec)
        extra = set(rec) - set(FIELDS)
        if missing:
            errors.append(f"{where}: missing fields {sorted(missing)}")
            continue
        if extra:
            errors.append(f"{where}: unexpected fields {sorted(extra)}")
        elif list(rec) != list(FIELDS):
            errors.append(f"{where}: keys out of order: {list(rec)} (expected {list(FIELDS)})")
        bad = [k for k, t in FIELDS.items() if not isinstance(rec[k], t)]
        if bad:
            errors.append(f"{where}: wrong field types {bad}")
            continue
        for key in ("id", "question", "notes"):
            if not rec[key].strip():
                errors.append(f"{where}: empty {key}")
        ids[rec["id"]] += 1
        kind = rec["type"]
        if kind not in TYPES:
            errors.append(f"{where}: unknown type {kind!r}")
            continue
        by_type[kind] += 1
        if not re.fullmatch(rf"{PREFIX[kind]}-\d{{2,}}", rec["id"]):
            errors.append(f"{where}: id should be {PREFIX[kind]}-NN for type {kind}")
        style, split = rec["style"], rec["split"]
        if style not in STYLES:
            errors.append(f"{where}: style must be one of {STYLES}, got {style!r}")
        if split not in SPLITS:
            errors.append(f"{where}: split must be one of {SPLITS}, got {split!r}")
        if "style: short" in rec["notes"] and style != "terse":
            errors.append(f"{where}: notes say 'style: short' but style is {style!r}")
        by_style[style] += 1
        by_split[split] += 1
        by_group[(kind, style, split)] += 1
        gold, facts, accept = rec["gold_titles"], rec["key_facts"], rec["acceptable_titles"]
        if (not all(isinstance(g, str) for g in gold) or not all(isinstance(f, str) and f.strip() for f in facts)
                or not all(isinstance(a, str) for a in accept)):
            errors.append(f"{where}: gold_titles/key_facts/acceptable_titles must be lists of non-empty strings")
            continue
        if len(set(gold)) != len(gold):
            errors.append(f"{where}: duplicate gold titles")
        if len(set(accept)) != len(accept):
            errors.append(f"{where}: duplicate acceptable titles")
        if set(accept) & set(gold):
            errors.append(f"{where}: acceptable_titles overlap gold_titles: {sorted(set(accept) & set(gold))}")
        if kind == "unanswerable" and accept:
            errors.append(f"{where}: unanswerable must have empty acceptable_titles")
        for a in accept:
            if a not in title_sources:
                close = [t for t in title_sources if t.casefold() == a.casefold() or t.startswith(a[:30])]
                errors.append(f"{where}: acceptable title not a corpus title line: {a!r}" + (f" (near: {close[0]!r})" if close else ""))
        if kind == "unanswerable" and "near-miss:" in rec["notes"]:
            near_miss += 1
        expected = {"unanswerable": (0, 0), "specific": (1, 1), "paraphrase": (1, 1), "multi_hop": (2, 99), "list": (2, 99)}[kind]
        if not expected[0] <= len(gold) <= expected[1]:
            errors.append(f"{where}: {kind} needs {expected[0]}..{expected[1]} gold titles, has {len(gold)}")
        if kind == "unanswerable" and facts:
            errors.append(f"{where}: unanswerable must have empty key_facts")
        if kind != "unanswerable" and not facts:
            errors.append(f"{where}: key_facts empty")
        srcs = set()
        for g in gold:
            if g not in title_sources:
                close = [t for t in title_sources if t.casefold() == g.casefold() or t.startswith(g[:30])]
                errors.append(f"{where}: gold title not a corpus title line: {g!r}" + (f" (near: {close[0]!r})" if close else ""))
                continue
            srcs.update(title_sources[g])
        for s in srcs:
            src_questions[s] += 1
        for g in gold:
            for s in set(title_sources.get(g, [])):
                by_source[s] += 1
        m = re.search(r"src: ([0-9,]+|none)", rec["notes"])
        if not m:
            errors.append(f"{where}: notes lack 'src: ...'")
        else:
            check_src_note(where, errors, m.group(1), srcs)
        if gold:
            text = norm(" ".join(g + " " + abstracts.get(g, "") for g in gold))
            for f in facts:
                if norm(f) not in text:
                    (errors if args.strict else warnings).append(f"{where}: key fact not found in gold abstracts: {f!r}")

    for i, n in ids.items():
        if n > 1:
            errors.append(f"duplicate id {i!r} ({n}x)")
    for kind in TYPES:
        if not by_type[kind]:
            errors.append(f"no questions of type {kind}")
    for s in file_ids:
        if not src_questions[s]:
            errors.append(f"source file {s} has no gold papers")
    total = sum(by_type.values())
    if total < MIN_QUESTIONS:
        errors.append(f"only {total} questions (< {MIN_QUESTIONS})")
    for kind, least in MIN_PER_TYPE.items():
        if by_type[kind] < least:
            errors.append(f"only {by_type[kind]} {kind} questions (< {least})")
    if by_style["terse"] < MIN_TERSE:
        errors.append(f"only {by_style['terse']} terse queries (< {MIN_TERSE})")
    for kind in TYPES:
        for style in STYLES:
            tune, test = by_group[(kind, style, "tune")], by_group[(kind, style, "test")]
            if abs(tune - test) > 1:
                errors.append(f"split not balanced for ({kind}, {style}): tune {tune} vs test {test}")

    n_titles = len(title_sources)
    n_multi = sum(1 for v in title_sources.values() if len(v) > 1)
    print(f"corpus: {len(file_ids)} files, {sum(len(v) for v in title_sources.values())} entries, "
          f"{n_titles} unique titles, {n_multi} titles in more than one file")
    print(f"dev set: {total} questions ({by_style['terse']} terse, {by_style['question']} question; "
          f"{by_split['tune']} tune, {by_split['test']} test; {near_miss} unanswerable near misses)")
    print("per type (terse+question = total; tune/test):")
    for kind in TYPES:
        t = sum(by_group[(kind, "terse", sp)] for sp in SPLITS)
        q = sum(by_group[(kind, "question", sp)] for sp in SPLITS)
        tu = sum(by_group[(kind, st, "tune")] for st in STYLES)
        te = sum(by_group[(kind, st, "test")] for st in STYLES)
        print(f"  {kind:13s} {t:3d}+{q:3d} = {by_type[kind]:3d}; {tu}/{te}")
    print("per source file (questions with a gold paper from it / gold title occurrences):")
    for s in file_ids:
        print(f"  {s}  {src_questions[s]:3d} / {by_source[s]}")
    for w in warnings:
        print("WARNING:", w)
    for e in errors:
        print("ERROR:", e)
    print("OK" if not errors else f"FAILED: {len(errors)} error(s)")
    return 1 if errors else 0


def check_src_note(where: str, errors: list[str], noted: str, actual: set[str]) -> bool:
    """Check that the 'src: ...' note matches the files the gold papers come from."""
    noted_set = set() if noted == "none" else set(noted.split(","))
    if noted_set != actual:
        errors.append(f"{where}: notes say src {sorted(noted_set)} but gold papers come from {sorted(actual)}")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
