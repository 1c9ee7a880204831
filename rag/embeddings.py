"""Embedders behind one narrow interface, and a content-hash cache so unchanged text is never re-embedded."""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from rag.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """The packaged all-MiniLM-L6-v2 (or any local sentence-transformers folder) on the CPU."""

    def __init__(self, model_path: str, batch_size: int = 64, name: str | None = None):
        from sentence_transformers import SentenceTransformer

        if not Path(model_path).is_dir():
            raise ConfigError(f"embedding model folder {model_path} not found: set RAG_EMBED_MODEL_PATH")
        self._model = SentenceTransformer(str(model_path), device="cpu")
        self.batch_size = batch_size
        getdim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(getdim())
        self.name = name or DEFAULT_MODEL_NAME

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vecs.astype(np.float32, copy=False)


class HashEmbedder:
    """Deterministic bag-of-words hashing embedder for fast unit tests (no model)."""

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


def embedder_name(settings) -> str:
    """The name the index records for the configured model (backends with the same vectors share it)."""
    if settings.embed_backend == "hash":
        return HashEmbedder().name
    return str(settings.embed_model_path) if settings.embed_model_path else DEFAULT_MODEL_NAME


def make_embedder(settings) -> Embedder:
    """The embedder the settings ask for."""
    if settings.embed_backend == "hash":
        return HashEmbedder()
    path = settings.model_path()
    name = embedder_name(settings)
    if settings.embed_backend == "onnx":
        from rag.onnx_embed import OnnxEmbedder

        cache = settings.model_cache_dir or Path(settings.data_dir) / "models"
        return OnnxEmbedder(path, cache_dir=cache, batch_size=settings.embed_batch_size, name=name)
    return SentenceTransformerEmbedder(path, batch_size=settings.embed_batch_size, name=name)


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class EmbeddingCache:
    """sqlite map (model, sha1(text)) -> vector, committed per batch so an interrupted ingest keeps its work."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emb (model TEXT, key TEXT, vec BLOB, PRIMARY KEY (model, key))"
        )

    def get_many(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                f"SELECT key, vec FROM emb WHERE model=? AND key IN ({marks})", [model, *part]
            )
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                [(model, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )

    def close(self) -> None:
        self._db.close()


def embed_with_cache(
    embedder: Embedder | None,
    cache: EmbeddingCache,
    texts: Sequence[str],
    model_name: str,
    embedder_factory=None,
    batch_size: int = 256,
    progress=None,
) -> tuple[np.ndarray, int]:
    """Vectors for `texts`, embedding only cache misses (longest first, in batches).

    Returns (vectors, number embedded). The embedder is only built (`embedder_factory`) when
    something misses, so an unchanged re-ingest never loads the model.
    """
    keys = [text_key(t) for t in texts]
    found = cache.get_many(model_name, keys)
    missing = list(dict.fromkeys(k for k in keys if k not in found))
    if missing:
        if embedder is None:
            embedder = embedder_factory()
        by_key = {k: t for k, t in zip(keys, texts)}
        # Length-sorted batches waste less padding.
        missing.sort(key=lambda k: len(by_key[k]), reverse=True)
        for i in range(0, len(missing), batch_size):
            part = missing[i : i + batch_size]
            vecs = embedder.embed([by_key[k] for k in part])
            fresh = dict(zip(part, vecs))
            cache.put_many(model_name, fresh)
            found.update(fresh)
            if progress is not None:
                progress.update(len(part))
    dim = next(iter(found.values())).shape[0] if found else 0
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, key in enumerate(keys):
        out[row] = found[key]
    return out, len(missing)
