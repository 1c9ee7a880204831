"""Prompt files (`prompts/*.md`, shipped inside the package as `rag/_prompts`), checked for their
placeholders when loaded, and the one place where prompts are assembled into messages."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rag.errors import PromptError

# The one "not in the corpus" answer, shared by prompts, answer parsing, UI and tests.
NOT_IN_CORPUS = "The indexed papers do not answer this question."

REQUIRED = {
    "system": {"not_found_phrase"},
    "answer": {"question", "sources", "not_found_phrase"},
    "rewrite": {"history", "question"},
    "source": {"n", "title", "abstract"},
    "judge": {"question", "answer", "sources"},
    "evidence": {"question", "title", "abstract"},
    "evidence_source": {"n", "title", "relevance", "summary", "quotes"},
    "judge_claims": {"claim", "sources"},
    "hyde": {"question"},
}


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    def render(self, **values) -> str:
        return self.text.format(**values)


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


def _read(name: str, directory: Path | None) -> tuple[str, str]:
    """(text, where) of prompt `name`: from `directory` if given, else from the installed package."""
    if directory is not None:
        path = Path(directory) / f"{name}.md"
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError:
            raise PromptError(f"prompt file {path} is missing: restore it from the repository") from None
    res = resources.files("rag").joinpath("_prompts", f"{name}.md")
    try:
        return res.read_text(encoding="utf-8"), f"prompts/{name}.md"
    except (OSError, FileNotFoundError):
        raise PromptError(f"prompt file prompts/{name}.md is missing from the installation: reinstall paper-rag") from None


def load_prompts(directory: Path | None = None, required: Mapping[str, set[str]] | None = None) -> dict[str, Prompt]:
    """Read every required prompt; a missing file or placeholder is a PromptError naming it."""
    required = REQUIRED if required is None else required
    prompts = {}
    for name, fields in required.items():
        text, where = _read(name, directory)
        try:
            found = placeholders(text)
        except ValueError as exc:
            raise PromptError(f"prompt file {where} has a malformed placeholder ({exc}): use {{name}} and {{{{ }}}} for braces") from None
        missing = set(fields) - found
        if missing:
            raise PromptError(f"prompt file {where} lacks placeholder(s) {', '.join('{' + m + '}' for m in sorted(missing))}")
        unknown = found - set(fields)
        if unknown:
            raise PromptError(f"prompt file {where} has unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))}")
        prompts[name] = Prompt(name, text.strip() + "\n")
    return prompts


def source_blocks(prompts: Mapping[str, Prompt], sources: Iterable) -> str:
    """The numbered sources as the prompts show them (prompts/source.md per source)."""
    fmt = prompts["source"]
    return "\n".join(fmt.render(n=s.n, title=s.title, abstract=s.abstract or s.snippet) for s in sources)


def answer_messages(prompts: Mapping[str, Prompt], question: str, sources: Iterable, history: list[dict] | None = None,
                    evidence: Iterable | None = None) -> list[dict]:
    """The chat messages that ask the LLM to answer `question` from `sources` (or, after the evidence
    step, from the judged papers' summaries and quotes)."""
    system = prompts["system"].render(not_found_phrase=NOT_IN_CORPUS)
    blocks = evidence_blocks(prompts, evidence) if evidence is not None else source_blocks(prompts, sources)
    user = prompts["answer"].render(question=question, sources=blocks, not_found_phrase=NOT_IN_CORPUS)
    return [{"role": "system", "content": system}, *(history or []), {"role": "user", "content": user}]


def evidence_blocks(prompts: Mapping[str, Prompt], judged: Iterable) -> str:
    """The sources as the evidence step left them: summary and verbatim quotes, not whole abstracts."""
    fmt = prompts["evidence_source"]
    return "\n\n".join(
        fmt.render(n=j.n, title=j.title, relevance=j.relevance, summary=j.summary or "(no summary)",
                   quotes="\n".join(f"> {q}" for q in j.quotes) or "> (no quote)")
        for j in judged
    )


def evidence_message(prompts: Mapping[str, Prompt], question: str, title: str, abstract: str) -> list[dict]:
    """The message asking the LLM to judge one paper for a question (prompts/evidence.md)."""
    return [{"role": "user", "content": prompts["evidence"].render(question=question, title=title, abstract=abstract)}]


def judge_message(prompts: Mapping[str, Prompt], question: str, answer: str, sources: Iterable) -> list[dict]:
    """The message asking a judge LLM to grade `answer` against `sources` (prompts/judge.md)."""
    text = prompts["judge"].render(question=question, answer=answer, sources=source_blocks(prompts, sources))
    return [{"role": "user", "content": text}]
