"""Optional LLM judge (`rag eval --judge`): faithfulness and answer relevance, each 0..1.

Uses prompts/judge.md ({question}, {answer}, {sources}) and the project's LLM client. Only runs when
asked for and an LLM is configured; its scores are reported separately from the offline metrics.
"""

from __future__ import annotations

import json
import logging
import re

from rag.eval.metrics import mean
from rag.errors import RagError

log = logging.getLogger(__name__)
JUDGE_FIELDS = ("faithfulness", "answer_relevance")
_JSON = re.compile(r"\{.*\}", re.DOTALL)


def parse_scores(text: str) -> dict:
    """The judge's JSON reply -> {faithfulness, answer_relevance, reason}; scores clamped to 0..1.

    A reply on a 1-5 or 0-10 scale is rescaled. Unparseable replies raise ValueError."""
    match = _JSON.search(text or "")
    if not match:
        raise ValueError("no JSON object in the judge reply")
    obj = json.loads(match.group(0))
    out: dict = {}
    for key in JUDGE_FIELDS:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"judge reply lacks a numeric {key!r}")
        value = float(value)
        if value > 5:
            value /= 10
        elif value > 1:
            value = (value - 1) / 4
        out[key] = min(1.0, max(0.0, value))
    out["reason"] = str(obj.get("reason", ""))[:500]
    return out


class Judge:
    def __init__(self, llm, prompts):
        self.llm = llm
        self.prompts = prompts

    @classmethod
    def from_settings(cls, settings, llm=None):
        """The judge, or None (with a warning) when no LLM is configured."""
        from rag.prompts import load_prompts

        prompts = load_prompts()
        if llm is None:
            if not settings.llm_configured:
                log.warning("--judge ignored: no LLM configured (set RAG_LLM_BASE_URL or OPENAI_API_KEY)")
                return None
            from rag.llm import OpenAIChatLLM

            llm = OpenAIChatLLM.from_settings(settings)
        return cls(llm, prompts)

    def score(self, question: str, answer: str, sources) -> dict:
        from rag.prompts import judge_message

        try:
            reply = self.llm.complete(judge_message(self.prompts, question, answer, sources))
            return parse_scores(reply)
        except RagError as exc:
            return {"error": str(exc)}
        except ValueError as exc:
            return {"error": f"unparseable judge reply: {exc}"}

    @staticmethod
    def summarise(results: list[dict | None]) -> dict:
        results = [r for r in results if r]
        ok = [r for r in results if "error" not in r]
        out = {key: mean(r[key] for r in ok) for key in JUDGE_FIELDS}
        out = {k: (round(v, 6) if v is not None else None) for k, v in out.items()}
        return out | {"judged": len(ok), "failed": len(results) - len(ok)}
