"""The page's CSS and browser JS: plain files beside this module (shipped as package data), read when an
app is built, so editors and linters see real CSS and JS, and importing the UI reads nothing."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rag.errors import AssetError

CSS_FILE = "app.css"
SHARED_JS_FILE = "shared.js"
CONVERSATION_JS_FILE = "conversation.js"
FILES = (CSS_FILE, SHARED_JS_FILE, CONVERSATION_JS_FILE)


@dataclass(frozen=True)
class PageAssets:
    """What the page adds to Gradio: its stylesheet and the `js_on_load` code of its HTML components."""

    css: str
    shared_js: str  # on every component that shows citations or rag buttons (sources, paper view)
    conversation_js: str  # the shared code, then the conversation's own (autoscroll, empty-question gate)


def load_assets(root: Path | None = None) -> PageAssets:
    """Read the page's files from `root` (default: this package); a missing file is an AssetError naming it."""
    text = {name: _read(root, name) for name in FILES}
    shared = text[SHARED_JS_FILE]
    return PageAssets(css=text[CSS_FILE], shared_js=shared, conversation_js=shared + "\n" + text[CONVERSATION_JS_FILE])


def _read(root: Path | None, name: str) -> str:
    base = resources.files(__name__) if root is None else Path(root)
    where = f"rag/apps/ui/assets/{name}" if root is None else str(base / name)
    try:
        return base.joinpath(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fix = "reinstall paper-rag" if root is None else "restore it"
        raise AssetError(f"UI asset {where} is missing or unreadable ({exc.__class__.__name__}): {fix}") from None
