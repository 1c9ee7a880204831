"""The answerer against a misbehaving OpenAI-protocol server (the real `openai` client): whatever the
LLM does, an answer comes back within the deadline, extractive if need be, with a notice that says why."""

from __future__ import annotations

import time

import pytest
from conftest import hash_index

from rag.answer.assistant import Assistant
from rag.clients.chat import OpenAIChatLLM
from rag.index.embedders import HashEmbedder
from rag.retrieve.hybrid import Retriever

PAPERS = [
    ("Erasing Concepts from Diffusion Models", "We erase a visual concept from a pre-trained diffusion model using negative guidance. The method removes artistic styles."),
    ("MACE: Mass Concept Erasure in Diffusion Models", "MACE erases up to one hundred concepts from diffusion models at once with closed-form cross-attention refinement."),
    ("Sparse Autoencoders Find Interpretable Features", "Sparse autoencoders decompose language model activations into interpretable features."),
]
QUESTION = "How do diffusion models erase a visual concept with negative guidance?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return hash_index(tmp_path_factory.mktemp("llm-faults"), PAPERS)


@pytest.fixture
def assistant(tiny, fake_llm):
    def make(deadline=3.0, **kw):
        settings = tiny.model_copy(update={"llm_deadline": deadline, "evidence": False})
        llm = OpenAIChatLLM(fake_llm.base_url, "sk-test", "fake-model", timeout=10, max_attempts=2, max_wait=1,
                            deadline=deadline, **kw)
        return Assistant(settings, Retriever.from_settings(settings, embedder=HashEmbedder()), llm=llm)

    return make


def _final(events):
    assert events[-1].kind == "final"
    return events[-1].answer


@pytest.mark.parametrize("misbehave", ["keepalive", "trickle"])
def test_a_never_ending_stream_gives_an_extractive_answer_within_the_deadline(assistant, fake_llm, misbehave):
    if misbehave == "keepalive":
        fake_llm.queue_keepalive(60)
    else:
        fake_llm.queue_trickle("Concept erasure uses negative guidance [1]. " * 30, interval=1.0)
    started = time.monotonic()
    events = list(assistant(deadline=2.5).ask_stream(QUESTION))
    took = time.monotonic() - started
    answer = _final(events)
    # the stream is 60 s long: ending near the 2.5 s deadline (plus retrieval and the extractive answer on
    # a possibly busy 2-core machine) is what is checked, not a speed
    assert took < 7.0
    assert answer.mode == "extractive" and answer.citations
    assert "RAG_LLM_DEADLINE" in answer.notice and "extractive" in answer.notice
    if misbehave == "trickle":  # tokens were shown: the UI is told to discard them
        assert "reset" in [e.kind for e in events]


@pytest.mark.parametrize("queue, words", [
    (lambda f: f.queue_reply_cut_by_length("Concept erasure [1] is done by"), "cut at"),
    (lambda f: f.queue_refusal("I cannot help with that."), "refused"),
    (lambda f: f.queue_tool_call(), "tool"),
    (lambda f: f.queue_no_choices(), "no choices"),
    (lambda f: f.queue_raw("<html><body>Bad gateway page</body></html>"), "not an OpenAI chat completion"),
    (lambda f: f.queue_raw('{"choices": [', "application/json"), "not an OpenAI chat completion"),
    (lambda f: f.queue_reply("I am not able to answer that from what I know."), "cited none of the sources"),
])
def test_each_unusable_reply_falls_back_with_an_accurate_notice(assistant, fake_llm, queue, words):
    queue(fake_llm)
    answer = _final(list(assistant().ask_stream(QUESTION)))
    assert answer.mode == "extractive" and answer.citations
    assert words in answer.notice, answer.notice
    assert "extractive answer" in answer.notice


def test_a_huge_reply_is_not_printed(assistant, fake_llm):
    fake_llm.queue_reply("Concept erasure [1]. " + "padding " * 2_000_000)
    answer = _final(list(assistant(max_reply_chars=20_000).ask_stream(QUESTION)))
    assert answer.mode == "extractive" and len(answer.answer) < 5_000
    assert "RAG_LLM_MAX_REPLY_CHARS" in answer.notice


def test_citation_markers_are_normalised(assistant, fake_llm):
    fake_llm.queue_reply("Negative guidance erases a concept [-1] " + "[1]" * 2000 + " and MACE scales it [2][2].")
    answer = _final(list(assistant().ask_stream(QUESTION)))
    assert answer.mode == "llm"
    assert "[-1]" not in answer.answer and answer.answer.count("[1]") == 1 and answer.answer.count("[2]") == 1
    assert answer.invalid_citations == 1
