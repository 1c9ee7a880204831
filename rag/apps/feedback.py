"""What users say about answers: thumbs up/down with an optional comment, appended to
`DATA_DIR/feedback.jsonl` with everything needed to reproduce the answer (question, answer, sources,
settings, index generation); and a draft evaluation dataset made from it (`rag feedback export`), so
real use grows the eval set after review.

One JSON object per line; a comment added later is a second line with the same `id` (the last wins).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from rag.errors import ConfigError

log = logging.getLogger(__name__)

FEEDBACK_FILE = "feedback.jsonl"
RATINGS = ("up", "down")
MAX_COMMENT = 2000


# Characters json.dumps(ensure_ascii=False) writes raw that a terminal acts on: DEL, C1 controls (U+0080-U+009F,
# e.g. the one-byte CSI U+009B), line and paragraph separators, and bidi marks, overrides and isolates.
_RAW_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def json_line(obj) -> str:
    """One JSON line, readable (non-ASCII text as is) but terminal-safe: characters a terminal would act on are
    written as \\uXXXX escapes (C0 controls already are), so `cat` or `head` of the file shows them, never obeys
    them; json.loads gives the same value back."""
    return _RAW_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False)) + "\n"


def feedback_path(settings) -> Path:
    return Path(settings.data_dir) / FEEDBACK_FILE


def feedback_id(turn: dict) -> str:
    """A stable id for one answer shown to one user (question, answer text and when it was made)."""
    key = json.dumps([turn.get("question"), turn.get("answer"), turn.get("answered_at")], ensure_ascii=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def record(path: Path, turn: dict, rating: str, comment: str | None = None, context: dict | None = None) -> dict:
    """Append one feedback line for `turn` (an Answer.to_dict() plus UI keys); returns the entry."""
    if rating not in RATINGS:
        raise ConfigError(f"feedback rating must be one of {', '.join(RATINGS)}, got {rating!r}")
    entry = {
        "id": feedback_id(turn),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rating": rating,
        "comment": (" ".join((comment or "").split())[:MAX_COMMENT]) or None,
        "question": turn.get("question"),
        "standalone_question": turn.get("standalone_question"),
        "answer": turn.get("answer"),
        "abstained": bool(turn.get("abstained")),
        "mode": turn.get("mode"),
        "citations": [{"n": c.get("n"), "paper_id": c.get("paper_id"), "title": c.get("title")}
                      for c in turn.get("citations") or []],
        "sources": [{"n": s.get("n"), "paper_id": s.get("paper_id"), "title": s.get("title")}
                    for s in turn.get("sources") or []],
        "possibly_related": [{"paper_id": p.get("paper_id"), "title": p.get("title")}
                             for p in turn.get("possibly_related") or []],
        "judgement": turn.get("judgement"),
        "notice": turn.get("notice"),
    } | (context or {})
    line = json_line(entry)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # several UI workers may append at once
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot save feedback to {path} ({exc.strerror or exc}): check that RAG_DATA_DIR is "
                          "writable") from None
    return entry


def load(path: Path) -> tuple[list[dict], list[str]]:
    """The feedback entries (merged by id, later lines win field by field) and problems with lines."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no feedback yet: {path} does not exist (rate answers in the UI with 👍 / 👎)")
    merged: dict[str, dict] = {}
    problems = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as exc:
                problems.append(f"{path}:{no}: invalid JSON ({exc}): line skipped")
                continue
            if not isinstance(entry, dict) or entry.get("rating") not in RATINGS or not entry.get("question"):
                problems.append(f"{path}:{no}: not a feedback entry: line skipped")
                continue
            old = merged.get(entry.get("id") or f"line-{no}", {})
            merged[entry.get("id") or f"line-{no}"] = old | {k: v for k, v in entry.items() if v is not None}
    return list(merged.values()), problems


def draft_dataset(entries: list[dict], ratings: tuple[str, ...] = RATINGS) -> list[dict]:
    """Draft eval-set lines (the rag/eval/dataset.py format) from feedback, every one marked for review.

    Rated up: the cited papers become the gold titles (or an unanswerable question, if it abstained).
    Rated down: the answer was wrong, so the draft flips it: an answer becomes a candidate unanswerable
    question, an abstention a question whose gold titles start from the closest papers. Either way the
    note says what to check; nothing here is ground truth until a person has read the abstracts.
    """
    from rag.answer.assistant import is_list_question
    from rag.text import is_keyword_query

    out, seen = [], set()
    for e in entries:
        if e["rating"] not in ratings:
            continue
        question = e.get("question") or ""
        qid = f"fb-{e.get('id') or hashlib.sha1(question.encode()).hexdigest()[:16]}"
        if qid in seen:
            continue
        seen.add(qid)
        cited = list(dict.fromkeys(c["title"] for c in e.get("citations") or [] if c.get("title")))
        related = list(dict.fromkeys(p["title"] for p in e.get("possibly_related") or [] if p.get("title")))
        kind = "list" if is_list_question(question) else "specific"
        if e["rating"] == "up":
            qtype, gold = ("unanswerable", []) if e.get("abstained") else (kind, cited)
            why = "rated up: check that the gold titles are all the papers that answer it"
        elif e.get("abstained"):
            qtype, gold = kind, related
            why = "rated down after an abstention: the gold titles are only the closest papers; replace them with the papers that answer it"
        else:
            qtype, gold = "unanswerable", []
            why = f"rated down: the answer cited {'; '.join(cited) or 'nothing'}; if the corpus does answer it, set type and gold_titles"
        if qtype != "unanswerable" and not gold:
            continue  # nothing to start from: not a valid line
        comment = f" Comment: {e['comment']}" if e.get("comment") else ""
        out.append({
            "id": qid, "type": qtype, "question": question, "gold_titles": gold, "key_facts": [],
            "acceptable_titles": [], "style": "terse" if is_keyword_query(question, 7) else "question",
            "split": "tune", "notes": f"DRAFT from feedback {e.get('time', '')}, {why}.{comment}",
        })
    return out
