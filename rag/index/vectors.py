"""Vector arithmetic shared by the embedders and the index: normalisation and per-paper vectors."""

from __future__ import annotations

import numpy as np


def l2_normalise(vecs) -> np.ndarray:
    """float32 rows scaled to unit length (all-zero rows stay zero)."""
    vecs = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.clip(norms, 1e-12, None)


def paper_vectors(chunks, vectors) -> tuple[list[str], np.ndarray]:
    """One vector per paper: the normalised mean of its chunks' vectors (no extra embedding)."""
    rows: dict[str, list[int]] = {}
    for i, chunk in enumerate(chunks):
        rows.setdefault(chunk.paper_id, []).append(i)
    ids = list(rows)
    means = np.stack([vectors[rows[pid]].mean(axis=0) for pid in ids]) if ids else np.zeros((0, vectors.shape[1]))
    return ids, means / np.clip(np.linalg.norm(means, axis=1, keepdims=True), 1e-12, None)
