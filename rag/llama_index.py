"""The documented import path of the llama-index adapters (`rag.apps.llama_index`), kept for callers."""

from rag.apps.llama_index import PaperQueryEngine, PaperRetriever

__all__ = ["PaperQueryEngine", "PaperRetriever"]
