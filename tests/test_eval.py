"""The evaluation harness: metrics on hand-computed cases, the dataset loader's error reporting,
report/gates/compare, and `rag eval` end to end on the real index (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from rag.corpus.parse import normalise_title
from rag.errors import ConfigError
from rag.eval.dataset import DatasetError, load_dataset
from rag.eval.grader import Judge, parse_scores
from rag.eval.metrics import (
    METRICS,
    SupportChecker,
    answer_sentences,
    citation_metrics,
    key_fact_recall,
    retrieval_metrics,
    strip_markup,
    summarise,
    unsupported_sentence_rate,
)
from rag.eval.report import (
    check_gates,
    compare,
    compare_text,
    load_report,
    parse_gates,
    write_report,
)
from rag.eval.runner import run_eval, score_answer
from rag.records import Answer, Hit, Paper, Retrieval, Source

# ---------------------------------------------------------------- retrieval metrics


def ref_metrics(ranked: list[str], gold: set[str]) -> dict[str, float]:
    """Textbook paper-level definitions, pure python: the reference ir_measures must agree with."""
    ranked = list(dict.fromkeys(normalise_title(t) for t in ranked))
    gold = {normalise_title(t) for t in gold}
    rel = [1 if t in gold else 0 for t in ranked]
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel[:10]))
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    first = next((i + 1 for i, r in enumerate(rel) if r), None)
    return {
        "recall@5": sum(rel[:5]) / len(gold),
        "recall@10": sum(rel[:10]) / len(gold),
        "ndcg@10": dcg / idcg,
        "mrr": 1 / first if first else 0.0,
    }


CASES = {
    # id: (ranked titles, gold titles, hand-computed values)
    "first": (["A", "B", "C"], {"A"}, {"recall@5": 1.0, "recall@10": 1.0, "ndcg@10": 1.0, "mrr": 1.0}),
    "third": (["X", "Y", "A"], {"A"}, {"recall@5": 1.0, "recall@10": 1.0, "ndcg@10": 0.5, "mrr": 1 / 3}),
    # relevant at ranks 1 and 3 of 3 gold: DCG = 1 + 1/2, IDCG = 1 + 1/log2(3) + 1/2
    "two_of_three": (["A", "Z", "B"], {"A", "B", "C"},
                     {"recall@5": 2 / 3, "recall@10": 2 / 3, "ndcg@10": 1.5 / (1.5 + 1 / math.log2(3)), "mrr": 1.0}),
    # relevant only at rank 7: outside @5
    "rank7": (["p1", "p2", "p3", "p4", "p5", "p6", "G", "p8"], {"G"},
              {"recall@5": 0.0, "recall@10": 1.0, "ndcg@10": 1 / math.log2(8), "mrr": 1 / 7}),
    "miss": (["p1", "p2"], {"G"}, {"recall@5": 0.0, "recall@10": 0.0, "ndcg@10": 0.0, "mrr": 0.0}),
    "empty_run": ([], {"G"}, {"recall@5": 0.0, "recall@10": 0.0, "ndcg@10": 0.0, "mrr": 0.0}),
    # normalised-title match: case and punctuation differences still count
    "normalised": (["attention is all you need!", "Other"], {"Attention Is All You Need"},
                   {"recall@5": 1.0, "recall@10": 1.0, "ndcg@10": 1.0, "mrr": 1.0}),
}


def test_retrieval_metrics_match_hand_computed_and_reference():
    runs = {qid: ranked for qid, (ranked, _, _) in CASES.items()}
    gold = {qid: g for qid, (_, g, _) in CASES.items()}
    got = retrieval_metrics(runs, gold)
    for qid, (ranked, g, expected) in CASES.items():
        ref = ref_metrics(ranked, g)
        for metric, value in expected.items():
            assert got[qid][metric] == pytest.approx(value, abs=1e-6), (qid, metric)
            assert ref[metric] == pytest.approx(value, abs=1e-6), (qid, metric, "reference")


def test_retrieval_metrics_agree_with_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    pool = [f"Paper {i}" for i in range(40)]
    runs, gold = {}, {}
    for q in range(30):
        runs[f"q{q}"] = list(rng.choice(pool, size=int(rng.integers(0, 15)), replace=False))
        gold[f"q{q}"] = set(rng.choice(pool, size=int(rng.integers(1, 12)), replace=False))
    got = retrieval_metrics(runs, gold)
    for qid, ranked in runs.items():
        ref = ref_metrics(ranked, gold[qid])
        for metric in ref:
            assert got[qid][metric] == pytest.approx(ref[metric], abs=1e-9), (qid, metric)


def test_retrieval_metrics_skip_queries_without_gold():
    got = retrieval_metrics({"u": ["A"], "a": ["A"]}, {"u": [], "a": ["A"]})
    assert set(got) == {"a"}


# ---------------------------------------------------------------- grounding metrics


def test_citation_metrics():
    m = citation_metrics(["A", "B", "a"], ["A", "B", "C"], ["A", "D"])
    assert m == {"citation_validity": 1.0, "citation_precision": 0.5, "citation_recall": 0.5}
    # a cited title that was not among the sources, plus 2 markers that named no source
    m = citation_metrics(["A", "Z"], ["A", "B"], ["A"], invalid_markers=2)
    assert m["citation_validity"] == pytest.approx(1 / 4)
    assert m["citation_precision"] == 0.5 and m["citation_recall"] == 1.0
    # no citations: validity/precision undefined, recall 0
    assert citation_metrics([], ["A"], ["A"]) == {"citation_validity": None, "citation_precision": None, "citation_recall": 0.0}
    # unanswerable (no gold): only validity
    assert citation_metrics(["A"], ["A"], None) == {"citation_validity": 1.0, "citation_precision": None, "citation_recall": None}


def test_key_fact_recall_is_case_insensitive_and_whole_token():
    answer = "Receler erases concepts; SPEED reaches 5.3 % with \\emph{MACE} on 1,000 prompts."
    assert key_fact_recall(answer, ["receler", "speed", "5.3%", "MACE", "1,000 prompts"]) == 1.0
    assert key_fact_recall(answer, ["RECE"]) == 0.0  # not inside "Receler"
    assert key_fact_recall(answer, ["Receler", "TRCE", "AdvUnlearn", "MACE"]) == 0.5
    assert key_fact_recall(answer, []) is None


def test_answer_sentences_strip_markdown_markers_and_title_prefix():
    text = (
        "- **Erasing Concepts from Diffusion Models** — ESD fine-tunes the weights [1]. It uses negative guidance. [2]\n"
        "\n"
        "## Summary\n"
        "1. A *plain* claim with a [link](http://x.y) and `code` [3]."
    )
    got = answer_sentences(text)
    assert got == [
        ("ESD fine-tunes the weights.", [1]),
        ("It uses negative guidance.", [2]),
        ("Summary", []),
        ("A plain claim with a link and code.", [3]),
    ]
    assert strip_markup("**Title** — claim [1, 2].") == "claim."


ABSTRACT = (
    "We propose Erased Stable Diffusion (ESD), which fine-tunes model weights to erase a visual concept. "
    "The method uses negative guidance as a teacher. We benchmark erasing nudity and artistic styles."
)


def test_unsupported_sentence_rate_lexical():
    sources = {1: "Erasing Concepts from Diffusion Models\n" + ABSTRACT, 2: "Another paper\nAbout graph neural networks."}
    checker = SupportChecker()
    supported = "ESD fine-tunes the model weights to erase a visual concept [1]."
    unsupported = "The method was trained on ten thousand GPUs for a month [1]."
    assert unsupported_sentence_rate(supported, sources, [1], checker) == 0.0
    assert unsupported_sentence_rate(f"{supported} {unsupported}", sources, [1], checker) == 0.5
    # a supported sentence that cites the wrong source is unsupported
    assert unsupported_sentence_rate("ESD fine-tunes model weights to erase visual concepts [2].", sources, [2], checker) == 1.0
    # no own marker: checked against every source the answer cites
    assert unsupported_sentence_rate("Negative guidance serves as the teacher.", sources, [2, 1], checker) == 0.0
    assert unsupported_sentence_rate("", sources, [1], checker) is None


class TableEmbedder:
    """Embeds known texts to fixed unit vectors (for the cosine path), anything else to e3."""

    name = "table"

    def __init__(self, table):
        self.table = table
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            v = np.asarray(self.table.get(t, [0.0, 0.0, 1.0]), dtype=np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def test_unsupported_sentence_rate_embedding_threshold():
    abstract = "Alpha beta gamma delta."
    sources = {1: abstract}
    close = "Completely different wording here."  # no lexical overlap at all
    far = "Another unrelated statement entirely."
    emb = TableEmbedder({abstract: [1, 0, 0], close: [0.8, 0.6, 0], far: [0.7, 0.71414, 0]})  # cos 0.8 / 0.7
    checker = SupportChecker(emb)
    assert unsupported_sentence_rate(close + " [1]", sources, [1], checker) == 0.0
    assert unsupported_sentence_rate(far + " [1]", sources, [1], checker) == 1.0
    calls = emb.calls
    assert unsupported_sentence_rate(close + " [1]", sources, [1], checker) == 0.0
    assert emb.calls == calls  # cached


def _q(qtype="specific", gold=("Erasing Concepts from Diffusion Models",), facts=("ESD",)):
    from rag.eval.dataset import Question

    return Question("q1", qtype, "What does ESD do?", list(gold), list(facts))


def _sources():
    return [
        Source(1, "p1", "Erasing Concepts from Diffusion Models", ABSTRACT[:80], 0.9, ABSTRACT),
        Source(2, "p2", "Graph Paper", "graphs", 0.5, "We study graph neural networks on molecules."),
    ]


def test_score_answer_on_hand_built_answer_records():
    checker = SupportChecker()
    ans = Answer(
        question="What does ESD do?",
        answer="- **Erasing Concepts from Diffusion Models** — ESD fine-tunes model weights to erase a visual concept [1]. "
        "It was trained on ten thousand GPUs [1].",
        mode="llm",
        abstained=False,
        citations=[{"n": 1, "paper_id": "p1", "title": "Erasing Concepts from Diffusion Models"}],
        sources=_sources(),
        invalid_citations=1,
        timings_ms={"retrieve": 5, "generate": 10, "total": 16},
    )
    row = score_answer(_q(), ans, checker, count=lambda t: len(t.split()))
    m = row["metrics"]
    assert m["citation_validity"] == 0.5  # 1 valid citation, 1 removed marker
    assert m["citation_precision"] == 1.0 and m["citation_recall"] == 1.0
    assert m["key_fact_recall"] == 1.0
    assert m["unsupported_sentence_rate"] == 0.5
    assert m["false_abstention_rate"] == 0.0 and "abstention_accuracy" not in m
    assert row["cited_titles"] == ["Erasing Concepts from Diffusion Models"]
    assert row["answer_tokens"] > 0 and row["prompt_tokens"] > 0

    # abstained on an answerable question: a false abstention that delivered no fact and no gold paper
    # (scored 0, not left out: leaving it out would make refusing look free to recall)
    abst = Answer(question="q", answer="The indexed papers do not answer this question.", mode="extractive",
                  abstained=True, sources=_sources(), timings_ms={"retrieve": 5, "generate": 0.0, "total": 6})
    row = score_answer(_q(), abst, checker, count=len)
    assert row["metrics"] == {"false_abstention_rate": 1.0, "citation_recall": 0.0, "key_fact_recall": 0.0}
    row = score_answer(_q(facts=()), abst, checker, count=len)
    assert row["metrics"] == {"false_abstention_rate": 1.0, "citation_recall": 0.0, "key_fact_recall": None}
    assert row["prompt_tokens"] is None  # abstained before generating: no prompt sent
    # the same abstention on an unanswerable question is correct
    row = score_answer(_q("unanswerable", (), ()), abst, checker)
    assert row["metrics"] == {"abstention_accuracy": 1.0}
    # answering an unanswerable question: wrong; validity/support still scored, gold-based metrics not
    row = score_answer(_q("unanswerable", (), ()), ans, checker)
    m = row["metrics"]
    assert m["abstention_accuracy"] == 0.0
    assert m["citation_precision"] is None and m["citation_recall"] is None and m["key_fact_recall"] is None
    assert m["citation_validity"] == 0.5 and m["unsupported_sentence_rate"] == 0.5


def test_summarise_means_skip_not_applicable():
    rows = [
        {"type": "list", "metrics": {"recall@10": 1.0, "false_abstention_rate": 0.0}, "latency_ms": 10},
        {"type": "list", "metrics": {"recall@10": 0.5, "false_abstention_rate": 1.0}, "latency_ms": 30, "abstained": True},
        {"type": "unanswerable", "metrics": {"abstention_accuracy": 1.0}, "latency_ms": 20, "abstained": True},
    ]
    s = summarise(rows)
    assert s["recall@10"] == 0.75 and s["abstention_accuracy"] == 1.0 and s["false_abstention_rate"] == 0.5
    assert s["citation_validity"] is None
    assert s["latency_ms_p50"] == 20.0 and s["latency_ms_p95"] == pytest.approx(29.0)
    assert (s["questions"], s["answerable"], s["unanswerable"], s["abstained"]) == (3, 2, 1, 2)
    assert set(METRICS) <= set(s)


# ---------------------------------------------------------------- dataset loader

TITLES = ["Erasing Concepts from Diffusion Models", "Attention Is All You Need", "Graph Paper"]


def _line(**kw):
    rec = {"id": "q", "type": "specific", "question": "what?", "gold_titles": ["Graph Paper"], "key_facts": ["x"], "notes": ""}
    rec.update(kw)
    return json.dumps({k: v for k, v in rec.items() if v is not ...})


def test_loader_reports_each_problem_with_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        _line(id="ok-1"),
        '{"id": "broken", "type": ',  # line 2: bad JSON
        _line(id="no-question", question=...),  # line 3: missing field
        _line(id="bad-type", type="trivia"),  # line 4: unknown type
        _line(id="typo", gold_titles=["Erasing Concept from Diffusion Models"]),  # line 5: not in corpus
        "",
        _line(id="ok-2", gold_titles=["attention is all you need"]),  # line 7: normalised match
        _line(id="ok-1"),  # line 8: duplicate id
        _line(id="un", type="unanswerable", gold_titles=[], key_facts=[]),  # line 9
    ]) + "\n")
    ds = load_dataset(path, TITLES)
    msgs = {i.line: i.message for i in ds.issues}
    assert set(msgs) == {2, 3, 4, 5, 8}
    assert "invalid JSON" in msgs[2]
    assert "missing field question" in msgs[3]
    assert "unknown type 'trivia'" in msgs[4]
    assert "not in the corpus" in msgs[5] and "Erasing Concepts from Diffusion Models" in msgs[5]  # closest title
    assert "duplicate id 'ok-1'" in msgs[8]
    assert str(ds.issues[0]).startswith(f"{path}:2: ")
    ids = [q.id for q in ds.questions]
    assert ids == ["ok-1", "typo", "ok-2", "un"]  # bad lines skipped; a bad gold title keeps its question
    assert ds.questions[2].gold_titles == ["Attention Is All You Need"]  # corpus spelling
    assert ds.questions[2].line == 7
    assert ds.counts() == {"specific": 3, "unanswerable": 1}


def test_loader_strict_and_empty(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_line(id="a") + "\n" + _line(id="b", gold_titles=["Nope"]) + "\n")
    with pytest.raises(DatasetError, match=r"d\.jsonl:2 \(b\): gold title not in the corpus"):
        load_dataset(path, TITLES, strict=True)
    assert len(load_dataset(path, TITLES).questions) == 2
    path.write_text("not json\n")
    with pytest.raises(DatasetError, match="no usable questions.*:1: invalid JSON"):
        load_dataset(path, TITLES)
    with pytest.raises(DatasetError, match="cannot read dataset"):
        load_dataset(tmp_path / "missing.jsonl", TITLES)


def test_loader_type_and_gold_consistency(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        _line(id="a", type="unanswerable"),  # unanswerable with gold
        _line(id="b", gold_titles=[]),  # answerable without gold
        _line(id="c", key_facts="x"),  # wrong type
        _line(id="d", extra=1),  # unknown field: kept, reported
    ]) + "\n")
    ds = load_dataset(path, TITLES)
    assert [i.line for i in ds.issues] == [1, 2, 3, 4]
    assert [q.id for q in ds.questions] == ["d"]


def test_dev_set_gold_titles_all_in_corpus(corpus_papers):
    ds = load_dataset(Path(__file__).resolve().parent.parent / "eval" / "datasets" / "dev.jsonl",
                      [p.title for p in corpus_papers], strict=True)
    assert len(ds.questions) >= 64


# ---------------------------------------------------------------- runner, report, gates, compare (no model)


class FakeIndex:
    def __init__(self, papers):
        self._papers = papers

    def papers(self):
        return list(self._papers.values())

    def info(self):
        return {"papers": len(self._papers), "index_params": {"fake": True}, "corpus_fingerprint": "f" * 8}


class FakeRetriever:
    """A rag.retrieve.hybrid.PaperSearch with a fixed ranking per question."""

    def __init__(self, papers, ranking, embedder):
        self.papers = {p.paper_id: p for p in papers}
        self.index = FakeIndex(self.papers)
        self.ranking = ranking  # question -> titles
        self.embedder = embedder

    def search(self, query, top_k=None, mode=None, query_vec=None):
        by_title = {p.title: p for p in self.papers.values()}
        titles = self.ranking.get(query, list(by_title))
        if mode == "bm25":
            titles = list(reversed(titles))
        return [Hit(i, by_title[t].paper_id, t, 1.0 / i, by_title[t].abstract[:50]) for i, t in enumerate(titles[:top_k], 1)]

    def retrieve(self, query, top_k=None, mode=None):
        return Retrieval(query, mode or "hybrid", self.search(query, top_k, mode), 0.5)


class FakeAssistant:
    def __init__(self, retriever):
        self.retriever = retriever

    def ask(self, question, top_k=None, mode=None, extractive=False, evidence=None):
        hits = self.retriever.search(question, 2, mode)
        sources = [Source(h.rank, h.paper_id, h.title, h.snippet, h.score, self.retriever.papers[h.paper_id].abstract) for h in hits]
        if "unicorn" in question:
            return Answer(question=question, answer="The indexed papers do not answer this question.", mode="extractive",
                          abstained=True, sources=sources, timings_ms={"retrieve": 1, "generate": 0, "total": 2})
        first = sources[0]
        sentence = first.abstract.split(". ")[0].rstrip(".")
        return Answer(question=question, answer=f"- **{first.title}** — {sentence} [1].", mode="extractive",
                      abstained=False, citations=[{"n": 1, "paper_id": first.paper_id, "title": first.title}],
                      sources=sources, timings_ms={"retrieve": 1, "generate": 1, "total": 3})


@pytest.fixture
def tiny(tmp_path, hash_embedder):
    papers = [
        Paper("p1", "Erasing Concepts from Diffusion Models", ABSTRACT),
        Paper("p2", "Graph Paper", "We study graph neural networks on molecules. Results improve by 5%."),
        Paper("p3", "Attention Is All You Need", "The Transformer relies entirely on attention. It beats recurrent nets."),
    ]
    ranking = {
        "What does ESD do?": ["Erasing Concepts from Diffusion Models", "Graph Paper", "Attention Is All You Need"],
        "graph networks?": ["Attention Is All You Need", "Graph Paper", "Erasing Concepts from Diffusion Models"],
    }
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "s1", "type": "specific", "question": "What does ESD do?",
                    "gold_titles": ["Erasing Concepts from Diffusion Models"], "key_facts": ["ESD", "absent fact"], "notes": ""}),
        json.dumps({"id": "s2", "type": "specific", "question": "graph networks?",
                    "gold_titles": ["Graph Paper"], "key_facts": ["graph"], "notes": ""}),
        json.dumps({"id": "u1", "type": "unanswerable", "question": "unicorn breeding?",
                    "gold_titles": [], "key_facts": [], "notes": ""}),
    ]) + "\n")
    retriever = FakeRetriever(papers, ranking, hash_embedder)
    ds = load_dataset(path, [p.title for p in papers])
    return ds, retriever


def test_run_eval_report_shape_and_files(tiny, make_settings, tmp_path):
    ds, retriever = tiny
    settings = make_settings()
    report = run_eval(settings, ds, modes=["hybrid", "bm25"], answer="extractive", top_k=3,
                      retriever=retriever, assistant=FakeAssistant(retriever), progress=False)
    assert set(report) >= {"dataset", "config", "summary", "by_type", "questions"}
    assert list(report["summary"]) == ["hybrid", "bm25"]
    for mode in ("hybrid", "bm25"):
        assert set(METRICS) <= set(report["summary"][mode])
        assert set(report["by_type"][mode]) == {"specific", "unanswerable"}
    h = report["summary"]["hybrid"]
    assert h["recall@10"] == 1.0 and h["mrr"] == pytest.approx((1 + 0.5) / 2)
    assert h["abstention_accuracy"] == 1.0 and h["false_abstention_rate"] == 0.0
    assert h["citation_validity"] == 1.0 and h["unsupported_sentence_rate"] == 0.0
    assert h["citation_precision"] == 0.5  # s2 cites the top hit, which is not gold
    assert h["key_fact_recall"] == pytest.approx((0.5 + 0.0) / 2)  # s1: "ESD" of 2 facts; s2 answers from the wrong paper
    assert report["by_type"]["hybrid"]["unanswerable"]["recall@10"] is None
    rows = report["questions"]
    assert len(rows) == 6 and [r["mode"] for r in rows] == ["hybrid"] * 3 + ["bm25"] * 3
    row = rows[0]
    for key in ("id", "type", "mode", "question", "retrieved_titles", "answer", "cited_titles", "abstained", "metrics", "latency_ms"):
        assert key in row
    assert row["latency_ms"] == 3  # the answer's end-to-end time

    files = write_report(report, tmp_path / "out")
    names = {f.name for f in files}
    assert names == {"report.json", "report.md", "report.csv", "metrics_by_mode.png", "metrics_by_type.png", "latency.png"}
    for f in files:
        assert f.stat().st_size > 0
    assert (tmp_path / "out" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| recall@10 |" in md and "![latency](latency.png)" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["hybrid"]["recall@10"] == 1.0


def test_run_eval_retrieval_only_has_null_answer_metrics(tiny, make_settings):
    ds, retriever = tiny
    report = run_eval(make_settings(), ds, modes=["dense"], answer="none", retriever=retriever, progress=False)
    s = report["summary"]["dense"]
    assert s["recall@5"] == 1.0
    assert all(s[k] is None for k in ("citation_validity", "key_fact_recall", "abstention_accuracy", "prompt_tokens_mean"))
    assert all(r["answer"] is None and r["abstained"] is None for r in report["questions"])


def test_gates_parse_and_check():
    gates = parse_gates(["recall@10=0.9", "bm25:mrr=0.5"], ["hybrid", "bm25"], "none")
    assert [(g["mode"], g["metric"]) for g in gates] == [("hybrid", "recall@10"), ("bm25", "recall@10"), ("bm25", "mrr")]
    report = {"summary": {"hybrid": {"recall@10": 0.95, "mrr": 0.2}, "bm25": {"recall@10": 0.85, "mrr": None}}}
    results = check_gates(report, gates)
    assert [r["passed"] for r in results] == [True, False, False]
    over = check_gates(report, parse_gates(["latency_ms_p95=100"], ["hybrid"], "none", "over"))
    assert over[0]["passed"] is False  # missing value fails
    for bad, msg in [("recall@10", "expected METRIC=VALUE"), ("recall@11=0.5", "unknown metric"),
                     ("dense:mrr=0.5", "not evaluated"), ("key_fact_recall=0.5", "needs answers")]:
        with pytest.raises(ConfigError, match=msg):
            parse_gates([bad], ["hybrid", "bm25"], "none")


def test_compare_reports(tmp_path):
    a = {"dataset": {"sha256": "x"}, "config": {"answer": "none"},
         "summary": {"hybrid": {"recall@10": 0.8, "mrr": 0.7, "latency_ms_p50": 50.0}, "dense": {"recall@10": 0.5}},
         "by_type": {"hybrid": {"list": {"recall@10": 0.6, "ndcg@10": 0.5, "mrr": 0.5}}}}
    b = {"dataset": {"sha256": "x"}, "config": {"answer": "none"},
         "summary": {"hybrid": {"recall@10": 0.9, "mrr": 0.6, "latency_ms_p50": 40.0}},
         "by_type": {"hybrid": {"list": {"recall@10": 0.7, "ndcg@10": 0.5, "mrr": 0.6}}}}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    cmp = compare(load_report(tmp_path / "a"), load_report(tmp_path / "b.json"))
    s = cmp["summary"]["hybrid"]
    assert s["recall@10"] == {"a": 0.8, "b": 0.9, "delta": 0.1, "verdict": "better"}
    assert s["mrr"]["verdict"] == "worse" and s["latency_ms_p50"]["verdict"] == "better"
    assert cmp["by_type"]["hybrid"]["list"]["recall@10"]["delta"] == pytest.approx(0.1)
    assert any("dense" in w for w in cmp["warnings"])
    text = compare_text(cmp)
    assert "recall@10" in text and "+0.100" in text and "-0.100" in text
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a `rag eval` report"):
        load_report(tmp_path / "bad.json")


# ---------------------------------------------------------------- judge


class ScriptedLLM:
    """A rag.clients.chat.ChatModel replying from a script."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.messages = []

    def complete(self, messages, deadline=None, on_usage=None):
        self.messages.append(messages)
        return self.replies.pop(0)

    def stream(self, messages, deadline=None, on_usage=None):
        yield self.complete(messages)


def test_judge_scores_and_summary(make_settings):
    assert parse_scores('Sure: {"faithfulness": 0.5, "answer_relevance": 1, "reason": "ok"}')["faithfulness"] == 0.5
    assert parse_scores('{"faithfulness": 5, "answer_relevance": 3}')["answer_relevance"] == 0.5  # 1-5 scale
    with pytest.raises(ValueError):
        parse_scores("no json here")
    llm = ScriptedLLM(['{"faithfulness": 0.8, "answer_relevance": 0.6}',
                       '{"supported": true, "needed": [1]}', '{"supported": false, "needed": []}', "garbage"])
    judge = Judge.from_settings(make_settings(), llm=llm)
    first = judge.score("What does ESD do?", "ESD erases concepts [1]. It fine-tunes the weights [1].\nIt is old.", _sources())
    second = judge.score("q", "a", _sources())
    assert first["faithfulness"] == 0.8 and "error" in second
    prompt = llm.messages[0][0]["content"]
    assert "What does ESD do?" in prompt and "[1] Erasing Concepts from Diffusion Models" in prompt
    assert "{question}" not in prompt and "{sources}" not in prompt
    # claim by claim: three sentences, the uncited one unsupported without a call; one of two cited supported
    claim_prompt = llm.messages[1][0]["content"]
    assert "ESD erases concepts" in claim_prompt and "[1] Erasing Concepts from Diffusion Models" in claim_prompt
    assert len(llm.messages) == 4  # holistic, two cited claims, the second answer's holistic call
    assert first["claims"] == 3 and first["judge_citation_recall"] == 1 / 3
    assert first["citations"] == 2 and first["judge_citation_precision"] == 0.5
    assert Judge.summarise([first, second, None]) == {"faithfulness": 0.8, "answer_relevance": 0.6,
                                                      "judge_citation_recall": round(1 / 3, 6),
                                                      "judge_citation_precision": 0.5, "judge_answer_correctness": None,
                                                      "judged": 1, "failed": 1}  # no reference answers: not rated
    assert Judge.from_settings(make_settings()) is None  # no LLM configured: judge off


# ---------------------------------------------------------------- end to end on the real index (slow)

SMALL = [
    {"id": "spec-01", "type": "specific", "question": "How many Adversarial instruction-following samples does Robin3D construct?",
     "gold_titles": ["Robin3D: Improving 3D Large Language Model via Robust Instruction Tuning"], "key_facts": ["344K"], "notes": ""},
    {"id": "list-02", "type": "list", "question": "attacks and benchmarks showing concept erasure in text-to-image models is not robust",
     "gold_titles": ["Circumventing Concept Erasure Methods For Text-to-Image Generative Models",
                     "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models by Finding Problematic Prompts"],
     "key_facts": ["P4D"], "notes": ""},
    {"id": "unans-01", "type": "unanswerable", "question": "What is the best recipe for sourdough bread?",
     "gold_titles": [], "key_facts": [], "notes": ""},
]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("evalset") / "small.jsonl"
    lines = [json.dumps(r) for r in SMALL]
    lines.insert(1, '{"id": "broken"')  # line 2: malformed, reported and skipped
    lines.append(json.dumps(SMALL[0] | {"id": "typo", "gold_titles": ["Robin 3D: Improving 3D LLMs"]}))  # line 5
    path.write_text("\n".join(lines) + "\n")
    return path


def _env(settings):
    return {"RAG_DATA_DIR": str(settings.data_dir), "RAG_EMBED_CACHE_PATH": str(settings.embed_cache_path)}


@pytest.fixture(scope="module")
def eval_runs(real_index, small_dataset, tmp_path_factory):
    """Two retrieval-only runs of the small set (all modes; hybrid only) for the report/compare tests."""
    out = tmp_path_factory.mktemp("evalruns")
    a = run_cli("eval", "--dataset", str(small_dataset), "--answer", "none", "--out", str(out / "a"), "--allow-skips",
                env=_env(real_index))
    b = run_cli("eval", "--dataset", str(small_dataset), "--answer", "none", "--modes", "hybrid", "--top-k", "5", "--allow-skips",
                "--out", str(out / "b"), "--json", env=_env(real_index))
    return out, a, b


@pytest.mark.slow
def test_rag_eval_end_to_end_writes_report(eval_runs):
    out, a, b = eval_runs
    assert a.returncode == 0, a.stderr
    assert "small.jsonl:2: invalid JSON" in a.stderr
    assert "small.jsonl:5 (typo): gold title not in the corpus" in a.stderr
    for name in ("report.json", "report.md", "metrics_by_mode.png", "metrics_by_type.png", "latency.png"):
        assert (out / "a" / name).stat().st_size > 0, name
    report = json.loads((out / "a" / "report.json").read_text())
    assert list(report["summary"]) == ["hybrid", "dense", "bm25"]
    assert len(report["questions"]) == 4 * 3
    assert [i["line"] for i in report["dataset"]["issues"]] == [2, 5]
    for s in report["summary"].values():
        assert set(METRICS) <= set(s)
        assert 0 <= s["recall@10"] <= 1 and s["latency_ms_p50"] > 0
        assert s["citation_validity"] is None
    rows = {(r["id"], r["mode"]): r for r in report["questions"]}
    assert rows[("spec-01", "hybrid")]["metrics"]["mrr"] == 1.0  # Robin3D is found first
    assert rows[("typo", "hybrid")]["metrics"]["recall@10"] == 0.0  # unknown gold title: never retrieved
    assert rows[("unans-01", "hybrid")]["metrics"] == {}
    assert len(rows[("spec-01", "bm25")]["retrieved_titles"]) == 10
    assert "recall@10" in a.stdout and "hybrid" in a.stdout
    assert b.returncode == 0, b.stderr
    summary = json.loads(b.stdout)
    assert list(summary["summary"]) == ["hybrid"] and summary["config"]["top_k"] == 5
    assert len(json.loads((out / "b" / "report.json").read_text())["questions"][0]["retrieved_titles"]) == 5


@pytest.mark.slow
def test_rag_eval_fail_under_gate_exits_non_zero(real_index, small_dataset, tmp_path):
    r = run_cli("eval", "--dataset", str(small_dataset), "--answer", "none", "--modes", "bm25", "--out", str(tmp_path),
                "--allow-skips", "--fail-under", "recall@10=0.99", "mrr=0.01", env=_env(real_index))
    assert r.returncode == 1, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error: gate failed"))
    assert "bm25 recall@10 = 0." in line and "below the floor 0.99" in line
    assert "gate failed: bm25 mrr" not in r.stderr and "gate passed: bm25 mrr" in r.stdout
    assert json.loads((tmp_path / "report.json").read_text())["gates"][0]["passed"] is False
    bad = run_cli("eval", "--dataset", str(small_dataset), "--fail-under", "recal@10=0.5", env=_env(real_index))
    assert bad.returncode == 2 and "unknown metric 'recal@10'" in bad.stderr
    strict = run_cli("eval", "--dataset", str(small_dataset), "--answer", "none", "--strict", env=_env(real_index))
    assert strict.returncode == 2 and "small.jsonl:2" in strict.stderr


@pytest.mark.slow
def test_rag_eval_compare(eval_runs):
    out, a, b = eval_runs
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    r = run_cli("eval", "compare", str(out / "a" / "report.json"), str(out / "b"))
    assert r.returncode == 0, r.stderr
    assert "[hybrid]" in r.stdout and "recall@5" in r.stdout and "delta" in r.stdout
    assert "modes in only one report" in r.stdout and "config top_k differs" in r.stdout
    j = run_cli("eval", "compare", str(out / "a"), str(out / "b"), "--json")
    cmp = json.loads(j.stdout)
    assert cmp["summary"]["hybrid"]["recall@10"]["delta"] is not None
    missing = run_cli("eval", "compare", str(out / "a"), str(out / "nope"))
    assert missing.returncode == 2 and "cannot read report" in missing.stderr


@pytest.mark.slow
def test_rag_eval_answers_extractive_and_llm_with_judge(real_index, small_dataset, tmp_path, fake_llm):
    import os

    from rag.apps.cli import main

    env = _env(real_index)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["eval", "--dataset", str(small_dataset), "--modes", "hybrid", "--answer", "extractive",
                     "--out", str(tmp_path / "x"), "--allow-skips"]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    report = json.loads((tmp_path / "x" / "report.json").read_text())
    s = report["summary"]["hybrid"]
    assert s["citation_validity"] == 1.0 and s["unsupported_sentence_rate"] == 0.0  # quotes are supported
    assert s["abstention_accuracy"] == 1.0  # sourdough
    assert s["prompt_tokens_mean"] > 0 and s["answer_tokens_mean"] > 0
    row = next(r for r in report["questions"] if r["id"] == "spec-01")
    assert row["metrics"]["key_fact_recall"] == 1.0 and row["cited_titles"]

    # one reply for answers and judge alike: JSON the judge reads, with a citation the answer check accepts
    fake_llm.default_reply = '{"faithfulness": 0.5, "answer_relevance": 1.0, "reason": "fake [1]"}'
    r = run_cli("eval", "--dataset", str(small_dataset), "--modes", "hybrid", "--answer", "llm", "--judge", "--allow-skips",
                "--out", str(tmp_path / "llm"), env=env | {"RAG_LLM_BASE_URL": fake_llm.base_url, "RAG_LLM_API_KEY": "sk-test",
                                                       "RAG_EVIDENCE": "off"})
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "llm" / "report.json").read_text())
    assert report["judge"]["hybrid"]["faithfulness"] == 0.5 and report["judge"]["hybrid"]["judged"] >= 1
    assert report["summary"]["hybrid"]["llm_fallbacks"] == 0
    assert "LLM judge" in (tmp_path / "llm" / "report.md").read_text()
