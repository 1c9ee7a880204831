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
from rag.abstention import LOW, TOP_PAPERS, Abstention, Judgement, features
from rag.citations import verify
from rag.errors import LLMError, QuestionError
from rag.extractive import Extractor, Weights, asks_for_result
from rag.judgement import load_params
from rag.prompts import NOT_IN_CORPUS, answer_messages, load_prompts
from rag.llm import ChatModel
from rag.records import Answer, Hit, Paper, Source, StreamEvent
from rag.retrieve import PaperSearch
from rag.tokens import encoding_for_model
from rag.relevance import LIST_POOL, ListRelevance, paper_features
from rag.sentences import shared_sentence_vectors
from rag.text import is_keyword_query

log = logging.getLogger(__name__)

_LIST_QUESTION = re.compile(
    r"^\s*(which|what|list|find|show|any|name|give)\b.*\b(papers|works|methods|approaches|studies|articles)\b"
    r"|^\s*(papers|works|research|methods|approaches)\b"
    r"|\b(papers|works)\s+(on|about|that|which|using|for|proposing)\b",
    re.I,
)
LIST_MAX_WORDS = 7  # a keyword query ("sparse autoencoders interpretability") asks for papers, unless it asks a fact
LOW_CONFIDENCE = "Low confidence: these papers may not answer this question; the closest passages are quoted."
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
    """A request for papers: "which papers …", "papers on …", or a keyword query that asks no fact or result
    (chosen on the tune split: it finds 26 of its 28 list questions, against 10 for the phrasing alone)."""
    if _LIST_QUESTION.search(question):
        return True
    return is_keyword_query(question, LIST_MAX_WORDS) and not asks_for_result(question)


@dataclass
class _Plan:
    """Per-call decisions: whether the LLM is used and the notice shown with the answer."""

    use_llm: bool
    notice: str | None


class Assistant:
    """Answers questions over an index: the same `Answer` for CLI, Python API, UI, MCP and eval."""

    def __init__(self, settings, retriever: PaperSearch, llm: ChatModel | None = None, prompts=None,
                 abstention=None, extractor=None):
        self.settings = settings
        self._retriever = retriever
        self._index = retriever.index
        self._llm = llm
        self.prompts = prompts or load_prompts()
        params = load_params(str(settings.judgement_params) if settings.judgement_params else None)
        self._abstention = abstention or Abstention.from_settings(settings)
        self._relevance = ListRelevance(params)
        self._extractor = extractor or Extractor(Weights(**params.fitted.get("extractive_weights", {})))
        self._sentences = (shared_sentence_vectors(retriever.embedder, _embed_cache_path(settings))
                           if retriever.index is not None else None)
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
        deadline = time.monotonic() + self.settings.llm_deadline  # one budget for every LLM call of this answer
        question = check_question(question, self.settings.max_question_chars)
        history = conversation.trim_history(history or [], self.settings.history_tokens, self._count)
        plan = self._plan(extractive)

        query, failure = self._standalone(question, history, plan.use_llm, deadline)
        if failure is not None and failure.transient:  # unreachable after its retries: don't wait twice
            plan = _Plan(False, f"{failure}. {FALLBACK}")
        t0 = time.perf_counter()
        listing = is_list_question(question) or is_list_question(query)
        found = self._gather(query, top_k, mode, paper_ids, listing, plan.use_llm)
        if (found.judgement is not None and found.judgement.abstain and history and query == question
                and found.judgement.features.terms):
            # Leans on nothing in its words, but finds nothing alone: try it with the conversation's topic.
            topical = conversation.rule_rewrite(question, history, force=True)
            again = self._gather(topical, top_k, mode, paper_ids, listing, plan.use_llm)
            if not again.judgement.abstain:
                query, found = topical, again
        t_retrieve = (time.perf_counter() - t0) * 1000
        base = dict(question=question, sources=found.sources, standalone_question=query if query != question else None,
                    judgement=found.judgement.to_dict() if found.judgement else None, more_papers=found.more)
        if found.judgement is not None and found.judgement.abstain:
            yield StreamEvent("final", answer=self._abstain(base, found.hits, plan, t_retrieve, started))
            return
        if found.judgement is not None and found.judgement.level == LOW:
            plan = _Plan(plan.use_llm, _join(LOW_CONFIDENCE, plan.notice))

        t1 = time.perf_counter()
        text = None
        if plan.use_llm:
            text, streamed, error = None, False, None
            try:
                parts = []
                for token in self._llm.stream(answer_messages(self.prompts, question, found.sources, history),
                                              deadline=deadline):
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
                plan = _Plan(False, _join(f"{error}. {FALLBACK}", LOW_CONFIDENCE if LOW_CONFIDENCE in (plan.notice or "") else None))
        if text is not None and not _says_not_found(text) and not verify(text, {s.n: s for s in found.sources}).citations:
            # an answer that cites none of the sources is not grounded: show the quotes instead
            yield StreamEvent("reset")
            text = None
            plan = _Plan(False, _join(f"The LLM's answer cited none of the sources, so it is not shown. {FALLBACK}",
                                      LOW_CONFIDENCE if LOW_CONFIDENCE in (plan.notice or "") else None))
        if text is not None:
            answer = self._from_llm(text, base, found.hits, plan, t_retrieve, t1, started)
        else:
            answer = self._extractive(question, found, base, plan, t_retrieve, t1, started)
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

    def _standalone(self, question: str, history: list[dict], use_llm: bool,
                    deadline: float | None = None) -> tuple[str, LLMError | None]:
        """The query to search: the question itself, or a follow-up rewritten to stand alone.

        Returns the query and, if the LLM rewrite failed, its error (so the answer does not wait on it twice).
        """
        if not history or not conversation.leans_on_context(question):
            return question, None
        failure = None
        if use_llm:
            try:
                rewritten = conversation.llm_rewrite(lambda m: self._llm.complete(m, deadline=deadline),
                                                     self.prompts["rewrite"], question, history,
                                                     self.settings.max_question_chars)
                if rewritten:
                    return rewritten, None
            except LLMError as exc:
                log.warning("follow-up rewrite failed, using the rule: %s", exc)
                failure = exc
        return conversation.rule_rewrite(question, history)[: self.settings.max_question_chars], failure

    def _gather(self, query: str, top_k, mode, paper_ids, listing: bool, use_llm: bool) -> "_Found":
        """Retrieve, judge whether to answer (rag.abstention) and, for a list, which papers belong in it
        (rag.relevance); number the chosen papers as sources."""
        if paper_ids:
            chosen = [p for p in (self._index.get(pid) for pid in paper_ids) if p is not None]
            if not chosen:
                raise QuestionError("none of the selected papers is in the index: pick a paper from the Papers list")
            hits = [Hit(i, p.paper_id, p.title, 1.0, p.abstract[:300]) for i, p in enumerate(chosen, 1)]
            return _Found(self._number(hits, use_llm), hits, None, 0, self._retriever.embed_query(query), listing)
        k = top_k or (self.settings.list_top_k if listing else self.settings.answer_top_k)
        found = self._retriever.retrieve(query, max(k, LIST_POOL) if listing else k, mode)
        hits = found.hits
        qv = self._retriever.embed_query(query)
        judged = hits if listing else hits[:TOP_PAPERS]
        sims = self._sentences.best_similarity(qv, [self._index.paper(h.paper_id) for h in judged])
        judgement = self._abstention.judge(
            features(query, found.top_similarity, [h.paper_id for h in hits], self._index, sims[:TOP_PAPERS])
        )
        more = 0
        if listing and hits:
            probs = self._relevance.probabilities(paper_features(query, hits, self._index, sims))
            passed = [h for h, p in zip(hits, probs) if p >= self._relevance.threshold] or hits[:1]
            more = max(0, len(passed) - k)
            hits = passed[:k]
            hits = [Hit(i, h.paper_id, h.title, h.score, h.snippet, h.similarity) for i, h in enumerate(hits, 1)]
        return _Found(self._number(hits, use_llm), hits, judgement, more, qv, listing)

    def _number(self, hits: list[Hit], use_llm: bool) -> list[Source]:
        """Number the hits as sources. For the LLM, stop when the next would overflow `context_tokens`
        (the best is always kept); quoting has no prompt to fit, so every hit is a source."""
        sources, used = [], 0
        fmt = self.prompts["source"]
        for i, hit in enumerate(hits, start=1):
            paper = self._index.paper(hit.paper_id)
            if use_llm:
                cost = self._count(fmt.render(n=i, title=hit.title, abstract=paper.abstract))
                if used + cost > self.settings.context_tokens and sources:
                    break
                used += cost
            sources.append(Source(i, hit.paper_id, hit.title, hit.snippet, hit.score, paper.abstract, paper.url))
        return sources

    def _extractive(self, question, found: "_Found", base, plan, t_retrieve, t1, started) -> Answer:
        listing = found.listing
        sources = found.sources
        sentences = self._sentences.of([self._index.paper(s.paper_id) for s in sources])
        extract = self._extractor.answer(question, sources, listing, sentences, found.query_vector)
        if extract is None:
            return self._abstain(base, found.hits, plan, t_retrieve, started, t1, mode="extractive")
        citations = [{"n": s.n, "paper_id": s.paper_id, "title": s.title} for s in sources if s.n in extract.cited]
        return Answer(answer=extract.text, mode="extractive", abstained=False, citations=citations,
                      notice=_join(plan.notice, _more_note(found.more) if listing else None),
                      quotes=extract.quotes, timings_ms=_timings(t_retrieve, t1, started), **base)

    def _from_llm(self, text, base, hits, plan, t_retrieve, t1, started) -> Answer:
        if _says_not_found(text):
            return self._abstain(base, hits, plan, t_retrieve, started, t1, mode="llm")
        checked = verify(text, {s.n: s for s in base["sources"]})
        if checked.invalid:
            log.warning("removed %d citation(s) that name no source", checked.invalid)
        return Answer(answer=checked.text, mode="llm", abstained=False, citations=checked.citations,
                      notice=_join(plan.notice, _more_note(base["more_papers"])),
                      invalid_citations=checked.invalid, timings_ms=_timings(t_retrieve, t1, started), **base)

    def _abstain(self, base, hits, plan, t_retrieve, started, t1=None, mode=None) -> Answer:
        related = [{"paper_id": h.paper_id, "title": h.title} for h in hits[:3]]
        return Answer(answer=NOT_IN_CORPUS, mode=mode or ("llm" if plan.use_llm else "extractive"),
                      abstained=True, notice=plan.notice, possibly_related=related,
                      timings_ms=_timings(t_retrieve, t1, started), **base)


@dataclass
class _Found:
    """What `_gather` found: the numbered sources, their hits, the judgement (None when scoped to papers),
    how many more list papers passed than were shown, and the query's vector."""

    sources: list[Source]
    hits: list[Hit]
    judgement: Judgement | None
    more: int
    query_vector: object
    listing: bool


def _more_note(more: int) -> str | None:
    """What a list answer says when more papers passed the relevance check than it shows."""
    if not more:
        return None
    return f"{more} more paper{'s' if more > 1 else ''} passed the relevance check: raise top-k to list {'them' if more > 1 else 'it'}."


def _join(*notices: str | None) -> str | None:
    parts = [n for n in notices if n]
    return " ".join(parts) if parts else None


def _embed_cache_path(settings):
    """The embedding cache ingest wrote (sentence vectors join it), if the index has one."""
    from pathlib import Path

    path = settings.embed_cache_path or Path(settings.data_dir) / "embed_cache.sqlite"
    return path if Path(path).exists() else None


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
