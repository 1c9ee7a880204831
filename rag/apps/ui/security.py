"""HTTP hardening for the UI, as plain ASGI middleware handed to Gradio's FastAPI app:
security headers on every response, and failed logins throttled per client address."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque

SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


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


class LoginThrottle:
    """After `max_failures` failed logins from one client address within `window` seconds, further login
    attempts from it get 429 (with Retry-After) until the oldest failure leaves the window."""

    def __init__(self, app, max_failures: int = 5, window: float = 300.0, clock=time.monotonic):
        self.app = app
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, client: str) -> deque:
        now = self._clock()
        failures = self._failures[client]
        while failures and now - failures[0] > self.window:
            failures.popleft()
        return failures

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path", "").rstrip("/") != "/login":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown", 0))[0]
        with self._lock:
            failures = self._recent(client)
            if len(failures) >= self.max_failures:
                wait = max(1, int(self.window - (self._clock() - failures[0])) + 1)
                body = json.dumps({"detail": f"Too many failed logins: try again in {wait} s."}).encode()
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"application/json"), (b"retry-after", str(wait).encode())]
                            + SECURITY_HEADERS})
                await send({"type": "http.response.body", "body": body})
                return
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code", 200) >= 400:
            with self._lock:
                self._recent(client).append(self._clock())


def middleware(max_failures: int = 5, window: float = 300.0) -> list:
    from starlette.middleware import Middleware

    return [Middleware(SecurityHeaders), Middleware(LoginThrottle, max_failures=max_failures, window=window)]
