"""The one OpenAI-protocol client (rag.clients.openai_http) as both of its users see it: the chat model against
the fake OpenAI server (tests/fake_openai.py) and the remote embedder against the fake embeddings server.

Both honour Retry-After in its three forms, retry only what is transient, and never show the API key or a
password in the base URL (`http://user:secret@host/v1`): not in a message, a log line, a notice or an answer.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from conftest import free_port, hash_index, run_cli
from fake_embeddings import FakeEmbeddings
from fake_openai import FakeOpenAI

from rag.clients.chat import LLMReplyError, OpenAIChatLLM
from rag.errors import ConfigError, LLMError, RagError
from rag.index.embedders import HashEmbedder
from rag.index.remote_embedder import RemoteEmbedder

KEY = "sk-SENTINEL-key-0123456789"
USER, PASSWORD = "user", "s3cret-pass"
MSGS = [{"role": "user", "content": "What do the sources say about concept erasure?"}]
TEXTS = ["concept erasure in diffusion models", "sparse autoencoders"]


def with_userinfo(base_url: str) -> str:
    return base_url.replace("http://", f"http://{USER}:{PASSWORD}@")


def masked(base_url: str) -> str:
    return base_url.replace("http://", "http://***@")


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


def assert_clean(text: str) -> None:
    """No secret in `text`, and none of the escape sequences the servers below put in their error bodies."""
    assert KEY not in text and PASSWORD not in text and "SENTINEL" not in text
    assert "\x1b" not in text and "\u202e" not in text


def echo_body(status: int) -> str:
    """An error body quoting the key and the password, with a terminal escape and a bidi override in it."""
    return json.dumps({"error": {"message": f"\x1b[31mbad\x1b[0m key {KEY} for {USER}:{PASSWORD} \u202egnol",
                                 "type": "x", "code": None}})


# ---------------------------------------------------------------- the chat model and the embedder, side by side


class Chat:
    """OpenAIChatLLM against the strict fake OpenAI server."""

    name = "chat"

    def __init__(self, fake: FakeOpenAI):
        self.fake = fake

    def fail(self, status: int, headers=None, message: str | None = None) -> None:
        body = json.dumps({"error": {"message": message}}) if message else None
        self.fake.queue_error(status, body=body, headers=headers)

    def ok_next(self) -> None:
        self.fake.queue_reply("fine [1].")

    def client(self, url: str | None = None, key: str | None = "sk-test", **kw):
        sleeps: list[float] = []
        opts = {"timeout": 5.0, "connect_timeout": 2.0, "max_attempts": 3, "max_wait": 60.0, "sleep": sleeps.append}
        return OpenAIChatLLM(url or self.fake.base_url, key, "fake-model", **(opts | kw)), sleeps

    def call(self, client) -> None:
        assert client.complete(MSGS) == "fine [1]."

    def posts(self) -> int:
        return len([r for r in self.fake.requests if r["path"].endswith("/chat/completions")])

    def unused(self, n: int) -> None:
        self.fake.expect_unused(n)


class Embeddings:
    """RemoteEmbedder against the strict fake embeddings server (it answers whenever no fault is queued)."""

    name = "embeddings"

    def __init__(self, fake: FakeEmbeddings):
        self.fake = fake

    def fail(self, status: int, headers=None, message: str | None = None) -> None:
        self.fake.queue_error(status, headers=headers, message=message)

    def ok_next(self) -> None:
        pass

    def client(self, url: str | None = None, key: str | None = "sk-test", **kw):
        sleeps: list[float] = []
        opts = {"timeout": 5.0, "deadline": 120.0, "max_attempts": 3, "sleep": sleeps.append}
        return RemoteEmbedder(url or self.fake.base_url, self.fake.model, api_key=key, **(opts | kw)), sleeps

    def call(self, client) -> None:
        assert client.embed(TEXTS).shape == (2, 64)

    def posts(self) -> int:
        return len(self.fake.requests)

    def unused(self, n: int) -> None:
        pass


@pytest.fixture(params=["chat", "embeddings"])
def side(request):
    if request.param == "chat":
        yield Chat(request.getfixturevalue("fake_llm"))
    else:
        with FakeEmbeddings(HashEmbedder(dim=64).embed, model="hash-test") as fake:
            yield Embeddings(fake)


# ---------------------------------------------------------------- Retry-After in its three forms


@pytest.mark.parametrize("headers, low, high", [
    (lambda: {"Retry-After": "3"}, 3.0, 3.0),  # seconds
    (lambda: {"Retry-After": "1.5"}, 1.5, 1.5),  # fractional seconds
    (lambda: {"Retry-After": http_date(30)}, 27.0, 30.0),  # an HTTP date (whole seconds, so up to 1 s earlier)
    (lambda: {"retry-after-ms": "2500"}, 2.5, 2.5),  # OpenAI's milliseconds
    (lambda: {"retry-after-ms": "1500", "Retry-After": "9"}, 1.5, 1.5),  # the finer hint wins
    (lambda: {"Retry-After": http_date(-3600)}, 0.0, 0.0),  # a date already past: retry now
], ids=["seconds", "fraction", "http-date", "ms", "ms-first", "past-date"])
def test_a_429_waits_what_the_server_asks_in_every_form(side, headers, low, high):
    side.fail(429, headers=headers())  # made now: a date is relative to when the test runs
    side.ok_next()
    client, sleeps = side.client()
    side.call(client)
    assert side.posts() == 2
    assert len(sleeps) == 1 and low <= sleeps[0] <= high, sleeps


def test_an_unreadable_hint_falls_back_to_a_short_backoff(side):
    side.fail(503, headers={"Retry-After": "whenever you like"})
    side.ok_next()
    client, sleeps = side.client()
    side.call(client)
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 0.5


def test_the_hint_is_really_waited_without_an_injected_sleep(side):
    side.fail(429, headers={"retry-after-ms": "1200"})
    side.ok_next()
    client, _ = side.client(sleep=time.sleep)
    started = time.monotonic()
    side.call(client)
    assert time.monotonic() - started >= 1.2


def test_a_hint_past_the_budget_is_not_slept_through():
    """The chat model caps the wait at RAG_LLM_MAX_WAIT (tests/test_llm.py); the embedder gives up at once when
    the hinted wait would end past its deadline, saying what to change."""
    with FakeEmbeddings(HashEmbedder(dim=64).embed, model="hash-test") as fake:
        fake.queue_error(429, headers={"Retry-After": http_date(3600)})
        sleeps: list[float] = []
        emb = RemoteEmbedder(fake.base_url, fake.model, timeout=2.0, deadline=5.0, sleep=sleeps.append)
        with pytest.raises(RagError, match=r"kept rate-limiting requests \(HTTP 429\): lower RAG_EMBED_CONCURRENCY"):
            emb.embed(TEXTS)
        assert sleeps == [] and len(fake.requests) == 1


# ---------------------------------------------------------------- only what is transient is retried


@pytest.mark.parametrize("status", [429, 408, 409, 500, 502, 503, 504])
def test_transient_statuses_are_retried(side, status):
    side.fail(status)
    side.ok_next()
    client, sleeps = side.client()
    side.call(client)
    assert side.posts() == 2 and len(sleeps) == 1


@pytest.mark.parametrize("status, check", [
    (400, "rejected the request (HTTP 400)"),
    (401, "rejected the API key (HTTP 401)"),
    (403, "refused access to model"),
    (404, "does not know model"),
    (422, "rejected the request (HTTP 422)"),
])
def test_other_statuses_fail_at_once_saying_what_to_check(side, status, check):
    side.fail(status, message=f"reason {status} from the server")
    side.ok_next()
    client, sleeps = side.client()
    expected = LLMError if side.name == "chat" else ConfigError  # for the embedder, a setting to fix
    with pytest.raises(expected) as err:
        side.call(client)
    assert side.posts() == 1 and sleeps == []
    side.unused(1)
    message = str(err.value)
    assert check in message and f"reason {status} from the server" in message
    prefix = "RAG_LLM_" if side.name == "chat" else "RAG_EMBED_"
    assert prefix in message  # names the setting to check
    assert not getattr(err.value, "transient", False)


def test_a_503_is_retried_until_the_attempts_run_out_then_says_so(side):
    for _ in range(3):
        side.fail(503)
    client, sleeps = side.client(max_attempts=3)
    with pytest.raises(RagError, match=r"kept failing \(HTTP 503\): check its logs") as err:
        side.call(client)
    assert side.posts() == 3 and len(sleeps) == 2
    if side.name == "chat":
        assert err.value.transient


def test_an_exhausted_quota_is_not_retried(fake_llm):
    """OpenAI answers 429 with code insufficient_quota when the account is out of credit: waiting won't help."""
    fake_llm.queue_error(429, body=json.dumps({"error": {"message": "You exceeded your current quota",
                                                         "type": "insufficient_quota", "code": "insufficient_quota"}}))
    fake_llm.queue_reply("must not be reached")
    llm, sleeps = Chat(fake_llm).client()
    with pytest.raises(LLMError, match="quota is used up") as err:
        llm.complete(MSGS)
    assert sleeps == [] and not err.value.transient
    fake_llm.expect_unused(1)


# ---------------------------------------------------------------- no key, no password: messages, names, logs


def test_a_password_in_the_base_url_is_sent_as_basic_auth_and_shown_masked(fake_llm, caplog):
    caplog.set_level(logging.DEBUG)  # the openai and httpx debug records included
    url = with_userinfo(fake_llm.base_url)
    llm, _ = Chat(fake_llm).client(url, key=KEY, max_attempts=2)
    assert llm.name == f"fake-model @ {masked(fake_llm.base_url)}"
    fake_llm.queue_reply("fine [1].")
    assert llm.complete(MSGS) == "fine [1]."
    sent = fake_llm.requests[-1]["headers"]["authorization"]
    assert sent == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()  # as httpx did before
    for status in (401, 500, 500):
        fake_llm.queue_error(status, body=echo_body(status))
    errors = []
    for _ in range(2):
        with pytest.raises(LLMError) as err:
            llm.complete(MSGS)
        errors.append(err.value)
    assert all(masked(fake_llm.base_url) in str(e) for e in errors)
    assert "rejected the API key" in str(errors[0]) and "kept failing (HTTP 500)" in str(errors[1])
    assert "the server says: bad key *** for user:***" in str(errors[0])  # the server's words, cleaned
    assert any("retry" in r.getMessage() for r in caplog.records)
    for text in [*map(str, errors), *map(repr, errors), caplog.text, *(r.getMessage() for r in caplog.records)]:
        assert_clean(text)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_reply_echoing_the_key_or_password_does_not_show_them(fake_llm, streamed):
    """The stream arrives in 4-character pieces, so each secret is split across several deltas."""
    fake_llm.queue_reply(f"Your key is {KEY} and your password {PASSWORD}; erasure [1].")
    llm, _ = Chat(fake_llm).client(with_userinfo(fake_llm.base_url), key=KEY)
    text = "".join(llm.stream(MSGS)) if streamed else llm.complete(MSGS)
    assert text == "Your key is *** and your password ***; erasure [1]."


def test_a_refusal_is_redacted_and_terminal_safe(fake_llm):
    fake_llm.queue_refusal(f"\x1b]0;pwned\x07No. Your key {KEY} is logged.")
    llm, _ = Chat(fake_llm).client(key=KEY)
    with pytest.raises(LLMReplyError) as err:
        llm.complete(MSGS)
    assert "Your key *** is logged" in str(err.value)
    assert_clean(str(err.value))


def test_the_embedder_masks_the_password_in_its_report_errors_and_logs(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeEmbeddings(HashEmbedder(dim=64).embed, model="hash-test") as fake:
        url = with_userinfo(fake.base_url)
        emb = RemoteEmbedder(url, fake.model, api_key=KEY, timeout=2.0, max_attempts=2, sleep=lambda s: None)
        assert emb.describe()["url"] == masked(fake.base_url)  # what ingest reports record
        fake.queue_error(503, message=json.loads(echo_body(503))["error"]["message"])
        assert emb.embed(TEXTS).shape == (2, 64)
        assert fake.requests[-1]["headers"]["authorization"].startswith("Basic ")
        fake.queue_error(400, message=json.loads(echo_body(400))["error"]["message"])
        with pytest.raises(ConfigError) as err:
            emb.embed(TEXTS)
    assert masked(fake.base_url) in str(err.value) and "the server says: bad key ***" in str(err.value)
    assert any("retry" in r.getMessage() and "bad key ***" in r.getMessage() for r in caplog.records)
    for text in [str(err.value), repr(err.value), caplog.text]:
        assert_clean(text)
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(RagError) as err:
        RemoteEmbedder(with_userinfo(dead), "m", api_key=KEY, max_attempts=1).embed(TEXTS)
    assert str(err.value) == f"cannot connect to the embedding server at {masked(dead)}: is it running? (RAG_EMBED_URL)"


# ---------------------------------------------------------------- the failure notice of `rag ask --json`

PAPERS = [
    ("Erasing Concepts from Diffusion Models", ("We erase a visual concept from a pre-trained diffusion model using "
                                                "negative guidance as a teacher. The method removes artistic styles.")),
    ("Sparse Autoencoders Find Interpretable Features", "Sparse autoencoders decompose activations into features."),
]
QUESTION = "which papers erase concepts in diffusion models?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return hash_index(tmp_path_factory.mktemp("openai-http"), PAPERS)


def ask_env(settings, base_url: str, evidence: str = "off") -> dict:
    return {"RAG_DATA_DIR": str(settings.data_dir), "RAG_EMBED_BACKEND": "hash", "RAG_CORPUS": settings.corpus,
            "RAG_LLM_BASE_URL": with_userinfo(base_url), "RAG_LLM_API_KEY": KEY, "RAG_EVIDENCE": evidence,
            "RAG_LLM_MAX_ATTEMPTS": "2", "RAG_LLM_MAX_WAIT": "1", "RAG_LLM_TIMEOUT": "2"}


def ask_json(env: dict, caplog) -> dict:
    caplog.set_level(logging.DEBUG)
    r = run_cli("-v", "ask", QUESTION, "--json", env=env)
    assert r.returncode == 0, r.stderr
    for text in (r.stdout, r.stderr, caplog.text):
        assert_clean(text)
    record = json.loads(r.stdout)
    assert record["mode"] == "extractive" and record["citations"]  # fell back, with a notice saying why
    return record


@pytest.mark.parametrize("evidence", ["off", "on"])
@pytest.mark.parametrize("status, says", [(401, "rejected the API key"), (500, "kept failing (HTTP 500)")])
def test_ask_json_notice_against_a_failing_endpoint_is_redacted(tiny, caplog, evidence, status, says):
    with FakeOpenAI() as fake:  # not strict: the evidence step may call a few times, each answered with the error
        for _ in range(30):
            fake.queue_error(status, body=echo_body(status))
        base_url = fake.base_url
        record = ask_json(ask_env(tiny, base_url, evidence), caplog)
        assert fake.requests and fake.requests[0]["headers"]["authorization"].startswith("Basic ")
    assert f"the LLM endpoint at {masked(base_url)} {says}" in record["notice"], record["notice"]
    assert "bad key ***" in record["notice"]


def test_ask_json_notice_against_a_dead_endpoint_is_redacted(tiny, caplog):
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    record = ask_json(ask_env(tiny, base_url), caplog)
    assert f"cannot connect to the LLM endpoint at {masked(base_url)}: is it running? (RAG_LLM_BASE_URL)" in record["notice"]


def test_ask_json_answer_from_an_endpoint_echoing_the_key_is_redacted(tiny, caplog):
    with FakeOpenAI() as fake:
        fake.default_reply = f"**{PAPERS[0][0]}** erases concepts [1] (key {KEY}, password {PASSWORD})."
        caplog.set_level(logging.DEBUG)
        r = run_cli("-v", "ask", QUESTION, "--json", env=ask_env(tiny, fake.base_url))
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["mode"] == "llm" and "(key ***, password ***)" in record["answer"]
    for text in (r.stdout, r.stderr, caplog.text):
        assert_clean(text)
