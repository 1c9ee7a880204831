"""The fast query embedder (rag.index.query_model): the same vectors as torch, the same search results, and
one-shot commands that never import torch and the other heavy libraries.

All slow: they need the real model. The real index (`real_index`) is built by `rag ingest`, which also
exports the ONNX query model into it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

from rag.index import query_model
from rag.index.embedders import shared_torch_embedder
from rag.index.query_model import QueryModelUnavailable, make_query_embedder
from rag.settings import load_settings

pytestmark = pytest.mark.slow
HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn", "llama_index", "gradio", "openai")
QUESTIONS = [
    "which papers erase concepts in diffusion models?",
    "sparse autoencoders interpretability",
    "How does MACE scale concept erasure to many concepts?",
    "vision transformers for image classification",
    "what is the speedup of speculative decoding?",
    "papers on reinforcement learning from human feedback",
]


def _torch(settings):
    return shared_torch_embedder(settings.model_path(), 64, "torch-reference", "fp32")


def _dev_questions(n: int) -> list[str]:
    lines = (REPO / "eval" / "datasets" / "dev.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines[:n]]


def test_onnx_vectors_match_torch_on_corpus_texts_and_questions(real_index, real_retriever):
    onnx = real_retriever.embedder
    assert onnx.describe()["backend"] == "onnx"
    assert onnx.name == real_retriever.index.embedding_model  # the index's model check passes unchanged
    papers = real_retriever.index.papers()[::25][:24]
    texts = [p.title for p in papers] + [p.abstract for p in papers] + _dev_questions(24) + QUESTIONS
    assert len(texts) >= 70
    cosines = np.sum(onnx.embed(texts) * _torch(real_index).embed(texts), axis=1)
    assert cosines.min() >= 0.9999, sorted(zip(cosines, texts))[:3]


def test_search_results_are_the_torch_paths(real_index, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": str(i), "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    env = {"RAG_DATA_DIR": str(real_index.data_dir), "RAG_EMBED_CACHE_PATH": str(real_index.embed_cache_path)}
    runs = {}
    for backend in ("onnx", "torch"):
        proc = run_cli("search", "--questions", questions, "--json", "--top-k", "10",
                       env=env | {"RAG_EMBED_QUERY_BACKEND": backend})
        assert proc.returncode == 0, proc.stderr
        runs[backend] = [json.loads(line)["hits"] for line in proc.stdout.splitlines()]
    assert len(runs["onnx"]) == len(QUESTIONS)
    for fast, slow in zip(runs["onnx"], runs["torch"]):
        assert [h["paper_id"] for h in fast] == [h["paper_id"] for h in slow]
        # Fused scores: equal but where two chunks' similarities are closer than the paths' vectors differ (the
        # torch path autocasts to bf16 where the CPU has it) and swap places in the dense ranking: that moves an
        # RRF score by 1/(k+r) - 1/(k+r+1), 0.002 at rank 12.
        assert [h["score"] for h in fast] == pytest.approx([h["score"] for h in slow], abs=0.005)


_PROBE = """
import json, sys
from rag.apps.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(__import__("os").environ["HEAVY"])))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["search", QUESTIONS[0]], ["ask", QUESTIONS[0], "--extractive"], ["chat"]],
                         ids=["search", "ask", "chat"])
def test_one_shot_commands_import_no_heavy_library(real_index, args):
    """A fresh interpreter runs the command; torch, transformers, sentence-transformers, sklearn, llama-index,
    gradio and openai must not be in sys.modules afterwards."""
    env = os.environ | {"RAG_DATA_DIR": str(real_index.data_dir), "RAG_EMBED_CACHE_PATH": str(real_index.embed_cache_path),
                        "HEAVY": json.dumps(HEAVY), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=300,
                          input=f"{QUESTIONS[1]}\n\n")
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, proc.stderr
    assert proc.stdout.strip()


def test_missing_export_is_made_at_first_query_and_a_refused_one_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    settings = load_settings(data_dir=tmp_path / "index")
    settings.data_dir.mkdir()
    monkeypatch.setattr(query_model, "PARITY_MIN_COSINE", 1.01)  # no export can pass
    with pytest.raises(QueryModelUnavailable, match="differ from the torch embedder"):
        query_model.export(settings.data_dir, settings.model_path(), "all-MiniLM-L6-v2")
    assert not (settings.data_dir / query_model.FOLDER).exists()
    with caplog.at_level(logging.WARNING):
        fallback = make_query_embedder(settings)  # remembered refusal: no second export, torch with a warning
    assert fallback.describe()["backend"] == "torch"
    assert "refused at export" in caplog.text and "embedding queries with torch" in caplog.text

    monkeypatch.setattr(query_model, "PARITY_MIN_COSINE", 0.9999)
    (settings.data_dir / query_model.REFUSED).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fast = make_query_embedder(settings)
    assert "exporting it once" in caplog.text
    assert fast.describe()["backend"] == "onnx" and fast.name == "all-MiniLM-L6-v2"
    meta = json.loads((settings.data_dir / query_model.FOLDER / "export.json").read_text())
    assert meta["parity_min_cosine"] >= 0.9999
    assert sorted(p.name for p in settings.data_dir.iterdir()) == [query_model.FOLDER]  # no temp folder left
    assert np.allclose(fast.embed(QUESTIONS), _torch(settings).embed(QUESTIONS), atol=1e-4)


def test_a_damaged_export_falls_back_to_torch_with_a_warning(real_index, tmp_path, caplog):
    data_dir = tmp_path / "index"
    (data_dir / query_model.FOLDER).mkdir(parents=True)
    for name in ("model.onnx", "export.json"):
        src = Path(real_index.data_dir) / query_model.FOLDER / name
        (data_dir / query_model.FOLDER / name).write_bytes(src.read_bytes())
    (data_dir / query_model.FOLDER / "model.onnx.data").write_bytes(b"\0" * 1024)  # truncated weights
    with caplog.at_level(logging.WARNING):
        embedder = make_query_embedder(load_settings(data_dir=data_dir))
    assert embedder.describe()["backend"] == "torch"
    assert "cannot load the query model" in caplog.text
