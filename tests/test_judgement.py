"""Judgement that holds out of sample: follow-ups, abstention levels, list relevance, top-k, extractive
sentence choice, and the fitted parameters (rag.answer.conversation, rag.judge.abstention, rag.judge.list_relevance, rag.judge.params)."""

from __future__ import annotations

import json
import re

import pytest

from rag.answer.conversation import leans_on_context, rule_rewrite
from rag.judge.abstention import ABSTAIN, ANSWER, LOW, Abstention, Features
from rag.judge.params import JudgementParams, Logistic, load_params
from rag.text import is_keyword_query

ERASE_Q = "which papers erase concepts in diffusion models?"
HISTORY = [{"role": "user", "content": ERASE_Q}, {"role": "assistant", "content": "- **Erasing Concepts…** [1]"}]
_STATES_RESULT = re.compile(r"\d|outperform|improv|achiev|surpass|state-of-the-art|better|reduc|faster", re.I)


# ---------------------------------------------------------------- follow-ups (fast)


@pytest.mark.parametrize("message, leans", [
    ("sparse autoencoders for interpretability", False),  # short, but a topic of its own
    ("concept bottleneck models", False),
    ("How does a model improve its reasoning at test time?", False),  # "its" has its own antecedent
    ("which of them use adversarial training?", True),
    ("and for images?", True),
    ("what about video models?", True),
    ("is it open source?", True),
    ("Do these papers release code?", True),
    ("why?", True),
])
def test_a_message_leans_on_the_conversation_only_with_evidence(message, leans):
    assert leans_on_context(message) is leans
    rewritten = rule_rewrite(message, HISTORY)
    assert (rewritten != message) is leans
    if leans:
        assert ERASE_Q in rewritten


def test_keyword_queries_are_told_from_questions():
    assert is_keyword_query("concept erasure diffusion", 7)
    assert not is_keyword_query("which papers erase concepts?", 7)
    assert not is_keyword_query("How do diffusion models erase concepts", 7)
    assert not is_keyword_query("a very long keyword query with more than seven words in it", 7)


# ---------------------------------------------------------------- the fitted parameters (fast)


def test_shipped_parameters_load_and_record_what_they_were_fitted_on():
    params = load_params()
    assert params.fitted["split"] == "tune" and params.fitted["dataset_sha256"]
    assert 0 < params.abstain_below <= params.low_below < 1
    assert 0 < params.relevant_at < 1
    assert set(params.abstention.features) == {"sim", "cov", "oov", "sent_sim", "miss_idf", "kw_miss"}
    assert JudgementParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params


def test_broken_parameter_file_is_a_clear_error(tmp_path):
    from rag.errors import ConfigError

    bad = tmp_path / "judgement.json"
    bad.write_text('{"version": 99}')
    with pytest.raises(ConfigError, match="rag eval calibrate"):
        load_params(str(bad))


def _params(abstain_below=0.3, low_below=0.6) -> JudgementParams:
    one = Logistic(("sim",), (10.0,), 0.0, (0.5,), (1.0,))  # P = sigmoid(10 * (sim - 0.5))
    return JudgementParams(one, abstain_below, low_below, one, 0.5, {})


@pytest.mark.parametrize("sim, level", [(0.2, ABSTAIN), (0.47, LOW), (0.7, ANSWER)])
def test_three_levels_from_the_calibrated_probability(sim, level):
    judged = Abstention(_params()).judge(Features(sim, 0.5, 0.0, 0.5, 0.5, terms=3))
    assert judged.level == level
    assert 0.0 <= judged.confidence <= 1.0


class _Stats:
    """Two papers' terms over a corpus of 100 papers (df = number of the two papers using a term)."""

    papers = {"p1": {"legal", "judgment", "predict", "court"}, "p2": {"court", "german"}}

    def df(self, term):
        return sum(term in terms for terms in self.papers.values())

    def idf(self, term):
        import math

        return math.log(1 + 100 / (self.df(term) + 0.5))

    def paper_terms(self, paper_id):
        return self.papers[paper_id]

    def __len__(self):
        return 100


def test_a_missing_word_counts_again_when_the_query_is_a_keyword_query():
    from rag.judge.abstention import features

    typed = features("legal judgment prediction indian courts", 0.6, ["p1", "p2"], _Stats(), [0.7, 0.5])
    asked = features("Which papers predict the judgment of Indian courts in legal cases?", 0.6, ["p1", "p2"],
                     _Stats(), [0.7, 0.5])
    assert typed.miss_idf > 0.9 and typed.kw_miss == typed.miss_idf  # "indian" is in neither paper
    assert asked.miss_idf > 0.9 and asked.kw_miss == 0.0  # a sentence's wording need not be the paper's
    covered = features("legal judgment prediction courts", 0.6, ["p1", "p2"], _Stats(), [0.7, 0.5])
    assert covered.miss_idf == 0.0 and covered.kw_miss == 0.0


def test_a_question_without_content_words_is_never_answered():
    judged = Abstention(_params()).judge(Features(0.99, 1.0, 0.0, 0.99, 0.0, terms=0))
    assert judged.level == ABSTAIN and judged.abstain


def test_calibration_picks_the_operating_point_within_the_allowed_false_refusals():
    from rag.eval.calibrate import fit_abstention

    rows = []
    for i in range(60):  # answerable: high sim; unanswerable: low sim, with overlap in the middle
        rows.append({"answerable": True, "sim": 0.45 + i / 100, "cov": 0.8, "oov": 0.0, "sent_sim": 0.7, "miss_idf": 0.3,
                     "kw_miss": 0.0})
    for i in range(20):
        rows.append({"answerable": False, "sim": 0.30 + i / 80, "cov": 0.4, "oov": 0.2, "sent_sim": 0.5, "miss_idf": 0.8,
                     "kw_miss": 0.8 * (i % 2)})
    model, abstain_below, low_below, info = fit_abstention(rows, max_false=0.05, low_share=0.1)
    point = info["cv_point"]
    assert point["false_refusals"] <= 3 and point["caught"] >= 10
    assert abstain_below <= low_below
    assert model.probability(rows[0]) > model.probability(rows[-1])


# ---------------------------------------------------------------- on the real index


@pytest.mark.slow
def test_a_short_new_topic_after_another_topic_is_searched_as_itself(real_assistant):
    answer = real_assistant.ask("sparse autoencoders for interpretability", history=HISTORY)
    assert answer.standalone_question is None
    assert not answer.abstained
    titles = " ".join(c["title"] for c in answer.citations).lower()
    assert "autoencoder" in titles or "interpret" in titles
    assert "erase" not in titles and "erasure" not in titles


@pytest.mark.slow
def test_emoji_only_message_abstains_even_after_a_topic(real_assistant):
    answer = real_assistant.ask("🔥🔥🔥", history=HISTORY)
    assert answer.abstained and answer.citations == []
    assert answer.judgement["level"] == ABSTAIN


@pytest.mark.slow
def test_weak_alone_strong_with_the_previous_topic_is_read_as_a_follow_up(real_assistant):
    alone = real_assistant.ask("Van Gogh")
    assert alone.abstained
    follow = real_assistant.ask("Van Gogh", history=HISTORY)
    assert not follow.abstained and ERASE_Q in follow.standalone_question
    assert any("Eras" in c["title"] for c in follow.citations)


@pytest.mark.slow
def test_top_k_means_what_it_says(real_assistant):
    specific = real_assistant.ask("How do text-to-image diffusion models handle unsafe content?", top_k=15)
    assert len(specific.sources) == 15  # no hidden token budget cuts an extractive answer's sources
    listing = real_assistant.ask(ERASE_Q, top_k=2)
    assert len(listing.citations) == 2 and listing.more_papers >= 1
    assert f"{listing.more_papers} more paper" in listing.notice and "top-k" in listing.notice
    wide = real_assistant.ask(ERASE_Q, top_k=15)  # a larger top-k judges a larger pool (2 x top-k)
    assert len(wide.citations) >= min(15, 2 + listing.more_papers)


@pytest.mark.slow
def test_a_list_question_lists_the_passing_papers_best_first(real_assistant):
    answer = real_assistant.ask(ERASE_Q)
    assert [c["n"] for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    titles = [c["title"] for c in answer.citations]
    assert len(titles) >= 5
    on_topic = [t for t in titles if re.search(r"eras|unlearn|ablat|forget|removal", t, re.I)]
    assert len(on_topic) / len(titles) >= 0.8, titles


@pytest.mark.slow
def test_asking_a_paper_for_its_results_quotes_a_result(real_assistant):
    mace = next(p for p in real_assistant.papers() if p.title.startswith("MACE"))
    answer = real_assistant.ask("What does this paper propose, and what are its main results?", paper_ids=[mace.paper_id])
    assert not answer.abstained and answer.quotes
    assert any(_STATES_RESULT.search(q.text) for q in answer.quotes), [q.text for q in answer.quotes]
    first_sentence = mace.abstract.split(". ")[0]
    assert answer.quotes[0].text != first_sentence  # not the motivational opening


@pytest.mark.slow
def test_long_sentences_are_cut_to_a_verbatim_clause(real_assistant):
    from rag.answer.extractive import MAX_QUOTE_WORDS

    for question in (ERASE_Q, "sparse autoencoders for interpretability", "dpo preference optimization llm alignment"):
        answer = real_assistant.ask(question)
        for q in answer.quotes:
            paper = real_assistant.paper(q.paper_id)
            assert paper.abstract[q.start : q.end] == q.text
            assert len(q.text.split()) <= MAX_QUOTE_WORDS


@pytest.mark.slow
def test_the_ui_examples_are_answered_from_the_corpus(real_assistant):
    from rag.apps.ui.layout import EXAMPLES

    for example in EXAMPLES:
        answer = real_assistant.ask(example)
        assert answer.judgement["level"] == ANSWER and answer.citations, example


@pytest.mark.slow
def test_the_extractive_fit_scores_what_rag_eval_scores(real_index, real_retriever):
    """Calibration fits the sentence weights on the answers the pipeline gives (list sources filtered by the
    relevance model, refusals scoring 0), so its tune figure is the one `rag eval` reports for those weights."""
    import dataclasses
    from pathlib import Path

    from rag.answer.assistant import Assistant, _embed_cache_path
    from rag.answer.extractive import Extractor, Weights
    from rag.eval.calibrate import fit_extractive
    from rag.eval.dataset import load_dataset
    from rag.eval.runner import run_eval
    from rag.index.sentence_vectors import shared_sentence_vectors

    dev = Path(__file__).resolve().parent.parent / "eval" / "datasets" / "dev.jsonl"
    ds = load_dataset(dev, [p.title for p in real_retriever.index.papers()])
    tune = [q for q in ds.questions if q.split == "tune" and q.answerable and q.key_facts]
    small = dataclasses.replace(ds, questions=[q for q in tune if q.type == "list"][:4]
                                + [q for q in tune if q.type == "multi_hop"][:3])
    params = load_params()
    sentences = shared_sentence_vectors(real_retriever.embedder, _embed_cache_path(real_index))
    weights, info = fit_extractive(real_index, small, "tune", {"retriever": real_retriever, "sentences": sentences},
                                   params)
    assistant = Assistant(real_index, real_retriever, None, params=params, extractor=Extractor(Weights(**weights)))
    report = run_eval(real_index, small, modes=["hybrid"], answer="extractive", retriever=real_retriever,
                      assistant=assistant, progress=False)
    assert info["questions"] == 7
    assert info["key_fact_recall"] == pytest.approx(report["by_split"]["hybrid"]["tune"]["key_fact_recall"], abs=1e-4)


def test_a_list_bullet_may_prefer_the_sentence_naming_the_method_but_cites_the_same_papers():
    from rag.answer.extractive import Extractor, Weights
    from rag.records import Source

    abstracts = [
        "We erase unwanted concepts in diffusion models. We propose AdvUnlearn, robust to attacks.",
        "In this work, erasing concepts from diffusion models is studied. Our TRCE reaches 92.5% erasure on I2P.",
    ]
    sources = [Source(i, f"p{i}", f"Paper {i}", "", 1.0, a) for i, a in enumerate(abstracts, 1)]
    question = "which papers erase concepts in diffusion models?"
    plain = Extractor(Weights(entity=0.0)).answer(question, sources, True)
    naming = Extractor(Weights(entity=5.0)).answer(question, sources, True)
    assert plain.cited == naming.cited == [1, 2]
    assert "AdvUnlearn" not in plain.text and "TRCE" not in plain.text
    assert "AdvUnlearn" in naming.text and "TRCE" in naming.text
    assert all(q.text in abstracts[q.n - 1] for q in naming.quotes)  # still verbatim


# ---------------------------------------------------------------- quoted-sentence support (rag.judge.support)


def test_support_is_judged_on_the_whole_sentence_of_a_quote_and_weights_rare_terms():
    import numpy as np

    from rag.index.sentence_vectors import PaperSentences
    from rag.judge.support import quote_support
    from rag.records import Quote

    abstract = "Courts matter. We predict the judgment of German courts, which is hard."
    start = abstract.index("We predict")
    cut = abstract.index("which")
    ps = PaperSentences(("Title", "Courts matter.", abstract[start:]), (None, (0, 14), (start, len(abstract))),
                        np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    qv = np.array([0.6, 0.8])
    # the quote is a clause of the second sentence: its whole sentence is judged (cosine 1, "german" counted)
    clause = Quote(1, "p2", start, cut, abstract[start:cut])
    got = quote_support("german court judgment", [clause], {"p2": ps}, qv, _Stats())
    assert got.cosine == pytest.approx(1.0)
    assert got.coverage == pytest.approx(1.0)
    first = Quote(1, "p2", 0, 14, "Courts matter.")
    only_court = quote_support("german court judgment", [first], {"p2": ps}, qv, _Stats())
    # "court" is in both papers, "german" and "judgment" in one: the common term carries the least weight
    assert only_court.coverage < 1 / 3 and only_court.cosine == pytest.approx(0.8)


def test_support_thresholds_demote_the_unanswerable_within_the_allowed_answerable():
    from rag.judge.support import Support, SupportCheck, fit_thresholds

    rows = [{"answerable": True, "cosine": 0.5 + i / 100, "coverage": 0.3 + i / 50} for i in range(20)]
    rows += [{"answerable": False, "cosine": 0.45, "coverage": 0.2}, {"answerable": False, "cosine": 0.48, "coverage": 0.3},
             {"answerable": False, "cosine": 0.9, "coverage": 0.9}]
    cuts, info = fit_thresholds(rows, max_demoted=0.05)  # 1 of 20 answerable may be demoted
    check = SupportCheck(**cuts)
    assert info["demoted"] <= 1 and info["caught"] == 2
    assert not check.supported(Support(0.45, 0.2)) and check.supported(Support(0.9, 0.9))
    assert sum(not check.supported(Support(r["cosine"], r["coverage"])) for r in rows if r["answerable"]) <= 1
    none, _ = fit_thresholds(rows, max_demoted=0.0)
    assert all(SupportCheck(**none).supported(Support(r["cosine"], r["coverage"])) for r in rows if r["answerable"])
    assert SupportCheck.from_fitted({}) is None  # an older parameter file checks nothing


def test_shipped_parameters_carry_the_support_cuts():
    from rag.judge.support import SupportCheck

    params = load_params()
    check = SupportCheck.from_fitted(params.fitted)
    assert check is not None and 0 < check.min_cosine < 1 and 0 < check.min_coverage <= 1
    assert params.fitted["support_tune"]["demoted"] <= params.fitted["support_max_demoted"] * params.fitted["support_tune"]["answerable"]


@pytest.mark.slow
def test_a_topic_word_met_only_incidentally_is_not_answered_with_confidence(real_assistant):
    """A tune question: no paper is about watermarking LLM text; a diffusion abstract names a watermark as a
    concept to remove. Answered, at low confidence, as the closest papers; the flagship list stays confident."""
    from rag.answer.assistant import UNSUPPORTED

    near = real_assistant.ask("Which papers propose watermarking schemes for LLM-generated text?")
    assert not near.abstained and near.confidence()["level"] == LOW
    assert near.answer.startswith(UNSUPPORTED) and "key terms" in near.confidence()["reason"]
    flagship = real_assistant.ask(ERASE_Q)
    assert flagship.confidence()["level"] == ANSWER and flagship.judgement["support"]["coverage"] == 1.0


def test_the_behaviour_summary_counts_absent_names_answered_with_confidence():
    from rag.eval.behaviour import behaviour_table, summarise

    rows = [{"id": "a", "split": "test", "type": "absent_name", "abstained": True, "caught": True, "level": "abstain"},
            {"id": "b", "split": "test", "type": "absent_name", "abstained": False, "caught": False, "level": "low"},
            {"id": "c", "split": "test", "type": "absent_name", "abstained": False, "caught": False, "level": "answer"},
            {"id": "d", "split": "test", "type": "named_control", "abstained": False, "caught": False, "level": "answer"}]
    got = summarise({"absent_names": {"rows": rows}}, "test")
    assert got["absent_names_caught"] == pytest.approx(1 / 3, abs=1e-3)
    assert got["absent_names_confident"] == pytest.approx(1 / 3, abs=1e-3)  # only "c": low is not confident, controls don't count
    table = behaviour_table({"summary": {"tune": {}, "test": got}})
    assert "absent_names_confident" in table and "0.333" in table
