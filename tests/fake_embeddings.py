"""A local OpenAI-compatible `/v1/embeddings` server for tests (stdlib only).

The vectors come from a pluggable function (the real packaged model where vectors are compared,
the HashEmbedder in fault tests); faults are queued and consumed one per request, in order::

    with FakeEmbeddings(HashEmbedder().embed) as srv:
        srv.queue_error(429, retry_after=3)
        srv.queue_drop()
        embedder = RemoteEmbedder(srv.base_url, srv.model)
        ...
        assert len(srv.requests) == 3

Faults: an HTTP error status (with Retry-After and a message), a slow reply (`queue_delay`, or
`hold` seconds on every reply), a dropped connection. The server records every request and the
most requests it had in flight at once. It is strict: any other path, another model, a malformed
body or an exception in a handler is recorded and fails the test when the server is closed.
"""

from __future__ import annotations

import base64
import collections
import json
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler

import numpy as np
from fake_openai import QuietHTTPServer as _Server

__all__ = ["FakeEmbeddings"]


class FakeEmbeddings:
    """An OpenAI-protocol embeddings server on 127.0.0.1 and a free port, until `close()`."""

    def __init__(self, embed_fn, model: str = "all-MiniLM-L6-v2", hold: float = 0.0):
        self.embed_fn = embed_fn
        self.model = model
        self.hold = hold  # seconds every successful reply waits (makes concurrency observable)
        self.requests: list[dict] = []
        self.errors: list[str] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()  # the real model's tokenizer is not thread-safe
        self._stop = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ faults
    def queue_error(self, status: int, retry_after: float | None = None, message: str | None = None,
                    headers: dict[str, str] | None = None) -> None:
        """The next request gets HTTP `status`; `headers` are sent as given (e.g. retry-after-ms)."""
        self._faults.append(("error", status, retry_after, message, headers or {}))

    def queue_delay(self, seconds: float) -> None:
        """The next request waits `seconds` before a normal reply (the client may give up first)."""
        self._faults.append(("delay", seconds))

    def queue_drop(self) -> None:
        """The next request gets its connection closed without a reply."""
        self._faults.append(("drop",))

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._stop.set()  # wakes slow replies
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeEmbeddings":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if self.errors and exc[0] is None:
            raise AssertionError("fake embedding server: " + "; ".join(self.errors))

    # ------------------------------------------------------------ handling
    def _fail(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so a dropped connection is a real mid-stream drop
            timeout = 30

            def log_message(self, format, *args):  # noqa: A002 - keep test output clean
                pass

            def do_GET(self):
                self._unexpected()

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") != "/v1/embeddings":
                    return self._unexpected()
                with fake._lock:
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    self._embeddings(raw)
                except (ConnectionError, socket.timeout):
                    self.close_connection = True  # the client gave up (e.g. its timeout passed)
                except Exception:  # noqa: BLE001 - strict: any handler bug fails the test
                    fake._fail("handler exception:\n" + traceback.format_exc())
                    self._json(500, {"error": {"message": "fake server bug", "type": "server_error"}})
                finally:
                    with fake._lock:
                        fake._in_flight -= 1

            def _unexpected(self):
                fake._fail(f"unexpected request {self.command} {self.path}")
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def _embeddings(self, raw: bytes):
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.requests.append({"path": self.path, "headers": headers, "body": body})
                texts = body.get("input") if isinstance(body, dict) else None
                if isinstance(texts, str):
                    texts = [texts]
                if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                    fake._fail(f"malformed embeddings request: {raw[:200]!r}")
                    return self._json(400, {"error": {"message": "input must be a list of strings"}})
                if body.get("model") != fake.model:
                    fake._fail(f"request for model {body.get('model')!r}, serving {fake.model!r}")
                    return self._json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                fault = fake._faults.popleft() if fake._faults else None
                if fault and fault[0] == "error":
                    _, status, retry_after, message, headers = fault
                    extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                    extra.update(headers)
                    return self._json(status, {"error": {"message": message or f"HTTP {status}"}}, extra)
                if fault and fault[0] == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                delay = fault[1] if fault and fault[0] == "delay" else fake.hold
                if delay and fake._stop.wait(delay):
                    return  # the server is closing
                with fake._embed_lock:
                    vecs = np.asarray(fake.embed_fn(texts), dtype=np.float32)
                if body.get("encoding_format") == "base64":
                    items = [base64.b64encode(v.tobytes()).decode() for v in vecs]
                else:
                    items = [v.tolist() for v in vecs]
                n_tokens = sum(len(t.split()) for t in texts)
                self._json(200, {
                    "object": "list",
                    "model": fake.model,
                    "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
                    "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
                })

            def _json(self, status: int, payload: dict, extra_headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra_headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        return Handler
