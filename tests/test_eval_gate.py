"""The CI quality gate: the `test` split of the shipped dev set, evaluated in extractive mode on the real
index, must stay above floors set a little below the measured results (README, Evaluation)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO as REPO_ROOT
from conftest import run_cli

FLOORS = {  # measured on test (115 q): recall@10 0.962, ndcg@10 0.944, mrr 0.966, citation precision 0.855,
    # recall 0.797 (a list's first tier), both tiers' recall 0.823, key facts 0.708, abstention 0.423 (README)
    "hybrid:recall@10": 0.94,
    "hybrid:ndcg@10": 0.92,
    "hybrid:mrr": 0.94,
    "hybrid:citation_validity": 1.0,
    "hybrid:citation_precision": 0.70,
    "hybrid:citation_recall": 0.78,
    "hybrid:tiers_recall": 0.80,
    "hybrid:key_fact_recall": 0.70,
    "hybrid:abstention_accuracy": 0.25,
}
CEILINGS = {"hybrid:false_abstention_rate": 0.04, "hybrid:unsupported_sentence_rate": 0.0}


def _eval(real_index, out, *args):
    base = ["eval", "--dataset", str(REPO_ROOT / "eval/datasets/dev.jsonl"), "--split", "test", "--out", str(out), "--json"]
    r = run_cli(*base, *args, env={"RAG_DATA_DIR": str(real_index.data_dir),
                                   "RAG_EMBED_CACHE_PATH": str(real_index.embed_cache_path),
                                   "RAG_EVIDENCE_CACHE_PATH": str(out / "evidence.sqlite")}, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads((out / "report.json").read_text())["summary"]


@pytest.mark.slow
def test_dev_set_gate_and_hybrid_beats_single_modes(real_index, real_retrieval_eval, tmp_path):
    gates = ["--fail-under", *[f"{k}={v}" for k, v in FLOORS.items()],
             "--fail-over", *[f"{k}={v}" for k, v in CEILINGS.items()]]
    hybrid = _eval(real_index, tmp_path / "answers", "--modes", "hybrid", "--answer", "extractive", *gates)["hybrid"]
    assert hybrid["citation_validity"] == 1.0
    # retrieval alone for the comparison of modes (answers do not change retrieval metrics): the session's
    # retrieval-only run of the same split, shared with tests/test_remote_corpus.py
    summary = real_retrieval_eval
    assert summary["hybrid"]["recall@10"] == hybrid["recall@10"] and summary["hybrid"]["mrr"] == hybrid["mrr"]
    for mode in ("dense", "bm25"):
        assert summary["hybrid"]["recall@10"] > summary[mode]["recall@10"], mode
    # nDCG: hybrid beats dense clearly; on the test split it ties BM25 (0.933 vs 0.932), so no strict order there
    assert summary["hybrid"]["ndcg@10"] > summary["dense"]["ndcg@10"]
    assert summary["hybrid"]["ndcg@10"] >= summary["bm25"]["ndcg@10"] - 0.01


@pytest.mark.slow
def test_with_a_correct_judge_the_evidence_step_abstains_and_lists_completely(real_index, tmp_path):
    """Issue 12's bar, on the test split with the relevance oracle as the LLM (plumbing, not an LLM's
    quality): abstention >= 95% caught; list citation precision and recall >= 0.95. Refused: at most 2 of 89
    (0.0225): the named-thing check runs before any LLM, and two test questions name what no abstract says
    ("the ESD paper", "Kolmogorov-Arnold style networks"); they are answered "No indexed paper mentions …" with the
    right paper among the possibly related."""
    out = tmp_path / "oracle"
    summary = _eval(real_index, out, "--modes", "hybrid", "--answer", "llm", "--oracle-llm",
                    "--fail-under", "hybrid:abstention_accuracy=0.95", "--fail-over", "hybrid:false_abstention_rate=0.023")
    report = json.loads((out / "report.json").read_text())
    lists = report["by_type"]["hybrid"]["list"]
    assert lists["citation_precision"] >= 0.95 and lists["citation_recall"] >= 0.95, lists
    assert summary["hybrid"]["stages"]["evidence"]["calls_total"] > 0
    assert report["config"]["llm"].startswith("relevance oracle")
