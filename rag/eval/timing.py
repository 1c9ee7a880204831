"""Timing figures for every benchmark and the eval report: one percentile, one summary, one way to save."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def summary(ms: list[float], digits: int = 2) -> dict:
    """{"n", "p50_ms" (the median), "p95_ms"} of timings in milliseconds: one definition for every bench."""
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), digits), "p95_ms": round(percentile(ms, 95), digits)}


def time_each(fn, items, repeats: int) -> list[float]:
    """Milliseconds of `fn(item)` for every item, `repeats` rounds."""
    out = []
    for _ in range(repeats):
        for item in items:
            t = time.perf_counter()
            fn(item)
            out.append((time.perf_counter() - t) * 1000)
    return out


def print_table(title, rows):
    print(f"\n## {title}")
    for row in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))


def save_json(out: Path, name: str, data) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (numpy's linear interpolation) of the values that are not None; None if none are."""
    vals = [float(v) for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None
