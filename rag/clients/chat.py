"""The LLM behind a narrow interface: any OpenAI-compatible chat endpoint via the `openai` client.

Every call is bounded: a timeout per request, a deadline for the whole call (connect, first token and
all streaming included; a stream kept open with keep-alives or one token a second is cut there),
`max_tokens` sent, and the reply's size capped. Retries (tenacity) cover only what is transient (429
honouring Retry-After, 5xx, timeouts, dropped connections), before the first token, within the deadline.
Replies that are not answers (cut by length, a refusal, a tool call, no choices, HTML or invalid JSON)
raise `LLMReplyError` saying which; every failure is an `LLMError` whose message says what to check. Reasoning
blocks (`<think>…</think>`) are removed from every reply (rag.clients.reasoning). The
protocol plumbing (client, retry rules, error messages, redaction) is rag.clients.openai_http's: no message,
log line or reply text from here holds the API key or a password in the base URL.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import httpx
import openai
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from rag.clients.openai_http import (
    BadReply,
    Endpoint,
    RetryWait,
    describe,
    describe_failure,
    is_transient,
    log_retry,
    make_client,
    server_text,
)
from rag.clients.reasoning import filter_reasoning, strip_reasoning
from rag.errors import ConfigError, LLMError

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]
Usage = Callable[[int | None, int | None], None]  # (prompt_tokens, completion_tokens) as the server reports them


@runtime_checkable
class ChatModel(Protocol):
    """What the answerer needs from an LLM: a whole reply, or its text streamed. Raises LLMError.

    `deadline` is a time.monotonic() value the call must finish by; `on_usage` receives the token counts.
    `stream`'s generator returns (StopIteration.value) the reply's finish reason, "" when the stream ended
    without one (the reply may be cut short), or None when the model does not report it.
    """

    name: str

    def complete(self, messages: Messages, deadline: float | None = None, on_usage: Usage | None = None) -> str: ...

    def stream(self, messages: Messages, deadline: float | None = None, on_usage: Usage | None = None) -> Iterator[str]: ...


class StreamCut(LLMError):
    """The stream broke after some tokens were delivered."""

    transient = True


class LLMReplyError(LLMError):
    """The endpoint answered, but not with a usable answer. `kind`: truncated, refusal, tool_call, no_choices,
    empty, invalid, too_long."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class LLMDeadline(LLMError):
    """The call did not finish within its deadline."""

    transient = True


class OpenAIChatLLM:
    """Chat completions against `base_url` (OpenAI, vLLM, Ollama, llama.cpp server, ...)."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        model: str,
        connect_timeout: float = 5.0,
        timeout: float = 60.0,
        max_attempts: int = 4,
        max_wait: float = 30.0,
        temperature: float = 0.0,
        sleep=None,
        max_tokens: int = 1024,
        deadline: float = 60.0,
        max_reply_chars: int = 20_000,
    ):
        """`sleep` (seconds -> None) is what retries wait with: time.sleep, or a recorder in tests.
        `deadline`: seconds a whole call may take unless the caller passes its own deadline."""
        self.model = model
        self._endpoint = Endpoint(
            base_url or "https://api.openai.com/v1", model, api_key, role="the LLM endpoint", url_var="RAG_LLM_BASE_URL",
            key_var="RAG_LLM_API_KEY", model_var="RAG_LLM_MODEL",
            request_hint="check RAG_LLM_MODEL and RAG_LLM_MAX_TOKENS (the model's context may be smaller than the prompt)",
            rate_hint="wait a minute and try again, or raise the endpoint's rate limit",
            timeout_hint="raise RAG_LLM_TIMEOUT or check the server", reply="an OpenAI chat completion",
        )
        self.base_url = self._endpoint.shown_url  # as messages show it: a password in the URL is masked
        self.name = f"{model} @ {self.base_url}"
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._client = make_client(self._endpoint, httpx.Timeout(timeout, connect=connect_timeout))
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self.temperature = temperature
        self._sleep = sleep
        self.max_tokens = max_tokens
        self.deadline_s = deadline
        self.max_reply_chars = max_reply_chars

    @classmethod
    def from_settings(cls, settings) -> "OpenAIChatLLM":
        if not settings.llm_configured:
            raise ConfigError(
                "no LLM endpoint: set RAG_LLM_BASE_URL (and RAG_LLM_API_KEY or OPENAI_API_KEY), or use --extractive"
            )
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return cls(
            settings.llm_base_url,
            key,
            settings.llm_model,
            connect_timeout=settings.llm_connect_timeout,
            timeout=settings.llm_timeout,
            max_attempts=settings.llm_max_attempts,
            max_wait=settings.llm_max_wait,
            temperature=settings.llm_temperature,
            max_tokens=settings.llm_max_tokens,
            deadline=settings.llm_deadline,
            max_reply_chars=settings.llm_max_reply_chars,
        )

    # -- plumbing ------------------------------------------------------------------------------

    def _deadline(self, deadline: float | None) -> float:
        return deadline if deadline is not None else time.monotonic() + self.deadline_s

    def _retrying(self, deadline: float) -> Retrying:
        remaining = max(0.0, deadline - time.monotonic())
        extra = {"sleep": self._sleep} if self._sleep is not None else {}
        return Retrying(
            **extra,
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self._max_attempts) | stop_after_delay(min(self._max_wait, remaining)),
            wait=RetryWait(cap=min(self._max_wait, remaining)),
            reraise=True,
            before_sleep=log_retry(log, "LLM call", self._endpoint),
        )

    def _request_timeout(self, deadline: float) -> httpx.Timeout:
        remaining = max(0.5, deadline - time.monotonic())
        return httpx.Timeout(min(self._timeout, remaining), connect=min(self._connect_timeout, remaining))

    def _fail(self, exc: BaseException) -> LLMError:
        """The LLMError to raise for `exc`: what happened and what to check (rag.clients.openai_http)."""
        if isinstance(exc, LLMError):
            return exc
        failure = describe_failure(exc, self._endpoint)
        error = (LLMReplyError(failure.message, "invalid") if failure.kind == "invalid"
                 else LLMError(failure.message))
        error.transient = failure.transient
        return error

    def _not_a_completion(self, what: str) -> LLMError:
        """A 200 that is not a chat completion; `what` it was instead (e.g. the content type the server sent)."""
        return self._fail(BadReply(server_text(what, self._endpoint, 80)))

    def _check_choice(self, finish_reason, refusal, tool_calls) -> None:
        if refusal:
            raise LLMReplyError(f"the LLM refused to answer ({server_text(str(refusal), self._endpoint, 160)})", "refusal")
        if tool_calls:
            raise LLMReplyError("the LLM asked to call a tool instead of answering", "tool_call")
        if finish_reason == "length":
            raise LLMReplyError(f"the LLM's answer was cut at {self.max_tokens} tokens (RAG_LLM_MAX_TOKENS): "
                                "a cut answer may end mid-claim, so it is not shown", "truncated")
        if finish_reason == "content_filter":
            raise LLMReplyError("the LLM's answer was withheld by the endpoint's content filter", "refusal")

    def _run(self, work: Callable, deadline: float):
        """Run `work` in a worker thread; give up at the deadline (the worker's own timeouts end it later)."""
        box: dict = {}

        def target():
            try:
                box["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        worker = threading.Thread(target=target, name="llm-call", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            raise LLMDeadline(f"the LLM endpoint at {self.base_url} did not finish within the deadline "
                              f"(RAG_LLM_DEADLINE={self.deadline_s:g} s): check the server or raise the deadline")
        if "error" in box:
            raise box["error"]
        return box["value"]

    # -- calls ---------------------------------------------------------------------------------

    def complete(self, messages: Messages, deadline: float | None = None, on_usage: Usage | None = None) -> str:
        """The reply's text (validated: a real, complete answer of bounded size)."""
        deadline = self._deadline(deadline)

        def call():
            for attempt in self._retrying(deadline):
                with attempt:
                    return self._client.chat.completions.create(
                        model=self.model, messages=messages, temperature=self.temperature, stream=False,
                        max_tokens=self.max_tokens, timeout=self._request_timeout(deadline),
                    )

        try:
            resp = self._run(call, deadline)
        except LLMError:
            raise
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise self._fail(exc) from None
        if isinstance(resp, str):  # a 200 response that is not JSON (e.g. an HTML page)
            raise self._not_a_completion("HTML or text" if "<" in resp[:200] else "plain text")
        if not getattr(resp, "choices", None):
            raise LLMReplyError("the LLM endpoint returned no choices (an empty completion)", "no_choices")
        choice = resp.choices[0]
        message = choice.message
        self._check_choice(choice.finish_reason, getattr(message, "refusal", None), getattr(message, "tool_calls", None))
        usage = getattr(resp, "usage", None)
        if on_usage is not None:
            on_usage(getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        text = strip_reasoning(message.content or "")
        if len(text) > self.max_reply_chars:
            raise LLMReplyError(f"the LLM's reply is {len(text):,} characters, over the {self.max_reply_chars:,} "
                                "allowed (RAG_LLM_MAX_REPLY_CHARS)", "too_long")
        return self._endpoint.redact(text)  # an endpoint echoing the key or the URL's password does not show it

    def stream(self, messages: Messages, deadline: float | None = None, on_usage: Usage | None = None) -> Iterator[str]:
        """Yield text deltas until the reply ends or the deadline passes. Retries happen only before the first
        token; a later cut raises StreamCut; a reply cut by length, a refusal or a tool call raise LLMReplyError
        after whatever text came before it. The text is redacted (a secret split across deltas included) and
        has no reasoning blocks. Returns the finish reason, "" when the stream ended without one (no finish
        chunk: an endpoint that stopped early, or a proxy that cut a complete-looking body)."""
        ended: dict = {}
        deltas = self._stream(messages, deadline, on_usage, ended)

        def seen(pieces):
            for piece in pieces:
                ended["text"] = ended.get("text") or bool(piece.strip())
                yield piece

        shown = False
        try:
            for piece in self._endpoint.redact_stream(filter_reasoning(seen(deltas))):
                shown = shown or bool(piece.strip())
                yield piece
        finally:
            deltas.close()  # ends the worker's stream now, not when the generator is collected
        if ended.get("text") and not shown:
            raise LLMReplyError("the LLM's reply was only its reasoning (a <think> block) with no answer after it",
                                "empty")
        return ended.get("finish") or ""

    def _stream(self, messages: Messages, deadline: float | None, on_usage: Usage | None,
                ended: dict) -> Iterator[str]:
        deadline = self._deadline(deadline)
        events: queue.Queue = queue.Queue()
        held: dict = {}
        stop = threading.Event()

        def open_stream():
            for attempt in self._retrying(deadline):
                with attempt:
                    s = self._client.chat.completions.create(
                        model=self.model, messages=messages, temperature=self.temperature, stream=True,
                        max_tokens=self.max_tokens, stream_options={"include_usage": True},
                        timeout=self._request_timeout(deadline),
                    )
                    held["stream"] = s
                    kind = s.response.headers.get("content-type", "")
                    if "event-stream" not in kind:
                        raise self._not_a_completion(kind.split(";")[0] or "no content type")
                    iterator = iter(s)
                    first = self._until_content(iterator)  # failures up to the first real content are retried
                    return iterator, first

        def pump():
            try:
                iterator, first = open_stream()
                for chunk in first:
                    events.put(("chunk", chunk))
                for chunk in iterator:
                    if stop.is_set():
                        return
                    events.put(("chunk", chunk))
                events.put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                events.put(("error", exc))

        worker = threading.Thread(target=pump, name="llm-stream", daemon=True)
        worker.start()
        delivered, size, saw_choice, finish = False, 0, False, None
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    kind, value = events.get(timeout=max(0.0, remaining))
                except queue.Empty:
                    raise LLMDeadline(
                        f"the LLM endpoint at {self.base_url} did not finish within the deadline (RAG_LLM_DEADLINE="
                        f"{self.deadline_s:g} s){' after a partial answer' if delivered else ''}: check the server"
                    ) from None
                if kind == "end":
                    if not saw_choice:
                        raise LLMReplyError("the LLM endpoint's stream carried no choices (an empty completion)",
                                            "no_choices")
                    ended["finish"] = finish
                    return
                if kind == "error":
                    exc = value
                    if isinstance(exc, LLMError):
                        raise exc
                    if delivered:
                        raise StreamCut(f"the LLM stream from {self.base_url} was cut mid-answer "
                                        f"({describe(exc)})") from None
                    raise self._fail(exc) from None
                chunk = value
                usage = getattr(chunk, "usage", None)
                if usage is not None and on_usage is not None:
                    on_usage(getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
                if not chunk.choices:
                    continue
                saw_choice = True
                choice = chunk.choices[0]
                delta = choice.delta
                self._check_choice(choice.finish_reason, getattr(delta, "refusal", None), getattr(delta, "tool_calls", None))
                finish = choice.finish_reason or finish
                text = (delta.content if delta is not None else None) or ""
                if text:
                    size += len(text)
                    if size > self.max_reply_chars:
                        raise LLMReplyError(f"the LLM's reply passed the {self.max_reply_chars:,} characters allowed "
                                            "(RAG_LLM_MAX_REPLY_CHARS)", "too_long")
                    delivered = True
                    yield text
        finally:
            stop.set()
            stream = held.get("stream")
            if stream is not None:
                try:
                    stream.response.close()  # unblocks the worker if it is waiting on the network
                except Exception:  # noqa: BLE001
                    pass

    @staticmethod
    def _until_content(iterator) -> list:
        """The chunks up to and including the first with text, a finish reason, a refusal or a tool call."""
        seen = []
        for chunk in iterator:
            seen.append(chunk)
            for choice in chunk.choices or []:
                delta = choice.delta
                if choice.finish_reason or (delta is not None and (delta.content or getattr(delta, "refusal", None)
                                                                   or getattr(delta, "tool_calls", None))):
                    return seen
        return seen
