"""Packaging and process hygiene: the wheel carries the prompts and the UI's CSS/JS, and works from any directory,
importing the package changes nothing in the host process, and misspelt settings are reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from rag.index.embedders import HashEmbedder
from rag.index.ingest import ingest
from rag.settings import load_settings, unknown_env


def test_importing_the_package_changes_no_environment_variable():
    code = ("import os; e=dict(os.environ); import rag.records, rag.retrieve.hybrid, rag.answer.assistant, rag.apps.cli, rag.apps.ui.controller, "
            "rag.eval.runner, rag.apps.llama_index, rag.apps.mcp_server; print(sorted(set(os.environ) ^ set(e)))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                             "TOKENIZERS_PARALLELISM", "TIKTOKEN_CACHE_DIR",
                                                             "ANONYMIZED_TELEMETRY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_tiktoken_works_offline_without_any_cache_variable():
    code = "from rag.token_counts import count_tokens; print(count_tokens('Erasing concepts from diffusion models'), count_tokens('x', 'o200k_base'))"
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6", "1"]


def test_unknown_rag_variable_is_named_with_the_closest_setting(tmp_path):
    warnings = unknown_env({"RAG_TOPK": "5", "RAG_TOP_K": "5", "RAG_LLM_BASEURL": "x", "RAG_ZZZ_QQQ": "1", "PATH": "/"})
    assert len(warnings) == 3
    assert "RAG_TOPK is not a setting" in warnings[1] and "did you mean RAG_TOP_K?" in warnings[1]
    assert "did you mean RAG_LLM_BASE_URL?" in warnings[0]
    assert "RAG_ZZZ_QQQ" in warnings[2] and "did you mean" not in warnings[2]
    r = run_cli("search", "x", env={"RAG_DATA_DIR": str(tmp_path / "none"), "RAG_TYPO_TOPK": "5"})
    assert "RAG_TYPO_TOPK is not a setting" in r.stderr and "RAG_TOP_K" in r.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the checkout's files (tracked and not ignored), so a stale
    build/ directory of earlier builds cannot smuggle files into it."""
    src, wheel_dir = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        origin, copy = REPO / name, src / name
        if origin.is_symlink() or origin.is_file():  # rag/_prompts is a symlink: copied as one
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, copy, follow_symlinks=False)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (built,) = wheel_dir.glob("paper_rag-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_what_the_product_runs_and_no_test_code(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("rag/_prompts/")}
    assert shipped == {p.name for p in (REPO / "prompts").glob("*.md")}  # every prompt, nothing else
    assert "rag/data/judgement.json" in names
    assert {"rag/eval/oracle.py", "rag/eval/scale_worker.py", "rag/eval/query_worker.py"} <= set(names)
    code = [n for n in names if not n.startswith("paper_rag-")]
    assert all(n.startswith("rag/") for n in code), [n for n in code if not n.startswith("rag/")]
    tests = {p.name for p in (REPO / "tests").glob("*.py")}
    assert not [n for n in code if Path(n).name in tests or "fake" in Path(n).name], "test code in the wheel"


@pytest.mark.slow
def test_wheel_carries_the_prompts_and_runs_from_any_directory(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"rag/_prompts/system.md", "rag/_prompts/answer.md", "rag/_prompts/source.md"} <= set(names)
    assert {"rag/apps/ui/assets/app.css", "rag/apps/ui/assets/shared.js", "rag/apps/ui/assets/conversation.js"} <= set(names)
    assert not any(n.startswith(("ui/", "eval/", "tests/")) for n in names)  # nothing outside the rag namespace

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr

    corpus = tmp_path / "papers.jsonl"
    corpus.write_text(json.dumps({"title": "Erasing Concepts from Diffusion Models",
                                  "abstract": "We erase a visual concept from a diffusion model using negative guidance."}) + "\n")
    settings = load_settings(data_dir=tmp_path / "index", corpus=str(corpus), embed_backend="hash")
    ingest(settings, embedder=HashEmbedder(), progress=False)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env |= {"PYTHONPATH": str(site), "RAG_DATA_DIR": str(settings.data_dir), "RAG_EMBED_BACKEND": "hash",
            "RAG_CORPUS": str(corpus)}
    code = "import rag, sys; from rag.apps.cli import main; print(rag.__file__, file=sys.stderr); sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "ask", "erasing concepts from diffusion models with negative guidance", "--json"],
                         capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert out.returncode == 0, out.stderr
    assert str(site) in out.stderr.splitlines()[0]  # the wheel's code ran, not the checkout's
    answer = json.loads(out.stdout)
    assert answer["citations"][0]["title"] == "Erasing Concepts from Diffusion Models"
