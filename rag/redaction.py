"""The one redaction: what must never be shown (an API key, the userinfo of a URL, a password) removed from a
text before it becomes a message, a notice, a log line, an answer or a report.

- `redact(text, key, url)`: masks every URL's userinfo (`http://user:secret@host/v1` -> `http://***@host/v1`) and
  removes the key and the URL's password wherever else they appear (an endpoint may echo them).
- `redact_stream`: the same over a streamed reply (a secret split across pieces is still removed).
- `RedactingFilter`: a logging filter for entry points: every record's text redacted of the process's configured
  secrets, and its control characters and bidi overrides shown as escapes.

Plain `re` and `urllib`: settings validation and the CLI's logging use it without loading an HTTP client.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote, urlsplit

from rag.text import escape_controls

MASK = "***"
MIN_SECRET_CHARS = 4  # shorter secrets are removed from URLs only: replacing them everywhere would garble any text
# The userinfo of any URL in a text: everything between "scheme://" and the host's last "@".
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#]*@")
# The settings holding a key or a URL that may carry a password (env names; see rag.settings).
SECRET_VARS = ("RAG_LLM_API_KEY", "OPENAI_API_KEY", "RAG_JUDGE_API_KEY", "RAG_EMBED_API_KEY")
URL_VARS = ("RAG_LLM_BASE_URL", "RAG_JUDGE_BASE_URL", "RAG_EMBED_URL", "RAG_CHROMA_URL")


def mask_userinfo(text: str) -> str:
    """`text` with the userinfo of every URL in it masked: `http://user:secret@host/v1` -> `http://***@host/v1`."""
    return _USERINFO.sub(rf"\1{MASK}@", text)


def secrets_of(key: str | None = None, url: str | None = None) -> list[str]:
    """What must never be shown: the API key, and the password (or the lone token) of `url`'s userinfo, both as
    written and percent-decoded. Longest first, so a secret containing another is removed whole."""
    found = [key or ""]
    if url:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            user, _, password = parts.netloc.rpartition("@")[0].partition(":")
            found += [password, unquote(password)] if password else [user, unquote(user)]
    return sorted({s for s in found if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def redact(text: str, key: str | None = None, url: str | None = None) -> str:
    """`text` without the API key `key`, without the userinfo of any URL in it (`http://user:secret@host/v1` ->
    `http://***@host/v1`), and without the password of `url` wherever it appears."""
    text = mask_userinfo(text)
    for secret in secrets_of(key, url):
        text = text.replace(secret, MASK)
    return text


def redact_stream(pieces: Iterable[str], key: str | None = None, url: str | None = None) -> Iterator[str]:
    """`redact` over text arriving in pieces (a streamed reply): a secret split across pieces is still removed.
    Text is held back only while the end of what came so far could be the start of a secret."""
    secrets = secrets_of(key, url)
    held = ""
    for piece in pieces:
        text = redact(held + piece, key, url)
        keep = max((n for s in secrets for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
                   default=0)
        held = text[len(text) - keep:] if keep else ""
        if len(text) > keep:
            yield text[: len(text) - keep]
    if held:  # the reply ended inside what may be a secret: most of a key is not shown either
        yield MASK if len(held) >= MIN_SECRET_CHARS else held



def configured_secrets(environ=None) -> list[str]:
    """Every secret the process is configured with: the API keys and the passwords of the URLs in its environment."""
    environ = os.environ if environ is None else environ
    found = {s for var in SECRET_VARS for s in secrets_of(environ.get(var))}
    found |= {s for var in URL_VARS for s in secrets_of(url=environ.get(var))}
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """A line for a log or a terminal: URL userinfo masked, `secrets` removed, controls and bidi shown as escapes."""
    text = mask_userinfo(text)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, MASK)
    return escape_controls(text)


class RedactingFilter(logging.Filter):
    """For a handler of an entry point: each record's message (arguments and traceback included) without URL
    userinfo and `secrets`, and with control characters, escape sequences and bidi overrides shown as escapes,
    so no log line carries a password or can rewrite the terminal it is read in."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        return scrub(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._clean(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True
