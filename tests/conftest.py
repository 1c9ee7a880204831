"""Shared fixtures: temp index dirs, the hash embedder, a real-model index, a real Chroma server,
and the fake OpenAI-protocol server (see fake_openai.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
for var in [v for v in os.environ if v.startswith("RAG_") or v == "OPENAI_API_KEY"]:
    del os.environ[var]  # tests choose their own settings

import rag  # noqa: E402,F401  (sets the offline environment)
from rag.embeddings import HashEmbedder  # noqa: E402
from rag.settings import REPO_ROOT, load_settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI  # noqa: E402

CORPUS = REPO_ROOT / "data" / "corpus"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One ONNX export of the packaged model per test session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def make_settings(tmp_path, model_cache):
    """Settings bound to a temp data dir; keyword overrides win."""

    def make(**overrides):
        base = {"data_dir": tmp_path / "index", "model_cache_dir": model_cache}
        return load_settings(**(base | overrides))

    return make


@pytest.fixture(scope="session")
def real_index(tmp_path_factory, model_cache):
    """The full corpus indexed with the real packaged model (ONNX), built once per session."""
    from rag.index import ingest

    data_dir = tmp_path_factory.mktemp("real-index")
    settings = load_settings(data_dir=data_dir, model_cache_dir=model_cache)
    ingest(settings, progress=False)
    return settings


@pytest.fixture(scope="session")
def real_retriever(real_index):
    from rag.retrieve import Retriever

    return Retriever(real_index)


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
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


@pytest.fixture
def chroma_server(tmp_path):
    server = ChromaServer(tmp_path / "chroma-server").start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "server"])
def chroma_mode(request, tmp_path):
    """Runs a test against embedded Chroma and against a `chroma run` server: yields the URL or None."""
    if request.param == "embedded":
        yield None
        return
    server = ChromaServer(tmp_path / "chroma-server").start()
    yield server.url
    server.stop()


@pytest.fixture
def fake_llm():
    with FakeOpenAI() as srv:
        yield srv


def run_cli(*args, env=None, timeout=300, input=None, cwd=None):
    """Run the real `rag` console script in a subprocess."""
    rag_bin = shutil.which("rag", path=str(VENV_BIN)) or "rag"
    full_env = os.environ.copy()
    full_env.update(env or {})
    return subprocess.run(
        [rag_bin, *args], capture_output=True, text=True, env=full_env, timeout=timeout, input=input, cwd=cwd
    )


# ---------------------------------------------------------------- small corpora for the foundation tests

LISTING_HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\nbyAK and the research community\n\nMar 14\n\n"


def write_listing(path: Path, papers, header: bool = True) -> Path:
    """Write papers as a scraped listing page (boilerplate header, then title / abstract pairs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{p.title}\n\n{p.abstract}\n\n" for p in papers)
    path.write_text((LISTING_HEADER if header else "") + body, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus_papers():
    """Every unique paper of the vendored corpus, parsed once per session."""
    from rag.corpus import load_corpus

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


@pytest.fixture(scope="session")
def onnx_ready(model_cache) -> Path:
    """Make sure the ONNX export of the packaged model sits in `model_cache` (for CLI subprocesses)."""
    from rag.embeddings import make_embedder

    make_embedder(load_settings(data_dir=model_cache / "unused", model_cache_dir=model_cache))
    return model_cache


def pytest_collection_modifyitems(config, items):
    """Tests that start a `chroma run` server (directly or via the `server` case of `chroma_mode`)
    or build the real-model index are `slow`, whether or not they say so."""
    heavy = {"chroma_server", "real_index", "real_retriever", "onnx_ready"}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("chroma_mode") == "server" or heavy & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
