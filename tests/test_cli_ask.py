"""`rag ask` and `rag chat` as a user runs them: the real console script in a subprocess."""

from __future__ import annotations

import json

import pytest
from conftest import free_port, run_cli

from rag.prompts import NOT_IN_CORPUS

ERASE_Q = "which papers erase concepts in diffusion models?"
CONTRACT = {"question", "answer", "mode", "abstained", "citations", "sources", "notice", "timings_ms"}


closed_port = free_port  # nothing listens there once the probe socket is closed


@pytest.fixture(scope="module")
def index_env(real_index) -> dict:
    return {"RAG_DATA_DIR": str(real_index.data_dir), "RAG_EMBED_CACHE_PATH": str(real_index.embed_cache_path)}


def assert_clean_failure(proc) -> None:
    """Non-zero exit, one `error:` line on stderr, no traceback anywhere."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout


def assert_contract(record: dict) -> None:
    assert CONTRACT <= set(record), CONTRACT - set(record)
    assert isinstance(record["answer"], str) and record["answer"]
    assert record["mode"] in ("llm", "extractive")
    assert isinstance(record["abstained"], bool)
    assert set(record["timings_ms"]) >= {"retrieve", "generate", "total"}
    for s in record["sources"]:
        assert set(s) >= {"n", "paper_id", "title", "snippet", "score"}
    sources = {s["n"]: s for s in record["sources"]}
    for c in record["citations"]:
        assert sources[c["n"]]["paper_id"] == c["paper_id"]


@pytest.mark.slow
def test_ask_json_has_the_contract_keys(index_env):
    proc = run_cli("ask", ERASE_Q, "--json", env=index_env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert_contract(record)
    assert record["question"] == ERASE_Q
    assert record["mode"] == "extractive"
    assert record["abstained"] is False
    assert record["citations"]
    assert "RAG_LLM_BASE_URL" in record["notice"]
    assert "Erasing Concepts from Diffusion Models" in record["answer"]


@pytest.mark.slow
def test_ask_text_output_lists_cited_sources(index_env):
    proc = run_cli("ask", ERASE_Q, env=index_env)
    assert proc.returncode == 0, proc.stderr
    assert "Sources:" in proc.stdout and "[1] Erasing Concepts from Diffusion Models" in proc.stdout


@pytest.mark.slow
def test_ask_out_of_corpus_json_abstains(index_env):
    proc = run_cli("ask", "stock price prediction", "--json", env=index_env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert_contract(record)
    assert record["abstained"] is True and record["answer"] == NOT_IN_CORPUS and record["citations"] == []
    assert record["possibly_related"]


@pytest.mark.slow
def test_ask_questions_file_gives_one_json_line_per_question(index_env, tmp_path):
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text(
        "\n".join(
            [
                json.dumps({"id": "erase", "question": ERASE_Q}),
                json.dumps({"id": "robin", "question": "How many instruction-following samples does Robin3D construct?"}),
                json.dumps({"question": "stock price prediction"}),  # no id: the line number
                json.dumps({"id": "empty", "question": "   "}),  # a bad question must not stop the batch
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    proc = run_cli("ask", "--questions", str(qfile), "--json", env=index_env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == ["erase", "robin", "3", "empty"]
    for r in records[:3]:
        assert_contract(r)
    assert any("Robin3D" in c["title"] for c in records[1]["citations"])
    assert records[2]["abstained"] is True
    assert "error" in records[3] and "empty" in records[3]["error"]


@pytest.mark.slow
def test_ask_with_llm_endpoint_uses_the_llm(index_env, fake_llm):
    reply = "- **Erasing Concepts from Diffusion Models** fine-tunes with negative guidance [1]."
    fake_llm.queue_reply(reply)
    env = index_env | {"RAG_LLM_BASE_URL": fake_llm.base_url, "RAG_LLM_MODEL": "fake-model", "RAG_LLM_API_KEY": "sk-test", "RAG_EVIDENCE": "off"}
    proc = run_cli("ask", ERASE_Q, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert_contract(record)
    assert record["mode"] == "llm"
    assert record["answer"] == reply
    assert record["notice"] is None
    assert [c["n"] for c in record["citations"]] == [1]
    posts = [r for r in fake_llm.requests if r["path"].endswith("/chat/completions")]
    assert len(posts) == 1 and posts[0]["model"] == "fake-model"
    assert ERASE_Q in posts[0]["messages"][-1]["content"]


@pytest.mark.slow
def test_ask_with_dead_llm_falls_back_to_extractive(index_env):
    env = index_env | {
        "RAG_LLM_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1", "RAG_EVIDENCE": "off",
        "RAG_LLM_MAX_ATTEMPTS": "2",
        "RAG_LLM_MAX_WAIT": "2",
    }
    proc = run_cli("ask", ERASE_Q, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert_contract(record)
    assert record["mode"] == "extractive"
    assert record["notice"] and "cannot connect" in record["notice"]
    assert record["citations"]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_chat_through_stdin_answers_a_question_and_a_follow_up(index_env):
    proc = run_cli(
        "chat",
        env=index_env,
        input=f"{ERASE_Q}\nwhich of them use adversarial training?\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    turns = proc.stdout.split("\n> ")
    assert len(turns) == 4, proc.stdout  # banner, two answers, the prompt that met end-of-input
    first, second = turns[1], turns[2]
    assert "Erasing Concepts from Diffusion Models" in first and "[1]" in first
    assert "adversarial training" in second.lower()
    assert "Defensive Unlearning with Adversarial Training for Robust Concept Erasure" in second
    assert turns[3].strip() == ""


@pytest.mark.slow
def test_chat_with_llm_answers_a_follow_up_from_the_previous_answers_papers(index_env, fake_llm):
    first = "- **Erasing Concepts from Diffusion Models** uses negative guidance [1]."
    second = "- **Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models** [1]."
    for reply in (first, second):
        fake_llm.queue_reply(reply)
    env = index_env | {"RAG_LLM_BASE_URL": fake_llm.base_url, "RAG_LLM_MODEL": "fake-model", "RAG_LLM_MAX_ATTEMPTS": "1", "RAG_EVIDENCE": "off"}
    proc = run_cli("chat", env=env, input=f"{ERASE_Q}\nwhich of them use adversarial training?\n")
    assert proc.returncode == 0, proc.stderr
    turns = proc.stdout.split("\n> ")
    assert len(turns) == 4, proc.stdout
    assert "LLM fake-model" in turns[0]
    assert first in turns[1]
    # no rewrite call: the follow-up is answered from the first answer's papers, and says so
    assert "papers of the previous answer:" in turns[2] and second in turns[2]
    assert "Confidence:" in turns[2]
    posts = [r for r in fake_llm.requests if r["path"].endswith("/chat/completions")]
    assert [bool(p.get("stream")) for p in posts] == [True, True]
    assert posts[1]["messages"][1:3] == [
        {"role": "user", "content": ERASE_Q},
        {"role": "assistant", "content": first},
    ]
    assert "adversarial training" in posts[1]["messages"][-1]["content"].lower()  # the set's papers that carry it


@pytest.mark.parametrize(
    "var, value",
    [("RAG_LLM_BASE_URL", "not-a-url"), ("RAG_LLM_TIMEOUT", "-1"), ("RAG_LLM_MAX_ATTEMPTS", "many")],
)
@pytest.mark.parametrize("command", [["ask", ERASE_Q, "--json"], ["chat"]])
def test_invalid_llm_env_is_one_line_error(tmp_path, var, value, command):
    proc = run_cli(*command, env={"RAG_DATA_DIR": str(tmp_path / "idx"), var: value}, input="", timeout=120)
    assert_clean_failure(proc)
    assert var in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question_is_one_line_error(index_env, question):
    proc = run_cli("ask", question, "--json", env=index_env)
    assert_clean_failure(proc)
    assert "empty" in proc.stderr


@pytest.mark.slow
def test_huge_question_is_one_line_error_with_the_limit(index_env):
    proc = run_cli("ask", "why " * 25_000, "--json", env=index_env)
    assert_clean_failure(proc)
    assert "2,000" in proc.stderr and "RAG_MAX_QUESTION_CHARS" in proc.stderr
