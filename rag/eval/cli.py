"""`rag eval` (run a dataset, write report.json / report.md / report.csv / plots, check gates),
`rag eval compare A B` (metric deltas between two reports), `rag eval import FILE` (a CSV or RAGAS set
-> a dataset) and `rag eval generate` (a draft set from the corpus, by the configured LLM)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from rag.errors import ConfigError
from rag.eval import ANSWER_CHOICES

EXAMPLES = """examples:
  rag eval --dataset eval/datasets/dev.jsonl --answer none --out /tmp/evalrun
  rag eval --dataset my_questions.jsonl        # lines of {"question": ..., "gold_titles": [...]} or {"question", "reference"}
  rag eval import questions.csv --format csv --out my_questions.jsonl
  rag eval generate --n 20 --out draft.jsonl
  rag eval --dataset eval/datasets/dev.jsonl --modes hybrid --fail-under recall@10=0.6 hybrid:mrr=0.5
  rag eval compare eval/runs/A/report.json eval/runs/B/report.json
"""


def _top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= 200:
        raise argparse.ArgumentTypeError(f"must be between 1 and 200, got {value}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate retrieval and answers on a question set (or compare two reports)",
        description="Run every question of a JSONL dataset through retrieval (and the answerer) in each mode; "
        "write DIR/report.json, DIR/report.md and PNG plots; print a summary; exit 1 when a gate fails.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", type=Path, help="JSONL question set (see eval/datasets/README.md)")
    p.add_argument("--modes", default="hybrid,dense,bm25", help="comma list of retrieval modes (default hybrid,dense,bm25)")
    p.add_argument("--answer", choices=ANSWER_CHOICES, default="extractive",
                   help="answerer to evaluate: extractive (default, offline), llm, or none (retrieval only)")
    p.add_argument("--top-k", type=_top_k, default=10, help="papers retrieved per question for the retrieval metrics (default 10)")
    p.add_argument("--answer-top-k", type=_top_k, help="papers given to the answerer (default RAG_ANSWER_TOP_K)")
    p.add_argument("--out", type=Path, help="report directory (default eval/runs/<timestamp>)")
    p.add_argument("--fail-under", nargs="+", action="extend", default=[], metavar="[MODE:]METRIC=VALUE",
                   help="exit 1 when a summary metric is below VALUE (all evaluated modes unless MODE: is given)")
    p.add_argument("--fail-over", nargs="+", action="extend", default=[], metavar="[MODE:]METRIC=VALUE",
                   help="exit 1 when a summary metric is above VALUE (for latency, unsupported_sentence_rate, ...)")
    p.add_argument("--split", choices=("tune", "test", "all"), default="all",
                   help="evaluate only the questions of this split (default all; README figures are test)")
    p.add_argument("--limit", type=_limit, help="evaluate only the first N questions")
    p.add_argument("--judge", action="store_true",
                   help="also grade answers with a judge LLM, claim by claim (prompts/judge_claims.md, judge.md)")
    p.add_argument("--evidence", action=argparse.BooleanOptionalAction, default=None,
                   help="with --answer llm: run the LLM evidence step (default RAG_EVIDENCE)")
    p.add_argument("--oracle-llm", action="store_true",
                   help="with --answer llm: answer with a built-in relevance oracle (in-process, knows the dataset's "
                        "gold papers; rag/eval/oracle.py): measures the plumbing, not an LLM")
    p.add_argument("--json", action="store_true", help="print the summary, per-type metrics, gates and files as JSON")
    p.add_argument("--strict", action="store_true", help="any dataset issue (bad line, unknown gold title) is fatal")
    p.add_argument("--allow-skips", action="store_true",
                   help="evaluate what remains when dataset lines are skipped (default: a skipped line fails the run)")
    p.add_argument("--behaviour", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the behaviour sets beside the dataset (dialogues, comparisons, absent_names .jsonl): "
                        "follow-up containment, ordinal accuracy, comparison coverage, absent names (default on)")
    p.set_defaults(handler=cmd_eval)

    es = p.add_subparsers(dest="eval_command", metavar="{compare,calibrate,import,generate}", parser_class=type(p))
    es.add_parser("calibrate", help="fit the offline judgement on the tune split (see `rag eval calibrate --help`)")
    c = es.add_parser("compare", help="print metric deltas between two reports (B minus A)",
                      description="Print per-mode metric deltas (B minus A) between two `rag eval` reports.")
    c.add_argument("a", type=Path, metavar="A", help="baseline report.json (or its directory)")
    c.add_argument("b", type=Path, metavar="B", help="new report.json (or its directory)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(handler=cmd_compare)

    from rag.eval.formats import FORMATS

    i = es.add_parser("import", help="convert a CSV or RAGAS question set into a dataset `rag eval` runs",
                      description="Convert a question set (CSV with a header; RAGAS samples; this project's JSONL) into "
                                  "dataset lines: titles matched to the index exactly, then by normalised title; RAGAS "
                                  "contexts matched to the paper whose text holds them; every unmatched one listed.")
    i.add_argument("file", type=Path, metavar="FILE", help="the question set")
    i.add_argument("--format", choices=FORMATS, required=True, help="csv (question, gold_titles separated by ';', "
                   "reference), ragas (question/user_input, ground_truth/reference, contexts/reference_contexts) or jsonl")
    i.add_argument("--out", type=Path, help="write the dataset here (default: standard output)")
    i.add_argument("--allow-skips", action="store_true", help="write what remains when rows cannot be read")
    i.add_argument("--json", action="store_true", help="print the import summary and problems as JSON (on stderr)")
    i.set_defaults(handler=cmd_import)

    # its own parser (rag/eval/generate.py), dispatched by rag.apps.cli.main as calibrate is: `--n` would be
    # taken here for an abbreviation of --no-evidence / --no-behaviour
    es.add_parser("generate", help="draft a question set from the corpus with the configured LLM, for review "
                                   "(see `rag eval generate --help`)")


def cmd_eval(args) -> int:
    from rag.eval.dataset import DatasetError, load_dataset
    from rag.eval.report import (
        by_type_table,
        check_gates,
        gate_message,
        parse_gates,
        split_table,
        stage_table,
        summary_table,
        tradeoff_text,
        write_report,
    )
    from rag.eval.runner import check_modes, run_eval
    from rag.retrieve.hybrid import Retriever
    from rag.settings import load_settings

    if args.dataset is None:
        raise ConfigError("give --dataset FILE (or use `rag eval compare A B`)")
    settings = load_settings(data_dir=getattr(args, "data_dir", None))
    modes = check_modes(args.modes)
    gates = parse_gates(args.fail_under, modes, args.answer, "under") + parse_gates(args.fail_over, modes, args.answer, "over")

    retriever = Retriever.from_settings(settings, check_stale=False)  # a missing index fails here, saying how to build it
    titles = [p.title for p in retriever.index.papers()]
    dataset = load_dataset(args.dataset, titles, strict=args.strict, index_name=str(Path(settings.data_dir).resolve()))
    for issue in dataset.issues[:20]:
        print(f"warning: {issue}", file=sys.stderr)
    if len(dataset.issues) > 20:
        print(f"warning: ... and {len(dataset.issues) - 20} more dataset issues (all listed in report.json)", file=sys.stderr)
    skipped = dataset.skip_message()
    if skipped and not args.allow_skips:
        raise DatasetError(f"{skipped}: fix those lines, or pass --allow-skips to evaluate the other "
                           f"{len(dataset.questions)}")
    if skipped:
        print(f"warning: {skipped}; evaluating the other {len(dataset.questions)} (--allow-skips)", file=sys.stderr)
    inferred = dataset.inferred()
    if inferred:
        print(f"note: {sum(inferred.values())} question(s) without a type: inferred as the answerer decides ("
              + ", ".join(f"{t} {n}" for t, n in inferred.items()) + ")", file=sys.stderr)
    if args.split != "all":
        dataset.questions = [q for q in dataset.questions if q.split == args.split]
        if not dataset.questions:
            raise ConfigError(f"the dataset has no questions in split {args.split!r}")
    if args.limit:
        dataset.questions = dataset.questions[: args.limit]

    oracle = assistant = None
    if args.oracle_llm:
        if args.answer != "llm":
            raise ConfigError("--oracle-llm needs --answer llm")
        from rag.answer.assistant import Assistant
        from rag.eval.oracle import RelevanceOracle

        # in-process: the answerer and the judge get the oracle itself, whatever RAG_LLM_* says
        oracle = RelevanceOracle({q.question: q.gold_titles for q in dataset.questions})
        settings = settings.model_copy(update={"llm_model": "relevance-oracle"})
        assistant = Assistant.from_settings(settings, retriever=retriever, llm=oracle)
    judge = None
    if args.judge:
        if args.answer == "none":
            print("warning: --judge ignored with --answer none", file=sys.stderr)
        else:
            from rag.eval.grader import Judge

            judge = Judge.from_settings(settings, llm=oracle)
            if judge is None:
                print("warning: --judge ignored: no LLM configured (set RAG_LLM_BASE_URL or OPENAI_API_KEY)", file=sys.stderr)
    report = run_eval(settings, dataset, modes=modes, answer=args.answer, top_k=args.top_k, evidence=args.evidence,
                      answer_top_k=args.answer_top_k, retriever=retriever, assistant=assistant, judge=judge, progress=True)
    if oracle is not None:
        report["config"]["llm"] = "relevance oracle (plumbing measurement, not an LLM)"
    if args.behaviour and args.answer != "none" and oracle is None:
        from rag.eval.behaviour import run_behaviour
        from rag.eval.runner import make_assistant

        behaviour = run_behaviour(make_assistant(settings, retriever, args.answer), args.dataset.parent,
                                  extractive=args.answer == "extractive")
        if behaviour is not None:
            report["behaviour"] = behaviour
    results = check_gates(report, gates)
    report["gates"] = results
    out = args.out or Path("eval/runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    files = write_report(report, out)
    if report.get("behaviour"):
        from rag.eval.behaviour import behaviour_table

        with open(out / "report.md", "a", encoding="utf-8") as fh:
            fh.write("\n## Behaviour (answers that follow the question)\n\n```\n" + behaviour_table(report["behaviour"])
                     + "\n```\n")

    failed = [g for g in results if not g["passed"]]
    errors = sum(s["errors"] for s in report["summary"].values())
    if args.json:
        print(json.dumps({
            "dataset": report["dataset"] | {"issues": len(report["dataset"]["issues"])},
            "config": report["config"],
            "summary": report["summary"],
            "by_type": report["by_type"],
            "by_split": report["by_split"],
            "abstention": tradeoff_text(report),
            "judge": report.get("judge"),
            "behaviour": (report.get("behaviour") or {}).get("summary"),
            "stages": {m: report["summary"][m].get("stages") for m in report["summary"]},
            "gates": results,
            "files": [str(f) for f in files],
        }))
    else:
        print(summary_table(report))
        print()
        for mode in modes:
            table = split_table(report, mode)
            if table and len(report["by_split"][mode]) > 1:
                print(table)
                print()
        for line in tradeoff_text(report):
            print(f"abstention: {line}")
        print()
        if report.get("behaviour"):
            from rag.eval.behaviour import behaviour_table

            print(behaviour_table(report["behaviour"]))
            print()
        print(by_type_table(report, "recall@10"))
        stages = stage_table(report)
        if stages:
            print()
            print(stages)
        if report.get("judge"):
            print()
            for mode, j in report["judge"].items():
                print(f"judge {mode}: citation recall {j.get('judge_citation_recall')}, citation precision "
                      f"{j.get('judge_citation_precision')} (claim by claim); faithfulness {j['faithfulness']}, "
                      f"answer_relevance {j['answer_relevance']} ({j['judged']} judged, {j['failed']} failed)"
                      + (f"; answer correctness against the references {j['judge_answer_correctness']}"
                         if j.get("judge_answer_correctness") is not None else ""))
        print()
        print(f"wrote {', '.join(str(f) for f in files)}")
        for g in results:
            if g["passed"]:
                print(f"gate passed: {g['mode']} {g['metric']} = {g['value']:.4f} "
                      f"({'>=' if g['kind'] == 'under' else '<='} {g['threshold']:g})")
    if errors:
        print(f"warning: {errors} question run(s) failed; see the errors in {out / 'report.md'}", file=sys.stderr)
    for g in failed:
        print(f"error: gate failed: {gate_message(g)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_compare(args) -> int:
    from rag.eval.report import compare, compare_text, load_report

    cmp = compare(load_report(args.a), load_report(args.b))
    if not cmp["modes"]:
        raise ConfigError(f"the reports share no retrieval mode ({args.a} vs {args.b})")
    print(json.dumps(cmp) if args.json else compare_text(cmp))
    return 0


def _index_papers(args):
    """(papers, index name) of the configured index, read without loading the embedding model."""
    from rag.index.reader import Index
    from rag.settings import load_settings

    settings = load_settings(data_dir=getattr(args, "data_dir", None))
    index = Index.open(settings, check_stale=False)
    return index.papers(), f"{Path(settings.data_dir).resolve()} ({index.info()['papers']} papers)"


def cmd_import(args) -> int:
    from rag.eval.dataset import DatasetError, write_dataset
    from rag.eval.formats import PaperMatcher, import_dataset

    papers, index_name = _index_papers(args)
    result = import_dataset(args.file, args.format, PaperMatcher(papers), index_name)
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if result.skipped and not args.allow_skips:
        raise DatasetError(f"skipped {result.skipped} of {result.rows} rows (first: {result.first_skip}): fix those rows, "
                           "or pass --allow-skips to import the others")
    if not result.lines:
        raise DatasetError(f"{args.file} holds no question to import")
    if args.out:
        write_dataset(result.lines, args.out, [p.title for p in papers])
    else:
        sys.stdout.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in result.lines))
    if args.json:
        print(json.dumps({"rows": result.rows, "imported": len(result.lines), "skipped": result.skipped,
                          "titles": result.titles, "titles_normalised": result.titles_normalised,
                          "titles_unmatched": result.titles_unmatched, "contexts": result.contexts,
                          "contexts_unmatched": result.contexts_unmatched, "problems": result.problems,
                          "index": index_name, "out": str(args.out) if args.out else None}), file=sys.stderr)
    else:
        where = f"; wrote {args.out}" if args.out else ""
        print(f"{result.summary()} (index {index_name}){where}", file=sys.stderr)
    return 0
