"""Reasoning blocks in LLM replies: the one grammar for `<think>…</think>` (and `<thinking>`, any case).

Reasoning models (DeepSeek-R1, Qwen3, their distills behind llama.cpp or Ollama) put their chain of thought
in the reply's text. It is not part of the answer: it is removed from every reply (answers, evidence JSON,
rewrites) before anything reads it. An unclosed block hides the rest of the reply (a stream cut while the
model was still thinking has no answer yet); a closing tag without an opening one (chat templates that open
the block in the prompt) hides what came before it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_OPEN = re.compile(r"<(think|thinking)>", re.I)
_CLOSE = re.compile(r"</(think|thinking)>", re.I)
_LONGEST_TAG = len("</thinking>")


def strip_reasoning(text: str) -> str:
    """`text` without its reasoning blocks (see the module docstring)."""
    if "<" not in text:
        return text
    lone = _CLOSE.search(text)
    if lone and not _OPEN.search(text, 0, lone.start()):
        text = text[lone.end():]
    return "".join(filter_reasoning([text]))


def filter_reasoning(pieces: Iterable[str]) -> Iterator[str]:
    """`strip_reasoning` over a reply arriving in pieces (a stream): tags split across pieces included. Text is
    held back only while its end could be the start of a tag, so an answer streams as it comes."""
    held, inside, started = "", False, False
    for piece in pieces:
        held += piece
        out = []
        while held:
            if inside:
                close = _CLOSE.search(held)
                if close is None:
                    held = held[-(_LONGEST_TAG - 1):]  # what is thought is dropped; a tag's start is kept
                    break
                held, inside = held[close.end():].lstrip(), False
                continue
            opening = _OPEN.search(held)
            if opening is not None:
                out.append(held[: opening.start()])
                held, inside = held[opening.end():], True
                continue
            keep = _partial_tag(held)
            out.append(held[: len(held) - keep])
            held = held[len(held) - keep:]
            break
        text = "".join(out)
        if not started:  # the blank lines a model leaves before or after its thoughts are not the answer
            text = text.lstrip()
            started = bool(text)
        if text:
            yield text
    if held and not inside:
        yield held.lstrip() if not started else held


def _partial_tag(text: str) -> int:
    """How many characters at the end of `text` could begin a reasoning tag."""
    start = text.rfind("<", max(0, len(text) - _LONGEST_TAG + 1))
    if start < 0:
        return 0
    tail = text[start:].lower()
    return len(tail) if any(tag.startswith(tail) for tag in ("<think>", "<thinking>", "</think>", "</thinking>")) else 0
