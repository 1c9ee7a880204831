"""A local OpenAI-protocol HTTP server for tests (stdlib HTTP; its oracle mode replies with rag.eval.oracle).

Drives the real ``openai`` client against canned replies and injectable faults::

    with FakeOpenAI() as srv:
        srv.queue_reply("hello")
        srv.queue_error(429, retry_after=1)
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
        ...
        assert srv.requests[0]["messages"][0]["content"] == "hi"

Endpoints:

* ``POST /v1/chat/completions`` -- a ChatCompletion JSON, or, when the request
  body has ``"stream": true``, a ``text/event-stream`` of
  ``chat.completion.chunk`` events ending with ``data: [DONE]``.
* ``GET /v1/models`` -- lists the single model ``"fake-model"``.
* anything else -- 404 with an OpenAI-style error JSON.

Queued items (replies, errors, delays, cut streams, drops) are consumed in
FIFO order, one per chat-completions request; ``GET /v1/models`` never
consumes them.  When the queue is empty, ``default_reply`` is returned; in
strict mode (``FakeOpenAI(strict=True)``, the tests' fixture) a request with
nothing queued and no ``default_reply`` set is an error, and ``verify()``
(called at teardown) fails on such requests, on handler exceptions and on
queued items nobody consumed.

The server speaks HTTP/1.1 (keep-alive; streamed bodies use chunked transfer
encoding), so a cut stream is a genuinely incomplete body on the client side.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rag.eval.oracle import RelevanceOracle

__all__ = ["FakeOpenAI", "MODEL_NAME", "Response", "relevance_oracle"]

MODEL_NAME = "fake-model"

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}

_STATUS_MESSAGES = {
    400: "Bad request",
    401: "Incorrect API key provided",
    403: "Forbidden",
    404: "Not found",
    429: "Rate limit reached for requests",
    500: "The server had an error while processing your request",
    502: "Bad gateway",
    503: "The engine is currently overloaded, please try again later",
    504: "Gateway timeout",
}


def _error_json(status: int, message: str | None = None) -> bytes:
    etype, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    msg = message or _STATUS_MESSAGES.get(status, f"HTTP {status}")
    return json.dumps({"error": {"message": msg, "type": etype, "param": None, "code": code}}).encode()


def _split_pieces(text: str, size: int = 4) -> list[str]:
    """Split ``text`` into small pieces (several per reply, like a real stream; at most ~2,000 pieces)."""
    size = max(size, len(text) // 2000 + 1)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _count_tokens(text: str) -> int:
    return len(text.split())


class _Item:
    __slots__ = ("kind", "text", "status", "retry_after", "body", "seconds", "finish", "extra", "content_type")

    def __init__(self, kind, text=None, status=None, retry_after=None, body=None, seconds=0.0, finish="stop",
                 extra=None, content_type=None):
        self.kind = kind
        self.text = text
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.seconds = seconds
        self.finish = finish  # finish_reason of the reply
        self.extra = extra or {}  # extra message/delta fields: refusal, tool_calls
        self.content_type = content_type


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading test server that ignores clients hanging up and never blocks shutdown (also used by
    tests/fake_embeddings.py)."""

    def handle_error(self, request, client_address):
        """A client hanging up on a keep-alive connection is normal here; anything else is reported."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Server(QuietHTTPServer):
    def __init__(self, addr, handler, fake: "FakeOpenAI"):
        self.fake = fake
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    sys_version = ""
    timeout = 30  # idle keep-alive connections end eventually

    server: _Server

    # ------------------------------------------------------------ plumbing
    def log_message(self, format, *args):  # noqa: A002 - silence stderr
        pass

    def setup(self):
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._track(self.connection, add=False)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _record(self, raw: bytes) -> dict:
        body: dict = {}
        if raw:
            try:
                parsed = json.loads(raw)
                body = parsed if isinstance(parsed, dict) else {"_body": parsed}
            except ValueError:
                body = {"_raw": raw.decode("utf-8", "replace")}
        entry = dict(body)
        entry["path"] = self.path
        entry["method"] = self.command
        entry["headers"] = {k.lower(): v for k, v in self.headers.items()}
        self.server.fake._record(entry)
        return body

    def _send(self, status: int, payload: bytes, content_type="application/json", extra_headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _write_chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _sse(self, obj) -> bytes:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        return f"data: {data}\n\n".encode()

    # ------------------------------------------------------------ routing
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def _dispatch(self):
        try:
            raw = self._read_body()
            body = self._record(raw)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/v1/chat/completions" and self.command == "POST":
                self._chat(body)
            elif path == "/v1/models" and self.command == "GET":
                self._send(200, json.dumps({
                    "object": "list",
                    "data": [{"id": MODEL_NAME, "object": "model", "created": 1700000000, "owned_by": "fake"}],
                }).encode())
            elif path in ("/v1/chat/completions", "/v1/models"):
                self._send(405, _error_json(405, f"Method {self.command} not allowed on {path}"))
            else:
                self._send(404, _error_json(404, f"Unknown path {self.path}"))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
            # The client went away (e.g. it timed out during a queued delay).
            self.close_connection = True
        except Exception as exc:  # a bug in the fake or the test: report it at teardown
            self.server.fake._problem(f"handler error on {self.command} {self.path}: {exc!r}")
            self.close_connection = True

    # ------------------------------------------------------------ chat
    def _chat(self, body: dict):
        fake = self.server.fake
        fake._enter()
        try:
            self._chat_item(fake, body)
        finally:
            fake._leave()

    def _chat_item(self, fake, body: dict):
        item = fake._pop(body)
        if item.seconds > 0:
            if fake._stopping.wait(item.seconds):
                self.close_connection = True
                return
        if item.kind == "drop":
            # Close without sending a single byte.
            self.close_connection = True
            return
        if item.kind == "raw":  # a 200 (or other) response that is not a chat completion
            self._send(item.status or 200, item.body.encode(), item.content_type or "text/html")
            return
        if item.kind == "keepalive":  # an event stream that never sends an event
            self._keepalive(item.body)
            return
        if item.kind == "error":
            headers = dict(item.extra)  # an error's extra response headers
            if item.retry_after is not None:
                ra = item.retry_after
                headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else repr(float(ra))
            if item.body is None:
                payload, ctype = _error_json(item.status), "application/json"
            else:
                payload = item.body.encode()
                try:
                    json.loads(item.body)
                    ctype = "application/json"
                except ValueError:
                    ctype = "text/plain"
            self._send(item.status, payload, ctype, headers)
            return

        model = body.get("model") or MODEL_NAME
        cid = f"chatcmpl-fake{fake._next_id()}"
        created = int(time.time())
        text = item.text if item.text is not None else ""
        prompt_tokens = sum(
            _count_tokens(m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content")))
            for m in body.get("messages") or []
            if isinstance(m, dict)
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": _count_tokens(text),
            "total_tokens": prompt_tokens + _count_tokens(text),
        }

        if item.kind == "no_choices":
            if body.get("stream"):
                self._stream_raw([{"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                   "choices": []}])
            else:
                self._send(200, json.dumps({"id": cid, "object": "chat.completion", "created": created, "model": model,
                                            "choices": [], "usage": usage}).encode())
            return
        if body.get("stream"):
            self._stream(cid, created, model, text, usage, cut=(item.kind == "cut"), unfinished=(item.kind == "unfinished"),
                         include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
                         finish=item.finish, extra=item.extra, interval=item.body if item.kind == "trickle" else 0.0)
            return

        completion = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text if text or not item.extra else None,
                            "refusal": None, **item.extra},
                "logprobs": None,
                "finish_reason": item.finish,
            }],
            "usage": usage,
        }
        payload = json.dumps(completion).encode()
        if item.kind == "cut":
            # Non-streamed request: promise the full body, deliver half, hang up.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, payload)

    def _keepalive(self, seconds: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.server.fake._stopping.wait(0.2):
            self._write_chunk(b": keep-alive\n\n")
        self.close_connection = True

    def _stream_raw(self, chunks: list) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for c in chunks:
            self._write_chunk(self._sse(c))
        self._write_chunk(self._sse("[DONE]"))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(self, cid, created, model, text, usage, cut, include_usage, finish="stop", extra=None, interval=0.0,
                unfinished=False):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

        def chunk(delta, finish=None):
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        self._write_chunk(self._sse(chunk({"role": "assistant", "content": ""})))
        for key, value in (extra or {}).items():  # a refusal or tool call arrives as its own delta
            self._write_chunk(self._sse(chunk({key: value})))
        for piece in _split_pieces(text):
            if interval and self.server.fake._stopping.wait(interval):
                return
            self._write_chunk(self._sse(chunk({"content": piece})))
        if unfinished:
            # A complete HTTP body, but no finish chunk and no [DONE]: the reply just stops.
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        if cut:
            # No finish chunk, no [DONE], no terminating zero-length chunk.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._write_chunk(self._sse(chunk({}, finish)))
        if include_usage:
            u = chunk({})
            u["choices"] = []
            u["usage"] = usage
            self._write_chunk(self._sse(u))
        self._write_chunk(self._sse("[DONE]"))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 with queued replies and injectable faults."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, strict: bool = False, responder=None):
        """`responder` (request body -> reply text) answers whatever was not queued, e.g. `relevance_oracle`."""
        self.host = host
        self.port = port
        self.strict = strict
        self.responder = responder
        self.default_reply: str | None = None if strict else "OK"
        self.problems: list[str] = []
        self.requests: list[dict] = []
        self.in_flight = 0  # chat requests being handled now, and the most at once
        self.max_in_flight = 0
        self._queue: collections.deque[_Item] = collections.deque()
        self._lock = threading.Lock()
        self._ids = 0
        self._conns: set = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakeOpenAI":
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"FakeOpenAI:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a queued delay
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------ queue API
    def queue_reply(self, text: str) -> None:
        """Next chat completion returns ``text`` (plain or streamed, per the request)."""
        self._push(_Item("reply", text=text))

    def queue_error(self, status: int, retry_after: float | None = None, body: str | None = None,
                    headers: dict[str, str] | None = None) -> None:
        """Next chat completion gets HTTP ``status``.

        The body is an OpenAI error JSON unless ``body`` is given, in which case
        it is sent verbatim.  ``retry_after`` adds a ``Retry-After`` header;
        ``headers`` are sent as given (e.g. an HTTP-date Retry-After, ``retry-after-ms``).
        """
        self._push(_Item("error", status=int(status), retry_after=retry_after, body=body, extra=headers))

    def queue_delay(self, seconds: float, text: str = "...") -> None:
        """Next chat completion sleeps ``seconds`` before replying with ``text``."""
        self._push(_Item("reply", text=text, seconds=float(seconds)))

    def queue_cut_stream(self, text_before_cut: str) -> None:
        """Next chat completion streams ``text_before_cut`` then hangs up without [DONE].

        For a non-streamed request, the JSON body is truncated mid-way instead.
        """
        self._push(_Item("cut", text=text_before_cut))

    def queue_unfinished_stream(self, text: str) -> None:
        """Next chat completion (streamed): `text`, then a cleanly ended body with no finish reason and no [DONE]
        (an endpoint or proxy that stopped early without saying so)."""
        self._push(_Item("unfinished", text=text))

    def queue_reply_cut_by_length(self, text: str) -> None:
        """Next chat completion: `text`, then finish_reason "length" (the answer hit max_tokens)."""
        self._push(_Item("reply", text=text, finish="length"))

    def queue_refusal(self, refusal: str = "I can't help with that.") -> None:
        """Next chat completion: a refusal (the `refusal` field, no content)."""
        self._push(_Item("reply", text="", extra={"refusal": refusal}))

    def queue_tool_call(self) -> None:
        """Next chat completion: a tool call instead of an answer."""
        call = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]
        self._push(_Item("reply", text="", finish="tool_calls", extra={"tool_calls": call}))

    def queue_no_choices(self) -> None:
        """Next chat completion: a well-formed completion with an empty `choices` list."""
        self._push(_Item("no_choices"))

    def queue_raw(self, body: str, content_type: str = "text/html", status: int = 200) -> None:
        """Next chat completion: this body verbatim (an HTML page, invalid JSON...)."""
        self._push(_Item("raw", body=body, content_type=content_type, status=status))

    def queue_trickle(self, text: str, interval: float) -> None:
        """Next chat completion (streamed): one small piece of `text` every `interval` seconds."""
        self._push(_Item("trickle", text=text, body=interval))

    def queue_keepalive(self, seconds: float) -> None:
        """Next chat completion: an event stream sending only keep-alive comments for `seconds`."""
        self._push(_Item("keepalive", body=seconds))

    def queue_drop(self) -> None:
        """Next chat completion: close the connection without any response."""
        self._push(_Item("drop"))

    def pending(self) -> int:
        """Number of queued items not yet consumed."""
        with self._lock:
            return len(self._queue)

    def expect_unused(self, n: int) -> None:
        """Assert that exactly `n` queued items were (deliberately) never requested, and drop them."""
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
        assert left == n, f"expected {n} unused queued item(s), found {left}"

    def clear(self) -> None:
        """Forget queued items and recorded requests."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    # ------------------------------------------------------------ internals
    def _push(self, item: _Item) -> None:
        with self._lock:
            self._queue.append(item)

    def _pop(self, body: dict | None = None) -> _Item:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            responder = self.responder
        if responder is not None:
            try:
                out = responder(body or {})
                if isinstance(out, Response):
                    if out.status is not None:
                        return _Item("error", status=out.status, seconds=out.delay)
                    return _Item("reply", text=out.text, seconds=out.delay)
                return _Item("reply", text=out)
            except Exception as exc:  # noqa: BLE001 - a broken responder is the test's bug: report it
                self._problem(f"responder failed: {exc!r}")
                return _Item("error", status=500)
        with self._lock:
            if self.default_reply is None:
                self.problems.append("a chat request arrived with nothing queued (strict mode)")
                return _Item("error", status=500, body='{"error": {"message": "fake: nothing queued"}}')
            return _Item("reply", text=self.default_reply)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def verify(self) -> None:
        """Fail on unexpected requests, handler errors, or queued items that were never consumed."""
        with self._lock:
            problems = list(self.problems)
            left = len(self._queue)
        if left:
            problems.append(f"{left} queued item(s) were never requested")
        assert not problems, "fake OpenAI server: " + "; ".join(problems)

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _track(self, conn, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


# ------------------------------------------------------------------ the relevance oracle


class Response:
    """What a responder may return instead of plain text: a reply after `delay` seconds, or HTTP `status`."""

    def __init__(self, text: str = "", delay: float = 0.0, status: int | None = None):
        self.text, self.delay, self.status = text, delay, status


def relevance_oracle(gold: dict[str, list[str]]):
    """A responder that replies like rag.eval.oracle.RelevanceOracle (a perfect judge for a dataset with
    known answers), so the oracle also runs through HTTP and the real `openai` client."""
    oracle = RelevanceOracle(gold)
    return lambda body: oracle.reply(body.get("messages") or [])
