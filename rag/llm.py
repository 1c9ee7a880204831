"""The LLM behind a narrow interface: any OpenAI-compatible chat endpoint via the `openai` client.

Retries (tenacity) only what is transient: 429 (honouring Retry-After), 5xx, timeouts and dropped
connections; exponential backoff with jitter, capped in attempts and in total time. Everything
else, and the last failure, becomes an `LLMError` whose message never contains the API key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import httpx
import openai
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from rag.errors import ConfigError, LLMError

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]


@runtime_checkable
class ChatModel(Protocol):
    """What the answerer needs from an LLM: a whole reply, or its text streamed. Raises LLMError."""

    name: str

    def complete(self, messages: Messages) -> str: ...

    def stream(self, messages: Messages) -> Iterator[str]: ...


class StreamCut(LLMError):
    """The stream broke after some tokens were delivered."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    return isinstance(exc, (httpx.TransportError, httpx.RemoteProtocolError))


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class _Wait:
    """Retry-After when the server gives one, else exponential backoff with jitter."""

    def __init__(self, max_wait: float):
        self._backoff = wait_random_exponential(multiplier=0.5, max=8)
        self._cap = max_wait

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(exc) if exc else None
        return min(self._cap, hinted if hinted is not None else self._backoff(state))


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
    ):
        """`sleep` (seconds -> None) is what retries wait with: time.sleep, or a recorder in tests."""
        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"
        self.name = f"{model} @ {self.base_url}"
        self._key = api_key or ""
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",  # local servers ignore it; the client insists on one
            max_retries=0,  # tenacity owns retries
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self.temperature = temperature
        self._sleep = sleep

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
        )

    def _retrying(self) -> Retrying:
        extra = {"sleep": self._sleep} if self._sleep is not None else {}
        return Retrying(
            **extra,
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self._max_attempts) | stop_after_delay(self._max_wait),
            wait=_Wait(self._max_wait),
            reraise=True,
            before_sleep=lambda s: log.warning(
                "LLM call failed (%s), retry %d", self._describe(s.outcome.exception()), s.attempt_number
            ),
        )

    def _describe(self, exc: BaseException) -> str:
        status = getattr(exc, "status_code", None)
        text = f"{exc.__class__.__name__}" + (f" HTTP {status}" if status else "")
        return text.replace(self._key, "***") if self._key else text

    def _fail(self, exc: BaseException) -> LLMError:
        error = self._error(exc)
        error.transient = is_transient(exc)
        return error

    def _error(self, exc: BaseException) -> LLMError:
        if isinstance(exc, openai.AuthenticationError):
            return LLMError(f"the LLM endpoint {self.base_url} rejected the API key: check RAG_LLM_API_KEY")
        if isinstance(exc, openai.NotFoundError):
            return LLMError(f"the LLM endpoint {self.base_url} does not know model {self.model!r}: check RAG_LLM_MODEL")
        if isinstance(exc, openai.APITimeoutError):
            return LLMError(f"the LLM at {self.base_url} did not answer in time: raise RAG_LLM_TIMEOUT or check the server")
        if isinstance(exc, openai.APIConnectionError):
            return LLMError(f"cannot connect to the LLM at {self.base_url}: is the server running? (RAG_LLM_BASE_URL)")
        return LLMError(f"the LLM at {self.base_url} failed: {self._describe(exc)}")

    def complete(self, messages: Messages) -> str:
        try:
            for attempt in self._retrying():
                with attempt:
                    resp = self._client.chat.completions.create(
                        model=self.model, messages=messages, temperature=self.temperature, stream=False
                    )
            return resp.choices[0].message.content or ""
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise self._fail(exc) from None

    def stream(self, messages: Messages) -> Iterator[str]:
        """Yield text deltas. Retries happen only before the first token; a later cut raises StreamCut."""
        delivered = False
        try:
            for attempt in self._retrying():
                with attempt:
                    chunks = self._client.chat.completions.create(
                        model=self.model, messages=messages, temperature=self.temperature, stream=True
                    )
                    iterator = iter(chunks)
                    first = self._next_text(iterator)  # failures up to here are retried
            if first:
                delivered = True
                yield first
            for chunk in iterator:
                text = _delta(chunk)
                if text:
                    delivered = True
                    yield text
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            if delivered:
                raise StreamCut(f"the LLM stream from {self.base_url} was cut mid-answer ({self._describe(exc)})") from None
            raise self._fail(exc) from None

    @staticmethod
    def _next_text(iterator) -> str:
        for chunk in iterator:
            text = _delta(chunk)
            if text:
                return text
        return ""


def _delta(chunk) -> str:
    if not chunk.choices:
        return ""
    return chunk.choices[0].delta.content or ""
