"""HTTP hardening for the UI, as plain ASGI middleware handed to Gradio's FastAPI app: security headers on
every response, and failed logins throttled per client address and per user name.

The client address is the TCP peer's unless the operator named trusted proxies (`--forwarded-allow-ips`,
RAG_UI_FORWARDED_ALLOW_IPS): uvicorn, which Gradio starts, otherwise believes `X-Forwarded-For` from
127.0.0.1, so anyone able to reach the port from the same machine could claim a fresh address per attempt
(`trusted_proxies` below is how `launch` hands uvicorn the setting). The per-user-name count holds even
behind a proxy that forwards every client: guessing one user's password is throttled however many
addresses the guesses come from.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator

SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
MAX_LOGIN_BODY = 64 * 1024  # a login form is a few dozen bytes
MAX_TRACKED = 10_000  # throttle keys kept at most; the oldest idle ones are dropped first


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def trusted_proxies(allow_ips: str) -> Iterator[None]:
    """While the block runs, uvicorn servers created in it trust `X-Forwarded-For` only from `allow_ips`.

    Gradio's `launch()` builds its `uvicorn.Config` without a `forwarded_allow_ips` argument, so uvicorn
    reads FORWARDED_ALLOW_IPS when the Config is made (and defaults to "127.0.0.1,::1"). It is set for the
    duration of the launch only and restored after."""
    with _ENV_LOCK:
        saved = os.environ.get("FORWARDED_ALLOW_IPS")
        os.environ["FORWARDED_ALLOW_IPS"] = allow_ips
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("FORWARDED_ALLOW_IPS", None)
            else:
                os.environ["FORWARDED_ALLOW_IPS"] = saved


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (no framing, no MIME sniffing, no referrer)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in present
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")] + (headers or []) + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> bytes | None:
    """The whole request body, or None when it is larger than MAX_LOGIN_BODY."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_LOGIN_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _form_username(scope, body: bytes) -> str:
    """The `username` field of a login form (urlencoded or multipart), stripped as Gradio strips it."""
    from starlette.requests import Request

    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form()
        value = form.get("username")
        return value.strip() if isinstance(value, str) else ""
    except Exception:  # noqa: BLE001 - a malformed form: Gradio's own route will refuse it
        return ""


class LoginThrottle:
    """After `max_failures` failed logins within `window` seconds from one client address, or for one user
    name from any addresses, further login attempts from that address or for that name get 429 (with
    Retry-After) until the oldest failure leaves the window."""

    def __init__(self, app, max_failures: int = 5, window: float = 300.0, clock=time.monotonic):
        self.app = app
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> deque:
        now = self._clock()
        failures = self._failures[key]
        while failures and now - failures[0] > self.window:
            failures.popleft()
        return failures

    def _wait(self, keys: list[tuple[str, str]]) -> int | None:
        """Seconds until every key in `keys` may try again, or None if none is locked."""
        waits = []
        for key in keys:
            failures = self._recent(key)
            if len(failures) >= self.max_failures:
                waits.append(max(1, int(self.window - (self._clock() - failures[-self.max_failures])) + 1))
            elif not failures:
                self._failures.pop(key, None)
        return max(waits) if waits else None

    def _record(self, keys: list[tuple[str, str]]) -> None:
        now = self._clock()
        for key in keys:
            self._recent(key).append(now)
        if len(self._failures) > MAX_TRACKED:  # a flood of names: forget the idle ones, then the oldest
            for key in [k for k, v in self._failures.items() if not v or now - v[-1] > self.window]:
                del self._failures[key]
            while len(self._failures) > MAX_TRACKED:
                del self._failures[next(iter(self._failures))]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path", "").rstrip("/") != "/login":
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:
            return await _refuse(send, 413, "The login form is too large.")
        keys = [("client", (scope.get("client") or ("unknown", 0))[0])]
        user = await _form_username(scope, body)
        if user:
            keys.append(("user", user[:256]))
        with self._lock:
            wait = self._wait(keys)
        if wait is not None:
            return await _refuse(send, 429, f"Too many failed logins: try again in {wait} s.",
                                 [(b"retry-after", str(wait).encode())])
        status = {}
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # waits for the disconnect, as the server's own receive would
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay, watch)
        if status.get("code", 200) >= 400:
            with self._lock:
                self._record(keys)


def middleware(max_failures: int = 5, window: float = 300.0) -> list:
    from starlette.middleware import Middleware

    return [Middleware(SecurityHeaders), Middleware(LoginThrottle, max_failures=max_failures, window=window)]
