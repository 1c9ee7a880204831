"""Fast checks of the UI's rendering helpers and chat handler (no server, no browser, no model)."""

from __future__ import annotations

import html
import re

import pytest

from rag.apps.ui import render
from rag.errors import QuestionError
from rag.records import Paper

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


def test_citations_become_links_to_this_answers_source_cards():
    out = render.answer_html("Erases concepts [1]. Also [1, 2]. Not a source [9].", 3, {1: EVIL, 2: "Second"})
    links = re.findall(r'<a class="rag-cite" href="#src-3-(\d)" data-turn="3" data-n="\d"', out)
    assert links == ["1", "1", "2"]
    assert f'title="[1] {html.escape(EVIL, quote=True)}"' in out and 'title="[2] Second"' in out
    assert "<sup>[9]</sup>" in out  # a number that is no source stays plain text
    assert "<script>" not in out and "<img" not in out


def test_answer_markdown_cannot_smuggle_html_links_or_images():
    out = render.answer_html(f"**bold** {EVIL} [x](javascript:alert(1)) ![p](http://t.example/p.png) <b>hi</b> [1]",
                             1, {1: "T"})
    assert "<strong>bold</strong>" in out
    assert "<script" not in out and "<img" not in out and "<b>" not in out and 'href="javascript' not in out
    assert "&lt;script&gt;" in out


def test_turn_shows_confidence_searched_for_more_and_actions():
    turn = _turn("Negative guidance erases concepts [1].", standalone_question="erase concepts diffusion " + EVIL,
                 judgement={"level": "answer", "confidence": 0.93}, more_papers=2,
                 notice="Extractive answer. 2 more papers passed the relevance check: raise top-k to list them.")
    out = render.turn_html(turn, 2, {"p1": _paper()}, last=True)
    assert 'id="turn-2"' in out and "high confidence" in out and "93%" in out
    assert "Searched for:" in out and 'data-action="ask-new" data-turn="2"' in out and "<script>" not in out
    assert "2 more papers passed the relevance check" in out and 'data-action="more"' in out
    assert "raise top-k" not in out  # the notice's version of it is replaced by the button
    for action in ("copy", "up", "down", "regenerate"):
        assert f'data-action="{action}" data-turn="2"' in out
    assert 'id="src-2-1-m"' in out  # the narrow-screen copy of its sources
    assert "regenerate" not in render.turn_html(turn, 2, {}, last=False)
    low = render.turn_html(_turn("x [1]", judgement={"level": "low", "confidence": 0.4}), 1, {})
    assert "low confidence" in low
    medium = render.turn_html(_turn("x [1]", judgement={"level": "answer", "confidence": 0.6}), 1, {})
    assert "medium confidence" in medium
    assert "rag-conf" not in render.turn_html(_turn("x [1]"), 1, {})  # no judgement (scoped): no label


def test_raw_scores_only_inside_a_details_toggle():
    turn = _turn("We propose a method [1].", retrieval_mode="hybrid")
    turn["sources"][0]["similarity"] = 0.6123
    card = render.source_card(turn, 1, turn["sources"][0], _paper())
    assert '<details class="rag-scores"><summary>scores</summary>' in card
    assert card.index("0.0312") > card.index("<details") and "cosine similarity 0.612" in card


def test_abstention_shows_possibly_related():
    turn = _turn(
        "The indexed papers do not answer this question.",
        abstained=True,
        citations=[],
        possibly_related=[{"paper_id": "p1", "title": EVIL}],
    )
    out = render.turn_html(turn, 1, {"p1": _paper(title=EVIL)})
    assert "Not answered from the corpus" in out and "Possibly related" in out
    assert "&lt;script&gt;" in out and "<script>" not in out
    panel = render.sources_panel([turn], {"p1": _paper(title=EVIL)})
    assert "Possibly related" in panel and "<script>" not in panel and "github.com/example/erase" in panel


def test_sources_panel_keeps_every_answers_sources_and_marks_the_quote():
    answer = (
        "- **x** — We propose a fine-tuning method that erases a concept from a diffusion model using negative guidance. [1]"
    )
    turns = [_turn(answer, title=EVIL), {"question": "bad", "error": "too long"}, _turn("Other [1].")]
    panel = render.sources_panel(turns, {"p1": _paper(title=EVIL)})
    assert 'id="src-1-1"' in panel and 'id="src-3-1"' in panel and "src-2-" not in panel
    assert re.search(r'<section class="rag-turn-src active" data-turn="3"', panel)  # the last answer is shown
    assert 'data-show="1"' in panel and 'data-show="3"' in panel
    first = render.sources_panel(turns, {"p1": _paper(title=EVIL)}, active=1)
    assert re.search(r'<section class="rag-turn-src active" data-turn="1"', first)
    section = first[first.index('data-turn="1"'):first.index('data-turn="3"')]
    marked = re.findall(r"<mark[^>]*>(.*?)</mark>", section)
    assert marked == ["We propose a fine-tuning method that erases a concept from a diffusion model using negative guidance"]
    assert 'href="https://github.com/example/erase"' in panel and 'rel="noopener noreferrer nofollow"' in panel
    assert 'data-action="open-paper" data-pid="p1"' in panel  # titles open the paper view
    assert "<script>" not in panel and "<img" not in panel and html.escape(EVIL) in panel
    assert render.sources_panel([], {}) == render.EMPTY_SOURCES


def test_paraphrased_sentence_gets_an_approximate_mark():
    answer = "The authors propose fine-tuning that erases a concept from a diffusion model with negative guidance [1]."
    panel = render.sources_panel([_turn(answer)], {"p1": _paper()})
    assert "rag-approx" in panel


def test_copy_markdown_has_references_and_no_html():
    turn = _turn("- **Erasing Concepts** — We propose a method. [1]", title=EVIL)
    turn["sources"][0]["url"] = "https://arxiv.org/abs/2303.07345"
    md = render.turn_markdown(turn)
    assert "**References**" in md and "- [1] &lt;script&gt;" in md and md.rstrip().endswith("<https://arxiv.org/abs/2303.07345>")
    assert not re.search(r"<[a-zA-Z/]", md.replace("<https://", ""))  # no tag can form: only the URL's autolink
    rendered = render.turn_html(turn, 1, {})
    copy = re.search(r'data-action="copy" data-turn="1"[^>]*data-md="([^"]*)"', rendered)
    assert html.unescape(copy.group(1)) == md


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
    view = render.render_paper(papers["p2"], [(papers["p1"], 0.8123), (None, 0.5)])
    assert "<script>" not in view and html.escape(EVIL) in view
    assert "Similar papers" in view and 'data-action="open-paper" data-pid="p1"' in view and "0.81" in view
    assert "Similar papers" not in render.render_paper(papers["p2"])


def test_history_skips_errors_and_export_markdown():
    turns = [_turn("We propose a method. [1]"), {"question": "too long", "error": "the question is too long"}]
    assert render.history(turns) == [
        {"role": "user", "content": "which papers erase concepts?"},
        {"role": "assistant", "content": "We propose a method. [1]"},
    ]
    md = render.conversation_markdown(turns, "extractive")
    assert md.startswith("# Paper RAG conversation")
    assert "## 1. which papers erase concepts?" in md and "[1] Erasing Concepts" in md
    assert "Error: the question is too long" in md


# ------------------------------------------------------------------ the UI controller, called directly


class _StubAssistant:
    """Stands in for rag.answer.assistant.Assistant (the methods the UI uses); `behaviour` decides what ask_stream does."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.has_llm = False
        self.calls = []

    def papers(self):
        return [_paper()]

    def index_info(self):
        return {"papers": 1, "chroma": "embedded", "stale": None, "generation": 7}

    def similar_papers(self, pid, k=5):
        return []

    def ask_stream(self, question, **kw):
        self.calls.append((question, kw))
        return self.behaviour(question, **kw)

    def ask(self, question, **kw):
        for event in self.ask_stream(question, **kw):
            if event.kind == "final":
                return event.answer


@pytest.fixture
def controller(make_settings, tmp_path):
    from rag.apps.ui.controller import ChatController

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
    conv = updates[-1].conversation
    assert "Something went wrong" in conv and updates[-1].turns[-1]["error"]
    assert "secret internal detail" not in conv and "Traceback" not in conv


def test_controller_too_long_question_is_a_friendly_message(controller):
    def never(question, **kw):  # pragma: no cover - must not be reached
        raise AssertionError("ask_stream called for an over-long question")

    ctl, assistant = controller(never)
    updates = list(ctl.respond("x" * 80, [], None, "hybrid", 6, "extractive"))
    conv, turns = updates[-1].conversation, updates[-1].turns
    assert "the limit is 50" in conv
    assert turns[-1]["error"] and not assistant.calls
    assert updates[-1].question is None  # the text stays in the box so it can be shortened
    with pytest.raises(QuestionError):
        from rag.answer.assistant import check_question

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
    assert 'data-busy="1"' in updates[0].conversation and not updates[0].final
    assert any("partial text" in u.conversation for u in updates)
    final = updates[-1]
    assert final.final and 'data-busy="0"' in final.conversation
    assert "partial text" not in final.conversation
    assert '<a class="rag-cite" href="#src-1-1" data-turn="1" data-n="1" title="[1] Erasing Concepts">' in final.conversation
    assert "fallback notice" in final.conversation
    assert "<mark" in final.sources_html and "negative guidance" in final.sources_html
    assert final.export is not None and "which papers erase concepts?" in final.export.read_text()
    assert assistant.calls[0][1]["mode"] == "bm25" and assistant.calls[0][1]["top_k"] == 3
    assert assistant.calls[0][1]["extractive"] is False  # no LLM: the Assistant picks extractive itself
    turn = final.turns[0]
    assert turn["settings"] == {"mode": "bm25", "top_k": 3, "answer_mode": "extractive", "llm_model": None}
    assert turn["generation"] == 7 and turn["answered_at"] and "abstract" not in str(turn["sources"])

    list(ctl.respond("and which of them release code?", final.turns, None, "hybrid", 6, "extractive"))
    history = assistant.calls[1][1]["history"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "which papers erase concepts?"


def test_controller_empty_question_changes_nothing(controller):
    ctl, assistant = controller(lambda q, **kw: iter(()))
    assert list(ctl.respond("   \n\t ", [{"question": "x", "error": "e"}], None, "hybrid", 6, "extractive")) == []
    assert list(ctl.respond("", [], None, "hybrid", 6, "extractive")) == [] and not assistant.calls


def _answering(question, **kw):
    from rag.records import StreamEvent

    yield StreamEvent("stage", "retrieving…")
    answer = _final_answer(question)
    answer.more_papers = 4
    yield StreamEvent("final", answer=answer)


def test_controller_regenerate_ask_new_and_more(controller):
    import json

    ctl, assistant = controller(_answering)
    turns = list(ctl.respond("which papers erase concepts?", [], None, "hybrid", 6, "extractive"))[-1].turns
    turns = list(ctl.respond("and code?", turns, None, "hybrid", 6, "extractive"))[-1].turns
    assert len(turns) == 2 and any(u.conversation.count("retrieving…") for u in ctl.respond("q", [], None, "hybrid", 6, ""))
    assistant.calls.clear()

    def act(action, turn, k=6):
        return list(ctl.act(json.dumps({"action": action, "turn": turn}), turns, None, "hybrid", k, "extractive"))[-1].turns

    again = act("regenerate", 2)
    assert len(again) == 2 and again[1]["question"] == "and code?"  # replaced, not appended
    assert assistant.calls[-1][1]["history"][0]["content"] == "which papers erase concepts?"
    fresh = act("ask-new", 2)
    assert len(fresh) == 2 and assistant.calls[-1][1]["history"] == []
    more = act("more", 2, k=3)
    assert len(more) == 2 and assistant.calls[-1][1]["top_k"] == 1 + 4  # shown + more (at least the slider)
    assert act("more", 2, k=12) and assistant.calls[-1][1]["top_k"] == 12
    earlier = act("ask-new", 1)
    assert len(earlier) == 3 and earlier[2]["question"] == "which papers erase concepts?"  # an earlier turn: appended
    n = len(assistant.calls)
    for bad in ('{"action": "regenerate", "turn": 9}', "not json", '{"action": "rm -rf", "turn": 1}', None):
        assert list(ctl.act(bad, turns, None, "hybrid", 6, "extractive")) == []
    assert len(assistant.calls) == n


def test_controller_feedback_lands_in_the_file_and_exports_as_a_valid_dataset(controller, tmp_path):
    import json

    from rag.apps import feedback
    from rag.eval.dataset import load_dataset

    ctl, _ = controller(_answering)
    turns = list(ctl.respond("which papers erase concepts?", [], None, "dense", 6, "extractive"))[-1].turns
    turns, message = ctl.rate(json.dumps({"action": "comment", "turn": 1, "arg": "x"}), turns)
    assert message and "Rate the answer" in message and not ctl.feedback_file.exists()
    turns, message = ctl.rate(json.dumps({"action": "up", "turn": 1}), turns)
    assert message is None and turns[0]["feedback"] == "up"
    turns, _ = ctl.rate(json.dumps({"action": "comment", "turn": 1, "arg": "  spot on\n "}), turns)
    assert turns[0]["feedback_comment"] == "spot on" and "rag-on" in ctl.conversation(turns)
    lines = [json.loads(x) for x in ctl.feedback_file.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["id"] == lines[1]["id"]
    assert lines[0]["settings"]["mode"] == "dense" and lines[0]["generation"] == 7
    assert lines[0]["citations"][0]["title"] == "Erasing Concepts" and lines[0]["answer"].startswith("- **Erasing")
    entries, problems = feedback.load(ctl.feedback_file)
    assert len(entries) == 1 and entries[0]["comment"] == "spot on" and not problems
    drafts = feedback.draft_dataset(entries)
    out = tmp_path / "draft.jsonl"
    out.write_text("".join(json.dumps(d) + "\n" for d in drafts))
    ds = load_dataset(out, strict=True)
    assert [q.gold_titles for q in ds.questions] == [["Erasing Concepts"]] and "DRAFT" in ds.questions[0].notes


def test_restore_keeps_only_well_formed_turns(controller):
    from rag.apps.ui.controller import restore_turns

    good = {"question": "q", "answer": "a [1]", "citations": [], "sources": [], "evil": "dropped key"}
    restored = restore_turns([good, "junk", {"question": 3}, {"question": "bad", "citations": "oops"}, None])
    assert len(restored) == 1  # the string, the numeric question and the unrenderable citations are dropped
    assert restored[0]["question"] == "q" and "evil" not in restored[0]
    assert restore_turns("not a list") == [] and restore_turns(None) == []


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
    from rag.apps.ui.app import build_app

    app = build_app(make_settings(), _StubAssistant(lambda q, **kw: iter(())), eval_dir=tmp_path / "no-report")
    public = [fn.api_name for fn in app.fns.values() if getattr(fn, "api_visibility", "public") != "private"]
    assert public == ["ask"]


def test_eval_tab_leads_with_the_headline_and_plots(tmp_path):
    import json

    from rag.apps.ui.app import load_eval_report

    md, images, full = load_eval_report(tmp_path / "missing")
    assert "make eval" in md and "rag eval --dataset eval/datasets/dev.jsonl --answer extractive --out eval/reports/latest" in md
    assert images == "" and full == ""
    report = tmp_path / "latest"
    report.mkdir()
    (report / "report.md").write_text(
        "# Eval\n\n| metric | value |\n|---|---|\n| recall@10 | 0.9 |\n<script>x</script>\n\n![recall](recall.png)\n"
    )
    (report / "recall.png").write_bytes(b"\x89PNG\r\n\x1a\n fake")
    summary = {"hybrid": {"recall@10": 0.96, "ndcg@10": 0.944, "questions": 115, "errors": 0}}
    by_split = {"hybrid": {"test": {"recall@10": 0.962, "ndcg@10": 0.944}, "tune": {"recall@10": 0.97, "ndcg@10": 0.916}}}
    (report / "report.json").write_text(json.dumps({"summary": summary, "by_split": by_split,
                                                    "dataset": {"questions": 231, "path": "d.jsonl"}}))
    md, images, full = load_eval_report(report)
    assert "Headline" in md and "hybrid test | hybrid tune" in md and "| ndcg@10 | 0.944 | 0.916 |" in md
    assert "Out of sample" in md
    assert "recall@10" in full and "<script>" not in full
    assert "](recall.png)" not in full and "plot recall.png: shown above" in full
    assert "data:image/png;base64," in images and "recall.png" in images


def test_status_and_auth_parsing(make_settings, tmp_path):
    from pydantic import SecretStr

    from rag.apps.ui.app import is_loopback, parse_auth
    from rag.apps.ui.controller import ChatController
    from rag.errors import ConfigError

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


def test_rag_feedback_export_cli(controller, tmp_path):
    import json

    from conftest import run_cli

    from rag.eval.dataset import load_dataset

    ctl, _ = controller(_answering)
    env = {"RAG_DATA_DIR": str(ctl.feedback_file.parent)}
    r = run_cli("feedback", "export", env=env)
    assert r.returncode != 0 and "no feedback yet" in r.stderr and "Traceback" not in r.stderr
    turns = list(ctl.respond("which papers erase concepts?", [], None, "hybrid", 6, "extractive"))[-1].turns
    turns = list(ctl.respond("zebra llamas?", turns, None, "hybrid", 6, "extractive"))[-1].turns
    ctl.rate(json.dumps({"action": "up", "turn": 1}), turns)
    ctl.rate(json.dumps({"action": "down", "turn": 2}), turns)
    with open(ctl.feedback_file, "a") as fh:
        fh.write("{not json\n")
    out = tmp_path / "drafts.jsonl"
    r = run_cli("feedback", "export", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 draft questions" in r.stderr and "invalid JSON" in r.stderr  # the bad line is reported, not fatal
    ds = load_dataset(out, strict=True)
    by_q = {q.question: q for q in ds.questions}
    assert by_q["which papers erase concepts?"].gold_titles == ["Erasing Concepts"]
    assert by_q["zebra llamas?"].type == "unanswerable"  # rated down: drafted as a candidate unanswerable
    r = run_cli("feedback", "export", "--rating", "up", env=env)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and json.loads(r.stdout)["question"] == "which papers erase concepts?"


def test_packaged_page_assets_load():
    from rag.apps.ui.assets import load_assets

    assets = load_assets()
    assert ".rag-conv-empty" in assets.css and "@media (max-width: 900px)" in assets.css
    assert "window.ragShowSource" in assets.shared_js and "trigger('submit'" in assets.shared_js
    # the conversation runs the shared code first, then its own (autoscroll, empty-question gate)
    assert assets.conversation_js.startswith(assets.shared_js) and "gate();" in assets.conversation_js
    assert "gate();" not in assets.shared_js


@pytest.mark.parametrize("name", ["app.css", "shared.js", "conversation.js"])
def test_a_missing_page_asset_is_named(tmp_path, name):
    from importlib import resources

    from rag.apps.ui.assets import FILES, load_assets
    from rag.errors import AssetError

    for other in FILES:
        if other != name:
            (tmp_path / other).write_text(resources.files("rag.apps.ui.assets").joinpath(other).read_text())
    with pytest.raises(AssetError, match=re.escape(str(tmp_path / name))):
        load_assets(tmp_path)


def test_served_page_carries_the_packaged_css_and_js(make_settings, tmp_path):
    import json
    import urllib.request

    from conftest import free_port

    from rag.apps.ui.app import launch
    from rag.apps.ui.assets import load_assets

    assets = load_assets()
    port = free_port()
    settings = make_settings(ui_port=port, ui_eval_dir=str(tmp_path / "no-report"))
    app = launch(settings, _StubAssistant(lambda q, **kw: iter(())), prevent_thread_lock=True)
    try:
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read())
    finally:
        app.close()
    assert config["css"] == assets.css
    scripts = {c["props"].get("elem_id"): c["props"].get("js_on_load") for c in config["components"]
               if c["type"] == "html"}
    assert scripts["rag-conv"] == assets.conversation_js
    assert scripts["rag-sources"] == assets.shared_js and scripts["rag-paper"] == assets.shared_js


def test_layout_builds_alone_with_the_assets_it_is_given(make_settings, tmp_path):
    import gradio as gr

    from rag.apps.ui.assets import PageAssets
    from rag.apps.ui.controller import ChatController
    from rag.apps.ui.layout import build_layout

    ctl = ChatController(make_settings(), _StubAssistant(lambda q, **kw: iter(())), tmp_path)
    with gr.Blocks():
        ui = build_layout(ctl, make_settings(), PageAssets(css="", shared_js="/*s*/", conversation_js="/*c*/"),
                          secret="k" * 64, eval_report=("# head", "", "full"))
    assert ui.conv.js_on_load == "/*c*/" and ui.sources.js_on_load == "/*s*/" and ui.paper_html.js_on_load == "/*s*/"
    assert ui.stop.visible is False and ui.answer_mode.value == "extractive"  # no LLM configured
    assert ui.eval_head.value == "# head"
