"""The swappable parts have one narrow interface each (typing.Protocol), shared by production code and
the test fakes: ChatModel (rag.clients.chat), Embedder (rag.index.embedders), PaperSearch (rag.retrieve.hybrid)."""

from __future__ import annotations

import pytest

from rag.clients.chat import ChatModel, OpenAIChatLLM
from rag.index.embedders import Embedder, HashEmbedder
from rag.retrieve.hybrid import PaperSearch


def test_production_parts_satisfy_their_protocols(tmp_path):
    assert isinstance(OpenAIChatLLM("http://127.0.0.1:9/v1", None, "m"), ChatModel)
    assert isinstance(HashEmbedder(), Embedder)


@pytest.mark.slow
def test_the_real_retriever_and_model_satisfy_their_protocols(real_retriever):
    assert isinstance(real_retriever, PaperSearch)
    assert isinstance(real_retriever.embedder, Embedder)


def test_test_fakes_satisfy_the_same_protocols():
    from test_eval import FakeRetriever, ScriptedLLM
    from test_ui import _SlowLLM

    assert isinstance(ScriptedLLM([]), ChatModel) and isinstance(_SlowLLM(), ChatModel)
    assert isinstance(FakeRetriever([], {}, HashEmbedder()), PaperSearch)
    assert not isinstance(object(), ChatModel)  # the check can fail
