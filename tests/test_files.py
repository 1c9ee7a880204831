"""File signatures (rag.files) and the checks they let an ingest skip."""

from __future__ import annotations

import os

import numpy as np

from rag.files import files_signature


def test_a_signature_changes_with_size_time_or_existence(tmp_path):
    a, missing = tmp_path / "a.bin", tmp_path / "gone.bin"
    a.write_bytes(b"12345")
    before = files_signature([a, missing])
    assert before.splitlines() == [f"a.bin:5:{a.stat().st_mtime_ns}", "gone.bin:-"]
    assert files_signature([a, missing]) == before
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1_000_000))
    assert files_signature([a, missing]) != before
    missing.write_bytes(b"")
    assert "gone.bin:0:" in files_signature([a, missing])
    sub = tmp_path / "d" / "x.bin"
    sub.parent.mkdir()
    sub.write_bytes(b"x")
    assert files_signature([sub], tmp_path).startswith("d/x.bin:1:")


def test_the_embedding_cache_is_checked_again_only_when_its_file_changed(tmp_path, monkeypatch):
    from rag.index import embed_cache as embeddings

    checks = []
    real_check = embeddings.EmbeddingCache.check
    monkeypatch.setattr(embeddings.EmbeddingCache, "check", lambda self: (checks.append(1), real_check(self))[1])
    path = tmp_path / "cache.sqlite"
    cache = embeddings.open_embedding_cache(path)
    cache.put_many("m", {"k": np.ones(4, dtype=np.float32)})
    cache.close()
    embeddings.remember_cache_verified(path)
    assert len(checks) == 1
    embeddings.open_embedding_cache(path).close()  # as the last ingest left it: not read through again
    assert len(checks) == 1
    with open(path, "ab") as fh:  # changed since (here: grown), so checked again
        fh.write(b"\0" * 4096)
    embeddings.open_embedding_cache(path).close()
    assert len(checks) == 2
