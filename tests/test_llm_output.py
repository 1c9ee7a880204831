"""What an LLM writes is checked before it is shown (issue 26): reasoning blocks are not answers, papers the
answer names must be among its sources, a reply that declines is an abstention, a stream that never said it
finished is marked, evidence quotes must show something. The real `openai` client talks to the fake server."""

from __future__ import annotations

import json
import re

import pytest
from conftest import hash_index

from rag.answer.assistant import UNFINISHED, Assistant
from rag.clients.chat import OpenAIChatLLM
from rag.index.embedders import HashEmbedder
from rag.prompts import NOT_IN_CORPUS
from rag.retrieve.hybrid import Retriever

ERASING = "Erasing Concepts from Diffusion Models"
MACE = "MACE: Mass Concept Erasure in Diffusion Models"
SAE = "Sparse Autoencoders Find Interpretable Features"
PAPERS = [
    {"title": ERASING, "authors": ["Rohit Gandikota", "Joanna Materzynska", "David Bau"], "date": "2023-03-13",
     "abstract": "We erase a visual concept from a pre-trained diffusion model using negative guidance as a teacher. "
                 "The method removes artistic styles, explicit content and object classes while preserving the rest "
                 "of the model, and reaches 93.5% accuracy in user studies."},
    {"title": MACE, "abstract": "MACE erases up to one hundred concepts from diffusion models at once with "
                                "closed-form cross-attention refinement and LoRA fine-tuning."},
    {"title": SAE, "abstract": "Sparse autoencoders decompose language model activations into interpretable "
                               "features that are monosemantic."},
]
QUESTION = "How do diffusion models erase a visual concept with negative guidance?"
_SOURCE = re.compile(r"^\[(\d+)\] (.+)$", re.M)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return hash_index(tmp_path_factory.mktemp("llm-output"), PAPERS)


@pytest.fixture
def assistant(tiny, fake_llm, tmp_path):
    def make(evidence=False):
        settings = tiny.model_copy(update={"llm_deadline": 10.0, "evidence": evidence,
                                           "evidence_cache_path": tmp_path / "evidence.sqlite"})
        llm = OpenAIChatLLM(fake_llm.base_url, "sk-test", "fake-model", timeout=10, max_attempts=1, deadline=10.0)
        return Assistant(settings, Retriever.from_settings(settings, embedder=HashEmbedder()), llm=llm)

    return make


def answer_with(fake, write):
    """Answer prompts get `write(n of each title)`; nothing else is expected."""

    def respond(body):
        content = body["messages"][-1]["content"]
        assert content.startswith("Sources"), content[:80]
        return write({title: int(n) for n, title in _SOURCE.findall(content.split("Question:")[0])})

    fake.responder = respond


def ask(make, **kw):
    events = list(make(**kw).ask_stream(QUESTION))
    assert events[-1].kind == "final"
    return events, events[-1].answer


def streamed(events) -> str:
    """The text the UI showed before the final answer (up to the last reset, which discards it)."""
    kinds = [e.kind for e in events]
    start = len(kinds) - kinds[::-1].index("reset") if "reset" in kinds else 0
    return "".join(e.text for e in events[start:-1] if e.kind == "token")


# ---------------------------------------------------------------- reasoning blocks


def test_a_think_block_is_neither_shown_nor_part_of_the_answer(assistant, fake_llm):
    answer_with(fake_llm, lambda n: (f"<think>The user wants {{erasure}}; maybe cite [{n[SAE]}] **A Paper I Imagine "
                                     f"Here**.</think>\n\nNegative guidance erases a visual concept from a "
                                     f"pre-trained diffusion model [{n[ERASING]}]."))
    events, answer = ask(assistant)
    assert answer.mode == "llm" and answer.answer.startswith("Negative guidance erases")
    assert "think" not in answer.answer and "imagine" not in answer.answer.lower()
    assert "think" not in "".join(e.text or "" for e in events if e.kind == "token")  # never streamed either
    assert [c["title"] for c in answer.citations] == [ERASING]


@pytest.mark.parametrize("reply", [
    "<think>Negative guidance erases concepts [1]. I should answer with that.</think>",
    "<think>\nStill weighing [1] against [2] when the reply ended",  # an unclosed block opening the stream
])
def test_a_reply_that_is_only_reasoning_is_not_a_cited_answer(assistant, fake_llm, reply):
    fake_llm.queue_reply(reply)
    events, answer = ask(assistant)
    assert answer.mode == "extractive" and "only its reasoning" in answer.notice, answer.notice
    assert "weighing" not in streamed(events) and "I should answer" not in answer.answer


def test_braces_in_a_think_block_do_not_invalidate_evidence_judgements(assistant, fake_llm):
    def respond(body):
        content = body["messages"][-1]["content"]
        if content.startswith("You judge"):
            title = re.search(r"\nPaper: (.*)\n", content)[1]
            relevant = title == ERASING
            judgement = {"relevance": 9 if relevant else 0, "summary": "",
                         "quotes": [PAPERS[0]["abstract"].split(". ")[0] + "."] if relevant else []}
            return f'<think>The reply format is {{"relevance": ...}}; {{draft}}</think>\n{json.dumps(judgement)}'
        n = {title: int(n) for n, title in _SOURCE.findall(content)}
        return f"Negative guidance erases a visual concept from a pre-trained diffusion model [{n[ERASING]}]."

    fake_llm.responder = respond
    _, answer = ask(assistant, evidence=True)
    assert all(e["valid"] for e in answer.evidence), answer.evidence
    assert answer.judgement["source"] == "llm-evidence" and [c["title"] for c in answer.citations] == [ERASING]


# ---------------------------------------------------------------- papers the answer names


def test_a_bold_title_that_is_no_source_loses_its_citation_and_is_flagged(assistant, fake_llm):
    answer_with(fake_llm, lambda n: (
        f"- **{ERASING}** — erases a visual concept from a pre-trained diffusion model with negative guidance "
        f"[{n[ERASING]}].\n"
        f"- **Quantum Concept Erasure for Diffusion Transformers** — erases concepts with quantum annealing "
        f"[{n[MACE]}]."))
    _, answer = ask(assistant)
    assert answer.mode == "llm"
    assert [c["title"] for c in answer.citations] == [ERASING]
    invented = next(line for line in answer.answer.splitlines() if "Quantum" in line)
    assert "[" not in invented  # its [n] is not shown as verified
    flag = next(f for f in answer.flagged if f["kind"] == "unknown_paper")
    assert "Quantum Concept Erasure for Diffusion Transformers" in flag["reason"] and "not among the sources" in flag["reason"]
    assert "named a paper that is not among the sources" in answer.notice


def test_an_invented_author_year_reference_is_removed_and_flagged(assistant, fake_llm):
    answer_with(fake_llm, lambda n: (
        f"Negative guidance erases a visual concept from a diffusion model (Gandikota et al., 2023) [{n[ERASING]}]. "
        f"MACE erases one hundred concepts at once (Smith et al., 2031) [{n[MACE]}]."))
    _, answer = ask(assistant)
    assert "Gandikota et al., 2023" in answer.answer  # the corpus has this paper's authors and year
    assert "Smith" not in answer.answer and "2031" not in answer.answer
    assert [c["title"] for c in answer.citations] == [ERASING]
    flag = next(f for f in answer.flagged if f["kind"] == "unknown_paper")
    assert "Smith et al., 2031" in flag["reason"] and len(flag["cited"]) == 1


def test_an_answer_naming_only_invented_papers_is_not_shown(assistant, fake_llm):
    answer_with(fake_llm, lambda n: (f"- **Quantum Concept Erasure for Diffusion Transformers** — erases concepts "
                                     f"with quantum annealing [{n[ERASING]}]."))
    events, answer = ask(assistant)
    assert answer.mode == "extractive" and "reset" in [e.kind for e in events]
    assert "named only papers that are not among the sources" in answer.notice


# ---------------------------------------------------------------- claims their abstracts support


def test_a_claim_its_cited_abstract_does_not_support_is_flagged(assistant, fake_llm):
    answer_with(fake_llm, lambda n: (
        f"Negative guidance erases a visual concept from a pre-trained diffusion model [{n[ERASING]}]. "
        f"It reaches 99.9% accuracy by training a reinforcement learning agent on quantum hardware [{n[ERASING]}]."))
    _, answer = ask(assistant)
    assert answer.mode == "llm"
    flags = [f for f in answer.flagged if f["kind"] == "unsupported"]
    assert len(flags) == 1 and flags[0]["sentence"].startswith("It reaches 99.9% accuracy")
    assert "99.9" in flags[0]["reason"] and "quantum" in flags[0]["reason"]
    assert "said what the abstract it cites does not say" in answer.notice


def test_a_faithful_paraphrase_and_bold_emphasis_are_not_flagged(assistant, fake_llm):
    answer_with(fake_llm, lambda n: (
        f"- **{ERASING}** — uses **negative guidance as a teacher** to erase visual concepts such as artistic styles "
        f"from a pre-trained diffusion model, reaching 93.5% accuracy in user studies [{n[ERASING]}].\n"
        f"- **MACE** — erases up to one hundred concepts at once with cross-attention refinement [{n[MACE]}]."))
    _, answer = ask(assistant)  # a paper named by its method ("MACE") is named
    assert answer.mode == "llm" and answer.flagged == [] and len(answer.citations) == 2


# ---------------------------------------------------------------- declining, unfinished streams


@pytest.mark.parametrize("opening", ["The indexed papers do not answer this.",
                                     "The provided sources do not contain information about that."])
def test_a_reply_that_declines_then_hedges_is_an_abstention(assistant, fake_llm, opening):
    answer_with(fake_llm, lambda n: f"{opening} However, MACE erases many concepts at once [{n[MACE]}].")
    _, answer = ask(assistant)
    assert answer.abstained and answer.answer == NOT_IN_CORPUS and answer.citations == []
    assert answer.possibly_related[0]["title"] == MACE  # the paper it mentioned comes first


def test_a_stream_that_ends_without_a_finish_reason_is_marked(assistant, fake_llm):
    fake_llm.queue_unfinished_stream("Negative guidance erases a visual concept from a pre-trained diffusion model [1].")
    _, answer = ask(assistant)
    assert answer.mode == "llm" and UNFINISHED in answer.notice
    fake_llm.queue_reply("Negative guidance erases a visual concept from a pre-trained diffusion model [1].")
    _, complete = ask(assistant)
    assert UNFINISHED not in (complete.notice or "")


# ---------------------------------------------------------------- evidence replies


def _judge_with(fake, judgement_for):
    def respond(body):
        content = body["messages"][-1]["content"]
        if content.startswith("You judge"):
            return json.dumps(judgement_for(re.search(r"\nPaper: (.*)\n", content)[1]))
        n = {title: int(n) for n, title in _SOURCE.findall(content)}
        return " ".join(f"This paper erases concepts from diffusion models [{k}]." for k in n.values())

    fake.responder = respond


def test_a_relevance_written_as_a_string_is_read(assistant, fake_llm):
    quote = PAPERS[0]["abstract"].split(". ")[0] + "."
    _judge_with(fake_llm, lambda title: {"relevance": "9" if title == ERASING else "0",
                                         "quotes": [quote] if title == ERASING else [], "summary": ""})
    _, answer = ask(assistant, evidence=True)
    by_title = {e["title"]: e for e in answer.evidence}
    assert by_title[ERASING]["valid"] and by_title[ERASING]["relevance"] == 9
    assert [c["title"] for c in answer.citations] == [ERASING]


@pytest.mark.parametrize("quote", ["the", "diffusion model", ERASING])
def test_a_quote_that_shows_nothing_is_no_evidence(assistant, fake_llm, quote):
    _judge_with(fake_llm, lambda title: {"relevance": 9, "quotes": [quote] if title == ERASING else [], "summary": ""})
    _, answer = ask(assistant, evidence=True)
    assert answer.abstained, "a paper whose only quote is a word or its title did not pass"
