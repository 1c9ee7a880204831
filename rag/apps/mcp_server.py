"""`rag mcp`: the index as Model Context Protocol tools over stdio, for assistants such as Claude
Desktop or an IDE agent.

Tools: `search_papers(query, top_k)`, `ask(question)` (the cited answer, its sources and notice) and
`get_paper(paper_id)`. Stdout carries the protocol only; logs go to stderr.
"""

from __future__ import annotations

import logging

from rag import __version__
from rag.errors import RagError

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Paper RAG answers questions about the machine-learning paper abstracts in its index. Use search_papers to "
    "find papers, ask for a short answer that cites paper titles as [n] (or says the papers do not answer it), "
    "and get_paper for a paper's full abstract and links."
)
MAX_TOP_K = 50


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

    @server.tool()
    def ask(question: str) -> dict:
        """Answer a question from the indexed abstracts. The answer cites sources as [n]; `citations` maps n to
        paper titles; `abstained` is true when the papers do not answer it (then `possibly_related` lists the
        closest papers); `notice` says how the answer was made (e.g. extractive, no LLM configured)."""
        try:
            answer = assistant.ask(question)
        except Exception as exc:  # noqa: BLE001
            raise fail(exc) from None
        return {
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
