"""Paper RAG: question answering over ML paper abstracts, with cited paper titles."""

from rag import _env

_env.configure()

__version__ = "0.1.0"
