"""Token counting with tiktoken, offline.

tiktoken downloads its encodings unless TIKTOKEN_CACHE_DIR points at a copy. llama-index ships
cl100k_base and o200k_base; we build those encodings from its bundled files directly, so neither the
library nor the host process needs an environment variable (no side effects on import or use).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

from rag.errors import ConfigError

_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_LOCK = threading.Lock()


def bundled_cache_dir() -> Path | None:
    """llama-index's bundled tiktoken cache folder, if llama-index is installed."""
    spec = importlib.util.find_spec("llama_index.core")
    if spec is None or not spec.submodule_search_locations:
        return None
    cache = Path(next(iter(spec.submodule_search_locations))) / "_static" / "tiktoken_cache"
    return cache if cache.is_dir() else None


def _bundled_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    cache = bundled_cache_dir()
    path = cache / hashlib.sha1(url.encode()).hexdigest() if cache else None
    if path is None or not path.is_file():
        raise FileNotFoundError(url)
    data = path.read_bytes()
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"{path} does not match its expected hash")
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}


@lru_cache(maxsize=8)
def encoding(name: str = "cl100k_base"):
    """The tiktoken encoding `name`, from llama-index's bundled files when tiktoken has no cache of its own."""
    import tiktoken

    if os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR"):
        return tiktoken.get_encoding(name)
    from unittest import mock

    import tiktoken_ext.openai_public as public

    ctor = getattr(public, name, None)
    if ctor is None:
        raise ConfigError(f"unknown tiktoken encoding {name!r}: use cl100k_base or o200k_base (RAG_TOKENIZER)")
    try:
        # The constructor names the download URL; answer it from the bundled file instead of the network.
        with _LOCK, mock.patch.object(public, "load_tiktoken_bpe", _bundled_ranks):
            return tiktoken.Encoding(**ctor())
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"tiktoken encoding {name!r} is not available offline ({exc}): use cl100k_base or o200k_base "
            "(RAG_TOKENIZER), or set TIKTOKEN_CACHE_DIR to a folder holding it"
        ) from None


def count_tokens(text: str, name: str = "cl100k_base") -> int:
    return len(encoding(name).encode(text, disallowed_special=()))


def encoding_for_model(model: str, fallback: str = "cl100k_base"):
    """The encoding an OpenAI model uses (o200k for the gpt-4o / o-series family), else `fallback`."""
    newer = model.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4"))
    return encoding("o200k_base" if newer else fallback)
