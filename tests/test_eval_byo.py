"""Bring your own eval set: minimal lines run as they are, CSV and RAGAS sets import and run, reference
answers are scored (offline, and by the judge over the fake OpenAI server), skipped lines fail the run,
report.csv opens with one row per question, and `rag eval generate` drafts a set with the fake LLM.

The fixtures in tests/data/byo_eval/ were written by hand, as a user would, about papers of the 20-paper
index these tests build with the hash embedder."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import hash_index, run_cli
from test_eval import tiny  # noqa: F401 (a fixture: three papers, a fixed ranking)

from rag.answer.assistant import is_list_question
from rag.eval.dataset import load_dataset

FIXTURES = Path(__file__).parent / "data" / "byo_eval"
ROBIN = "Robin3D: Improving 3D Large Language Model via Robust Instruction Tuning"
MACE = "MACE: Mass Concept Erasure in Diffusion Models"
MMLU = "MMLU-Pro: A More Robust and Challenging Multi-Task Language Understanding Benchmark"
CIRCUMVENT = "Circumventing Concept Erasure Methods For Text-to-Image Generative Models"
RECELER = "Receler: Reliable Concept Erasing of Text-to-Image Diffusion Models via Lightweight Erasers"
TRCE = "TRCE: Towards Reliable Malicious Concept Erasure in Text-to-Image Diffusion Models"


@pytest.fixture(scope="module")
def env(tmp_path_factory, small_papers):
    """The 20 small papers indexed with the hash embedder; the environment `rag` runs with."""
    root = tmp_path_factory.mktemp("byo")
    settings = hash_index(root, [(p.title, p.abstract) for p in small_papers])
    return {"RAG_DATA_DIR": str(settings.data_dir), "RAG_CORPUS": str(root / "papers.jsonl"), "RAG_EMBED_BACKEND": "hash"}


def _eval(env, dataset, out, *extra):
    return run_cli("eval", "--dataset", str(dataset), "--modes", "hybrid", "--no-behaviour", "--out", str(out), *extra,
                   env=env)


def _csv_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def test_ragas_jsonl_imports_and_runs(env, tmp_path):
    out = tmp_path / "from_ragas.jsonl"
    r = run_cli("eval", "import", FIXTURES / "ragas.jsonl", "--format", "ragas", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    # the unmatched context is listed with its text; another system's answers are said to be left out
    assert re.search(r"ragas\.jsonl:3: context not matched to a paper: 'A passage about protein folding", r.stderr)
    assert "field 'response' is another system's output" in r.stderr
    assert "4 of 4 rows imported; 4 of 5 contexts matched to a paper" in r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["gold_titles"] for x in lines] == [[ROBIN], [MACE], [MMLU], [CIRCUMVENT]]  # contexts -> their papers
    assert lines[1]["question"] == "How many concepts can MACE erase at once?"  # user_input
    assert lines[1]["reference"].startswith("MACE scales the erasure scope up to 100 concepts")  # reference
    assert lines[0]["reference"].startswith("Robin3D's RIG engine builds 344K")  # ground_truth
    assert all("answer" not in x and "response" not in x for x in lines)

    r = _eval(env, out, tmp_path / "run")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    s = report["summary"]["hybrid"]
    assert s["questions"] == 4 and s["errors"] == 0
    assert 0 < s["reference_f1"] <= 1 and s["reference_fact_recall"] is not None
    assert "reference_f1" in r.stdout  # shown because the set has references
    rows = _csv_rows(tmp_path / "run" / "report.csv")
    assert [row["question"] for row in rows] == [x["question"] for x in lines]
    assert {"question", "answer", "cited_titles", "level", "recall@10", "reference_f1"} <= set(rows[0])


def test_csv_written_by_hand_imports_and_runs(env, tmp_path):
    out = tmp_path / "from_csv.jsonl"
    r = run_cli("eval", "import", FIXTURES / "questions.csv", "--format", "csv", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "questions.csv:5: title not in the index: 'The Graph Transformer Zoo'" in r.stderr
    assert "4 of 5 titles matched (1 by normalised title)" in r.stderr  # "receler: reliable ..." in lower case
    assert str(Path(env["RAG_DATA_DIR"]).resolve()) in r.stderr  # which index it was checked against
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[1]["gold_titles"] == [MACE, RECELER, TRCE]  # ";"-separated, corpus spelling
    assert "gold_titles" not in lines[2] and lines[2]["reference"].startswith("MMLU-Pro causes a drop")

    r = _eval(env, out, tmp_path / "run", "--answer", "none")
    assert r.returncode == 0, r.stderr
    assert "gold title not in the corpus: 'The Graph Transformer Zoo'" in r.stderr
    rows = _csv_rows(tmp_path / "run" / "report.csv")
    assert len(rows) == 4 and rows[3]["recall@10"] == "0.0"  # an unknown title is never retrieved
    assert rows[2]["recall@10"] == ""  # a reference answer alone: no retrieval metric

    # the same CSV handed to `rag eval` directly says how to convert it
    r = _eval(env, FIXTURES / "questions.csv", tmp_path / "direct")
    assert r.returncode == 2 and "rag eval import" in r.stderr and "--format csv" in r.stderr


def test_minimal_lines_run_without_conversion(env, tmp_path):
    r = _eval(env, FIXTURES / "minimal.jsonl", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "4 question(s) without a type: inferred as the answerer decides (list 1, specific 3)" in r.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {row["question"]: row for row in report["questions"]}
    for q, row in rows.items():
        assert row["type"] == ("list" if is_list_question(q) else "specific") and row["type_inferred"]
        assert re.fullmatch(r"q-[0-9a-f]{10}", row["id"])
    assert report["dataset"]["inferred_types"] == {"list": 1, "specific": 3}
    listed = rows["which papers erase concepts in diffusion models?"]
    assert listed["metrics"]["recall@10"] == 1.0 and "citation_precision" in listed["metrics"]
    referenced = rows["How many options does MMLU-Pro give per question?"]["metrics"]
    assert "recall@10" not in referenced and referenced["reference_f1"] is not None
    # no gold at all: only what needs none (citation validity, verbatim support, latency)
    bare = rows["What does MACE use besides LoRA finetuning?"]
    assert not bare["graded"] and bare["latency_ms"] > 0
    assert set(bare["metrics"]) <= {"citation_validity", "citation_precision", "citation_recall", "key_fact_recall",
                                    "unsupported_sentence_rate"}
    assert bare["metrics"].get("citation_precision") is None and "false_abstention_rate" not in bare["metrics"]
    assert report["summary"]["hybrid"]["questions"] == 4


def test_skipped_lines_fail_the_run_unless_allowed(env, tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join([
        json.dumps({"question": "How many adversarial samples does Robin3D construct?", "gold_titles": [ROBIN]}),
        "question,answer",  # a CSV line in a JSONL file
        json.dumps({"question": "How many concepts can MACE erase?", "ground_truth": "100", "contexts": ["x"]}),
        json.dumps({"id": "t", "type": "trivia", "question": "What is MMLU-Pro?"}),
        json.dumps({"question": "which papers erase concepts in diffusion models?", "gold_titles": [MACE]}),
    ]) + "\n")
    r = _eval(env, data, tmp_path / "fail", "--answer", "none")
    assert r.returncode == 2
    assert f"skipped 3 of 5 lines (first: {data}:2: invalid JSON" in r.stderr
    assert "looks like CSV" in r.stderr and "--format ragas" in r.stderr and "unknown type 'trivia'" in r.stderr
    assert not (tmp_path / "fail" / "report.json").exists()
    r = _eval(env, data, tmp_path / "ok", "--answer", "none", "--allow-skips")
    assert r.returncode == 0, r.stderr
    assert "warning: skipped 3 of 5 lines" in r.stderr
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["dataset"]["skipped"] == 3 and len(report["questions"]) == 2


def test_titles_that_mostly_match_nothing_name_the_index(env, tmp_path):
    data = tmp_path / "other_corpus.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "gold_titles": [t]}) + "\n" for i, t in enumerate(
        ["Deep Residual Learning for Image Recognition", "BERT: Pre-training of Deep Bidirectional Transformers", ROBIN])))
    r = _eval(env, data, tmp_path / "run", "--answer", "none")
    assert r.returncode == 2
    assert "2 of 3 gold titles" in r.stderr and str(Path(env["RAG_DATA_DIR"]).resolve()) in r.stderr
    r = run_cli("eval", "import", data, "--format", "jsonl", env=env)
    assert r.returncode == 2 and "2 of 3 titles and contexts" in r.stderr and "(20 papers)" in r.stderr


def test_loader_minimal_rules(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "What is  ESD?"}),
        json.dumps({"question": "what is esd?"}),  # the same question: the same derived id
        json.dumps({"question": "x", "type": "unanswerable", "reference": "y"}),
        json.dumps({"question": "z", "type": "specific", "gold_titles": []}),  # says it has gold, gives none
        json.dumps({"question": "w", "type": "specific", "reference": "an answer"}),
        json.dumps({"question": None, "gold_titles": ["A"]}),
    ]) + "\n")
    ds = load_dataset(path)
    assert [i.line for i in ds.skipped()] == [2, 3, 4, 6]
    assert "question must be str" in ds.skipped()[-1].message
    assert "duplicate question (first on line 1)" in ds.skipped()[0].message
    assert [(q.type, q.type_inferred, q.graded) for q in ds.questions] == [("specific", True, False), ("specific", False, True)]
    assert ds.skip_message() == f"skipped 4 of 6 lines (first: {ds.skipped()[0]})"


# ---------------------------------------------------------------- with the fake OpenAI server


def _user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


def test_judge_rates_answer_correctness_against_the_reference(env, tmp_path, fake_llm):
    correctness_prompts = []

    def reply(body):
        text = _user_text(body)
        if "You grade an answer against a reference answer" in text:
            correctness_prompts.append(text)
            return '{"verdicts": [{"n": 1, "verdict": "correct"}, {"n": 2, "verdict": "wrong"}], ' \
                   '"reference_points": 2, "covered_points": 1}'
        if "You check one sentence of an answer" in text:
            return '{"supported": true, "needed": [1]}'
        return '{"faithfulness": 1.0, "answer_relevance": 1.0, "reason": "ok"}'

    fake_llm.responder = reply
    data = tmp_path / "ref.jsonl"
    data.write_text(json.dumps({"question": "How many adversarial samples does Robin3D construct?",
                                "reference": "Robin3D constructs 344K Adversarial samples."}) + "\n"
                    + json.dumps({"question": "which papers erase concepts in diffusion models?", "gold_titles": [MACE]}) + "\n")
    r = _eval(env | {"RAG_LLM_BASE_URL": fake_llm.base_url, "RAG_LLM_API_KEY": "sk-test"}, data, tmp_path / "run",
              "--answer", "extractive", "--judge")
    assert r.returncode == 0, r.stderr
    assert len(correctness_prompts) == 1  # only the question with a reference is rated against one
    assert "Robin3D constructs 344K Adversarial samples." in correctness_prompts[0] and "\n1. " in correctness_prompts[0]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    row = next(x for x in report["questions"] if x["reference"])
    j = row["judge"]
    claims = j["correct_claims"] + j["wrong_claims"] + j["extra_claims"]
    assert j["correct_claims"] == 1 and j["wrong_claims"] == min(1, claims - 1) and claims >= 1
    fp = claims - 1
    assert j["judge_answer_correctness"] == pytest.approx(1 / (1 + (fp + 1) / 2))
    assert report["judge"]["hybrid"]["judge_answer_correctness"] == pytest.approx(j["judge_answer_correctness"], abs=1e-6)
    assert "answer correctness against the references" in r.stdout
    assert "judge_answer_correctness" in _csv_rows(tmp_path / "run" / "report.csv")[0]


def _numbered_titles(text: str) -> dict[int, str]:
    return {int(n): t for n, t in re.findall(r"^\[(\d+)\] (.+)$", text, flags=re.M)}


def test_generate_drafts_a_validated_set_with_the_fake_llm(env, tmp_path, fake_llm):
    near_misses_checked = []

    def reply(body):
        text = _user_text(body)
        papers = _numbered_titles(text)
        if "You write one question" in text:
            kind = re.search(r"Kind of question to write: (\w+)", text).group(1)
            first = papers[1]
            if kind == "specific":
                return json.dumps({"question": f"What does the work behind '{first[:30]}' propose?", "gold": [1],
                                   "reference": "It proposes a method.", "key_facts": [first.split()[0]]})
            if kind == "list":
                return json.dumps({"question": f"which papers are like {first[:20]}?", "gold": [1, 2], "reference": "Two."})
            return json.dumps({"question": f"How much energy does {first[:20]} use?", "gold": []})
        assert "You check one question" in text
        question = re.search(r"Question: (.+)", text).group(1)
        if question.startswith("How much energy"):  # the first near miss is answerable after all: rejected
            near_misses_checked.append(question)
            return json.dumps({"answerable": len(near_misses_checked) == 1, "needed": [], "reason": "stub"})
        return json.dumps({"answerable": True, "needed": list(papers), "reason": "stub"})

    fake_llm.responder = reply
    out = tmp_path / "draft.jsonl"
    llm_env = env | {"RAG_LLM_BASE_URL": fake_llm.base_url, "RAG_LLM_API_KEY": "sk-test", "RAG_LLM_MODEL": "fake-model"}
    r = run_cli("eval", "generate", "--n", "8", "--papers", ROBIN, MACE, RECELER, "--out", out, env=llm_env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    kinds = [x["type"] for x in lines]
    assert kinds.count("specific") == 4 and kinds.count("list") == 2 and kinds.count("unanswerable") == 1
    assert "1 rejected" in r.stderr and "the check found it answerable" in r.stderr
    assert all(x["split"] == "tune" and x["notes"].startswith("DRAFT by fake-model") for x in lines)
    ds = load_dataset(out, [ROBIN, MACE, RECELER], strict=True)  # every gold title exists in the index
    assert all(set(q.gold_titles) <= {ROBIN, MACE, RECELER} for q in ds.questions)
    assert all(len(q.gold_titles) == 1 for q in ds.questions if q.type == "specific")
    # a draft is never written over an existing set, and never lands in test
    again = run_cli("eval", "generate", "--n", "1", "--out", out, env=llm_env)
    assert again.returncode == 2 and "exists" in again.stderr
    r = run_cli("eval", "--dataset", out, "--split", "test", "--answer", "none", env=llm_env)
    assert r.returncode == 2 and "no questions in split 'test'" in r.stderr


def test_ragas_saved_as_csv_or_as_a_json_array_imports(env, tmp_path):
    """A RAGAS set saved with to_csv (contexts as a list literal) or as one JSON array imports the same way."""
    out = tmp_path / "a.jsonl"
    r = run_cli("eval", "import", FIXTURES / "ragas_export.csv", "--format", "csv", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "column 'retrieved_contexts' is not read" in r.stderr and "2 of 2 contexts matched" in r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["gold_titles"] for x in lines] == [[ROBIN], [MACE]]
    assert lines[0] == {"question": "How many benchmark training samples does Robin3D use?", "reference":
                        "165K benchmark training set samples.", "gold_titles": [ROBIN]}
    array = tmp_path / "set.json"
    array.write_text(json.dumps([json.loads(x) for x in (FIXTURES / "ragas.jsonl").read_text().splitlines()]))
    r = run_cli("eval", "import", array, "--format", "ragas", "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stderr.strip().splitlines()[-1])
    assert summary["imported"] == 4 and summary["contexts_unmatched"] == 1 and len(r.stdout.splitlines()) == 4


def test_reference_metrics_by_hand():
    from rag.eval.grader import parse_correctness
    from rag.eval.metrics import reference_f1, reference_facts

    # content terms: answer {robin3d, build, 344k, sampl}, reference {robin3d, construct, 344k, adversari, sampl}
    assert reference_f1("Robin3D builds 344K samples [1].", "Robin3D constructs 344K adversarial samples.") == \
        pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert reference_f1("Nothing alike.", "Robin3D constructs 344K samples.") == 0.0
    assert reference_f1("anything", "the of and") is None  # a reference without content words is not scored
    assert reference_facts("MACE erases up to 100 concepts with LoRA; GPT-4 drops 16% in 2 steps.") == \
        ["MACE", "100", "LoRA", "GPT-4", "16%"]
    # RAGAS answer correctness: TP 1, FP 1 wrong + 1 extra (claim 3 has no verdict), FN 3 - 1 = 2
    got = parse_correctness('{"verdicts": [{"n": 1, "verdict": "correct"}, {"n": 2, "verdict": "wrong"}], '
                            '"reference_points": 3, "covered_points": 1}', claims=3)
    assert got["judge_answer_correctness"] == pytest.approx(1 / (1 + (2 + 2) / 2))
    assert (got["correct_claims"], got["wrong_claims"], got["extra_claims"]) == (1, 1, 1)
    with pytest.raises(ValueError):
        parse_correctness('{"verdicts": "all good"}', claims=1)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_only_on_runs_longer_than_the_delay(tiny, make_settings, monkeypatch):  # noqa: F811
    """On a terminal, the bar (counts and rate) appears once a run has lasted PROGRESS_DELAY_S, never before."""
    import time

    from test_eval import FakeAssistant

    from rag.eval import runner

    ds, retriever = tiny

    class Slow(FakeAssistant):
        def ask(self, *args, **kwargs):
            time.sleep(0.1)
            return super().ask(*args, **kwargs)

    for delay, shown in ((60.0, False), (0.05, True)):
        monkeypatch.setattr(runner, "PROGRESS_DELAY_S", delay)
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        runner.run_eval(make_settings(), ds, modes=["hybrid"], answer="extractive", retriever=retriever,
                        assistant=Slow(retriever), progress=True)
        monkeypatch.undo()
        assert ("rag eval" in terminal.getvalue() and "3/3" in terminal.getvalue()) is shown, terminal.getvalue()


def test_a_failed_correctness_grade_leaves_the_other_grades(make_settings):
    from test_eval import ScriptedLLM, _sources

    from rag.eval.grader import Judge

    llm = ScriptedLLM(['{"faithfulness": 1, "answer_relevance": 1}', '{"supported": true, "needed": [1]}', "no JSON"])
    got = Judge.from_settings(make_settings(), llm=llm).score("What does ESD do?", "ESD erases concepts [1].", _sources(),
                                                              reference="ESD fine-tunes the weights.")
    assert got["faithfulness"] == 1.0 and got["judge_citation_recall"] == 1.0
    assert "no JSON object" in got["correctness_error"] and "judge_answer_correctness" not in got
    assert "ESD fine-tunes the weights." in llm.messages[2][0]["content"]
