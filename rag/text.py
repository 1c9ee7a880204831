"""Text primitives shared by lexical search, answers and evaluation: one stopword list, one stemmer,
one sentence splitter, and terminal-safe output.

Everything that decides "which words count" lives here (`content_terms`), so BM25, abstention coverage,
extractive sentence scoring and the eval metrics use the same terms.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# General English function words plus the filler of questions about papers ("which papers propose ...").
# BM25 uses the same list (rag.index.lexical).
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just let me more most my
    myself neither no nor not now of off on once only or other our ours ourselves out over own per same she
    should so some such than that the their theirs them themselves then there these they this those through to
    too under until up upon us very via was we were what when where which while who whom whose why will with
    within without would yet you your yours yourself yourselves may might shall one ones many much
    paper papers work works study studies method methods approach approaches propose proposes proposed
    present presents presented show shows shown use uses used using based new novel find list give tell
    """.split()
)

# The one tokenizer: BM25's documents and queries (rag.index.lexical), abstention's term coverage, extractive
# sentence scoring and the eval metrics all use `content_terms`. Accents are folded ("naïve" = "naive") and words
# split at hyphens ("text-to-image" -> text, imag: it matches "text to image" and "text-to-image" alike).
TERMS_VERSION = 2  # recorded in the index: a change of `content_terms` rebuilds the lexical index and term statistics
_TERM = re.compile(r"[^\W_]{2,}")  # letters and digits, two or more


@lru_cache(maxsize=1)
def _stem_word():
    import Stemmer

    return Stemmer.Stemmer("english").stemWord


def stemmer():
    """The Snowball English stemmer (PyStemmer), as a word -> stem function."""
    return _stem_word()


def fold(text: str) -> str:
    """Lower-cased, accents removed (NFKD without combining marks): the form terms are taken from."""
    if text.isascii():  # most abstracts: no accents to remove (the loop below costs ~0.1 ms per abstract)
        return text.casefold()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def content_terms(text: str) -> list[str]:
    """Stemmed content terms of `text`: folded words without stopwords and question filler."""
    stem = _stem_word()
    return [stem(w) for w in _TERM.findall(fold(text)) if w not in STOPWORDS]


def term_document(text: str) -> str:
    """What the lexical index stores for a chunk: its terms, space-separated."""
    return " ".join(content_terms(text))


def matched_terms(query_terms: set[str], text_terms: set[str]) -> set[str]:
    """Query terms present in the text, exactly or as a stem prefix of at least 4 letters
    (the Snowball stems of "erase" and "erasure" are "eras" and "erasur")."""
    found = query_terms & text_terms
    for q in query_terms - found:
        if len(q) >= 4 and any(t.startswith(q) for t in text_terms):
            found.add(q)
    return found


# Abbreviations that end with a period but do not end a sentence.
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|Fig|Eq|approx|resp|w\.r\.t|a\.k\.a)\.|\b[A-Z]\.)$")
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of `text`; `text[start:end]` is each sentence verbatim."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        candidate = text[start : match.start()].rstrip()
        if _ABBREV.search(candidate):
            continue
        if candidate.strip():
            spans.append(_strip_span(text, start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append(_strip_span(text, start, len(text)))
    return spans


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_sentences(text: str) -> list[str]:
    """Sentences as verbatim substrings of `text` (extractive quotes must be exact)."""
    return [text[s:e] for s, e in sentence_spans(text)]


_QUESTION_START = re.compile(
    r"^\s*(what|which|how|who|whom|why|when|where|is|are|does|do|did|can|could|has|have|list|find|show|give|tell)\b",
    re.I,
)


KEYWORD_MAX_WORDS = 7  # "sparse autoencoders interpretability": a search-box query, every word a constraint


def is_keyword_query(text: str, max_words: int = KEYWORD_MAX_WORDS) -> bool:
    """A search-box style query ("concept erasure diffusion"): at most `max_words` words, no question mark,
    not opening like a question."""
    return "?" not in text and len(text.split()) <= max_words and not _QUESTION_START.match(text)


# C0/C1 controls (except tab and newline), DEL, and the Unicode bidi overrides and isolates that can
# make text display differently from what it is ("Trojan Source").
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def terminal_safe(text: str) -> str:
    """`text` with ANSI escape sequences, control characters and bidi overrides removed (for printing)."""
    return _UNSAFE.sub("", _ANSI.sub("", text))


def escape_controls(text: str) -> str:
    """`text` with escape sequences, control characters (C0 but tab and newline, DEL, C1) and bidi overrides shown
    as escapes (`\\x1b`, `\\u202e`): for log lines and files read in a terminal, where the text itself must stay
    visible but must not act."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def strip_bidi(text: str) -> str:
    """`text` without bidi override/isolate characters (for HTML, which escapes the rest)."""
    return re.sub(r"[\u202a-\u202e\u2066-\u2069]", "", text)


def normalise_for_match(text: str) -> str:
    """NFKC, case-folded, punctuation to spaces: for comparing facts and quotes loosely."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w%]", " ", text.replace("_", " ")).replace("%", " % ")
    return " ".join(text.split())
