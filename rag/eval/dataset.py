"""Load an evaluation dataset (JSONL) and check every gold title against the corpus.

One JSON object per line; only `question` is required::

    {"question", "gold_titles": [corpus titles; empty for unanswerable], "reference": "an answer in words",
     "key_facts": [...], "id", "type": "list"|"specific"|"paraphrase"|"unanswerable"|"multi_hop",
     "acceptable_titles": [near misses: citing them counts neither way], "style": "terse"|"question",
     "split": "tune"|"test", "notes"}

A missing id is derived from the question; a missing type is inferred as the answerer decides it (a list
question or a specific one: rag.answer.assistant.is_list_question) and reported as inferred. A question
with neither gold titles, a reference nor key facts is scored only on what needs no gold (citation
validity, verbatim support, latency).

Problems are collected as `DatasetIssue`s (file, line, message) rather than raised: a malformed line
is skipped (`skipped=True`; `rag eval` fails on skipped lines unless --allow-skips), a gold title that is
not in the corpus is kept (it can never be retrieved, so it counts as a miss) and reported with the closest
corpus title. `strict=True` turns any issue into a `DatasetError`; a dataset whose gold titles mostly match
no corpus title is a `DatasetError` (it was written for another index).
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
REQUIRED = {"question": str}
OPTIONAL = {"id": str, "type": str, "gold_titles": list, "key_facts": list, "reference": str, "notes": str,
            "acceptable_titles": list, "style": str, "split": str}
# Fields of RAGAS samples (legacy and SingleTurnSample names): `rag eval import --format ragas` reads them.
RAGAS_FIELDS = ("user_input", "ground_truth", "ground_truths", "contexts", "reference_contexts", "retrieved_contexts",
                "answer", "response")
IMPORT_HINT = "convert the file with `rag eval import {path} --format {fmt} --out DATASET.jsonl`"
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
    skipped: bool = False  # the line was left out of the evaluation

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" + (f" ({self.id})" if self.id else "")
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"line": self.line, "id": self.id, "message": self.message, "skipped": self.skipped}


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
    reference: str | None = None  # a reference answer in words
    type_inferred: bool = False  # no type in the file: list or specific, as the answerer decides

    @property
    def answerable(self) -> bool:
        return self.type != "unanswerable"

    @property
    def graded(self) -> bool:
        """Whether there is anything to grade the answer against (gold papers, a reference or key facts);
        an ungraded question is scored only on what needs no gold."""
        return not self.answerable or bool(self.gold_titles or self.reference or self.key_facts)

    @property
    def gold_keys(self) -> set[str]:
        return {normalise_title(t) for t in self.gold_titles}


@dataclass
class Dataset:
    path: str
    sha256: str
    questions: list[Question]
    issues: list[DatasetIssue]
    lines: int = 0  # non-empty lines read

    def skipped(self) -> list[DatasetIssue]:
        return [i for i in self.issues if i.skipped]

    def inferred(self) -> dict[str, int]:
        c = Counter(q.type for q in self.questions if q.type_inferred)
        return {t: c[t] for t in TYPES if c[t]}

    def skip_message(self) -> str | None:
        """"skipped N of M lines (first: file:line: reason)", or None when no line was skipped."""
        skipped = self.skipped()
        if not skipped:
            return None
        return f"skipped {len(skipped)} of {self.lines} lines (first: {skipped[0]})"

    def counts(self) -> dict[str, int]:
        c = Counter(q.type for q in self.questions)
        return {t: c[t] for t in TYPES if c[t]}

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "questions": len(self.questions),
            "types": self.counts(),
            "inferred_types": self.inferred(),
            "lines": self.lines,
            "skipped": len(self.skipped()),
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


def question_id(question: str) -> str:
    """The id of a line that gives none: stable for the same question (whitespace and case aside)."""
    return "q-" + hashlib.sha1(" ".join(question.casefold().split()).encode("utf-8")).hexdigest()[:10]


def infer_type(question: str) -> str:
    """List or specific, decided the way the answerer decides it (never from anything else in the line)."""
    from rag.answer.assistant import is_list_question

    return "list" if is_list_question(question) else "specific"


def load_dataset(path: Path | str, corpus_titles: Iterable[str] | None = None, strict: bool = False,
                 index_name: str | None = None) -> Dataset:
    """Parse `path`; with `corpus_titles`, check each gold title against them (normalised match).

    `index_name` (e.g. the data dir) is named in the error when most gold titles match no corpus title."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        raise DatasetError(f"dataset {path} is a CSV file; `rag eval` reads JSONL: "
                           + IMPORT_HINT.format(path=path, fmt="csv"))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset {path} is not UTF-8 (byte {exc.start})") from None
    name = str(path)
    titles = TitleIndex(corpus_titles) if corpus_titles is not None else None
    issues: list[DatasetIssue] = []
    questions: list[Question] = []
    seen_ids: dict[str, int] = {}
    lines = 0
    checked = unmatched = 0  # gold titles checked against the corpus, and those not found

    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1

        def issue(message: str, qid: str | None = None, skipped: bool = False) -> None:
            suffix = ": line skipped" if skipped else ""
            issues.append(DatasetIssue(name, no, message + suffix, qid, skipped))  # noqa: B023 (used inside the loop only)

        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if "," in line and not line.lstrip().startswith(("{", "[")):
                hint = " (this looks like CSV: " + IMPORT_HINT.format(path=path, fmt="csv") + ")"
            issue(f"invalid JSON ({exc.msg} at column {exc.colno}){hint}", skipped=True)
            continue
        if not isinstance(rec, dict):
            issue(f"expected a JSON object, got {type(rec).__name__}", skipped=True)
            continue
        qid = rec.get("id") if isinstance(rec.get("id"), str) else None
        ragas = [k for k in RAGAS_FIELDS if k in rec]
        if ragas:
            issue(f"RAGAS field{'s' if len(ragas) > 1 else ''} {', '.join(ragas)} (not read by `rag eval`): "
                  + IMPORT_HINT.format(path=path, fmt="ragas"), qid, skipped=True)
            continue
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            issue(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}", qid, skipped=True)
            continue
        wrong = [f"{k} must be {t.__name__}" for k, t in (REQUIRED | OPTIONAL).items()
                 if k in rec and (rec[k] is not None or k in REQUIRED) and not isinstance(rec[k], t)]
        if wrong:
            issue("wrong field type: " + "; ".join(wrong), qid, skipped=True)
            continue
        question = " ".join(rec["question"].split())
        if not question or ("id" in rec and not (rec["id"] or "").strip()):
            issue("empty id or question", qid, skipped=True)
            continue
        qtype = rec.get("type")
        if qtype is not None and qtype not in TYPES:
            issue(f"unknown type {qtype!r} (use one of {', '.join(TYPES)})", qid, skipped=True)
            continue
        qid = rec.get("id") or question_id(question)
        if qid in seen_ids:
            what = f"duplicate id {qid!r}" if rec.get("id") else "duplicate question"
            issue(f"{what} (first on line {seen_ids[qid]})", qid, skipped=True)
            continue
        gold, facts = rec.get("gold_titles") or [], rec.get("key_facts") or []
        reference = (rec.get("reference") or "").strip() or None
        if not all(isinstance(g, str) and g.strip() for g in gold) or not all(isinstance(f, str) and f.strip() for f in facts):
            issue("gold_titles and key_facts must be lists of non-empty strings", qid, skipped=True)
            continue
        if rec.get("style") not in (None, *STYLES):
            issue(f"unknown style {rec['style']!r} (use {' or '.join(STYLES)})", qid, skipped=True)
            continue
        if rec.get("split") not in (None, *SPLITS):
            issue(f"unknown split {rec['split']!r} (use {' or '.join(SPLITS)})", qid, skipped=True)
            continue
        acceptable = rec.get("acceptable_titles") or []
        if not all(isinstance(a, str) and a.strip() for a in acceptable):
            issue("acceptable_titles must be a list of non-empty strings", qid, skipped=True)
            continue
        if qtype == "unanswerable" and (gold or reference):
            issue("unanswerable question has gold titles or a reference", qid, skipped=True)
            continue
        if qtype not in (None, "unanswerable") and "gold_titles" in rec and not gold and not reference:
            issue(f"{qtype} question has no gold titles (give them or a reference; or leave gold_titles out "
                  "to score it without gold)", qid, skipped=True)
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
            checked += 1
            found = titles.resolve(g)
            if found is None:
                unmatched += 1
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
        seen_ids[qid] = no
        questions.append(
            Question(
                id=qid,
                type=qtype or infer_type(question),
                question=question,
                gold_titles=resolved,
                key_facts=list(facts),
                notes=rec.get("notes") or "",
                line=no,
                acceptable_titles=acceptable_resolved,
                style=rec.get("style"),
                split=rec.get("split"),
                reference=reference,
                type_inferred=qtype is None,
            )
        )

    if checked and unmatched * 2 > checked:
        where = f" {index_name}" if index_name else ""
        first = next(i for i in issues if "gold title not in the corpus" in i.message)
        raise DatasetError(f"{unmatched} of {checked} gold titles in {path} match no paper of the index{where} "
                           f"({len(titles)} papers): the dataset was written for another corpus, or this is the wrong "
                           f"index (--data-dir / RAG_DATA_DIR); first: {first}")
    if strict and issues:
        shown = "; ".join(str(i) for i in issues[:5])
        more = f" (and {len(issues) - 5} more)" if len(issues) > 5 else ""
        raise DatasetError(f"{len(issues)} dataset issue(s) with --strict: {shown}{more}")
    if not questions:
        first = f": first issue {issues[0]}" if issues else ""
        raise DatasetError(f"dataset {path} holds no usable questions{first}")
    return Dataset(name, hashlib.sha256(raw).hexdigest(), questions, issues, lines)


def write_dataset(lines: list[dict], out: Path, corpus_titles: Iterable[str]) -> None:
    """Write dataset lines to `out` atomically, after checking that every line loads (none skipped)."""
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        skipped = load_dataset(tmp, corpus_titles).skipped()
        if skipped:  # a bug of the writer, not of the user's file
            raise DatasetError(f"a written line would be skipped ({skipped[0].message}): nothing written to {out}")
        tmp.replace(out)
    except OSError as exc:
        raise DatasetError(f"cannot write {out}: {exc.strerror or exc}: choose another --out") from None
    finally:
        tmp.unlink(missing_ok=True)
