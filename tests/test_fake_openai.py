"""The fake OpenAI server behaves like the real API as seen through the real `openai` client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from fake_openai import FakeOpenAI

MSGS = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def srv():
    with FakeOpenAI() as s:
        yield s


def client(srv: FakeOpenAI, timeout: float = 2.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0, timeout=timeout)


def test_plain_reply(srv):
    srv.queue_reply("The answer is 42.")
    r = client(srv).chat.completions.create(model="fake-model", messages=MSGS)
    assert r.choices[0].message.content == "The answer is 42."
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion"
    assert r.id and r.created and r.model == "fake-model"
    assert r.usage is not None and r.usage.completion_tokens == 4


def test_default_reply_when_queue_empty(srv):
    c = client(srv)
    assert c.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "OK"
    srv.default_reply = "fallback"
    assert c.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "fallback"


def test_streamed_reply(srv):
    text = "Streaming works, piece by piece [1]."
    srv.queue_reply(text)
    stream = client(srv).chat.completions.create(model="fake-model", messages=MSGS, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3
    assert "".join(pieces) == text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_include_usage(srv):
    srv.queue_reply("two words")
    stream = client(srv).chat.completions.create(
        model="m", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2


def test_rate_limit_with_retry_after(srv):
    srv.queue_error(429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as ei:
        client(srv).chat.completions.create(model="m", messages=MSGS)
    assert ei.value.status_code == 429
    assert ei.value.response.headers["retry-after"] == "3"
    assert ei.value.code == "rate_limit_exceeded"


def test_rate_limit_fractional_retry_after(srv):
    srv.queue_error(429, retry_after=0.25)
    with pytest.raises(openai.RateLimitError) as ei:
        client(srv).chat.completions.create(model="m", messages=MSGS)
    assert float(ei.value.response.headers["retry-after"]) == 0.25


def test_server_error(srv):
    srv.queue_error(500)
    with pytest.raises(openai.InternalServerError) as ei:
        client(srv).chat.completions.create(model="m", messages=MSGS)
    assert ei.value.status_code == 500
    assert "retry-after" not in ei.value.response.headers


def test_error_custom_body(srv):
    srv.queue_error(400, body='{"error": {"message": "context too long", "type": "invalid_request_error"}}')
    with pytest.raises(openai.BadRequestError, match="context too long"):
        client(srv).chat.completions.create(model="m", messages=MSGS)


def test_error_then_success_in_order(srv):
    srv.queue_error(503)
    srv.queue_reply("recovered")
    c = client(srv)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m", messages=MSGS)
    assert c.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "recovered"
    assert srv.pending() == 0


def test_client_retries_honour_queue(srv):
    srv.queue_error(429, retry_after=0)
    srv.queue_reply("after retry")
    c = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=1, timeout=2)
    r = c.chat.completions.create(model="m", messages=MSGS)
    assert r.choices[0].message.content == "after retry"
    assert len(srv.requests) == 2


def test_delay_longer_than_timeout(srv):
    srv.queue_delay(1.5, "too late")
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client(srv, timeout=0.3).chat.completions.create(model="m", messages=MSGS)
    assert time.monotonic() - t0 < 1.2


def test_delay_shorter_than_timeout(srv):
    srv.queue_delay(0.2, "slow but fine")
    r = client(srv, timeout=2).chat.completions.create(model="m", messages=MSGS)
    assert r.choices[0].message.content == "slow but fine"


def test_cut_stream(srv):
    srv.queue_cut_stream("partial answer that never")
    stream = client(srv).chat.completions.create(model="m", messages=MSGS, stream=True)
    got = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                got.append(c.choices[0].delta.content)
    assert "".join(got) == "partial answer that never"


def test_cut_non_streamed(srv):
    srv.queue_cut_stream("half a body")
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        client(srv).chat.completions.create(model="m", messages=MSGS)


def test_drop(srv):
    srv.queue_drop()
    with pytest.raises(openai.APIConnectionError):
        client(srv).chat.completions.create(model="m", messages=MSGS)
    # The server keeps serving afterwards.
    srv.queue_reply("still alive")
    assert client(srv).chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "still alive"


def test_requests_recorded(srv):
    c = client(srv)
    c.chat.completions.create(model="fake-model", messages=MSGS, temperature=0.1)
    list(c.chat.completions.create(model="fake-model", messages=MSGS, stream=True))
    assert len(srv.requests) == 2
    first, second = srv.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["model"] == "fake-model"
    assert first["messages"] == MSGS
    assert first["temperature"] == 0.1
    assert first["headers"]["authorization"] == "Bearer sk-test"
    assert "stream" not in first or not first["stream"]
    assert second["stream"] is True


def test_models_endpoint_does_not_consume_queue(srv):
    srv.queue_reply("kept")
    models = client(srv).models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    assert srv.pending() == 1
    assert srv.requests[-1]["path"] == "/v1/models"


def test_unknown_path_404(srv):
    r = httpx.post(srv.base_url + "/embeddings", json={"input": "x"}, timeout=2)
    assert r.status_code == 404
    assert "error" in r.json()
    with pytest.raises(openai.NotFoundError):
        client(srv).embeddings.create(model="m", input="x")


def test_start_stop_context_manager():
    srv = FakeOpenAI().start()
    url = srv.base_url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    srv.queue_delay(30)  # a handler stuck in a delay must not block stop()
    c = client(srv, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="m", messages=MSGS)
    t0 = time.monotonic()
    srv.stop()
    srv.stop()  # idempotent
    assert time.monotonic() - t0 < 2
    with pytest.raises(openai.APIConnectionError):
        client_for_url = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, timeout=1)
        client_for_url.models.list()
