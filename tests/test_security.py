"""API keys never leak: not in CLI output or logs, not in eval reports, not in the UI."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from conftest import free_port, run_cli

from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest

SENTINEL = "sk-SENTINEL-do-not-leak-42"
PAPERS = [
    {"title": "Erasing Concepts from Diffusion Models", "abstract": "We erase a visual concept from a pre-trained diffusion model using negative guidance as a teacher. The method removes artistic styles and nudity."},
    {"title": "Sparse Autoencoders Find Interpretable Features", "abstract": "Sparse autoencoders decompose language model activations into interpretable features. We evaluate them on several models."},
]


@pytest.fixture
def tiny_index(tmp_path, make_settings):
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in PAPERS))
    settings = make_settings(corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    return settings


def _env(settings, fake_llm, **extra):
    return {"RAG_DATA_DIR": str(settings.data_dir), "RAG_EMBED_BACKEND": "hash", "RAG_CORPUS": settings.corpus,
            "RAG_LLM_BASE_URL": fake_llm.base_url, "RAG_LLM_API_KEY": SENTINEL, "RAG_EVIDENCE": "off", "RAG_LLM_MAX_ATTEMPTS": "2",
            "RAG_LLM_MAX_WAIT": "2", "RAG_LLM_TIMEOUT": "2", **extra}


def test_key_absent_from_cli_output_and_verbose_logs_on_errors(tiny_index, fake_llm):
    fake_llm.queue_error(401, body=json.dumps({"error": {"message": f"Incorrect API key provided: {SENTINEL}"}}))
    for status in (500, 500):  # the second ask tries twice (RAG_LLM_MAX_ATTEMPTS=2)
        fake_llm.queue_error(status, body=json.dumps({"error": {"message": f"boom {SENTINEL}"}}))
    for _ in range(2):
        r = run_cli("-v", "ask", "which papers erase concepts in diffusion models?", "--json", env=_env(tiny_index, fake_llm))
        assert r.returncode == 0, r.stderr
        assert SENTINEL not in r.stdout and SENTINEL not in r.stderr
        assert json.loads(r.stdout)["mode"] == "extractive"  # fell back, with a notice
    assert fake_llm.requests and all(req["headers"]["authorization"] == f"Bearer {SENTINEL}" for req in fake_llm.requests)


def test_key_absent_from_settings_repr_and_logs(tiny_index, caplog):
    from rag.settings import load_settings

    settings = load_settings(llm_api_key=SENTINEL, llm_base_url="http://127.0.0.1:9/v1")
    assert SENTINEL not in repr(settings) and SENTINEL not in str(settings.model_dump())
    from rag.clients.chat import OpenAIChatLLM

    llm = OpenAIChatLLM.from_settings(settings)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(Exception) as exc:
            llm.complete([{"role": "user", "content": "hi"}])
    assert SENTINEL not in str(exc.value)
    assert SENTINEL not in caplog.text


def test_key_absent_from_eval_report(tiny_index, fake_llm, tmp_path):
    dataset = tmp_path / "ds.jsonl"
    dataset.write_text(json.dumps({"id": "q1", "type": "list", "question": "which papers erase concepts?",
                                   "gold_titles": [PAPERS[0]["title"]], "key_facts": [], "notes": ""}) + "\n")
    fake_llm.default_reply = f"**{PAPERS[0]['title']}** erases concepts [1]."
    out = tmp_path / "report"
    r = run_cli("eval", "--dataset", str(dataset), "--answer", "llm", "--modes", "hybrid", "--out", str(out),
                env=_env(tiny_index, fake_llm))
    assert r.returncode == 0, r.stderr
    for path in out.iterdir():
        if path.suffix in (".json", ".md"):
            assert SENTINEL not in path.read_text(), path.name
    assert SENTINEL not in r.stdout + r.stderr


@pytest.mark.slow
def test_key_and_url_password_absent_from_ui_page_config_and_api(tiny_index, fake_llm):
    from gradio_client import Client

    from rag.answer.assistant import Assistant
    from rag.apps.ui.app import build_app
    from rag.clients.chat import OpenAIChatLLM
    from rag.retrieve.hybrid import Retriever

    password = "s3cret-ui-pass"
    base_url = fake_llm.base_url.replace("http://", f"http://user:{password}@")  # issue 26
    settings = tiny_index.model_copy(update={"llm_base_url": base_url, "evidence": False})
    llm = OpenAIChatLLM(base_url, SENTINEL, "fake-model", timeout=2, max_attempts=1, max_wait=1)
    assistant = Assistant(settings, Retriever.from_settings(settings, embedder=HashEmbedder()), llm)
    app = build_app(settings, assistant)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        config = urllib.request.urlopen(url + "config", timeout=10).read().decode()
        assert SENTINEL not in page + config and password not in page + config
        fake_llm.queue_error(401, body=json.dumps({"error": {"message": f"bad key {SENTINEL} for user:{password}"}}))
        result = Client(url, verbose=False).predict("which papers erase concepts in diffusion models?", api_name="/ask")
        assert "rejected the API key" in json.dumps(result)  # the notice says why, with the URL masked
        assert SENTINEL not in json.dumps(result) and password not in json.dumps(result)
    finally:
        app.close()


# ------------------------------------------------------------------ the UI login: no bypass (issue 26)


def _tiny_assistant(settings):
    from rag.answer.assistant import Assistant
    from rag.retrieve.hybrid import Retriever

    return Assistant(settings, Retriever.from_settings(settings, embedder=HashEmbedder()), llm=None)


@pytest.fixture
def login_app(tiny_index, tmp_path):
    """`launch(settings)` as `rag ui` runs it, with a login file and 3 failures allowed; yields (url, launch)."""
    from rag.apps.ui.app import launch

    login = tmp_path / "login"
    login.write_text("alice:s3cret\n")
    apps = []

    def start(**update):
        settings = tiny_index.model_copy(update={"ui_port": free_port(), "ui_auth_file": login, "ui_login_attempts": 3,
                                                 "ui_login_window": 60.0, **update})
        apps.append(launch(settings, _tiny_assistant(settings), prevent_thread_lock=True))
        return f"http://127.0.0.1:{settings.ui_port}/"

    yield start
    for app in apps:
        app.close()


def _login(url: str, user: str, password: str, forwarded_for: str | None = None) -> int:
    import urllib.error
    import urllib.parse

    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    req = urllib.request.Request(url + "login", data=urllib.parse.urlencode({"username": user, "password": password}).encode(),
                                 method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_a_fresh_x_forwarded_for_per_guess_does_not_bypass_the_login_throttle(login_app):
    url = login_app()  # default: no proxy is trusted
    guesses = [_login(url, "alice", f"wrong{i}", forwarded_for=f"203.0.113.{i}") for i in range(10)]
    assert guesses == [400] * 3 + [429] * 7, guesses  # locked after 3, whatever address each guess claims
    assert _login(url, "alice", "s3cret", forwarded_for="198.51.100.7") == 429  # the right one waits too


@pytest.mark.slow
def test_behind_a_configured_proxy_the_throttle_counts_per_address_and_per_user_name(login_app):
    url = login_app(ui_forwarded_allow_ips="127.0.0.1")  # a reverse proxy on this machine forwards every client
    # per address: the forwarded address is the client
    assert [_login(url, f"user{i}", "x", forwarded_for="203.0.113.1") for i in range(4)] == [400, 400, 400, 429]
    assert _login(url, "carol", "x", forwarded_for="203.0.113.2") == 400  # another client is not affected
    # per user name: guesses for alice from ever new addresses stop after 3
    assert [_login(url, "alice", f"wrong{i}", forwarded_for=f"198.51.100.{i}") for i in range(5)] == [400] * 3 + [429] * 2
    assert _login(url, "alice", "s3cret", forwarded_for="192.0.2.9") == 429
    assert _login(url, "bob", "x", forwarded_for="192.0.2.10") == 400  # another name is not affected


def test_forwarded_allow_ips_must_be_addresses(tmp_path):
    r = run_cli("ui", "--forwarded-allow-ips", "proxy.example.org", env={"RAG_DATA_DIR": str(tmp_path)})
    assert r.returncode == 2 and "RAG_UI_FORWARDED_ALLOW_IPS" in r.stderr and "proxy.example.org" in r.stderr
    assert "127.0.0.1" in r.stderr  # an example of what to give


# ------------------------------------------------------------------ no leak: settings, logs, reports (issue 26)

PASSWORD = "pw-SENTINEL-77"


@pytest.mark.parametrize("var", ["RAG_LLM_BASE_URL", "RAG_JUDGE_BASE_URL", "RAG_EMBED_URL", "RAG_CHROMA_URL"])
@pytest.mark.parametrize("value", [f"ftp://alice:{PASSWORD}@llm.example.org/v1", f"alice:{PASSWORD}@llm.example.org/v1"])
def test_an_invalid_url_is_named_without_its_password(tmp_path, var, value):
    r = run_cli("search", "concept erasure", env={"RAG_DATA_DIR": str(tmp_path), var: value})
    assert r.returncode == 2 and var in r.stderr and "http(s) URL" in r.stderr, r.stderr
    assert PASSWORD not in r.stderr and "llm.example.org/v1" in r.stderr  # which URL, without its userinfo


def test_log_lines_carry_no_secret_and_no_terminal_escapes(tiny_index, fake_llm, monkeypatch):
    """Every log line of a command is redacted of the configured key and URL passwords and shows control and bidi
    characters as escapes, whatever module wrote it: the LLM client's retry warnings for a server whose error
    text is hostile, and a library logging a raw URL and the key."""
    import logging as logging_

    from rag.apps import cli

    url = fake_llm.base_url.replace("http://", f"http://alice:{PASSWORD}@")
    for _ in range(2):
        fake_llm.queue_error(500, body=json.dumps({"error": {"message": "down \x1b]0;owned\x07 \u202egnp.exe \x9b2J"}}))
    ask = cli.COMMANDS["ask"]

    def ask_then_log(args):  # a library that logs what it was given, the key and a raw URL included
        logging_.getLogger("somelib").warning("request to %s with key %s: %s", url, SENTINEL, "\x1b[2Jcleared \u202eexe")
        return ask(args)

    monkeypatch.setitem(cli.COMMANDS, "ask", ask_then_log)
    r = run_cli("-v", "ask", "which papers erase concepts in diffusion models?",
                env=_env(tiny_index, fake_llm, RAG_LLM_BASE_URL=url))
    assert r.returncode == 0, r.stderr
    assert "request to http://***@127.0.0.1" in r.stderr and "with key ***" in r.stderr, r.stderr
    assert "kept failing (HTTP 500)" in r.stderr and "down" in r.stderr  # the server's words are still there
    assert SENTINEL not in r.stderr and PASSWORD not in r.stderr
    for raw in ("\x1b", "\x07", "\u202e", "\x9b"):
        assert raw not in r.stderr, repr(raw)
    assert "\\x1b[2Jcleared \\u202eexe" in r.stderr  # shown as escapes, not acted on


def test_unexpected_errors_are_redacted(tiny_index, monkeypatch):
    from rag.apps import cli

    def boom(args):
        raise RuntimeError(f"cannot reach http://alice:{PASSWORD}@10.0.0.1/v1 with {SENTINEL}\x1b[2J")

    monkeypatch.setitem(cli.COMMANDS, "doctor", boom)
    r = run_cli("doctor", env={"RAG_DATA_DIR": str(tiny_index.data_dir), "RAG_LLM_API_KEY": SENTINEL})
    assert r.returncode == 1 and "unexpected RuntimeError" in r.stderr and "http://***@10.0.0.1/v1" in r.stderr
    assert SENTINEL not in r.stderr and PASSWORD not in r.stderr and "\x1b" not in r.stderr


# ------------------------------------------------------------------ exports: inert, and private (issue 26)

HOSTILE_URL = 'https://example.org/x"><script>alert(1)</script>'
HOSTILE_PAPERS = [
    {"title": "Zebra camouflage in quantum llamas", "url": HOSTILE_URL,
     "abstract": "Zebra stripe camouflage confuses quantum llamas ![pixel](http://tracker.example/p.png) on the savanna. "
                 "Zebra stripes are a [click here](javascript:alert(2)) camouflage for quantum llamas."},
    {"title": "Protein folding with transformers", "abstract": "Protein folding is predicted with transformers."},
    {"title": "Graph networks for traffic", "abstract": "Traffic forecasting uses graph neural networks."},
]
LLM_REPLY = ("**Zebra camouflage in quantum llamas** shows that stripes confuse quantum llamas [1]. "
             "![seen](http://tracker.example/q.png) [more](javascript:alert(3)) <img src=x onerror=alert(4)>\n\n"
             "[1]: javascript:alert(5)")


def _assert_inert(markdown: str) -> None:
    """Rendered by a Markdown renderer that allows raw HTML (the most permissive reading), the export has no
    HTML of its own, no image and no link but http(s) ones."""
    import re

    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": True}).render(markdown)
    assert "<script" not in html and "<img" not in html and "onerror" not in html.replace("onerror=alert", ""), html
    assert all(href.startswith(("http://", "https://")) for href in re.findall(r'href="([^"]*)"', html)), html
    assert "javascript:" not in "".join(re.findall(r'href="([^"]*)"', html))


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_and_its_export_are_inert_leak_nothing_and_stay_private(tmp_path, fake_llm):
    """Through the real page: an LLM answer with an image, a link, raw HTML and a link definition; an extractive
    answer quoting an abstract with an image and a javascript: link, from a paper whose URL carries `"><script>`;
    then an LLM failure whose error text echoes the key and the password of RAG_LLM_BASE_URL. The page and the
    Markdown export show neither secret, the export is inert, and its file lies in a directory only this user can
    read, not in the /tmp/gradio that every Gradio app on the host shares."""
    import os
    import stat
    from pathlib import Path
    from urllib.parse import unquote

    from conftest import hash_index

    from rag.answer.assistant import Assistant
    from rag.apps.ui.app import build_app
    from rag.clients.chat import OpenAIChatLLM
    from rag.retrieve.hybrid import Retriever

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} is missing: run `make browser`")
    sync_api = pytest.importorskip("playwright.sync_api")
    url = fake_llm.base_url.replace("http://", f"http://alice:{PASSWORD}@")
    settings = hash_index(tmp_path / "hostile", HOSTILE_PAPERS).model_copy(update={"evidence": False, "llm_base_url": url})
    llm = OpenAIChatLLM(url, SENTINEL, "fake-model", timeout=5, max_attempts=1, max_wait=1)
    app = build_app(settings, Assistant(settings, Retriever.from_settings(settings, embedder=HashEmbedder()), llm))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    fake_llm.queue_reply(LLM_REPLY)
    fake_llm.queue_error(401, body=json.dumps({"error": {"message": f"bad key {SENTINEL} for {url} ({PASSWORD})"}}))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(accept_downloads=True).new_page()
            page.set_default_timeout(90_000)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")  # never networkidle (Gradio)
            turns = [("why do zebra stripes confuse quantum llamas?", "llm"),
                     ("zebra stripe camouflage in quantum llamas", "extractive"), ("what is a quantum llama?", "llm")]
            page.get_by_text("Answer settings").click()
            for n, (question, answer_mode) in enumerate(turns, 1):
                page.get_by_label("Extractive (quoted sentences)" if answer_mode == "extractive"
                                  else "LLM (generated, cited)").check()
                page.wait_for_selector("#rag-send", state="visible")
                page.fill("#rag-question textarea", question)
                page.click("#rag-send")
                page.wait_for_selector(f"#rag-conv .rag-conv[data-turns='{n}'][data-busy='0']")
            page.wait_for_selector("#rag-export:not([disabled])")
            with page.expect_download() as dl:
                page.click("#rag-export")
            text = Path(dl.value.path()).read_text(encoding="utf-8")
            served = unquote(dl.value.url.split("file=", 1)[1])
            notice = page.inner_text("#turn-3 .rag-notice")
            shown = page.content() + page.inner_text("body")
            browser.close()
    finally:
        app.close()
    assert "rejected the API key" in notice and "http://***@127.0.0.1" in notice, notice
    assert SENTINEL not in shown + text and PASSWORD not in shown + text
    assert text.count("## ") == 3 and "stripes confuse quantum llamas [1]" in text, text  # both answers, cited
    assert "example.org/x" in text and "tracker.example/p.png" in text  # shown as text, not acted on
    _assert_inert(text)
    folder = Path(served).parent
    while folder.name != "gradio" and folder != folder.parent:  # Gradio's cache dir, GRADIO_TEMP_DIR
        folder = folder.parent
    assert not Path(served).is_relative_to("/tmp/gradio"), served
    assert Path(served).is_relative_to(os.environ.get("GRADIO_TEMP_DIR", "/nonexistent")), served
    for d in (folder, folder.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == os.getuid(), d


# ------------------------------------------------------------------ feedback export: terminal-safe (issue 26)

HOSTILE_TEXT = "erase \x1b[2J\x9b2J\x85 concepts \u202egnp.exe\u2066 \u200f?"
RAW_UNSAFE = ("\x1b", "\x9b", "\x85", "\u202e", "\u2066", "\u200f")


def test_feedback_export_writes_controls_and_bidi_as_escapes(tmp_path):
    from rag.apps import feedback

    turn = {"question": "which papers " + HOSTILE_TEXT, "answer": "They do [1].", "answered_at": "2026-12-01T00:00:00+00:00",
            "citations": [{"n": 1, "paper_id": "p1", "title": "Erasing \u202eConcepts\x9b"}], "sources": [], "abstained": False}
    feedback.record(tmp_path / "feedback.jsonl", turn, "up", comment="see \x1b]0;title\x07 \u202eevil")
    env = {"RAG_DATA_DIR": str(tmp_path)}
    r = run_cli("feedback", "export", env=env)
    out = tmp_path / "drafts.jsonl"
    r2 = run_cli("feedback", "export", "--out", out, env=env)
    assert r.returncode == 0 and r2.returncode == 0, r.stderr + r2.stderr
    for text in (r.stdout, out.read_text(encoding="utf-8"), (tmp_path / "feedback.jsonl").read_text(encoding="utf-8")):
        assert not [c for c in RAW_UNSAFE + ("\x07",) if c in text], text
    line = json.loads(r.stdout)
    assert line["question"] == turn["question"] and line["gold_titles"] == ["Erasing \u202eConcepts\x9b"]  # same text
    assert "\\u202e" in r.stdout and "\\u009b" in r.stdout  # shown as escapes


def test_an_endpoint_echoing_the_key_and_password_leaves_them_out_of_answers_and_reports(tiny_index, fake_llm, tmp_path):
    """The answer LLM, the evidence step and the judge all talk to an endpoint that puts the key and the URL's
    password in every reply: neither reaches `rag ask --json`, report.json, report.md or the per-question files."""
    url = fake_llm.base_url.replace("http://", f"http://alice:{PASSWORD}@")
    fake_llm.default_reply = (f"**{PAPERS[0]['title']}** erases concepts [1]. Authorization: Bearer {SENTINEL}; "
                              f"url {url}; password {PASSWORD}")
    env = _env(tiny_index, fake_llm, RAG_LLM_BASE_URL=url, RAG_EVIDENCE="on")
    r = run_cli("ask", "which papers erase concepts in diffusion models?", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert fake_llm.requests and SENTINEL not in r.stdout + r.stderr and PASSWORD not in r.stdout + r.stderr
    dataset = tmp_path / "ds.jsonl"
    dataset.write_text(json.dumps({"id": "q1", "type": "list", "question": "which papers erase concepts?",
                                   "gold_titles": [PAPERS[0]["title"]], "key_facts": ["negative guidance"], "notes": ""}) + "\n")
    out = tmp_path / "report"
    r = run_cli("eval", "--dataset", str(dataset), "--answer", "llm", "--judge", "--modes", "hybrid", "--out", str(out),
                env=env)
    assert r.returncode == 0, r.stderr
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".md")]
    assert any(p.name == "report.json" for p in written)
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert SENTINEL not in text and PASSWORD not in text, path.name
    assert SENTINEL not in r.stdout + r.stderr and PASSWORD not in r.stdout + r.stderr
