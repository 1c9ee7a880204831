"""Comparisons ("How do X and Y differ", "X vs Y", "compare X, Y and Z") and two-part questions ("which dataset
does X use, and which model does Y build on?"): the parts a complete answer must cover, in the question's order.

Each part is then answered on its own (one quoted part per item or sub-question, citing the paper that names
it), so an answer cannot cover one side and skip the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMPARISON, MULTIPART = "comparison", "multipart"

_SEP = r"\s*(?:,\s*(?:and|or)\s+|,\s*|\s+and\s+|\s+or\s+|\s+vs\.?\s+|\s+versus\s+|\s+with\s+|\s+from\s+|\s+to\s+)\s*"
_STOP = r"(?=\s*(?:[:?.;]|$|\s+(?:for|in|on|when|as|at|to\s+\w+|differ\w*|compare\w*|each|both|respectively)\b))"
_FORMS = [
    # compare A, B and C (for …)
    re.compile(r"\bcompare\s+(?P<items>.+?)" + _STOP, re.I),
    # how do A and B differ / each …; how does A differ from B / compare with B
    re.compile(r"\bhow\s+(?:do|does|did)\s+(?P<items>.+?)\s+(?:differ|compare|each|both|contrast)\b"
               r"(?:\s+(?:from|with|to)\s+(?P<more>.+?)" + _STOP + ")?", re.I),
    # difference(s) between A and B
    re.compile(r"\bdifferences?\s+between\s+(?P<items>.+?)" + _STOP, re.I),
    # A vs B (: …), A or B: …
    re.compile(r"^\s*(?P<items>[^:?]+?\s+(?:vs\.?|versus)\s+[^:?]+?)\s*(?:[:?.]|$|\s+(?:for|in|on)\s)", re.I),
    re.compile(r"^\s*(?P<items>[^:?\s]+(?:\s+[^:?\s]+)?\s+or\s+[^:?\s]+(?:\s+[^:?\s]+)?)\s*:", re.I),
]
_MULTIPART = re.compile(r",?\s+and\s+(?=(?:which|what|how|who|where|when|why|does|do|is|are)\b)", re.I)
_LEAD = re.compile(r"^(?:the|a|an)\s+", re.I)


@dataclass(frozen=True)
class Parts:
    """What a complete answer covers: the compared items (names) or the sub-questions, in order."""

    kind: str
    items: tuple[str, ...]


def _items(text: str) -> list[str]:
    out = []
    for piece in re.split(_SEP, text.strip(), flags=re.I):
        piece = _LEAD.sub("", piece.strip(" ,.;:?"))
        if piece and len(piece.split()) <= 5:
            out.append(piece)
    return out


def split_question(question: str) -> Parts | None:
    """The parts of a comparison or two-part question, or None for a question with one part."""
    for form in _FORMS:
        m = form.search(question)
        if m is None:
            continue
        items = _items(m.group("items"))
        if m.groupdict().get("more"):
            items += _items(m.group("more"))
        items = list(dict.fromkeys(items))
        if len(items) >= 2:
            return Parts(COMPARISON, tuple(items))
    pieces = [p.strip(" ,") for p in _MULTIPART.split(question) if p.strip(" ,")]
    if len(pieces) >= 2 and all(len(p.split()) >= 3 for p in pieces):
        subject = pieces[0]
        parts = [subject if subject.endswith("?") else subject + "?"]
        parts += [p[0].upper() + p[1:] if not p.endswith("?") else p[0].upper() + p[1:] for p in pieces[1:]]
        parts = [p if p.endswith("?") else p + "?" for p in parts]
        return Parts(MULTIPART, tuple(parts))
    return None
