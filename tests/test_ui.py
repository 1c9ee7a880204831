"""The Gradio UI end to end: the /ask API over the real index, the chat in headless Chromium,
hostile-title escaping, basic auth, and friendly errors.

Browser tests use Debian's chromium (`make browser`); they are skipped when it is missing.
For quick local iteration, UI_TEST_DATA_DIR=/path/to/a/built/.rag uses that index instead of
building the session's real index.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, hash_index

from rag.eval.bench_ui import (
    TIMER_JS as _TIMER_JS,  # one timer for the benchmark and the tests
)
from rag.index.embedders import HashEmbedder
from rag.settings import load_settings, repo_root

REPO_ROOT = repo_root()

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ERASURE_Q = "which papers erase concepts in diffusion models?"
EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> Evil'
ZEBRA_Q = "zebra stripe camouflage in quantum llamas"
ARTIFACTS = REPO_ROOT / "test-artifacts"
WAIT_MS = 90_000  # generous: two shared CPU cores


def _serve(app) -> str:
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


def _is_erasure_title(title: str) -> bool:
    t = title.lower()
    return ("erase" in t or "erasing" in t or "erasure" in t) and "concept" in t


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ui_settings(request):
    data_dir = os.environ.get("UI_TEST_DATA_DIR")
    if data_dir:
        return load_settings(data_dir=data_dir)
    return request.getfixturevalue("real_index")


@pytest.fixture(scope="module")
def real_app(ui_settings):
    """The UI over the real index, served on a free loopback port for this module."""
    from rag.apps.ui.app import build_app

    app = build_app(ui_settings)
    url = _serve(app)
    yield app, url
    app.close()


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory):
    """A 4-paper index built with the hash embedder, one paper with a hostile title."""
    papers = [
        (EVIL, "We study zebra stripe camouflage in quantum llamas. Zebra stripe camouflage confuses "
               "quantum llamas on the savanna. Code: https://github.com/example/zebra"),
        ("Protein folding with transformers", "Protein folding is predicted with transformers. We report accuracy on benchmarks."),
        ("Graph networks for traffic", "Traffic forecasting uses graph neural networks. We evaluate on city data."),
        ("Speech recognition at scale", "We train speech recognition models on many hours of audio."),
    ]
    return hash_index(tmp_path_factory.mktemp("ui-tiny"), papers)


def _tiny_assistant(settings, llm=None):
    from rag.answer.assistant import Assistant
    from rag.retrieve.hybrid import Retriever

    if llm is not None:  # these tests script the answer call alone (the evidence step: test_evidence.py)
        settings = settings.model_copy(update={"evidence": False})
    return Assistant(settings, Retriever.from_settings(settings, embedder=HashEmbedder()), llm=llm)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make browser`")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


def _open(page, url):
    page.goto(url, wait_until="domcontentloaded")  # never networkidle: Gradio keeps a stream open
    page.wait_for_selector("#rag-question textarea")




def _ask_timed(page, question: str) -> tuple[float, float]:
    """Type, click Send, and return (seconds to first answer text, seconds to the final answer)."""
    page.wait_for_selector("#rag-send", state="visible")  # the previous answer has finished
    page.evaluate(_TIMER_JS)
    page.fill("#rag-question textarea", question)
    page.click("#rag-send")
    page.wait_for_function("window.__t.final !== null", timeout=WAIT_MS)
    t = page.evaluate("window.__t")
    return (t["first"] - t["start"]) / 1000, (t["final"] - t["start"]) / 1000


def _turns(page) -> int:
    return int(page.get_attribute("#rag-conv .rag-conv", "data-turns"))


def _wait_turns(page, n: int) -> None:
    page.wait_for_selector(f"#rag-conv .rag-conv[data-turns='{n}'][data-busy='0']", timeout=WAIT_MS)


def _scroll_conversation_to_top(page) -> None:
    page.evaluate(
        "document.querySelectorAll('#rag-conv, #rag-conv *').forEach(e => {"
        " if (e.scrollHeight > e.clientHeight + 4 && /(auto|scroll)/.test(getComputedStyle(e).overflowY)) e.scrollTop = 0; })"
    )


def _screenshot(page, name: str, docs_name: str) -> None:
    """Save a screenshot in test-artifacts/ and, when asked (UPDATE_DOCS_SCREENSHOT=1) or missing, in docs/."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    page.mouse.move(5, 5)
    page.wait_for_timeout(300)
    page.screenshot(path=str(shot), full_page=False)
    docs = REPO_ROOT / "docs" / docs_name
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1" or not docs.exists():
        docs.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, docs)


# ------------------------------------------------------------------ 1. the /ask API


def test_ask_api_answers_with_concept_erasure_citations(real_app):
    from gradio_client import Client

    _, url = real_app
    client = Client(url, verbose=False)
    result = client.predict(ERASURE_Q, api_name="/ask")
    assert isinstance(result, dict)
    assert result["answer"].strip()
    assert not result["abstained"]
    assert any(_is_erasure_title(t) for t in result["citations"]), result["citations"]
    assert result["mode"] in ("extractive", "llm")
    # optional parameters, by name
    again = client.predict(ERASURE_Q, mode="bm25", top_k=3, extractive=True, api_name="/ask")
    assert again["mode"] == "extractive" and 1 <= len(again["citations"]) <= 3
    assert result["confidence"]["level"] == "answer" and result["papers"]
    # a follow-up over the previous reply's papers
    follow = client.predict("tell me more about the second one", extractive=True,
                            previous_paper_ids=result["papers"], api_name="/ask")
    assert follow["referent"]["kind"] == "item"
    assert [r["paper_id"] for r in follow["references"]] == [result["papers"][1]]
    # only /ask is public: the UI's internal handlers stay out of the API
    info = client.view_api(print_info=False, return_format="dict")
    assert list(info["named_endpoints"]) == ["/ask"] and not info["unnamed_endpoints"]


def test_ask_api_rejects_a_too_long_question_with_a_friendly_error(real_app):
    from gradio_client import Client

    _, url = real_app
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        Client(url, verbose=False).predict("why " * 700, api_name="/ask")
    message = str(info.value)
    assert "the limit is" in message and "Traceback" not in message


# ------------------------------------------------------------------ 2. the chat in a browser


@pytest.mark.browser
def test_browser_chat_streams_cited_answer_with_sources(real_app, page):
    app, url = real_app
    app.rag_assistant.ask(ERASURE_Q)  # warm: timings below are for a warm process
    _open(page, url)
    status = page.inner_text("#rag-status")
    assert "papers" in status and ("embedded" in status or "server" in status)
    assert not page.is_visible("#rag-stop")  # Stop only while an answer runs

    first, final = _ask_timed(page, ERASURE_Q)
    print(f"\nUI timings (warm, {'LLM' if app.rag_assistant.has_llm else 'extractive'}): "
          f"first answer text {first:.2f}s, final answer {final:.2f}s after submit")

    answer = page.locator("#turn-1 .rag-answer")
    cites = answer.locator("a.rag-cite")
    assert cites.count() >= 1
    assert cites.first.get_attribute("href") == "#src-1-1"
    tooltips = [cites.nth(i).get_attribute("title") for i in range(cites.count())]
    assert any(_is_erasure_title(t) for t in tooltips), tooltips
    assert any(t.split("] ", 1)[1] in answer.inner_text() for t in tooltips)  # the titles are shown, not only hovered
    assert page.locator("#turn-1 .rag-conf").inner_text().endswith("confidence")  # a label, not a raw score
    panel = page.locator("#rag-sources")
    titles = panel.locator(".rag-src-title").all_inner_texts()
    assert titles and any(_is_erasure_title(t) for t in titles), titles
    assert panel.locator("mark").count() >= 1  # the quoted sentence is highlighted
    scores = panel.locator("details.rag-scores").first
    assert not scores.locator("small").is_visible()  # raw scores only behind a toggle
    assert not page.is_visible("#rag-stop")

    page.wait_for_timeout(500)
    _scroll_conversation_to_top(page)
    _screenshot(page, "ui.png", "screenshot.png")


@pytest.mark.browser
def test_browser_citation_in_an_earlier_answer_shows_that_answers_source(real_app, page):
    _, url = real_app
    _open(page, url)
    _ask_timed(page, ERASURE_Q)
    _ask_timed(page, "sparse autoencoders for interpretability")
    assert page.is_visible("section.rag-turn-src[data-turn='2'] .rag-src")  # the newest answer's sources
    cite = page.locator("#turn-1 a.rag-cite[data-n='2']").first
    title = cite.get_attribute("title").split("] ", 1)[1]
    cite.click()
    page.wait_for_function("location.hash === '#src-1-2'")
    card = page.locator("#src-1-2")
    assert card.is_visible() and "rag-target" in card.get_attribute("class")
    assert page.evaluate("document.activeElement.id") == "src-1-2"
    assert title in card.locator(".rag-src-title").inner_text()
    assert card.locator("mark").count() >= 1  # its quoted sentence, highlighted
    assert not page.is_visible("section.rag-turn-src[data-turn='2']")  # the second answer's sources step aside
    page.click("#rag-sources .rag-src-nav button[data-show='2']")
    assert page.is_visible("section.rag-turn-src[data-turn='2']") and not page.is_visible("#src-1-2")
    # a title opens the paper view
    page.locator("section.rag-turn-src[data-turn='2'] .rag-src-title a.rag-paper-link").first.click()
    page.wait_for_selector("#rag-paper .rag-paper-title")
    assert page.locator("#rag-paper .rag-similar li").count() >= 3  # similar papers by paper vector
    before = page.inner_text("#rag-paper .rag-paper-title")
    page.locator("#rag-paper .rag-similar a.rag-paper-link").first.click()
    page.wait_for_function(f"document.querySelector('#rag-paper .rag-paper-title').innerText !== {json.dumps(before)}")


@pytest.mark.browser
def test_browser_follow_up_export_clear_and_ask_as_new(real_app, page):
    _, url = real_app
    _open(page, url)
    _ask_timed(page, ERASURE_Q)
    _ask_timed(page, "which of them use adversarial training?")
    assert _turns(page) == 2
    assert page.locator("#turn-2 .rag-searched").count() == 1  # a follow-up: rewritten with the topic, and says so

    with page.expect_download() as dl:
        page.click("#rag-export")
    text = Path(dl.value.path()).read_text(encoding="utf-8")
    assert text.startswith("# Paper RAG conversation")
    assert ERASURE_Q in text and "which of them use adversarial training?" in text and "**References**" in text
    assert "<sup" not in text and "<a " not in text

    # "ask as a new question" replaces the rewritten turn with the question as typed
    page.click("#turn-2 [data-action='ask-new']")
    page.wait_for_function("(() => { const c = document.querySelector('#rag-conv .rag-conv');"
                           " return c && c.dataset.busy === '0' && c.dataset.turns === '2'"
                           " && document.querySelector('#turn-2 .rag-searched') === null; })()")
    assert "adversarial" in page.inner_text("#turn-2 .rag-q")

    page.click("#rag-clear")
    page.wait_for_selector("#rag-conv .rag-conv[data-turns='0']")
    assert page.locator("#rag-sources .rag-src").count() == 0
    assert page.locator("#rag-export").is_disabled()
    page.evaluate("window.__srcBefore = null; new MutationObserver(() => {"
                  " const c = document.querySelector('#rag-conv .rag-conv');"
                  " if (c && c.dataset.busy === '1' && window.__srcBefore === null)"
                  "   window.__srcBefore = document.querySelectorAll('#rag-sources .rag-src').length;"
                  "}).observe(document.body, {subtree: true, childList: true, attributes: true})")
    _ask_timed(page, "which of them use adversarial training?")
    assert page.evaluate("window.__srcBefore") == 0  # an empty sources panel while it ran
    assert page.locator("#turn-1 .rag-searched").count() == 0  # no previous topic after Clear


@pytest.mark.browser
def test_browser_copy_gives_markdown_without_html(real_app, browser):
    _, url = real_app
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.rstrip("/"))
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        _open(page, url)
        _ask_timed(page, ERASURE_Q)
        page.click("#turn-1 [data-action='copy']")
        page.wait_for_function("window.ragLastCopy !== undefined")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == page.evaluate("window.ragLastCopy")
        assert "[1]" in copied and "**References**" in copied and "- [1] " in copied
        assert not __import__("re").search(r"<[a-zA-Z/]", copied)  # no HTML tags
    finally:
        context.close()


@pytest.mark.browser
def test_browser_empty_question_is_blocked(real_app, page):
    _, url = real_app
    _open(page, url)
    page.fill("#rag-question textarea", "   ")
    page.wait_for_function("document.querySelector('#rag-send').disabled === true")
    page.press("#rag-question textarea", "Enter")
    page.wait_for_timeout(1500)
    assert _turns(page) == 0 and page.locator("#rag-conv article").count() == 0
    page.fill("#rag-question textarea", "sparse autoencoders")
    page.wait_for_function("document.querySelector('#rag-send').disabled === false")


@pytest.mark.browser
def test_browser_feedback_lands_in_the_file_and_exports_as_a_dataset(real_app, page, tmp_path):
    from conftest import run_cli

    from rag.eval.dataset import load_dataset

    app, url = real_app
    app.rag_controller.feedback_file = tmp_path / "feedback.jsonl"  # not the shared test index
    _open(page, url)
    _ask_timed(page, ERASURE_Q)
    page.click("#turn-1 [data-action='up']")
    page.wait_for_selector("#turn-1 .rag-fb.rag-on[data-action='up']")
    page.fill("#turn-1 .rag-comment textarea", "all erasure papers, good")
    page.click("#turn-1 [data-action='comment']")
    page.wait_for_function("document.querySelector('#turn-1 .rag-comment').innerText.includes('comment are saved')")
    lines = [json.loads(x) for x in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [x["rating"] for x in lines] == ["up", "up"] and lines[1]["comment"] == "all erasure papers, good"
    assert lines[0]["question"] == ERASURE_Q and lines[0]["citations"] and lines[0]["settings"]["mode"]
    assert lines[0]["generation"] is not None and lines[0]["sources"]
    out = tmp_path / "draft.jsonl"
    r = run_cli("feedback", "export", "--feedback-file", tmp_path / "feedback.jsonl", "--out", out)
    assert r.returncode == 0, r.stderr
    ds = load_dataset(out, strict=True)
    assert len(ds.questions) == 1 and any(_is_erasure_title(t) for t in ds.questions[0].gold_titles)


@pytest.mark.browser
def test_browser_reload_restores_conversation_and_settings(real_app, page):
    _, url = real_app
    _open(page, url)
    page.get_by_text("Answer settings").click()
    page.locator("#rag-mode input[value='bm25']").check()
    page.wait_for_timeout(500)
    _ask_timed(page, ERASURE_Q)
    cited = page.locator("#rag-sources .rag-src-title").first.inner_text()
    page.reload(wait_until="domcontentloaded")
    _wait_turns(page, 1)
    assert ERASURE_Q in page.inner_text("#turn-1 .rag-q")
    assert page.locator("#rag-sources .rag-src-title").first.inner_text() == cited
    page.get_by_text("Answer settings").click()
    assert page.locator("#rag-mode input[value='bm25']").is_checked()
    assert not page.locator("#rag-export").is_disabled()
    page.click("#rag-new")
    page.wait_for_selector("#rag-conv .rag-conv[data-turns='0']")
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector("#rag-conv .rag-conv")
    page.wait_for_timeout(1000)
    assert _turns(page) == 0  # New chat cleared the saved conversation too


@pytest.mark.browser
def test_browser_narrow_screen_keeps_input_visible_and_sources_reachable(real_app, browser):
    _, url = real_app
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        _open(page, url)
        _ask_timed(page, ERASURE_Q)
        _ask_timed(page, "sparse autoencoders for interpretability")
        page.evaluate("window.scrollTo(0, 0)")
        box = page.locator("#rag-question textarea").bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844, box  # on screen without scrolling
        send = page.locator("#rag-send").bounding_box()
        assert abs(send["y"] - box["y"]) < 40  # Send sits beside the input, not on its own row
        assert not page.is_visible("#rag-side") and not page.is_visible("#rag-stop")
        page.locator("#turn-1 a.rag-cite[data-n='1']").first.click()
        page.wait_for_function("location.hash === '#src-1-1'")
        assert page.is_visible("#src-1-1-m") and "rag-target" in page.get_attribute("#src-1-1-m", "class")
        page.locator("#turn-2 details.rag-inline-sources > summary").scroll_into_view_if_needed()
        page.locator("#turn-2 details.rag-inline-sources > summary").click()
        assert page.locator("#turn-2 details.rag-inline-sources .rag-src").first.is_visible()
        page.evaluate("window.scrollTo(0, 0)")
        _scroll_conversation_to_top(page)
        _screenshot(page, "ui-mobile.png", "screenshot-mobile.png")
    finally:
        context.close()


# ------------------------------------------------------------------ 3. hostile titles stay text


@pytest.mark.browser
def test_browser_hostile_title_is_escaped_everywhere(tiny_settings, page):
    from rag.apps.ui.app import build_app

    app = build_app(tiny_settings, _tiny_assistant(tiny_settings))
    try:
        _open(page, _serve(app))
        _ask_timed(page, ZEBRA_Q)
        answer = page.locator("#turn-1 .rag-answer")
        assert EVIL in answer.inner_text()
        assert EVIL in page.locator("#rag-sources .rag-src-title").first.inner_text()
        page.click("#turn-1 [data-action='copy']")
        page.wait_for_function("window.ragLastCopy !== undefined")
        copied = page.evaluate("window.ragLastCopy")  # the export: HTML-escaped Markdown that forms no tag
        assert EVIL.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in copied and "<" not in copied
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("#rag-conv img[src=x], #rag-sources img[src=x]").count() == 0

        # the Papers tab: table, paper view, and a chat scoped to the selected paper
        page.get_by_role("tab", name="Papers").click()
        cell = page.locator("#rag-papers [role=gridcell]").filter(has_text="Evil").first
        assert EVIL in cell.inner_text()
        cell.click()
        page.wait_for_function("document.querySelector('#rag-paper').innerText.includes('zebra')")
        assert EVIL in page.inner_text("#rag-paper .rag-paper-title")
        page.click("#rag-ask-paper")
        page.wait_for_selector("#rag-sources .rag-src")
        _wait_turns(page, 1)
        page.wait_for_function("document.querySelector('#rag-scope') && document.querySelector('#rag-scope').innerText.includes('Evil')")
        assert EVIL in page.inner_text("#rag-scope")
        assert len(page.locator("#rag-sources .rag-src").all()) == 1  # only the scoped paper
        assert page.evaluate("typeof window.__pwned") == "undefined"
    finally:
        app.close()


# ------------------------------------------------------------------ token streaming with an LLM


class _SlowLLM:
    """A stand-in LLM (rag.clients.chat.ChatModel) that streams a cited answer token by token."""

    name = "slow-fake"
    TOKENS = ("Zebra ", "stripe ", "camouflage ", "confuses ", "quantum ", "llamas ", "[1]", ".")

    def __init__(self):
        self.tokens = self.TOKENS
        self.ended = threading.Event()  # set when a stream ends: run out, or closed by a cancel

    def stream(self, messages, deadline=None, on_usage=None):
        self.ended.clear()
        try:
            for token in self.tokens:
                time.sleep(0.25)
                yield token
        finally:
            self.ended.set()

    def complete(self, messages, deadline=None, on_usage=None):
        return "zebra stripe camouflage"


@pytest.mark.browser
def test_browser_llm_tokens_stream_then_verified_answer(tiny_settings, page):
    from rag.apps.ui.app import build_app

    settings = tiny_settings.model_copy(update={"llm_base_url": "http://127.0.0.1:9/v1", "llm_model": "stub-model"})
    llm = _SlowLLM()
    app = build_app(settings, _tiny_assistant(settings, llm=llm))
    try:
        _open(page, _serve(app))
        assert "stub-model" in page.inner_text("#rag-status")
        page.evaluate(_TIMER_JS)
        page.fill("#rag-question textarea", ZEBRA_Q)
        page.click("#rag-send")
        page.wait_for_function(
            "(() => { const a = document.querySelector('#rag-conv .rag-pending .rag-answer');"
            " return a && a.innerText.includes('Zebra stripe') && !a.innerText.includes('llamas'); })()"
        )  # a partial answer is on screen
        assert page.is_visible("#rag-stop") and not page.is_visible("#rag-send")  # Stop while it runs
        page.wait_for_function("window.__t.final !== null")
        t = page.evaluate("window.__t")
        assert t["first"] < t["final"] - 500  # tokens arrived well before the verified answer
        page.wait_for_selector("#rag-send", state="visible")
        assert not page.is_visible("#rag-stop")
        final = page.locator("#turn-1")
        assert final.locator("a.rag-cite").first.get_attribute("title") == f"[1] {EVIL}"
        assert "Zebra stripe camouflage confuses quantum llamas" in final.inner_text()
        assert EVIL in page.locator("#rag-sources .rag-src-title").first.inner_text()
        assert page.evaluate("typeof window.__pwned") == "undefined"

        # Stop cancels an answer mid-stream: the unfinished turn goes, Send comes back. The stream lasts ~12 s
        # so the click lands mid-stream on a loaded machine too (a 2 s stream could finish before it).
        llm.tokens = _SlowLLM.TOKENS[:6] * 8 + _SlowLLM.TOKENS[6:]
        page.fill("#rag-question textarea", "and zebra llamas again?")
        page.click("#rag-send")
        page.wait_for_selector("#rag-conv .rag-pending .rag-answer")
        page.click("#rag-stop")
        page.wait_for_selector("#rag-send", state="visible")
        _wait_turns(page, 1)
        assert llm.ended.wait(30)  # the stream is over (closed by the cancel, or run out in its thread)
        page.wait_for_timeout(1000)  # time for a wrongly kept answer to render
        assert _turns(page) == 1 and page.locator("#rag-conv .rag-pending").count() == 0
    finally:
        app.close()


# ------------------------------------------------------------------ 4. basic auth


def _http_status(url: str, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_auth_refuses_anonymous_and_wrong_password(tiny_settings, capsys):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    from rag.apps.ui.app import launch

    port = free_port()
    settings = tiny_settings.model_copy(update={"ui_port": port, "ui_auth": load_settings(ui_auth="alice:s3cret").ui_auth})
    app = launch(settings, _tiny_assistant(settings), prevent_thread_lock=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert f"http://127.0.0.1:{port}" in capsys.readouterr().out
        assert _http_status(url + "config") == 401
        assert _http_status(url + "gradio_api/info") == 401
        join = json.dumps({"data": [ZEBRA_Q], "fn_index": 0, "session_hash": "x"}).encode()
        assert _http_status(url + "gradio_api/queue/join", join) == 401
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("alice", "wrong"), verbose=False)
        result = Client(url, auth=("alice", "s3cret"), verbose=False).predict(ZEBRA_Q, api_name="/ask")
        assert result["citations"] == [EVIL]
    finally:
        app.close()


def test_launch_binds_loopback_by_default(tiny_settings):
    assert load_settings().ui_host == "127.0.0.1"
    assert tiny_settings.ui_auth is None


# ------------------------------------------------------------------ 5. friendly errors in the chat


@pytest.mark.browser
def test_browser_too_long_question_gets_a_friendly_message(real_app, page):
    app, url = real_app
    limit = app.rag_assistant.settings.max_question_chars
    _open(page, url)
    page.fill("#rag-question textarea", "why " * (limit // 4 + 50))
    page.click("#rag-send")
    page.wait_for_function(
        "(() => { const e = document.querySelector('#rag-conv .rag-error');"
        " return e && e.innerText.includes('the limit is'); })()"
    )
    text = page.inner_text("#rag-conv .rag-error")
    assert f"the limit is {limit:,}" in text and "shorten it" in text
    assert "Traceback" not in page.inner_text("body")
    assert page.input_value("#rag-question textarea").startswith("why why")  # kept, to be shortened


def _post(url: str, form: dict) -> tuple[int, dict]:
    import urllib.parse

    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_failed_logins_are_throttled_and_every_response_has_security_headers(tiny_settings, tmp_path):
    from rag.apps.ui.app import launch

    port = free_port()
    login = tmp_path / "login"
    login.write_text("alice:s3cret\n")
    settings = tiny_settings.model_copy(update={"ui_port": port, "ui_auth_file": login, "ui_login_attempts": 3,
                                                "ui_login_window": 60.0})
    app = launch(settings, _tiny_assistant(settings), prevent_thread_lock=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        statuses = [_post(url + "login", {"username": "alice", "password": f"wrong{i}"})[0] for i in range(3)]
        assert statuses == [400, 400, 400]
        status, headers = _post(url + "login", {"username": "alice", "password": "s3cret"})
        assert status == 429 and int(headers["retry-after"]) > 0  # even the right password waits
        for path in ("", "config", "login"):
            try:
                with urllib.request.urlopen(url + path, timeout=30) as resp:
                    got = resp.headers
            except urllib.error.HTTPError as exc:
                got = exc.headers
            assert got["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in got["content-security-policy"]
            assert got["x-content-type-options"] == "nosniff"
    finally:
        app.close()


def test_login_throttle_counts_per_client_and_forgets_after_the_window():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from rag.apps.ui.security import LoginThrottle

    now = [0.0]

    async def app(scope, receive, send):
        ok = scope.get("password") == "right"
        await send({"type": "http.response.start", "status": 200 if ok else 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    throttle = LoginThrottle(app, max_failures=2, window=10.0, clock=lambda: now[0])

    def attempt(client, password="bad"):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": f"username={client}-user&password={password}".encode()}

        scope = {"type": "http", "method": "POST", "path": "/login", "client": (client, 1), "password": password,
                 "headers": [(b"content-type", b"application/x-www-form-urlencoded")]}
        # a thread of its own: a browser test on this worker may have left an event loop running here
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, throttle(scope, receive, send)).result()
        return sent[0]["status"]

    assert [attempt("1.1.1.1") for _ in range(3)] == [400, 400, 429]
    assert attempt("2.2.2.2") == 400  # another client is not affected
    now[0] = 11.0
    assert attempt("1.1.1.1", "right") == 200  # the window passed


def test_a_password_on_the_command_line_is_refused(tmp_path):
    from conftest import run_cli

    r = run_cli("ui", "--auth", "alice:s3cret", env={"RAG_DATA_DIR": str(tmp_path)})
    assert r.returncode == 2 and "ps" in r.stderr and "RAG_UI_AUTH" in r.stderr and "--auth-file" in r.stderr
    assert "s3cret" not in r.stderr
