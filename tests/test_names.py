"""Named things in a question and the papers that mention them."""

from __future__ import annotations

import pytest

from rag.judge.names import Name, absent_message, check_names, named_things
from rag.records import Paper


@pytest.mark.parametrize("question, names", [
    ("How does QuantumFlux-7 distillation work and what speedup does it report?", ["QuantumFlux-7"]),
    ("How do MACE and SPEED differ in how they erase concepts?", ["MACE", "SPEED"]),
    ("which papers fine-tune GPT-4 on ImageNet-1K?", ["GPT-4", "ImageNet-1K"]),
    ('papers that mention "negative guidance as a teacher"', ["negative guidance as a teacher"]),
    ("compare LoRA and Transformer-XL", ["LoRA", "Transformer-XL"]),
    ("which papers erase concepts in diffusion models?", []),
    ("Which Papers Study Reinforcement Learning From Human Feedback?", []),
    ("what results were reported in the 2020s with 70B models?", []),  # quantities are not names
    ("Which study proposes a third 'can't tell' label?", ["can't tell"]),  # an apostrophe inside a word
    ("the model's 'emergent abilities' claim", ["emergent abilities"]),
    ("Which papers build LLM-as-a-judge evaluators?", ["LLM"]),  # a hyphenated phrase is not a name
])
def test_named_things(question, names):
    assert [n.text for n in named_things(question)] == names


def test_acronyms_match_in_capitals_other_names_loosely():
    speed = Name("SPEED", exact_case=True)
    assert speed.in_text("We present SPEED, a scalable method") and not speed.in_text("at a higher speed")
    assert Name("LLMs", exact_case=True).in_text("large language models (LLM) are")
    flux = Name("QuantumFlux-7")
    assert flux.in_text("the quantumflux 7 model") and flux.in_text("QuantumFlux7") and not flux.in_text("QuantumFlux-70")
    assert Name("naïve-bayes").in_text("a Naive Bayes baseline")


def test_check_names_lists_the_mentioning_papers_and_the_absent_names():
    papers = [Paper("a", "MACE: Mass Concept Erasure", "We propose MACE."), Paper("b", "Other", "speed matters")]
    check = check_names(named_things("How do MACE and SPEED differ?"), lambda name: papers)
    assert check.mentioned_by == (("a",), ())
    assert check.absent == ["SPEED"] and check.any_mention() == ["a"]
    assert absent_message(check.absent) == "No indexed paper mentions SPEED."
    assert absent_message(["X-1", "big model"]) == "No indexed paper mentions X-1 or “big model”."


@pytest.mark.parametrize("question, examples", [
    ("word2vec-style static word embeddings", {"word2vec": True}),
    ("do spline-based Kolmogorov-Arnold style networks beat MLPs?", {"Kolmogorov-Arnold": True, "MLPs": False}),
    ("BERT-like encoders for retrieval", {"BERT": True}),
    ("models such as GPT-4 on MMLU-Pro", {"GPT-4": True, "MMLU-Pro": False}),
    ("Which study proposes a third 'can't tell' label?", {"can't tell": True}),  # plain words in quotes
    ('papers that mention "Negative Guidance"', {"Negative Guidance": False}),
    ("How does QuantumFlux-7 distillation work?", {"QuantumFlux-7": False}),
    ("SAE-based steering of GPT-2", {"SAE": False, "GPT-2": False}),
])
def test_names_given_as_examples_are_marked(question, examples):
    assert {n.text: n.example for n in named_things(question)} == examples


def test_an_absent_example_is_absent_but_not_a_subject():
    papers = [Paper("a", "Static word vectors", "We learn static word embeddings.")]
    check = check_names(named_things("word2vec-style static word embeddings"), lambda name: papers)
    assert check.absent == ["word2vec"] and check.absent_subjects == []
    check = check_names(named_things("QuantumFlux-7 distillation"), lambda name: papers)
    assert check.absent_subjects == ["QuantumFlux-7"]
