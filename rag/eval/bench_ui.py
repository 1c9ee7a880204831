"""The UI's speed as a user sees it: seconds from Send to the first answer text and to the finished
answer (sources shown), in headless Chromium against the real app over the index in RAG_DATA_DIR.

    rag bench --parts ui [--ui-repeats 5]

Warm: the app is started and one question answered before timing. Needs Playwright and a Chromium
(Debian's /usr/bin/chromium, or PLAYWRIGHT_CHROMIUM); the part is skipped with a message otherwise.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

QUESTIONS = [
    "which papers erase concepts in diffusion models?",
    "sparse autoencoders for interpretability",
    "How can large language models be made to reason step by step?",
    "machine unlearning benchmarks",
    "memorization in diffusion models",
]

# Installed in the page before a question is sent (also used by tests/test_ui.py):
# first = the newest answer shows text (streamed or final); final = one more finished turn, nothing running
TIMER_JS = """() => {
  const t = {start: null, first: null, final: null};
  window.__t = t;
  const conv = () => document.querySelector('#rag-conv .rag-conv');
  const turns0 = conv() ? Number(conv().dataset.turns) : 0;
  const start = () => { if (t.start === null) t.start = performance.now(); };
  document.addEventListener('click', (e) => { if (e.target.closest && e.target.closest('#rag-send')) start(); }, {capture: true});
  document.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.target.closest && e.target.closest('#rag-question')) start(); }, {capture: true});
  const check = () => {
    const c = conv();
    if (t.start === null || !c) return;
    const articles = c.querySelectorAll('article.rag-turn');
    const last = articles.length > turns0 ? articles[articles.length - 1] : null;
    const text = last && last.querySelector('.rag-answer');
    if (t.first === null && text && /\\w/.test(text.innerText)) t.first = performance.now();
    if (t.final === null && Number(c.dataset.turns) > turns0 && c.dataset.busy === '0') {
      if (t.first === null) t.first = performance.now();
      t.final = performance.now();
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def _chromium() -> str | None:
    for path in (os.environ.get("PLAYWRIGHT_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if path and Path(path).exists():
            return path
    return None


def bench_ui(out: Path, repeats: int = 5) -> dict | None:
    from rag.eval.timing import free_port, percentile, print_table, save_json
    from rag.settings import load_settings

    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("\n## ui\n  skipped: needs Playwright and Chromium (make browser)")
        return None
    from rag.apps.ui.app import build_app

    settings = load_settings()
    app = build_app(settings)
    app.rag_assistant.ask(QUESTIONS[0])  # warm the embedder and caches
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")  # never networkidle
            page.wait_for_selector("#rag-question textarea")
            for i in range(repeats):
                question = QUESTIONS[i % len(QUESTIONS)]
                page.click("#rag-new")
                page.wait_for_selector("#rag-conv .rag-conv[data-turns='0']")
                page.wait_for_selector("#rag-send", state="visible")
                page.evaluate(TIMER_JS)
                page.fill("#rag-question textarea", question)
                page.click("#rag-send")
                page.wait_for_function("window.__t.final !== null")
                t = page.evaluate("window.__t")
                rows.append({"question": question, "first_text_s": round((t["first"] - t["start"]) / 1000, 3),
                             "final_s": round((t["final"] - t["start"]) / 1000, 3)})
            browser.close()
    finally:
        app.close()
    first = [r["first_text_s"] for r in rows]
    final = [r["final_s"] for r in rows]
    data = {
        "answers": "llm" if app.rag_assistant.has_llm else "extractive",
        "repeats": repeats,
        "first_text_s_p50": round(statistics.median(first), 3), "first_text_s_max": max(first),
        "final_s_p50": round(statistics.median(final), 3), "final_s_p95": percentile(final, 95),
        "runs": rows,
    }
    print_table("ui (warm, headless Chromium, Send → first answer text / finished answer)",
           [{k: v for k, v in data.items() if k != "runs"}])
    save_json(out, "ui", data)
    return data
