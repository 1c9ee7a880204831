"""llama-index adapters: use Paper RAG's hybrid retriever and verified, cited answers inside llama-index
pipelines.

    from rag.apps.llama_index import PaperRetriever, PaperQueryEngine

    retriever = PaperRetriever.from_settings(top_k=5)          # a llama-index BaseRetriever
    nodes = retriever.retrieve("concept erasure in diffusion models")
    engine = PaperQueryEngine.from_settings()                  # a llama-index query engine
    response = engine.query("which papers erase concepts in diffusion models?")
    response.source_nodes, response.metadata["citations"]
    chat = engine.as_chat_engine()                             # multi-turn, follow-ups rewritten

Models and settings are passed in explicitly; llama-index's global `Settings` is never read or set.
Scores: `NodeWithScore.score` is the paper's best dense cosine similarity to the question (the fused
RRF score, which only orders, is in `metadata["rank_score"]`), unlike `ChromaVectorStore`'s
exp(-distance).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import Field
from llama_index.core.chat_engine.types import (
    AgentChatResponse,
    BaseChatEngine,
    StreamingAgentChatResponse,
)
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rag.records import Answer, Hit, Paper


def paper_node(paper: Paper, score: float | None, **extra) -> NodeWithScore:
    """A paper as a llama-index node: the abstract as text, the paper's identity and links as metadata."""
    metadata = {
        "paper_id": paper.paper_id,
        "title": paper.title,
        "url": paper.url,
        "code_urls": list(paper.code_urls),
        "date": paper.date,
        **extra,
    }
    node = TextNode(id_=paper.paper_id, text=paper.abstract, metadata=metadata,
                    excluded_embed_metadata_keys=list(metadata), excluded_llm_metadata_keys=["paper_id", "code_urls"])
    return NodeWithScore(node=node, score=score)


class PaperRetriever(BaseRetriever):
    """Paper RAG's hybrid (dense + BM25, RRF-fused) paper search as a llama-index retriever."""

    def __init__(self, retriever, top_k: int = 10, mode: str | None = None, callback_manager=None):
        super().__init__(callback_manager=callback_manager)
        self._retriever = retriever
        self._top_k = top_k
        self._mode = mode

    @classmethod
    def from_settings(cls, top_k: int = 10, mode: str | None = None, **overrides) -> "PaperRetriever":
        """Open the index named by the RAG_* environment (plus `overrides`, e.g. data_dir=...)."""
        from rag.retrieve.hybrid import Retriever
        from rag.settings import load_settings

        return cls(Retriever.from_settings(load_settings(**overrides)), top_k=top_k, mode=mode)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        found = self._retriever.retrieve(query_bundle.query_str, self._top_k, self._mode)
        return [self._node(hit) for hit in found.hits]

    def _node(self, hit: Hit) -> NodeWithScore:
        paper = self._retriever.index.paper(hit.paper_id)
        return paper_node(paper, hit.similarity, rank=hit.rank, rank_score=hit.score, snippet=hit.snippet)


def _source_nodes(assistant, answer: Answer) -> list[NodeWithScore]:
    cited = {c["n"] for c in answer.citations}
    nodes = []
    for s in answer.sources:
        paper = assistant.paper(s.paper_id)
        if paper is not None:
            nodes.append(paper_node(paper, s.score, n=s.n, cited=s.n in cited, snippet=s.snippet))
    return nodes


def _metadata(answer: Answer) -> dict:
    return {
        "citations": answer.citations,
        "abstained": answer.abstained,
        "notice": answer.notice,
        "mode": answer.mode,
        "standalone_question": answer.standalone_question,
        "possibly_related": answer.possibly_related,
        "quotes": [q.to_dict() for q in answer.quotes],
        "confidence": answer.confidence(),
        "papers": answer.papers(),
        "referent": answer.referent,
    }


class PaperQueryEngine(CustomQueryEngine):
    """Verified, cited answers (LLM or extractive) as a llama-index query engine.

    `Response.source_nodes` are the numbered sources the answer could cite (metadata `n`, `cited`);
    `Response.metadata` holds `citations`, `abstained` and `notice`.
    """

    assistant: Any = Field(description="A rag.answer.assistant.Assistant.")
    top_k: int | None = Field(default=None, description="Papers given to the answerer (default RAG_ANSWER_TOP_K).")
    mode: str | None = Field(default=None, description="Retrieval mode: hybrid, dense or bm25.")
    extractive: bool = Field(default=False, description="Quote sentences even if an LLM is configured.")

    @classmethod
    def from_settings(cls, top_k: int | None = None, mode: str | None = None, extractive: bool = False,
                      **overrides) -> "PaperQueryEngine":
        """An engine over the index named by the RAG_* environment (plus `overrides`)."""
        from rag.answer.assistant import Assistant

        return cls(assistant=Assistant.from_settings(**overrides), top_k=top_k, mode=mode, extractive=extractive)

    def answer(self, question: str, history: list[dict] | None = None, previous: Answer | None = None) -> Answer:
        return self.assistant.ask(question, history=history, top_k=self.top_k, mode=self.mode,
                                  extractive=self.extractive, previous=previous)

    def custom_query(self, query_str: str) -> Response:
        answer = self.answer(query_str)
        return Response(response=answer.answer, source_nodes=_source_nodes(self.assistant, answer),
                        metadata=_metadata(answer))

    def as_chat_engine(self) -> "PaperChatEngine":
        """A chat engine over the same answerer: follow-ups ("which of them…") keep the conversation."""
        return PaperChatEngine(self)


class PaperChatEngine(BaseChatEngine):
    """Multi-turn use of PaperQueryEngine; the history is Paper RAG's own (trimmed to RAG_HISTORY_TOKENS).

    Answers are verified before they are shown, so `stream_chat` yields the verified answer.
    """

    def __init__(self, engine: PaperQueryEngine):
        self._engine = engine
        self._history: list[dict] = []
        self._previous: Answer | None = None  # what "them" and "the second one" refer to

    def reset(self) -> None:
        self._history = []
        self._previous = None

    @property
    def chat_history(self) -> list[ChatMessage]:
        role = {"user": MessageRole.USER, "assistant": MessageRole.ASSISTANT}
        return [ChatMessage(role=role[m["role"]], content=m["content"]) for m in self._history]

    def _turn(self, message: str, chat_history: list[ChatMessage] | None) -> Answer:
        if chat_history is not None:
            self._history = [{"role": str(m.role.value), "content": m.content or ""} for m in chat_history
                             if m.role in (MessageRole.USER, MessageRole.ASSISTANT)]
            self._previous = None  # a history given from outside carries no papers
        answer = self._engine.answer(message, history=list(self._history), previous=self._previous)
        self._history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer.answer}]
        self._previous = answer
        return answer

    def chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AgentChatResponse:
        answer = self._turn(message, chat_history)
        return AgentChatResponse(response=answer.answer, source_nodes=_source_nodes(self._engine.assistant, answer),
                                 metadata=_metadata(answer))

    def stream_chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> StreamingAgentChatResponse:
        answer = self._turn(message, chat_history)

        def gen() -> Generator[ChatResponse, None, None]:
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=answer.answer), delta=answer.answer)

        return StreamingAgentChatResponse(chat_stream=gen(), source_nodes=_source_nodes(self._engine.assistant, answer),
                                          is_writing_to_memory=False)

    async def achat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AgentChatResponse:
        return await asyncio.to_thread(self.chat, message, chat_history)

    async def astream_chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> StreamingAgentChatResponse:
        answer = await asyncio.to_thread(self._turn, message, chat_history)

        async def agen() -> AsyncGenerator[ChatResponse, None]:
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=answer.answer), delta=answer.answer)

        return StreamingAgentChatResponse(achat_stream=agen(), source_nodes=_source_nodes(self._engine.assistant, answer),
                                          is_writing_to_memory=False)
