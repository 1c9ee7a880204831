"""What the UI does, as plain Python: answering a chat turn (streamed), exporting the conversation,
the papers browser and the `/ask` API. `rag.apps.ui.layout` lays out the Gradio components and
`rag.apps.ui.wiring` connects them to these methods, so this module is tested directly, without a browser.

Turns are plain dicts: an `Answer.to_dict()` (lean: see TURN_KEYS) plus the UI's keys (`scope`,
`scope_title`, `answered_at`, `settings`, `generation`, `feedback`), or `question` + `error`. They live
in the browser (gr.BrowserState), so everything read back is validated (restore_turns) and escaped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from rag.answer.assistant import check_question
from rag.apps import feedback
from rag.apps.ui import render
from rag.errors import ConfigError, RagError
from rag.retrieve.hybrid import MODES

log = logging.getLogger(__name__)

SCOPED_QUESTION = "What does this paper propose, and what are its main results?"
PAPER_ROWS = 300  # rows shown in the Papers table at once
TOP_K_MAX = 30
SIMILAR_PAPERS = 5
STREAM_INTERVAL_S = 0.05  # at most ~20 UI refreshes per second while tokens arrive


TURN_KEYS = frozenset((  # what a turn keeps in the browser (no abstracts, no evidence: they are large)
    "question", "answer", "mode", "abstained", "citations", "sources", "notice", "standalone_question",
    "possibly_related", "quotes", "judgement", "more_papers", "stages", "flagged", "error", "scope", "scope_title",
    "answered_at", "retrieval_mode", "settings", "generation", "feedback", "feedback_comment",
    "papers", "confidence", "referent", "names", "also_relevant",
))
MAX_TURNS = 50  # a restored conversation keeps at most this many turns


@dataclass
class ChatUpdate:
    """One refresh of the chat: the conversation HTML and the turns, and optionally the sources panel and
    the question box text (None = leave that component as it is); a final update also carries the export."""

    conversation: str
    turns: list[dict]
    sources_html: str | None = None
    question: str | None = None
    export: Path | None = None
    final: bool = False  # the turns changed: store them (in the browser) and refresh the export


@dataclass
class Action:
    """A click on a button inside the conversation or the sources (rag.apps.ui.render's data-action)."""

    action: str
    turn: int = 0
    arg: str = ""

    @classmethod
    def parse(cls, payload) -> "Action | None":
        try:
            data = json.loads(payload) if isinstance(payload, str) else dict(payload or {})
            return cls(str(data.get("action") or ""), int(data.get("turn") or 0), str(data.get("arg") or "")[:4000])
        except (TypeError, ValueError):
            return None


def friendly_error(exc: BaseException) -> str:
    """A one-line chat message for an exception: its own message if expected, else a generic one."""
    if isinstance(exc, RagError):
        return str(exc)
    return (
        f"Something went wrong while answering ({exc.__class__.__name__}). "
        "Please try again; the details are in the server log."
    )


def lean_turn(turn: dict) -> dict:
    """The part of a turn worth keeping in the browser's storage."""
    return {k: v for k, v in turn.items() if k in TURN_KEYS}


def restore_turns(value) -> list[dict]:
    """Turns read back from the browser: only well-formed ones (a page could hold anything)."""
    if not isinstance(value, list):
        return []
    out = []
    for turn in value[-MAX_TURNS:]:
        if not isinstance(turn, dict) or not isinstance(turn.get("question"), str):
            continue
        turn = lean_turn(turn)
        try:
            render.turn_html(turn, 1, {})  # renders, or it is dropped
        except Exception:  # noqa: BLE001 - malformed saved state is dropped, not shown
            log.info("dropped a malformed saved turn")
            continue
        out.append(turn)
    return out


class ChatController:
    """The UI's behaviour over an Assistant (rag.answer.assistant.Assistant or anything with its methods)."""

    def __init__(self, settings, assistant, export_dir: Path | None = None):
        self.settings = settings
        self.assistant = assistant
        self.default_mode = settings.mode
        self.default_k = min(settings.answer_top_k, TOP_K_MAX)
        self._export_dir = Path(export_dir or tempfile.mkdtemp(prefix="paper-rag-ui-"))
        self._export_dir.mkdir(parents=True, exist_ok=True)
        self._papers = {p.paper_id: p for p in assistant.papers()}
        self._sorted = render.filter_papers(self._papers, "")
        self.feedback_file = feedback.feedback_path(settings)

    # -- facts the layout needs --------------------------------------------------------------

    @property
    def llm_available(self) -> bool:
        return self.assistant.has_llm

    @property
    def papers(self) -> dict:
        return self._papers

    def status(self) -> str:
        """Which LLM and model (or extractive), index size and Chroma mode — no secrets."""
        if self.assistant.has_llm:
            base = self.settings.llm_base_url or "https://api.openai.com/v1"
            parsed = urlparse(base)
            where = f"{parsed.hostname}:{parsed.port}" if parsed.port else (parsed.hostname or base)
            answering = f"LLM `{render.md_text(self.settings.llm_model)}` at `{render.md_text(where)}`"
        else:
            answering = "extractive (no LLM configured)"
        info = self.assistant.index_info()
        stale = " · ⚠️ the corpus changed since the last ingest: run `rag ingest`" if info.get("stale") else ""
        return (f"**Answers:** {answering} · **Index:** {info.get('papers') or len(self._papers):,} papers · "
                f"**Chroma:** {info.get('chroma', 'embedded')}{stale}")

    # -- views -----------------------------------------------------------------------------------

    def conversation(self, turns, pending=None) -> str:
        return render.conversation_html(turns or [], self._papers, pending)

    def sources(self, turns, active: int | None = None) -> str:
        return render.sources_panel(turns or [], self._papers, active)

    def restore(self, saved) -> tuple[list[dict], str, str, Path | None, str | None]:
        """(turns, conversation html, sources html, export file, scope) for a page (re)load."""
        turns = restore_turns(saved)
        scope = turns[-1].get("scope") if turns and turns[-1].get("scope") in self._papers else None
        return turns, self.conversation(turns), self.sources(turns), self.export(turns), scope

    # -- chat ----------------------------------------------------------------------------------

    def respond(self, question, turns, scope, mode, top_k, answer_mode) -> Iterator[ChatUpdate]:
        """Answer one chat message: a pending turn, stages and streamed text, then the verified answer
        and its sources. An empty question changes nothing (the page blocks it too)."""
        turns = list(turns or [])
        if not (question or "").strip():
            return
        raw = " ".join((question or "").split()) or (question or "")
        try:
            text = check_question(question, self.settings.max_question_chars)
        except RagError as exc:
            shown = raw[:300] + ("…" if len(raw) > 300 else "")
            turns.append({"question": shown, "error": str(exc)})
            # the text stays in the box so it can be shortened
            yield ChatUpdate(self.conversation(turns), turns, export=self.export(turns), final=True)
            return
        yield from self._answer(text, turns, len(turns), render.history(turns), scope, mode, top_k, answer_mode,
                                clear_box=True, previous=_previous_papers(turns))

    def _answer(self, text, turns, at: int, history, scope, mode, top_k, answer_mode, clear_box=False,
                previous: list[str] | None = None) -> Iterator[ChatUpdate]:
        """Answer `text` into position `at` of `turns` (appending or replacing), streaming updates. `previous`: the
        papers of the answer before it, what a follow-up's "them" or "the second one" refers to."""
        scope = scope if scope in self._papers else None
        scope_title = self._papers[scope].title if scope else None
        mode = mode if mode in MODES else self.default_mode
        k = max(1, min(int(top_k or self.default_k), TOP_K_MAX))
        before = turns[:at]
        pending = {"question": text, "streamed": ""}
        yield ChatUpdate(self.conversation(before, pending), turns, question="" if clear_box else None)
        turn = None
        last = 0.0
        use_llm = self.llm_available and answer_mode != "extractive"
        try:
            for event in self.assistant.ask_stream(
                text, history=history, top_k=k, mode=mode, extractive=self.llm_available and not use_llm,
                paper_ids=[scope] if scope else None, previous=None if scope else previous,
            ):
                if event.kind == "stage":
                    pending["stage"] = event.text
                    yield ChatUpdate(self.conversation(before, pending), turns)
                elif event.kind == "token":
                    pending["streamed"] += event.text
                    now = time.perf_counter()
                    if now - last >= STREAM_INTERVAL_S:
                        last = now
                        yield ChatUpdate(self.conversation(before, pending), turns)
                elif event.kind == "reset":
                    pending["streamed"] = ""
                    pending["note"] = "The LLM failed mid-answer: switching to an extractive answer…"
                    yield ChatUpdate(self.conversation(before, pending), turns)
                elif event.kind == "final" and event.answer is not None:
                    turn = event.answer.to_dict()
        except Exception as exc:  # the edge: a friendly chat message, never a traceback
            if not isinstance(exc, RagError):
                log.exception("answering failed")
            turn = {"question": text, "error": friendly_error(exc)}
        if turn is None:
            turn = {"question": text, "error": "No answer was produced. Please try again."}
        turn = lean_turn(turn | {
            "scope": scope, "scope_title": scope_title, "retrieval_mode": None if scope else mode,
            "answered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {"mode": mode, "top_k": k, "answer_mode": "llm" if use_llm else "extractive",
                         "llm_model": self.settings.llm_model if use_llm else None},
            "generation": self.assistant.index_info().get("generation"),
        })
        turns = before + [turn] + turns[at + 1:]
        yield ChatUpdate(self.conversation(turns), turns, self.sources(turns, at + 1),
                         export=self.export(turns), final=True)

    def act(self, payload, turns, scope, mode, top_k, answer_mode) -> Iterator[ChatUpdate]:
        """The answering buttons: regenerate, ask-new (without the conversation), more (list every paper)."""
        action = Action.parse(payload)
        turns = list(turns or [])
        if action is None or not 1 <= action.turn <= len(turns) or action.action not in ("regenerate", "ask-new", "more"):
            return
        at = action.turn - 1
        turn = turns[at]
        if turn.get("error"):
            return
        question = turn["question"]
        scope = turn.get("scope") if turn.get("scope") in self._papers else None
        replace = at if at == len(turns) - 1 else len(turns)  # an earlier turn's rerun is appended
        history = render.history(turns[:at])
        previous = _previous_papers(turns[:at])
        if action.action == "ask-new":
            history, previous = [], None
        elif action.action == "more":
            shown = len(turn.get("citations") or [])
            top_k = min(TOP_K_MAX, max(int(top_k or self.default_k), shown + int(turn.get("more_papers") or 0)))
        yield from self._answer(question, turns, replace, history, scope, mode, top_k, answer_mode, previous=previous)

    def rate(self, payload, turns) -> tuple[list[dict], str | None]:
        """Thumbs up/down and comments: saved to DATA_DIR/feedback.jsonl. (turns, message or None)."""
        action = Action.parse(payload)
        turns = list(turns or [])
        if action is None or not 1 <= action.turn <= len(turns) or action.action not in ("up", "down", "comment"):
            return turns, None
        turn = dict(turns[action.turn - 1])
        if turn.get("error"):
            return turns, None
        rating = action.action if action.action != "comment" else turn.get("feedback")
        if rating not in feedback.RATINGS:
            return turns, "Rate the answer (👍 or 👎) before adding a comment."
        comment = action.arg.strip() if action.action == "comment" else None
        context = {"settings": turn.get("settings"), "generation": turn.get("generation"),
                   "answered_at": turn.get("answered_at"), "scope": turn.get("scope")}
        try:
            feedback.record(self.feedback_file, turn, rating, comment, context)
        except RagError as exc:
            return turns, str(exc)
        turn["feedback"] = rating
        if comment:
            turn["feedback_comment"] = comment
        turns[action.turn - 1] = turn
        return turns, None

    def export(self, turns) -> Path | None:
        """The conversation as a Markdown file (None when there is nothing to export)."""
        if not turns:
            return None
        # named by content: a page reload or a rating of the same conversation reuses the file
        key = hashlib.sha1(json.dumps(turns, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self._export_dir / f"paper-rag-chat-{key}.md"
        if not path.exists():
            status = self.status().replace("**", "").replace("`", "")
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(render.conversation_markdown(turns, status), encoding="utf-8")
            tmp.replace(path)
        return path

    def scope_note(self, scope) -> str | None:
        """The banner for a chat scoped to one paper, or None."""
        if scope not in self._papers:
            return None
        return (f"**Chat scoped to one paper:** {render.md_text(self._papers[scope].title)} — answers use only this "
                "paper (retrieval mode and top-k do not apply). Use *Clear scope* or *New chat* to search the whole corpus.")

    # -- papers tab ----------------------------------------------------------------------------

    @property
    def has_dates(self) -> bool:
        return any(p.date for p in self._papers.values())

    def paper_headers(self) -> list[str]:
        return ["Title", "Code", "Date"] if self.has_dates else ["Title", "Code"]

    def paper_rows(self, found) -> list[list[str]]:
        rows = []
        for p in found[:PAPER_ROWS]:
            code = ", ".join(render.short_url(u) for u in p.code_urls if render.safe_url(u))
            rows.append([p.title, code, p.date or ""] if self.has_dates else [p.title, code])
        return rows

    def count_text(self, found, query: str) -> str:
        shown = min(len(found), PAPER_ROWS)
        what = f"matching “{render.md_text(query.strip())}”" if query and query.strip() else "in the index"
        more = f" (showing the first {shown}; refine the search)" if len(found) > shown else ""
        return f"**{len(found):,}** papers {what}{more}. Click a row to see the abstract."

    def all_papers(self) -> list:
        return self._sorted

    def search_papers(self, query: str, code_only: bool) -> tuple[list[list[str]], list[str], str]:
        """(table rows, their paper ids, the count line) for the Papers tab filter."""
        found = render.filter_papers(self._papers, query or "", bool(code_only))
        return self.paper_rows(found), [p.paper_id for p in found[:PAPER_ROWS]], self.count_text(found, query)

    def pick_paper(self, ids, row_value=None, index=None) -> str | None:
        """The paper a table click selected: by the row's title (robust to re-sorting), else its position."""
        if row_value:
            by_title = {self._papers[i].title: i for i in ids or [] if i in self._papers}
            pid = by_title.get(row_value[0])
            if pid:
                return pid
        try:
            row = index[0] if isinstance(index, (list, tuple)) else int(index)
            pid = ids[row]
        except (TypeError, ValueError, IndexError):
            return None
        return pid if pid in self._papers else None

    def paper_html(self, pid) -> str:
        """The paper view with its nearest papers (by paper vector)."""
        paper = self._papers.get(pid) if pid else None
        similar = []
        if paper is not None:
            try:
                similar = self.assistant.similar_papers(pid, SIMILAR_PAPERS)
            except Exception as exc:  # noqa: BLE001 - the paper still shows; the list is a nicety
                log.warning("similar papers failed for %s: %s", pid, exc)
        return render.render_paper(paper, similar)

    # -- API -----------------------------------------------------------------------------------

    def ask_api(self, question: str, mode: str | None = None, top_k: int | None = None, extractive: bool = False,
                previous_paper_ids: list[str] | None = None) -> dict:
        """The `/ask` endpoint's reply; raises RagError with a one-line message on bad input. A follow-up passes
        the previous reply's `papers` as `previous_paper_ids`."""
        k = int(top_k) if top_k is not None else self.default_k
        if not 1 <= k <= TOP_K_MAX:
            raise ConfigError(f"top_k must be between 1 and {TOP_K_MAX}, got {top_k}")
        if previous_paper_ids is not None and not (isinstance(previous_paper_ids, list)
                                                   and all(isinstance(p, str) for p in previous_paper_ids)):
            raise ConfigError("previous_paper_ids must be a list of paper ids (the previous reply's \"papers\")")
        answer = self.assistant.ask(question, top_k=k, mode=mode or self.default_mode, extractive=bool(extractive),
                                    previous=list(previous_paper_ids) if previous_paper_ids else None)
        if answer is None:
            raise RagError("no answer was produced")
        return {
            "answer": answer.answer,
            "citations": [c["title"] for c in answer.citations],
            "references": [{"n": c["n"], "title": c["title"], "paper_id": c["paper_id"]} for c in answer.citations],
            "abstained": answer.abstained,
            "possibly_related": [p["title"] for p in answer.possibly_related],
            "mode": answer.mode,
            "notice": answer.notice,
            "standalone_question": answer.standalone_question,
            "confidence": answer.confidence(),
            "papers": answer.papers(),
            "referent": answer.referent,
        }


def _previous_papers(turns: list[dict]) -> list[str] | None:
    """The papers of the last answered turn (an error turn answers nothing): what a follow-up refers to."""
    for turn in reversed(turns):
        if not turn.get("error"):
            papers = turn.get("papers")
            return [p for p in papers if isinstance(p, str)] or None if isinstance(papers, list) else None
    return None
