"""Prompt files from `prompts/`, loaded once and checked for their placeholders."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from rag.errors import PromptError
from rag.settings import PROMPTS_DIR

# The one "not in the corpus" answer, shared by prompts, answer parsing, UI and tests.
NOT_IN_CORPUS = "The indexed papers do not answer this question."

REQUIRED = {
    "system": {"not_found_phrase"},
    "answer": {"question", "sources", "not_found_phrase"},
    "rewrite": {"history", "question"},
    "source": {"n", "title", "abstract"},
}


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    def render(self, **values) -> str:
        return self.text.format(**values)


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


def load_prompts(directory: Path | None = None, required: dict[str, set[str]] | None = None) -> dict[str, Prompt]:
    """Read every required prompt; a missing file or placeholder is a PromptError naming it."""
    directory = Path(directory or PROMPTS_DIR)
    required = required or REQUIRED
    prompts = {}
    for name, fields in required.items():
        path = directory / f"{name}.md"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            raise PromptError(f"prompt file {path} is missing: restore it from the repository") from None
        try:
            found = placeholders(text)
        except ValueError as exc:
            raise PromptError(f"prompt file {path} has a malformed placeholder ({exc}): use {{name}} and {{{{ }}}} for braces") from None
        missing = fields - found
        if missing:
            raise PromptError(
                f"prompt file {path} lacks placeholder(s) {', '.join('{' + m + '}' for m in sorted(missing))}"
            )
        unknown = found - fields
        if unknown:
            raise PromptError(
                f"prompt file {path} has unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))}"
            )
        prompts[name] = Prompt(name, text.strip() + "\n")
    return prompts
