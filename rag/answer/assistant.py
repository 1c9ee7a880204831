"""Question in, verified `Answer` out: the orchestration of one answer.

    question → check → standalone query (rag.answer.conversation) → retrieve (rag.retrieve.hybrid) → judge relevance
    (rag.judge.abstention) → generate with the LLM (rag.clients.chat, streamed) or quote (rag.answer.extractive) → verify
    citations, the papers the answer names and what its cited abstracts support (rag.answer.citations) → Answer

With no LLM endpoint, after the LLM's last retry, or when asked, the answer is extractive (verbatim
abstract sentences, each cited) with a `notice` saying why.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rag.answer import conversation
from rag.answer.citations import (
    Named,
    check_names,
    cited_numbers,
    claims,
    unsupported,
    verify,
)
from rag.answer.extractive import Extractor, Weights, asks_for_result
from rag.answer.routing import Route, Router
from rag.clients.reasoning import strip_reasoning
from rag.errors import LLMError, QuestionError
from rag.index.sentence_vectors import shared_sentence_vectors
from rag.judge.abstention import (
    ANSWER,
    LOW,
    TOP_PAPERS,
    Abstention,
    AbstentionVerdict,
    features,
)
from rag.judge.list_relevance import ListRelevance, list_pool, paper_features
from rag.judge.params import params_for
from rag.judge.support import SupportCheck, quote_support
from rag.prompts import NOT_IN_CORPUS, answer_messages, load_prompts
from rag.records import Answer, Hit, Paper, Source, Stage, StreamEvent
from rag.retrieve.hybrid import PaperSearch
from rag.text import KEYWORD_MAX_WORDS, is_keyword_query
from rag.token_counts import encoding_for_model

if TYPE_CHECKING:  # importing openai was a third of `rag search`'s imports (-X importtime); only the LLM path needs it
    from rag.clients.chat import ChatModel

log = logging.getLogger(__name__)

_LIST_QUESTION = re.compile(
    r"^\s*(which|what|list|find|show|any|name|give)\b.*\b(papers|works|methods|approaches|studies|articles)\b"
    r"|^\s*(papers|works|research|methods|approaches)\b"
    r"|\b(papers|works)\s+(on|about|that|which|using|for|proposing)\b",
    re.I,
)
LIST_MAX_WORDS = KEYWORD_MAX_WORDS  # a keyword query ("sparse autoencoders interpretability") asks for papers, unless it asks a fact
LOW_CONFIDENCE = "Low confidence: these papers may not answer this question; the closest passages are quoted."
UNSUPPORTED = "No quoted sentence carries the question's key terms or meaning; the closest papers:"
EXTRACTIVE = "Extractive answer: sentences quoted from the abstracts"
EVIDENCE_SHARE = 0.6  # of the answer's LLM deadline left when the evidence step starts
ALSO_RELEVANT = "Also possibly relevant:"
FALLBACK = "Showing an extractive answer instead (sentences quoted from the abstracts)."
UNFINISHED = "The LLM's reply ended without a finish reason (no end-of-answer signal): it may be cut short."

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
                 abstention=None, extractor=None, params=None):
        """`params`: the judgement parameters (default: RAG_JUDGEMENT_PARAMS or the shipped ones)."""
        self.settings = settings
        self._retriever = retriever
        self._index = retriever.index
        self._llm = llm
        self.prompts = prompts or load_prompts()
        params = params or params_for(settings)
        self._abstention = abstention or Abstention.from_settings(settings, params)
        self._relevance = ListRelevance(params)
        self._support = SupportCheck.from_fitted(params.fitted)
        self._extractor = extractor or Extractor(Weights(**params.fitted.get("extractive_weights", {})))
        self._sentences = (shared_sentence_vectors(retriever.embedder, _embed_cache_path(settings))
                           if retriever.index is not None else None)
        # Loaded at the first count: building o200k_base (200k ranks) was ~1/6 of a one-shot
        # extractive `rag ask` (cProfile), and an answer without an LLM or history never counts tokens.
        self._enc = None
        self._router = (Router(retriever.index, retriever, self._sentences, settings.list_top_k)
                        if retriever.index is not None and self._sentences is not None else None)
        self._evidence = None
        if llm is not None:
            from rag.judge.llm_evidence import EvidenceCache, EvidenceStep

            self._evidence = EvidenceStep(llm, self.prompts, EvidenceCache(_evidence_cache_path(settings)),
                                          concurrency=settings.evidence_concurrency, model=settings.llm_model)

    @classmethod
    def from_settings(cls, settings=None, retriever=None, llm=None, **overrides) -> "Assistant":
        """An Assistant over the index in `settings.data_dir` (settings from RAG_* env vars + overrides)."""
        from rag.retrieve.hybrid import Retriever
        from rag.settings import load_settings

        settings = settings or load_settings(**overrides)
        prompts = load_prompts()  # fail fast on a broken prompt file, before loading the model
        retriever = retriever or Retriever.from_settings(settings)
        if llm is None and settings.llm_configured:
            # imported here: an extractive answer never imports openai
            from rag.clients.chat import OpenAIChatLLM

            llm = OpenAIChatLLM.from_settings(settings)
        return cls(settings, retriever, llm, prompts)

    # -- what the index holds (for UI, MCP, eval) --------------------------------------------

    @property
    def has_llm(self) -> bool:
        return self._llm is not None

    def paper(self, paper_id: str) -> Paper | None:
        return self._index.get(paper_id)

    def papers(self) -> list[Paper]:
        return self._index.papers()

    def index_info(self) -> dict:
        return self._index.info()

    def similar_papers(self, paper_id: str, k: int = 5) -> list[tuple[Paper, float]]:
        """The papers nearest to this one by paper vector (the mean of its chunks), with their cosine."""
        vectors = self._index.paper_vectors([paper_id])
        if paper_id not in vectors:
            return []
        near = self._index.nearest_papers(vectors[paper_id], k + 1)
        out = [(self._index.get(p.paper_id), p.similarity) for p in near if p.paper_id != paper_id]
        return [(paper, sim) for paper, sim in out if paper is not None][:k]

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
        evidence: bool | None = None,
        previous: Answer | list[str] | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream an answer: `stage` events (what it is doing), `token` events (text to append), `reset`
        (discard what was streamed), then one `final` event with the verified Answer.

        history: earlier messages [{role, content}]; top_k: papers given to the answerer (a list answer shows
        up to top_k); mode: hybrid / dense / bm25; extractive: quote sentences even if an LLM is configured;
        paper_ids: answer from these papers only (no retrieval, no judgement); evidence: run the LLM evidence
        step (default RAG_EVIDENCE; only with an LLM); previous: the conversation's previous Answer (or its
        paper ids, in order), whose papers a follow-up ("which of them …", "the second one") refers to.
        """
        run = _Run(started=time.perf_counter(), deadline=time.monotonic() + self.settings.llm_deadline)
        question = check_question(question, self.settings.max_question_chars)
        history = conversation.trim_history(history or [], self.settings.history_tokens, self._count)
        plan = self._plan(extractive)
        route = Route() if paper_ids or self._router is None else \
            self._router.route(question, _papers_of(previous), bool(history))
        if route.final is not None or route.paper_ids == []:
            yield StreamEvent("final", answer=self._routed_statement(question, route, plan, top_k, mode, run))
            return
        if route.paper_ids:
            paper_ids = route.paper_ids

        if route.plain or route.restrict is not None:
            query, failure = self._standalone(question, history, plan.use_llm, run)
        else:
            query, failure = route.query or question, None
        if failure is not None and failure.transient:  # unreachable after its retries: don't wait twice
            plan = _Plan(False, f"{failure}. {FALLBACK}")
        t0 = time.perf_counter()
        query, found, plan = yield from self._retrieve_and_judge(question, query, history, top_k, mode, paper_ids,
                                                                 evidence, plan, run, route)
        t_retrieve = (time.perf_counter() - t0) * 1000
        if not found.abstain and found.evidence is None:
            yield StreamEvent("stage", f"reading {len(found.sources)} paper{'s' if len(found.sources) != 1 else ''}…")
        base = dict(question=question, sources=found.sources, standalone_question=query if query != question else None,
                    judgement=found.judgement_dict(), more_papers=found.more, stages=run.stages,
                    evidence=[j.public() for j in found.evidence or []], referent=route.referent,
                    names=route.names.to_dict() if route.names is not None else None)
        if found.abstain:
            yield StreamEvent("final", answer=self._abstain(base, found.hits, plan, t_retrieve, run.started))
            return

        t1 = time.perf_counter()
        if route.lead and plan.use_llm:
            yield StreamEvent("token", route.lead + "\n\n")
        text, plan = yield from self._compose(query if route.query else question, found, history, plan, run)
        text, plan = yield from self._verify(text, found, plan)
        if text is not None:
            answer = self._from_llm(text, base, found.hits, plan, t_retrieve, t1, run.started)
        else:
            answer = self._extractive(query if route.query else question, found, base, plan, t_retrieve, t1,
                                      run.started)
        if not answer.abstained:
            answer.answer = "\n\n".join(part for part in (route.lead, answer.answer, "\n".join(route.tail)) if part)
            if text is None:
                yield StreamEvent("token", answer.answer)
            elif route.tail:
                yield StreamEvent("token", "\n\n" + "\n".join(route.tail))
        yield StreamEvent("final", answer=answer)

    # -- the steps of an answer: retrieve and judge, compose, verify -------------------------

    def _retrieve_and_judge(self, question: str, query: str, history: list[dict], top_k, mode, paper_ids,
                            evidence: bool | None, plan: _Plan, run: "_Run", route: Route | None = None):
        """The papers to answer from and whether to answer: judged by the LLM's evidence step when it runs,
        else offline (rag.judge.abstention; a follow-up that finds nothing alone is tried with the conversation's
        topic). A generator (stage events); returns the query searched, what was found and the updated plan."""
        route = route or Route()
        listing = route.listing if route.listing is not None else (is_list_question(question) or is_list_question(query))
        use_evidence = plan.use_llm and not paper_ids and (self.settings.evidence if evidence is None else evidence)
        found = None
        if use_evidence:
            yield StreamEvent("stage", "retrieving…")
            found = yield from self._gather_with_evidence(query, top_k, mode, listing, run)
            if found is None:  # the evidence step failed: judge offline instead, and say so
                if run.evidence_unreachable:  # every call failed: don't wait on the endpoint a second time
                    plan = _Plan(False, _join(run.evidence_notice, FALLBACK))
                else:
                    plan = _Plan(plan.use_llm, _join(run.evidence_notice, plan.notice))
            else:
                plan = _Plan(plan.use_llm, _join(*run.notes, plan.notice))
        if found is None:
            yield StreamEvent("stage", "retrieving…")
            found = self._gather(query, top_k, mode, paper_ids, listing, plan.use_llm, route.restrict)
            if (found.verdict is not None and found.verdict.abstain and history and query == question
                    and found.verdict.features.terms):
                # Leans on nothing in its words, but finds nothing alone: try it with the conversation's topic.
                topical = conversation.rule_rewrite(question, history, force=True)
                again = self._gather(topical, top_k, mode, paper_ids, listing, plan.use_llm)
                if not again.verdict.abstain:
                    query, found = topical, again
        if found.verdict is not None and found.verdict.level == LOW:
            plan = _Plan(plan.use_llm, _join(LOW_CONFIDENCE, plan.notice))
        return query, found, plan

    def _compose(self, question: str, found: "_Found", history: list[dict], plan: _Plan, run: "_Run"):
        """The LLM's answer, streamed as `token` events; on failure a `reset` (if anything was streamed) and a
        plan that falls back to quoting. Returns the text (None: quote instead) and the plan."""
        if not plan.use_llm:
            return None, plan
        yield StreamEvent("stage", "answering…")
        text, error, streamed = None, None, False
        stage = run.stage("answer")
        messages = answer_messages(self.prompts, question, found.sources, history,
                                   evidence=found.passed if found.evidence is not None else None)
        finish = None
        try:
            parts = []
            tokens = iter(self._llm.stream(messages, deadline=run.deadline, on_usage=stage.usage))
            while True:
                try:
                    token = next(tokens)
                except StopIteration as end:  # its value: the finish reason, "" when the stream gave none
                    finish = end.value
                    break
                parts.append(token)
                streamed = True
                yield StreamEvent("token", token)
            text = strip_reasoning("".join(parts))  # the client removes them; a model behind another client may not
            if not text.strip():
                text, error = None, "The LLM returned an empty answer"
        except LLMError as exc:
            log.warning("LLM failed: %s", exc)
            error = str(exc)
        stage.finish(self._count("\n".join(m["content"] for m in messages)), self._count("".join(parts) if parts else ""))
        if text is None:
            if streamed:
                yield StreamEvent("reset")
            plan = _Plan(False, _join(run.evidence_notice, f"{error}. {FALLBACK}", _low(plan)))
        elif finish == "":
            plan = _Plan(plan.use_llm, _join(plan.notice, UNFINISHED))
        return text, plan

    def _verify(self, text: str | None, found: "_Found", plan: _Plan):
        """An answer that cites none of the sources (counting none that its sentences naming other papers cite) is
        not grounded: a `reset`, and the quotes instead."""
        if text is None or _says_not_found(text):
            return text, plan
        named = check_names(text, self._named(found.sources))
        if not verify(named.text, {s.n: s for s in found.sources}).citations:
            why = "named only papers that are not among the sources" if named.flagged else "cited none of the sources"
            yield StreamEvent("reset")
            return None, _Plan(False, _join(f"The LLM's answer {why}, so it is not shown. {FALLBACK}", _low(plan)))
        return text, plan

    def _named(self, sources: list[Source]) -> list[Named]:
        """The sources as an answer may name them: title, abstract, and the corpus's authors and year."""
        out = []
        for s in sources:
            paper = self._index.paper(s.paper_id)
            date = (paper.date or "") if paper is not None else ""
            out.append(Named(s.n, s.title, f"{s.title}\n{s.abstract}", paper.authors if paper is not None else (),
                             date[:4] if re.match(r"\d{4}", date) else None))
        return out

    # -- helpers of the steps ----------------------------------------------------------------

    def _plan(self, extractive: bool) -> _Plan:
        if self._llm is not None and not extractive:
            return _Plan(True, None)
        if extractive:
            return _Plan(False, f"{EXTRACTIVE} (extractive mode requested).")
        return _Plan(False, f"{EXTRACTIVE}. No LLM endpoint is configured: set RAG_LLM_BASE_URL for generated answers.")

    def _count(self, text: str) -> int:
        if self._enc is None:
            self._enc = encoding_for_model(self.settings.llm_model, self.settings.tokenizer)
        return len(self._enc.encode(text, disallowed_special=()))

    def _standalone(self, question: str, history: list[dict], use_llm: bool, run: "_Run") -> tuple[str, LLMError | None]:
        """The query to search: the question itself, or a follow-up rewritten to stand alone.

        Returns the query and, if the LLM rewrite failed, its error (so the answer does not wait on it twice).
        """
        if not history or not conversation.leans_on_context(question):
            return question, None
        failure = None
        if use_llm:
            stage = run.stage("rewrite")
            try:
                rewritten = conversation.llm_rewrite(lambda m: self._llm.complete(m, deadline=run.deadline,
                                                                                   on_usage=stage.usage),
                                                     self.prompts["rewrite"], question, history,
                                                     self.settings.max_question_chars)
                stage.finish()
                if rewritten:
                    return rewritten, None
            except LLMError as exc:
                stage.finish()
                log.warning("follow-up rewrite failed, using the rule: %s", exc)
                failure = exc
        return conversation.rule_rewrite(question, history)[: self.settings.max_question_chars], failure

    def _retrieve(self, query: str, k: int, mode, run: "_Run | None" = None):
        """Retrieval, with the question expanded by the LLM (HyDE) for the dense search when configured."""
        dense_text = None
        if run is not None and self._llm is not None and self.settings.query_expansion == "hyde":
            stage = run.stage("rewrite")
            try:
                dense_text = self._llm.complete([{"role": "user", "content": self.prompts["hyde"].render(question=query)}],
                                                deadline=run.deadline, on_usage=stage.usage).strip() or None
            except LLMError as exc:
                log.warning("query expansion failed, searching with the question alone: %s", exc)
            stage.finish()
        return self._retriever.retrieve(query, k, mode, dense_text=dense_text) if dense_text else \
            self._retriever.retrieve(query, k, mode)

    def _gather(self, query: str, top_k, mode, paper_ids, listing: bool, use_llm: bool,
                restrict: list[str] | None = None) -> "_Found":
        """Offline: retrieve, judge whether to answer (rag.judge.abstention) and, for a list, which papers belong in
        it (rag.judge.list_relevance); number the chosen papers as sources. `restrict`: only these papers may be
        sources (the papers that mention a named thing), retrieved ones first."""
        if paper_ids:
            chosen = [p for p in (self._index.get(pid) for pid in paper_ids) if p is not None]
            if not chosen:
                raise QuestionError("none of the selected papers is in the index: pick a paper from the Papers list")
            hits = [Hit(i, p.paper_id, p.title, 1.0, p.abstract[:300]) for i, p in enumerate(chosen, 1)]
            return _Found(self._number(hits, use_llm), hits, None, 0, self._retriever.embed_query(query), listing)
        k = top_k or (self.settings.list_top_k if listing else self.settings.answer_top_k)
        found = self._retriever.retrieve(query, list_pool(k) if listing else k, mode)
        hits = found.hits
        qv = self._retriever.embed_query(query)
        judged = hits if listing else hits[:TOP_PAPERS]
        sims = self._sentences.best_similarity(qv, [self._index.paper(h.paper_id) for h in judged])
        verdict = self._abstention.judge(
            features(query, found.top_similarity, [h.paper_id for h in hits], self._index, sims[:TOP_PAPERS])
        )
        more, second = 0, []
        if listing and hits:
            probs = self._relevance.probabilities(paper_features(query, hits, self._index, sims))
            first, second, more = self._relevance.tiers(hits, probs, k)
            if use_llm or restrict is not None:
                second = []  # the second tier is the offline answer's: an LLM answers from what passed
            hits = [Hit(i, h.paper_id, h.title, h.score, h.snippet, h.similarity)
                    for i, h in enumerate(first + second, 1)]
        if restrict is not None:
            hits = _restricted(hits, restrict, self._index, k)
        return _Found(self._number(hits, use_llm), hits, verdict, more, qv, listing, second_tier=len(second))

    def _routed_statement(self, question: str, route: Route, plan: _Plan, top_k, mode, run: "_Run") -> Answer:
        """An answer that is a statement, not quotes: a named thing no paper mentions, metadata the index does not
        hold, or a follow-up none of whose papers carries what it asks. The closest papers are listed."""
        t0 = time.perf_counter()
        if route.final is not None:
            related = [p for p in (self._index.get(pid) for pid in route.related) if p is not None]
            if not related:
                related = [self._index.paper(h.paper_id) for h in self._retriever.search(question, 3, mode)]
            hits = [Hit(i, p.paper_id, p.title, 0.0, "") for i, p in enumerate(related[:3], 1)]
            level = {"level": "abstain", "reason": route.final}
            base = dict(question=question, judgement=level, stages=run.stages, referent=route.referent,
                        names=route.names.to_dict() if route.names is not None else None)
            answer = self._abstain(base, hits, plan, (time.perf_counter() - t0) * 1000, run.started)
            answer.answer = route.final
            return answer
        text = " ".join(part for part in (route.lead, route.empty_note) if part)
        return Answer(question=question, answer=text, mode="extractive" if not plan.use_llm else "llm",
                      abstained=False, notice=plan.notice, referent=route.referent,
                      judgement={"level": "answer", "reason": route.empty_note}, stages=run.stages,
                      timings_ms=_timings((time.perf_counter() - t0) * 1000, None, run.started))

    def _gather_with_evidence(self, query: str, top_k, mode, listing: bool, run: "_Run"):
        """With an LLM: retrieve a pool, let the LLM judge each paper (rag.judge.llm_evidence), keep the papers that pass.
        A generator (it reports stages); returns None when the evidence step failed as a whole."""
        k = top_k or (self.settings.list_top_k if listing else self.settings.answer_top_k)
        n = max(k, self.settings.evidence_list_n if listing else self.settings.evidence_n)
        found = self._retrieve(query, n, mode, run)
        papers = [self._index.paper(h.paper_id) for h in found.hits]
        yield StreamEvent("stage", f"judging {len(papers)} papers…")
        stage = run.stage("evidence")
        progress: list[tuple[int, int, int]] = []
        # the step may use EVIDENCE_SHARE of the time left, so a slow paper cannot starve the answer call
        until = time.monotonic() + max(0.0, run.deadline - time.monotonic()) * EVIDENCE_SHARE
        result = self._evidence.judge(query, papers, until, count_tokens=self._count,
                                      progress=lambda done, total, relevant: progress.append((done, total, relevant)))
        stage.stage.calls += result.calls
        stage.stage.prompt_tokens += result.prompt_tokens
        stage.stage.completion_tokens += result.completion_tokens
        stage.finish()
        cut = self.settings.evidence_min_relevance
        passed = [j for j in result.judged if j.passed(cut)]
        yield StreamEvent("stage", f"judging {len(papers)} papers… {len(passed)} relevant")
        if not result.usable(self.settings.evidence_max_invalid):
            why = (f"{result.invalid} of {result.calls} replies were not usable judgements" if result.invalid
                   else next((j.error for j in result.judged if j.error), "no paper was judged"))
            run.evidence_notice = f"The LLM evidence step failed ({why}): relevance was judged offline."
            run.evidence_unreachable = bool(result.judged) and all(j.error for j in result.judged)
            return None
        if not passed and result.unanswered:
            run.evidence_notice = (f"The LLM evidence step judged only {len(papers) - result.unanswered} of "
                                   f"{len(papers)} papers, none relevant: relevance was judged offline.")
            return None
        partial = (f"The LLM judged {len(papers) - result.unanswered} of {len(papers)} papers in time; "
                   "the answer uses those." if result.unanswered else None)
        by_id = {h.paper_id: h for h in found.hits}
        shown = passed if listing and top_k is None else passed[:k]  # a list names every paper that passed
        hits = []
        for i, j in enumerate(shown, 1):
            j.n = i
            h = by_id[j.paper_id]
            hits.append(Hit(i, h.paper_id, h.title, h.score, j.quotes[0] if j.quotes else h.snippet, h.similarity))
        related = found.hits if not passed else hits
        outcome = _EvidenceOutcome("abstain" if not passed else "answer", len(passed), len(result.judged),
                                   max((j.relevance for j in result.judged if j.valid), default=0))
        # every passed paper is a source: the prompt holds its summary and quotes, not its abstract
        found_ = _Found(self._number(hits, False), related, None, len(passed) - len(shown),
                        self._retriever.embed_query(query), listing, evidence=result.judged, passed=shown,
                        evidence_outcome=outcome)
        if partial:
            run.notes.append(partial)
        return found_

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
            sources.append(Source(i, hit.paper_id, hit.title, hit.snippet, hit.score, paper.abstract, paper.url,
                                  hit.similarity))
        return sources

    def _extractive(self, question, found: "_Found", base, plan, t_retrieve, t1, started) -> Answer:
        listing = found.listing
        sources = found.sources
        sentences = self._sentences.of([self._index.paper(s.paper_id) for s in sources])
        extract = self._extractor.answer(question, sources, listing, sentences, found.query_vector)
        if extract is None:
            return self._abstain(base, found.hits, plan, t_retrieve, started, t1, mode="extractive")
        text, also, lead = extract.text, [], None
        if found.verdict is not None and found.verdict.level == ANSWER:
            # judged answerable from the papers, but does any quoted sentence carry what is asked?
            support = quote_support(question, extract.quotes, {s.paper_id: ps for s, ps in zip(sources, sentences)},
                                    found.query_vector, self._index)
            base = dict(base, judgement=dict(base["judgement"] or {}, support=support.to_dict()))
            if self._support is not None and not self._support.supported(support):
                base["judgement"].update(level=LOW, reason=self._support.reason(support))
                plan = _Plan(plan.use_llm, _join(LOW_CONFIDENCE, plan.notice))
                lead = UNSUPPORTED
        if listing and found.second_tier:
            # one bullet per source in order: the last `second_tier` are "also possibly relevant"
            first_n = {s.n for s in sources[: len(sources) - found.second_tier]}
            lines = text.split("\n")
            tier1 = [line for line, n in zip(lines, extract.cited) if n in first_n]
            tier2 = [line for line, n in zip(lines, extract.cited) if n not in first_n]
            text = "\n".join(tier1) + ("\n\n" + ALSO_RELEVANT + "\n" + "\n".join(tier2) if tier2 else "")
            also = [{"n": s.n, "paper_id": s.paper_id, "title": s.title} for s in sources
                    if s.n in extract.cited and s.n not in first_n]
        also_ids = {a["n"] for a in also}
        citations = [{"n": s.n, "paper_id": s.paper_id, "title": s.title} for s in sources
                     if s.n in extract.cited and s.n not in also_ids]
        if lead:
            text = f"{lead}\n\n{text}"
        return Answer(answer=text, mode="extractive", abstained=False, citations=citations, also_relevant=also,
                      shape="list" if listing else "specific",
                      notice=_join(plan.notice, more_note(found.more) if listing else None),
                      quotes=extract.quotes, timings_ms=_timings(t_retrieve, t1, started), **base)

    def _from_llm(self, text, base, hits, plan, t_retrieve, t1, started) -> Answer:
        if _says_not_found(text):
            # "The papers do not answer this. However, [2] …": an abstention; the papers it mentions come first
            by_n = {s.n: s.paper_id for s in base["sources"]}
            first = [by_n[n] for n in cited_numbers(text) if n in by_n]
            related = sorted(hits, key=lambda h: first.index(h.paper_id) if h.paper_id in first else len(first))
            return self._abstain(base, related, plan, t_retrieve, started, t1, mode="llm")
        valid = {s.n: s for s in base["sources"]}
        invalid = _flag(text, valid, judged=bool(base["evidence"]))
        first = verify(text, valid)
        if first.invalid:
            log.warning("removed %d citation(s) that name no source", first.invalid)
        named = check_names(first.text, self._named(base["sources"]))
        checked = verify(named.text, valid)
        flagged_already = {f["sentence"] for f in invalid + named.flagged}
        unbacked = [f for f in unsupported(checked.text, {s.n: f"{s.title}\n{s.abstract}" for s in base["sources"]
                                                          if s.abstract})
                    if f["sentence"] not in flagged_already]
        notes = [
            (f"{_sentences(invalid)} cited a paper that "
             f"{'did not pass the evidence check' if base['evidence'] else 'is not a source'}: "
             "the citation was removed and the sentence is flagged.") if invalid else None,
            (f"{_sentences(named.flagged)} named a paper that is not among the sources: its citation was removed "
             "and the sentence is flagged.") if named.flagged else None,
            (f"{_sentences(unbacked)} said what the abstract {'it cites does' if len(unbacked) == 1 else 'they cite do'}"
             " not say (flagged).") if unbacked else None,
        ]
        return Answer(answer=checked.text, mode="llm", abstained=False, citations=checked.citations,
                      notice=_join(plan.notice, more_note(base["more_papers"]), *notes),
                      flagged=invalid + named.flagged + unbacked, invalid_citations=first.invalid,
                      timings_ms=_timings(t_retrieve, t1, started), **base)

    def _abstain(self, base, hits, plan, t_retrieve, started, t1=None, mode=None) -> Answer:
        related = [{"paper_id": h.paper_id, "title": h.title} for h in hits[:3]]
        return Answer(answer=NOT_IN_CORPUS, mode=mode or ("llm" if plan.use_llm else "extractive"),
                      abstained=True, notice=plan.notice, possibly_related=related,
                      timings_ms=_timings(t_retrieve, t1, started), **base)


class _StageClock:
    """Accumulates one Stage: calls and tokens (from the server's usage, else counted) and wall time."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self._began = time.perf_counter()
        self._reported = False

    def usage(self, prompt_tokens, completion_tokens) -> None:
        self.stage.calls += 1
        self.stage.prompt_tokens += prompt_tokens or 0
        self.stage.completion_tokens += completion_tokens or 0
        self._reported = True

    def finish(self, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        if not self._reported and prompt_tokens is not None:  # the server reported no usage: counted here
            self.stage.calls += 1
            self.stage.prompt_tokens += prompt_tokens
            self.stage.completion_tokens += completion_tokens or 0
        self.stage.ms += (time.perf_counter() - self._began) * 1000
        self._began = time.perf_counter()


@dataclass
class _Run:
    """One answer's shared state: its LLM deadline and the cost of each stage."""

    started: float
    deadline: float
    stages: list[Stage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence_notice: str | None = None
    evidence_unreachable: bool = False

    def stage(self, name: str) -> _StageClock:
        found = next((s for s in self.stages if s.name == name), None)
        if found is None:
            found = Stage(name)
            self.stages.append(found)
        return _StageClock(found)


@dataclass(frozen=True)
class _EvidenceOutcome:
    """The LLM evidence step's decision: answer or abstain, from how many of the judged papers passed."""

    level: str
    passed: int
    judged: int
    best: int

    def to_dict(self) -> dict:
        return {"level": self.level, "source": "llm-evidence", "passed": self.passed, "judged": self.judged,
                "best_relevance": self.best}


@dataclass
class _Found:
    """What gathering found: the numbered sources, their hits, the offline abstention verdict (None when scoped
    to papers or judged by the LLM), how many more list papers passed than are shown, the query's vector, and
    the LLM's judgements when the evidence step ran."""

    sources: list[Source]
    hits: list[Hit]
    verdict: AbstentionVerdict | None
    more: int
    query_vector: object
    listing: bool
    evidence: list | None = None
    passed: list | None = None
    evidence_outcome: _EvidenceOutcome | None = None
    second_tier: int = 0  # the last sources of a list: "also possibly relevant"

    @property
    def abstain(self) -> bool:
        if self.evidence_outcome is not None:
            return self.evidence_outcome.level == "abstain"
        return self.verdict is not None and self.verdict.abstain

    def judgement_dict(self) -> dict | None:
        """The answer's `judgement` field: the evidence outcome, or the abstention verdict."""
        if self.evidence_outcome is not None:
            return self.evidence_outcome.to_dict()
        return self.verdict.to_dict() if self.verdict else None


def _papers_of(previous: Answer | list[str] | None) -> list[str] | None:
    if previous is None:
        return None
    return previous.papers() if isinstance(previous, Answer) else [str(p) for p in previous]


def _restricted(hits: list[Hit], allowed: list[str], index, k: int) -> list[Hit]:
    """The hits whose paper is allowed; if retrieval found none of them, the allowed papers themselves."""
    keep = set(allowed)
    chosen = [h for h in hits if h.paper_id in keep]
    if not chosen:
        papers = [p for p in (index.get(pid) for pid in allowed[:k]) if p is not None]
        chosen = [Hit(0, p.paper_id, p.title, 0.0, p.abstract[:300]) for p in papers]
    return [Hit(i, h.paper_id, h.title, h.score, h.snippet, h.similarity) for i, h in enumerate(chosen, 1)]


def _flag(text: str, valid: dict, judged: bool) -> list[dict]:
    """The answer's sentences that cite a number naming no source: with the evidence step, a paper that did
    not pass it (only passed papers are sources)."""
    out = []
    for claim in claims(text):
        bad = [n for n in claim.refs if n not in valid]
        if bad:
            what = "did not pass the evidence check" if judged else "is not among the sources"
            out.append({"sentence": claim.text, "cited": bad, "kind": "invalid_citation",
                        "reason": f"cites {', '.join(f'[{n}]' for n in bad)}, which {what}"})
    return out


def _sentences(flags: list) -> str:
    return f"{len(flags)} sentence{'s' if len(flags) > 1 else ''}"


def _low(plan: _Plan) -> str | None:
    return LOW_CONFIDENCE if LOW_CONFIDENCE in (plan.notice or "") else None


def more_note(more: int) -> str | None:
    """What a list answer says when more papers passed the relevance check than it shows."""
    if not more:
        return None
    return f"{more} more paper{'s' if more > 1 else ''} passed the relevance check: raise top-k to list {'them' if more > 1 else 'it'}."


def _join(*notices: str | None) -> str | None:
    parts = [n for n in notices if n]
    return " ".join(parts) if parts else None


def _evidence_cache_path(settings) -> Path | None:
    """The evidence cache, unless it would live in a data dir that does not exist (no index: nothing to cache)."""
    path = settings.evidence_cache_file()
    return path if settings.evidence_cache_path or path.parent.is_dir() else None


def _embed_cache_path(settings) -> Path | None:
    """The embedding cache ingest wrote (sentence vectors join it), if the index has one."""
    path = settings.embed_cache_file()
    return path if path.exists() else None


# The opening sentence of a reply that declines: "The indexed papers do not answer this.", "The provided sources
# do not contain information about …", "None of the papers addresses …" (whatever follows, e.g. "However, [2] …").
_DECLINES = re.compile(
    r"^(?:(?:the|these|those)\s+)?(?:(?:indexed|provided|given|retrieved|available|cited)\s+"
    r"(?:papers?|sources?|abstracts?|documents?|context)|papers|sources|abstracts|documents|context)"
    r"(?:\s+(?:here|above|provided|given|listed|retrieved|available|you\s+gave))?"
    r"\s+(?:do|does|did|can|could)\s*(?:not|n't)\s+(?:directly\s+|explicitly\s+|specifically\s+|fully\s+)?"
    r"(?:answer|address|contain\s+(?:an\s+answer|(?:any\s+|enough\s+|specific\s+|sufficient\s+)?information)"
    r"|provide\s+(?:an\s+answer|(?:any\s+|enough\s+|specific\s+|sufficient\s+)?information))\b"
    r"|^none\s+of\s+the\s+(?:\w+\s+)?(?:papers|sources|abstracts)\s+(?:directly\s+)?(?:answers?|address(?:es)?)\b",
    re.I,
)


def _says_not_found(text: str) -> bool:
    """The reply declines: the not-found sentence, or an opening sentence saying the papers do not answer (a
    hedge after it, "However, [2] discusses …", does not make it an answer)."""
    norm = " ".join(text.split()).lstrip("*_# ").strip()
    if norm.lower().startswith(NOT_IN_CORPUS.lower().strip(" .")):
        return True
    return bool(_DECLINES.match(norm))


def _timings(t_retrieve: float, t1: float | None, started: float) -> dict:
    now = time.perf_counter()
    return {
        "retrieve": round(t_retrieve, 1),
        "generate": round((now - t1) * 1000, 1) if t1 is not None else 0.0,
        "total": round((now - started) * 1000, 1),
    }
