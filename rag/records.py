"""Typed records that move between pipeline stages: Paper → Chunk → Hit/Retrieval → Source → Answer."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Paper:
    """One unique paper, identified by its JSONL `id` when it has one, else by its normalised title (rag.corpus.parse)."""

    paper_id: str
    title: str
    abstract: str
    sources: tuple[str, ...] = ()
    code_urls: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    date: str | None = None
    url: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def content_hash(self) -> str:
        """sha1 of title and abstract: what the index, the sentence vectors and the evidence cache are keyed by
        (changing it re-embeds and re-judges everything)."""
        return hashlib.sha1(f"{self.title}\n{self.abstract}".encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict) -> "Paper":
        tup = ("sources", "code_urls", "authors", "categories")
        return cls(**{k: (tuple(v) if k in tup else v) for k, v in d.items()})


_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|2\d\d\d)(?!\d)")
FILTER_FIELDS = ("year", "category", "author")  # what a Filters can ask of an index (Index.filter_fields)


def paper_year(paper: Paper) -> int | None:
    """The publication year of a paper: the first four-digit year in its `date` (JSONL `date`/`update_date`,
    e.g. "2023-05-01" or "Mon, 1 May 2023"); None when it has none."""
    m = _YEAR.search(paper.date or "")
    return int(m.group(1)) if m else None


def author_words(name: str) -> tuple[str, ...]:
    """The folded words of an author name ("Yann  LeCun" -> ("yann", "lecun")); how names are indexed and
    matched."""
    from rag.text import fold

    return tuple(w for w in re.split(r"[\s.,;]+", fold(name)) if w)


@dataclass(frozen=True)
class Filters:
    """Metadata filters (issue 24): a paper passes when its year is within `since`..`until` (inclusive; a
    paper without a year fails any year filter), it has any of `categories` (exact, case-insensitive), and
    one of its authors holds every word of any of `authors` ("Hinton" and "Geoffrey Hinton" both match
    "Geoffrey E. Hinton"). Empty filters pass everything. Applied inside the engines (Chroma `where`, the
    lexical query), never as a post-filter of a fixed top k."""

    since: int | None = None
    until: int | None = None
    categories: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()

    def __post_init__(self):
        from rag.errors import ConfigError

        object.__setattr__(self, "categories", tuple(dict.fromkeys(c.strip() for c in self.categories if c.strip())))
        object.__setattr__(self, "authors", tuple(dict.fromkeys(" ".join(a.split()) for a in self.authors
                                                                if author_words(a))))
        for name in ("since", "until"):
            year = getattr(self, name)
            if year is not None and (isinstance(year, bool) or not isinstance(year, int) or not 1000 <= year <= 9999):
                raise ConfigError(f"--{name} must be a four-digit year, got {year!r}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ConfigError(f"--since {self.since} is after --until {self.until}: swap them")

    def __bool__(self) -> bool:
        return bool(self.fields())

    def fields(self) -> set[str]:
        """The metadata fields these filters need (a subset of FILTER_FIELDS)."""
        out = set()
        if self.since is not None or self.until is not None:
            out.add("year")
        if self.categories:
            out.add("category")
        if self.authors:
            out.add("author")
        return out

    def matches(self, paper: Paper) -> bool:
        """Whether `paper` passes (the reference semantics the engines implement; also for in-memory sets)."""
        if self.since is not None or self.until is not None:
            year = paper_year(paper)
            if year is None or (self.since is not None and year < self.since) or \
                    (self.until is not None and year > self.until):
                return False
        if self.categories:
            wanted = {c.casefold() for c in self.categories}
            if not any(c.casefold() in wanted for c in paper.categories):
                return False
        if self.authors:
            names = [set(author_words(a)) for a in paper.authors]
            if not any(set(author_words(q)) <= words for q in self.authors for words in names):
                return False
        return True

    def describe(self) -> str:
        """A short human phrase: "2023–2024, category cs.CV, author Hinton" ('' when empty)."""
        parts = []
        if self.since is not None and self.until is not None:
            parts.append(str(self.since) if self.since == self.until else f"{self.since}–{self.until}")
        elif self.since is not None:
            parts.append(f"since {self.since}")
        elif self.until is not None:
            parts.append(f"until {self.until}")
        if self.categories:
            parts.append(("category " if len(self.categories) == 1 else "categories ") + " or ".join(self.categories))
        if self.authors:
            parts.append(("author " if len(self.authors) == 1 else "authors ") + " or ".join(self.authors))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"since": self.since, "until": self.until, "categories": list(self.categories),
                "authors": list(self.authors)}

    @classmethod
    def from_dict(cls, d: dict | None) -> Filters:
        d = d or {}
        return cls(since=d.get("since"), until=d.get("until"), categories=tuple(d.get("categories") or ()),
                   authors=tuple(d.get("authors") or ()))


@dataclass(frozen=True)
class Chunk:
    """A piece of one abstract; `text` is what gets embedded (the title carried in), `body` the piece."""

    chunk_id: str
    paper_id: str
    title: str
    chunk_no: int
    text: str
    body: str


@dataclass
class Hit:
    """One retrieved paper with its best snippet. `score` is the ranking score of the mode used
    (RRF in hybrid, cosine in dense, BM25 in bm25); `similarity` the best dense cosine of its chunks."""

    rank: int
    paper_id: str
    title: str
    score: float
    snippet: str
    similarity: float | None = None

    def public(self) -> dict:
        """The CLI JSON contract: rank, paper_id, title, score, snippet."""
        return {
            "rank": self.rank,
            "paper_id": self.paper_id,
            "title": self.title,
            "score": round(float(self.score), 6),
            "snippet": self.snippet,
        }


@dataclass
class Retrieval:
    """What one search found. `top_similarity` is the best dense cosine of any chunk, in every mode
    (the answerer's relevance signal), None only when the index holds no vectors."""

    query: str
    mode: str
    hits: list[Hit]
    top_similarity: float | None


@dataclass
class Source:
    """A retrieved paper as numbered for the answerer."""

    n: int
    paper_id: str
    title: str
    snippet: str
    score: float
    abstract: str = ""
    url: str | None = None
    similarity: float | None = None  # cosine of the question and the paper's best chunk, when known

    def public(self) -> dict:
        return {
            "n": self.n,
            "paper_id": self.paper_id,
            "title": self.title,
            "snippet": self.snippet,
            "score": round(float(self.score), 6),
            "similarity": round(float(self.similarity), 4) if self.similarity is not None else None,
            "url": self.url,
        }


@dataclass(frozen=True)
class Quote:
    """A verbatim span of a source's abstract that an answer quotes: `abstract[start:end] == text`."""

    n: int
    paper_id: str
    start: int
    end: int
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Stage:
    """What one LLM stage of an answer cost: rewrite, evidence or answer."""

    name: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ms: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "ms": round(self.ms, 1)}


@dataclass
class Answer:
    """The answer record shared by CLI, Python API, UI, MCP and eval."""

    question: str
    answer: str
    mode: str
    abstained: bool
    citations: list[dict] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    notice: str | None = None
    timings_ms: dict = field(default_factory=dict)
    standalone_question: str | None = None
    possibly_related: list[dict] = field(default_factory=list)
    invalid_citations: int = 0
    quotes: list[Quote] = field(default_factory=list)
    judgement: dict | None = None
    more_papers: int = 0
    stages: list[Stage] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)
    flagged: list[dict] = field(default_factory=list)  # LLM sentences citing a paper that is not a (passed) source
    also_relevant: list[dict] = field(default_factory=list)  # a list's second tier: {n, paper_id, title}
    referent: dict | None = None  # a follow-up's referent: {kind, paper_ids, lead} (rag.answer.followup)
    names: dict | None = None  # named things checked: {names, absent, mentioned_by} (rag.judge.names)
    shape: str | None = None  # "list" (one bullet per paper) or "specific" (the best sentences)

    def papers(self) -> list[str]:
        """The answer's papers in order, what a follow-up's "them" or "the second one" refers to: the cited
        papers first, then the other sources it showed, then its "also possibly relevant" tier."""
        ids = [c["paper_id"] for c in self.citations]
        ids += [s.paper_id for s in self.sources]
        ids += [p["paper_id"] for p in self.also_relevant]
        if self.abstained:
            ids += [p["paper_id"] for p in self.possibly_related]
        return list(dict.fromkeys(ids))

    def confidence(self) -> dict:
        """One confidence signal for every interface: level (answer / low / abstain) and why."""
        judgement = self.judgement or {}
        if self.abstained:
            level = "abstain"
        else:
            level = "low" if judgement.get("level") == "low" else "answer"
        reason = judgement.get("reason")
        absent = (self.names or {}).get("absent") if not self.abstained else None
        if absent:  # answered although a name it gives (as an example: "e.g. DP-SGD") is in no paper
            level, reason = "low", f"no indexed paper mentions {', '.join(absent)}"
        if not reason:
            if self.names and self.names.get("absent"):
                reason = "a named thing is in no indexed paper"
            elif self.referent:
                reason = self.referent.get("lead")
            elif judgement.get("source") == "llm-evidence":
                reason = f"{judgement.get('passed', 0)} of {judgement.get('judged', 0)} papers passed the LLM's evidence check"
            elif judgement.get("confidence") is not None:
                reason = f"P(answerable) {judgement['confidence']:.2f} from the calibrated judgement"
            else:
                reason = "answered from the papers asked about" if not self.abstained else "no paper answers it"
        return {"level": level, "reason": reason}

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "mode": self.mode,
            "abstained": self.abstained,
            "citations": self.citations,
            "sources": [s.public() for s in self.sources],
            "notice": self.notice,
            "timings_ms": self.timings_ms,
            "standalone_question": self.standalone_question,
            "possibly_related": self.possibly_related,
            "invalid_citations": self.invalid_citations,
            "quotes": [q.to_dict() for q in self.quotes],
            "judgement": self.judgement,
            "more_papers": self.more_papers,
            "stages": [st.to_dict() for st in self.stages],
            "evidence": self.evidence,
            "flagged": self.flagged,
            "also_relevant": self.also_relevant,
            "referent": self.referent,
            "names": self.names,
            "confidence": self.confidence(),
            "papers": self.papers(),
            "shape": self.shape,
        }


@dataclass
class StreamEvent:
    """`token`: text to append; `reset`: discard what was streamed; `stage`: what the answerer is doing now
    (e.g. "judging 15 papers… 9 relevant"); `final`: the verified answer."""

    kind: str
    text: str = ""
    answer: Answer | None = None
