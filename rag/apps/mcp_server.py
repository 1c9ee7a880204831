"""`rag mcp`: the index as Model Context Protocol tools over stdio, for assistants such as Claude
Desktop or an IDE agent.

Tools: `search_papers(query, top_k)`, `ask(question, previous_paper_ids, conversation_id)` (the cited answer,
its sources, confidence and notice; a follow-up such as "which of them …" or "the second one" is answered from
the previous answer's papers, given by id or kept under a conversation id) and `get_paper(paper_id)`. Stdout carries the protocol only; logs go to stderr.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict

from rag import __version__
from rag.errors import RagError

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Paper RAG answers questions about the machine-learning paper abstracts in its index. Use search_papers to "
    "find papers, ask for a short answer that cites paper titles as [n] (or says the papers do not answer it), "
    "and get_paper for a paper's full abstract and links."
)
MAX_TOP_K = 50
MAX_CONVERSATIONS = 256  # conversations whose last answer is kept (least recently used dropped first)


def build_server(assistant):
    """An MCPServer whose tools call `assistant` (a rag.answer.assistant.Assistant)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer(name="paper-rag", instructions=INSTRUCTIONS, version=__version__)

    def fail(exc: Exception):
        if not isinstance(exc, RagError):
            log.exception("tool failed")
            return ToolError(f"Paper RAG failed unexpectedly ({exc.__class__.__name__}); see the server log")
        return ToolError(str(exc))

    @server.tool()
    def search_papers(query: str, top_k: int = 10) -> dict:
        """Find the papers most relevant to a query (hybrid dense + keyword search), best first.

        Returns {"results": [{rank, paper_id, title, score, snippet}]}; use get_paper for a full abstract.
        """
        if not 1 <= top_k <= MAX_TOP_K:
            raise ToolError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        try:
            hits = assistant.search(query, top_k)
        except Exception as exc:  # noqa: BLE001 - the edge: a tool error, never a crash
            raise fail(exc) from None
        return {"results": [h.public() for h in hits]}

    conversations: OrderedDict[str, object] = OrderedDict()

    @server.tool()
    def ask(question: str, previous_paper_ids: list[str] | None = None, conversation_id: str | None = None) -> dict:
        """Answer a question from the indexed abstracts. The answer cites sources as [n]; `citations` maps n to
        paper titles; `abstained` is true when the papers do not answer it (then `possibly_related` lists the
        closest papers); `confidence` is {level: answer|low|abstain, reason}; `notice` says how the answer was
        made. Follow-ups ("which of them …", "the second one"): pass the previous answer's `papers` as
        `previous_paper_ids`, or the `conversation_id` a previous call returned."""
        previous = None
        if previous_paper_ids:
            previous = list(previous_paper_ids)
        elif conversation_id:
            previous = conversations.get(conversation_id)
            if previous is None:
                raise ToolError(f"no conversation {conversation_id!r} here (it may have expired): ask without it, or "
                                "pass previous_paper_ids")
        try:
            answer = assistant.ask(question, previous=previous)
        except Exception as exc:  # noqa: BLE001
            raise fail(exc) from None
        conversation_id = conversation_id or uuid.uuid4().hex
        conversations[conversation_id] = answer
        conversations.move_to_end(conversation_id)
        while len(conversations) > MAX_CONVERSATIONS:
            conversations.popitem(last=False)
        return {
            "conversation_id": conversation_id,
            "confidence": answer.confidence(),
            "papers": answer.papers(),
            "referent": answer.referent,
            "answer": answer.answer,
            "citations": answer.citations,
            "sources": [s.public() for s in answer.sources],
            "abstained": answer.abstained,
            "possibly_related": answer.possibly_related,
            "notice": answer.notice,
            "mode": answer.mode,
            "flagged": answer.flagged,
            "stages": [st.to_dict() for st in answer.stages],
        }

    @server.tool()
    def get_paper(paper_id: str) -> dict:
        """The full record of one paper: title, abstract, code links, paper URL, authors, date."""
        paper = assistant.paper(paper_id)
        if paper is None:
            raise ToolError(f"no paper with id {paper_id!r} in the index: use search_papers to find paper ids")
        return paper.to_dict()

    return server


def serve(settings) -> None:
    """Run the MCP server on stdio until the client disconnects."""
    from rag.answer.assistant import Assistant

    assistant = Assistant.from_settings(settings)
    build_server(assistant).run("stdio")
