"""Run the held-out behaviour sets (this folder) through Paper RAG's extractive answerer and print the
behaviour metrics of rag.eval.behaviour, plus the rows that failed with the first line of each answer.

    RAG_DATA_DIR=/work/main/.rag HF_HUB_OFFLINE=1 PYTHONPATH=. python eval/datasets/heldout/run.py [--out FILE.json]

`rag eval` only finds behaviour sets beside a --dataset file, so this script calls the public functions of
rag.eval.behaviour directly: run_behaviour() on this folder (turn 1 -> turn 2 of every dialogue, exactly what
`rag eval` would score), then run_behaviour() again on a temporary folder holding the third turns of the
three-turn dialogues (turn 2's answer as the previous answer), then summarise() over the rows.
Nothing is written to the index; answers are cached so each question is asked once.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rag.corpus.parse import normalise_title
from rag.eval.behaviour import behaviour_table, load_set, run_behaviour, summarise
from rag.eval.runner import make_assistant
from rag.retrieve.hybrid import Retriever
from rag.settings import load_settings

HERE = Path(__file__).resolve().parent
MARK = "__heldout_turn2__:"
KEYS = ["followup_containment", "ordinal_accuracy", "comparison_coverage", "comparison_absent_said",
        "absent_names_caught", "named_controls_refused"]


class Recorder:
    """The assistant with a cache keyed by (question, previous answer): every question is asked once, and a
    marker question returns a stored turn-2 answer (so turn 3 can be scored by the same scorer)."""

    def __init__(self, assistant):
        self.assistant = assistant
        self.cache: dict = {}
        self.stored: dict = {}

    def papers(self):
        return self.assistant.papers()

    def ask(self, question, previous=None, **kw):
        if question in self.stored:
            return self.stored[question]
        key = (question, None if previous is None else id(previous))
        if key not in self.cache:
            self.cache[key] = self.assistant.ask(question, previous=previous, **kw)
        return self.cache[key]


def first_line(answer) -> str:
    for line in (answer.answer or "").splitlines():
        if line.strip():
            return line.strip()[:200]
    return "(empty answer)"


def fmt(v):
    return "-" if v is None else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, help="write all per-row results and answers as JSON")
    args = ap.parse_args()

    settings = load_settings()
    retriever = Retriever.from_settings(settings, check_stale=False)
    rec = Recorder(make_assistant(settings, retriever, "extractive"))

    main_results = run_behaviour(rec, HERE, extractive=True)

    # third turns: the previous answer is turn 2's answer
    dialogues = load_set(HERE / "dialogues.jsonl")
    third = []
    for row in dialogues:
        if len(row["turns"]) < 3:
            continue
        first = rec.ask(row["turns"][0]["question"], None, extractive=True)
        second = rec.ask(row["turns"][1]["question"], first, extractive=True)
        rec.stored[MARK + row["id"]] = second
        t3 = dict(row["turns"][2])
        synth = {"id": row["id"] + "/t3", "split": row["split"], "turns": [{"question": MARK + row["id"]}, t3]}
        for k in ("gold_titles", "acceptable_titles", "ordinal", "ask"):
            if k in t3:
                synth[k] = t3[k]
        third.append(synth)
    t3_rows = []
    if third:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "dialogues.jsonl").write_text("\n".join(json.dumps(r) for r in third) + "\n", encoding="utf-8")
            t3_rows = run_behaviour(rec, Path(tmp), extractive=True)["dialogues"]["rows"]

    dlg_rows = main_results["dialogues"]["rows"]
    cmp_rows = main_results["comparisons"]["rows"]
    abs_rows = main_results["absent_names"]["rows"]
    near = [r for r in abs_rows if r["id"].startswith("hnear")]
    named = [r for r in abs_rows if not r["id"].startswith("hnear")]  # named absent + controls
    n_named_absent = sum(r["type"] == "absent_name" for r in named)

    views = {
        "turn 2 (as rag eval)": summarise(main_results, "test"),
        "turns 2+3": summarise({"dialogues": {"rows": dlg_rows + t3_rows}}, "test"),
        "named absent only": summarise({"absent_names": {"rows": named}}, "test"),
        "near misses only": summarise({"absent_names": {"rows": near}}, "test"),
    }
    print(behaviour_table(main_results))
    print()
    print("held-out (split test)            value     n")
    s, s23 = views["turn 2 (as rag eval)"], views["turns 2+3"]
    n_set = [r for r in dlg_rows + t3_rows if r["refers"] == "set"]
    n_ord = [r for r in dlg_rows + t3_rows if r["refers"] == "ordinal"]
    lines = [
        ("follow-up containment, turn 2", s["followup_containment"], sum(r["cited"] for r in dlg_rows if r.get("ask") != "similar")),
        ("follow-up containment, turns 2+3", s23["followup_containment"], sum(r["cited"] for r in dlg_rows + t3_rows if r.get("ask") != "similar")),
        ("ordinal accuracy, turn 2", s["ordinal_accuracy"], sum(r["refers"] == "ordinal" for r in dlg_rows)),
        ("ordinal accuracy, turns 2+3", s23["ordinal_accuracy"], len(n_ord)),
        ("comparison coverage", s["comparison_coverage"], sum(not i["absent"] for r in cmp_rows for i in r["items"])),
        ("comparison absent items said", s["comparison_absent_said"], sum(i["absent"] for r in cmp_rows for i in r["items"])),
        ("absent names caught (all)", s["absent_names_caught"], sum(r["type"] == "absent_name" for r in abs_rows)),
        ("  named absent", views["named absent only"]["absent_names_caught"], n_named_absent),
        ("  near misses (no name)", views["near misses only"]["absent_names_caught"], len(near)),
        ("named controls refused", s["named_controls_refused"], sum(r["type"] == "named_control" for r in abs_rows)),
    ]
    for name, v, n in lines:
        print(f"{name:<32}{fmt(v):>7}{n:>6}")
    print("(containment n = citations in the follow-up answers; set references:", len(n_set), ")")

    # extra, not rag.eval.behaviour metrics: do set follow-ups cite the papers that satisfy them, and only those?
    by_id = {r["id"]: r for r in dialogues}
    id_title = {p.paper_id: normalise_title(p.title) for p in rec.papers()}
    answers = {}
    for row in dialogues:
        first = rec.ask(row["turns"][0]["question"], None, extractive=True)
        second = rec.ask(row["turns"][1]["question"], first, extractive=True)
        answers[row["id"]] = (first, second)
        if len(row["turns"]) == 3:
            answers[row["id"] + "/t3"] = (second, rec.ask(row["turns"][2]["question"], second, extractive=True))
    print("\nset follow-ups (extra check, not a library metric): gold cited/gold | gold among the previous answer's"
          " papers | cited outside gold+acceptable/cited")
    tot = [0, 0, 0, 0]
    for rid, (prev, ans) in answers.items():
        base = by_id[rid.split("/")[0]]
        turn = base["turns"][2 if rid.endswith("/t3") else 1]
        if turn["refers"] != "set":
            continue
        gold = {normalise_title(t) for t in turn["gold_titles"]}
        ok = gold | {normalise_title(t) for t in turn.get("acceptable_titles", [])}
        cited = {normalise_title(c["title"]) for c in ans.citations}
        prev_titles = {id_title.get(i) for i in prev.papers()}
        got, off = len(gold & cited), len(cited - ok)
        tot = [tot[0] + got, tot[1] + len(gold), tot[2] + off, tot[3] + len(cited)]
        print(f"  {rid:<12} {got}/{len(gold)} | {len(gold & prev_titles)}/{len(gold)} | {off}/{len(cited)}"
              + ("  (gold empty: should say none)" if not gold else ""))
    print(f"  total: gold recall {tot[0]}/{tot[1]}, off-gold citations {tot[2]}/{tot[3]}")

    print("\nfailed rows")
    failed = 0
    for r in dlg_rows + t3_rows:
        rid = r["id"]
        prev, ans = answers[rid]
        bad = []
        if r.get("ask") != "similar" and r["inside"] < r["cited"]:
            bad.append(f"containment {r['inside']}/{r['cited']}")
        if r["refers"] == "ordinal" and not r.get("ordinal_ok"):
            bad.append(f"ordinal {by_id[rid.split('/')[0]]['turns'][2 if rid.endswith('/t3') else 1]['ordinal']} "
                       f"({r.get('ask')}) referent={r.get('referent')}")
        if bad:
            failed += 1
            print(f"  {rid}: {'; '.join(bad)}\n      -> {first_line(ans)}")
    cmp_by = {r["id"]: r for r in load_set(HERE / "comparisons.jsonl")}
    for r in cmp_rows:
        bad = [i["name"] + (" (absent, not said)" if i["absent"] else " (not cited)")
               for i in r["items"] if (i["absent"] and not i["said_absent"]) or (not i["absent"] and not i["cited"])]
        if bad:
            failed += 1
            print(f"  {r['id']}: {', '.join(bad)}\n      -> {first_line(rec.ask(cmp_by[r['id']]['question'], None, extractive=True))}")
    abs_by = {r["id"]: r for r in load_set(HERE / "absent_names.jsonl")}
    for r in abs_rows:
        caught = r.get("caught", r["abstained"])
        bad = (r["type"] == "absent_name" and not caught) or (r["type"] == "named_control" and r["abstained"])
        if bad:
            failed += 1
            ans = rec.ask(abs_by[r["id"]]["question"], None, extractive=True)
            what = "not caught" if r["type"] == "absent_name" else "control refused"
            print(f"  {r['id']}: {what} (abstained={r['abstained']}, names_absent={r.get('names_absent')})"
                  f"\n      -> {first_line(ans)}")
    print(f"{failed} failed row(s)")

    if args.out:
        dump = {"summary": views, "dialogues": dlg_rows, "third_turns": t3_rows, "comparisons": cmp_rows,
                "absent_names": abs_rows,
                "answers": {k: {"question": q, "answer": a.answer, "citations": [c["title"] for c in a.citations],
                                "abstained": a.abstained}
                            for k, a in ((f"{q} || prev={p}", a) for (q, p), a in rec.cache.items())
                            for q in [k.split(" || ")[0]]}}
        args.out.write_text(json.dumps(dump, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
