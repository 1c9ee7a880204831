"""The LLM evidence step (rag.judge.llm_evidence, rag.answer.assistant): every paper judged by the LLM before answering.

The LLM is FakeOpenAI (the real `openai` client over real HTTP) in relevance-oracle mode: it judges a paper
relevant exactly when the paper is in the question's gold list (a small fixture set taken from the dev
set). That measures the plumbing (pool, parsing, cut, abstention, lists, prompts, cost accounting,
fallbacks), not an LLM's judgement. Faults are injected per paper by wrapping the oracle.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import free_port, run_cli
from fake_openai import FakeOpenAI, Response, relevance_oracle

from rag.answer.assistant import Assistant, is_list_question
from rag.clients.chat import ChatModel, OpenAIChatLLM
from rag.eval.oracle import RelevanceOracle
from rag.judge.llm_evidence import EvidenceCache, EvidenceStep, parse_judgement
from rag.prompts import NOT_IN_CORPUS, load_prompts
from rag.records import Paper
from rag.settings import repo_root

DATASET = repo_root() / "eval" / "datasets" / "dev.jsonl"
FIXTURES = ("list-22", "list-16", "spec-01", "unans-03", "unans-21")
_PAPER = re.compile(r"\n\nPaper: (?P<title>.*?)\nAbstract:\n", re.S)


def _fixture_set() -> dict[str, dict]:
    rows = [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows if r["id"] in FIXTURES}


QS = _fixture_set()
GOLD = {q["question"]: q["gold_titles"] for q in QS.values()}
LIST_Q = QS["list-22"]["question"]  # "model merging and task arithmetic": four papers
OUT_Q = QS["unans-03"]["question"]  # "Which papers do weather forecasting …": none (a list question: 30 judged)


def evidence_title(body: dict) -> str | None:
    """The paper an evidence request is about (None for any other request)."""
    content = (body.get("messages") or [{}])[-1].get("content", "")
    match = _PAPER.search(content)
    return match["title"] if match and content.startswith("You judge whether") else None


def chat_bodies(fake) -> list[dict]:
    return [r for r in fake.requests if r["path"].endswith("/chat/completions")]


@pytest.fixture
def oracle():
    with FakeOpenAI(responder=relevance_oracle(GOLD)) as srv:
        yield srv
        assert not srv.problems, srv.problems


@pytest.fixture
def make_assistant(real_index, real_retriever, tmp_path):
    def make(fake_or_url, deadline=20.0, max_attempts=2, **updates) -> Assistant:
        base_url = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.base_url
        settings = real_index.model_copy(update={"llm_deadline": deadline,
                                                 "evidence_cache_path": tmp_path / "evidence.sqlite", **updates})
        llm = OpenAIChatLLM(base_url, "sk-test", "fake-model", timeout=10, max_attempts=max_attempts, max_wait=0.2,
                            deadline=deadline)
        return Assistant(settings, retriever=real_retriever, llm=llm)

    return make


# ---------------------------------------------------------------- parsing (fast)

PAPER = Paper("p1", "Task Arithmetic", "We edit models with task vectors. Adding them merges skills.", "")


@pytest.mark.parametrize("reply", [
    "not json at all",
    '{"relevance": 11, "quotes": [], "summary": ""}',
    '{"relevance": -1, "quotes": [], "summary": ""}',
    '{"relevance": true, "quotes": [], "summary": ""}',
    '{"relevance": "high", "quotes": [], "summary": ""}',
    '{"relevance": 8, "quotes": ["We fine-tune a diffusion model."], "summary": "x"}',  # not in the abstract
    '{"relevance": 8, "quotes": [3], "summary": "x"}',
    '["relevance", 8]',
])
def test_unusable_replies_are_rejected(reply):
    assert parse_judgement(reply, PAPER) is None


def test_usable_replies_are_normalised():
    got = parse_judgement('Sure! {"relevance": 7.6, "quotes": ["We edit models   with task vectors."], '
                          '"summary": "  Merges by adding task vectors. "} Hope that helps.', PAPER)
    assert got == (8, ["We edit models with task vectors."], "Merges by adding task vectors.")
    assert parse_judgement('{"relevance": 0, "quotes": [], "summary": ""}', PAPER) == (0, [], "")
    assert parse_judgement('{"relevance": 6, "quotes": "Adding them merges skills"}', PAPER)[1] == ["Adding them merges skills"]


def test_cache_survives_a_new_process_and_a_damaged_file(tmp_path):
    path = tmp_path / "c.sqlite"
    EvidenceCache(path).put("k", {"relevance": 9, "quotes": ["q"], "summary": "s"})
    assert EvidenceCache(path).get("k") == {"relevance": 9, "quotes": ["q"], "summary": "s"}
    path.write_bytes(b"this is not a database" * 100)
    broken = EvidenceCache(path)  # judged without a cache, never an error
    assert broken.get("k") is None
    broken.put("k", {"relevance": 1, "quotes": [], "summary": ""})


# ---------------------------------------------------------------- the in-process oracle (rag eval --oracle-llm)

ORACLE_GOLD = {"Which papers merge models?": ["Task Arithmetic"]}
OTHER = Paper("p2", "Protein Folding at Scale", "We fold proteins with attention. It is fast.", "")


def test_the_in_process_oracle_is_a_chat_model_judging_exactly_the_gold_papers():
    oracle = RelevanceOracle(ORACLE_GOLD)
    assert isinstance(oracle, ChatModel)
    step = EvidenceStep(oracle, load_prompts(), EvidenceCache(None), concurrency=2)
    result = step.judge("Which papers merge models?", [PAPER, OTHER], time.monotonic() + 10)
    assert result.unanswered == 0 and result.invalid == 0
    by_title = {j.title: j for j in result.judged}
    assert by_title["Task Arithmetic"].passed(5) and by_title["Task Arithmetic"].quotes == ["We edit models with task vectors."]
    assert by_title["Protein Folding at Scale"].relevance == 1 and not by_title["Protein Folding at Scale"].passed(5)


def test_the_in_process_oracle_cites_every_source_and_streams_what_it_completes():
    oracle = RelevanceOracle(ORACLE_GOLD)
    prompts = load_prompts()
    sources = "\n\n".join(prompts["source"].render(n=n, title=p.title, abstract=p.abstract)
                           for n, p in ((1, PAPER), (2, OTHER)))
    messages = [{"role": "user", "content": prompts["answer"].render(sources=sources, question="Which papers merge models?",
                                                                       not_found_phrase=NOT_IN_CORPUS)}]
    reply = oracle.complete(messages)
    assert reply == "- **Task Arithmetic** answers this [1].\n- **Protein Folding at Scale** answers this [2]."
    pieces = list(oracle.stream(messages))
    assert len(pieces) > 1 and "".join(pieces) == reply


@pytest.mark.slow
def test_the_in_process_oracle_answers_as_the_oracle_behind_http(oracle, make_assistant, real_index, real_retriever,
                                                                 tmp_path):
    """The same answers whether the oracle runs in-process (rag eval --oracle-llm) or behind the fake server."""
    settings = real_index.model_copy(update={"evidence_cache_path": tmp_path / "in-process.sqlite"})
    in_process = Assistant(settings, retriever=real_retriever, llm=RelevanceOracle(GOLD))
    for q in (LIST_Q, OUT_Q):
        over_http, local = make_assistant(oracle).ask(q), in_process.ask(q)
        assert local.answer == over_http.answer and local.abstained == over_http.abstained
        assert local.citations == over_http.citations and local.judgement == over_http.judgement


# ---------------------------------------------------------------- the oracle: lists and abstention


def test_with_a_correct_judge_a_list_is_complete_and_precise(oracle, make_assistant, real_retriever):
    gold = set(GOLD[LIST_Q])
    pool = {h.title for h in real_retriever.retrieve(LIST_Q, 30).hits}
    assert gold <= pool, "fixture precondition: every gold paper is in the evidence pool"
    answer = make_assistant(oracle).ask(LIST_Q)

    assert not answer.abstained and answer.mode == "llm"
    assert {c["title"] for c in answer.citations} == gold  # every paper that passed, and nothing else
    assert answer.judgement["source"] == "llm-evidence" and answer.judgement["passed"] == len(gold)
    stages = {s.name: s for s in answer.stages}
    assert stages["evidence"].calls == 30 and stages["answer"].calls == 1  # a list question judges 30 papers
    assert stages["evidence"].prompt_tokens > 0 and stages["evidence"].completion_tokens > 0
    assert stages["evidence"].ms > 0
    assert len(answer.evidence) == 30 and sum(e["valid"] for e in answer.evidence) == 30

    # the answer prompt carries the summaries and verbatim quotes, not whole abstracts
    final = chat_bodies(oracle)[-1]["messages"][-1]["content"]
    assert "Summary:" in final and "Relevance: 9/10" in final
    for source in answer.sources:
        abstract = source.abstract
        assert abstract not in final
        first = re.split(r"(?<=[.!?])\s+", abstract.strip(), maxsplit=1)[0]
        assert f"> {' '.join(first.split())}" in final


def test_with_a_correct_judge_out_of_corpus_questions_abstain(oracle, make_assistant):
    answer = make_assistant(oracle).ask(OUT_Q)
    assert answer.abstained and answer.answer == NOT_IN_CORPUS
    assert len(answer.possibly_related) == 3 and not answer.citations
    assert [s.name for s in answer.stages] == ["evidence"]  # nothing passed: no answer call is paid for
    assert answer.judgement == {"level": "abstain", "source": "llm-evidence", "passed": 0,
                                "judged": 30, "best_relevance": 1}


def test_judgements_are_cached_across_assistants(oracle, make_assistant):
    q = QS["spec-01"]["question"]
    first = make_assistant(oracle).ask(q)
    calls = len(chat_bodies(oracle))
    second = make_assistant(oracle).ask(q)  # a new Assistant, same cache file
    evidence_calls = [b for b in chat_bodies(oracle)[calls:] if evidence_title(b)]
    assert evidence_calls == []
    assert all(e["cached"] for e in second.evidence) and not any(e["cached"] for e in first.evidence)
    assert {s.name: s.calls for s in second.stages}.get("evidence", 0) == 0
    assert [c["title"] for c in second.citations] == [c["title"] for c in first.citations]


def test_no_evidence_answers_from_abstracts(oracle, make_assistant):
    answer = make_assistant(oracle).ask(LIST_Q, evidence=False)
    assert not any(evidence_title(b) for b in chat_bodies(oracle))
    assert answer.judgement.get("source") != "llm-evidence" and answer.evidence == []
    assert [s.name for s in answer.stages] == ["answer"]


# ---------------------------------------------------------------- faults


def _faulty(fault_for):
    """The oracle, except for the papers `fault_for(title)` returns a Response or text for."""
    good = relevance_oracle(GOLD)

    def respond(body):
        title = evidence_title(body)
        fault = fault_for(title) if title else None
        return fault if fault is not None else good(body)

    return respond


def test_bad_replies_and_failures_drop_only_their_papers(make_assistant):
    gold = GOLD[LIST_Q]
    broken = {gold[0]: "I think this paper is quite relevant!",  # not JSON
              gold[1]: json.dumps({"relevance": 9, "quotes": ["A sentence this abstract never says."], "summary": "x"}),
              gold[2]: Response(status=500)}  # fails after its retries

    with FakeOpenAI(responder=_faulty(broken.get)) as fake:
        answer = make_assistant(fake).ask(LIST_Q)
    by_title = {e["title"]: e for e in answer.evidence}
    assert not by_title[gold[0]]["valid"] and by_title[gold[0]]["error"] is None
    assert not by_title[gold[1]]["valid"]
    assert by_title[gold[2]]["error"] and "500" in by_title[gold[2]]["error"]
    assert {c["title"] for c in answer.citations} == {gold[3]}  # the answer uses what passed
    assert not answer.abstained
    assert "judged 29 of 30 papers in time" in answer.notice


def test_slow_papers_past_the_deadline_leave_a_partial_step(make_assistant):
    gold = GOLD[LIST_Q]
    slow = {gold[0]: Response(delay=30)}
    with FakeOpenAI(responder=_faulty(slow.get)) as fake:
        assistant = make_assistant(fake, deadline=4.0, evidence_concurrency=8)
        t0 = time.monotonic()
        answer = assistant.ask(LIST_Q)
        elapsed = time.monotonic() - t0
    assert elapsed < 12, f"the deadline was not respected ({elapsed:.1f} s)"
    by_title = {e["title"]: e for e in answer.evidence}
    assert "did not finish within the deadline" in by_title[gold[0]]["error"]
    assert {c["title"] for c in answer.citations} == set(gold[1:])
    assert "judged 29 of 30 papers in time" in answer.notice


def test_concurrency_is_bounded(make_assistant):
    def respond(body):
        return Response(delay=0.15, text=relevance_oracle(GOLD)(body)) if evidence_title(body) else relevance_oracle(GOLD)(body)

    with FakeOpenAI(responder=respond) as fake:
        answer = make_assistant(fake, evidence_concurrency=3).ask(OUT_Q)
        assert 2 <= fake.max_in_flight <= 3  # parallel, never more than the setting
    assert answer.abstained


def test_a_weak_judge_falls_back_to_offline_judgement(make_assistant, oracle):
    """Replies that mostly fail to parse are a failed step, not "nothing relevant": no abstention."""
    with FakeOpenAI(responder=_faulty(lambda title: "Relevant: yes (9/10)")) as fake:
        answer = make_assistant(fake).ask(QS["spec-01"]["question"])
    assert not answer.abstained
    assert answer.notice.startswith("The LLM evidence step failed (10 of 10 replies were not usable judgements)")
    assert answer.judgement["source"] != "llm-evidence" if "source" in answer.judgement else True
    assert "level" in answer.judgement and answer.citations


def test_a_dead_endpoint_falls_back_to_offline_judgement_and_quotes(make_assistant):
    port = free_port()  # nothing listens there
    answer = make_assistant(f"http://127.0.0.1:{port}/v1", max_attempts=1).ask(QS["spec-01"]["question"])
    assert not answer.abstained and answer.mode == "extractive"
    assert answer.notice.startswith("The LLM evidence step failed (cannot connect to the LLM")
    assert answer.notice.endswith("Showing an extractive answer instead (sentences quoted from the abstracts).")
    assert [s.name for s in answer.stages] == ["evidence"]  # the answer call does not wait on it again
    assert answer.citations


def test_a_sentence_citing_a_paper_that_did_not_pass_is_flagged(make_assistant):
    q = QS["spec-01"]["question"]

    def respond(body):
        content = body["messages"][-1]["content"]
        if content.startswith("Sources"):
            return "Robin3D builds a large instruction dataset [1]. It also beats GPT-4 on every benchmark [7]."
        return relevance_oracle(GOLD)(body)

    with FakeOpenAI(responder=respond) as fake:
        answer = make_assistant(fake).ask(q)
    assert len(answer.sources) == 1
    assert answer.flagged == [{"sentence": "It also beats GPT-4 on every benchmark.", "cited": [7],
                               "kind": "invalid_citation", "reason": "cites [7], which did not pass the evidence check"}]
    assert "[7]" not in answer.answer and "[1]" in answer.answer
    assert "1 sentence cited a paper that did not pass the evidence check" in answer.notice


def test_hyde_expansion_searches_with_a_written_abstract(oracle, make_assistant):
    answer = make_assistant(oracle, query_expansion="hyde").ask(QS["spec-01"]["question"])
    stages = {s.name: s for s in answer.stages}
    assert stages["rewrite"].calls == 1
    assert any(b["messages"][-1]["content"].startswith("Write the abstract") for b in chat_bodies(oracle))
    assert answer.citations


# ---------------------------------------------------------------- CLI and eval


@pytest.mark.slow
def test_cli_reports_stages_and_honours_no_evidence(oracle, real_index, tmp_path):
    env = {"RAG_DATA_DIR": str(real_index.data_dir), "RAG_EMBED_CACHE_PATH": str(real_index.embed_cache_path),
           "RAG_LLM_BASE_URL": oracle.base_url, "RAG_LLM_API_KEY": "sk-test",
           "RAG_EVIDENCE_CACHE_PATH": str(tmp_path / "ev.sqlite")}
    r = run_cli("ask", "--json", OUT_Q, env=env)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["abstained"] and record["stages"][0]["name"] == "evidence"
    assert set(record["stages"][0]) == {"name", "calls", "prompt_tokens", "completion_tokens", "ms"}
    r = run_cli("ask", "--json", "--no-evidence", LIST_Q, env=env)
    record = json.loads(r.stdout)
    assert [s["name"] for s in record["stages"]] == ["answer"] and record["evidence"] == []
    r = run_cli("ask", LIST_Q, env=env)
    assert "evidence: 30 calls" in r.stdout and "answer: 1 call" in r.stdout


@pytest.mark.slow
def test_eval_with_the_oracle_reports_stage_costs(real_index, tmp_path):
    data = tmp_path / "fixtures.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QS.values()))
    env = {"RAG_DATA_DIR": str(real_index.data_dir), "RAG_EMBED_CACHE_PATH": str(real_index.embed_cache_path),
           "RAG_EVIDENCE_CACHE_PATH": str(tmp_path / "ev.sqlite"),
           "RAG_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}  # nobody listens: the oracle runs in-process
    r = run_cli("eval", "--dataset", str(data), "--modes", "hybrid", "--answer", "llm", "--oracle-llm", "--judge",
                "--json", "--out", str(tmp_path / "out"), env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    s = out["summary"]["hybrid"]
    assert s["abstention_accuracy"] == 1.0 and s["false_abstention_rate"] == 0.0
    assert s["citation_precision"] == 1.0
    lists = sum(is_list_question(q["question"]) for q in QS.values())  # both unanswerables are worded as lists
    assert s["stages"]["evidence"]["calls_total"] == lists * 30 + (len(QS) - lists) * 10
    assert s["stages"]["answer"]["calls_total"] == 3  # abstentions make no answer call
    assert out["config"]["llm"].startswith("relevance oracle")
    assert out["judge"]["hybrid"]["judge_citation_recall"] == 1.0
    assert run_cli("eval", "--dataset", str(data), "--oracle-llm", "--out", str(tmp_path / "x"),
                   env=env).returncode == 2  # --oracle-llm needs --answer llm
