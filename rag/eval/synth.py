"""Synthetic paper sets for scale tests and benchmarks (JSONL in the arXiv snapshot's shape).

The text is learned from the real abstracts in data/corpus (parsed with rag.corpus.parse), so that what
ingest and search cost at scale (tokens per chunk, chunks per paper, distinct terms, postings per term)
looks like a real corpus rather than a 70-word toy vocabulary:

- titles and abstracts are word-bigram (Markov) chains over the real titles / abstracts, with lengths
  drawn from the real length distributions (abstracts ~185 words, titles ~9);
- a real corpus keeps meeting new words (names, acronyms, rare terms: Heaps' law), which 701 abstracts
  cannot supply. So a share of the tokens (`rare_rate`) is drawn from an unbounded Zipf distribution
  (exponent `zipf_a`) over ranks whose first ranks are the real words by frequency and whose later ranks
  are pseudo-words spelt from syllables: the number of distinct terms keeps growing with the corpus and
  most of them are rare, as in arXiv. Measured (content terms, rag.text): 6,428 at 701 papers (the real
  701 have 6,410), 21.8k at 10k, 138k at 100k; growth ~n^0.47 from 1k to 10k and ~n^0.8 from 10k to 100k.

Deterministic for a given seed and model. Titles are unique after normalisation (rag.corpus.parse uses them as
paper ids), so every line is one distinct paper.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

_START = "\x02"  # sentence / title start state of the chains
_SYLLABLES = (
    "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu "
    "ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu gra tri neo syn morph flux "
    "tron gen net lex dyn cor vex plan"
).split()


def _real_papers():
    from rag.corpus.parse import load_corpus
    from rag.errors import CorpusError
    from rag.settings import default_corpus

    root = default_corpus()
    if root is None:
        raise CorpusError("synthetic papers are learned from the vendored data/corpus, which is not here: "
                          "run from a checkout of the repository")
    return load_corpus([root]).papers


class _Chain:
    """A word-bigram chain: successors of each word kept with repetition (sampling = frequency)."""

    def __init__(self, texts: list[str]):
        nxt: dict[str, list[str]] = defaultdict(list)
        for text in texts:
            prev = _START
            for word in text.split():
                nxt[prev].append(word)
                prev = _START if word.endswith((".", "?", "!")) else word
            nxt[prev].append(_START)  # end of text
        self.next = {k: tuple(v) for k, v in nxt.items()}


class TextModel:
    """What the synthetic papers are sampled from (fitted once on the real corpus)."""

    def __init__(self, papers):
        self.abstracts = _Chain([p.abstract for p in papers])
        self.titles = _Chain([p.title for p in papers])
        self.abstract_lengths = sorted(len(p.abstract.split()) for p in papers)
        self.title_lengths = sorted(len(p.title.split()) for p in papers)
        counts = Counter(w.strip(".,;:()[]\"'").lower() for p in papers for w in p.abstract.split())
        self.by_rank = [w for w, _ in counts.most_common() if w.isalpha()]
        self.real_words = len(self.by_rank)

    @classmethod
    @lru_cache(maxsize=1)
    def from_corpus(cls) -> TextModel:
        return cls(_real_papers())

    def describe(self) -> dict:
        return {"real_papers_words": sum(self.abstract_lengths), "real_vocabulary": self.real_words,
                "abstract_words_median": self.abstract_lengths[len(self.abstract_lengths) // 2],
                "title_words_median": self.title_lengths[len(self.title_lengths) // 2]}


def _pseudo_word(rank: int) -> str:
    """A pronounceable word for a Zipf rank beyond the real vocabulary (distinct per rank)."""
    parts, n = [], rank
    while True:
        n, d = divmod(n, len(_SYLLABLES))
        parts.append(_SYLLABLES[d])
        if n == 0:
            break
    return "".join(parts)


def _zipf(rng: random.Random, a: float) -> int:
    """A Zipf(a) rank >= 1 (a > 1), by rejection (Devroye), using the Python rng so runs are reproducible."""
    am1, b = a - 1.0, 2.0 ** (a - 1.0)
    while True:
        u, v = 1.0 - rng.random(), rng.random()
        x = int(u ** (-1.0 / am1))
        t = (1.0 + 1.0 / x) ** am1
        if v * x * (t - 1.0) / (b - 1.0) <= t / b:
            return x


class _Sampler:
    def __init__(self, model: TextModel, rng: random.Random, rare_rate: float, zipf_a: float):
        self.m, self.rng, self.rare_rate, self.zipf_a = model, rng, rare_rate, zipf_a

    def rare(self) -> str:
        rank = _zipf(self.rng, self.zipf_a)
        return self.m.by_rank[rank - 1] if rank <= self.m.real_words else _pseudo_word(rank)

    def text(self, chain: _Chain, target: int, title: bool = False) -> str:
        rng, nxt, out = self.rng, chain.next, []
        prev = _START
        while True:
            word = rng.choice(nxt.get(prev) or nxt[_START])
            if word == _START:  # the chain ended a text: go on with a new sentence until long enough
                if len(out) >= target:
                    break
                prev = _START
                continue
            if rng.random() < self.rare_rate:
                tail = word[len(word.rstrip(".,;:")):]
                word = self.rare() + tail
                if title:
                    word = word.capitalize()
            out.append(word)
            sentence_end = word.endswith((".", "?", "!"))
            if len(out) >= target and (sentence_end or title or len(out) >= target + 40):
                break
            prev = _START if sentence_end else word
        text = " ".join(out)
        if title:
            return text.rstrip(".")
        return text if text.endswith((".", "?", "!")) else text.rstrip(",;:") + "."

    def length(self, lengths: list[int]) -> int:
        return lengths[int(self.rng.random() * len(lengths))]


def synthetic_papers(n: int, seed: int = 0, rare_rate: float = 0.05, zipf_a: float = 1.2, start: int = 0,
                     model: TextModel | None = None):
    """`n` papers as arXiv-snapshot JSON objects (id, title, abstract, categories), realistic text.

    `start` numbers the ids (synth-<start>...); another `seed` gives other papers (e.g. ones to append)."""
    from rag.corpus.parse import normalise_title

    model = model or TextModel.from_corpus()
    sample = _Sampler(model, random.Random(seed), rare_rate, zipf_a)
    seen: set[str] = set()
    for i in range(start, start + n):
        while True:
            title = sample.text(model.titles, sample.length(model.title_lengths), title=True)
            key = normalise_title(title)
            if key and key not in seen:
                seen.add(key)
                break
        abstract = sample.text(model.abstracts, sample.length(model.abstract_lengths))
        yield {"id": f"synth-{i}", "title": title, "abstract": abstract, "categories": "cs.LG"}


def write_jsonl(path: Path, n: int, seed: int = 0, **kwargs) -> Path:
    with open(path, "w") as fh:
        for obj in synthetic_papers(n, seed, **kwargs):
            fh.write(json.dumps(obj) + "\n")
    return path

