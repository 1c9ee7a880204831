"""The LLM client (rag.clients.chat.OpenAIChatLLM) driven through the real `openai` client against FakeOpenAI.

Retries only for transient failures (429 honouring Retry-After, 5xx, timeouts, dropped connections),
bounded in attempts and total time; every failure is an LLMError with a fix-it message and no API key.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from conftest import free_port

from rag.clients.chat import OpenAIChatLLM, StreamCut
from rag.errors import LLMError

MSGS = [{"role": "user", "content": "What do the sources say about concept erasure?"}]
SENTINEL = "sk-SENTINEL-123"


closed_port = free_port  # a loopback port with nothing listening (bound, then released)


def make_llm(base_url: str, key: str = "sk-test", **kw) -> OpenAIChatLLM:
    opts = {"timeout": 2.0, "connect_timeout": 2.0, "max_attempts": 3, "max_wait": 5.0} | kw
    return OpenAIChatLLM(base_url, key, "fake-model", **opts)


def chat_posts(fake) -> list[dict]:
    return [r for r in fake.requests if r["path"].endswith("/chat/completions")]


class Sleeps(list):
    """Records the waits a retrying client asks for instead of waiting (tenacity's sleep, injected)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# ---------------------------------------------------------------- plain completions


def test_complete_returns_the_reply_and_sends_model_messages_and_key(fake_llm):
    fake_llm.queue_reply("Concept erasure removes a concept [1].")
    llm = make_llm(fake_llm.base_url, key=SENTINEL)
    assert llm.complete(MSGS) == "Concept erasure removes a concept [1]."
    (req,) = chat_posts(fake_llm)
    assert req["model"] == "fake-model"
    assert req["messages"] == MSGS
    assert not req.get("stream")
    assert req["headers"]["authorization"] == f"Bearer {SENTINEL}"


def test_429_with_retry_after_is_retried_after_the_hinted_wait(fake_llm):
    # Retry-After 2 s: the backoff alone would wait at most 1 s before the second try.
    fake_llm.queue_error(429, retry_after=2)
    fake_llm.queue_reply("after the rate limit")
    sleeps = Sleeps()
    llm = make_llm(fake_llm.base_url, max_wait=10.0, sleep=sleeps)
    assert llm.complete(MSGS) == "after the rate limit"
    assert len(chat_posts(fake_llm)) == 2
    assert sleeps == [2.0]


def test_retry_after_waits_for_real_without_an_injected_sleep(fake_llm):
    fake_llm.queue_error(429, retry_after=1.5)
    fake_llm.queue_reply("ok")
    started = time.monotonic()
    assert make_llm(fake_llm.base_url).complete(MSGS) == "ok"
    assert time.monotonic() - started >= 1.5


def test_retry_after_longer_than_max_wait_is_capped(fake_llm):
    fake_llm.queue_error(429, retry_after=60)
    fake_llm.queue_reply("ok")
    sleeps = Sleeps()
    llm = make_llm(fake_llm.base_url, max_attempts=2, max_wait=1.0, sleep=sleeps)
    llm.complete(MSGS)
    assert sleeps == [1.0]  # capped at max_wait, not a minute


def test_429_on_every_try_gives_llm_error_after_max_attempts(fake_llm):
    for _ in range(5):
        fake_llm.queue_error(429, retry_after=0.2)
    sleeps = Sleeps()
    llm = make_llm(fake_llm.base_url, max_attempts=3, sleep=sleeps)
    with pytest.raises(LLMError) as ei:
        llm.complete(MSGS)
    assert len(chat_posts(fake_llm)) == 3 and sleeps == [0.2, 0.2]
    assert "429" in str(ei.value)
    fake_llm.expect_unused(2)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_then_success_is_retried(fake_llm, status):
    fake_llm.queue_error(status)
    fake_llm.queue_reply("recovered")
    assert make_llm(fake_llm.base_url).complete(MSGS) == "recovered"
    assert len(chat_posts(fake_llm)) == 2


def test_dropped_connection_then_success_is_retried(fake_llm):
    fake_llm.queue_drop()
    fake_llm.queue_reply("recovered")
    assert make_llm(fake_llm.base_url).complete(MSGS) == "recovered"
    assert len(chat_posts(fake_llm)) == 2


@pytest.mark.parametrize(
    "status, hint",
    [(400, "400"), (401, "RAG_LLM_API_KEY"), (403, "403"), (404, "RAG_LLM_MODEL"), (422, "422")],
)
def test_non_transient_status_fails_at_once_without_retry(fake_llm, status, hint):
    fake_llm.queue_error(status)
    fake_llm.queue_reply("must not be reached")
    llm = make_llm(fake_llm.base_url, max_attempts=4)
    started = time.monotonic()
    with pytest.raises(LLMError) as ei:
        llm.complete(MSGS)
    assert time.monotonic() - started < 1.5
    assert len(chat_posts(fake_llm)) == 1
    fake_llm.expect_unused(1)
    assert hint in str(ei.value)
    assert fake_llm.base_url in str(ei.value)


def test_non_transient_status_in_stream_fails_at_once(fake_llm):
    fake_llm.queue_error(401)
    fake_llm.queue_reply("must not be reached")
    with pytest.raises(LLMError, match="RAG_LLM_API_KEY"):
        list(make_llm(fake_llm.base_url).stream(MSGS))
    assert len(chat_posts(fake_llm)) == 1
    fake_llm.expect_unused(1)


def test_slow_response_times_out_after_max_attempts_within_bound(fake_llm):
    timeout, attempts, max_wait = 0.5, 2, 2.0
    for _ in range(attempts + 1):
        fake_llm.queue_delay(6, "too late")
    llm = make_llm(fake_llm.base_url, timeout=timeout, max_attempts=attempts, max_wait=max_wait)
    started = time.monotonic()
    with pytest.raises(LLMError) as ei:
        llm.complete(MSGS)
    elapsed = time.monotonic() - started
    assert len(chat_posts(fake_llm)) == attempts
    assert elapsed >= attempts * timeout * 0.9
    assert elapsed <= attempts * timeout + max_wait + 0.5
    assert "RAG_LLM_TIMEOUT" in str(ei.value)
    fake_llm.expect_unused(1)


def test_slow_stream_times_out_too(fake_llm):
    for _ in range(3):
        fake_llm.queue_delay(6, "too late")
    llm = make_llm(fake_llm.base_url, timeout=0.5, max_attempts=2, max_wait=1.0)
    started = time.monotonic()
    with pytest.raises(LLMError, match="did not answer in time"):
        list(llm.stream(MSGS))
    assert time.monotonic() - started <= 2 * 0.5 + 1.0 + 0.5
    assert len(chat_posts(fake_llm)) == 2
    fake_llm.expect_unused(1)


def test_connection_refused_says_how_to_fix():
    port = closed_port()
    llm = make_llm(f"http://127.0.0.1:{port}/v1", max_attempts=2, max_wait=2.0)
    started = time.monotonic()
    with pytest.raises(LLMError) as ei:
        llm.complete(MSGS)
    assert time.monotonic() - started < 5
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg
    assert "RAG_LLM_BASE_URL" in msg and "running" in msg
    with pytest.raises(LLMError, match="RAG_LLM_BASE_URL"):
        list(llm.stream(MSGS))


# ---------------------------------------------------------------- streaming


def test_stream_yields_sse_tokens_that_join_to_the_reply(fake_llm):
    text = "**Erasing Concepts from Diffusion Models** fine-tunes with negative guidance [1]."
    fake_llm.queue_reply(text)
    tokens = list(make_llm(fake_llm.base_url).stream(MSGS))
    assert len(tokens) > 5  # really streamed, piece by piece
    assert all(tokens)
    assert "".join(tokens) == text
    (req,) = chat_posts(fake_llm)
    assert req["stream"] is True


def test_stream_cut_mid_answer_raises_stream_cut_after_partial_tokens(fake_llm):
    partial = "**MACE** erases many concepts at once and"
    fake_llm.queue_cut_stream(partial)
    fake_llm.queue_reply("a retry must not happen after tokens were shown")
    got = []
    with pytest.raises(StreamCut) as ei:
        for token in make_llm(fake_llm.base_url).stream(MSGS):
            got.append(token)
    assert got, "tokens before the cut must be delivered"
    assert "".join(got) == partial[: len("".join(got))]
    assert isinstance(ei.value, LLMError)
    assert "cut" in str(ei.value)
    assert len(chat_posts(fake_llm)) == 1
    fake_llm.expect_unused(1)


def test_stream_500_before_first_token_is_retried(fake_llm):
    fake_llm.queue_error(500)
    fake_llm.queue_error(503)
    fake_llm.queue_reply("second time lucky [2].")
    tokens = list(make_llm(fake_llm.base_url, max_attempts=3).stream(MSGS))
    assert "".join(tokens) == "second time lucky [2]."
    posts = chat_posts(fake_llm)
    assert len(posts) == 3 and all(p["stream"] is True for p in posts)


def test_stream_cut_before_first_token_is_retried(fake_llm):
    fake_llm.queue_cut_stream("")  # headers sent, no token, connection gone
    fake_llm.queue_reply("fine now")
    assert "".join(make_llm(fake_llm.base_url).stream(MSGS)) == "fine now"
    assert len(chat_posts(fake_llm)) == 2


def test_stream_429_before_first_token_honours_retry_after(fake_llm):
    fake_llm.queue_error(429, retry_after=2)
    fake_llm.queue_reply("streamed after waiting")
    sleeps = Sleeps()
    assert "".join(make_llm(fake_llm.base_url, sleep=sleeps).stream(MSGS)) == "streamed after waiting"
    assert sleeps == [2.0]


# ---------------------------------------------------------------- the API key never leaks


def _echo_body(status: int) -> str:
    return json.dumps({"error": {"message": f"key {SENTINEL} is not valid", "type": "x", "param": None, "code": None}})


def test_api_key_never_in_errors_or_logs(fake_llm, caplog):
    caplog.set_level(logging.DEBUG)  # everything, including openai/httpx debug records
    llm = make_llm(fake_llm.base_url, key=SENTINEL, timeout=1.0, max_attempts=2, max_wait=2.0)
    errors: list[Exception] = []

    def expect_failure(queue, call):
        fake_llm.clear()
        queue()
        with pytest.raises(LLMError) as ei:
            call()
        errors.append(ei.value)

    def complete():
        return llm.complete(MSGS)

    def stream():
        return list(llm.stream(MSGS))

    for status in (400, 401, 403, 404):  # the server echoes the key back in its error body
        expect_failure(lambda s=status: fake_llm.queue_error(s, body=_echo_body(s)), complete)
        expect_failure(lambda s=status: fake_llm.queue_error(s, body=_echo_body(s)), stream)
    expect_failure(lambda: [fake_llm.queue_error(500, body=_echo_body(500)) for _ in range(2)], complete)
    expect_failure(lambda: [fake_llm.queue_error(429, retry_after=0.1, body=_echo_body(429)) for _ in range(2)], stream)
    expect_failure(lambda: [fake_llm.queue_delay(4) for _ in range(2)], complete)
    expect_failure(lambda: fake_llm.queue_cut_stream("partial answer"), stream)
    dead = make_llm(f"http://127.0.0.1:{closed_port()}/v1", key=SENTINEL, max_attempts=2, max_wait=1.0)
    with pytest.raises(LLMError) as ei:
        dead.complete(MSGS)
    errors.append(ei.value)

    # the key really was sent, so its absence below means something
    assert any(r["headers"].get("authorization") == f"Bearer {SENTINEL}" for r in fake_llm.requests)
    assert any(isinstance(e, StreamCut) for e in errors)
    for exc in errors:
        assert SENTINEL not in str(exc)
        assert SENTINEL not in repr(exc)
        assert "SENTINEL" not in str(exc)
    assert caplog.records, "retries should have been logged"
    for record in caplog.records:
        assert SENTINEL not in record.getMessage()
    assert SENTINEL not in caplog.text


def test_api_key_from_settings_is_used_and_not_leaked(fake_llm, make_settings):
    from pydantic import SecretStr

    settings = make_settings(llm_base_url=fake_llm.base_url, llm_model="fake-model", llm_max_attempts=1)
    settings = settings.model_copy(update={"llm_api_key": SecretStr(SENTINEL)})
    llm = OpenAIChatLLM.from_settings(settings)
    assert SENTINEL not in llm.name
    fake_llm.queue_error(401, body=_echo_body(401))
    with pytest.raises(LLMError) as ei:
        llm.complete(MSGS)
    assert SENTINEL not in str(ei.value)
    assert chat_posts(fake_llm)[0]["headers"]["authorization"] == f"Bearer {SENTINEL}"


# ---------------------------------------------------------------- bounded calls and replies that are not answers


def test_every_request_sends_max_tokens(fake_llm):
    fake_llm.queue_reply("ok [1].")
    fake_llm.queue_reply("ok [1].")
    llm = make_llm(fake_llm.base_url, max_tokens=321)
    llm.complete(MSGS)
    list(llm.stream(MSGS))
    assert [r["max_tokens"] for r in chat_posts(fake_llm)] == [321, 321]


@pytest.mark.parametrize("how", ["keepalive", "trickle"])
def test_a_stream_that_never_ends_is_cut_at_the_deadline(fake_llm, how):
    from rag.clients.chat import LLMDeadline

    if how == "keepalive":
        fake_llm.queue_keepalive(30)  # headers, then only ": keep-alive" lines
    else:
        fake_llm.queue_trickle("one token a second " * 20, interval=1.0)
    llm = make_llm(fake_llm.base_url, timeout=10.0, deadline=2.0)
    started = time.monotonic()
    got = []
    with pytest.raises(LLMDeadline, match="RAG_LLM_DEADLINE"):
        for token in llm.stream(MSGS):
            got.append(token)
    assert time.monotonic() - started < 4.0  # the per-read timeout (10 s) never fires: the deadline does
    assert (how == "trickle") == bool(got)


def test_a_slow_non_streamed_reply_is_cut_at_the_deadline(fake_llm):
    from rag.clients.chat import LLMDeadline

    fake_llm.queue_delay(30, "too late")
    llm = make_llm(fake_llm.base_url, timeout=20.0, deadline=1.5, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(LLMDeadline):
        llm.complete(MSGS)
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("queue, kind, words", [
    (lambda f: f.queue_reply_cut_by_length("A long answer that stops mid"), "truncated", "RAG_LLM_MAX_TOKENS"),
    (lambda f: f.queue_refusal("I can't help with that."), "refusal", "refused"),
    (lambda f: f.queue_tool_call(), "tool_call", "tool"),
    (lambda f: f.queue_no_choices(), "no_choices", "no choices"),
])
@pytest.mark.parametrize("streamed", [False, True])
def test_replies_that_are_not_answers_say_what_they_are(fake_llm, queue, kind, words, streamed):
    from rag.clients.chat import LLMReplyError

    queue(fake_llm)
    llm = make_llm(fake_llm.base_url)
    with pytest.raises(LLMReplyError) as ei:
        list(llm.stream(MSGS)) if streamed else llm.complete(MSGS)
    assert ei.value.kind == kind and words in str(ei.value)
    assert len(chat_posts(fake_llm)) == 1  # not retried


@pytest.mark.parametrize("body, content_type", [
    ("<html><body><h1>Welcome to nginx!</h1></body></html>", "text/html"),
    ('{"choices": [{"message": ', "application/json"),
])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_200_that_is_not_a_chat_completion_is_named(fake_llm, body, content_type, streamed):
    from rag.clients.chat import LLMReplyError

    fake_llm.queue_raw(body, content_type)
    llm = make_llm(fake_llm.base_url)
    with pytest.raises(LLMReplyError) as ei:
        list(llm.stream(MSGS)) if streamed else llm.complete(MSGS)
    assert ei.value.kind == "invalid" and "OpenAI-compatible" in str(ei.value)


@pytest.mark.parametrize("status, hint", [
    (400, "RAG_LLM_MAX_TOKENS"),
    (403, "may use this model"),
    (404, "/v1"),
])
def test_client_errors_name_the_likely_cause_and_the_servers_reason(fake_llm, status, hint):
    fake_llm.queue_error(status, body=json.dumps({"error": {"message": f"reason {status} from server"}}))
    with pytest.raises(LLMError) as ei:
        make_llm(fake_llm.base_url).complete(MSGS)
    assert hint in str(ei.value) and f"reason {status} from server" in str(ei.value)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_huge_reply_is_refused_not_printed(fake_llm, streamed):
    from rag.clients.chat import LLMReplyError

    fake_llm.queue_reply("x" * 200_000)
    llm = make_llm(fake_llm.base_url, max_reply_chars=5_000)
    got = []
    with pytest.raises(LLMReplyError) as ei:
        if streamed:
            for token in llm.stream(MSGS):
                got.append(token)
        else:
            got.append(llm.complete(MSGS))
    assert ei.value.kind == "too_long" and sum(map(len, got)) <= 5_000
