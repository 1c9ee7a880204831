"""The CI quality gate: the shipped dev set, evaluated in extractive mode on the real index, must stay
above floors set a little below the measured results (README, Evaluation)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO_ROOT, run_cli

FLOORS = {  # measured: hybrid recall@10 0.961, ndcg@10 0.930, mrr 0.952, key facts 0.72, abstention 0.92
    "hybrid:recall@10": 0.94,
    "hybrid:ndcg@10": 0.90,
    "hybrid:mrr": 0.92,
    "hybrid:citation_validity": 1.0,
    "hybrid:key_fact_recall": 0.65,
    "hybrid:abstention_accuracy": 0.84,
}
CEILINGS = {"hybrid:false_abstention_rate": 0.04, "hybrid:unsupported_sentence_rate": 0.0}


@pytest.mark.slow
def test_dev_set_gate_and_hybrid_beats_single_modes(real_index, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--dataset", str(REPO_ROOT / "eval/datasets/dev.jsonl"), "--answer", "extractive",
            "--modes", "hybrid,dense,bm25", "--out", str(out), "--json"]
    args += ["--fail-under", *[f"{k}={v}" for k, v in FLOORS.items()]]
    args += ["--fail-over", *[f"{k}={v}" for k, v in CEILINGS.items()]]
    r = run_cli(*args, env={"RAG_DATA_DIR": str(real_index.data_dir),
                            "RAG_MODEL_CACHE_DIR": str(real_index.model_cache_dir)}, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "report.json").read_text())["summary"]
    for metric in ("recall@10", "ndcg@10"):
        assert summary["hybrid"][metric] > summary["dense"][metric], metric
        assert summary["hybrid"][metric] > summary["bm25"][metric], metric
    assert summary["hybrid"]["citation_validity"] == 1.0
