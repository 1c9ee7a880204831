"""`rag eval import`: a question set in a common format -> dataset lines `rag eval` runs as they are.

- csv: a header row; `question`, `gold_titles` (titles separated by ";"), `reference` (an answer in words;
  `answer`, `ground_truth` and `expected_answer` are read as the reference too), and optionally `key_facts`
  (";"-separated), `type`, `id`, `split`, `notes`, and `contexts` / `reference_contexts` (one passage, or a
  list written as JSON or as a Python literal, as a RAGAS dataset saved with `to_csv` has it).
- ragas: JSONL (or a JSON array) of RAGAS samples, legacy or SingleTurnSample names: `question`/`user_input`,
  `ground_truth`/`reference` (or `ground_truths`), `contexts`/`reference_contexts` (the passages that answer
  it: each is matched to the paper whose text holds it). `answer`/`response` and `retrieved_contexts` are
  another system's output and are left out (`rag eval` produces its own).
- jsonl: this project's own lines (rag/eval/dataset.py), minimal or full; titles are matched to the index.

Titles are matched to the index exactly, then by normalised title; a title that matches neither is kept (it
counts as never retrieved) and listed. Every unmatched title or context is listed as a problem.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag.eval.dataset import DatasetError, TitleIndex
from rag.records import Paper
from rag.text import content_terms, normalise_for_match

FORMATS = ("csv", "ragas", "jsonl")
CSV_ALIASES = {"question": "question", "user_input": "question", "gold_titles": "gold_titles", "titles": "gold_titles",
               "reference": "reference", "answer": "reference", "ground_truth": "reference",
               "expected_answer": "reference", "key_facts": "key_facts", "type": "type", "id": "id", "split": "split",
               "notes": "notes", "contexts": "contexts", "reference_contexts": "contexts"}
LIST_SEPARATOR = ";"
PASSED_THROUGH = ("id", "type", "key_facts", "split", "notes", "style", "acceptable_titles")
IGNORED_RAGAS = ("answer", "response", "retrieved_contexts", "multi_responses", "rubrics")
MIN_CONTEXT_TERMS = 4  # a shorter passage matches too many abstracts to name one
CONTEXT_CONTAINMENT = 0.8  # share of a passage's terms that must occur in the paper's title and abstract


@dataclass
class ImportResult:
    lines: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: message", every one shown to the user
    rows: int = 0
    skipped: int = 0
    first_skip: str | None = None
    titles: int = 0
    titles_normalised: int = 0
    titles_unmatched: int = 0
    contexts: int = 0
    contexts_unmatched: int = 0

    def summary(self) -> str:
        parts = [f"{len(self.lines)} of {self.rows} rows imported"]
        if self.titles:
            parts.append(f"{self.titles - self.titles_unmatched} of {self.titles} titles matched "
                         f"({self.titles_normalised} by normalised title)")
        if self.contexts:
            parts.append(f"{self.contexts - self.contexts_unmatched} of {self.contexts} contexts matched to a paper")
        return "; ".join(parts)


class PaperMatcher:
    """Titles and passages -> the index's papers (titles exactly, then normalised; passages by their text)."""

    def __init__(self, papers: Iterable[Paper]):
        self.papers = list(papers)
        self.exact = {p.title: p.title for p in self.papers}
        self.titles = TitleIndex(p.title for p in self.papers)
        self._terms = [set(content_terms(f"{p.title} {p.abstract}")) for p in self.papers]
        self._text = [normalise_for_match(f"{p.title} {p.abstract}") for p in self.papers]
        self._postings: dict[str, list[int]] = defaultdict(list)
        for i, terms in enumerate(self._terms):
            for t in terms:
                self._postings[t].append(i)

    def title(self, title: str) -> tuple[str | None, str]:
        """(corpus title or None, how: "exact" | "normalised" | a hint naming the closest title)."""
        if title in self.exact:
            return title, "exact"
        found = self.titles.resolve(title)
        if found is not None:
            return found, "normalised"
        near = self.titles.nearest(title)
        return None, f"closest corpus title: {near!r}" if near else "no close title"

    def context(self, text: str) -> tuple[str | None, str]:
        """(title of the paper whose title + abstract hold the passage, or None, why not)."""
        terms = set(content_terms(text))
        if len(terms) < MIN_CONTEXT_TERMS:
            return None, f"too short to name a paper ({len(terms)} content words)"
        overlap: Counter = Counter()
        for t in terms:
            overlap.update(self._postings.get(t, ()))
        if not overlap:
            return None, "no paper shares its words"
        needle = normalise_for_match(text)
        verbatim = [i for i, _ in overlap.most_common(20) if needle in self._text[i]]
        if len(verbatim) == 1:
            return self.papers[verbatim[0]].title, "verbatim"
        (best, hits), *rest = overlap.most_common(2)
        share = hits / len(terms)
        if share < CONTEXT_CONTAINMENT:
            return None, f"best paper holds {share:.0%} of its words ({self.papers[best].title!r})"
        if rest and rest[0][1] == hits:
            return None, f"matches several papers equally ({self.papers[best].title!r}, {self.papers[rest[0][0]].title!r})"
        return self.papers[best].title, "words"


def _split_list(value) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").split(LIST_SEPARATOR) if v.strip()]


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | str]]:
    """(line or row number, record) per row; a record that cannot be read is its error message instead."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 (byte {exc.start})") from None
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if "question" not in header and "user_input" not in header:
            raise DatasetError(f"{path}: the CSV needs a header row with a `question` column "
                               f"(and gold_titles, reference); found {', '.join(header) or 'no header'}")
        for row in reader:
            record = {}
            for key, value in row.items():
                if key is None:  # more cells than the header names
                    yield reader.line_num, f"{len(value)} cell(s) more than the header has columns"
                    break
                record[key.strip().lower()] = (value or "").strip()
            else:
                yield reader.line_num, record
        return
    stripped = text.lstrip()
    if fmt == "ragas" and stripped.startswith("["):  # EvaluationDataset.to_list() saved as one JSON array
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: invalid JSON array ({exc.msg} at line {exc.lineno})") from None
        yield from ((n, item if isinstance(item, dict) else "expected a JSON object") for n, item in enumerate(items, 1))
        return
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield no, f"invalid JSON ({exc.msg} at column {exc.colno})"
            continue
        yield no, rec if isinstance(rec, dict) else "expected a JSON object"


def _passages(value: str) -> list[str]:
    """A CSV cell of contexts: a list literal (JSON or Python, as pandas writes lists) or one passage."""
    if value.startswith("["):
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            items = None
        if isinstance(items, list):
            return [str(i) for i in items if str(i).strip()]
    return [value]


def _from_csv(rec: dict, note) -> tuple[dict, list[str]]:
    out: dict = {}
    contexts: list[str] = []
    for key, value in rec.items():
        target = CSV_ALIASES.get(key)
        if target is None:
            note(f"column {key!r} is not read (known: {', '.join(sorted(set(CSV_ALIASES)))})")
        elif target == "contexts" and value:
            if key == "reference_contexts" or not rec.get("reference_contexts"):  # reference_contexts wins
                contexts = _passages(value)
        elif value:
            out[target] = _split_list(value) if target in ("gold_titles", "key_facts") else value
    return out, contexts


def _from_ragas(rec: dict, note) -> tuple[dict, list[str]]:
    out = {k: rec[k] for k in PASSED_THROUGH if rec.get(k) not in (None, "", [])}
    question = rec.get("question") if rec.get("question") is not None else rec.get("user_input")
    if question is not None:
        out["question"] = question
    reference = rec.get("reference") if rec.get("reference") is not None else rec.get("ground_truth")
    if reference is None and isinstance(rec.get("ground_truths"), list):
        reference = " ".join(str(r) for r in rec["ground_truths"])
    if isinstance(reference, str) and reference.strip():
        out["reference"] = reference.strip()
    if rec.get("gold_titles"):
        out["gold_titles"] = _split_list(rec["gold_titles"])
    contexts = rec.get("reference_contexts") if rec.get("reference_contexts") is not None else rec.get("contexts")
    for key in IGNORED_RAGAS:
        if key in rec:
            note(f"field {key!r} is another system's output: left out (`rag eval` produces its own)")
    return out, [contexts] if isinstance(contexts, str) else [str(c) for c in contexts or []]


def import_dataset(path: Path, fmt: str, matcher: PaperMatcher, index_name: str) -> ImportResult:
    """Read `path` in `fmt` and build dataset lines, matching titles and contexts to the index's papers."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    result = ImportResult()
    notes_seen: set[str] = set()
    name = str(path)

    for no, rec in read_rows(path, fmt):
        result.rows += 1

        def problem(message: str) -> None:
            result.problems.append(f"{name}:{no}: {message}")  # noqa: B023 (used inside the loop only)

        def skip(message: str) -> None:
            result.skipped += 1
            problem(message + ": row skipped")
            result.first_skip = result.first_skip or f"{name}:{no}: {message}"  # noqa: B023

        def note(message: str) -> None:  # said once per file, not once per row
            if message not in notes_seen:
                notes_seen.add(message)
                result.problems.append(f"{name}: {message}")

        if isinstance(rec, str):
            skip(rec)
            continue
        contexts: list[str] = []
        if fmt == "csv":
            line, contexts = _from_csv(rec, note)
        elif fmt == "ragas":
            line, contexts = _from_ragas(rec, note)
        else:
            line = dict(rec)
        if not isinstance(line.get("question"), str) or not line["question"].strip():
            skip("no question")
            continue
        gold: list[str] = []
        for title in line.get("gold_titles") or []:
            result.titles += 1
            found, how = matcher.title(title)
            if found is None:
                result.titles_unmatched += 1
                problem(f"title not in the index: {title!r} ({how}); kept, counted as never retrieved")
                found = title
            elif how == "normalised":
                result.titles_normalised += 1
            gold.append(found)
        unmatched_contexts = 0
        for text in contexts:
            result.contexts += 1
            found, why = matcher.context(text)
            if found is None:
                result.contexts_unmatched += 1
                unmatched_contexts += 1
                short = " ".join(text.split())
                problem(f"context not matched to a paper: {short[:80]!r}{'…' if len(short) > 80 else ''} ({why})")
            else:
                gold.append(found)
        if gold or "gold_titles" in line:
            line["gold_titles"] = list(dict.fromkeys(gold))
        if unmatched_contexts:
            line["notes"] = (line.get("notes", "") + f" {unmatched_contexts} context(s) matched no paper.").strip()
        if "gold_titles" in line and not line["gold_titles"] and line.get("type") != "unanswerable":
            del line["gold_titles"]  # nothing to match: scored on its reference, or without gold
        result.lines.append(line)

    checked = result.titles + result.contexts
    missed = result.titles_unmatched + result.contexts_unmatched
    if checked and missed * 2 > checked:
        first = next((p for p in result.problems if "not in the index" in p or "not matched" in p), "")
        raise DatasetError(f"{missed} of {checked} titles and contexts in {path} match no paper of the index {index_name}: "
                           f"the set was written for another corpus, or this is the wrong index (--data-dir / "
                           f"RAG_DATA_DIR); first: {first}")
    return result
