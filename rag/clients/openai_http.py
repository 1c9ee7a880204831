"""The one OpenAI-protocol HTTP client: everything the chat model (rag.clients.chat) and the remote embedder
(rag.index.remote_embedder) share about talking to an OpenAI-compatible server.

- `make_client`: the `openai.OpenAI` client, with timeouts and no retries of its own (tenacity owns them). A
  password in the base URL (`http://user:secret@host/v1`) is sent as HTTP Basic auth, as before, but the URL the
  client holds has none, so it never shows in the `openai`/`httpx` logs.
- `is_transient`, `retry_after`, `RetryWait`, `log_retry`: retry only what is transient (429, 408, 409, 5xx,
  timeouts, dropped connections), waiting what the server asks (Retry-After in seconds or as an HTTP date,
  retry-after-ms) or else an exponential backoff with jitter, never past a cap.
- `describe_failure`: one mapping from an exception to a message saying what to check (401, 403, 404, other 4xx,
  429, 5xx, connection, timeout, a reply that is not the protocol's), worded per endpoint by its `Endpoint`.
- Every message, log line and notice built here goes through `rag.redaction.redact` (the endpoint's `redact`): no
  API key, no URL userinfo, no password, and the server's own words made terminal-safe.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import openai
from tenacity import RetryCallState, wait_random_exponential

from rag.redaction import redact, redact_stream
from rag.text import terminal_safe


def _without_userinfo(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """`url` without its userinfo, and that userinfo as Basic auth (what httpx would have made of it)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), httpx.BasicAuth(unquote(user), unquote(password))


# ---------------------------------------------------------------- the endpoint and its client


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server as a client sees it, and the words its failure messages use.

    `role` names it ("the LLM endpoint"); the `*_var` fields are the settings a message tells the user to check;
    the hints finish the messages for a rejected request, a rate limit and a timeout; `reply` is what a good
    answer is ("an OpenAI chat completion")."""

    url: str
    model: str
    key: str | None = None
    role: str = "the server"
    url_var: str = "the base URL"
    key_var: str = "the API key"
    model_var: str = "the model name"
    request_hint: str = "check the model name and the size of the request"
    rate_hint: str = "try again later"
    timeout_hint: str = "raise the timeout or check the server"
    reply: str = "an OpenAI-protocol reply"

    @property
    def shown_url(self) -> str:
        """The URL as messages show it (userinfo masked)."""
        return self.redact(self.url)

    def redact(self, text: str) -> str:
        """`redact` with this endpoint's key and URL."""
        return redact(text, self.key, self.url)

    def redact_stream(self, pieces: Iterable[str]) -> Iterator[str]:
        """`redact_stream` with this endpoint's key and URL."""
        return redact_stream(pieces, self.key, self.url)

    def __repr__(self) -> str:  # the default would show the key and the URL's password
        return f"Endpoint({self.role!r}, {self.shown_url!r}, model={self.model!r})"


def make_client(endpoint: Endpoint, timeout: float | httpx.Timeout) -> openai.OpenAI:
    """The `openai` client for `endpoint`: `timeout` per request, no retries of its own (tenacity owns them)."""
    base_url, auth = _without_userinfo(endpoint.url)
    return openai.OpenAI(
        base_url=base_url,
        api_key=endpoint.key or "not-needed",  # local servers ignore it; the client insists on one
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultHttpxClient(auth=auth) if auth is not None else None,
    )


# ---------------------------------------------------------------- what is retried, and after how long


def _quota_exhausted(exc: BaseException) -> bool:
    """OpenAI's 429 for an account out of credit: waiting does not help."""
    return isinstance(exc, openai.RateLimitError) and getattr(exc, "code", None) == "insufficient_quota"


def is_transient(exc: BaseException) -> bool:
    """Worth another try: 429 (not an exhausted quota), 408, 409, 5xx, timeouts and dropped connections."""
    if isinstance(exc, openai.RateLimitError):
        return not _quota_exhausted(exc)
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, TimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)


def retry_after(exc: BaseException | None, now: datetime | None = None) -> float | None:
    """Seconds the server asked to wait before the next try: `retry-after-ms`, else Retry-After as seconds or as
    an HTTP date; None when it gave no usable hint."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            seconds = float(headers["retry-after-ms"]) / 1000
        elif headers.get("retry-after") is not None:
            value = headers["retry-after"].strip()
            try:
                seconds = float(value)
            except ValueError:
                when = parsedate_to_datetime(value)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                seconds = (when - (now or datetime.now(UTC))).total_seconds()
        else:
            return None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class RetryWait:
    """tenacity wait: what the server asked (`retry_after`) when it said, else exponential backoff with jitter;
    never more than `cap` seconds."""

    def __init__(self, cap: float = math.inf, multiplier: float = 0.5, max_backoff: float = 8.0):
        self._backoff = wait_random_exponential(multiplier=multiplier, max=max_backoff)
        self._cap = cap

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after(exc)
        return max(0.0, min(self._cap, hinted if hinted is not None else self._backoff(state)))


def log_retry(logger: logging.Logger, what: str, endpoint: Endpoint) -> Callable[[RetryCallState], None]:
    """tenacity before_sleep: one redacted, terminal-safe warning per retry."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        said = server_message(exc, endpoint) if exc is not None else ""
        logger.warning("%s to %s failed (%s%s), retry %d in %.1f s", what, endpoint.shown_url,
                       describe(exc) if exc is not None else "?", f": {said}" if said else "",
                       state.attempt_number, state.upcoming_sleep)

    return before_sleep


# ---------------------------------------------------------------- failures as messages


class BadReply(ValueError):
    """The server answered, but not with what the protocol promises (its message says what it sent instead)."""


def describe(exc: BaseException) -> str:
    """The exception's class and HTTP status: never its text (which may quote the request or the key)."""
    status = getattr(exc, "status_code", None)
    return exc.__class__.__name__ + (f" HTTP {status}" if status else "")


def server_message(exc: BaseException | None, endpoint: Endpoint, limit: int = 200) -> str:
    """The server's own explanation (OpenAI, TEI, FastAPI and plain-text error shapes): one line, terminal-safe,
    redacted, at most `limit` characters."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body.get("detail") or None
        if isinstance(body, dict):
            body = body.get("message") or None
    if body is None or body == "":
        return ""
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return server_text(re.sub(r"<[^>]*>", " ", text), endpoint, limit)  # tags: an HTML error page from a proxy


def server_text(text: str, endpoint: Endpoint, limit: int = 200) -> str:
    """Words from the server fit for a message or a log line: one line, terminal-safe (no escape sequences,
    control or bidi characters), redacted, at most `limit` characters."""
    text = endpoint.redact(" ".join(terminal_safe(text).split()))  # redacted before it is cut: never half a key
    return text[:limit] + ("..." if len(text) > limit else "")


class Failure(NamedTuple):
    """An exception as the user should see it. `kind`: auth, forbidden, not_found, rejected, quota,
    rate_limited, server, timeout, connection, invalid or other."""

    kind: str
    message: str
    transient: bool


CONFIG_KINDS = frozenset({"auth", "forbidden", "not_found", "rejected", "quota"})  # fixed by a setting, not by waiting


def describe_failure(exc: BaseException, endpoint: Endpoint, waited: str | None = None) -> Failure:
    """What went wrong and what to check. `waited` words a timeout ("did not embed 10 texts within 30s")."""
    at, e = f"{endpoint.role} at {endpoint.shown_url}", endpoint
    said = server_message(exc, endpoint)
    said = f" (the server says: {said})" if said else ""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError)):
        kind, text = "timeout", f"{at} {waited or 'did not answer in time'}: {e.timeout_hint}"
    elif isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
        kind, text = "connection", f"cannot connect to {endpoint.role} at {endpoint.shown_url}: is it running? ({e.url_var})"
    elif isinstance(exc, openai.AuthenticationError):
        kind, text = "auth", f"{at} rejected the API key (HTTP 401): check {e.key_var}{said}"
    elif isinstance(exc, openai.PermissionDeniedError):
        kind, text = "forbidden", (f"{at} refused access to model {e.model!r} (HTTP 403): check that the API key may "
                                   f"use this model ({e.key_var}, {e.model_var}){said}")
    elif isinstance(exc, openai.NotFoundError):
        kind, text = "not_found", (f"{at} does not know model {e.model!r} or this path (HTTP 404): check {e.model_var}, "
                                   f"and that {e.url_var} is the OpenAI-compatible base URL (usually ending in /v1){said}")
    elif _quota_exhausted(exc):
        kind, text = "quota", f"{at} says the API key's quota is used up (HTTP 429): check its plan and billing{said}"
    elif isinstance(exc, openai.RateLimitError):
        kind, text = "rate_limited", f"{at} kept rate-limiting requests (HTTP 429): {e.rate_hint}{said}"
    elif isinstance(exc, openai.APIStatusError) and is_transient(exc):
        kind, text = "server", f"{at} kept failing (HTTP {status}): check its logs, then retry{said}"
    elif isinstance(exc, openai.APIStatusError):
        kind, text = "rejected", f"{at} rejected the request (HTTP {status}): {e.request_hint}{said}"
    elif isinstance(exc, (ValueError, openai.APIResponseValidationError)):  # BadReply, or invalid JSON in a 200
        what = str(exc) if isinstance(exc, BadReply) else "invalid JSON"
        kind, text = "invalid", (f"{at} sent something that is not {e.reply} ({what}): check that {e.url_var} is an "
                                 "OpenAI-compatible endpoint (usually ending in /v1)")
    else:
        kind, text = "other", f"{at} failed: {describe(exc)}{said}"
    return Failure(kind, endpoint.redact(text), is_transient(exc))
