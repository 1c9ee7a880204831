"""The `rag` command line. Errors become one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from rag.errors import ConfigError, RagError
from rag.redaction import RedactingFilter, configured_secrets, scrub
from rag.text import escape_controls, terminal_safe

log = logging.getLogger("rag")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1 or value > 200:
        raise argparse.ArgumentTypeError(f"must be between 1 and 200, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other error here
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _question_args(s, batch_out: str, top_k_help: str) -> None:
    """The arguments `rag search` and `rag ask` share: a question or a batch file, top-k and mode."""
    s.add_argument("question", nargs="?", help="the question (or use --questions FILE)")
    s.add_argument("--questions", type=Path, help=f"JSONL file of {{question, id?}}: {batch_out}")
    s.add_argument("--top-k", type=_positive_int, help=top_k_help)
    s.add_argument("--mode", choices=["hybrid", "dense", "bm25"], help="retrieval mode (default hybrid)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rag", description="Question answering over ML paper abstracts, with cited paper titles.")
    p.add_argument("--data-dir", help="index location (env RAG_DATA_DIR, default .rag)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("ingest", help="parse the corpus and build or update the index")
    s.add_argument("--corpus", action="append", type=Path, help="corpus file or directory (repeatable)")
    s.add_argument("--jsonl", action="append", type=Path, help="a JSONL paper file to ingest (repeatable)")
    s.add_argument("--strict", action="store_true", help="fail on the first unparseable line")
    s.add_argument("--rebuild", action="store_true", help="drop the index and build it from scratch")
    s.add_argument("--json", action="store_true", help="print the ingest report as JSON")

    s = sub.add_parser("search", help="find the papers most relevant to a question")
    _question_args(s, "one JSON line out per question", "papers to return (default 10)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("ask", help="answer a question with cited paper titles")
    _question_args(s, "one JSON answer per line", "papers given to the answerer (default 6)")
    s.add_argument("--extractive", action="store_true", help="answer with quoted sentences, no LLM")
    s.add_argument("--evidence", action=argparse.BooleanOptionalAction, default=None,
                   help="with an LLM: let it judge each candidate paper before answering (default RAG_EVIDENCE=on)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("chat", help="interactive conversation with follow-up questions")
    s.add_argument("--extractive", action="store_true", help="answer with quoted sentences, no LLM")
    s.add_argument("--evidence", action=argparse.BooleanOptionalAction, default=None,
                   help="with an LLM: let it judge each candidate paper before answering (default RAG_EVIDENCE=on)")
    s.add_argument("--top-k", type=_positive_int)
    s.add_argument("--mode", choices=["hybrid", "dense", "bm25"])

    s = sub.add_parser("ui", help="start the Gradio web UI")
    s.add_argument("--host", help="bind address (default 127.0.0.1; anything wider must be explicit)")
    s.add_argument("--port", type=int, help="port (default 7860)")
    s.add_argument("--auth", help="not a password: use RAG_UI_AUTH=user:password or --auth-file (a password in argv is "
                                  "visible to every user of the machine through ps)")
    s.add_argument("--auth-file", type=Path, help="file holding 'user:password' for the login form (env RAG_UI_AUTH_FILE)")
    s.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="reverse proxies (IPs or networks, comma-separated) whose X-Forwarded-For names the client; "
                        "default: none, every forwarded header is ignored (env RAG_UI_FORWARDED_ALLOW_IPS)")

    sub.add_parser("mcp", help="serve the index as MCP tools over stdio (search_papers, ask, get_paper)")
    s = sub.add_parser("doctor", help="check every part of the index and say what `rag ingest` would repair")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("feedback", help="what users rated in the UI: export it as a draft eval dataset")
    fsub = s.add_subparsers(dest="feedback_command", required=True, parser_class=_Parser)
    e = fsub.add_parser("export", help="write the 👍/👎 feedback as draft eval-set lines (JSONL) for review")
    e.add_argument("--out", type=Path, help="write to this file (default: standard output)")
    e.add_argument("--rating", choices=["up", "down", "all"], default="all", help="which ratings to export")
    e.add_argument("--feedback-file", type=Path, help="the feedback file (default DATA_DIR/feedback.jsonl)")
    sub.add_parser("bench", help="run the benchmarks (ingest, latency, embedding, scale); see `rag bench --help`")

    from rag.eval.cli import add_eval_parser

    add_eval_parser(sub)
    return p


def _settings(args, **extra):
    from rag.settings import load_settings

    return load_settings(data_dir=getattr(args, "data_dir", None), **extra)


def _read_questions(path: Path) -> list[dict]:
    """JSONL of objects with `question` (and optional `id`); bad lines are reported and skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read questions file {path}: {exc}") from None
    out = []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("question"), str):
                raise ValueError("needs a 'question' string")
        except ValueError as exc:
            print(f"warning: {path}:{no}: {exc}: skipped", file=sys.stderr)
            continue
        out.append({"id": obj.get("id", str(no)), "question": obj["question"]})
    return out


def cmd_ingest(args) -> int:
    from rag.index.ingest import corpus_change, ingest

    settings = _settings(args)
    paths = (args.corpus or []) + (args.jsonl or [])
    # A chunking child, started before the index is opened, imports llama-index while this process opens the
    # index and scans the corpus (rag.corpus.chunk.ChunkWorker); only when papers are probably added (a removal
    # chunks nothing, and the child's imports would take CPU from this process), never on one CPU.
    worker = None
    if (os.cpu_count() or 1) > 1 and (args.rebuild or corpus_change(settings, paths or None) in ("grown", "unknown")):
        from rag.corpus.chunk import ChunkWorker

        worker = ChunkWorker(settings.chunk_size, settings.chunk_overlap, settings.tokenizer)
    try:
        report = ingest(settings, paths or None, strict=args.strict, rebuild=args.rebuild, progress=not args.json,
                        chunking=worker)
    finally:
        if worker is not None:
            worker.close()
    if args.json:
        print(_json(report.to_dict()))
    else:
        for issue in report.issues[:20]:
            print(f"warning: {terminal_safe(issue)}", file=sys.stderr)
        if len(report.issues) > 20:
            print(f"warning: ... and {len(report.issues) - 20} more (rag ingest --json lists them all)", file=sys.stderr)
        print(
            f"{report.papers} papers ({report.entries} entries, {report.duplicates} duplicates), "
            f"{report.chunks} chunks; added {report.added}, changed {report.changed}, "
            f"removed {report.removed}, unchanged {report.unchanged}; embedded {report.embedded} texts "
            f"in {report.seconds:.1f}s ({report.reason or 'updated'}; Chroma {report.chroma_mode})"
        )
    return 0


def _print_table(hits) -> None:
    if not hits:
        print("no matching papers")
        return
    width = min(max(len(h.title) for h in hits), 90)
    for h in hits:
        title = terminal_safe(h.title)
        title = title if len(title) <= width else title[: width - 1] + "…"
        print(f"{h.rank:>3}  {h.score:8.4f}  {title}")
        print(f"     {terminal_safe(h.snippet)[:160]}")


def cmd_search(args) -> int:
    from rag.retrieve.hybrid import Retriever

    settings = _settings(args)
    if args.question is None and not args.questions:
        raise ConfigError("give a QUESTION or --questions FILE")
    retriever = Retriever.from_settings(settings)
    if args.questions:
        for item in _read_questions(args.questions):
            try:
                question = _check_question(item["question"], settings)
            except RagError as exc:  # one bad question must not stop the batch
                print(f"warning: {args.questions}: question {item['id']!r}: {exc}: skipped", file=sys.stderr)
                continue
            hits = retriever.search(question, args.top_k, args.mode)
            print(_json({"id": item["id"], "question": item["question"], "hits": [h.public() for h in hits]}), flush=True)
        return 0
    hits = retriever.search(_check_question(args.question, settings), args.top_k, args.mode)
    if args.json:
        print(_json([h.public() for h in hits]))
    else:
        _print_table(hits)
    return 0


def _check_question(question: str, settings) -> str:
    from rag.answer.assistant import check_question

    return check_question(question, settings.max_question_chars)


def _json(obj) -> str:
    """JSON for stdout: non-ASCII escaped, so control and bidi characters in corpus text cannot act on a terminal."""
    return json.dumps(obj, ensure_ascii=True)


def cmd_ask(args) -> int:
    from rag.answer.assistant import Assistant

    settings = _settings(args)
    if args.question is None and not args.questions:
        raise ConfigError("give a QUESTION or --questions FILE")
    if args.question is not None:
        _check_question(args.question, settings)  # fail fast, before loading the index and model
    assistant = Assistant.from_settings(settings)
    kw = {"top_k": args.top_k, "mode": args.mode, "extractive": args.extractive, "evidence": args.evidence}
    if args.questions:
        for item in _read_questions(args.questions):
            try:
                record = assistant.ask(item["question"], **kw).to_dict()
            except RagError as exc:  # one bad question must not stop the batch
                record = {"question": item["question"], "error": str(exc)}
            print(_json({"id": item["id"], **record}), flush=True)
        return 0
    answer = assistant.ask(args.question, **kw)
    if args.json:
        print(_json(answer.to_dict()))
    else:
        _print_answer(answer)
    return 0


def _print_answer(answer) -> None:
    print(terminal_safe(answer.answer))
    _print_answer_footer(answer)


def _confidence_line(answer) -> str:
    c = answer.confidence()
    return f"  Confidence: {c['level']} ({terminal_safe(c['reason'])})" if c.get("reason") else f"  Confidence: {c['level']}"


def cmd_chat(args) -> int:
    from rag.answer.assistant import Assistant

    settings = _settings(args)
    assistant = Assistant.from_settings(settings)
    history: list[dict] = []
    previous = None  # the last answer: a follow-up's "them" and "the second one" are its papers
    mode = "extractive" if args.extractive or not settings.llm_configured else f"LLM {settings.llm_model}"
    print(f"Paper RAG chat ({assistant.index_info()['papers']} papers, {mode}). Empty line or Ctrl-D to quit.")
    while True:
        try:
            question = input("\n> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not question:
            return 0
        try:
            answer, staged = None, False
            for event in assistant.ask_stream(question, history=history, top_k=args.top_k, mode=args.mode,
                                              extractive=args.extractive, evidence=args.evidence, previous=previous):
                if event.kind == "stage" and sys.stderr.isatty():
                    print(f"\r\033[K{terminal_safe(event.text)}", end="", file=sys.stderr, flush=True)
                    staged = True
                elif event.kind == "token":
                    if staged:  # clear the stage line before the answer
                        print("\r\033[K", end="", file=sys.stderr, flush=True)
                        staged = False
                    print(terminal_safe(event.text), end="", flush=True)
                elif event.kind == "final":
                    answer = event.answer
            print()
            if answer is not None:
                _print_answer_footer(answer)
                history.extend([{"role": "user", "content": question}, {"role": "assistant", "content": answer.answer}])
                previous = answer
        except RagError as exc:
            print(f"error: {exc}")


def _print_answer_footer(answer) -> None:
    """Cited titles, "possibly related" papers on abstention, and the notice."""
    cited = [s for s in answer.sources if s.n in {c["n"] for c in answer.citations}]
    if cited:
        print("\nSources:")
    for s in cited:
        print(f"  [{s.n}] {terminal_safe(s.title)}")
    for p in answer.possibly_related:
        print(f"  possibly related: {terminal_safe(p['title'])}")
    for f in answer.flagged:
        print(f"  flagged: {terminal_safe(f['sentence'])} ({terminal_safe(f['reason'])})")
    if answer.notice:
        print(f"  ({terminal_safe(answer.notice)})")
    print(_confidence_line(answer))
    if answer.stages:
        print("  " + "; ".join(f"{st.name}: {st.calls} call{'s' if st.calls != 1 else ''}, "
                               f"{st.prompt_tokens + st.completion_tokens} tokens, {st.ms:.0f} ms" for st in answer.stages))


def cmd_ui(args) -> int:
    from rag.apps.ui.app import launch

    if args.auth:
        raise ConfigError("--auth would put the password in the process list (ps): use RAG_UI_AUTH=user:password "
                          "or --auth-file FILE")
    settings = _settings(args, ui_host=args.host, ui_port=args.port, ui_auth_file=args.auth_file,
                         ui_forwarded_allow_ips=args.forwarded_allow_ips)
    launch(settings)
    return 0


def cmd_doctor(args) -> int:
    from rag.apps.doctor import print_checks, run_checks

    return print_checks(run_checks(_settings(args)), args.json)


def cmd_feedback(args) -> int:
    """`rag feedback export`: draft dataset lines from DATA_DIR/feedback.jsonl (validated before writing)."""
    from rag.apps import feedback
    from rag.eval.dataset import load_dataset

    path = args.feedback_file or feedback.feedback_path(_settings(args))
    entries, problems = feedback.load(path)
    for problem in problems:
        print(f"warning: {escape_controls(problem)}", file=sys.stderr)
    ratings = feedback.RATINGS if args.rating == "all" else (args.rating,)
    lines = feedback.draft_dataset(entries, ratings)
    if not lines:
        raise ConfigError(f"nothing to export: {len(entries)} rated answers in {path}, none usable with --rating {args.rating}")
    text = "".join(feedback.json_line(line) for line in lines)  # terminal-safe: controls and bidi as \\u escapes
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        load_dataset(tmp, strict=True)  # what we write must load as a dataset
        tmp.replace(args.out)
        print(f"wrote {len(lines)} draft questions from {len(entries)} rated answers to {args.out}; review them "
              "(notes say what to check) before adding them to a dataset", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_mcp(args) -> int:
    from rag.apps.mcp_server import serve

    serve(_settings(args))
    return 0


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "ask": cmd_ask, "chat": cmd_chat, "ui": cmd_ui, "mcp": cmd_mcp, "doctor": cmd_doctor,
            "feedback": cmd_feedback}


def main(argv: list[str] | None = None) -> int:
    entry = argv is None  # called by the `rag` console script (tests pass argv and stay in-process)
    argv = sys.argv[1:] if argv is None else argv
    from rag.env import configure_process

    configure_process()
    if argv[:1] == ["bench"]:  # its own argparse, so its flags pass through untouched
        from rag.eval.bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:2] == ["eval", "calibrate"]:
        from rag.eval.calibrate import main as calibrate_main

        return calibrate_main(argv[2:])
    if argv[:2] == ["eval", "generate"]:
        from rag.eval.generate import main as generate_main

        return generate_main(argv[2:])
    args = build_parser().parse_args(argv)
    with _logging(args.verbose):
        code = _run(args)
    if entry and args.command == "ingest":
        # Everything the ingest wrote is committed and closed; the interpreter's own teardown (chromadb
        # freeing its loaded indexes, module by module) costs ~0.25 s per `rag ingest` at 100k papers
        # (measured), which matters when a small update takes seconds. Skip it.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


_NOISY = ("httpx", "chromadb", "sentence_transformers", "transformers", "urllib3", "mcp")


@contextmanager
def _logging(verbose: bool):
    """Log records to stderr as "LEVEL: message" for this command (removed again after it: main()
    can run several times in one process, e.g. in tests)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(RedactingFilter(configured_secrets()))  # no key or password, no terminal escapes in a log line
    saved = (root.level, {name: logging.getLogger(name).level for name in _NOISY})
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def _run(args) -> int:
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    try:
        return handler(args) or 0
    except RagError as exc:
        print(f"error: {scrub(str(exc), configured_secrets())}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `rag search ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; run the command again to continue (ingest resumes where it stopped)", file=sys.stderr)
        return 130
    except Exception as exc:  # the edge: never a traceback for the user
        if _debug():
            raise
        print(f"error: unexpected {exc.__class__.__name__}: {scrub(str(exc), configured_secrets())} (set RAG_DEBUG=1 "
              "for a traceback)", file=sys.stderr)
        return 1


def _debug() -> bool:
    try:
        from rag.settings import load_settings

        return load_settings().debug
    except RagError:
        return False


if __name__ == "__main__":
    sys.exit(main())
