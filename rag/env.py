"""Process-wide defaults for the entry points (CLI, UI, eval, MCP), never applied on import.

The library itself needs no environment variables (rag.token_counts loads tiktoken's files from llama-index,
the model loads from its local folder, Chroma gets telemetry off in its settings). These defaults make
the libraries underneath quiet and offline in a process that Paper RAG owns.
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # never reach the Hugging Face hub
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",  # Chroma
    "TOKENIZERS_PARALLELISM": "false",  # silence the fork warning of HF tokenizers
}


def configure_process() -> None:
    """Set the offline defaults for this process unless the user already chose otherwise."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
