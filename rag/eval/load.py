"""Load test: concurrent `gradio_client` clients against a running UI's `/ask` API, on loopback only.

    python -m rag.eval.load [--url http://127.0.0.1:7860] [--clients 20] [--questions-per-client 5]
                        [--timeout 120] [--out eval/bench/load.json]

Without --url it starts the UI itself (extractive mode, the index in RAG_DATA_DIR) on a free loopback
port and stops it afterwards. Bounded in count (clients x questions) and in time (--timeout).
Prints p50/p95 latency, errors and lost requests; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlparse

from rag.eval.bench import QUESTIONS
from rag.eval.timing import free_port, percentile


def start_ui(settings):
    """Launch the app in this process on a free loopback port; returns (app, url)."""
    from rag.apps.ui.app import build_app

    app = build_app(settings)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def run_load(url: str, clients: int, per_client: int, timeout: float) -> dict:
    from gradio_client import Client

    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test a non-loopback host: {host}")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    done = [0]

    def worker(cid: int) -> None:
        client = Client(url, verbose=False)
        for j in range(per_client):
            question = QUESTIONS[(cid + j) % len(QUESTIONS)]
            t = time.perf_counter()
            try:
                result = client.predict(question, api_name="/ask")
                ok = bool(result)
            except Exception as exc:  # every failure is counted, none is lost
                ok = False
                with lock:
                    errors.append(f"{exc.__class__.__name__}: {str(exc)[:200]}")
            with lock:
                if ok:
                    latencies.append((time.perf_counter() - t) * 1000)
                done[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(worker, c) for c in range(clients)]
        wait(futures, timeout=timeout)
    wall = time.perf_counter() - started
    total = clients * per_client
    return {
        "url": url,
        "clients": clients,
        "questions_per_client": per_client,
        "requests": total,
        "completed": done[0],
        "succeeded": len(latencies),
        "errors": len(errors),
        "lost": total - done[0],
        "wall_s": round(wall, 1),
        "throughput_rps": round(len(latencies) / wall, 2) if wall else None,
        "latency_ms_p50": round(percentile(latencies, 50), 1) if latencies else None,
        "latency_ms_p95": round(percentile(latencies, 95), 1) if latencies else None,
        "latency_ms_mean": round(statistics.mean(latencies), 1) if latencies else None,
        "error_samples": errors[:5],
    }


def main(argv=None) -> int:
    from rag.env import configure_process

    configure_process()
    p = argparse.ArgumentParser(prog="python -m rag.eval.load", description=__doc__.splitlines()[0])
    p.add_argument("--url")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--questions-per-client", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--out", type=Path, default=Path("eval/bench/load.json"))
    args = p.parse_args(argv)
    app = None
    url = args.url
    if url is None:
        from rag.settings import load_settings

        app, url = start_ui(load_settings())
    try:
        result = run_load(url, args.clients, args.questions_per_client, args.timeout)
    finally:
        if app is not None:
            app.close()
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 and result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
