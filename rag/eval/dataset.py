"""Load an evaluation dataset (JSONL) and check every gold title against the corpus.

One JSON object per line::

    {"id", "type": "list"|"specific"|"paraphrase"|"unanswerable"|"multi_hop",
     "question", "gold_titles": [exact corpus titles; empty for unanswerable], "key_facts": [...],
     "acceptable_titles": [near misses: citing them counts neither way], "style": "terse"|"question",
     "split": "tune"|"test", "notes"}

Problems are collected as `DatasetIssue`s (file, line, message) rather than raised: a malformed line
is skipped, a gold title that is not in the corpus is kept (it can never be retrieved, so it counts as
a miss) and reported with the closest corpus title. `strict=True` turns any issue into a `DatasetError`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rag.corpus.parse import normalise_title
from rag.errors import RagError

TYPES = ("list", "specific", "paraphrase", "multi_hop", "unanswerable")
REQUIRED = {"id": str, "type": str, "question": str, "gold_titles": list, "key_facts": list}
OPTIONAL = {"notes": str, "acceptable_titles": list, "style": str, "split": str}
STYLES = ("terse", "question")
SPLITS = ("tune", "test")


class DatasetError(RagError):
    """The dataset file is unreadable, empty, or (with --strict) has any issue."""

    exit_code = 2


@dataclass(frozen=True)
class DatasetIssue:
    file: str
    line: int
    message: str
    id: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" + (f" ({self.id})" if self.id else "")
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"line": self.line, "id": self.id, "message": self.message}


@dataclass
class Question:
    id: str
    type: str
    question: str
    gold_titles: list[str]  # corpus spelling where the title was found, else as written
    key_facts: list[str] = field(default_factory=list)
    notes: str = ""
    line: int = 0
    acceptable_titles: list[str] = field(default_factory=list)
    style: str | None = None
    split: str | None = None

    @property
    def answerable(self) -> bool:
        return self.type != "unanswerable"

    @property
    def gold_keys(self) -> set[str]:
        return {normalise_title(t) for t in self.gold_titles}


@dataclass
class Dataset:
    path: str
    sha256: str
    questions: list[Question]
    issues: list[DatasetIssue]

    def counts(self) -> dict[str, int]:
        c = Counter(q.type for q in self.questions)
        return {t: c[t] for t in TYPES if c[t]}

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "questions": len(self.questions),
            "types": self.counts(),
            "issues": [i.to_dict() for i in self.issues],
        }


class TitleIndex:
    """Corpus titles by normalised form, with a close-match hint for misspelt gold titles."""

    def __init__(self, titles: Iterable[str]):
        self.by_key: dict[str, str] = {}
        for t in titles:
            self.by_key.setdefault(normalise_title(t), t)
        self._keys = list(self.by_key)

    def __len__(self) -> int:
        return len(self.by_key)

    def resolve(self, title: str) -> str | None:
        return self.by_key.get(normalise_title(title))

    def nearest(self, title: str) -> str | None:
        close = difflib.get_close_matches(normalise_title(title), self._keys, n=1, cutoff=0.6)
        return self.by_key[close[0]] if close else None


def load_dataset(path: Path | str, corpus_titles: Iterable[str] | None = None, strict: bool = False) -> Dataset:
    """Parse `path`; with `corpus_titles`, check each gold title against them (normalised match)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset {path} is not UTF-8 (byte {exc.start})") from None
    name = str(path)
    titles = TitleIndex(corpus_titles) if corpus_titles is not None else None
    issues: list[DatasetIssue] = []
    questions: list[Question] = []
    seen_ids: dict[str, int] = {}

    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue

        def issue(message: str, qid: str | None = None) -> None:
            issues.append(DatasetIssue(name, no, message, qid))  # noqa: B023 (used inside the loop only)

        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            issue(f"invalid JSON ({exc.msg} at column {exc.colno}): line skipped")
            continue
        if not isinstance(rec, dict):
            issue(f"expected a JSON object, got {type(rec).__name__}: line skipped")
            continue
        qid = rec.get("id") if isinstance(rec.get("id"), str) else None
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            issue(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}: line skipped", qid)
            continue
        wrong = [f"{k} must be {t.__name__}" for k, t in (REQUIRED | OPTIONAL).items() if k in rec and not isinstance(rec[k], t)]
        if wrong:
            issue("wrong field type: " + "; ".join(wrong) + ": line skipped", qid)
            continue
        if not rec["id"].strip() or not rec["question"].strip():
            issue("empty id or question: line skipped", qid)
            continue
        if rec["type"] not in TYPES:
            issue(f"unknown type {rec['type']!r} (use one of {', '.join(TYPES)}): line skipped", qid)
            continue
        if rec["id"] in seen_ids:
            issue(f"duplicate id {rec['id']!r} (first on line {seen_ids[rec['id']]}): line skipped", qid)
            continue
        gold, facts = rec["gold_titles"], rec["key_facts"]
        if not all(isinstance(g, str) and g.strip() for g in gold) or not all(isinstance(f, str) and f.strip() for f in facts):
            issue("gold_titles and key_facts must be lists of non-empty strings: line skipped", qid)
            continue
        if rec.get("style") not in (None, *STYLES):
            issue(f"unknown style {rec['style']!r} (use {' or '.join(STYLES)}): line skipped", qid)
            continue
        if rec.get("split") not in (None, *SPLITS):
            issue(f"unknown split {rec['split']!r} (use {' or '.join(SPLITS)}): line skipped", qid)
            continue
        acceptable = rec.get("acceptable_titles", [])
        if not all(isinstance(a, str) and a.strip() for a in acceptable):
            issue("acceptable_titles must be a list of non-empty strings: line skipped", qid)
            continue
        if rec["type"] == "unanswerable" and gold:
            issue("unanswerable question has gold titles: line skipped", qid)
            continue
        if rec["type"] != "unanswerable" and not gold:
            issue(f"{rec['type']} question has no gold titles: line skipped", qid)
            continue
        extra = sorted(set(rec) - set(REQUIRED) - set(OPTIONAL))
        if extra:
            issue(f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(extra)} ignored", qid)

        resolved: list[str] = []
        seen_gold: set[str] = set()
        for g in gold:
            key = normalise_title(g)
            if key in seen_gold:
                issue(f"gold title listed twice: {g!r}", qid)
                continue
            seen_gold.add(key)
            if titles is None:
                resolved.append(g)
                continue
            found = titles.resolve(g)
            if found is None:
                near = titles.nearest(g)
                hint = f" (closest corpus title: {near!r})" if near else ""
                issue(f"gold title not in the corpus: {g!r}{hint}; counted as never retrieved", qid)
                resolved.append(g)
            else:
                resolved.append(found)
        acceptable_resolved = []
        for a in acceptable:
            if normalise_title(a) in seen_gold:
                issue(f"acceptable title is also gold: {a!r}", qid)
                continue
            found = titles.resolve(a) if titles is not None else a
            if found is None:
                issue(f"acceptable title not in the corpus: {a!r}", qid)
                found = a
            acceptable_resolved.append(found)
        seen_ids[rec["id"]] = no
        questions.append(
            Question(
                id=rec["id"],
                type=rec["type"],
                question=" ".join(rec["question"].split()),
                gold_titles=resolved,
                key_facts=list(facts),
                notes=rec.get("notes", ""),
                line=no,
                acceptable_titles=acceptable_resolved,
                style=rec.get("style"),
                split=rec.get("split"),
            )
        )

    if strict and issues:
        shown = "; ".join(str(i) for i in issues[:5])
        more = f" (and {len(issues) - 5} more)" if len(issues) > 5 else ""
        raise DatasetError(f"{len(issues)} dataset issue(s) with --strict: {shown}{more}")
    if not questions:
        first = f": first issue {issues[0]}" if issues else ""
        raise DatasetError(f"dataset {path} holds no usable questions{first}")
    return Dataset(name, hashlib.sha256(raw).hexdigest(), questions, issues)
