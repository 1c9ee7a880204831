"""The LLM evidence step (PaperQA2's "RCS"): before answering, the LLM reads each candidate paper and
returns, as JSON, its relevance to the question (0-10), the abstract's supporting sentences (verbatim)
and a one- or two-sentence summary for this question. The answer is then written only from the papers
that pass, from their summaries and quotes.

Calls run in parallel (bounded), inside the answer's deadline, with the LLM client's transient-only
retries. A reply that is not valid JSON, has a score outside 0-10, or quotes text the abstract does not
contain makes that paper "not supporting", never an error. A reasoning block (`<think>…</think>`) before the
JSON is ignored; a score written as a string ("9") is read; a quote that is no evidence (a few words, or the
title) is dropped, so a paper whose quotes are all like that does not pass. Judgements are cached by (question, paper
content, model, prompt), so a re-run or a follow-up on the same papers does not pay again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.clients.reasoning import strip_reasoning
from rag.errors import LLMError
from rag.prompts import evidence_message
from rag.records import Paper

log = logging.getLogger(__name__)
_NUMBER = re.compile(r"\s*\d+(?:\.\d+)?\s*")
QUOTE_MIN_WORDS = 4  # a quote shorter than this ("the", "diffusion models") is not evidence
QUOTE_MIN_CHARS = 20
_MAX_OBJECTS = 50  # '{' positions tried when looking for the judgement in a chatty reply


@dataclass
class Judged:
    """One paper's evidence. `valid`: the reply parsed and its quotes are verbatim; `error`: the call failed."""

    paper_id: str
    title: str
    rank: int
    relevance: int = 0
    quotes: list[str] = field(default_factory=list)
    summary: str = ""
    valid: bool = False
    error: str | None = None
    cached: bool = False
    n: int = 0  # source number once it passed

    def passed(self, cut: int) -> bool:
        """Relevant enough, with a verbatim quote to show for it."""
        return self.valid and self.relevance >= cut and bool(self.quotes)

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("n",)}


@dataclass
class EvidenceResult:
    judged: list[Judged]
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ms: float = 0.0
    unanswered: int = 0  # calls that failed or ran past the deadline
    invalid: int = 0  # replies that did not parse or quoted what the abstract does not say

    def usable(self, max_invalid_share: float) -> bool:
        """False when the step as a whole failed: nothing judged, or most replies unusable (a weak model)."""
        answered = [j for j in self.judged if j.error is None]
        if not answered:
            return False
        return self.invalid / len(answered) <= max_invalid_share


def _normalise(text: str) -> str:
    return " ".join(text.split()).strip().strip("\"'").rstrip(".").strip()


def _judgement_object(reply: str) -> dict | None:
    """The first JSON object in the reply (reasoning blocks removed) that holds a "relevance"."""
    text = strip_reasoning(reply or "")
    decoder = json.JSONDecoder()
    at = text.find("{")
    for _ in range(_MAX_OBJECTS):
        if at < 0:
            return None
        try:
            obj, _end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and "relevance" in obj:
            return obj
        at = text.find("{", at + 1)
    return None


def _relevance(value) -> float | None:
    """A 0-10 score, from a number or a string holding one ("9")."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
        return None
    return value


def is_evidence(quote: str, title: str) -> bool:
    """A quote long enough to show something, and not the paper's title."""
    norm = _normalise(quote)
    return (len(norm) >= QUOTE_MIN_CHARS and len(norm.split()) >= QUOTE_MIN_WORDS
            and norm.casefold() not in _normalise(title).casefold())


def parse_judgement(reply: str, paper: Paper) -> tuple[int, list[str], str] | None:
    """(relevance, verbatim quotes, summary), or None when the reply is not a usable judgement."""
    obj = _judgement_object(reply)
    if obj is None:
        return None
    relevance = _relevance(obj.get("relevance"))
    if relevance is None:
        return None
    quotes = obj.get("quotes") or []
    if isinstance(quotes, str):
        quotes = [quotes]
    if not isinstance(quotes, list) or not all(isinstance(q, str) for q in quotes):
        return None
    text = _normalise(paper.abstract)
    kept = []
    for quote in quotes:
        if not _normalise(quote):
            continue
        if _normalise(quote) not in text and _normalise(quote) not in _normalise(paper.title):
            return None  # a quote the abstract does not contain: not supporting
        if is_evidence(quote, paper.title):
            kept.append(" ".join(quote.split()))
    summary = obj.get("summary") if isinstance(obj.get("summary"), str) else ""
    return int(round(relevance)), kept, " ".join(summary.split())[:600]


class EvidenceCache:
    """sqlite map key -> judgement JSON (only usable judgements are stored)."""

    def __init__(self, path: Path | None):
        self._db = None
        self._lock = threading.Lock()
        if path is None:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS evidence (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            log.warning("evidence cache %s unusable (%s): judging without it", path, exc)
            self._db = None

    def get(self, key: str) -> dict | None:
        if self._db is None:
            return None
        with self._lock:
            try:
                row = self._db.execute("SELECT value FROM evidence WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error:
                return None
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        if self._db is None:
            return
        with self._lock:
            try:
                with self._db:
                    self._db.execute("INSERT OR REPLACE INTO evidence VALUES (?, ?)", (key, json.dumps(value)))
            except sqlite3.Error as exc:
                log.warning("evidence cache write failed: %s", exc)


class EvidenceStep:
    """Judges candidate papers for a question with an LLM (rag.clients.chat.ChatModel)."""

    def __init__(self, llm, prompts, cache: EvidenceCache, concurrency: int = 4, model: str = ""):
        self._llm = llm
        self._prompts = prompts
        self._cache = cache
        self._concurrency = concurrency
        self._prompt_hash = hashlib.sha1(prompts["evidence"].text.encode()).hexdigest()[:12]
        self._model = model or getattr(llm, "name", "")

    def _key(self, question: str, paper: Paper) -> str:
        return hashlib.sha1(f"{question}\n{paper.content_hash()}\n{self._model}\n{self._prompt_hash}".encode()).hexdigest()

    def judge(self, question: str, papers: list[Paper], deadline: float, count_tokens=None,
              progress=None) -> EvidenceResult:
        """Judge `papers` (best first) for `question`; calls still running at `deadline` count as unanswered."""
        started = time.perf_counter()
        result = EvidenceResult([Judged(p.paper_id, p.title, i) for i, p in enumerate(papers, 1)])
        todo = []
        for judged, paper in zip(result.judged, papers):
            hit = self._cache.get(self._key(question, paper))
            if hit is not None:
                judged.relevance, judged.summary = hit["relevance"], hit["summary"]
                judged.quotes = [q for q in hit["quotes"] if is_evidence(q, paper.title)]  # cached by an older rule too
                judged.valid, judged.cached = True, True
            else:
                todo.append((judged, paper))
        lock = threading.Lock()

        def usage(prompt_tokens, completion_tokens):
            with lock:
                result.prompt_tokens += prompt_tokens or 0
                result.completion_tokens += completion_tokens or 0

        def one(judged: Judged, paper: Paper) -> None:
            messages = evidence_message(self._prompts, question, paper.title, paper.abstract)
            seen: dict = {}

            def note(p, c):
                seen.update(p=p, c=c)
                usage(p, c)

            reply = self._llm.complete(messages, deadline=deadline, on_usage=note)
            if count_tokens is not None and not seen.get("p"):  # the server reported no usage: count it
                usage(count_tokens(messages[0]["content"]), count_tokens(reply))
            parsed = parse_judgement(reply, paper)
            if parsed is None:
                with lock:
                    result.invalid += 1
                return
            judged.relevance, judged.quotes, judged.summary = parsed
            judged.valid = True
            self._cache.put(self._key(question, paper), {"relevance": judged.relevance, "quotes": judged.quotes,
                                                           "summary": judged.summary})

        if todo:
            pool = ThreadPoolExecutor(max_workers=min(self._concurrency, len(todo)), thread_name_prefix="evidence")
            futures = {pool.submit(one, j, p): j for j, p in todo}
            result.calls = len(todo)
            pending = set(futures)
            done_count = 0
            while pending:
                done, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
                if not done:
                    break  # the deadline passed
                for future in done:
                    done_count += 1
                    error = future.exception()
                    if error is not None:
                        futures[future].error = str(error) if isinstance(error, LLMError) else error.__class__.__name__
                        result.unanswered += 1
                if progress is not None:
                    progress(done_count, len(todo), sum(1 for j in result.judged if j.valid and j.relevance > 0))
            for future in pending:  # past the deadline
                future.cancel()
                futures[future].error = "did not finish within the deadline"
                result.unanswered += 1
            pool.shutdown(wait=False, cancel_futures=True)
        result.ms = round((time.perf_counter() - started) * 1000, 1)
        return result
