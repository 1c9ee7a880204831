"""Optional LLM judge (`rag eval --judge`), reported beside the offline metrics:

- claim by claim (ALCE-style): each sentence of the answer is checked against the sources it cites
  (prompts/judge_claims.md): citation recall = sentences their citations support; citation precision =
  citations the judge says are needed for their sentence;
- holistic: faithfulness and answer relevance, each 0..1 (prompts/judge.md);
- against a reference answer (a dataset line's `reference`), claim by claim (prompts/judge_correctness.md):
  each claim is correct, wrong or extra, and the reference's points covered are counted; answer correctness
  = TP / (TP + (FP + FN) / 2) as RAGAS defines it (TP correct claims, FP wrong or extra ones, FN reference
  points not covered).

The judge's model is configured apart from the answerer's (RAG_JUDGE_BASE_URL, RAG_JUDGE_MODEL,
RAG_JUDGE_API_KEY; each defaults to the RAG_LLM_* value).
"""

from __future__ import annotations

import json
import logging
import re

from rag.errors import RagError
from rag.eval.metrics import mean

log = logging.getLogger(__name__)
HOLISTIC = ("faithfulness", "answer_relevance")
JUDGE_FIELDS = HOLISTIC + ("judge_citation_recall", "judge_citation_precision", "judge_answer_correctness")
# The eval's own prompts (rag.prompts.REQUIRED holds the product's); each is checked for its placeholders on load.
EVAL_PROMPTS = {"judge_correctness": {"question", "reference", "claims"},
                "generate_question": {"kind", "papers"}, "generate_check": {"question", "papers"}}
VERDICTS = ("correct", "wrong", "extra")
_JSON = re.compile(r"\{.*\}", re.DOTALL)


def reply_object(text: str) -> dict:
    """The JSON object in an LLM's reply (prose or a code fence around it allowed); ValueError if none."""
    match = _JSON.search(text or "")
    if not match:
        raise ValueError("no JSON object in the reply")
    obj = json.loads(match.group(0))
    if not isinstance(obj, dict):
        raise ValueError("the reply's JSON is not an object")
    return obj


def parse_scores(text: str) -> dict:
    """The judge's JSON reply -> {faithfulness, answer_relevance, reason}; scores clamped to 0..1.

    A reply on a 1-5 or 0-10 scale is rescaled. Unparseable replies raise ValueError."""
    obj = reply_object(text)
    out: dict = {}
    for key in HOLISTIC:
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


def _parse_claim(text: str) -> dict:
    obj = reply_object(text)
    if not isinstance(obj.get("supported"), bool):
        raise ValueError("judge reply lacks a boolean 'supported'")
    needed = obj.get("needed") or []
    if not isinstance(needed, list):
        raise ValueError("'needed' must be a list")
    return {"supported": obj["supported"], "needed": [int(n) for n in needed if isinstance(n, (int, float))]}


def parse_correctness(text: str, claims: int) -> dict:
    """The correctness judge's JSON reply -> counts and answer correctness; a claim without a verdict is
    counted as extra (unsupported by the reference). Unparseable replies raise ValueError."""
    obj = reply_object(text)
    verdicts = obj.get("verdicts")
    points, covered = obj.get("reference_points"), obj.get("covered_points")
    if not isinstance(verdicts, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in (points, covered)):
        raise ValueError("judge reply lacks 'verdicts' (a list) or integer 'reference_points' / 'covered_points'")
    by_n: dict[int, str] = {}
    for v in verdicts:
        if isinstance(v, dict) and isinstance(v.get("n"), int) and v.get("verdict") in VERDICTS:
            by_n.setdefault(v["n"], v["verdict"])
    counts = {k: sum(1 for n in range(1, claims + 1) if by_n.get(n, "extra") == k) for k in VERDICTS}
    points = max(0, points)
    covered = min(max(0, covered), points)
    tp, fp, fn = counts["correct"], counts["wrong"] + counts["extra"], points - covered
    denominator = tp + (fp + fn) / 2
    return {"correct_claims": tp, "wrong_claims": counts["wrong"], "extra_claims": counts["extra"],
            "reference_points": points, "covered_points": covered,
            "judge_answer_correctness": tp / denominator if denominator else None}


class Judge:
    def __init__(self, llm, prompts):
        self.llm = llm
        self.prompts = prompts

    @classmethod
    def from_settings(cls, settings, llm=None):
        """The judge, or None (with a warning) when no LLM is configured."""
        from rag.prompts import load_prompts

        prompts = load_prompts() | load_prompts(required=EVAL_PROMPTS)
        if llm is None:
            judge = settings.model_copy(update={
                "llm_base_url": settings.judge_base_url or settings.llm_base_url,
                "llm_model": settings.judge_model or settings.llm_model,
                "llm_api_key": settings.judge_api_key or settings.llm_api_key,
            })
            if not judge.llm_configured:
                log.warning("--judge ignored: no LLM configured (set RAG_JUDGE_BASE_URL or RAG_LLM_BASE_URL)")
                return None
            from rag.clients.chat import OpenAIChatLLM

            llm = OpenAIChatLLM.from_settings(judge)
        return cls(llm, prompts)

    def grade_claims(self, answer: str, sources) -> dict:
        """Citation recall and precision as a judge LLM sees them, claim by claim."""
        from rag.answer.citations import claims
        from rag.prompts import source_blocks

        by_n = {s.n: s for s in sources}
        graded = supported = citations = needed = failed = 0
        for claim in claims(answer):
            cited = [by_n[n] for n in claim.refs if n in by_n]
            graded += 1
            if not cited:
                continue  # an uncited sentence is unsupported
            citations += len(cited)
            message = self.prompts["judge_claims"].render(claim=claim.text, sources=source_blocks(self.prompts, cited))
            try:
                verdict = _parse_claim(self.llm.complete([{"role": "user", "content": message}]))
            except (RagError, ValueError):
                failed += 1
                continue
            supported += bool(verdict["supported"])
            needed += len({n for n in verdict["needed"] if n in {s.n for s in cited}})
        return {"claims": graded, "supported": supported, "citations": citations, "needed": needed,
                "claims_failed": failed,
                "judge_citation_recall": supported / graded if graded else None,
                "judge_citation_precision": needed / citations if citations else None}

    def grade_correctness(self, question: str, answer: str, reference: str) -> dict:
        """Answer correctness against a reference answer, claim by claim (one call)."""
        from rag.eval.metrics import answer_sentences

        claims = [text for text, _ in answer_sentences(answer)]
        numbered = "\n".join(f"{n}. {text}" for n, text in enumerate(claims, start=1)) or "(no claims)"
        message = self.prompts["judge_correctness"].render(question=question, reference=reference, claims=numbered)
        return parse_correctness(self.llm.complete([{"role": "user", "content": message}]), len(claims))

    def score(self, question: str, answer: str, sources, reference: str | None = None) -> dict:
        from rag.prompts import judge_message

        try:
            reply = self.llm.complete(judge_message(self.prompts, question, answer, sources))
            out = parse_scores(reply) | self.grade_claims(answer, sources)
        except RagError as exc:
            return {"error": str(exc)}
        except ValueError as exc:
            return {"error": f"unparseable judge reply: {exc}"}
        if reference:  # a failure here leaves the other grades standing
            try:
                out |= self.grade_correctness(question, answer, reference)
            except (RagError, ValueError) as exc:
                out["correctness_error"] = str(exc)[:300]
        return out

    @staticmethod
    def summarise(results: list[dict | None]) -> dict:
        results = [r for r in results if r]
        ok = [r for r in results if "error" not in r]
        out = {key: mean(r.get(key) for r in ok) for key in JUDGE_FIELDS}
        out = {k: (round(v, 6) if v is not None else None) for k, v in out.items()}
        return out | {"judged": len(ok), "failed": len(results) - len(ok)}
