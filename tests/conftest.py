"""Shared fixtures: temp index dirs, the hash embedder, the real-model index, one Chroma server per
session, the in-process CLI, and the fake OpenAI-protocol server (tests/fake_openai.py).

Speed: the real model's vectors are cached across sessions in `.cache/tests/` (git-ignored; CI starts
without it and fills it), so a warm session re-embeds nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

for var in [v for v in os.environ if v.startswith("RAG_") or v == "OPENAI_API_KEY"]:
    del os.environ[var]  # tests choose their own settings

from rag.env import configure_process  # noqa: E402

configure_process()  # the test process is an entry point: offline, no telemetry

from rag.index.embedders import HashEmbedder  # noqa: E402
from rag.settings import load_settings, repo_root  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI  # noqa: E402

REPO = repo_root()
CORPUS = REPO / "data" / "corpus"
DEV_SET = REPO / "eval" / "datasets" / "dev.jsonl"
VENV_BIN = Path(sys.executable).parent
CACHE = REPO / ".cache" / "tests"
EMBED_CACHE = CACHE / "embed_cache.sqlite"
COMPLETE_MARKER = "test-build-complete.json"  # the ingest report of a finished build


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def make_settings(tmp_path):
    """Settings bound to a temp data dir; keyword overrides win."""

    def make(**overrides):
        return load_settings(**({"data_dir": tmp_path / "index"} | overrides))

    return make


def _code_key() -> str:
    """What a built index depends on: the package's code and the corpus (any change rebuilds)."""
    digest = hashlib.sha256()
    for path in sorted([*(REPO / "rag").rglob("*.py"), *CORPUS.iterdir()]):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def real_index(tmp_path_factory):
    """The full corpus indexed with the real packaged model.

    Built by a real `rag ingest` process into `.cache/tests/real-index-<key>` (key: a hash of the package's
    code and the corpus, so any change rebuilds; vectors come from the embedding cache), then copied into
    this session's temp dir. Parallel workers wait for one build (a file lock).
    """
    from filelock import FileLock

    CACHE.mkdir(parents=True, exist_ok=True)
    built = CACHE / f"real-index-{_code_key()}"
    complete = built / COMPLETE_MARKER  # written last, after a successful ingest: a partial build never counts
    data_dir = tmp_path_factory.mktemp("real-index") / "index"
    with FileLock(str(CACHE / "real-index.lock"), timeout=900):
        if not complete.is_file():
            for old in CACHE.glob("real-index-*"):
                shutil.rmtree(old, ignore_errors=True)
            staging = built.with_name(built.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            env = {"RAG_DATA_DIR": str(staging), "RAG_EMBED_CACHE_PATH": str(EMBED_CACHE)}
            result = run_cli("ingest", "--json", env=env, process=True, timeout=900)
            assert result.returncode == 0, result.stderr
            (staging / COMPLETE_MARKER).write_text(result.stdout)
            staging.rename(built)
        # copied under the lock: another worker may be about to replace an outdated build
        shutil.copytree(built, data_dir, ignore=shutil.ignore_patterns(COMPLETE_MARKER))
    return load_settings(data_dir=data_dir, embed_cache_path=EMBED_CACHE)


@pytest.fixture(scope="session")
def real_retriever(real_index):
    from rag.retrieve.hybrid import Retriever

    return Retriever.from_settings(real_index)


@pytest.fixture(scope="session")
def real_retrieval_eval(real_index, real_retriever) -> dict:
    """`rag eval`'s summary of retrieval alone (every mode) on the dev set's test split over the real index: one
    run shared by the eval gate (hybrid against the single modes) and the remote-embedding test (the local figures)."""
    from rag.eval.dataset import load_dataset
    from rag.eval.runner import run_eval

    dataset = load_dataset(DEV_SET, [p.title for p in real_retriever.index.papers()])
    dataset.questions = [q for q in dataset.questions if q.split == "test"]
    report = run_eval(real_index, dataset, modes=["hybrid", "dense", "bm25"], answer="none", retriever=real_retriever,
                      progress=False)
    return report["summary"]


@pytest.fixture(scope="session")
def real_assistant(real_retriever, real_index):
    """An extractive Assistant over the real index (no LLM)."""
    from rag.answer.assistant import Assistant

    return Assistant(real_index, real_retriever)


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


class ChromaServer:
    """`chroma run` on a free loopback port, with stop/start for outage tests."""

    def __init__(self, path: Path):
        self.path = path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log = path.parent / f"chroma-{self.port}.log"

    def start(self) -> "ChromaServer":
        chroma = shutil.which("chroma", path=str(VENV_BIN)) or "chroma"
        self.proc = subprocess.Popen(
            [chroma, "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            env=os.environ | {"ANONYMIZED_TELEMETRY": "False"},
        )
        _wait_http(self.url + "/api/v2/heartbeat")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def shared_chroma(tmp_path_factory):
    """One `chroma run` server for the whole session; tests use a collection of their own on it."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-shared") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def chroma_server(tmp_path):
    """A server of this test's own, for tests that stop and restart it."""
    server = ChromaServer(tmp_path / "chroma-server").start()
    yield server
    server.stop()


@pytest.fixture
def collection_name() -> str:
    """A collection name no other test uses (tests share one Chroma server)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["embedded", "server"])
def chroma_mode(request):
    """Runs a test against embedded Chroma and against the shared `chroma run` server: yields the URL or None."""
    if request.param == "embedded":
        yield None
        return
    yield request.getfixturevalue("shared_chroma").url


@pytest.fixture
def fake_llm():
    """A strict fake OpenAI server: an unexpected request, a handler error or an unconsumed reply fails the test."""
    with FakeOpenAI(strict=True) as srv:
        yield srv
        srv.verify()


# ---------------------------------------------------------------- the CLI


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environ(env: dict | None):
    saved = os.environ.copy()
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(*args, env=None, timeout=300, input=None, cwd=None, process=False) -> CliResult:
    """Run `rag ARGS`: in this process through `rag.apps.cli.main` (fast), or with process=True the real
    console script in a subprocess (for exit codes, signals, start-up and environment behaviour)."""
    if process:
        rag_bin = shutil.which("rag", path=str(VENV_BIN)) or "rag"
        proc = subprocess.run([rag_bin, *args], capture_output=True, text=True, env=os.environ | (env or {}),
                              timeout=timeout, input=input, cwd=cwd)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    from rag.apps.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    with _environ(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        old_stdin = sys.stdin
        sys.stdin = io.StringIO(input or "")
        try:
            if cwd:
                os.chdir(cwd)
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdin = old_stdin
            os.chdir(old_cwd)
    return CliResult(code or 0, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------- small corpora for the foundation tests

LISTING_HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\nbyAK and the research community\n\nMar 14\n\n"


def write_listing(path: Path, papers, header: bool = True) -> Path:
    """Write papers as a scraped listing page (boilerplate header, then title / abstract pairs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{p.title}\n\n{p.abstract}\n\n" for p in papers)
    path.write_text((LISTING_HEADER if header else "") + body, encoding="utf-8")
    return path


def hash_index(root: Path, papers) -> "object":
    """Settings of a small index built with the hash embedder from `papers` ((title, abstract) pairs or
    JSONL objects) written to ROOT/papers.jsonl; the index lives in ROOT/index."""
    import json

    from rag.index.ingest import ingest

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "papers.jsonl"
    lines = [p if isinstance(p, dict) else {"title": p[0], "abstract": p[1]} for p in papers]
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    settings = load_settings(data_dir=root / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    return settings


@pytest.fixture(scope="session")
def corpus_papers():
    """Every unique paper of the vendored corpus, parsed once per session."""
    from rag.corpus.parse import load_corpus

    return load_corpus([CORPUS]).papers


@pytest.fixture(scope="session")
def small_papers(corpus_papers):
    """20 real papers: 14 from the top of the corpus plus 6 concept-erasure papers (deterministic)."""
    erasure = [p for p in corpus_papers if "concept eras" in p.title.lower()][:6]
    others = [p for p in corpus_papers if p not in erasure][:14]
    assert len(erasure) == 6
    return others + erasure


@pytest.fixture
def small_corpus(tmp_path, small_papers) -> Path:
    """A writable tmp corpus dir of the 20 small papers as two listing files (a.txt, b.txt)."""
    corpus = tmp_path / "corpus"
    write_listing(corpus / "a.txt", small_papers[:10])
    write_listing(corpus / "b.txt", small_papers[10:])
    return corpus


def pytest_collection_modifyitems(config, items):
    """Tests that start a `chroma run` server (directly or via the `server` case of `chroma_mode`)
    or use the real-model index are `slow`, whether or not they say so."""
    heavy = {"chroma_server", "shared_chroma", "real_index", "real_retriever", "real_assistant"}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("chroma_mode") == "server" or heavy & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
