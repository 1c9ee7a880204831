"""Fast checks of the UI's rendering helpers and chat handler (no server, no browser, no model)."""

from __future__ import annotations

import html
import re

import pytest

from rag.errors import QuestionError
from rag.records import Paper
from rag.ui import render

EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> Evil'
ABSTRACT = (
    "Diffusion models can generate unsafe images. We propose a fine-tuning method that erases a concept "
    "from a diffusion model using negative guidance. Code is at https://github.com/example/erase."
)


def _paper(pid="p1", title="Erasing Concepts", abstract=ABSTRACT, code=("https://github.com/example/erase",)):
    return Paper(paper_id=pid, title=title, abstract=abstract, code_urls=code)


def _turn(answer, title="Erasing Concepts", **extra):
    turn = {
        "question": "which papers erase concepts?",
        "answer": answer,
        "mode": "extractive",
        "abstained": False,
        "citations": [{"n": 1, "paper_id": "p1", "title": title}],
        "sources": [{"n": 1, "paper_id": "p1", "title": title, "snippet": ABSTRACT[:80], "score": 0.0312}],
        "notice": "Extractive answer: sentences quoted from the abstracts.",
        "possibly_related": [],
    }
    return turn | extra


def test_md_text_escapes_html_and_markdown_links():
    out = render.md_text(f"{EVIL} [click](javascript:alert(1)) `x`")
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;" in out
    assert "\\[click\\]" in out and "\\`x\\`" in out


def test_citations_become_superscripts_with_escaped_title_tooltip():
    out = render.render_citations("Erases concepts [1]. Also [1, 2].", {1: EVIL, 2: "Second"})
    assert out.count('<sup class="rag-cite"') == 3
    assert f'title="[1] {html.escape(EVIL, quote=True)}"' in out
    assert 'title="[2] Second"' in out
    assert "<script>" not in out and "<img" not in out


def test_turn_answer_lists_cited_titles_and_notice():
    out = render.render_turn_answer(_turn("Negative guidance erases concepts [1]."))
    assert "Cited papers" in out and "Erasing Concepts" in out
    assert "Note: Extractive answer" in out
    # extractive answers already name each cited paper inline: no repeated list
    out = render.render_turn_answer(_turn("- **Erasing Concepts** — We propose a fine-tuning method. [1]"))
    assert "Cited papers" not in out and out.count("Erasing Concepts") == 2  # inline + tooltip


def test_abstention_shows_possibly_related():
    turn = _turn(
        "The indexed papers do not answer this question.",
        abstained=True,
        citations=[],
        possibly_related=[{"paper_id": "p1", "title": EVIL}],
    )
    out = render.render_turn_answer(turn)
    assert "Not answered from the corpus" in out and "Possibly related papers" in out
    assert "&lt;script&gt;" in out and "<script>" not in out
    panel = render.render_sources(turn, {"p1": _paper(title=EVIL)})
    assert "Possibly related" in panel and "<script>" not in panel and "github.com/example/erase" in panel


def test_sources_panel_marks_the_quoted_sentence_and_escapes():
    answer = (
        "- **x** — We propose a fine-tuning method that erases a concept from a diffusion model using negative guidance. [1]"
    )
    panel = render.render_sources(_turn(answer, title=EVIL), {"p1": _paper(title=EVIL)})
    marked = re.findall(r"<mark[^>]*>(.*?)</mark>", panel)
    assert marked == ["We propose a fine-tuning method that erases a concept from a diffusion model using negative guidance"]
    assert 'class="rag-mark"' in panel
    assert "score 0.0312" in panel
    assert 'href="https://github.com/example/erase"' in panel and 'rel="noopener noreferrer nofollow"' in panel
    assert "<script>" not in panel and "<img" not in panel and html.escape(EVIL) in panel


def test_paraphrased_sentence_gets_an_approximate_mark():
    answer = "The authors propose fine-tuning that erases a concept from a diffusion model with negative guidance [1]."
    panel = render.render_sources(_turn(answer), {"p1": _paper()})
    assert "rag-approx" in panel


def test_unsafe_urls_are_dropped():
    assert render.safe_url("javascript:alert(1)") is None
    assert render.safe_url("github.com/a/b") == "https://github.com/a/b"
    assert "<script>" not in render.link("https://x.org/\"><script>")
    assert render.safe_url("data:text/html,<script>") is None


def test_paper_view_and_filter():
    papers = {"p1": _paper(), "p2": _paper("p2", EVIL, "Zebra stripes confuse llamas.", ())}
    assert [p.paper_id for p in render.filter_papers(papers, "zebra")] == ["p2"]
    assert [p.paper_id for p in render.filter_papers(papers, "erasing")] == ["p1"]
    assert [p.paper_id for p in render.filter_papers(papers, "", code_only=True)] == ["p1"]
    view = render.render_paper(papers["p2"])
    assert "<script>" not in view and html.escape(EVIL) in view


def test_history_skips_errors_and_export_markdown():
    turns = [_turn("We propose a method. [1]"), {"question": "too long", "error": "the question is too long"}]
    assert render.history(turns) == [
        {"role": "user", "content": "which papers erase concepts?"},
        {"role": "assistant", "content": "We propose a method. [1]"},
    ]
    md = render.conversation_markdown(turns, "extractive")
    assert md.startswith("# Paper RAG conversation")
    assert "## 1. which papers erase concepts?" in md and "[1] Erasing Concepts" in md
    assert "> Error: the question is too long" in md


# ------------------------------------------------------------------ the UI controller, called directly


class _StubAssistant:
    """Stands in for rag.answer.Assistant (the methods the UI uses); `behaviour` decides what ask_stream does."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.has_llm = False
        self.calls = []

    def papers(self):
        return [_paper()]

    def index_info(self):
        return {"papers": 1, "chroma": "embedded", "stale": None}

    def ask_stream(self, question, **kw):
        self.calls.append((question, kw))
        return self.behaviour(question, **kw)

    def ask(self, question, **kw):
        for event in self.ask_stream(question, **kw):
            if event.kind == "final":
                return event.answer


@pytest.fixture
def controller(make_settings, tmp_path):
    from rag.ui.controller import ChatController

    def make(behaviour, **settings):
        assistant = _StubAssistant(behaviour)
        return ChatController(make_settings(max_question_chars=50, **settings), assistant, tmp_path / "exports"), assistant

    return make


def test_controller_turns_unexpected_errors_into_a_friendly_message(controller):
    def boom(question, **kw):
        raise RuntimeError("secret internal detail /etc/passwd")
        yield  # pragma: no cover

    ctl, _ = controller(boom)
    updates = list(ctl.respond("hello there", [], None, "hybrid", 6, "extractive"))
    chat = updates[-1].messages
    assert "Something went wrong" in chat[-1]["content"]
    assert "secret internal detail" not in chat[-1]["content"] and "Traceback" not in chat[-1]["content"]


def test_controller_too_long_question_is_a_friendly_message(controller):
    def never(question, **kw):  # pragma: no cover - must not be reached
        raise AssertionError("ask_stream called for an over-long question")

    ctl, assistant = controller(never)
    updates = list(ctl.respond("x" * 80, [], None, "hybrid", 6, "extractive"))
    chat, turns = updates[-1].messages, updates[-1].turns
    assert "the limit is 50" in chat[-1]["content"]
    assert turns[-1]["error"] and not assistant.calls
    assert updates[-1].question is None  # the text stays in the box so it can be shortened
    with pytest.raises(QuestionError):
        from rag.answer import check_question

        check_question("x" * 80, 50)


def _final_answer(question):
    from rag.records import Answer, Quote, Source

    text = "We propose a fine-tuning method that erases a concept from a diffusion model using negative guidance."
    start = ABSTRACT.index(text)
    return Answer(
        question=question,
        answer=f"- **Erasing Concepts** — {text} [1]",
        mode="extractive",
        abstained=False,
        citations=[{"n": 1, "paper_id": "p1", "title": "Erasing Concepts"}],
        sources=[Source(1, "p1", "Erasing Concepts", ABSTRACT[:80], 0.03, ABSTRACT)],
        notice="fallback notice",
        quotes=[Quote(1, "p1", start, start + len(text), text)],
    )


def test_controller_streams_then_replaces_with_verified_answer_and_passes_history(controller):
    from rag.records import StreamEvent

    def stream(question, **kw):
        yield StreamEvent("token", "partial text ")
        yield StreamEvent("reset")
        final = _final_answer(question)
        yield StreamEvent("token", final.answer)
        yield StreamEvent("final", answer=final)

    ctl, assistant = controller(stream)
    updates = list(ctl.respond("which papers erase concepts?", [], None, "bm25", 3, "extractive"))
    assert updates[0].question == ""  # the box is cleared once the question is accepted
    assert any("partial text" in u.messages[-1]["content"] for u in updates)
    final = updates[-1]
    assert "partial text" not in final.messages[-1]["content"]
    assert '<sup class="rag-cite" title="[1] Erasing Concepts">' in final.messages[-1]["content"]
    assert "fallback notice" in final.messages[-1]["content"]
    assert "<mark" in final.sources_html and "negative guidance" in final.sources_html
    assert final.export is not None and "which papers erase concepts?" in final.export.read_text()
    assert assistant.calls[0][1]["mode"] == "bm25" and assistant.calls[0][1]["top_k"] == 3
    assert assistant.calls[0][1]["extractive"] is False  # no LLM: the Assistant picks extractive itself

    list(ctl.respond("and which of them release code?", final.turns, None, "hybrid", 6, "extractive"))
    history = assistant.calls[1][1]["history"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "which papers erase concepts?"


def test_controller_ask_api_reply_and_top_k_bounds(controller):
    from rag.errors import ConfigError
    from rag.records import StreamEvent

    ctl, assistant = controller(lambda q, **kw: iter([StreamEvent("final", answer=_final_answer(q))]))
    reply = ctl.ask_api("which papers erase concepts?", "dense", 4, False)
    assert reply["citations"] == ["Erasing Concepts"] and reply["abstained"] is False
    assert reply["references"] == [{"n": 1, "title": "Erasing Concepts", "paper_id": "p1"}]
    assert assistant.calls[0][1]["top_k"] == 4 and assistant.calls[0][1]["mode"] == "dense"
    with pytest.raises(ConfigError, match="top_k"):
        ctl.ask_api("x", "hybrid", 99, False)


def test_only_ask_is_public_api(make_settings, tmp_path):
    from rag.ui.app import build_app

    app = build_app(make_settings(), _StubAssistant(lambda q, **kw: iter(())), eval_dir=tmp_path / "no-report")
    public = [fn.api_name for fn in app.fns.values() if getattr(fn, "api_visibility", "public") != "private"]
    assert public == ["ask"]


def test_eval_tab_hint_and_report(tmp_path):
    from rag.ui.app import load_eval_report

    md, images = load_eval_report(tmp_path / "missing")
    assert "make eval" in md and "rag eval --dataset eval/datasets/dev.jsonl --answer extractive --out eval/reports/latest" in md
    assert images == ""
    report = tmp_path / "latest"
    report.mkdir()
    (report / "report.md").write_text(
        "# Eval\n\n| metric | value |\n|---|---|\n| recall@10 | 0.9 |\n<script>x</script>\n\n![recall](recall.png)\n"
    )
    (report / "recall.png").write_bytes(b"\x89PNG\r\n\x1a\n fake")
    md, images = load_eval_report(report)
    assert "recall@10" in md and "<script>" not in md
    assert "](recall.png)" not in md and "plot recall.png: shown below" in md
    assert "data:image/png;base64," in images and "recall.png" in images


def test_status_and_auth_parsing(make_settings, tmp_path):
    from pydantic import SecretStr

    from rag.errors import ConfigError
    from rag.ui.app import is_loopback, parse_auth
    from rag.ui.controller import ChatController

    def status_text(settings, assistant):
        return ChatController(settings, assistant, tmp_path).status()

    assistant = _StubAssistant(lambda q, **kw: iter(()))
    assert "extractive (no LLM configured)" in status_text(make_settings(), assistant)
    assert "1 papers" in status_text(make_settings(), assistant) and "embedded" in status_text(make_settings(), assistant)
    assistant.has_llm = True
    line = status_text(make_settings(llm_base_url="http://user:pw@10.0.0.5:8000/v1", llm_model="my-model"), assistant)
    assert "my-model" in line and "10.0.0.5:8000" in line and "pw" not in line
    assert parse_auth(SecretStr("alice:s3:cret")) == ("alice", "s3:cret")
    assert parse_auth(None) is None
    with pytest.raises(ConfigError):
        parse_auth(SecretStr("no-colon"))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
