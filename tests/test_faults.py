"""Faults: Chroma server down at start and mid-session, unwritable or full data dir, corrupt manifest."""

from __future__ import annotations

import json
import os

import pytest
from conftest import ChromaServer, run_cli

from rag.errors import ConfigError, StoreUnavailableError
from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest
from rag.retrieve.hybrid import Retriever
from rag.settings import load_settings

SMALL = [
    {"title": "Erasing Concepts from Diffusion Models", "abstract": "We erase a visual concept from a diffusion model by fine-tuning with negative guidance. " * 3},
    {"title": "Sparse Autoencoders for Language Model Interpretability", "abstract": "Sparse autoencoders find interpretable features in language model activations. " * 3},
    {"title": "Concept Bottleneck Models", "abstract": "Concept bottleneck models predict human concepts before the label, allowing interventions. " * 3},
]


@pytest.fixture
def small_corpus(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in SMALL))
    return path


@pytest.mark.slow
def test_chroma_server_down_at_start_and_mid_session_then_recovers(tmp_path, small_corpus, make_settings):
    server = ChromaServer(tmp_path / "chroma").start()
    settings = make_settings(chroma_url=server.url, corpus=str(small_corpus))
    ingest(settings, embedder=HashEmbedder(), progress=False)
    retriever = Retriever.from_settings(settings, embedder=HashEmbedder())
    assert retriever.search("erase concepts diffusion", 2)[0].title == SMALL[0]["title"]

    server.stop()  # mid-session outage
    with pytest.raises(StoreUnavailableError, match="chroma run"):
        retriever.search("erase concepts diffusion", 2)
    with pytest.raises(StoreUnavailableError, match=server.url):
        Retriever.from_settings(settings, embedder=HashEmbedder())  # down at start

    server.start()  # same port, same data: the same retriever recovers
    assert retriever.search("erase concepts diffusion", 2)[0].title == SMALL[0]["title"]
    server.stop()


@pytest.mark.slow
def test_cli_with_chroma_server_down_is_one_clean_line(tmp_path):
    port_closed = ChromaServer(tmp_path / "unused").url  # nothing listens there
    r = run_cli("ingest", "--json", env={"RAG_DATA_DIR": str(tmp_path / "d"), "RAG_CHROMA_URL": port_closed,
                                          "RAG_EMBED_BACKEND": "hash"}, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "chroma run" in r.stderr


def test_data_dir_not_writable(tmp_path, make_settings, small_corpus):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = make_settings(data_dir=blocker / "index", corpus=str(small_corpus))
    with pytest.raises(ConfigError, match="RAG_DATA_DIR"):
        ingest(settings, embedder=HashEmbedder(), progress=False)


def test_disk_full_is_reported(tmp_path, make_settings, small_corpus):
    data_dir = tmp_path / "index"
    data_dir.mkdir()
    os.symlink("/dev/full", data_dir / ".write-probe")  # every write there fails with ENOSPC
    settings = make_settings(data_dir=data_dir, corpus=str(small_corpus))
    with pytest.raises(ConfigError, match="no space left"):
        ingest(settings, embedder=HashEmbedder(), progress=False)


# ------------------------------------------------------------------------------ read-only and full disks

def _mount(*args) -> bool:
    import subprocess

    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _umount(path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)  # lazy: files may be open


def _small_index(tmp_path, small_corpus, data_dir):
    from rag.settings import load_settings

    settings = load_settings(data_dir=data_dir, corpus=str(small_corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)
    return settings


def _titles(settings):
    retriever = Retriever.from_settings(settings, embedder=HashEmbedder(), check_stale=False)
    try:
        return [[h.title for h in retriever.search(p["title"], 3, mode=m)] for p in SMALL for m in ("dense", "hybrid")]
    finally:
        retriever.index.close()


def test_a_read_only_data_dir_serves_queries_and_passes_the_doctor(tmp_path, small_corpus):
    """A data dir on a read-only mount (a shipped index): searches work, `rag doctor` passes, `rag ingest` says
    what is wrong. (Needs root to mount; skipped elsewhere.)"""
    from rag.apps.doctor import run_checks

    source = tmp_path / "index"
    settings = _small_index(tmp_path, small_corpus, source)
    expected = _titles(settings)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    if not _mount("--bind", str(source), str(mounted)):
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if not _mount("-o", "remount,ro,bind", str(mounted)):
            pytest.skip("cannot remount read-only here")
        ro = load_settings(data_dir=mounted, corpus=str(small_corpus), embed_backend="hash")
        assert _titles(ro) == expected
        bad = [c for c in run_checks(ro) if not c.ok]
        assert not bad, bad
        with pytest.raises(ConfigError, match="not writable"):
            ingest(ro, embedder=HashEmbedder(), progress=False)
    finally:
        _umount(mounted)


def test_a_full_disk_fails_an_update_with_the_space_needed_and_the_index_keeps_serving(tmp_path, small_corpus):
    """On a full disk (a small tmpfs, filled up): readers and `rag doctor` see a sound index; an update fails
    with "no space left … needs about N MB more"; the published index serves unchanged; once space is freed
    the next ingest finishes the update. (Needs root to mount; skipped elsewhere.)"""
    from rag.apps.doctor import run_checks
    from rag.errors import RagError

    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        settings = _small_index(tmp_path, small_corpus, disk / "index")
        expected = _titles(settings)
        more = [{"title": f"Zymurgical Transformer {i}", "abstract": f"We ferment attention heads {i} with yeast; "
                 "the keys anneal like brewing cultures and beat every baseline. " * 40} for i in range(200)]
        small_corpus.write_text("".join(json.dumps(p) + "\n" for p in SMALL + more))
        filler = disk / "filler"
        with open(filler, "wb") as fh:  # fill the disk up to its last 64 KiB
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        os.truncate(filler, max(0, filler.stat().st_size - 65536))

        assert _titles(settings) == expected
        bad = [c for c in run_checks(settings) if not c.ok and c.name != "corpus"]
        assert not bad, bad
        with pytest.raises(RagError, match=r"no space left on the device .* needs about [\d,]+ MB more"):
            ingest(settings, embedder=HashEmbedder(), progress=False)
        assert _titles(settings) == expected  # the published index, whole

        filler.unlink()
        report = ingest(settings, embedder=HashEmbedder(), progress=False)
        assert report.papers == len(SMALL) + len(more)
        assert all(c.ok for c in run_checks(settings)), run_checks(settings)
    finally:
        _umount(disk)


def test_a_store_that_cannot_open_on_a_full_disk_is_served_from_a_copy(tmp_path, small_corpus, monkeypatch):
    """Chroma's embedded client writes when it opens a store (it rewrites HNSW files it loads): on a full disk
    the open itself can fail after the files were checked sound. The reader serves from a private copy instead
    of calling the index damaged; with no room anywhere it says the disk is full, not "run rag ingest"."""
    import rag.index.chroma_store as chroma_store
    from rag.errors import ConfigError

    settings = _small_index(tmp_path, small_corpus, tmp_path / "index")
    expected = _titles(settings)
    real = chroma_store.ChromaStore.__init__
    opened = []

    def full_here(self, data_dir, *args, **kwargs):
        opened.append(str(data_dir))
        if str(data_dir) == str(settings.data_dir):
            raise RuntimeError("InternalError: error returned from database: (code: 13) database or disk is full")
        return real(self, data_dir, *args, **kwargs)

    monkeypatch.setattr(chroma_store.ChromaStore, "__init__", full_here)
    assert _titles(settings) == expected
    assert opened[0] == str(settings.data_dir) and opened[1] != str(settings.data_dir)  # the copy served

    def full_everywhere(self, data_dir, *args, **kwargs):
        raise RuntimeError("InternalError: error returned from database: (code: 13) database or disk is full")

    monkeypatch.setattr(chroma_store.ChromaStore, "__init__", full_everywhere)
    with pytest.raises(ConfigError, match="no space left on the device"):
        _titles(settings)
