"""Embeddings from any OpenAI-compatible `/v1/embeddings` server (text-embeddings-inference, vLLM,
Infinity, Ollama) through the `openai` client.

Texts go out in batches (RAG_EMBED_BATCH_SIZE per request) with at most RAG_EMBED_CONCURRENCY
requests in flight. Every request has a timeout and every `embed` call a deadline. Retries (tenacity)
cover only what is transient: 429 (honouring Retry-After), 5xx, timeouts and dropped connections.
The last failure becomes a `rag.errors` exception that says what to fix. The protocol plumbing (client,
retry rules, error messages, redaction) is rag.clients.openai_http's: no message or log line from here
holds the API key or a password in the URL.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import httpx
import numpy as np
import openai
from tenacity import RetryCallState, Retrying, retry_if_exception

from rag.clients.openai_http import (
    CONFIG_KINDS,
    BadReply,
    Endpoint,
    RetryWait,
    describe_failure,
    is_transient,
    log_retry,
    make_client,
)
from rag.errors import ConfigError, RagError
from rag.index.vectors import l2_normalise

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 5.0  # seconds; a server that takes longer to accept a connection counts as unreachable


class _DeadlinePassed(TimeoutError):
    """The embed call ran out of time before this request could start."""


class _Aborted(Exception):
    """Another batch of the same call failed for good; this one stops."""


class _Stop:
    """Stop after `attempts`, when the next try would start past the deadline, or when the call is aborted."""

    def __init__(self, attempts: int, deadline_at: float, abort: threading.Event):
        self.attempts, self.deadline_at, self.abort = attempts, deadline_at, abort

    def __call__(self, state: RetryCallState) -> bool:
        if self.abort.is_set() or state.attempt_number >= self.attempts:
            return True
        return time.monotonic() + (state.upcoming_sleep or 0.0) >= self.deadline_at


class RemoteEmbedder:
    """Embedder interface over an OpenAI-compatible embeddings endpoint at `url` (base URL, e.g. .../v1).

    `name` is the model name sent, so an index built with one model refuses queries embedded by
    another; `dim` is learnt from the first reply. Vectors are L2-normalised here, whatever the server does.
    """

    backend = "remote"

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        batch_size: int = 16,
        concurrency: int = 4,
        timeout: float = 30.0,
        deadline: float | None = None,
        max_attempts: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """`deadline`: seconds per `embed` call, retries included; default timeout x (rounds of requests + 2).
        `sleep`: how retries wait (tests pass a recorder instead of waiting)."""
        self._endpoint = Endpoint(
            url.rstrip("/"), model, api_key, role="the embedding server", url_var="RAG_EMBED_URL",
            key_var="RAG_EMBED_API_KEY", model_var="RAG_EMBED_MODEL",
            request_hint="check RAG_EMBED_MODEL, and lower RAG_EMBED_BATCH_SIZE if the texts or batches are too large",
            rate_hint="lower RAG_EMBED_CONCURRENCY, or try again later",
            timeout_hint="is it overloaded? Raise RAG_EMBED_TIMEOUT or lower RAG_EMBED_BATCH_SIZE",
            reply="a usable embeddings reply",
        )
        self.url = self._endpoint.shown_url  # as messages and reports show it: a password in the URL is masked
        self.name = model
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.deadline = deadline
        self.max_attempts = max(1, max_attempts)
        self._sleep = sleep
        self._client = make_client(self._endpoint, timeout)
        self._dim: int | None = None
        self._dim_lock = threading.Lock()

    @property
    def dim(self) -> int:
        """The model's dimension, from the server's reply (asks once if nothing was embedded yet)."""
        if self._dim is None:
            self.embed(["dimension probe"])
        return self._dim

    def describe(self) -> dict:
        """No network: `dim` is None until the server has answered once; the server's precision is unknown."""
        return {"backend": self.backend, "precision": None, "model": self.name, "dim": self._dim, "url": self.url}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        rounds = math.ceil(len(batches) / self.concurrency)
        budget = self.deadline if self.deadline is not None else self.timeout * (rounds + 2)
        deadline_at = time.monotonic() + budget
        abort = threading.Event()
        try:
            if len(batches) == 1:
                parts = [self._embed_batch(batches[0], deadline_at, abort)]
            else:
                parts = self._embed_concurrently(batches, deadline_at, abort)
        except (openai.OpenAIError, httpx.HTTPError, _DeadlinePassed, BadReply) as exc:
            raise self._error(exc, budget, len(texts)) from None
        return np.concatenate(parts, axis=0)

    def _embed_concurrently(self, batches, deadline_at: float, abort: threading.Event) -> list[np.ndarray]:
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches)), thread_name_prefix="rag-embed")
        futures = [pool.submit(self._embed_batch, b, deadline_at, abort) for b in batches]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                raise failed[0].exception()
            return [f.result() for f in futures]
        finally:
            abort.set()  # batches still retrying stop; queued ones never start
            pool.shutdown(wait=True, cancel_futures=True)  # running requests end within their timeout

    def _embed_batch(self, batch: list[str], deadline_at: float, abort: threading.Event) -> np.ndarray:
        if abort.is_set():
            raise _Aborted()
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=_Stop(self.max_attempts, deadline_at, abort),
            wait=RetryWait(multiplier=0.25, max_backoff=4),  # many batches: shorter backoff than a chat call
            sleep=self._sleep,
            reraise=True,
            before_sleep=log_retry(log, "embedding request", self._endpoint),
        )
        for attempt in retrying:
            with attempt:
                remaining = deadline_at - time.monotonic()
                if remaining <= 0:
                    raise _DeadlinePassed()
                limit = min(self.timeout, remaining)
                reply = self._client.embeddings.create(
                    model=self.name,
                    input=batch,
                    encoding_format="float",  # the most widely served format (the client defaults to base64)
                    timeout=httpx.Timeout(limit, connect=min(limit, CONNECT_TIMEOUT)),
                )
        return self._vectors(reply, len(batch))

    def _vectors(self, reply, n: int) -> np.ndarray:
        try:
            data = sorted(reply.data or [], key=lambda d: d.index)
            vecs = np.asarray([d.embedding for d in data], dtype=np.float32)
        except (AttributeError, TypeError, ValueError) as exc:
            raise BadReply(f"unreadable embeddings ({exc.__class__.__name__})") from None
        if vecs.ndim != 2 or len(vecs) != n or vecs.shape[1] == 0:
            raise BadReply(f"{len(data)} vectors for {n} texts")
        if not np.all(np.isfinite(vecs)):
            raise BadReply("non-finite values in the vectors")
        with self._dim_lock:
            if self._dim is None:
                self._dim = int(vecs.shape[1])
            elif vecs.shape[1] != self._dim:
                raise BadReply(f"vectors of dimension {vecs.shape[1]} after {self._dim}")
        return l2_normalise(vecs)

    def _error(self, exc: BaseException, budget: float, n: int) -> RagError:
        """What went wrong and what to check (rag.clients.openai_http); a setting to fix is a ConfigError."""
        failure = describe_failure(exc, self._endpoint, waited=f"did not embed {n} texts within {budget:g}s")
        return (ConfigError if failure.kind in CONFIG_KINDS else RagError)(failure.message)
