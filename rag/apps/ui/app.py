"""The Gradio web UI: layout and wiring only. Behaviour lives in `rag.apps.ui.controller` (plain Python).

`build_app(settings)` returns the Blocks (queue configured); `launch(settings)` serves it on
`settings.ui_host:ui_port` (loopback unless configured otherwise). Scripts use the `/ask` endpoint::

    from gradio_client import Client
    Client("http://127.0.0.1:7860").predict("which papers erase concepts in diffusion models?", api_name="/ask")
    # -> {"answer": ..., "citations": [titles], "abstained": False, "mode": "extractive", "notice": ..., ...}
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import secrets
import time
import warnings
from datetime import datetime
from pathlib import Path

import gradio as gr

from rag.apps.ui import render, security
from rag.apps.ui.controller import (
    SCOPED_QUESTION,
    TOP_K_MAX,
    Action,
    ChatController,
    ChatUpdate,
    friendly_error,
)
from rag.errors import ConfigError, RagError
from rag.retrieve.hybrid import MODES
from rag.settings import repo_root

log = logging.getLogger(__name__)

EXAMPLES = [
    "which papers erase concepts in diffusion models?",
    "How can large language models be made to reason step by step?",
    "sparse autoencoders for interpretability",
    "Which papers propose benchmarks for evaluating multimodal models?",
]
CONVERSATION_HEIGHT = "min(60vh, 640px)"  # the input stays on screen at 390×844 too
STOP_SETTLE_S = 0.5  # after Stop, when the conversation is drawn again (see the Stop handler)
NO_LLM_REASON = "no LLM endpoint configured: set RAG_LLM_BASE_URL"
MAKE_EVAL_HINT = (
    "No evaluation report yet. Produce one with `make eval`, or:\n\n"
    "```bash\nrag eval --dataset eval/datasets/dev.jsonl --answer extractive --out eval/reports/latest\n```"
)

CSS = """
.rag-status { font-size: 0.9em; opacity: 0.85; }
#rag-conv { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: .2em .8em; }
.rag-conv-empty { opacity: .7; padding: 1.2em .2em; }
.rag-turn { padding: .6em 0; border-bottom: 1px solid var(--border-color-primary); }
.rag-turn:last-child { border-bottom: none; }
.rag-q { font-weight: 600; margin-bottom: .35em; }
.rag-q::before { content: "Q: "; opacity: .55; }
.rag-answer p { margin: .3em 0; }
.rag-stage { font-style: italic; opacity: .8; }
.rag-stage::after { content: " ⏳"; }
.rag-searched, .rag-notice, .rag-more, .rag-related, .rag-stages, .rag-flag, .rag-comment { font-size: .88em; margin: .3em 0; }
.rag-notice, .rag-stages { opacity: .85; }
.rag-flag { color: #b45309; }
.rag-conf { display: inline-block; font-size: .78em; padding: 0 .5em; border-radius: 999px; margin-bottom: .2em;
            border: 1px solid var(--border-color-primary); cursor: help; }
.rag-conf-high { background: #dcfce7; color: #166534; }
.rag-conf-medium { background: #fef9c3; color: #854d0e; }
.rag-conf-low { background: #fee2e2; color: #991b1b; }
a.rag-cite { color: var(--color-accent); font-weight: 600; text-decoration: none; cursor: pointer; }
a.rag-cite:hover { text-decoration: underline; }
.rag-actions { display: flex; gap: .35em; flex-wrap: wrap; margin-top: .35em; }
.rag-btn { font-size: .82em; padding: .1em .6em; border-radius: 6px; border: 1px solid var(--border-color-primary);
           background: var(--background-fill-secondary); cursor: pointer; }
.rag-btn.rag-on, .rag-btn.active { background: var(--color-accent); color: white; }
.rag-comment textarea { width: 100%; margin: .25em 0; }
.rag-inline-sources { display: none; margin-top: .4em; }
.rag-sources h3 { margin: 0 0 .4em 0; }
.rag-sources h3 small { font-weight: normal; opacity: .7; }
.rag-turn-src { display: none; }
.rag-turn-src.active { display: block; }
.rag-src-nav { margin-bottom: .5em; font-size: .9em; }
.rag-src { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: .55em .7em; margin: 0 0 .6em 0; }
.rag-src.rag-target { outline: 3px solid var(--color-accent); outline-offset: 1px; }
.rag-src.rag-target mark.rag-mark { background: #fbbf24; }
.rag-src-title { font-weight: 600; margin-bottom: .25em; }
.rag-n { color: var(--color-accent); margin-right: .2em; }
.rag-snippet { font-size: .92em; line-height: 1.45; }
.rag-snippet mark.rag-mark { background: #fde68a; color: inherit; padding: 0 .1em; border-radius: 2px; }
.rag-snippet mark.rag-approx { background: #e0e7ff; }
.rag-meta { font-size: .82em; opacity: .8; margin-top: .3em; word-break: break-all; }
.rag-scores { font-size: .95em; }
.rag-abstain-note, .rag-scope-note { font-style: italic; }
.rag-uncited { font-size: .85em; opacity: .85; }
.rag-paper-title { margin-top: 0; }
.rag-abstract { line-height: 1.5; }
.rag-similar ol { margin: .2em 0 0 1.2em; }
.rag-eval-images img { max-width: 100%; margin: .5em 0; border: 1px solid var(--border-color-primary); }
#rag-input-row, #rag-tools-row { flex-wrap: nowrap; align-items: stretch; }
#rag-tools-row > * { min-width: 0 !important; }
a.rag-cite, .rag-answer sup a { padding: 0 !important; margin: 0 !important; }
#rag-input-row > * { min-width: 0; }
@media (max-width: 900px) {
  #rag-side { display: none !important; }
  .rag-inline-sources { display: block; }
  #rag-title h1 { font-size: 1.3em; margin: 0; }
  #rag-title p, .rag-status { display: none; }
}
"""

# The page's behaviour in the browser, attached to the conversation and the sources (event delegation on
# the component, so it survives re-renders). Citations and the sources of earlier answers are shown
# without a server round trip; buttons that change state go to Python as `select` (quick: ratings, open
# a paper) or `submit` (answering: regenerate, ask as new, more) events with a JSON payload.
SHARED_JS = r"""
window.ragShowSource = window.ragShowSource || function (t, n) {
  const side = document.querySelector('#rag-side');
  const narrow = !side || side.offsetParent === null;
  document.querySelectorAll('.rag-target').forEach(e => e.classList.remove('rag-target'));
  let card = null;
  if (!narrow) {
    window.ragShowTurn(t);
    card = document.getElementById(`src-${t}-${n}`);
  }
  if (!card) {
    const det = document.querySelector(`#turn-${t} details.rag-inline-sources`);
    if (det) det.open = true;
    card = document.getElementById(`src-${t}-${n}-m`);
  }
  if (!card) return;
  card.classList.add('rag-target');
  card.scrollIntoView({block: 'nearest'});
  card.focus({preventScroll: true});
  history.replaceState(null, '', `#src-${t}-${n}`);
};
window.ragShowTurn = window.ragShowTurn || function (t) {
  const panel = document.querySelector('#rag-sources .rag-sources');
  if (!panel) return;
  panel.dataset.turn = t;
  panel.querySelectorAll('section.rag-turn-src').forEach(s => s.classList.toggle('active', s.dataset.turn == String(t)));
  panel.querySelectorAll('.rag-src-nav button').forEach(b => b.classList.toggle('active', b.dataset.show == String(t)));
};
window.ragCopy = window.ragCopy || async function (text, btn) {
  window.ragLastCopy = text;
  let ok = false;
  try { await navigator.clipboard.writeText(text); ok = true; } catch (e) {
    const ta = document.createElement('textarea');
    ta.value = text; ta.style.position = 'fixed'; ta.style.opacity = '0';
    document.body.appendChild(ta); ta.select();
    try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
    ta.remove();
  }
  if (btn) { const old = btn.textContent; btn.textContent = ok ? 'Copied' : 'Copy failed'; setTimeout(() => { btn.textContent = old; }, 1500); }
};
const ragHandle = (e) => {
  const cite = e.target.closest('a.rag-cite');
  if (cite) { e.preventDefault(); window.ragShowSource(cite.dataset.turn, cite.dataset.n); return; }
  const show = e.target.closest('button[data-show]');
  if (show) { window.ragShowTurn(show.dataset.show); return; }
  const el = e.target.closest('[data-action]');
  if (!el) return;
  e.preventDefault();
  const action = el.dataset.action, turn = Number(el.dataset.turn || 0);
  if (action === 'copy') { window.ragCopy(el.dataset.md || '', el); return; }
  let arg = '';
  if (action === 'open-paper') arg = el.dataset.pid || '';
  if (action === 'comment') { const box = el.closest('.rag-comment'); arg = box ? (box.querySelector('textarea') || {}).value || '' : ''; }
  const payload = JSON.stringify({action, turn, arg});
  if (['regenerate', 'ask-new', 'more'].includes(action)) {
    const conv = document.querySelector('#rag-conv .rag-conv');
    if (conv && conv.dataset.busy === '1') return;  // one answer at a time
    trigger('submit', {value: payload});
  } else {
    trigger('select', {value: payload, index: 0});
  }
};
element.addEventListener('click', ragHandle);
"""

# Only on the conversation: keep the newest text in view, and block empty questions in the browser
# (Send disabled, Enter ignored) — the server ignores them too.
CONV_JS = SHARED_JS + r"""
let seenTurns = -1;
watch('value', () => {
  const conv = element.querySelector('.rag-conv');
  if (!conv) return;
  const turns = Number(conv.dataset.turns || 0), busy = conv.dataset.busy === '1';
  if (busy || turns !== seenTurns) {
    let box = element;  // the scrolling box is the component or one of its wrappers
    while (box && box !== document.body && !(box.scrollHeight > box.clientHeight + 2 && /auto|scroll/.test(getComputedStyle(box).overflowY))) box = box.parentElement;
    if (box && box !== document.body) box.scrollTop = box.scrollHeight;
  }
  seenTurns = turns;
});
const gate = () => {
  const box = document.querySelector('#rag-question textarea');
  const send = document.querySelector('#rag-send');
  if (!box || !send) { setTimeout(gate, 200); return; }
  const update = () => {
    const b = document.querySelector('#rag-question textarea'), s = document.querySelector('#rag-send');
    if (!b || !s) return;
    const empty = !b.value.trim();
    if (s.disabled !== empty) s.disabled = empty;
    s.setAttribute('aria-disabled', String(empty));
  };
  document.addEventListener('input', update, true);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && e.target.closest && e.target.closest('#rag-question') && !e.target.value.trim()) {
      e.preventDefault(); e.stopImmediatePropagation();
    }
  }, true);
  setInterval(update, 300);  // the box is also filled by examples and cleared by the app
  update();
};
gate();
"""

def parse_auth(secret, where: str = "RAG_UI_AUTH") -> tuple[str, str] | None:
    """"user:password" (a SecretStr or str) as Gradio's (user, password) tuple."""
    if secret is None:
        return None
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    value = value.strip()
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{where} must look like 'user:password' (both non-empty)")
    return user, password


def login_from(settings) -> tuple[str, str] | None:
    """The UI login: RAG_UI_AUTH_FILE (a file holding user:password), else RAG_UI_AUTH; never argv."""
    if settings.ui_auth_file:
        path = Path(settings.ui_auth_file)
        try:
            return parse_auth(path.read_text(encoding="utf-8"), f"the login file {path}")
        except OSError as exc:
            raise ConfigError(f"cannot read the login file {path} ({exc.strerror}): check RAG_UI_AUTH_FILE / --auth-file") from None
    return parse_auth(settings.ui_auth)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def eval_dir_for(settings, eval_dir=None) -> Path:
    """Where the Evaluation tab reads its report: the argument, RAG_UI_EVAL_DIR, else eval/reports/latest."""
    if eval_dir:
        return Path(eval_dir)
    if settings.ui_eval_dir:
        return Path(settings.ui_eval_dir)
    root = repo_root()
    return (root or Path.cwd()) / "eval" / "reports" / "latest"


HEADLINE_METRICS = ("recall@10", "ndcg@10", "mrr", "citation_precision", "citation_recall", "key_fact_recall",
                    "abstention_accuracy", "false_abstention_rate", "latency_ms_p50")


def eval_headline(report: dict) -> str:
    """The Evaluation tab's first table: key metrics per retrieval mode, out of sample (the `test` split)
    when the dataset has splits, with the `tune` figures beside them."""
    from rag.eval.report import fmt

    summary = report.get("summary") or {}
    by_split = report.get("by_split") or {}
    modes = list(summary)
    if not modes:
        return ""
    split = all("test" in (by_split.get(m) or {}) for m in modes)
    if split:
        head = "| metric | " + " | ".join(f"{m} test | {m} tune" for m in modes) + " |"
        rule = "|---|" + "---:|---:|" * len(modes)
        cell = lambda m, k: f"{fmt(by_split[m]['test'].get(k), k)} | {fmt((by_split[m].get('tune') or {}).get(k), k)}"
        note = ("Out of sample: thresholds and weights were fitted on the `tune` split; `test` was not used to choose "
                "them.")
    else:
        head = "| metric | " + " | ".join(modes) + " |"
        rule = "|---|" + "---:|" * len(modes)
        cell = lambda m, k: fmt(summary[m].get(k), k)
        note = "This dataset has no tune/test split."
    rows = [f"| {k} | " + " | ".join(cell(m, k) for m in modes) + " |"
            for k in HEADLINE_METRICS if any(summary[m].get(k) is not None for m in modes)]
    ds = report.get("dataset") or {}
    cfg = report.get("config") or {}
    about = (f"{ds.get('questions', '?')} questions from `{render.md_text(str(ds.get('path', '?')))}`; answers: "
             f"{cfg.get('answer', '?')}; {cfg.get('papers', '?')} papers.")
    return "\n".join(["### Headline", "", about + " " + note, "", head, rule, *rows])


def load_eval_report(eval_dir: Path) -> tuple[str, str, str]:
    """(headline markdown, plots html, full report markdown) for the Evaluation tab."""
    report = eval_dir / "report.md"
    if not report.is_file():
        return f"### Evaluation\n\n{MAKE_EVAL_HINT}\n\n<small>Looked in `{render.md_text(str(eval_dir))}`.</small>", "", ""
    try:
        text = report.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"Cannot read `{render.md_text(str(report))}` ({exc.__class__.__name__}). {MAKE_EVAL_HINT}", "", ""
    headline = ""
    try:
        data = json.loads((eval_dir / "report.json").read_text(encoding="utf-8"))
        headline = eval_headline(data) if isinstance(data, dict) else ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        headline = ""
    stamp = datetime.fromtimestamp(report.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    header = f"<small>Report `{render.md_text(str(report))}`, written {stamp}.</small>\n\n"
    images = []
    for png in sorted(eval_dir.glob("*.png")):
        try:
            data64 = base64.b64encode(png.read_bytes()).decode("ascii")
        except OSError:
            continue
        images.append(f'<figure><img alt="{render.esc(png.name)}" src="data:image/png;base64,{data64}">'
                      f"<figcaption>{render.esc(png.name)}</figcaption></figure>")
    gallery = f'<div class="rag-eval-images">{"".join(images)}</div>' if images else ""
    # Relative plot links cannot load from the page: the plots are shown above the report instead.
    text = re.sub(
        r"!\[([^\]]*)\]\(([\w.-]+\.png)\)",
        lambda m: f"_(plot {m.group(2)}: shown above)_" if (eval_dir / m.group(2)).is_file() else m.group(0),
        text,
    )
    full = text.replace("<", "&lt;")  # the report is Markdown; raw HTML shows as text
    return header + (headline.replace("<", "&lt;") or "See the full report below."), gallery, full


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


def _state_secret(settings) -> str:
    """The key that encrypts the conversation kept in the browser: stored in DATA_DIR so that a saved
    conversation survives a server restart (a random one per process otherwise)."""
    path = Path(settings.data_dir) / "ui_state.key"
    try:
        if path.is_file():
            key = path.read_text(encoding="ascii").strip()
            if len(key) >= 32:
                return key
        key = secrets.token_hex(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key)
        return key
    except (OSError, UnicodeDecodeError) as exc:
        log.info("cannot keep the UI state key in %s (%s): saved conversations last until a restart", path, exc)
        return secrets.token_hex(32)


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


def build_app(settings, assistant=None, eval_dir: str | Path | None = None) -> gr.Blocks:
    """The whole UI as a gr.Blocks with its queue configured (launch it, or use `launch`)."""
    if assistant is None:
        from rag.answer.assistant import Assistant

        assistant = Assistant.from_settings(settings)
    ctl = ChatController(settings, assistant)
    eval_path = eval_dir_for(settings, eval_dir)
    secret = _state_secret(settings)

    def respond(question, turns, scope, mode, top_k, answer_mode):
        for update in ctl.respond(question, turns, scope, mode, top_k, answer_mode):
            yield _outputs(update)

    def act(turns, scope, mode, top_k, answer_mode, evt: gr.EventData):
        payload = (getattr(evt, "_data", None) or {}).get("value")
        for update in ctl.act(payload, turns, scope, mode, top_k, answer_mode):
            yield _outputs(update)

    def busy(question=None):
        if question is not None and not str(question).strip():
            return gr.skip(), gr.skip()
        return gr.Button(visible=False), gr.Button(visible=True)

    def idle():
        return gr.Button(visible=True), gr.Button(visible=False)

    def reset():
        """New chat / Clear: history, sources, export, scope and the saved state, together."""
        return ([], ctl.conversation([]), render.EMPTY_SOURCES, None,
                gr.DownloadButton(value=None, interactive=False), "")

    def restore(saved_turns, saved_settings):
        turns, conv, sources_html, export, scope = ctl.restore(saved_turns)
        mode_v, k_v, answer_v = _restore_settings(saved_settings, settings.mode, ctl.default_k, ctl.llm_available)
        return (turns, conv, sources_html, gr.DownloadButton(value=str(export) if export else None,
                                                             interactive=bool(export)),
                scope, mode_v, k_v, answer_v)

    def quick(turns, evt: gr.SelectData):
        """Ratings, comments and "open paper" clicks from the conversation or the sources."""
        action = Action.parse(evt.value)
        if action is None:
            return (gr.skip(),) * 6
        if action.action == "open-paper":
            return (gr.skip(), gr.skip(), *open_paper(action.arg))
        new_turns, message = ctl.rate(evt.value, turns)
        if message:
            gr.Warning(message)
            return (gr.skip(),) * 6
        return (new_turns, ctl.conversation(new_turns), gr.skip(), gr.skip(), gr.skip(), gr.skip())

    def open_paper(pid):
        if pid not in ctl.papers:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return gr.Tabs(selected="papers"), ctl.paper_html(pid), pid, gr.Button(interactive=True)

    def open_similar(evt: gr.SelectData):
        action = Action.parse(evt.value)
        return open_paper(action.arg if action and action.action == "open-paper" else None)[1:]

    def scope_banner(scope):
        note = ctl.scope_note(scope)
        return gr.Markdown(note or "", visible=bool(note)), gr.Button(visible=bool(note))

    def select_paper(ids, evt: gr.SelectData):
        pid = ctl.pick_paper(ids, getattr(evt, "row_value", None), evt.index)
        return ctl.paper_html(pid), pid, gr.Button(interactive=pid is not None)

    def ask_about(pid):
        if pid not in ctl.papers:
            raise gr.Error("Select a paper in the table first.")
        # a fresh conversation scoped to this paper; the question is asked right away (see .then)
        return (gr.Tabs(selected="chat"), pid, [], ctl.conversation([]), SCOPED_QUESTION, render.EMPTY_SOURCES,
                gr.DownloadButton(value=None, interactive=False))

    def ask(question: str, mode: str = settings.mode, top_k: int = ctl.default_k, extractive: bool = False) -> dict:
        """Answer a question about the indexed papers, with cited paper titles.

        Args:
            question: the question.
            mode: retrieval mode, one of hybrid, dense, bm25.
            top_k: papers given to the answerer (1-30).
            extractive: answer with sentences quoted from the abstracts even if an LLM is configured.
        Returns:
            {"answer", "citations" (cited titles), "references" ([{n, title, paper_id}]), "abstained",
             "possibly_related" (titles), "mode", "notice", "standalone_question"}
        """
        try:
            return ctl.ask_api(question, mode, top_k, extractive)
        except Exception as exc:  # clients get a one-line message, never a traceback
            if not isinstance(exc, RagError):
                log.exception("/ask failed")
            raise gr.Error(friendly_error(exc), print_exception=False) from None

    theme = gr.themes.Soft(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    )
    with warnings.catch_warnings():
        # Gradio 6 moved theme/css to launch(); passing them here too keeps them when a caller
        # launches the Blocks directly (tests do). `launch()` below passes them the new way.
        warnings.simplefilter("ignore", UserWarning)
        app = gr.Blocks(title="Paper RAG", analytics_enabled=False, theme=theme, css=CSS)
    app.rag_theme, app.rag_css = theme, CSS
    private = {"api_visibility": "private"}
    all_sorted = ctl.all_papers()
    headers = ctl.paper_headers()

    with app:
        gr.Markdown("# Paper RAG\nQuestions answered from ML paper abstracts; every claim cites its paper.",
                    elem_id="rag-title")
        gr.Markdown(ctl.status(), elem_classes=["rag-status"], elem_id="rag-status")
        # the conversation and the settings live in the browser (encrypted), so a reload keeps them
        turns_state = gr.BrowserState([], storage_key="paper-rag-turns", secret=secret)
        settings_state = gr.BrowserState({}, storage_key="paper-rag-settings", secret=secret)
        scope_state = gr.State(None)
        ids_state = gr.State([p.paper_id for p in all_sorted[: len(ctl.paper_rows(all_sorted))]])
        selected_state = gr.State(None)

        with gr.Tabs(selected="chat") as tabs:
            with gr.Tab("Chat", id="chat"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=340, elem_id="rag-main"):
                        scope_md = gr.Markdown(visible=False, elem_id="rag-scope")
                        clear_scope_btn = gr.Button("Clear scope", size="sm", visible=False, variant="secondary")
                        conv = gr.HTML(ctl.conversation([]), elem_id="rag-conv", js_on_load=CONV_JS,
                                       padding=False, max_height=CONVERSATION_HEIGHT, autoscroll=False)
                        with gr.Row(elem_id="rag-input-row"):
                            question = gr.Textbox(
                                show_label=False, lines=1, max_lines=6, scale=5, elem_id="rag-question", autofocus=True,
                                placeholder="Ask a question, e.g. which papers erase concepts in diffusion models?",
                            )
                            send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="rag-send")
                            stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, visible=False,
                                             elem_id="rag-stop")
                        with gr.Row(elem_id="rag-tools-row"):
                            new_btn = gr.Button("New chat", size="sm", elem_id="rag-new")
                            clear_btn = gr.Button("Clear", size="sm", elem_id="rag-clear")
                            download = gr.DownloadButton("Export (Markdown)", size="sm", interactive=False,
                                                         elem_id="rag-export")
                        gr.Examples(EXAMPLES, inputs=[question], label="Examples", api_visibility="private")
                        with gr.Accordion("Answer settings", open=False):
                            mode = gr.Radio(list(MODES), value=settings.mode, label="Retrieval mode",
                                            info="hybrid = dense + BM25 fused; dense = embeddings; bm25 = keywords",
                                            elem_id="rag-mode")
                            top_k = gr.Slider(1, TOP_K_MAX, value=ctl.default_k, step=1, elem_id="rag-topk",
                                              label="Papers given to the answerer (top-k)")
                            if ctl.llm_available:
                                answer_mode = gr.Radio(
                                    [("LLM (generated, cited)", "llm"), ("Extractive (quoted sentences)", "extractive")],
                                    value="llm", label="Answer mode", info=f"LLM model: {settings.llm_model}",
                                    elem_id="rag-answer-mode",
                                )
                            else:
                                answer_mode = gr.Radio(
                                    [(f"LLM — unavailable ({NO_LLM_REASON})", "llm"), ("Extractive (quoted sentences)", "extractive")],
                                    value="extractive", label="Answer mode", info=NO_LLM_REASON, interactive=False,
                                    elem_id="rag-answer-mode",
                                )
                    with gr.Column(scale=2, min_width=300, elem_id="rag-side"):
                        sources = gr.HTML(render.EMPTY_SOURCES, elem_id="rag-sources", js_on_load=SHARED_JS,
                                          padding=False)

            with gr.Tab("Papers", id="papers"):
                with gr.Row():
                    paper_query = gr.Textbox(show_label=False, placeholder="Filter by words in the title or abstract…",
                                             scale=5, elem_id="rag-paper-query")
                    code_only = gr.Checkbox(label="with code links only", value=False, scale=1)
                    paper_search = gr.Button("Search", scale=1, min_width=90)
                paper_count = gr.Markdown(ctl.count_text(all_sorted, ""))
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        table = gr.Dataframe(
                            value=ctl.paper_rows(all_sorted), headers=headers, datatype=["str"] * len(headers),
                            interactive=False, wrap=True, max_height=560, elem_id="rag-papers", latex_delimiters=[],
                            column_widths=["65%", "22%", "13%"] if len(headers) == 3 else ["72%", "28%"],
                        )
                    with gr.Column(scale=2):
                        paper_html = gr.HTML(render.render_paper(None), elem_id="rag-paper", js_on_load=SHARED_JS)
                        ask_paper = gr.Button("Ask about this paper", variant="primary", interactive=False,
                                              elem_id="rag-ask-paper")

            with gr.Tab("Evaluation", id="eval"):
                headline_md, plots_html, full_md = load_eval_report(eval_path)
                eval_head = gr.Markdown(headline_md, elem_id="rag-eval")
                eval_imgs = gr.HTML(plots_html, elem_id="rag-eval-plots")
                with gr.Accordion("Full report (every metric, by type, by split, per question)", open=False,
                                  elem_id="rag-eval-full"):
                    eval_full = gr.Markdown(full_md)
                refresh = gr.Button("Reload report", size="sm")

        chat_inputs = [question, turns_state, scope_state, mode, top_k, answer_mode]
        chat_outputs = [conv, turns_state, sources, question, download]
        # every answering event shares one concurrency group: settings.ui_concurrency answers at once in total
        answering = {"concurrency_id": "answer", "concurrency_limit": settings.ui_concurrency}
        toggles = {"outputs": [send, stop], "queue": False, **private}
        runs = []
        for trigger_evt in (question.submit, send.click):
            started = trigger_evt(busy, question, **toggles)
            run = started.then(respond, chat_inputs, chat_outputs, **answering, **private)
            run.then(idle, None, **toggles)
            runs.append(run)
        # two listeners on the button event (a `.then` step would not receive the click's payload)
        conv.submit(busy, None, **toggles)
        action_run = conv.submit(act, [turns_state, scope_state, mode, top_k, answer_mode], chat_outputs,
                                 **answering, **private)
        action_run.then(idle, None, **toggles)
        runs.append(action_run)
        quick_outputs = [turns_state, conv, tabs, paper_html, selected_state, ask_paper]
        conv.select(quick, turns_state, quick_outputs, queue=False, **private)
        sources.select(quick, turns_state, quick_outputs, queue=False, **private)
        paper_html.select(open_similar, None, [paper_html, selected_state, ask_paper], queue=False, **private)

        reset_outputs = [turns_state, conv, sources, scope_state, download, question]
        for button in (new_btn, clear_btn):
            button.click(reset, None, reset_outputs, queue=False, **private).then(
                scope_banner, scope_state, [scope_md, clear_scope_btn], queue=False, **private)
        clear_scope_btn.click(lambda: None, None, scope_state, queue=False, **private).then(
            scope_banner, scope_state, [scope_md, clear_scope_btn], queue=False, **private
        )
        for control in (mode, top_k, answer_mode):
            control.change(lambda m, k, a: {"mode": m, "top_k": k, "answer_mode": a}, [mode, top_k, answer_mode],
                           settings_state, queue=False, **private)
        app.load(restore, [turns_state, settings_state],
                 [turns_state, conv, sources, download, scope_state, mode, top_k, answer_mode],
                 queue=False, **private).then(scope_banner, scope_state, [scope_md, clear_scope_btn], queue=False,
                                              **private)

        search_io = {"fn": ctl.search_papers, "inputs": [paper_query, code_only], "outputs": [table, ids_state, paper_count]}
        paper_query.submit(**search_io, concurrency_limit=None, **private)
        paper_search.click(**search_io, concurrency_limit=None, **private)
        code_only.change(**search_io, concurrency_limit=None, **private)
        table.select(select_paper, ids_state, [paper_html, selected_state, ask_paper], concurrency_limit=None, **private)
        ask_evt = ask_paper.click(ask_about, selected_state,
                                  [tabs, scope_state, turns_state, conv, question, sources, download],
                                  queue=False, **private)
        scoped_run = ask_evt.success(scope_banner, scope_state, [scope_md, clear_scope_btn], queue=False,
                                     **private).then(busy, None, **toggles).then(
            respond, chat_inputs, chat_outputs, **answering, **private)
        scoped_run.then(idle, None, **toggles)
        runs.append(scoped_run)
        # Stop: cancel the answer (registered after every answering event) and drop the unfinished turn. A
        # streamed update already on its way when the run is cancelled can land after Stop's render and
        # bring the unfinished turn back (seen on a loaded machine), so the conversation is drawn once more
        # after a moment: the cancelled run sends nothing after that.
        def settle(turns):
            time.sleep(STOP_SETTLE_S)
            return ctl.conversation(turns)

        stop.click(lambda turns: (*idle(), ctl.conversation(turns)), turns_state, [send, stop, conv],
                   cancels=runs, queue=False, **private).then(settle, turns_state, conv, queue=False, **private)
        refresh.click(lambda: load_eval_report(eval_path), None, [eval_head, eval_imgs, eval_full], queue=False,
                      **private)

        gr.api(ask, api_name="ask", **answering)

    app.queue(default_concurrency_limit=settings.ui_concurrency, max_size=max(16, settings.ui_concurrency * 8))
    app.rag_assistant = assistant
    app.rag_controller = ctl
    return app


def launch(settings, assistant=None, *, prevent_thread_lock: bool = False) -> gr.Blocks:
    """Serve the UI on settings.ui_host:ui_port (login if settings.ui_auth) and print the URL."""
    auth = login_from(settings)
    host = settings.ui_host
    if not is_loopback(host):
        warn = "" if auth else " WITHOUT authentication (set RAG_UI_AUTH=user:password)"
        print(f"warning: the UI listens on {host}, reachable from other machines{warn}", flush=True)
    app = build_app(settings, assistant)
    try:  # warm the embedder so the first question is not slow
        app.rag_assistant.search("warm up", 1)
    except Exception as exc:  # noqa: BLE001 - not fatal: the first question will report any real problem
        log.warning("warm-up search failed: %s", exc)
    try:
        app.launch(
            server_name=host, server_port=settings.ui_port, auth=auth,
            auth_message="Paper RAG: sign in with the user and password the server was started with." if auth else None,
            app_kwargs={"middleware": security.middleware(settings.ui_login_attempts, settings.ui_login_window)},
            prevent_thread_lock=True, share=False, quiet=True, show_error=False, ssr_mode=False, mcp_server=False,
            theme=app.rag_theme, css=app.rag_css,
        )
    except OSError:
        raise ConfigError(
            f"cannot serve the UI on {host}:{settings.ui_port}: the port is in use or the address is not available "
            "here; pick another port with --port (RAG_UI_PORT) or another address with --host (RAG_UI_HOST)"
        ) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"Paper RAG UI running at http://{shown}:{app.server_port}" + (" (login on)" if auth else ""), flush=True)
    if not prevent_thread_lock:
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
    return app
