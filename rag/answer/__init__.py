"""Stage 5: a verified, cited `Answer`: the assistant's orchestration (`assistant`), extractive quoting
(`extractive`), the citation grammar (`citations`) and conversation state (`conversation`).

`from rag.answer import Assistant` is the documented Python API; it is resolved on first use, so importing a
sibling module (say `rag.answer.citations`) does not load the whole assistant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.answer.assistant import Assistant, check_question, is_list_question

__all__ = ["Assistant", "check_question", "is_list_question"]


def __getattr__(name: str):
    if name in __all__:
        from rag.answer import assistant

        return getattr(assistant, name)
    raise AttributeError(f"module 'rag.answer' has no attribute {name!r}")
