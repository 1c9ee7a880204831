"""Conversation handling: which messages lean on earlier turns, how a follow-up becomes a standalone
search query, and trimming history to a token budget.

A message is a new question unless there is evidence that it leans on the conversation: a pronoun or
an elliptical opening ("which of them…", "and for images?", "what about…"). Length alone is never
evidence. (The Assistant adds a second test that needs retrieval: a message that retrieves weakly on
its own but strongly with the previous topic.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rag.errors import LLMError

# Always evidence of a follow-up: plural pronouns and phrases pointing at earlier papers.
_REFERS_BACK = re.compile(
    r"\b(them|they|those|these|their|theirs|the (?:first|second|third|last|former|latter|above|same|previous|other) "
    r"(?:one|ones|papers?|methods?|approach(?:es)?|models?)|the (?:former|latter)|such (?:papers?|methods?|models?)|"
    r"the papers|these papers?|those papers?|this paper|that paper|this method|that method|this approach|"
    r"that approach|this work|that work|which of|which one|any of)\b",
    re.I,
)
# Evidence only in a short message ("is it open source?"): in a long one "its" usually has its own antecedent.
_WEAK_REFERENCE = re.compile(r"\b(it|its|this)\b", re.I)
WEAK_REFERENCE_MAX_WORDS = 6
_ELLIPTICAL = re.compile(
    r"^\s*(and|but|what about|how about|also|which of|which one|any of|only|same|else|more|"
    r"what else|anything else|compared to|versus|vs\.?|in contrast|how so|why|why not|how)\b[^?]*\??\s*$",
    re.I,
)
_SHORT_ELLIPTICAL = re.compile(r"^\s*(and|what about|how about|also|or|but)\b", re.I)

REGARDING = "(regarding: {topic})"


def leans_on_context(message: str) -> bool:
    """True when the message refers back (pronouns, "the same", "which of…") or opens elliptically."""
    if _REFERS_BACK.search(message):
        return True
    if _WEAK_REFERENCE.search(message) and len(message.split()) <= WEAK_REFERENCE_MAX_WORDS:
        return True
    if _SHORT_ELLIPTICAL.search(message):
        return True
    # "why?" / "how?" alone only make sense against a previous answer
    return bool(_ELLIPTICAL.match(message)) and len(message.split()) <= 3


def user_messages(history: Sequence[dict]) -> list[str]:
    return [m["content"] for m in history if m.get("role") == "user" and isinstance(m.get("content"), str)]


def with_topic(message: str, topic: str) -> str:
    """The rule's standalone query: the message, then the topic it leans on."""
    return f"{message} {REGARDING.format(topic=topic)}"


def conversation_topic(history: Sequence[dict]) -> str | None:
    """The standalone topic of the conversation so far: the last user message that stood on its own,
    carried through any follow-ups after it (so a third-turn follow-up keeps the first topic)."""
    previous = user_messages(history)
    if not previous:
        return None
    topic = previous[0]
    for earlier in previous[1:]:
        topic = with_topic(earlier, _root(topic)) if leans_on_context(earlier) else earlier
    return topic


def _root(topic: str) -> str:
    """The standalone question at the root of a rewritten topic."""
    marker = topic.rfind(" (regarding: ")
    return topic[marker + len(" (regarding: ") : -1] if marker >= 0 and topic.endswith(")") else topic


def rule_rewrite(message: str, history: Sequence[dict], force: bool = False) -> str:
    """The standalone query by rule: the message with the conversation's topic if it leans on it
    (or, with `force`, whenever there is a topic)."""
    topic = conversation_topic(history)
    if topic is None or not (force or leans_on_context(message)):
        return message
    return with_topic(message, _root(topic))


def llm_rewrite(complete: Callable[[list[dict]], str], prompt, message: str, history: Sequence[dict],
                max_chars: int) -> str | None:
    """The LLM's standalone rewrite of a follow-up (prompts/rewrite.md), or None when it gives nothing.

    Raises LLMError when the call fails, so the caller can fall back to the rule and skip the LLM later.
    """
    convo = "\n".join(f"{m['role']}: {m['content']}" for m in history)
    reply = complete([{"role": "user", "content": prompt.render(history=convo, question=message)}])
    text = " ".join((reply or "").split())
    return text[:max_chars] or None


def trim_history(history: Sequence[dict], budget_tokens: int, count_tokens: Callable[[str], int]) -> list[dict]:
    """The most recent user/assistant messages that fit in `budget_tokens` (4 tokens overhead each)."""
    kept, used = [], 0
    for msg in reversed(history):
        if msg.get("role") not in ("user", "assistant") or not isinstance(msg.get("content"), str):
            continue
        cost = count_tokens(msg["content"]) + 4
        if used + cost > budget_tokens:
            break
        kept.append({"role": msg["role"], "content": msg["content"]})
        used += cost
    return list(reversed(kept))


__all__ = [
    "LLMError",
    "conversation_topic",
    "leans_on_context",
    "llm_rewrite",
    "rule_rewrite",
    "trim_history",
    "with_topic",
]
