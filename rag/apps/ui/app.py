"""The Gradio web UI, put together: page assets (`assets/`), layout (`layout`), events (`wiring`);
behaviour lives in `rag.apps.ui.controller` (plain Python). Also the login, the Evaluation tab's report
and `launch`.

`build_app(settings)` returns the Blocks (queue configured); `launch(settings)` serves it on
`settings.ui_host:ui_port` (loopback unless configured otherwise). Scripts use the `/ask` endpoint::

    from gradio_client import Client
    Client("http://127.0.0.1:7860").predict("which papers erase concepts in diffusion models?", api_name="/ask")
    # -> {"answer": ..., "citations": [titles], "abstained": False, "mode": "extractive", "notice": ..., ...}
"""

from __future__ import annotations

import atexit
import base64
import functools
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import warnings
from datetime import datetime
from pathlib import Path

import gradio as gr

from rag.apps.ui import render, security
from rag.apps.ui.assets import PageAssets, load_assets
from rag.apps.ui.controller import ChatController
from rag.apps.ui.layout import build_layout
from rag.apps.ui.wiring import Handlers, ask_endpoint, wire
from rag.errors import ConfigError
from rag.redaction import RedactingFilter, configured_secrets
from rag.settings import repo_root

log = logging.getLogger(__name__)

MAKE_EVAL_HINT = (
    "No evaluation report yet. Produce one with `make eval`, or:\n\n"
    "```bash\nrag eval --dataset eval/datasets/dev.jsonl --answer extractive --out eval/reports/latest\n```"
)


def parse_auth(secret, where: str = "RAG_UI_AUTH") -> tuple[str, str] | None:
    """"user:password" (a SecretStr or str) as Gradio's (user, password) tuple."""
    if secret is None:
        return None
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    value = value.strip()
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{where} must look like 'user:password' (both non-empty)")
    return user, password


def login_from(settings) -> tuple[str, str] | None:
    """The UI login: RAG_UI_AUTH_FILE (a file holding user:password), else RAG_UI_AUTH; never argv."""
    if settings.ui_auth_file:
        path = Path(settings.ui_auth_file)
        try:
            return parse_auth(path.read_text(encoding="utf-8"), f"the login file {path}")
        except OSError as exc:
            raise ConfigError(f"cannot read the login file {path} ({exc.strerror}): check RAG_UI_AUTH_FILE / --auth-file") from None
    return parse_auth(settings.ui_auth)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def eval_dir_for(settings, eval_dir=None) -> Path:
    """Where the Evaluation tab reads its report: the argument, RAG_UI_EVAL_DIR, else eval/reports/latest."""
    if eval_dir:
        return Path(eval_dir)
    if settings.ui_eval_dir:
        return Path(settings.ui_eval_dir)
    root = repo_root()
    return (root or Path.cwd()) / "eval" / "reports" / "latest"


HEADLINE_METRICS = ("recall@10", "ndcg@10", "mrr", "citation_precision", "citation_recall", "key_fact_recall",
                    "abstention_accuracy", "false_abstention_rate", "latency_ms_p50")


def eval_headline(report: dict) -> str:
    """The Evaluation tab's first table: key metrics per retrieval mode, out of sample (the `test` split)
    when the dataset has splits, with the `tune` figures beside them."""
    from rag.eval.report import fmt

    summary = report.get("summary") or {}
    by_split = report.get("by_split") or {}
    modes = list(summary)
    if not modes:
        return ""
    split = all("test" in (by_split.get(m) or {}) for m in modes)
    if split:
        head = "| metric | " + " | ".join(f"{m} test | {m} tune" for m in modes) + " |"
        rule = "|---|" + "---:|---:|" * len(modes)
        cell = lambda m, k: f"{fmt(by_split[m]['test'].get(k), k)} | {fmt((by_split[m].get('tune') or {}).get(k), k)}"
        note = ("Out of sample: thresholds and weights were fitted on the `tune` split; `test` was not used to choose "
                "them.")
    else:
        head = "| metric | " + " | ".join(modes) + " |"
        rule = "|---|" + "---:|" * len(modes)
        cell = lambda m, k: fmt(summary[m].get(k), k)
        note = "This dataset has no tune/test split."
    rows = [f"| {k} | " + " | ".join(cell(m, k) for m in modes) + " |"
            for k in HEADLINE_METRICS if any(summary[m].get(k) is not None for m in modes)]
    ds = report.get("dataset") or {}
    cfg = report.get("config") or {}
    about = (f"{ds.get('questions', '?')} questions from `{render.md_text(str(ds.get('path', '?')))}`; answers: "
             f"{cfg.get('answer', '?')}; {cfg.get('papers', '?')} papers.")
    return "\n".join(["### Headline", "", about + " " + note, "", head, rule, *rows])


def load_eval_report(eval_dir: Path) -> tuple[str, str, str]:
    """(headline markdown, plots html, full report markdown) for the Evaluation tab."""
    report = eval_dir / "report.md"
    if not report.is_file():
        return f"### Evaluation\n\n{MAKE_EVAL_HINT}\n\n<small>Looked in `{render.md_text(str(eval_dir))}`.</small>", "", ""
    try:
        text = report.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"Cannot read `{render.md_text(str(report))}` ({exc.__class__.__name__}). {MAKE_EVAL_HINT}", "", ""
    headline = ""
    try:
        data = json.loads((eval_dir / "report.json").read_text(encoding="utf-8"))
        headline = eval_headline(data) if isinstance(data, dict) else ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        headline = ""
    stamp = datetime.fromtimestamp(report.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    header = f"<small>Report `{render.md_text(str(report))}`, written {stamp}.</small>\n\n"
    images = []
    for png in sorted(eval_dir.glob("*.png")):
        try:
            data64 = base64.b64encode(png.read_bytes()).decode("ascii")
        except OSError:
            continue
        images.append(f'<figure><img alt="{render.esc(png.name)}" src="data:image/png;base64,{data64}">'
                      f"<figcaption>{render.esc(png.name)}</figcaption></figure>")
    gallery = f'<div class="rag-eval-images">{"".join(images)}</div>' if images else ""
    # Relative plot links cannot load from the page: the plots are shown above the report instead.
    text = re.sub(
        r"!\[([^\]]*)\]\(([\w.-]+\.png)\)",
        lambda m: f"_(plot {m.group(2)}: shown above)_" if (eval_dir / m.group(2)).is_file() else m.group(0),
        text,
    )
    full = text.replace("<", "&lt;")  # the report is Markdown; raw HTML shows as text
    return header + (headline.replace("<", "&lt;") or "See the full report below."), gallery, full


def _state_secret(settings) -> str:
    """The key that encrypts the conversation kept in the browser: stored in DATA_DIR so that a saved
    conversation survives a server restart (a random one per process otherwise)."""
    path = Path(settings.data_dir) / "ui_state.key"
    try:
        if path.is_file():
            key = path.read_text(encoding="ascii").strip()
            if len(key) >= 32:
                return key
        key = secrets.token_hex(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key)
        return key
    except (OSError, UnicodeDecodeError) as exc:
        log.info("cannot keep the UI state key in %s (%s): saved conversations last until a restart", path, exc)
        return secrets.token_hex(32)


@functools.cache
def private_temp_dir() -> Path:
    """This process's own temp dir (mode 0700, removed at exit) for the conversation exports and Gradio's file
    cache. Gradio's default cache, /tmp/gradio, is shared by every Gradio app on the host, readable by other
    users and served by any of those apps; GRADIO_TEMP_DIR points Gradio here instead (its components read it
    when they are created, so before the first Blocks is built)."""
    root = Path(tempfile.mkdtemp(prefix="paper-rag-ui-"))  # mkdtemp: mode 0700, a fresh name
    (root / "gradio").mkdir(mode=0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def build_app(settings, assistant=None, eval_dir: str | Path | None = None) -> gr.Blocks:
    """The whole UI as a gr.Blocks with its queue configured (launch it, or use `launch`): the page's
    assets, then its layout, then the events wiring the layout to a ChatController. Exports and Gradio's
    file cache live in `private_temp_dir()`."""
    if assistant is None:
        from rag.answer.assistant import Assistant

        assistant = Assistant.from_settings(settings)
    exports = Path(tempfile.mkdtemp(prefix="exports-", dir=private_temp_dir()))
    ctl = ChatController(settings, assistant, export_dir=exports)
    eval_path = eval_dir_for(settings, eval_dir)
    assets = load_assets()
    app = page_blocks(assets)
    with app:
        ui = build_layout(ctl, settings, assets, secret=_state_secret(settings),
                          eval_report=load_eval_report(eval_path))
        wire(app, ui, Handlers(ctl, settings), ask=ask_endpoint(ctl, settings), concurrency=settings.ui_concurrency,
             reload_eval=lambda: load_eval_report(eval_path))
    app.queue(default_concurrency_limit=settings.ui_concurrency, max_size=max(16, settings.ui_concurrency * 8))
    app.rag_assistant = assistant
    app.rag_controller = ctl
    return app


def page_blocks(assets: PageAssets) -> gr.Blocks:
    """An empty gr.Blocks carrying the page's theme and CSS (kept as `rag_theme` and `rag_css` for `launch`)."""
    theme = gr.themes.Soft(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    )
    with warnings.catch_warnings():
        # Gradio 6 moved theme/css to launch(); passing them here too keeps them when a caller
        # launches the Blocks directly (tests do). `launch()` below passes them the new way.
        warnings.simplefilter("ignore", UserWarning)
        app = gr.Blocks(title="Paper RAG", analytics_enabled=False, theme=theme, css=assets.css)
    app.rag_theme, app.rag_css = theme, assets.css
    return app


def launch(settings, assistant=None, *, prevent_thread_lock: bool = False) -> gr.Blocks:
    """Serve the UI on settings.ui_host:ui_port (login if settings.ui_auth) and print the URL."""
    auth = login_from(settings)
    host = settings.ui_host
    if not is_loopback(host):
        warn = "" if auth else " WITHOUT authentication (set RAG_UI_AUTH=user:password)"
        print(f"warning: the UI listens on {host}, reachable from other machines{warn}", flush=True)
    app = build_app(settings, assistant)
    try:  # warm the embedder so the first question is not slow
        app.rag_assistant.search("warm up", 1)
    except Exception as exc:  # noqa: BLE001 - not fatal: the first question will report any real problem
        log.warning("warm-up search failed: %s", exc)
    try:
        trust = settings.ui_forwarded_allow_ips or ""
        with security.trusted_proxies(trust):
            app.launch(
                server_name=host, server_port=settings.ui_port, auth=auth,
                auth_message="Paper RAG: sign in with the user and password the server was started with." if auth else None,
                app_kwargs={"middleware": security.middleware(settings.ui_login_attempts, settings.ui_login_window)},
                prevent_thread_lock=True, share=False, quiet=True, show_error=False, ssr_mode=False, mcp_server=False,
                theme=app.rag_theme, css=app.rag_css,
            )
        # uvicorn's loggers print through handlers of their own (not the CLI's): redacted and escaped the same way
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(RedactingFilter(configured_secrets()))
        trusted = getattr(getattr(getattr(app, "server", None), "config", None), "forwarded_allow_ips", None)
        if trusted != trust:  # a Gradio that builds uvicorn's Config another way
            app.close()
            raise ConfigError(f"the UI server trusts X-Forwarded-For from {trusted!r}, not from "
                              f"{trust!r} as configured: this Gradio version starts uvicorn "
                              "differently; pin the Gradio version of pyproject.toml")
    except OSError:
        raise ConfigError(
            f"cannot serve the UI on {host}:{settings.ui_port}: the port is in use or the address is not available "
            "here; pick another port with --port (RAG_UI_PORT) or another address with --host (RAG_UI_HOST)"
        ) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"Paper RAG UI running at http://{shown}:{app.server_port}" + (" (login on)" if auth else ""), flush=True)
    if not prevent_thread_lock:
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
    return app
