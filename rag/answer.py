"""Question in, verified `Answer` out: the orchestration of one answer.

    question → check → standalone query (rag.conversation) → retrieve (rag.retrieve) → judge relevance
    (rag.abstention) → generate with the LLM (rag.llm, streamed) or quote (rag.extractive) → verify
    citations (rag.citations) → Answer

With no LLM endpoint, after the LLM's last retry, or when asked, the answer is extractive (verbatim
abstract sentences, each cited) with a `notice` saying why.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rag import conversation
from rag.abstention import ThresholdRule, features
from rag.citations import verify
from rag.errors import LLMError, QuestionError
from rag.extractive import Extractor
from rag.prompts import NOT_IN_CORPUS, answer_messages, load_prompts
from rag.records import Answer, Hit, Paper, Source, StreamEvent
from rag.tokens import encoding_for_model
from rag.text import content_terms, matched_terms

log = logging.getLogger(__name__)

_LIST_QUESTION = re.compile(
    r"^\s*(which|what|list|find|show|any|name|give)\b.*\b(papers?|works?|methods?|approaches|studies|articles)\b"
    r"|^\s*(papers?|works?|research|methods?|approaches)\b"
    r"|\b(papers?|works?)\s+(on|about|that|which|using|for|proposing)\b",
    re.I,
)
LIST_KEEP_RATIO = 0.5  # dev set: citation precision 0.68 -> 0.69, recall 0.79 -> 0.78 (drops papers sharing no topic)
EXTRACTIVE = "Extractive answer: sentences quoted from the abstracts"
FALLBACK = "Showing an extractive answer instead (sentences quoted from the abstracts)."

__all__ = ["Assistant", "StreamEvent", "check_question", "is_list_question"]


def check_question(question: str | None, max_chars: int) -> str:
    """Normalise whitespace; refuse empty or over-long questions with a friendly message."""
    text = " ".join((question or "").split())
    if not text:
        raise QuestionError("the question is empty: type a question about ML papers")
    if len(text) > max_chars:
        raise QuestionError(
            f"the question is {len(text):,} characters; the limit is {max_chars:,} (RAG_MAX_QUESTION_CHARS): shorten it"
        )
    return text


def is_list_question(question: str) -> bool:
    return bool(_LIST_QUESTION.search(question))


@dataclass
class _Plan:
    """Per-call decisions: whether the LLM is used and the notice shown with the answer."""

    use_llm: bool
    notice: str | None


class Assistant:
    """Answers questions over an index: the same `Answer` for CLI, Python API, UI, MCP and eval."""

    def __init__(self, settings, retriever, llm=None, prompts=None, abstention=None, extractor=None):
        self.settings = settings
        self._retriever = retriever
        self._index = retriever.index
        self._llm = llm
        self.prompts = prompts or load_prompts()
        self._abstention = abstention or ThresholdRule.from_settings(settings)
        self._extractor = extractor or Extractor()
        self._enc = encoding_for_model(settings.llm_model, settings.tokenizer)

    @classmethod
    def from_settings(cls, settings=None, retriever=None, llm=None, **overrides) -> "Assistant":
        """An Assistant over the index in `settings.data_dir` (settings from RAG_* env vars + overrides)."""
        from rag.llm import OpenAIChatLLM
        from rag.retrieve import Retriever
        from rag.settings import load_settings

        settings = settings or load_settings(**overrides)
        prompts = load_prompts()  # fail fast on a broken prompt file, before loading the model
        retriever = retriever or Retriever.from_settings(settings)
        if llm is None and settings.llm_configured:
            llm = OpenAIChatLLM.from_settings(settings)
        return cls(settings, retriever, llm, prompts)

    # -- what the index holds (for UI, MCP, eval) --------------------------------------------

    @property
    def has_llm(self) -> bool:
        return self._llm is not None

    @property
    def llm_name(self) -> str | None:
        return getattr(self._llm, "name", None) if self._llm is not None else None

    def paper(self, paper_id: str) -> Paper | None:
        return self._index.get(paper_id)

    def papers(self) -> list[Paper]:
        return self._index.papers()

    def index_info(self) -> dict:
        return self._index.info()

    def search(self, question: str, top_k: int | None = None, mode: str | None = None) -> list[Hit]:
        return self._retriever.search(check_question(question, self.settings.max_question_chars), top_k, mode)

    # -- answering ---------------------------------------------------------------------------

    def ask(self, question: str, history: list[dict] | None = None, **kw) -> Answer:
        """The verified answer (see `ask_stream` for the keyword arguments)."""
        final = None
        for event in self.ask_stream(question, history=history, **kw):
            if event.kind == "final":
                final = event.answer
        return final

    def ask_stream(
        self,
        question: str,
        history: list[dict] | None = None,
        top_k: int | None = None,
        mode: str | None = None,
        extractive: bool = False,
        paper_ids: list[str] | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream an answer: `token` events (text to append), `reset` (discard what was streamed),
        then one `final` event with the verified Answer.

        history: earlier messages [{role, content}]; top_k: papers given to the answerer; mode:
        hybrid / dense / bm25; extractive: quote sentences even if an LLM is configured; paper_ids:
        answer from these papers only (no retrieval, no abstention).
        """
        started = time.perf_counter()
        question = check_question(question, self.settings.max_question_chars)
        history = conversation.trim_history(history or [], self.settings.history_tokens, self._count)
        plan = self._plan(extractive)

        query, failure = self._standalone(question, history, plan.use_llm)
        if failure is not None and failure.transient:  # unreachable after its retries: don't wait twice
            plan = _Plan(False, f"{failure}. {FALLBACK}")
        t0 = time.perf_counter()
        sources, hits, judgement = self._gather(query, top_k, mode, paper_ids)
        t_retrieve = (time.perf_counter() - t0) * 1000
        base = dict(question=question, sources=sources, standalone_question=query if query != question else None,
                    judgement=judgement.to_dict() if judgement else None)
        if judgement is not None and judgement.abstain:
            yield StreamEvent("final", answer=self._abstain(base, hits, plan, t_retrieve, started))
            return

        t1 = time.perf_counter()
        text = None
        if plan.use_llm:
            text, streamed, error = None, False, None
            try:
                parts = []
                for token in self._llm.stream(answer_messages(self.prompts, question, sources, history)):
                    parts.append(token)
                    streamed = True
                    yield StreamEvent("token", token)
                text = "".join(parts)
                if not text.strip():
                    text, error = None, "The LLM returned an empty answer"
            except LLMError as exc:
                log.warning("LLM failed: %s", exc)
                error = str(exc)
            if text is None:
                if streamed:
                    yield StreamEvent("reset")
                plan = _Plan(False, f"{error}. {FALLBACK}")
        if text is not None:
            answer = self._from_llm(text, base, hits, plan, t_retrieve, t1, started)
        else:
            answer = self._extractive(question, query, sources, base, hits, plan, t_retrieve, t1, started)
            if not answer.abstained:
                yield StreamEvent("token", answer.answer)
        yield StreamEvent("final", answer=answer)

    # -- steps -------------------------------------------------------------------------------

    def _plan(self, extractive: bool) -> _Plan:
        if self._llm is not None and not extractive:
            return _Plan(True, None)
        if extractive:
            return _Plan(False, f"{EXTRACTIVE} (extractive mode requested).")
        return _Plan(False, f"{EXTRACTIVE}. No LLM endpoint is configured: set RAG_LLM_BASE_URL for generated answers.")

    def _count(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))

    def _standalone(self, question: str, history: list[dict], use_llm: bool) -> tuple[str, LLMError | None]:
        """The query to search: the question itself, or a follow-up rewritten to stand alone.

        Returns the query and, if the LLM rewrite failed, its error (so the answer does not wait on it twice).
        """
        if not history or not conversation.leans_on_context(question):
            return question, None
        failure = None
        if use_llm:
            try:
                rewritten = conversation.llm_rewrite(self._llm.complete, self.prompts["rewrite"], question, history,
                                                     self.settings.max_question_chars)
                if rewritten:
                    return rewritten, None
            except LLMError as exc:
                log.warning("follow-up rewrite failed, using the rule: %s", exc)
                failure = exc
        return conversation.rule_rewrite(question, history)[: self.settings.max_question_chars], failure

    def _gather(self, query: str, top_k, mode, paper_ids):
        """(sources within the token budget, hits, relevance judgement or None when scoped to papers)."""
        if paper_ids:
            chosen = [p for p in (self._index.get(pid) for pid in paper_ids) if p is not None]
            if not chosen:
                raise QuestionError("none of the selected papers is in the index: pick a paper from the Papers list")
            hits = [Hit(i, p.paper_id, p.title, 1.0, p.abstract[:300]) for i, p in enumerate(chosen, 1)]
            judgement = None
        else:
            found = self._retriever.retrieve(query, top_k or self.settings.answer_top_k, mode)
            hits = found.hits
            judgement = self._abstention.judge(
                features(query, found.top_similarity, [h.paper_id for h in hits], self._index)
            )
        return self._budgeted_sources(hits), hits, judgement

    def _budgeted_sources(self, hits: list[Hit]) -> list[Source]:
        """Number the hits as sources; stop when the next would overflow `context_tokens` (the best is always kept)."""
        sources, used = [], 0
        fmt = self.prompts["source"]
        for i, hit in enumerate(hits, start=1):
            paper = self._index.paper(hit.paper_id)
            cost = self._count(fmt.render(n=i, title=hit.title, abstract=paper.abstract))
            if used + cost > self.settings.context_tokens and sources:
                break
            used += cost
            sources.append(Source(i, hit.paper_id, hit.title, hit.snippet, hit.score, paper.abstract, paper.url))
        return sources

    def _list_keep(self, query: str, sources: list[Source]) -> set[int]:
        """Sources worth a bullet in an extractive list: they cover at least LIST_KEEP_RATIO of what the best covers."""
        terms = set(content_terms(query))
        if not terms:
            return {s.n for s in sources}
        total = sum(self._index.idf(t) for t in terms)
        cov = {s.n: sum(self._index.idf(t) for t in matched_terms(terms, self._index.paper_terms(s.paper_id))) / total
               for s in sources}
        top = max(cov.values(), default=0.0)
        return {n for n, c in cov.items() if c >= LIST_KEEP_RATIO * top}

    def _extractive(self, question, query, sources, base, hits, plan, t_retrieve, t1, started) -> Answer:
        listing = is_list_question(question) or is_list_question(query)
        extract = self._extractor.answer(question, sources, listing, self._list_keep(query, sources) if listing else None)
        if extract is None:
            return self._abstain(base, hits, plan, t_retrieve, started, t1, mode="extractive")
        citations = [{"n": s.n, "paper_id": s.paper_id, "title": s.title} for s in sources if s.n in extract.cited]
        return Answer(answer=extract.text, mode="extractive", abstained=False, citations=citations, notice=plan.notice,
                      quotes=extract.quotes, timings_ms=_timings(t_retrieve, t1, started), **base)

    def _from_llm(self, text, base, hits, plan, t_retrieve, t1, started) -> Answer:
        if _says_not_found(text):
            return self._abstain(base, hits, plan, t_retrieve, started, t1, mode="llm")
        checked = verify(text, {s.n: s for s in base["sources"]})
        if checked.invalid:
            log.warning("removed %d citation(s) that name no source", checked.invalid)
        return Answer(answer=checked.text, mode="llm", abstained=False, citations=checked.citations, notice=plan.notice,
                      invalid_citations=checked.invalid, timings_ms=_timings(t_retrieve, t1, started), **base)

    def _abstain(self, base, hits, plan, t_retrieve, started, t1=None, mode=None) -> Answer:
        related = [{"paper_id": h.paper_id, "title": h.title} for h in hits[:3]]
        return Answer(answer=NOT_IN_CORPUS, mode=mode or ("llm" if plan.use_llm else "extractive"),
                      abstained=True, notice=plan.notice, possibly_related=related,
                      timings_ms=_timings(t_retrieve, t1, started), **base)


def _says_not_found(text: str) -> bool:
    norm = " ".join(text.lower().split()).strip(" .")
    phrase = NOT_IN_CORPUS.lower().strip(" .")
    return norm.startswith(phrase) and len(norm) < len(phrase) + 40


def _timings(t_retrieve: float, t1: float | None, started: float) -> dict:
    now = time.perf_counter()
    return {
        "retrieve": round(t_retrieve, 1),
        "generate": round((now - t1) * 1000, 1) if t1 is not None else 0.0,
        "total": round((now - started) * 1000, 1),
    }
