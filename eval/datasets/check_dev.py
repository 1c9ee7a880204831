#!/usr/bin/env python3
"""Validate eval/datasets/dev.jsonl against the scraped corpus (stdlib only).

Checks every record's fields and type, that ids are unique, and that every gold title is
exactly one of the corpus title lines. Corpus files are parsed the simple way: drop blank
lines, the page boilerplate and date lines, strip the "Subscribe" glued to the first title,
then even positions are titles and odd positions abstracts.

Prints counts per type and per source file. Exit status 1 on any error.

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
FIELDS = {
    "id": str,
    "type": str,
    "question": str,
    "gold_titles": list,
    "key_facts": list,
    "notes": str,
}
MIN_QUESTIONS = 64
MIN_UNANSWERABLE = 10
MIN_SHORT = 20

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
    by_source = Counter()
    src_questions = Counter()
    short = 0
    for no, rec in records:
        where = f"line {no} ({rec.get('id', '?')})"
        missing = set(FIELDS) - set(rec)
        extra = set(rec) - set(FIELDS)
        if missing:
            errors.append(f"{where}: missing fields {sorted(missing)}")
            continue
        if extra:
            errors.append(f"{where}: unexpected fields {sorted(extra)}")
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
        gold, facts = rec["gold_titles"], rec["key_facts"]
        if not all(isinstance(g, str) for g in gold) or not all(isinstance(f, str) and f.strip() for f in facts):
            errors.append(f"{where}: gold_titles/key_facts must be lists of non-empty strings")
            continue
        if len(set(gold)) != len(gold):
            errors.append(f"{where}: duplicate gold titles")
        expected = {"unanswerable": (0, 0), "specific": (1, 1), "paraphrase": (1, 1), "multi_hop": (2, 99), "list": (2, 99)}[kind]
        if not expected[0] <= len(gold) <= expected[1]:
            errors.append(f"{where}: {kind} needs {expected[0]}..{expected[1]} gold titles, has {len(gold)}")
        if kind == "unanswerable" and facts:
            errors.append(f"{where}: unanswerable must have empty key_facts")
        if kind != "unanswerable" and not facts:
            errors.append(f"{where}: key_facts empty")
        if "style: short" in rec["notes"]:
            short += 1
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
    if by_type["unanswerable"] < MIN_UNANSWERABLE:
        errors.append(f"only {by_type['unanswerable']} unanswerable questions (< {MIN_UNANSWERABLE})")
    if short < MIN_SHORT:
        errors.append(f"only {short} short user-style queries (< {MIN_SHORT})")

    n_titles = len(title_sources)
    n_multi = sum(1 for v in title_sources.values() if len(v) > 1)
    print(f"corpus: {len(file_ids)} files, {sum(len(v) for v in title_sources.values())} entries, "
          f"{n_titles} unique titles, {n_multi} titles in more than one file")
    print(f"dev set: {total} questions ({short} short user-style)")
    print("per type:")
    for kind in TYPES:
        print(f"  {kind:13s} {by_type[kind]}")
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
