"""Paper RAG inside other tools: llama-index pipelines (rag.apps.llama_index) and MCP clients (`rag mcp` over stdio).

A 6-paper index built with the hash embedder keeps these fast; they exercise the real llama-index and mcp
packages and a real subprocess speaking MCP on stdio.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import hash_index

PAPERS = [
    ("Erasing Concepts from Diffusion Models", "We erase a visual concept from a pre-trained diffusion model using negative guidance. Code: https://github.com/rohitgandikota/erasing"),
    ("Ablating Concepts in Text-to-Image Diffusion Models", "We ablate concepts in text-to-image diffusion models by matching the distribution of an anchor concept."),
    ("MACE: Mass Concept Erasure in Diffusion Models", "MACE erases up to one hundred concepts from diffusion models at once with closed-form cross-attention refinement."),
    ("Sparse Autoencoders Find Interpretable Features", "Sparse autoencoders decompose language model activations into interpretable features."),
    ("Protein Language Models at Scale", "We train protein language models on millions of sequences and predict structure."),
    ("Graph Networks for Traffic Forecasting", "Traffic forecasting with graph neural networks on city sensor data."),
]
ERASE_Q = "which papers erase concepts in diffusion models?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return hash_index(tmp_path_factory.mktemp("integrations"), PAPERS)


# ---------------------------------------------------------------- llama-index


def test_paper_retriever_composes_with_retriever_query_engine_and_a_postprocessor(tiny):
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor import SimilarityPostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers import get_response_synthesizer

    from rag.apps.llama_index import PaperRetriever

    retriever = PaperRetriever.from_settings(top_k=4, data_dir=tiny.data_dir, corpus=tiny.corpus, embed_backend="hash")
    nodes = retriever.retrieve("concept erasure diffusion")
    assert len(nodes) == 4 and len({n.node.node_id for n in nodes}) == 4
    assert all({"paper_id", "title"} <= set(n.node.metadata) for n in nodes)
    assert nodes[0].node.metadata["title"] in {t for t, _ in PAPERS[:3]}
    assert nodes[0].node.get_content() == dict(PAPERS)[nodes[0].node.metadata["title"]]  # the abstract is the text
    assert all(-1.0 <= n.score <= 1.0 for n in nodes)  # cosine similarity, not exp(-distance)

    # composed the llama-index way: our retriever, their postprocessor, their synthesizer and LLM
    floor = sorted(n.score for n in nodes)[1]
    engine = RetrieverQueryEngine.from_args(
        retriever,
        llm=MockLLM(max_tokens=8),
        node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=floor)],
        response_synthesizer=get_response_synthesizer(llm=MockLLM(max_tokens=8), response_mode="compact"),
    )
    response = engine.query("concept erasure diffusion")
    assert 1 <= len(response.source_nodes) == sum(1 for n in nodes if n.score >= floor) < 4
    assert str(response)  # MockLLM's text


def test_paper_query_engine_answers_with_citations_and_chats(tiny):
    from rag.apps.llama_index import PaperQueryEngine

    engine = PaperQueryEngine.from_settings(top_k=4, data_dir=tiny.data_dir, corpus=tiny.corpus, embed_backend="hash")
    response = engine.query(ERASE_Q)
    cited = response.metadata["citations"]
    assert cited and response.metadata["abstained"] is False and "Extractive" in response.metadata["notice"]
    assert {c["title"] for c in cited} <= {n.node.metadata["title"] for n in response.source_nodes}
    assert all(f"[{c['n']}]" in response.response for c in cited)
    assert any(n.node.metadata["cited"] for n in response.source_nodes)

    off = engine.query("zzzz qqqq")
    assert off.metadata["abstained"] is True

    chat = engine.as_chat_engine()
    first = chat.chat(ERASE_Q)
    second = chat.chat("which of them erase many concepts at once?")
    # answered from the first answer's papers, and the metadata says so
    assert first.response and second.metadata["referent"]["kind"] == "set"
    assert second.metadata["referent"]["paper_ids"] == first.metadata["papers"]
    assert {c["paper_id"] for c in second.metadata["citations"]} <= set(first.metadata["papers"])
    assert second.metadata["confidence"]["level"] in ("answer", "low")
    assert [m.role.value for m in chat.chat_history] == ["user", "assistant", "user", "assistant"]
    streamed = chat.stream_chat("and which of them use anchor concepts?")
    assert "".join(streamed.response_gen) == chat.chat_history[-1].content
    assert asyncio.run(chat.achat(ERASE_Q)).response
    chat.reset()
    assert chat.chat_history == []


def test_adapters_never_touch_llama_index_global_settings(tiny):
    from llama_index.core import Settings

    from rag.apps.llama_index import PaperQueryEngine

    before = Settings._llm, Settings._embed_model
    PaperQueryEngine.from_settings(data_dir=tiny.data_dir, corpus=tiny.corpus, embed_backend="hash").query(ERASE_Q)
    assert (Settings._llm, Settings._embed_model) == before


# ---------------------------------------------------------------- MCP over stdio


async def _mcp_session(tiny, calls):
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    rag_bin = shutil.which("rag", path=str(Path(sys.executable).parent))
    params = StdioServerParameters(
        command=rag_bin, args=["mcp"],
        env={"RAG_DATA_DIR": str(tiny.data_dir), "RAG_CORPUS": tiny.corpus, "RAG_EMBED_BACKEND": "hash",
             "HF_HUB_OFFLINE": "1"},
    )
    async with Client(params, read_timeout_seconds=120) as client:
        tools = await client.list_tools()
        out = {"tools": sorted(t.name for t in tools.tools)}
        for name, args in calls:
            if callable(args):  # arguments made from the results so far (a follow-up's conversation id)
                args = args(out)
            out[name + json.dumps(args)] = await client.call_tool(name, args)
        return out


def _payload(result) -> dict:
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


@pytest.mark.slow
def test_mcp_server_over_stdio_serves_search_ask_and_get_paper(tiny):
    calls = [
        ("search_papers", {"query": "concept erasure diffusion", "top_k": 3}),
        ("ask", {"question": ERASE_Q}),
        ("get_paper", {"paper_id": "does-not-exist"}),
        ("search_papers", {"query": "x", "top_k": 500}),
        ("ask", {"question": "   "}),
    ]
    out = asyncio.run(_mcp_session(tiny, calls))
    assert out["tools"] == ["ask", "get_paper", "search_papers"]

    hits = _payload(out['search_papers{"query": "concept erasure diffusion", "top_k": 3}'])["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["title"] in {t for t, _ in PAPERS[:3]}

    answer = _payload(out["ask" + json.dumps({"question": ERASE_Q})])
    assert answer["citations"] and answer["abstained"] is False and answer["notice"]
    assert {c["title"] for c in answer["citations"]} <= {s["title"] for s in answer["sources"]}

    missing = out['get_paper{"paper_id": "does-not-exist"}']
    assert missing.is_error and "search_papers" in missing.content[0].text
    assert out['search_papers{"query": "x", "top_k": 500}'].is_error
    empty = out['ask{"question": "   "}']
    assert empty.is_error and "empty" in empty.content[0].text

    # a second session: follow-ups by conversation id and by paper ids, and get_paper with a real id
    pid = hits[0]["paper_id"]
    first_key = "ask" + json.dumps({"question": ERASE_Q})

    def by_conversation(out):
        return {"question": "which of them erase many concepts at once?",
                "conversation_id": _payload(out[first_key])["conversation_id"]}

    def by_ids(out):
        return {"question": "tell me more about the second one", "previous_paper_ids": _payload(out[first_key])["papers"]}

    again = asyncio.run(_mcp_session(tiny, [("get_paper", {"paper_id": pid}), ("ask", {"question": ERASE_Q}),
                                            ("ask", by_conversation), ("ask", by_ids),
                                            ("ask", {"question": "which of them?", "conversation_id": "nope"})]))
    first = _payload(again[first_key])
    assert first["papers"] and first["confidence"]["level"] == "answer" and first["conversation_id"]
    (set_key,) = [k for k in again if "many concepts" in k]
    follow = _payload(again[set_key])
    assert follow["referent"]["kind"] == "set" and follow["referent"]["paper_ids"] == first["papers"]
    assert {c["paper_id"] for c in follow["citations"]} <= set(first["papers"]) and follow["confidence"]["level"]
    (item_key,) = [k for k in again if "second one" in k]
    item = _payload(again[item_key])
    assert [c["paper_id"] for c in item["citations"]] == [first["papers"][1]]
    assert again['ask{"question": "which of them?", "conversation_id": "nope"}'].is_error
    paper = _payload(again[f'get_paper{{"paper_id": "{pid}"}}'])
    assert paper["paper_id"] == pid and paper["abstract"] == dict(PAPERS)[paper["title"]]
