"""The relevance oracle: an in-process LLM that plays a perfect judge for a dataset with known answers.

`rag eval --answer llm --oracle-llm` and `rag bench --parts evidence` answer with it. It judges a paper
relevant (9/10, quoting the abstract's first sentence) exactly when the paper is in the question's gold
list, answers by citing every source it is given, rewrites follow-ups to themselves and grades every
claim supported. It measures the plumbing around an LLM (pool, parsing, cut, abstention, lists, cost
accounting), not an LLM. It reads the prompts of prompts/ by their fixed wording, so a reworded prompt
shows up as failing oracle tests, not as silently wrong figures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.clients.chat import Messages, Usage

_EVIDENCE = re.compile(r"Question: (?P<question>.*?)\n\nPaper: (?P<title>.*?)\nAbstract:\n(?P<abstract>.*?)\n\nReply", re.S)
_SOURCE = re.compile(r"^\[(?P<n>\d+)\] (?P<title>.+)$", re.M)
_CLAIM_SOURCES = re.compile(r"^\[(\d+)\]", re.M)
_PIECE = re.compile(r"\s*\S+|\s+")
_NO_ANSWER = "The indexed papers do not answer this question."


class RelevanceOracle:
    """A ChatModel (rag.clients.chat) that replies like a perfect judge of `gold` (question -> gold titles).

    No network, no token usage reported (callers count tokens themselves, as for a server that reports none)."""

    name = "relevance oracle"

    def __init__(self, gold: Mapping[str, Sequence[str]]):
        self._gold = {_norm(q): {_norm(t) for t in titles} for q, titles in gold.items()}

    def reply(self, messages: Messages) -> str:
        """What a perfect judge replies to the last message (an evidence, answer, judge, HyDE or rewrite prompt)."""
        content = (messages[-1].get("content") or "") if messages else ""
        evidence = _EVIDENCE.search(content)
        if evidence:
            relevant = _norm(evidence["title"]) in self._gold.get(_norm(evidence["question"]), set())
            first = re.split(r"(?<=[.!?])\s+", evidence["abstract"].strip(), maxsplit=1)[0]
            return json.dumps({"relevance": 9 if relevant else 1, "quotes": [first] if relevant else [],
                               "summary": f"{evidence['title']} addresses the question." if relevant else ""})
        if content.startswith("You are grading an answer"):
            return json.dumps({"faithfulness": 1.0, "answer_relevance": 1.0, "reason": "relevance oracle"})
        if "Sentence:" in content and "Cited sources" in content:
            return json.dumps({"supported": True, "needed": [int(n) for n in _CLAIM_SOURCES.findall(content)]})
        if content.startswith("Write the abstract"):
            return content.rsplit("Question:", 1)[-1].strip()
        if "Standalone question:" in content:
            return content.rsplit("Last message:", 1)[-1].split("\n", 1)[0].strip()
        sources = [(m["n"], m["title"]) for m in _SOURCE.finditer(content.split("Question:")[0])]
        if not sources:
            return _NO_ANSWER
        return "\n".join(f"- **{title}** answers this [{n}]." for n, title in sources)

    def complete(self, messages: Messages, deadline: float | None = None, on_usage: Usage | None = None) -> str:
        return self.reply(messages)

    def stream(self, messages: Messages, deadline: float | None = None, on_usage: Usage | None = None) -> Iterator[str]:
        """The reply word by word, as a server streams it (the answerer's stream handling runs as with a real LLM)."""
        yield from _PIECE.findall(self.reply(messages))


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())
