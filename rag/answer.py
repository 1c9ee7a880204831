"""Grounded answers: retrieve, then generate with an LLM (streaming) or extract quoted sentences.

Every `[n]` marker is verified against the numbered sources; invalid ones are removed and counted,
so `citations` only ever lists real, retrieved papers. With no LLM endpoint, after the last retry,
or when asked, the answer is extractive (verbatim abstract sentences, each cited) with a `notice`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rag.chunking import content_terms, count_tokens, encoding, matched_terms, split_sentences
from rag.errors import LLMError, QuestionError
from rag.prompts import NOT_IN_CORPUS, load_prompts
from rag.records import Answer, Hit, Source

log = logging.getLogger(__name__)

_CITE_ITEM = r"\d+(?:\s*[-–]\s*\d+)?"  # a number or a range such as 2-4
_CITATION = re.compile(rf"\[({_CITE_ITEM}(?:\s*[,;]\s*{_CITE_ITEM})*)\]")
_LIST_QUESTION = re.compile(
    r"^\s*(which|what|list|find|show|any|name|give)\b.*\b(papers?|works?|methods?|approaches|studies|articles)\b"
    r"|^\s*(papers?|works?|research|methods?|approaches)\b"
    r"|\b(papers?|works?)\s+(on|about|that|which|using|for|proposing)\b",
    re.I,
)
_FOLLOW_UP = re.compile(
    r"\b(them|they|those|these|their|it|its|this|that one|the (first|second|third|last|former|latter|above))\b"
    r"|^\s*(and|what about|how about|also|which of)\b",
    re.I,
)
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
class StreamEvent:
    """`token`: text to append; `reset`: discard what was streamed; `final`: the verified answer."""

    kind: str
    text: str = ""
    answer: Answer | None = None


def verify_citations(text: str, sources: list[Source]) -> tuple[str, list[dict], int]:
    """Drop `[n]` markers that name no source; return (clean text, cited sources, invalid count)."""
    valid = {s.n: s for s in sources}
    invalid = 0
    cited: list[int] = []

    def fix(match: re.Match) -> str:
        nonlocal invalid
        keep = []
        for part in re.split(r"\s*[,;]\s*", match.group(1)):
            lo, _, hi = re.sub(r"\s*[-–]\s*", "-", part).partition("-")
            lo, hi = int(lo), int(hi or lo)
            if hi < lo or hi - lo > 50:  # not a sensible range of sources
                invalid += 1
                continue
            for n in range(lo, hi + 1):
                if n in valid:
                    keep.append(n)
                    if n not in cited:
                        cited.append(n)
                else:
                    invalid += 1
        return "[" + ", ".join(str(n) for n in keep) + "]" if keep else ""

    clean = _CITATION.sub(fix, text)
    clean = re.sub(r"[ \t]+([.,;:])", r"\1", clean)
    clean = re.sub(r"[ \t]{2,}", " ", clean).strip()
    citations = [{"n": n, "paper_id": valid[n].paper_id, "title": valid[n].title} for n in sorted(cited)]
    return clean, citations, invalid


LIST_KEEP_RATIO = 0.5  # dev set: citation precision 0.68 -> 0.69, recall 0.79 -> 0.78 (drops papers sharing no topic)


class Extractor:
    """Picks the abstract sentences most relevant to a question (lexical, stemmed, idf-weighted)."""

    def rank(self, question: str, sources: list[Source]) -> list[tuple[float, Source, str]]:
        import math

        q_terms = set(content_terms(question))
        rows = []
        for src in sources:
            for pos, sentence in enumerate(split_sentences(src.abstract)):
                rows.append((src, pos, sentence, set(content_terms(sentence))))
        if not rows:
            return []
        df: dict[str, int] = {}
        for *_, terms in rows:
            for t in terms:
                df[t] = df.get(t, 0) + 1
        n = len(rows)
        scored = []
        for src, pos, sentence, terms in rows:
            lexical = sum(math.log(1 + n / df[t]) for t in q_terms & terms)
            in_snippet = 0.5 if sentence[:60] in src.snippet else 0.0
            position = 0.3 / (1 + pos)  # opening sentences tend to state the topic
            scored.append((lexical + in_snippet + position, src, sentence))
        scored.sort(key=lambda r: r[0], reverse=True)
        return scored

    def answer(self, question: str, sources: list[Source], keep: set[int] | None = None) -> tuple[str, list[int]]:
        """Markdown bullets of quoted sentences, and the source numbers they cite."""
        ranked = self.rank(question, sources)
        if not ranked:
            return NOT_IN_CORPUS, []
        if is_list_question(question):
            best: dict[int, tuple[float, Source, str]] = {}
            for row in ranked:
                best.setdefault(row[1].n, row)
            if keep is not None:  # papers judged relevant enough to list; always the top one
                best = {n: row for n, row in best.items() if n in keep or n == min(best)}
            rows = sorted(best.values(), key=lambda r: r[1].n)
            lines = [f"- **{src.title}** — {sentence} [{src.n}]" for _, src, sentence in rows]
            return "\n".join(lines), [src.n for _, src, _ in rows]
        picked = ranked[:3]
        by_paper: dict[int, list[str]] = {}
        for _, src, sentence in picked:
            by_paper.setdefault(src.n, []).append(sentence)
        lines = []
        for n in sorted(by_paper, key=lambda n: min(i for i, r in enumerate(picked) if r[1].n == n)):
            src = next(s for s in sources if s.n == n)
            lines.append(f"- **{src.title}** — " + " ".join(f"{s} [{n}]" for s in by_paper[n]))
        return "\n".join(lines), sorted(by_paper)


class Assistant:
    """Question in, verified `Answer` out. The same record for CLI, Python API and UI."""

    def __init__(self, settings, retriever, llm=None, prompts=None):
        self.settings = settings
        self.retriever = retriever
        self.llm = llm
        self.prompts = prompts or load_prompts()
        self.extractor = Extractor()
        try:
            self._enc = encoding_for_model(settings.llm_model)
        except Exception:
            self._enc = encoding(settings.tokenizer)

    @classmethod
    def from_settings(cls, settings=None, retriever=None, llm=None) -> "Assistant":
        from rag.llm import OpenAIChatLLM
        from rag.retrieve import Retriever
        from rag.settings import load_settings

        settings = settings or load_settings()
        prompts = load_prompts()  # fail fast on a broken prompt file, before loading the model
        retriever = retriever or Retriever(settings)
        if llm is None and settings.llm_configured:
            llm = OpenAIChatLLM.from_settings(settings)
        return cls(settings, retriever, llm, prompts)

    # -- public API -------------------------------------------------------------------------

    def ask(self, question: str, history: list[dict] | None = None, **kw) -> Answer:
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
        started = time.perf_counter()
        question = check_question(question, self.settings.max_question_chars)
        history = self._trim_history(history or [])
        use_llm = self.llm is not None and not extractive
        notice = None
        if not use_llm:
            notice = (
                "Extractive answer: sentences quoted from the abstracts (extractive mode requested)."
                if extractive
                else "Extractive answer: sentences quoted from the abstracts. No LLM endpoint is configured: "
                "set RAG_LLM_BASE_URL for generated answers."
            )

        standalone, failure = self._standalone(question, history, use_llm)
        if failure is not None and failure.transient:  # unreachable or overloaded after its retries: don't wait twice
            use_llm = False
            notice = f"{failure}. Showing an extractive answer instead (sentences quoted from the abstracts)."
        t0 = time.perf_counter()
        sources, top_sim, hits = self._sources(standalone, top_k, mode, paper_ids)
        t_retrieve = (time.perf_counter() - t0) * 1000

        base = dict(question=question, sources=sources, standalone_question=standalone if standalone != question else None)
        if paper_ids is None and self._should_abstain(standalone, top_sim, hits):
            yield StreamEvent("final", answer=self._abstain(base, hits, "llm" if use_llm else "extractive", notice, t_retrieve, started))
            return

        t1 = time.perf_counter()
        text, mode_used, quoted_from = None, "extractive", []
        if use_llm:
            streamed = False
            try:
                parts = []
                for token in self.llm.stream(self._messages(question, sources, history)):
                    parts.append(token)
                    streamed = True
                    yield StreamEvent("token", token)
                text, mode_used = "".join(parts), "llm"
                if not text.strip():  # an empty reply is no answer: fall back like a failure
                    if streamed:
                        yield StreamEvent("reset")
                    text, mode_used, quoted_from = None, "extractive", []
                    notice = "The LLM returned an empty answer. Showing an extractive answer instead (sentences quoted from the abstracts)."
            except LLMError as exc:
                log.warning("LLM failed: %s", exc)
                if streamed:
                    yield StreamEvent("reset")
                notice = f"{exc}. Showing an extractive answer instead (sentences quoted from the abstracts)."
        if text is None:
            text, quoted_from = self.extractor.answer(question, sources, self._list_keep(standalone, sources))
            yield StreamEvent("token", text)
        t_generate = (time.perf_counter() - t1) * 1000

        if _says_not_found(text):
            yield StreamEvent("final", answer=self._abstain(base, hits, mode_used, notice, t_retrieve, started, t_generate))
            return
        if mode_used == "extractive":
            # Cited by construction; quoted abstract text may itself contain "[12]", which is not a citation.
            clean, invalid = text, 0
            citations = [{"n": s.n, "paper_id": s.paper_id, "title": s.title} for s in sources if s.n in quoted_from]
        else:
            clean, citations, invalid = verify_citations(text, sources)
        if invalid:
            log.warning("removed %d citation(s) that name no source", invalid)
        answer = Answer(
            answer=clean,
            mode=mode_used,
            abstained=False,
            citations=citations,
            notice=notice,
            invalid_citations=invalid,
            timings_ms=_timings(t_retrieve, t_generate, started),
            **base,
        )
        yield StreamEvent("final", answer=answer)

    # -- steps ------------------------------------------------------------------------------

    def _sources(self, query: str, top_k, mode, paper_ids) -> tuple[list[Source], float | None, list[Hit]]:
        papers = self.retriever.papers
        if paper_ids:
            chosen = [papers[p] for p in paper_ids if p in papers]
            if not chosen:
                raise QuestionError("none of the selected papers is in the index: pick a paper from the Papers list")
            hits = [Hit(i, p.paper_id, p.title, 1.0, p.abstract[:300]) for i, p in enumerate(chosen, 1)]
            top_sim = None
        else:
            k = top_k or self.settings.answer_top_k
            qv = self.retriever.embed_query(query)
            found = self.retriever.retrieve(query, k, mode, query_vec=qv)
            hits, top_sim = found.hits, found.top_similarity
        sources, used = [], 0
        fmt = self.prompts["source"]
        for i, hit in enumerate(hits, start=1):
            abstract = papers[hit.paper_id].abstract
            block = fmt.render(n=i, title=hit.title, abstract=abstract)
            cost = len(self._enc.encode(block, disallowed_special=()))
            if used + cost > self.settings.context_tokens and sources:
                break  # token budget: keep the best-ranked sources whole
            used += cost
            sources.append(Source(i, hit.paper_id, hit.title, hit.snippet, hit.score, abstract))
        return sources, top_sim, hits

    def _list_keep(self, query: str, sources: list[Source]) -> set[int]:
        """Sources worth a bullet in an extractive list: their abstract covers most of what the best one covers."""
        cov = {s.n: self.coverage(query, [s.paper_id]) for s in sources}
        top = max(cov.values(), default=0.0)
        return {n for n, c in cov.items() if c >= LIST_KEEP_RATIO * top}

    def _should_abstain(self, query: str, top_sim: float | None, hits: list[Hit]) -> bool:
        """Nothing relevant enough: a low best similarity, or a middling one with the question's
        distinctive terms missing from the top papers (calibrated on the dev set: eval/calibrate.py)."""
        if not hits:
            return True
        if top_sim is None:
            return False
        if top_sim < self.settings.abstain_threshold:
            return True
        if top_sim >= self.settings.abstain_sim:
            return False
        return self.coverage(query, [h.paper_id for h in hits[:3]]) < self.settings.abstain_coverage

    def coverage(self, query: str, paper_ids: list[str]) -> float:
        """Share of the question's idf-weighted content terms found in the best of these papers."""
        terms = set(content_terms(query))
        if not terms:
            return 1.0
        idf = self.retriever.idf
        total = sum(idf(t) for t in terms)
        best = 0.0
        for pid in paper_ids:
            paper = self.retriever.papers[pid]
            present = matched_terms(terms, set(content_terms(paper.title + " " + paper.abstract)))
            best = max(best, sum(idf(t) for t in present) / total)
        return best

    def _messages(self, question: str, sources: list[Source], history: list[dict]) -> list[dict]:
        fmt = self.prompts["source"]
        blocks = "\n".join(fmt.render(n=s.n, title=s.title, abstract=s.abstract) for s in sources)
        system = self.prompts["system"].render(not_found_phrase=NOT_IN_CORPUS)
        user = self.prompts["answer"].render(question=question, sources=blocks, not_found_phrase=NOT_IN_CORPUS)
        return [{"role": "system", "content": system}, *history, {"role": "user", "content": user}]

    def _standalone(self, question: str, history: list[dict], use_llm: bool) -> tuple[str, LLMError | None]:
        """Rewrite a follow-up into a standalone question (LLM if available, else a rule).

        Returns the question and, if the LLM failed, its error (so the answer does not wait on it twice).
        """
        previous = [m["content"] for m in history if m.get("role") == "user"]
        if not previous:
            return question, None
        failure = None
        if use_llm:
            convo = "\n".join(f"{m['role']}: {m['content']}" for m in history)
            try:
                rewritten = self.llm.complete(
                    [{"role": "user", "content": self.prompts["rewrite"].render(history=convo, question=question)}]
                ).strip()
                if rewritten:
                    return " ".join(rewritten.split())[: self.settings.max_question_chars], None
            except LLMError as exc:
                log.warning("follow-up rewrite failed, using the rule: %s", exc)
                failure = exc
        # The rule along the whole conversation, so a third-turn follow-up keeps the first topic.
        topic = previous[0]
        for earlier in previous[1:]:
            topic = rewrite_follow_up(earlier, topic)
        return rewrite_follow_up(question, topic)[: self.settings.max_question_chars], failure

    def _trim_history(self, history: list[dict]) -> list[dict]:
        """Keep the most recent messages that fit in `history_tokens`."""
        kept, used = [], 0
        for msg in reversed(history):
            if msg.get("role") not in ("user", "assistant") or not isinstance(msg.get("content"), str):
                continue
            cost = count_tokens(msg["content"], self.settings.tokenizer) + 4
            if used + cost > self.settings.history_tokens:
                break
            kept.append({"role": msg["role"], "content": msg["content"]})
            used += cost
        return list(reversed(kept))

    def _abstain(self, base, hits, mode, notice, t_retrieve, started, t_generate=0.0) -> Answer:
        related = [{"paper_id": h.paper_id, "title": h.title} for h in hits[:3]]
        return Answer(
            answer=NOT_IN_CORPUS,
            mode=mode,
            abstained=True,
            citations=[],
            notice=notice,
            possibly_related=related,
            timings_ms=_timings(t_retrieve, t_generate, started),
            **base,
        )


def rewrite_follow_up(question: str, previous_question: str) -> str:
    """Deterministic follow-up rule: a question that leans on the previous one carries its topic."""
    if _FOLLOW_UP.search(question) or len(question.split()) <= 4:
        return f"{question} (regarding: {previous_question})"
    return question


def _says_not_found(text: str) -> bool:
    norm = " ".join(text.lower().split()).strip(" .")
    phrase = NOT_IN_CORPUS.lower().strip(" .")
    return norm.startswith(phrase) and len(norm) < len(phrase) + 40


def _timings(t_retrieve: float, t_generate: float, started: float) -> dict:
    return {
        "retrieve": round(t_retrieve, 1),
        "generate": round(t_generate, 1),
        "total": round((time.perf_counter() - started) * 1000, 1),
    }


def encoding_for_model(model: str):
    import tiktoken

    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:
        return encoding("o200k_base" if model.startswith(("gpt-4o", "o1", "o3", "o4", "gpt-5")) else "cl100k_base")
