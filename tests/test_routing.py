"""Answers that follow the question, end to end through the Assistant on a small hash-embedded index:
follow-ups over the previous answer's papers, ordinals, named things, comparisons, two-part questions,
metadata the index does not hold, and the confidence signal."""

from __future__ import annotations

import pytest
from conftest import hash_index

from rag.errors import QuestionError

PAPERS = [
    ("MACE: Mass Concept Erasure in Diffusion Models",
     "We propose MACE, which erases up to 100 concepts from text-to-image diffusion models with closed-form "
     "cross-attention refinement and LoRA finetuning."),
    ("SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models",
     "We introduce SPEED, a concept erasure method for diffusion models that edits the model in its null space, "
     "removing 100 concepts in 5 seconds."),
    ("Robust Concept Erasure with Adversarial Training",
     "We erase concepts from diffusion models and make the erasure robust with adversarial training against "
     "prompt attacks."),
    ("Ablating Concepts in Text-to-Image Diffusion Models",
     "We ablate concepts in diffusion models by matching the distribution of a target concept to an anchor concept."),
    ("Speaker Diarization with Language Models",
     "We correct speaker diarization errors of an ASR system with a fine-tuned language model."),
    ("Sparse Autoencoders Find Interpretable Features",
     "We train sparse autoencoders on language model activations and find interpretable features."),
    ("Are Emergent Abilities of Large Language Models a Mirage?",
     "We argue that emergent abilities appear due to the metric the researcher chooses."),
    ("Understanding Emergent Abilities of Language Models from the Loss Perspective",
     "We study emergent abilities through the pre-training loss instead of model size."),
]


@pytest.fixture(scope="module")
def assistant(tmp_path_factory):
    from rag.answer import Assistant
    from rag.retrieve.hybrid import Retriever

    settings = hash_index(tmp_path_factory.mktemp("routing"), PAPERS)
    return Assistant(settings, Retriever.from_settings(settings))


def titles(answer):
    return [c["title"] for c in answer.citations]


def test_a_set_follow_up_is_answered_from_the_previous_answers_papers(assistant):
    first = assistant.ask("which papers erase concepts in diffusion models?", extractive=True)
    assert first.papers() and not first.abstained
    follow = assistant.ask("which of them use adversarial training?", previous=first, extractive=True)
    assert follow.referent["kind"] == "set" and follow.referent["paper_ids"] == first.papers()
    assert titles(follow) == ["Robust Concept Erasure with Adversarial Training"]
    assert follow.answer.startswith(f"Among the {len(first.papers())} papers of the previous answer:")
    assert {c["paper_id"] for c in follow.citations} <= set(first.papers())
    none = assistant.ask("do any of them work on speaker diarization?", previous=first, extractive=True)
    assert none.citations == [] and "None of the" in none.answer and not none.abstained


def test_ordinals_answer_about_that_paper(assistant):
    first = assistant.ask("which papers erase concepts in diffusion models?", extractive=True)
    second = first.papers()[1]
    about = assistant.ask("tell me more about the second one", previous=first, extractive=True)
    assert [c["paper_id"] for c in about.citations] == [second]
    assert about.answer.startswith("About the second paper of the previous answer:")
    assert assistant.ask("[1]", previous=first, extractive=True).citations[0]["paper_id"] == first.papers()[0]
    like = assistant.ask("papers like the first one", previous=first, extractive=True)
    assert like.referent["kind"] == "similar" and first.papers()[0] not in {c["paper_id"] for c in like.citations}
    with pytest.raises(QuestionError, match="no previous answer|there is none"):
        assistant.ask("tell me more about the second one", extractive=True)


def test_a_name_no_paper_mentions_is_said_to_be_absent(assistant):
    answer = assistant.ask("How does QuantumFlux-7 distillation work and what speedup does it report?", extractive=True)
    assert answer.abstained and answer.answer == "No indexed paper mentions QuantumFlux-7."
    assert answer.possibly_related and answer.confidence()["level"] == "abstain"
    assert answer.names["absent"] == ["QuantumFlux-7"]


def test_a_rare_name_restricts_the_sources_to_papers_that_mention_it(assistant):
    answer = assistant.ask("how does SPEED erase concepts in diffusion models?", extractive=True)
    assert titles(answer) == ["SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models"]


def test_comparisons_cover_every_item_in_order(assistant):
    answer = assistant.ask("How do SPEED and MACE differ in how they erase concepts?", extractive=True)
    assert [t.split(":")[0] for t in titles(answer)] == ["SPEED", "MACE"]
    half = assistant.ask("How do MACE and ShieldDiff differ?", extractive=True)
    assert [t.split(":")[0] for t in titles(half)] == ["MACE"]
    assert "- **ShieldDiff** — No indexed paper mentions ShieldDiff." in half.answer


def test_two_part_questions_answer_each_part(assistant):
    answer = assistant.ask("How many concepts can MACE erase, and how long does SPEED take?", extractive=True)
    assert {t.split(":")[0] for t in titles(answer)} == {"MACE", "SPEED"}


def test_metadata_the_index_does_not_hold_is_said_plainly(assistant):
    answer = assistant.ask("which papers were published in 2024?", extractive=True)
    assert answer.abstained and "carry no publication years" in answer.answer and not answer.citations
    assert answer.confidence() == {"level": "abstain", "reason": answer.answer}


def test_confidence_and_papers_are_in_the_json_contract(assistant):
    record = assistant.ask("which papers erase concepts in diffusion models?", extractive=True).to_dict()
    assert record["confidence"]["level"] in ("answer", "low") and record["confidence"]["reason"]
    assert record["papers"][: len(record["citations"])] == [c["paper_id"] for c in record["citations"]]


def test_a_name_given_as_an_example_neither_refuses_nor_restricts(assistant):
    answer = assistant.ask("Which papers erase concepts with QuantumFlux-style adversarial training?", extractive=True)
    assert not answer.abstained and answer.citations
    assert answer.answer.startswith("No indexed paper mentions QuantumFlux; the closest papers:")
    assert answer.confidence() == {"level": "low", "reason": "no indexed paper mentions QuantumFlux"}
    named = assistant.ask("How does QuantumFlux adversarial training erase concepts?", extractive=True)
    assert named.citations == [] and "No indexed paper mentions QuantumFlux." in named.answer


def test_a_compared_item_described_instead_of_named_is_found_by_retrieval(assistant):
    answer = assistant.ask("What explains emergent abilities according to the 'mirage' paper versus the "
                           "loss-perspective paper?", extractive=True)
    assert titles(answer) == ["Are Emergent Abilities of Large Language Models a Mirage?",
                              "Understanding Emergent Abilities of Language Models from the Loss Perspective"]
    assert "No indexed paper mentions" not in answer.answer
