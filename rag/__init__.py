"""Paper RAG: question answering over ML paper abstracts, with cited paper titles.

Importing the package has no side effects; entry points (CLI, UI, eval, MCP) configure the process
with `rag.env.configure_process()`.
"""

__version__ = "0.2.0"
