"""The Gradio web UI: layout and wiring only. Behaviour lives in `rag.ui.controller` (plain Python).

`build_app(settings)` returns the Blocks (queue configured); `launch(settings)` serves it on
`settings.ui_host:ui_port` (loopback unless configured otherwise). Scripts use the `/ask` endpoint::

    from gradio_client import Client
    Client("http://127.0.0.1:7860").predict("which papers erase concepts in diffusion models?", api_name="/ask")
    # -> {"answer": ..., "citations": [titles], "abstained": False, "mode": "extractive", "notice": ..., ...}
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import warnings
from datetime import datetime
from pathlib import Path

import gradio as gr

from rag.errors import ConfigError, RagError
from rag.retrieve import MODES
from rag.settings import repo_root
from rag.ui import render, security
from rag.ui.controller import SCOPED_QUESTION, TOP_K_MAX, ChatController, ChatUpdate, friendly_error

log = logging.getLogger(__name__)

EXAMPLES = [
    "which papers erase concepts in diffusion models?",
    "How can large language models be made to reason step by step?",
    "sparse autoencoders for interpretability",
    "Which papers propose benchmarks for evaluating multimodal models?",
]
NO_LLM_REASON = "no LLM endpoint configured: set RAG_LLM_BASE_URL"
MAKE_EVAL_HINT = (
    "No evaluation report yet. Produce one with `make eval`, or:\n\n"
    "```bash\nrag eval --dataset eval/datasets/dev.jsonl --answer extractive --out eval/reports/latest\n```"
)

CSS = """
.rag-status { font-size: 0.9em; opacity: 0.85; }
.rag-sources h3 { margin: 0 0 .4em 0; }
.rag-sources h3 small { font-weight: normal; opacity: .7; }
.rag-src { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: .55em .7em; margin: 0 0 .6em 0; }
.rag-src-title { font-weight: 600; margin-bottom: .25em; }
.rag-n { color: var(--color-accent); margin-right: .2em; }
.rag-snippet { font-size: .92em; line-height: 1.45; }
.rag-snippet mark.rag-mark { background: #fde68a; color: inherit; padding: 0 .1em; border-radius: 2px; }
.rag-snippet mark.rag-approx { background: #e0e7ff; }
.rag-meta { font-size: .82em; opacity: .8; margin-top: .3em; word-break: break-all; }
.rag-abstain-note, .rag-scope-note { font-style: italic; }
.rag-uncited { font-size: .85em; opacity: .85; }
.rag-paper-title { margin-top: 0; }
.rag-abstract { line-height: 1.5; }
.rag-eval-images img { max-width: 100%; margin: .5em 0; border: 1px solid var(--border-color-primary); }
sup.rag-cite { cursor: help; color: var(--color-accent); font-weight: 600; }
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


def load_eval_report(eval_dir: Path) -> tuple[str, str]:
    """(markdown, images html) for the Evaluation tab."""
    report = eval_dir / "report.md"
    if not report.is_file():
        return f"### Evaluation\n\n{MAKE_EVAL_HINT}\n\n<small>Looked in `{render.md_text(str(eval_dir))}`.</small>", ""
    try:
        text = report.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"Cannot read `{render.md_text(str(report))}` ({exc.__class__.__name__}). {MAKE_EVAL_HINT}", ""
    stamp = datetime.fromtimestamp(report.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    header = f"<small>Report `{render.md_text(str(report))}`, written {stamp}.</small>\n\n"
    images = []
    for png in sorted(eval_dir.glob("*.png")):
        try:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
        except OSError:
            continue
        images.append(f'<figure><img alt="{render.esc(png.name)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{render.esc(png.name)}</figcaption></figure>")
    gallery = f'<div class="rag-eval-images">{"".join(images)}</div>' if images else ""
    # Relative plot links cannot load from the page: the plots are shown below the report instead.
    text = re.sub(
        r"!\[([^\]]*)\]\(([\w.-]+\.png)\)",
        lambda m: f"_(plot {m.group(2)}: shown below)_" if (eval_dir / m.group(2)).is_file() else m.group(0),
        text,
    )
    return header + text.replace("<", "&lt;"), gallery  # the report is Markdown; raw HTML shows as text


def _outputs(update: ChatUpdate) -> tuple:
    """A ChatUpdate as the chat event's outputs: chatbot, turns, sources, question box, export button."""
    export = gr.skip()
    if update.export_changed:
        export = gr.DownloadButton(value=str(update.export) if update.export else None, interactive=bool(update.export))
    return (
        update.messages,
        update.turns,
        update.sources_html if update.sources_html is not None else gr.skip(),
        update.question if update.question is not None else gr.skip(),
        export,
    )


def build_app(settings, assistant=None, eval_dir: str | Path | None = None) -> gr.Blocks:
    """The whole UI as a gr.Blocks with its queue configured (launch it, or use `launch`)."""
    if assistant is None:
        from rag.answer import Assistant

        assistant = Assistant.from_settings(settings)
    ctl = ChatController(settings, assistant)
    eval_path = eval_dir_for(settings, eval_dir)

    def respond(question, turns, scope, mode, top_k, answer_mode):
        for update in ctl.respond(question, turns, scope, mode, top_k, answer_mode):
            yield _outputs(update)

    def new_chat():
        return [], [], render.EMPTY_SOURCES, None, gr.DownloadButton(value=None, interactive=False), ""

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
        return gr.Tabs(selected="chat"), pid, [], [], SCOPED_QUESTION, render.EMPTY_SOURCES

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
        gr.Markdown("# Paper RAG\nQuestions answered from ML paper abstracts; every claim cites its paper.")
        gr.Markdown(ctl.status(), elem_classes=["rag-status"], elem_id="rag-status")
        turns_state = gr.State([])
        scope_state = gr.State(None)
        ids_state = gr.State([p.paper_id for p in all_sorted[: len(ctl.paper_rows(all_sorted))]])
        selected_state = gr.State(None)

        with gr.Tabs(selected="chat") as tabs:
            with gr.Tab("Chat", id="chat"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=380):
                        scope_md = gr.Markdown(visible=False, elem_id="rag-scope")
                        clear_scope_btn = gr.Button("Clear scope", size="sm", visible=False, variant="secondary")
                        chatbot = gr.Chatbot(
                            label="Conversation", elem_id="rag-chat", height=520, latex_delimiters=[],
                            sanitize_html=True, feedback_options=None, buttons=["copy"],
                            placeholder="Ask about the indexed ML papers. Follow-up questions keep the context.",
                        )
                        with gr.Row():
                            question = gr.Textbox(
                                show_label=False, lines=1, max_lines=6, scale=5, elem_id="rag-question", autofocus=True,
                                placeholder="Ask a question, e.g. which papers erase concepts in diffusion models?",
                            )
                            send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="rag-send")
                            stop = gr.Button("Stop", variant="stop", scale=0, min_width=70)
                        gr.Examples(EXAMPLES, inputs=[question], label="Examples", api_visibility="private")
                        with gr.Row():
                            new_btn = gr.Button("New chat", size="sm", elem_id="rag-new")
                            download = gr.DownloadButton("Export conversation (Markdown)", size="sm", interactive=False,
                                                         elem_id="rag-export")
                        with gr.Accordion("Answer settings", open=False):
                            mode = gr.Radio(list(MODES), value=settings.mode, label="Retrieval mode",
                                            info="hybrid = dense + BM25 fused; dense = embeddings; bm25 = keywords")
                            top_k = gr.Slider(1, TOP_K_MAX, value=ctl.default_k, step=1,
                                              label="Papers given to the answerer (top-k)")
                            if ctl.llm_available:
                                answer_mode = gr.Radio(
                                    [("LLM (generated, cited)", "llm"), ("Extractive (quoted sentences)", "extractive")],
                                    value="llm", label="Answer mode", info=f"LLM model: {settings.llm_model}",
                                )
                            else:
                                answer_mode = gr.Radio(
                                    [(f"LLM — unavailable ({NO_LLM_REASON})", "llm"), ("Extractive (quoted sentences)", "extractive")],
                                    value="extractive", label="Answer mode", info=NO_LLM_REASON, interactive=False,
                                    elem_id="rag-answer-mode",
                                )
                    with gr.Column(scale=2, min_width=300):
                        sources = gr.HTML(render.EMPTY_SOURCES, elem_id="rag-sources")

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
                        paper_html = gr.HTML(render.render_paper(None), elem_id="rag-paper")
                        ask_paper = gr.Button("Ask about this paper", variant="primary", interactive=False,
                                              elem_id="rag-ask-paper")

            with gr.Tab("Evaluation", id="eval"):
                report_md, report_imgs = load_eval_report(eval_path)
                eval_md = gr.Markdown(report_md, elem_id="rag-eval")
                eval_imgs = gr.HTML(report_imgs)
                refresh = gr.Button("Reload report", size="sm")

        chat_inputs = [question, turns_state, scope_state, mode, top_k, answer_mode]
        chat_outputs = [chatbot, turns_state, sources, question, download]
        # every answering event shares one concurrency group: settings.ui_concurrency answers at once in total
        answering = {"concurrency_id": "answer", "concurrency_limit": settings.ui_concurrency}
        submit_evt = question.submit(respond, chat_inputs, chat_outputs, **answering, **private)
        click_evt = send.click(respond, chat_inputs, chat_outputs, **answering, **private)
        stop.click(None, cancels=[submit_evt, click_evt], **private)
        new_btn.click(new_chat, None, [chatbot, turns_state, sources, scope_state, download, question], queue=False,
                      **private).then(scope_banner, scope_state, [scope_md, clear_scope_btn], queue=False, **private)
        clear_scope_btn.click(lambda: None, None, scope_state, queue=False, **private).then(
            scope_banner, scope_state, [scope_md, clear_scope_btn], queue=False, **private
        )

        search_io = {"fn": ctl.search_papers, "inputs": [paper_query, code_only], "outputs": [table, ids_state, paper_count]}
        paper_query.submit(**search_io, concurrency_limit=None, **private)
        paper_search.click(**search_io, concurrency_limit=None, **private)
        code_only.change(**search_io, concurrency_limit=None, **private)
        table.select(select_paper, ids_state, [paper_html, selected_state, ask_paper], concurrency_limit=None, **private)
        ask_evt = ask_paper.click(ask_about, selected_state, [tabs, scope_state, turns_state, chatbot, question, sources],
                                  queue=False, **private)
        ask_evt.success(scope_banner, scope_state, [scope_md, clear_scope_btn], queue=False, **private).then(
            respond, chat_inputs, chat_outputs, **answering, **private
        )
        refresh.click(lambda: load_eval_report(eval_path), None, [eval_md, eval_imgs], queue=False, **private)

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
