"""The page's events: the Gradio handlers (thin adapters over `ChatController`) and `wire`, which connects
the components of `rag.apps.ui.layout` to them. `/ask` is the only public endpoint; every other event is
private to the page."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gradio as gr

from rag.apps.ui import render
from rag.apps.ui.controller import (
    SCOPED_QUESTION,
    TOP_K_MAX,
    Action,
    ChatController,
    ChatUpdate,
    friendly_error,
)
from rag.apps.ui.layout import Components
from rag.errors import RagError
from rag.retrieve.hybrid import MODES

log = logging.getLogger(__name__)

STOP_SETTLE_S = 0.5  # after Stop, when the conversation is drawn again (see `Handlers.settle`)
PRIVATE = {"api_visibility": "private"}


class Handlers:
    """What each event does, in Gradio's terms (component updates, `gr.skip()`); the decisions are the
    controller's."""

    def __init__(self, ctl: ChatController, settings):
        self.ctl = ctl
        self.settings = settings

    def respond(self, question, turns, scope, mode, top_k, answer_mode):
        for update in self.ctl.respond(question, turns, scope, mode, top_k, answer_mode):
            yield _outputs(update)

    def act(self, turns, scope, mode, top_k, answer_mode, evt: gr.EventData):
        payload = (getattr(evt, "_data", None) or {}).get("value")
        for update in self.ctl.act(payload, turns, scope, mode, top_k, answer_mode):
            yield _outputs(update)

    def busy(self, question=None):
        if question is not None and not str(question).strip():
            return gr.skip(), gr.skip()
        return gr.Button(visible=False), gr.Button(visible=True)

    def idle(self):
        return gr.Button(visible=True), gr.Button(visible=False)

    def stopped(self, turns):
        """Stop: Send back, and the conversation without the unfinished turn."""
        return (*self.idle(), self.ctl.conversation(turns))

    def settle(self, turns):
        """The conversation drawn once more after Stop. A streamed update already on its way when the run is
        cancelled can land after Stop's render and bring the unfinished turn back (seen on a loaded
        machine); the cancelled run sends nothing after this."""
        time.sleep(STOP_SETTLE_S)
        return self.ctl.conversation(turns)

    def reset(self):
        """New chat / Clear: history, sources, export, scope and the saved state, together."""
        return ([], self.ctl.conversation([]), render.EMPTY_SOURCES, None,
                gr.DownloadButton(value=None, interactive=False), "")

    def clear_scope(self):
        return None

    def save_settings(self, mode, top_k, answer_mode):
        return {"mode": mode, "top_k": top_k, "answer_mode": answer_mode}

    def restore(self, saved_turns, saved_settings):
        turns, conv, sources_html, export, scope = self.ctl.restore(saved_turns)
        mode_v, k_v, answer_v = _restore_settings(saved_settings, self.settings.mode, self.ctl.default_k,
                                                  self.ctl.llm_available)
        return (turns, conv, sources_html, gr.DownloadButton(value=str(export) if export else None,
                                                             interactive=bool(export)),
                scope, mode_v, k_v, answer_v)

    def quick(self, turns, evt: gr.SelectData):
        """Ratings, comments and "open paper" clicks from the conversation or the sources."""
        action = Action.parse(evt.value)
        if action is None:
            return (gr.skip(),) * 6
        if action.action == "open-paper":
            return (gr.skip(), gr.skip(), *self.open_paper(action.arg))
        new_turns, message = self.ctl.rate(evt.value, turns)
        if message:
            gr.Warning(message)
            return (gr.skip(),) * 6
        return (new_turns, self.ctl.conversation(new_turns), gr.skip(), gr.skip(), gr.skip(), gr.skip())

    def open_paper(self, pid):
        if pid not in self.ctl.papers:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return gr.Tabs(selected="papers"), self.ctl.paper_html(pid), pid, gr.Button(interactive=True)

    def open_similar(self, evt: gr.SelectData):
        action = Action.parse(evt.value)
        return self.open_paper(action.arg if action and action.action == "open-paper" else None)[1:]

    def scope_banner(self, scope):
        note = self.ctl.scope_note(scope)
        return gr.Markdown(note or "", visible=bool(note)), gr.Button(visible=bool(note))

    def search_papers(self, query, code_only):
        return self.ctl.search_papers(query, code_only)

    def select_paper(self, ids, evt: gr.SelectData):
        pid = self.ctl.pick_paper(ids, getattr(evt, "row_value", None), evt.index)
        return self.ctl.paper_html(pid), pid, gr.Button(interactive=pid is not None)

    def ask_about(self, pid):
        if pid not in self.ctl.papers:
            raise gr.Error("Select a paper in the table first.")
        # a fresh conversation scoped to this paper; the question is asked right away (see .then in `wire`)
        return (gr.Tabs(selected="chat"), pid, [], self.ctl.conversation([]), SCOPED_QUESTION, render.EMPTY_SOURCES,
                gr.DownloadButton(value=None, interactive=False))


def ask_endpoint(ctl: ChatController, settings) -> Callable[..., dict]:
    """The `/ask` API function. A plain function, not a method: Gradio documents the endpoint from its
    signature and docstring, and the defaults shown there are this server's."""

    def ask(question: str, mode: str = settings.mode, top_k: int = ctl.default_k, extractive: bool = False,
            previous_paper_ids: list[str] | None = None) -> dict:
        """Answer a question about the indexed papers, with cited paper titles.

        Args:
            question: the question.
            mode: retrieval mode, one of hybrid, dense, bm25.
            top_k: papers given to the answerer (1-30).
            extractive: answer with sentences quoted from the abstracts even if an LLM is configured.
            previous_paper_ids: the previous answer's "papers", for a follow-up ("which of them …", "the second one").
        Returns:
            {"answer", "citations" (cited titles), "references" ([{n, title, paper_id}]), "abstained",
             "possibly_related" (titles), "mode", "notice", "standalone_question", "confidence" ({level, reason}),
             "papers" (ids, cited first: pass them back as previous_paper_ids), "referent"}
        """
        try:
            return ctl.ask_api(question, mode, top_k, extractive, previous_paper_ids)
        except Exception as exc:  # clients get a one-line message, never a traceback
            if not isinstance(exc, RagError):
                log.exception("/ask failed")
            raise gr.Error(friendly_error(exc), print_exception=False) from None

    return ask


def wire(app: gr.Blocks, ui: Components, on: Handlers, *, ask: Callable[..., dict], concurrency: int,
         reload_eval: Callable[[], tuple[str, str, str]]) -> None:
    """Connect the events, inside the caller's `with app:`. `concurrency` answers run at once in total."""
    chat_inputs = [ui.question, ui.turns_state, ui.scope_state, ui.mode, ui.top_k, ui.answer_mode]
    chat_outputs = [ui.conv, ui.turns_state, ui.sources, ui.question, ui.download]
    # every answering event shares one concurrency group: `concurrency` answers at once in total
    answering = {"concurrency_id": "answer", "concurrency_limit": concurrency}
    toggles = {"outputs": [ui.send, ui.stop], "queue": False, **PRIVATE}
    quick = {"queue": False, **PRIVATE}
    runs = []  # every answering run, for Stop to cancel

    for trigger_evt in (ui.question.submit, ui.send.click):
        started = trigger_evt(on.busy, ui.question, **toggles)
        run = started.then(on.respond, chat_inputs, chat_outputs, **answering, **PRIVATE)
        run.then(on.idle, None, **toggles)
        runs.append(run)
    # two listeners on the button event (a `.then` step would not receive the click's payload)
    ui.conv.submit(on.busy, None, **toggles)
    action_run = ui.conv.submit(on.act, [ui.turns_state, ui.scope_state, ui.mode, ui.top_k, ui.answer_mode],
                                chat_outputs, **answering, **PRIVATE)
    action_run.then(on.idle, None, **toggles)
    runs.append(action_run)
    quick_outputs = [ui.turns_state, ui.conv, ui.tabs, ui.paper_html, ui.selected_state, ui.ask_paper]
    ui.conv.select(on.quick, ui.turns_state, quick_outputs, **quick)
    ui.sources.select(on.quick, ui.turns_state, quick_outputs, **quick)
    ui.paper_html.select(on.open_similar, None, [ui.paper_html, ui.selected_state, ui.ask_paper], **quick)

    banner = {"fn": on.scope_banner, "inputs": ui.scope_state, "outputs": [ui.scope_md, ui.clear_scope_btn], **quick}
    reset_outputs = [ui.turns_state, ui.conv, ui.sources, ui.scope_state, ui.download, ui.question]
    for button in (ui.new_btn, ui.clear_btn):
        button.click(on.reset, None, reset_outputs, **quick).then(**banner)
    ui.clear_scope_btn.click(on.clear_scope, None, ui.scope_state, **quick).then(**banner)
    for control in (ui.mode, ui.top_k, ui.answer_mode):
        control.change(on.save_settings, [ui.mode, ui.top_k, ui.answer_mode], ui.settings_state, **quick)
    app.load(on.restore, [ui.turns_state, ui.settings_state],
             [ui.turns_state, ui.conv, ui.sources, ui.download, ui.scope_state, ui.mode, ui.top_k, ui.answer_mode],
             **quick).then(**banner)

    search_io = {"fn": on.search_papers, "inputs": [ui.paper_query, ui.code_only],
                 "outputs": [ui.table, ui.ids_state, ui.paper_count], "concurrency_limit": None, **PRIVATE}
    ui.paper_query.submit(**search_io)
    ui.paper_search.click(**search_io)
    ui.code_only.change(**search_io)
    ui.table.select(on.select_paper, ui.ids_state, [ui.paper_html, ui.selected_state, ui.ask_paper],
                    concurrency_limit=None, **PRIVATE)
    ask_evt = ui.ask_paper.click(on.ask_about, ui.selected_state,
                                 [ui.tabs, ui.scope_state, ui.turns_state, ui.conv, ui.question, ui.sources,
                                  ui.download], **quick)
    scoped_run = ask_evt.success(**banner).then(on.busy, None, **toggles).then(
        on.respond, chat_inputs, chat_outputs, **answering, **PRIVATE)
    scoped_run.then(on.idle, None, **toggles)
    runs.append(scoped_run)

    # Stop cancels every answering run, so it is registered after all of them.
    ui.stop.click(on.stopped, ui.turns_state, [ui.send, ui.stop, ui.conv], cancels=runs, **quick).then(
        on.settle, ui.turns_state, ui.conv, **quick)
    ui.refresh.click(reload_eval, None, [ui.eval_head, ui.eval_imgs, ui.eval_full], **quick)

    gr.api(ask, api_name="ask", **answering)


def _outputs(update: ChatUpdate) -> tuple:
    """A ChatUpdate as the chat event's outputs: conversation, turns, sources, question box, export button."""
    export = gr.skip()
    if update.final:
        export = gr.DownloadButton(value=str(update.export) if update.export else None, interactive=bool(update.export))
    return (
        update.conversation,
        update.turns if update.final else gr.skip(),
        update.sources_html if update.sources_html is not None else gr.skip(),
        update.question if update.question is not None else gr.skip(),
        export,
    )


def _restore_settings(saved, default_mode: str, default_k: int, llm: bool) -> tuple[str, int, str]:
    """(mode, top_k, answer mode) from the browser's saved settings, each checked, else the defaults."""
    saved = saved if isinstance(saved, dict) else {}
    mode = saved.get("mode") if saved.get("mode") in MODES else default_mode
    try:
        k = int(saved.get("top_k"))
        k = k if 1 <= k <= TOP_K_MAX else default_k
    except (TypeError, ValueError):
        k = default_k
    answer_mode = saved.get("answer_mode") if llm and saved.get("answer_mode") in ("llm", "extractive") else (
        "llm" if llm else "extractive")
    return mode, k, answer_mode
