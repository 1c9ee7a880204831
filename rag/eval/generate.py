"""`rag eval generate`: a draft question set written by the configured LLM from the indexed papers.

Each question is one of three kinds, in turn: specific (one gold paper), list (two or more gold papers
among a paper and its nearest neighbours by BM25), unanswerable (a near miss on the same papers). A draft
is kept only when it passes validation: its gold papers are among the papers it was shown and exist in the
index, their number fits the kind, and the LLM, shown the gold abstracts again (all the shown ones for an
unanswerable question), says an answerable question is answerable and an unanswerable one is not. The
draft file is for review: every line has split `tune` (never `test`) and a note starting DRAFT; the file
must not exist yet, so a draft is never appended to a reviewed set.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ConfigError, RagError
from rag.eval.dataset import TitleIndex, write_dataset

log = logging.getLogger(__name__)

PLAN = ("specific", "list", "specific", "unanswerable")  # the kinds, in turn: half specific, a quarter each other
LIST_GROUP = 5  # papers shown for a list or near-miss question: a paper and its nearest neighbours
DRAFT_SPLIT = "tune"


@dataclass
class Draft:
    kind: str
    question: str
    gold: list[str]
    reference: str | None
    key_facts: list[str]
    shown: list[str]


def _paper_blocks(prompts, papers) -> str:
    from rag.prompts import source_blocks
    from rag.records import Source

    sources = [Source(n, p.paper_id, p.title, "", 0.0, p.abstract) for n, p in enumerate(papers, start=1)]
    return source_blocks(prompts, sources)


class Generator:
    """Drafts and validates questions with `llm` (a rag.clients.chat.ChatModel) over `index`'s papers."""

    def __init__(self, llm, prompts, index, neighbours):
        """`neighbours(paper, k)`: the k papers nearest to `paper`, itself first."""
        self.llm = llm
        self.prompts = prompts
        self.titles = TitleIndex(p.title for p in index.papers())
        self.neighbours = neighbours

    def _ask(self, name: str, **values) -> dict:
        from rag.eval.grader import reply_object

        return reply_object(self.llm.complete([{"role": "user", "content": self.prompts[name].render(**values)}]))

    def draft(self, kind: str, seed) -> Draft:
        """One validated draft of `kind` from `seed` (a Paper); ValueError saying why it was rejected."""
        shown = [seed] if kind == "specific" else self.neighbours(seed, LIST_GROUP)
        obj = self._ask("generate_question", kind=kind, papers=_paper_blocks(self.prompts, shown))
        question = " ".join(str(obj.get("question") or "").split())
        if not question:
            raise ValueError("the reply has no question")
        gold = []
        for g in obj.get("gold") or []:
            if isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= len(shown):
                gold.append(shown[g - 1].title)
            elif isinstance(g, str) and self.titles.resolve(g) in {p.title for p in shown}:
                gold.append(self.titles.resolve(g))
            else:
                raise ValueError(f"gold {g!r} is not one of the {len(shown)} papers shown")
        gold = list(dict.fromkeys(gold))
        missing = [t for t in gold if self.titles.resolve(t) is None]
        if missing:
            raise ValueError(f"gold title not in the index: {missing[0]!r}")
        wanted = {"specific": (1, 1), "list": (2, len(shown)), "unanswerable": (0, 0)}[kind]
        if not wanted[0] <= len(gold) <= wanted[1]:
            raise ValueError(f"a {kind} question needs {wanted[0]}–{wanted[1]} gold papers, the reply gives {len(gold)}")
        checked = [p for p in shown if p.title in gold] if gold else shown
        verdict = self._ask("generate_check", question=question, papers=_paper_blocks(self.prompts, checked))
        if not isinstance(verdict.get("answerable"), bool):
            raise ValueError("the check's reply lacks a boolean 'answerable'")
        if verdict["answerable"] != (kind != "unanswerable"):
            why = str(verdict.get("reason") or "")[:200]
            raise ValueError(f"the check found it {'answerable' if verdict['answerable'] else 'not answerable'} "
                             f"from {'its gold abstracts' if gold else 'the papers shown'}" + (f": {why}" if why else ""))
        facts = [f for f in obj.get("key_facts") or [] if isinstance(f, str) and f.strip()]
        reference = str(obj.get("reference") or "").strip() or None
        return Draft(kind, question, gold, reference if gold else None, facts if gold else [], [p.title for p in shown])


def draft_line(n: int, d: Draft, model: str) -> dict:
    """A dataset line (rag/eval/dataset.py format), marked as a draft for review."""
    line = {"id": f"gen-{n:03d}", "type": d.kind, "question": d.question, "gold_titles": d.gold, "key_facts": d.key_facts}
    if d.reference:
        line["reference"] = d.reference
    line["split"] = DRAFT_SPLIT
    line["notes"] = (f"DRAFT by {model} from: {'; '.join(d.shown)}. Review before use: is the question natural, "
                     "is the gold every paper that answers it (and only those), are the key facts in the abstracts?")
    return line


def main(argv=None) -> int:
    """`rag eval generate --n N [--papers TITLE ...] --out FILE`; errors are one line on stderr."""
    from rag.env import configure_process

    configure_process()
    p = argparse.ArgumentParser(prog="rag eval generate", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--n", type=int, required=True, help="questions to draft (each kind in turn: specific, list, "
                   "specific, unanswerable near miss)")
    p.add_argument("--papers", nargs="+", metavar="TITLE", help="draft from these papers (default: a sample of the index)")
    p.add_argument("--out", type=Path, required=True, help="the draft file to write (never an existing file)")
    p.add_argument("--seed", type=int, default=0, help="paper sample seed (default 0)")
    p.add_argument("--data-dir", help="index location (env RAG_DATA_DIR, default .rag)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    try:
        return generate_draft(args)
    except RagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def generate_draft(args) -> int:
    """Draft, validate and write the set (arguments as `main` parses them)."""
    from rag.clients.chat import OpenAIChatLLM
    from rag.eval.grader import EVAL_PROMPTS
    from rag.prompts import load_prompts
    from rag.retrieve.hybrid import Retriever
    from rag.settings import load_settings

    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists: a draft goes to a new file (review it, then merge it by hand), choose another --out")
    settings = load_settings(data_dir=getattr(args, "data_dir", None))
    if not settings.llm_configured:
        raise ConfigError("rag eval generate needs an LLM: set RAG_LLM_BASE_URL (and RAG_LLM_API_KEY or OPENAI_API_KEY)")
    prompts = load_prompts() | load_prompts(required=EVAL_PROMPTS)
    retriever = Retriever.from_settings(settings, check_stale=False)
    index = retriever.index
    papers = index.papers()
    if args.papers:
        titles = TitleIndex(p.title for p in papers)
        unknown = [t for t in args.papers if titles.resolve(t) is None]
        if unknown:
            raise ConfigError(f"--papers: not in the index {Path(settings.data_dir).resolve()}: "
                              + "; ".join(repr(t) for t in unknown))
        wanted = {titles.resolve(t) for t in args.papers}
        seeds = [p for p in papers if p.title in wanted]
    else:
        seeds = random.Random(args.seed).sample(papers, min(len(papers), args.n))
    by_id = {p.paper_id: p for p in papers}

    def neighbours(paper, k):
        if args.papers and len(seeds) > 1:  # the user chose the papers: a list is drawn from them
            return [paper] + [p for p in seeds if p is not paper][: k - 1]
        hits = retriever.search(f"{paper.title}. {paper.abstract[:300]}", k + 1, "bm25")
        return [paper] + [by_id[h.paper_id] for h in hits if h.paper_id != paper.paper_id][: k - 1]

    generator = Generator(OpenAIChatLLM.from_settings(settings), prompts, index, neighbours)
    lines, rejected = [], []
    for i in range(args.n):
        kind, seed = PLAN[i % len(PLAN)], seeds[i % len(seeds)]
        try:
            d = generator.draft(kind, seed)
        except (ValueError, RagError) as exc:
            rejected.append(f"{kind} from {seed.title!r}: {exc}")
            print(f"warning: rejected draft {i + 1} ({rejected[-1]})", file=sys.stderr)
            continue
        lines.append(draft_line(len(lines) + 1, d, settings.llm_model or "the configured LLM"))
    if not lines:
        raise ConfigError(f"no draft passed validation ({len(rejected)} rejected; first: {rejected[0]})")
    write_dataset(lines, out, [p.title for p in papers])
    kinds = {k: sum(1 for line in lines if line["type"] == k) for k in ("specific", "list", "unanswerable")}
    print(f"wrote {len(lines)} draft questions to {out} (" + ", ".join(f"{k} {n}" for k, n in kinds.items())
          + f"); {len(rejected)} rejected; split {DRAFT_SPLIT}, notes DRAFT: review every line before use", file=sys.stderr)
    return 0
