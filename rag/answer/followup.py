"""Follow-ups that refer to the previous answer: "which of them …", "the second one", "papers like [2]".

The referent is structure, not text: the previous `Answer` holds its papers in order (cited first, then the
other papers it showed; `Answer.papers()`). A pattern only recognises that a message refers to them and how
(the whole set, one item, or papers similar to one item); what is answered then comes from those papers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rag.errors import QuestionError

SET, ITEM, SIMILAR = "set", "item", "similar"

_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
             "eighth": 8, "ninth": 9, "tenth": 10, "last": -1, "final": -1}
_ORDINAL_WORD = r"(?P<word>first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|final|(?P<num>\d{1,3})(?:st|nd|rd|th))"
_NOUN = r"(?:one|paper|result|item|entry|article|work|study|source|reference|hit|answer)s?"
_ITEM_PATTERNS = [
    re.compile(rf"\b(?:the\s+)?{_ORDINAL_WORD}\s+{_NOUN}\b", re.I),              # the second one, the 3rd paper
    re.compile(r"\[(?P<idx>\d{1,3})\]"),                                          # [2]
    re.compile(r"(?<![\w&])#\s?(?P<idx>\d{1,3})\b"),                              # #2
    re.compile(r"\b(?:paper|number|no\.|item|result|source|reference)\s*(?P<idx>\d{1,3})\b", re.I),  # paper 2
]
_SIMILAR = re.compile(r"\b(?:similar\s+to|like|related\s+to|resembling|close\s+to)\s*$", re.I)
_SET_PATTERNS = [
    re.compile(r"\b(?:of|among|from|between|in|within)\s+(?:them|these|those|the\s+above|the\s+ones\s+above|"
               r"(?:these|those|the\s+(?:above|listed|previous))\s+(?:papers?|ones|works|results|methods|approaches))\b", re.I),
    re.compile(r"\b(?:these|those)\s+(?:papers?|ones|works|results|methods|approaches|studies)\b", re.I),
    re.compile(r"\bthe\s+(?:ones|papers)\s+(?:above|you\s+(?:listed|mentioned|found|cited))\b", re.I),
    re.compile(r"^\s*(?:which|what|how\s+many|how|why|do|does|did|are|were|can|could)\s+(?:of\s+)?"
               r"(?:(?:do|does|did|are|were|can)\s+)?(?:them|these|those|they)\b", re.I),  # how do they …
    re.compile(r"^\s*which\s+ones\b", re.I),
    re.compile(r"\b(?:compare|rank|summari[sz]e|contrast)\s+(?:them|these|those)\b", re.I),
]


@dataclass(frozen=True)
class Reference:
    """How a message refers to the previous answer's papers.

    kind: SET (all of them), ITEM (one, by position) or SIMILAR (papers like one item); position: 1-based,
    -1 for the last (ITEM and SIMILAR); phrase: the words that referred; rest: the message without them
    (what is asked about the referent)."""

    kind: str
    phrase: str
    rest: str
    position: int | None = None
    weak: bool = False  # "[2]", "#2", "paper 2": a reference only when there is an answer to refer to


def find_reference(message: str) -> Reference | None:
    """The reference a message makes to a previous answer, or None when it stands alone."""
    for pattern in _ITEM_PATTERNS:
        m = pattern.search(message)
        if m is None:
            continue
        groups = m.groupdict()
        if groups.get("idx"):
            position = int(groups["idx"])
        elif groups.get("num"):
            position = int(groups["num"])
        else:
            position = _ORDINALS[groups["word"].lower()]
        if position == 0:
            continue
        before = message[: m.start()]
        kind = SIMILAR if _SIMILAR.search(before) else ITEM
        rest = _squash(before[: _SIMILAR.search(before).start()] if kind == SIMILAR else before) + " " + \
            _squash(message[m.end():])
        return Reference(kind, m.group(0).strip(), _squash(rest), position, weak=pattern is not _ITEM_PATTERNS[0])
    for pattern in _SET_PATTERNS:
        m = pattern.search(message)
        if m is not None:
            phrase = m.group(0).strip()
            if pattern in (_SET_PATTERNS[3], _SET_PATTERNS[4]):  # keep the question words, drop the pronoun
                pron = re.search(r"\b(?:them|these|those|they|ones)\b", phrase, re.I)
                start = m.start() + pron.start()
                end = m.start() + pron.end()
                return Reference(SET, pron.group(0), _squash(message[:start] + " " + message[end:]))
            return Reference(SET, phrase, _squash(message[: m.start()] + " " + message[m.end():]))
    return None


def _squash(text: str) -> str:
    text = re.sub(r"\s+([?.!,;:])", r"\1", " ".join(text.split()))
    return text.strip(" ,;:")


@dataclass(frozen=True)
class Referent:
    """What a reference resolved to: the papers (ids in the previous answer's order) and how to say so."""

    reference: Reference
    paper_ids: tuple[str, ...]
    of_total: int  # papers the previous answer held

    @property
    def kind(self) -> str:
        return self.reference.kind

    def lead(self) -> str:
        """The sentence that opens an answer over the referent."""
        if self.kind == SET:
            n = self.of_total
            return f"Among the {n} paper{'s' if n != 1 else ''} of the previous answer:"
        position = self.reference.position
        which = "last" if position == -1 else _ordinal(position)
        if self.kind == SIMILAR:
            return f"Papers similar to the {which} paper of the previous answer:"
        return f"About the {which} paper of the previous answer:"


def resolve(message: str, previous_papers: list[str] | None) -> Referent | None:
    """The papers a follow-up refers to, or None when it refers to nothing. Raises QuestionError when it
    refers to an answer that is not there ("the second one" with no previous answer, or a 5th of 3)."""
    reference = find_reference(message)
    if reference is None:
        return None
    papers = list(dict.fromkeys(previous_papers or []))
    if not papers and reference.weak:
        return None  # "cite [12]" in a first question is text, not a reference
    if not papers:
        raise QuestionError(f"“{reference.phrase}” refers to a previous answer, but there is none with papers "
                            "in this conversation: ask a question that names the topic")
    if reference.kind == SET:
        return Referent(reference, tuple(papers), len(papers))
    position = reference.position
    index = len(papers) - 1 if position == -1 else position - 1
    if not 0 <= index < len(papers):
        raise QuestionError(f"the previous answer has {len(papers)} paper{'s' if len(papers) != 1 else ''}: "
                            f"there is no {_ordinal(position)} one")
    return Referent(reference, (papers[index],), len(papers))


def _ordinal(n: int) -> str:
    words = {v: k for k, v in _ORDINALS.items() if v > 0}
    if n in words:
        return words[n]
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
