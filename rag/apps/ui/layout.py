"""The page's layout: every Gradio component, created inside the caller's `gr.Blocks` and returned as one
record, so `rag.apps.ui.wiring` connects them by name. No event is wired here."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from rag.apps.ui import render
from rag.apps.ui.assets import PageAssets
from rag.apps.ui.controller import TOP_K_MAX, ChatController
from rag.retrieve.hybrid import MODES

EXAMPLES = [
    "which papers erase concepts in diffusion models?",
    "How can large language models be made to reason step by step?",
    "sparse autoencoders for interpretability",
    "Which papers propose benchmarks for evaluating multimodal models?",
]
CONVERSATION_HEIGHT = "min(60vh, 640px)"  # the input stays on screen at 390×844 too
NO_LLM_REASON = "no LLM endpoint configured: set RAG_LLM_BASE_URL"


@dataclass(frozen=True)
class Components:
    """The components the events read or write (static text and containers are left out)."""

    # state: the conversation and the answer settings live in the browser (encrypted), so a reload keeps them
    turns_state: gr.BrowserState
    settings_state: gr.BrowserState
    scope_state: gr.State
    ids_state: gr.State  # the paper ids of the table's rows, in order
    selected_state: gr.State  # the paper shown in the Papers tab
    tabs: gr.Tabs
    # Chat tab
    scope_md: gr.Markdown
    clear_scope_btn: gr.Button
    conv: gr.HTML
    question: gr.Textbox
    send: gr.Button
    stop: gr.Button
    new_btn: gr.Button
    clear_btn: gr.Button
    download: gr.DownloadButton
    mode: gr.Radio
    top_k: gr.Slider
    answer_mode: gr.Radio
    sources: gr.HTML
    # Papers tab
    paper_query: gr.Textbox
    code_only: gr.Checkbox
    paper_search: gr.Button
    paper_count: gr.Markdown
    table: gr.Dataframe
    paper_html: gr.HTML
    ask_paper: gr.Button
    # Evaluation tab
    eval_head: gr.Markdown
    eval_imgs: gr.HTML
    eval_full: gr.Markdown
    refresh: gr.Button


def build_layout(ctl: ChatController, settings, assets: PageAssets, *, secret: str,
                 eval_report: tuple[str, str, str]) -> Components:
    """Create the page inside the current `with gr.Blocks():`. `secret` encrypts the browser state;
    `eval_report` is the Evaluation tab's (headline, plots, full report)."""
    all_sorted = ctl.all_papers()
    headers = ctl.paper_headers()

    gr.Markdown("# Paper RAG\nQuestions answered from ML paper abstracts; every claim cites its paper.",
                elem_id="rag-title")
    gr.Markdown(ctl.status(), elem_classes=["rag-status"], elem_id="rag-status")
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
                    conv = gr.HTML(ctl.conversation([]), elem_id="rag-conv", js_on_load=assets.conversation_js,
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
                        mode, top_k, answer_mode = _answer_settings(ctl, settings)
                with gr.Column(scale=2, min_width=300, elem_id="rag-side"):
                    sources = gr.HTML(render.EMPTY_SOURCES, elem_id="rag-sources", js_on_load=assets.shared_js,
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
                    paper_html = gr.HTML(render.render_paper(None), elem_id="rag-paper", js_on_load=assets.shared_js)
                    ask_paper = gr.Button("Ask about this paper", variant="primary", interactive=False,
                                          elem_id="rag-ask-paper")

        with gr.Tab("Evaluation", id="eval"):
            headline_md, plots_html, full_md = eval_report
            eval_head = gr.Markdown(headline_md, elem_id="rag-eval")
            eval_imgs = gr.HTML(plots_html, elem_id="rag-eval-plots")
            with gr.Accordion("Full report (every metric, by type, by split, per question)", open=False,
                              elem_id="rag-eval-full"):
                eval_full = gr.Markdown(full_md)
            refresh = gr.Button("Reload report", size="sm")

    return Components(
        turns_state=turns_state, settings_state=settings_state, scope_state=scope_state, ids_state=ids_state,
        selected_state=selected_state, tabs=tabs,
        scope_md=scope_md, clear_scope_btn=clear_scope_btn, conv=conv, question=question, send=send, stop=stop,
        new_btn=new_btn, clear_btn=clear_btn, download=download, mode=mode, top_k=top_k, answer_mode=answer_mode,
        sources=sources,
        paper_query=paper_query, code_only=code_only, paper_search=paper_search, paper_count=paper_count,
        table=table, paper_html=paper_html, ask_paper=ask_paper,
        eval_head=eval_head, eval_imgs=eval_imgs, eval_full=eval_full, refresh=refresh,
    )


def _answer_settings(ctl: ChatController, settings) -> tuple[gr.Radio, gr.Slider, gr.Radio]:
    """Retrieval mode, top-k and answer mode; without an LLM the answer mode is fixed to extractive."""
    mode = gr.Radio(list(MODES), value=settings.mode, label="Retrieval mode",
                    info="hybrid = dense + BM25 fused; dense = embeddings; bm25 = keywords", elem_id="rag-mode")
    top_k = gr.Slider(1, TOP_K_MAX, value=ctl.default_k, step=1, elem_id="rag-topk",
                      label="Papers given to the answerer (top-k)")
    if ctl.llm_available:
        answer_mode = gr.Radio(
            [("LLM (generated, cited)", "llm"), ("Extractive (quoted sentences)", "extractive")],
            value="llm", label="Answer mode", info=f"LLM model: {settings.llm_model}", elem_id="rag-answer-mode",
        )
    else:
        answer_mode = gr.Radio(
            [(f"LLM — unavailable ({NO_LLM_REASON})", "llm"), ("Extractive (quoted sentences)", "extractive")],
            value="extractive", label="Answer mode", info=NO_LLM_REASON, interactive=False, elem_id="rag-answer-mode",
        )
    return mode, top_k, answer_mode
