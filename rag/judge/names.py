"""Named things in a question, and which indexed papers mention them.

A question that names something specific (a method, model or dataset name, an acronym, a quoted phrase, a
token with digits such as "QuantumFlux-7") is answered only from papers that mention it: a paper about a
neighbouring topic is not evidence about the named thing, however similar its vector. Mentions are checked
on the text, after the lexical index proposed candidates, so the check costs what the name matches, not the
corpus.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from rag.records import Paper
from rag.text import STOPWORDS, fold

# Capitalised words that open or fill questions without naming anything.
_COMMON = frozenset("""
how what which who whom why when where is are does do did can could should would will tell show list find
give explain describe compare summarise summarize please any the a an and or of in on for to with from by i
papers paper method methods model models approach dataset datasets
""".split())
# A quotation: an apostrophe inside a word ("can't", "model's") neither opens nor closes one.
_QUOTED = re.compile(r"(?<![A-Za-z0-9])[\"“”'‘’](?![\s])((?:[^\"“”'‘’]|(?<=[A-Za-z])['’](?=[A-Za-z])){3,80}?)"
                     r"(?<![\s])[\"“”'‘’](?![A-Za-z0-9])")
_TOKEN = re.compile(r"[A-Za-z0-9][\w.+/-]*[\w+]|[A-Za-z0-9]")
_HAS_DIGIT_AND_LETTER = re.compile(r"(?=.*\d)(?=.*[A-Za-z])")
_INNER_CAPITAL = re.compile(r"^[A-Za-z]*[a-z]-?[A-Z]")  # ImageNet, LoRA, QuantumFlux
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")  # typographic hyphens and dashes match "-"
_QUANTITY = re.compile(r"\d+(?:[.,]\d+)?(?:s|k|m|b|t|x|st|nd|rd|th|d|%)?(?:-[a-z]+)?", re.I)  # 70B, 4-bit, 1990s, 3rd
_ACRONYM = re.compile(r"^[A-Z][A-Z0-9-]*[A-Z0-9]s?$")  # MACE, RLHF, LLMs, GPT-4


# A name given as an example or a manner, not a subject: "word2vec-style embeddings", "Kolmogorov-Arnold
# style networks", "BERT-like encoders", "models such as GPT-4". Papers on the subject need not mention it.
_MANNER = r"(?:style|like|esque|inspired|type|alike)"
_EXAMPLE_AFTER = re.compile(rf"^(?:-|\s+){_MANNER}\b", re.I)  # "word2vec style", after the token
_EXAMPLE_SUFFIX = re.compile(rf"-{_MANNER}$", re.I)  # "word2vec-style", inside the token
_EXAMPLE_BEFORE = re.compile(r"\b(?:like|such as|e\.g\.,?|similar to|including|for example|for instance|resembling)\s*$",
                             re.I)


@dataclass(frozen=True)
class Name:
    """A specific thing a question names. `exact_case`: an all-capitals acronym ("SPEED", "MACE") must be
    found in capitals, since its lower-case form is an ordinary word. `example`: named as an example or a
    manner ("word2vec-style", "such as GPT-4"), or ordinary words in quotes ("a 'can't tell' label"), so papers
    on the question's subject need not mention it."""

    text: str
    exact_case: bool = False
    example: bool = False

    def pattern(self) -> re.Pattern:
        """Matches the name in a text (folded unless `exact_case`): separators (space, hyphen, none)
        interchangeable, a plural s allowed."""
        return _pattern(self.text, self.exact_case)

    def in_text(self, text: str) -> bool:
        text = _DASHES.sub("-", text)
        return bool(self.pattern().search(text if self.exact_case else fold(text)))


@lru_cache(maxsize=256)
def _pattern(text: str, exact_case: bool) -> re.Pattern:
    base = _DASHES.sub("-", text)
    if exact_case and base.endswith("s") and base[:-1].isupper():
        base = base[:-1]  # LLMs -> LLM
    if not exact_case:
        base = fold(base)
    parts = [re.escape(p) for p in re.split(r"[\s\-_/]+", base) if p]
    body = r"[\s\-_/]?".join(parts)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?:e?s)?(?![A-Za-z0-9])")


def named_things(question: str) -> list[Name]:
    """The specific names in a question, in order: quoted phrases, tokens mixing letters and digits, acronyms
    and words with an inner capital. Ordinary words, however capitalised, are not names."""
    found: list[Name] = []
    for m in _QUOTED.finditer(question):
        phrase = m.group(1).strip()
        if len(phrase.split()) <= 8:
            # ordinary lower-case words in quotes ("a third 'can't tell' label") paraphrase rather than name:
            # said when absent, never a reason to refuse
            found.append(Name(phrase, example=not re.search(r"[A-Z0-9]", phrase)))
    unquoted = _QUOTED.sub(lambda m: " " * len(m.group(0)), question)
    for m in _TOKEN.finditer(unquoted):
        token = m.group(0).strip(".-/")
        example = bool(_EXAMPLE_AFTER.match(unquoted[m.end():]) or _EXAMPLE_BEFORE.search(unquoted[:m.start()])
                       or _EXAMPLE_SUFFIX.search(token))
        if "-" in token and any(p in STOPWORDS for p in token.lower().split("-")[1:-1]):
            # a hyphenated phrase ("LLM-as-a-judge", "mixture-of-experts"): a concept, not a name; its own
            # names ("LLM") still count
            for part in token.split("-"):
                if _ACRONYM.match(part) and sum(c.isupper() for c in part) >= 2 and part.lower() not in _COMMON:
                    found.append(Name(part, exact_case=True, example=example))
            continue
        # "GPT-4-written", "SAE-based": the name without its lower-case suffix word
        token = re.sub(r"(?<=[A-Za-z0-9])-(?:[a-z]+)$", "", token) if re.search(r"[A-Z0-9]", token.split("-")[0]) else token
        if len(token) < 2 or _QUANTITY.fullmatch(token) or token.lower() in _COMMON or token.lower() in STOPWORDS:
            continue
        if _HAS_DIGIT_AND_LETTER.match(token):
            found.append(Name(token, exact_case=False, example=example))
        elif _ACRONYM.match(token) and sum(c.isupper() for c in token) >= 2:
            found.append(Name(token, exact_case=True, example=example))
        elif _INNER_CAPITAL.match(token) or sum(c.isupper() for c in token) >= 2:  # ImageNet, BERTolino
            found.append(Name(token, exact_case=False, example=example))
    seen, out = set(), []
    for name in found:
        key = name.text.casefold()
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def mentions(name: Name, paper: Paper) -> bool:
    return name.in_text(paper.title) or name.in_text(paper.abstract)


@dataclass(frozen=True)
class NameCheck:
    """For each name of a question, the ids of the papers that mention it (in candidate order)."""

    names: tuple[Name, ...]
    mentioned_by: tuple[tuple[str, ...], ...]

    @property
    def absent(self) -> list[str]:
        """Names no paper mentions (examples included: "QuantumFlux-style" still names QuantumFlux)."""
        return [n.text for n, ids in zip(self.names, self.mentioned_by) if not ids]

    @property
    def absent_subjects(self) -> list[str]:
        """Absent names the question is about (not given as an example or a manner)."""
        return [n.text for n, ids in zip(self.names, self.mentioned_by) if not ids and not n.example]

    def any_mention(self) -> list[str]:
        """Papers mentioning at least one name, first-name papers first."""
        return list(dict.fromkeys(pid for ids in self.mentioned_by for pid in ids))

    def to_dict(self) -> dict:
        return {"names": [n.text for n in self.names], "examples": [n.text for n in self.names if n.example],
                "absent": self.absent,
                "mentioned_by": {n.text: list(ids) for n, ids in zip(self.names, self.mentioned_by)}}


def check_names(names: Iterable[Name], candidates: Callable[[Name], Iterable[Paper]]) -> NameCheck:
    """Which candidate papers mention each name. `candidates(name)` proposes papers (e.g. the lexical index's
    best matches for the name's terms); each is then checked on its text."""
    names = tuple(names)
    mentioned = tuple(tuple(dict.fromkeys(p.paper_id for p in candidates(n) if mentions(n, p))) for n in names)
    return NameCheck(names, mentioned)


def absent_message(absent: list[str]) -> str:
    """What the answer says when a named thing is in no indexed paper."""
    quoted = [f"“{a}”" if " " in a else a for a in absent]
    if len(quoted) == 1:
        return f"No indexed paper mentions {quoted[0]}."
    return f"No indexed paper mentions {', '.join(quoted[:-1])} or {quoted[-1]}."
