"""Run every dataset question through retrieval (and the answerer) in each mode; build the report dict.

One `Retriever` serves every mode and question (the embedding model loads once); the answerer, when
used, is built on that same retriever.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rag.errors import ConfigError, RagError
from rag.eval import ANSWER_CHOICES
from rag.eval.dataset import Dataset, Question
from rag.eval.metrics import (
    METRICS,
    SupportChecker,
    citation_metrics,
    cited_numbers,
    key_fact_recall,
    reference_f1,
    reference_facts,
    retrieval_metrics,
    summarise,
    unsupported_sentence_rate,
)
from rag.prompts import load_prompts
from rag.retrieve.hybrid import MODES

log = logging.getLogger(__name__)

REPORT_VERSION = 1
PROGRESS_DELAY_S = 3.0


def check_modes(text: str | list[str]) -> list[str]:
    modes = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"unknown retrieval mode(s) {', '.join(bad) or '(none given)'}: use a comma list of {', '.join(MODES)}")
    return list(dict.fromkeys(modes))


def make_assistant(settings, retriever, answer: str):
    """The project's answerer on the shared retriever; `--answer llm` needs a configured LLM."""
    if answer == "llm" and not settings.llm_configured:
        raise ConfigError(
            "--answer llm needs an LLM: set RAG_LLM_BASE_URL (and RAG_LLM_API_KEY / OPENAI_API_KEY), "
            "or use --answer extractive"
        )
    try:
        from rag.answer.assistant import Assistant
    except ImportError as exc:
        raise ConfigError(f"the answerer is not available ({exc}): use --answer none") from None
    return Assistant.from_settings(settings, retriever=retriever)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _evidence(source) -> str:
    """Title + abstract of a source (the snippet when the abstract is not known)."""
    return f"{source.title}\n{getattr(source, 'abstract', '') or source.snippet}"


def render_prompt(question: str, sources, prompts=None) -> str:
    """The LLM prompt for these sources, as the answerer sends it (rag.prompts.answer_messages)."""
    from rag.prompts import answer_messages, load_prompts

    messages = answer_messages(prompts or load_prompts(), question, sources)
    return "\n".join(m["content"] for m in messages)


def score_answer(q: Question, ans, checker: SupportChecker, count=None, prompts=None) -> dict:
    """Row fields and per-question answer metrics for one Answer record."""
    abstained = bool(ans.abstained)
    sources = list(ans.sources or [])
    by_n = {s.n: s for s in sources}
    cited_titles = list(dict.fromkeys(c.get("title") or "" for c in ans.citations or [] if c.get("title")))
    text_refs = cited_numbers(ans.answer or "")
    unknown_markers = sum(1 for n in text_refs if n not in by_n)
    invalid = max(unknown_markers, int(getattr(ans, "invalid_citations", 0) or 0))
    metrics: dict = {}
    gold = q.gold_titles if q.answerable and q.gold_titles else None  # None: citation precision / recall not scored
    if q.answerable and q.graded:
        metrics["false_abstention_rate"] = 1.0 if abstained else 0.0
        if abstained:  # a refused answerable question delivered none of its facts or papers: 0, not "not scored"
            if gold:
                metrics["citation_recall"] = 0.0
                if q.type == "list":
                    metrics["tiers_recall"] = 0.0
            metrics["key_fact_recall"] = 0.0 if q.key_facts else None
            if q.reference:
                metrics["reference_f1"] = 0.0
                metrics["reference_fact_recall"] = 0.0 if reference_facts(q.reference) else None
    elif not q.answerable:
        metrics["abstention_accuracy"] = 1.0 if abstained else 0.0
    if not abstained:
        metrics.update(
            citation_metrics(cited_titles, [s.title for s in sources], gold, invalid, q.acceptable_titles)
        )
        metrics["key_fact_recall"] = key_fact_recall(ans.answer or "", q.key_facts) if q.answerable else None
        if q.answerable and q.reference:
            metrics["reference_f1"] = reference_f1(ans.answer or "", q.reference)
            metrics["reference_fact_recall"] = key_fact_recall(ans.answer or "", reference_facts(q.reference))
        if gold and q.type == "list":
            both = cited_titles + [a.get("title") or "" for a in getattr(ans, "also_relevant", None) or []]
            metrics["tiers_recall"] = citation_metrics(both, [s.title for s in sources], gold, 0,
                                                       q.acceptable_titles)["citation_recall"]
        cited_ns = [c["n"] for c in ans.citations or [] if c.get("n") in by_n] or [n for n in text_refs if n in by_n]
        evidence = {n: _evidence(s) for n, s in by_n.items()}
        metrics["unsupported_sentence_rate"] = unsupported_sentence_rate(ans.answer or "", evidence, cited_ns, checker)
    row = {
        "answer": ans.answer,
        "answer_mode": getattr(ans, "mode", None),
        "cited_titles": cited_titles,
        "abstained": abstained,
        "source_titles": [s.title for s in sources],
        "invalid_citations": invalid,
        "notice": getattr(ans, "notice", None),
        "confidence": ((getattr(ans, "judgement", None) or {}).get("confidence")),
        "level": ((getattr(ans, "judgement", None) or {}).get("level")),
        "metrics": metrics,
    }
    if count is not None:
        row["answer_tokens"] = count(ans.answer or "")
        generated = (getattr(ans, "timings_ms", None) or {}).get("generate")
        skipped = abstained and generated is not None and generated <= 0  # abstained before any generation
        row["prompt_tokens"] = None if skipped or not sources else count(render_prompt(q.question, sources, prompts))
    return row


def _empty_row(q: Question, mode: str) -> dict:
    return {
        "id": q.id,
        "type": q.type,
        "type_inferred": q.type_inferred,
        "graded": q.graded,
        "split": q.split,
        "style": q.style,
        "mode": mode,
        "question": q.question,
        "gold_titles": q.gold_titles,
        "reference": q.reference,
        "retrieved_titles": [],
        "answer": None,
        "cited_titles": [],
        "abstained": None,
        "metrics": {},
        "latency_ms": None,
        "retrieve_ms": None,
        "answer_ms": None,
        "prompt_tokens": None,
        "answer_tokens": None,
        "error": None,
    }


def run_eval(settings, dataset: Dataset, *, modes: list[str], answer: str = "none", top_k: int = 10, evidence: bool | None = None,
             answer_top_k: int | None = None, retriever=None, assistant=None, judge=None,
             progress: bool = True) -> dict:
    """Evaluate `dataset`; returns the report dict (see eval/README.md for its shape)."""
    from tqdm import tqdm

    from rag.token_counts import count_tokens

    if answer not in ANSWER_CHOICES:
        raise ConfigError(f"--answer must be one of {', '.join(ANSWER_CHOICES)}, got {answer!r}")
    modes = check_modes(modes)
    if retriever is None:
        from rag.retrieve.hybrid import Retriever

        retriever = Retriever.from_settings(settings)
    if answer != "none" and assistant is None:
        assistant = make_assistant(settings, retriever, answer)
    checker = SupportChecker(retriever.embedder)
    prompts = load_prompts()

    def count(text: str) -> int:
        return count_tokens(text, settings.tokenizer)

    for mode in modes:  # warm-up: lazy model/session/Chroma start-up must not land in the first latency
        retriever.search("warm up query", 1, mode)

    rows: list[dict] = []
    started = time.perf_counter()
    # the bar appears once a run has taken a few seconds (on a terminal; never in a pipe or a log file)
    bar = tqdm(total=len(dataset.questions) * len(modes), desc="rag eval", unit="q", disable=None if progress else True,
               file=sys.stderr, dynamic_ncols=True, delay=PROGRESS_DELAY_S)
    try:
        for q in dataset.questions:
            for mode in modes:
                row = _empty_row(q, mode)
                rows.append(row)
                try:
                    t0 = time.perf_counter()
                    hits = retriever.search(q.question, top_k, mode)
                    row["retrieve_ms"] = round((time.perf_counter() - t0) * 1000, 3)
                    row["retrieved_titles"] = [h.title for h in hits]
                    row["latency_ms"] = row["retrieve_ms"]
                    if assistant is not None:
                        t0 = time.perf_counter()
                        ans = assistant.ask(q.question, top_k=answer_top_k, mode=mode, extractive=(answer == "extractive"),
                                            evidence=evidence)
                        wall = (time.perf_counter() - t0) * 1000
                        row["answer_ms"] = round(wall, 3)
                        total = (getattr(ans, "timings_ms", None) or {}).get("total")
                        row["latency_ms"] = round(float(total if total is not None else wall), 3)
                        row.update(score_answer(q, ans, checker, count, prompts))
                        row["stages"] = [st.to_dict() for st in getattr(ans, "stages", None) or []]
                        if judge is not None and not ans.abstained:
                            row["judge"] = judge.score(q.question, ans.answer, ans.sources, reference=q.reference)
                except RagError as exc:  # one failing question must not stop the run
                    row["error"] = str(exc)
                    log.warning("%s (%s): %s", q.id, mode, exc)
                bar.update(1)
                bar.set_postfix_str(mode, refresh=False)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started

    gold = {q.id: q.gold_titles for q in dataset.questions if q.answerable and q.gold_titles}
    for mode in modes:
        mode_rows = [r for r in rows if r["mode"] == mode]
        scored = retrieval_metrics({r["id"]: r["retrieved_titles"] for r in mode_rows if not r["error"]}, gold)
        for r in mode_rows:
            if r["id"] in scored:
                r["metrics"].update(scored[r["id"]])
            elif r["id"] in gold:  # errored: retrieval failed, counted as nothing found
                r["metrics"].update({k: 0.0 for k in ("recall@5", "recall@10", "ndcg@10", "mrr")})

    rows.sort(key=lambda r: modes.index(r["mode"]))  # stable sort: question order within each mode
    for r in rows:
        ordered = [k for k in METRICS if k in r["metrics"]] + [k for k in r["metrics"] if k not in METRICS]
        r["metrics"] = {k: (round(r["metrics"][k], 6) if isinstance(r["metrics"][k], float) else r["metrics"][k]) for k in ordered}

    summary = {mode: summarise([r for r in rows if r["mode"] == mode]) for mode in modes}
    if answer == "llm":
        for mode in modes:
            summary[mode]["stages"] = stage_summary([r for r in rows if r["mode"] == mode])
    if answer == "llm":  # the answerer falls back to extractive answers when the LLM fails
        for mode in modes:
            summary[mode]["llm_fallbacks"] = sum(
                1 for r in rows if r["mode"] == mode and r.get("answer_mode") not in (None, "llm")
            )
    types = list(dict.fromkeys(q.type for q in dataset.questions))
    by_type = {
        mode: {t: summarise([r for r in rows if r["mode"] == mode and r["type"] == t]) for t in types}
        for mode in modes
    }
    splits = [s for s in ("tune", "test") if any(q.split == s for q in dataset.questions)]
    by_split = {
        mode: {s: summarise([r for r in rows if r["mode"] == mode and r["split"] == s]) for s in splits}
        for mode in modes
    }
    report = {
        "version": REPORT_VERSION,
        "dataset": dataset.to_dict(),
        "config": build_config(settings, retriever, modes, answer, top_k, answer_top_k, judge, elapsed),
        "summary": summary,
        "by_type": by_type,
        "by_split": by_split,
        "abstention_tradeoff": abstention_tradeoff(rows, modes, splits),
        "questions": rows,
    }
    if judge is not None:
        report["judge"] = {
            mode: judge.summarise([r.get("judge") for r in rows if r["mode"] == mode and "judge" in r])
            for mode in modes
        }
    return report


def stage_summary(rows: list[dict]) -> dict:
    """Per LLM stage: calls, prompt and completion tokens and time, in total and per question."""
    out: dict = {}
    n = max(1, len(rows))
    for row in rows:
        for st in row.get("stages") or []:
            agg = out.setdefault(st["name"], {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "ms": 0.0})
            for key in ("calls", "prompt_tokens", "completion_tokens", "ms"):
                agg[key] += st[key]
    return {name: {**{f"{k}_total": round(v, 1) for k, v in agg.items()},
                   **{f"{k}_mean": round(v / n, 2) for k, v in agg.items()}} for name, agg in out.items()}


def abstention_tradeoff(rows: list[dict], modes: list[str], splits: list[str]) -> dict:
    """Per mode and split: caught unanswerable vs falsely refused answerable at every threshold on the
    answers' P(answerable), and where the configured operating point sits."""
    from rag.eval.calibrate import operating_points

    out: dict = {}
    for mode in modes:
        for split in splits or [None]:
            judged = [r for r in rows if r["mode"] == mode and r.get("confidence") is not None and r.get("graded", True)
                      and (split is None or r["split"] == split)]
            if not judged:
                continue
            answerable = [r["type"] != "unanswerable" for r in judged]
            configured = [r for r in judged if r.get("abstained")]
            out.setdefault(mode, {})[split or "all"] = {
                "points": operating_points([r["confidence"] for r in judged], answerable),
                "configured": {"caught": sum(1 for r in configured if r["type"] == "unanswerable"),
                               "unanswerable": sum(1 for a in answerable if not a),
                               "false_refusals": sum(1 for r in configured if r["type"] != "unanswerable"),
                               "answerable": sum(answerable),
                               "low_confidence": sum(1 for r in judged if r.get("level") == "low")},
            }
    return out


def build_config(settings, retriever, modes, answer, top_k, answer_top_k, judge, elapsed) -> dict:
    info = retriever.index.info()
    cfg = {
        "modes": modes,
        "answer": answer,
        "top_k": top_k,
        "answer_top_k": answer_top_k or settings.answer_top_k,
        "data_dir": str(Path(settings.data_dir).resolve()),
        "papers": info["papers"],
        "index_params": info["index_params"],
        "corpus_fingerprint": info["corpus_fingerprint"],
        "embedding": info.get("embedding"),
        "embed_backend": settings.embed_backend,
        "candidates": settings.candidates,
        "rrf_k": settings.rrf_k,
        "judgement": _judgement_config(settings),
        "llm_model": settings.llm_model if answer == "llm" or judge is not None else None,
        "judge": judge is not None,
        "support_thresholds": {"lexical": 0.6, "embedding_cosine": 0.75},
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(elapsed, 2),
    }
    return cfg


def _judgement_config(settings) -> dict:
    from rag.judge.params import params_for

    params = params_for(settings)
    return {"abstain_below": settings.abstain_threshold if settings.abstain_threshold is not None else params.abstain_below,
            "low_below": settings.low_confidence_threshold if settings.low_confidence_threshold is not None else params.low_below,
            "relevant_at": params.relevant_at, "fitted": {k: params.fitted.get(k) for k in ("dataset_sha256", "split", "created", "git_commit")}}
