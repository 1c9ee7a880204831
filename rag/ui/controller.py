"""What the UI does, as plain Python: answering a chat turn (streamed), exporting the conversation,
the papers browser and the `/ask` API. `rag.ui.app` only lays out Gradio components and wires them
to these methods, so this module is tested directly, without a browser.

Turns are plain dicts (an `Answer.to_dict()` plus `scope`, `scope_title`, or `question` + `error`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from rag.answer import check_question
from rag.errors import ConfigError, RagError
from rag.retrieve import MODES
from rag.ui import render

log = logging.getLogger(__name__)

SCOPED_QUESTION = "What does this paper propose, and what are its main results?"
PAPER_ROWS = 300  # rows shown in the Papers table at once
TOP_K_MAX = 30
STREAM_INTERVAL_S = 0.05  # at most ~20 UI refreshes per second while tokens arrive


@dataclass
class ChatUpdate:
    """One refresh of the chat: the messages, the turns state, and optionally the sources panel, the
    question box text and the export file (None = leave that component as it is)."""

    messages: list[dict]
    turns: list[dict]
    sources_html: str | None = None
    question: str | None = None
    export: Path | None = None
    export_changed: bool = False


def friendly_error(exc: BaseException) -> str:
    """A one-line chat message for an exception: its own message if expected, else a generic one."""
    if isinstance(exc, RagError):
        return str(exc)
    return (
        f"Something went wrong while answering ({exc.__class__.__name__}). "
        "Please try again; the details are in the server log."
    )


class ChatController:
    """The UI's behaviour over an Assistant (rag.answer.Assistant or anything with its methods)."""

    def __init__(self, settings, assistant, export_dir: Path | None = None):
        self.settings = settings
        self.assistant = assistant
        self.default_mode = settings.mode
        self.default_k = min(settings.answer_top_k, TOP_K_MAX)
        self._export_dir = Path(export_dir or tempfile.mkdtemp(prefix="paper-rag-ui-"))
        self._export_dir.mkdir(parents=True, exist_ok=True)
        self._papers = {p.paper_id: p for p in assistant.papers()}
        self._sorted = render.filter_papers(self._papers, "")

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

    # -- chat ----------------------------------------------------------------------------------

    def respond(self, question, turns, scope, mode, top_k, answer_mode) -> Iterator[ChatUpdate]:
        """Answer one chat message: a pending turn, streamed text, then the verified answer and its sources."""
        turns = list(turns or [])
        scope = scope if scope in self._papers else None
        scope_title = self._papers[scope].title if scope else None
        raw = " ".join((question or "").split()) or (question or "")
        try:
            text = check_question(question, self.settings.max_question_chars)
        except RagError as exc:
            shown = raw[:300] + ("…" if len(raw) > 300 else "")
            turns.append({"question": shown, "error": str(exc)})
            # the text stays in the box so it can be shortened
            yield ChatUpdate(render.chat_messages(turns), turns, export=self.export(turns), export_changed=True)
            return

        pending = {"question": text, "streamed": ""}
        yield ChatUpdate(render.chat_messages(turns, pending), turns, question="")
        turn = None
        last = 0.0
        try:
            for event in self.assistant.ask_stream(
                text,
                history=render.history(turns),
                top_k=int(top_k or self.default_k),
                mode=mode if mode in MODES else self.default_mode,
                extractive=self.llm_available and answer_mode == "extractive",
                paper_ids=[scope] if scope else None,
            ):
                if event.kind == "stage":
                    pending["stage"] = event.text
                    yield ChatUpdate(render.chat_messages(turns, pending), turns)
                elif event.kind == "token":
                    pending["streamed"] += event.text
                    now = time.perf_counter()
                    if now - last >= STREAM_INTERVAL_S:
                        last = now
                        yield ChatUpdate(render.chat_messages(turns, pending), turns)
                elif event.kind == "reset":
                    pending["streamed"] = ""
                    pending["note"] = "The LLM failed mid-answer: switching to an extractive answer…"
                    yield ChatUpdate(render.chat_messages(turns, pending), turns)
                elif event.kind == "final" and event.answer is not None:
                    turn = event.answer.to_dict()
        except Exception as exc:  # the edge: a friendly chat message, never a traceback
            if not isinstance(exc, RagError):
                log.exception("answering failed")
            turn = {"question": text, "error": friendly_error(exc)}
        if turn is None:
            turn = {"question": text, "error": "No answer was produced. Please try again."}
        turn["scope"] = scope
        turn["scope_title"] = scope_title
        turns.append(turn)
        yield ChatUpdate(render.chat_messages(turns), turns, render.render_sources(turn, self._papers, len(turns)),
                         export=self.export(turns), export_changed=True)

    def export(self, turns) -> Path | None:
        """The conversation as a Markdown file (None when there is nothing to export)."""
        if not turns:
            return None
        name = f"paper-rag-chat-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(turns) % 10_000}.md"
        path = self._export_dir / name
        status = self.status().replace("**", "").replace("`", "")
        path.write_text(render.conversation_markdown(turns, status), encoding="utf-8")
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
        return render.render_paper(self._papers.get(pid) if pid else None)

    # -- API -----------------------------------------------------------------------------------

    def ask_api(self, question: str, mode: str | None = None, top_k: int | None = None, extractive: bool = False) -> dict:
        """The `/ask` endpoint's reply; raises RagError with a one-line message on bad input."""
        k = int(top_k) if top_k is not None else self.default_k
        if not 1 <= k <= TOP_K_MAX:
            raise ConfigError(f"top_k must be between 1 and {TOP_K_MAX}, got {top_k}")
        answer = self.assistant.ask(question, top_k=k, mode=mode or self.default_mode, extractive=bool(extractive))
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
        }
