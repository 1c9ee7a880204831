"""Does the answer follow the question? Three behaviour sets beside the dev set (eval/datasets/README.md):

- dialogues.jsonl: a list question, then a follow-up that refers to its answer. Containment: the share of the
  follow-up's citations inside the first answer's papers; ordinal accuracy: "the second one" answered about
  the first answer's second paper (or, for "papers like …", searched from it).
- comparisons.jsonl: "how do X and Y differ", two-part questions. Coverage: the share of items present in the
  corpus whose gold paper is cited; absent items said to be absent.
- absent_names.jsonl: a named thing no paper mentions (caught when the answer abstains or says the name is in
  no indexed paper) and controls naming real things (refused when it abstains).

Each figure is reported per split; thresholds were never chosen on `test`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rag.corpus.parse import normalise_title

FILES = ("dialogues.jsonl", "comparisons.jsonl", "absent_names.jsonl")


def load_set(path: Path) -> list[dict]:
    rows = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{no}: not JSON ({exc.msg})") from None
    return rows


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


class _Titles:
    def __init__(self, papers):
        self.by_norm = {normalise_title(p.title): p.paper_id for p in papers}

    def ids(self, titles) -> set[str]:
        return {self.by_norm[n] for n in (normalise_title(t) for t in titles or []) if n in self.by_norm}


def cited_ids(answer) -> list[str]:
    return [c["paper_id"] for c in answer.citations]


def run_dialogues(ask: Callable, rows: list[dict]) -> dict:
    """`ask(question, previous)` -> Answer."""
    per = []
    for row in rows:
        first = ask(row["turns"][0]["question"], None)
        second = ask(row["turns"][1]["question"], first)
        papers = first.papers()
        cited = cited_ids(second)
        out = {"id": row["id"], "split": row.get("split"), "refers": row["turns"][1].get("refers"), "ask": row.get("ask"),
               "first_papers": len(papers), "cited": len(cited),
               "inside": sum(1 for c in cited if c in papers), "abstained": second.abstained,
               "referent": (second.referent or {}).get("paper_ids")}
        if out["refers"] == "ordinal":
            n = row["ordinal"]
            expected = papers[n - 1] if n > 0 and n <= len(papers) else (papers[-1] if n == -1 and papers else None)
            got = out["referent"] or []
            if row.get("ask") == "similar":
                ok = got == [expected] and bool(cited) and expected not in cited
            else:
                ok = got == [expected] and bool(cited) and set(cited) == {expected}
            out["ordinal_ok"] = bool(expected) and ok
        per.append(out)
    return {"rows": per}


def run_comparisons(ask: Callable, rows: list[dict], titles: _Titles) -> dict:
    per = []
    for row in rows:
        answer = ask(row["question"], None)
        cited = set(cited_ids(answer))
        items = []
        for item in row["items"]:
            if item.get("absent"):
                items.append({"name": item["name"], "absent": True,
                              "said_absent": item["name"].lower() in (answer.answer or "").lower()
                              and "no indexed paper mentions" in (answer.answer or "").lower()})
            else:
                gold = titles.ids(item.get("gold_titles"))
                items.append({"name": item["name"], "absent": False, "cited": bool(gold & cited)})
        per.append({"id": row["id"], "split": row.get("split"), "type": row.get("type"), "items": items,
                    "abstained": answer.abstained})
    return {"rows": per}


def run_absent_names(ask: Callable, rows: list[dict]) -> dict:
    per = []
    for row in rows:
        answer = ask(row["question"], None)
        said = "no indexed paper mentions" in (answer.answer or "").lower()
        per.append({"id": row["id"], "split": row.get("split"), "type": row["type"], "abstained": answer.abstained,
                    "names_absent": (answer.names or {}).get("absent", []),
                    # caught: refused, or the answer says the named thing is in no paper (a comparison's other side
                    # may still be answered)
                    "caught": answer.abstained or said,
                    # the level the answer is given at: a topic met only incidentally must not be "answer"
                    "level": answer.confidence()["level"]})
    return {"rows": per}


def summarise(results: dict, split: str | None = None) -> dict:
    """The behaviour figures over one split (None: all)."""
    def rows(kind):
        return [r for r in results.get(kind, {}).get("rows", []) if split is None or r.get("split") == split]

    dlg = rows("dialogues")
    # "papers like the first one" is meant to find papers outside the previous answer: not a containment case
    contained = [r for r in dlg if r.get("ask") != "similar"]
    cited = sum(r["cited"] for r in contained)
    ordinals = [r for r in dlg if r["refers"] == "ordinal"]
    cmp_items = [i for r in rows("comparisons") for i in r["items"]]
    present = [i for i in cmp_items if not i["absent"]]
    absent_items = [i for i in cmp_items if i["absent"]]
    names = rows("absent_names")
    absent = [r for r in names if r["type"] == "absent_name"]
    controls = [r for r in names if r["type"] == "named_control"]
    return {
        "followup_containment": _ratio(sum(r["inside"] for r in contained), cited),
        "followups": len(dlg),
        "ordinal_accuracy": _ratio(sum(bool(r.get("ordinal_ok")) for r in ordinals), len(ordinals)),
        "ordinals": len(ordinals),
        "comparison_coverage": _ratio(sum(i["cited"] for i in present), len(present)),
        "comparison_items": len(present),
        "comparison_absent_said": _ratio(sum(i["said_absent"] for i in absent_items), len(absent_items)),
        "absent_names_caught": _ratio(sum(r.get("caught", r["abstained"]) for r in absent), len(absent)),
        "absent_names": len(absent),
        # answered with confidence (level "answer", neither refused nor said absent nor low): lower is better
        "absent_names_confident": _ratio(sum(r.get("level", "answer") == "answer" and not r.get("caught", r["abstained"])
                                             for r in absent), len(absent)),
        "named_controls_refused": _ratio(sum(r["abstained"] for r in controls), len(controls)),
        "named_controls": len(controls),
    }


def run_behaviour(assistant, folder: Path, extractive: bool = True) -> dict | None:
    """Run the behaviour sets found in `folder` through `assistant`; None when none is there."""
    present = [f for f in FILES if (folder / f).is_file()]
    if not present:
        return None

    def ask(question, previous):
        return assistant.ask(question, previous=previous, extractive=extractive)

    titles = _Titles(assistant.papers())
    results: dict = {}
    if "dialogues.jsonl" in present:
        results["dialogues"] = run_dialogues(ask, load_set(folder / "dialogues.jsonl"))
    if "comparisons.jsonl" in present:
        results["comparisons"] = run_comparisons(ask, load_set(folder / "comparisons.jsonl"), titles)
    if "absent_names.jsonl" in present:
        results["absent_names"] = run_absent_names(ask, load_set(folder / "absent_names.jsonl"))
    results["summary"] = {split: summarise(results, split) for split in ("tune", "test")}
    return results


def behaviour_table(results: dict) -> str:
    keys = ["followup_containment", "ordinal_accuracy", "comparison_coverage", "comparison_absent_said",
            "absent_names_caught", "absent_names_confident", "named_controls_refused"]
    lines = ["behaviour (extractive)        tune      test", "-" * 44]
    for key in keys:
        vals = [results["summary"][s].get(key) for s in ("tune", "test")]
        lines.append(f"{key:<28}" + "".join(f"{('-' if v is None else f'{v:.3f}'):>10}" for v in vals))
    return "\n".join(lines)
