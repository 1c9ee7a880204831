"""A content-hash cache of vectors (SQLite), so unchanged text is never embedded again."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.files import files_signature
from rag.index.embedders import Embedder
from rag.index.layout import set_aside


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

    def has_model(self, model: str) -> bool:
        """True when any vector of `model` is cached."""
        return self._db.execute("SELECT 1 FROM emb WHERE model = ? LIMIT 1", (model,)).fetchone() is not None

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                [(model, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )

    def check(self) -> None:
        """Raise sqlite3.DatabaseError if the file is damaged (a cheap check: the table and one row)."""
        self._db.execute("SELECT key, vec FROM emb LIMIT 1").fetchall()
        result = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(result)

    def close(self) -> None:
        self._db.close()


def _file_signature(path: Path) -> str:
    """The cache file and its write-ahead log (which exists while the cache is open)."""

    return files_signature([path, Path(str(path) + "-wal")])


def remember_cache_verified(path: Path) -> None:
    """Record the closed cache file as good: the next open skips the integrity check (which reads the whole
    file: 1.5 s at 100k papers) unless the file changed since."""
    try:
        Path(str(path) + ".verified").write_text(_file_signature(Path(path)))
    except OSError:
        pass


def open_embedding_cache(path: Path, repaired: list[str] | None = None) -> "EmbeddingCache":
    """The embedding cache; a damaged one is set aside (renamed, with a warning) and started afresh.

    The integrity check runs unless the file is as the last ingest left it (remember_cache_verified)."""

    path = Path(path)
    try:
        verified = Path(str(path) + ".verified").read_text() == _file_signature(path)
    except OSError:
        verified = False
    try:
        cache = EmbeddingCache(path)
        if not verified:
            cache.check()
        return cache
    except sqlite3.DatabaseError as exc:
        set_aside(path, f"damaged embedding cache ({exc})")
        for extra in ("-wal", "-shm"):
            Path(str(path) + extra).unlink(missing_ok=True)
        if repaired is not None:
            repaired.append("embedding cache (damaged: set aside, vectors embedded again)")
        return EmbeddingCache(path)


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
