"""The exceptions a user can meet. Each message says how to fix the problem.

Only the edges (CLI, UI) turn these into user-facing text; library code raises them.
"""


class RagError(Exception):
    """Base class: an expected failure with an actionable, one-line message."""

    exit_code = 1


class ConfigError(RagError):
    """A setting or flag has an invalid value."""

    exit_code = 2


class CorpusError(RagError):
    """The corpus cannot be read or holds no papers."""


class ParseError(CorpusError):
    """A corpus line could not be parsed (fatal only with --strict)."""


class IndexMissingError(RagError):
    """No index has been built in the data dir yet."""


class IndexLockedError(RagError):
    """Another process is writing the index."""


class IndexCorruptError(RagError):
    """The manifest or an index file is unreadable."""


class StoreUnavailableError(RagError):
    """The Chroma server cannot be reached."""


class LLMError(RagError):
    """The LLM endpoint failed after all retries, or is misconfigured."""

    #: True when the endpoint was unreachable, overloaded or too slow (worth not calling again now).
    transient = False


class PromptError(RagError):
    """A prompt file is missing or lacks a placeholder."""


class AssetError(RagError):
    """A file the web UI's page needs (its CSS or JS) is missing or unreadable."""


class QuestionError(RagError):
    """The question is empty or too long."""
