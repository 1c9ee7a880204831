"""`rag bench --parts lexical-scale`: the tantivy lexical index (rag.index.tantivy_lexical) at 10k-300k papers.

    rag bench --parts lexical-scale [--sizes 10000,100000,300000] [--no-fts5]

At each size: synthetic chunks (rag.eval.synth papers, cut into title-carrying word windows), the tantivy
index built cold (time, disk), then >= 200 queries (dev-set questions and synthetic title fragments) run in a
process of their own (p50/p95, peak RSS), their top 10 compared with an exhaustive BM25 (`Bm25Reference`:
numpy, tantivy's formula), add 10 / delete 10 chunks + commit; and, unless --no-fts5, today's FTS5 bounded
search over the same chunks (its overlap with exhaustive FTS5 BM25, p50). Writes eval/bench/lexical_scale.json.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rag.eval.timing import print_table, save_json, summary

K1, B = 1.2, 0.75  # tantivy's BM25 constants (src/query/bm25.rs)
CHUNK_WORDS, CHUNK_STEP = 100, 80  # word windows: ~2.4 chunks per synthetic paper, like the 160-token chunker


def fieldnorm_table() -> np.ndarray:
    """Tantivy's FIELD_NORMS_TABLE (src/fieldnorm/code.rs): the length each of the 256 one-byte codes stands
    for. It is Lucene's SmallFloat.byte4ToInt with 24 exact values: below 24 the code is the length; above,
    4 mantissa bits with an exponent. Written out here because tantivy-py does not expose it."""
    def decode(code: int) -> int:
        if code < 24:
            return code
        j = code - 24
        bits, shift = j & 7, (j >> 3) - 1
        return 24 + (bits if shift < 0 else (bits | 8) << shift)

    return np.array([decode(c) for c in range(256)], dtype=np.int64)


_TABLE = fieldnorm_table()
_TABLE_LIST = _TABLE.tolist()


def fieldnorm_id(length: int) -> int:
    """The code tantivy stores for a field of `length` tokens: the largest table entry <= length."""
    return bisect.bisect_right(_TABLE_LIST, length) - 1


class Bm25Reference:
    """Exhaustive BM25 exactly as tantivy scores it (float32; idf log(1 + (N - n + 0.5) / (n + 0.5)); k1 1.2,
    b 0.75; lengths quantized by `fieldnorm_id`; average length from the exact token total), over every
    document: a term-major sparse matrix (CSR built with numpy; no scipy) restricted to `vocabulary` when
    given (the terms of the queries to be scored), so that it stays small at 700k chunks.

    Hand-written because no library scores with tantivy's quantized lengths; it exists to check tantivy."""

    def __init__(self, documents: Iterable[str], vocabulary: set[str] | None = None):
        term_ids: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        codes: list[int] = []
        total = 0
        for d, doc in enumerate(documents):
            terms = doc.split()
            total += len(terms)
            codes.append(fieldnorm_id(len(terms)))
            for term in terms:
                if vocabulary is None or term in vocabulary:
                    rows.append(term_ids.setdefault(term, len(term_ids)))
                    cols.append(d)
        self.n_docs, self.total_tokens, self.term_ids = len(codes), total, term_ids
        self.codes = np.array(codes, dtype=np.uint8)
        # (term, doc) pairs sorted and counted: each run is one posting with its term frequency
        keys = np.array(rows, dtype=np.int64) * max(1, self.n_docs) + np.array(cols, dtype=np.int64)
        keys, tf = np.unique(keys, return_counts=True)
        term_of = keys // max(1, self.n_docs)
        self.docs = (keys % max(1, self.n_docs)).astype(np.int32)
        self.tf = tf.astype(np.float32)
        self.indptr = np.searchsorted(term_of, np.arange(len(term_ids) + 1)).astype(np.int64)

    def scores(self, terms: Sequence[str]) -> np.ndarray:
        """BM25 of every document for the OR of `terms` (distinct), float32."""
        n = np.float32(self.n_docs)
        avg = np.float32(self.total_tokens) / n
        cache = np.float32(K1) * (np.float32(1 - B) + np.float32(B) * _TABLE.astype(np.float32) / avg)
        out = np.zeros(self.n_docs, dtype=np.float32)
        for term in dict.fromkeys(terms):
            t = self.term_ids.get(term)
            if t is None:
                continue
            lo, hi = self.indptr[t], self.indptr[t + 1]
            docs, tf = self.docs[lo:hi], self.tf[lo:hi]
            df = np.float32(hi - lo)
            idf = np.log(np.float32(1) + (n - df + np.float32(0.5)) / (df + np.float32(0.5)), dtype=np.float32)
            out[docs] += idf * np.float32(1 + K1) * (tf / (tf + cache[self.codes[docs]]))
        return out

    def top(self, terms: Sequence[str], k: int) -> list[tuple[int, float]]:
        """(document index, score) of the k best documents with a positive score, best first."""
        s = self.scores(terms)
        k = min(k, int((s > 0).sum()))
        if k == 0:
            return []
        best = np.argpartition(-s, k - 1)[:k]
        best = best[np.argsort(-s[best], kind="stable")]
        return [(int(i), float(s[i])) for i in best]


def overlap(got: Sequence[str], reference: np.ndarray, ids: dict[str, int], k: int = 10) -> tuple[float, float]:
    """(strict, ties counted) share of the reference top k found in `got`'s top k. Ties: a returned document
    whose reference score equals the k-th best (within float32 noise) counts as a match."""
    order = np.argsort(-reference, kind="stable")[:k]
    want = {int(i) for i in order if reference[i] > 0}
    if not want:
        return 1.0, 1.0
    kth = min(float(reference[i]) for i in want)
    got_idx = [ids[c] for c in got[:k]]
    strict = len(want & set(got_idx)) / len(want)
    tied = sum(1 for i in got_idx if i in want or reference[i] >= kth - 1e-5 * max(1.0, kth))
    return strict, min(1.0, tied / len(want))


# ------------------------------------------------------------------------------------- synthetic data

def synthetic_chunks(n_papers: int, seed: int = 0, start: int = 0) -> list[tuple[str, str, str, int, str]]:
    """(chunk_id, paper_id, term document, year, category) of `n_papers` synthetic papers. Chunks are word
    windows of the title plus abstract (not llama-index's splitter, which costs ~2.4 ms a paper: 12 min at
    300k); years and categories are drawn at random per paper (synth.py gives neither)."""
    from rag.eval.synth import synthetic_papers
    from rag.text import term_document

    rng = random.Random(seed + 1)
    categories = ("cs.LG", "cs.CV", "cs.CL", "cs.AI", "stat.ML", "cs.RO")
    out = []
    for p in synthetic_papers(n_papers, seed=seed, start=start):
        words = p["abstract"].split()
        year, category = rng.randint(2010, 2025), rng.choice(categories)
        for no, lo in enumerate(range(0, max(1, len(words) - CHUNK_WORDS + CHUNK_STEP), CHUNK_STEP)):
            text = p["title"] + "\n" + " ".join(words[lo:lo + CHUNK_WORDS])
            out.append((f"{p['id']}:{no}", p["id"], term_document(text), year, category))
    return out


def bench_queries(titles: Sequence[str], n_questions: int = 150, n_fragments: int = 60, seed: int = 0) -> list[str]:
    """Dev-set questions spread over the file, and 2-4 word fragments of synthetic titles (keyword queries)."""
    path = Path(__file__).resolve().parents[2] / "eval" / "datasets" / "dev.jsonl"
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
    step = max(1, len(questions) // n_questions)
    rng = random.Random(seed)
    fragments = []
    for title in rng.sample(list(titles), n_fragments):
        words = title.split()
        k = min(len(words), rng.randint(2, 4))
        lo = rng.randint(0, len(words) - k)
        fragments.append(" ".join(words[lo:lo + k]))
    return questions[::step][:n_questions] + fragments


def _disk_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 1)


# ------------------------------------------------------------------------------------- the query process

def query_worker(folder: str, queries: list[str], n: int = 10) -> dict:
    """Open the index, one warm-up round, then time every query (and a year-filtered variant); the top n of
    each, and this process's peak RSS (a process of its own, so the figure is the reader's alone)."""
    from rag.index.tantivy_lexical import TantivyLexical

    t = time.perf_counter()
    lex = TantivyLexical(Path(folder))
    lex.reload()
    open_s = time.perf_counter() - t
    for q in queries:
        lex.search(q, n)
    ms, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append([c for c, _ in lex.search(q, n)])
        ms.append((time.perf_counter() - t) * 1000)
    filtered = []
    for q in queries:
        t = time.perf_counter()
        lex.search(q, n, since=2020, until=2021, categories=["cs.CV"])
        filtered.append((time.perf_counter() - t) * 1000)
    return {"open_s": round(open_s, 3), "unfiltered": summary(ms), "filtered": summary(filtered), "results": results,
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would carry the forking parent's peak over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _run_worker(folder: Path, queries: list[str]) -> dict:
    code = ("import json,sys; from rag.eval.bench_lexical import query_worker; "
            "print(json.dumps(query_worker(sys.argv[1], json.loads(sys.stdin.read()))))")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], input=json.dumps(queries), capture_output=True,
                       text=True, env=os.environ, check=False)
    if r.returncode:
        raise SystemExit(f"lexical query worker failed: {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- FTS5, for comparison

def _fts5(folder: Path, chunks, papers: dict[str, tuple[str, str]], queries: list[str],
          reference_top: list[list[str]]) -> dict:
    """Today's lexical side over the same chunks: an FTS5 catalog built with rag.index.catalog's own writer,
    searched the way rag.index.reader.Index.lexical does (row budget, rescoring); its top 10 against
    exhaustive FTS5 BM25 and against the tantivy-formula reference (different idf and exact lengths, so
    that one is not expected to reach 1)."""
    from rag.index import lexical
    from rag.index.catalog import Catalog
    from rag.records import Chunk, Paper

    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(folder / "index.sqlite", create=True)
    by_paper: dict[str, list] = {}
    for c in chunks:
        by_paper.setdefault(c[1], []).append(c)
    with catalog.transaction() as w:
        for pid, rows in by_paper.items():
            title, abstract = papers[pid]
            paper = Paper(paper_id=pid, title=title, abstract=abstract)
            objs = [Chunk(chunk_id=r[0], paper_id=pid, title=title, chunk_no=i, text="", body="")
                    for i, r in enumerate(rows)]
            w.add_paper(paper, "", objs, [r[2] for r in rows])
    build_s = time.perf_counter() - t

    def bounded(q: str, n: int = 10) -> list[str]:  # what rag.index.reader.Index.lexical runs, on a bare catalog
        return [c for c, _ in lexical.bounded_search(catalog, q, n)]

    for q in queries[:20]:
        bounded(q)
    ms, vs_fts, vs_ref = [], [], []
    for q, ref in zip(queries, reference_top):
        t = time.perf_counter()
        got = bounded(q)
        ms.append((time.perf_counter() - t) * 1000)
        match = lexical.match_expression(q)
        exact = [c for c, _ in catalog.lexical(match, 10)] if match else []
        vs_fts.append(len(set(exact) & set(got)) / len(exact) if exact else 1.0)
        vs_ref.append(len(set(ref) & set(got)) / len(ref) if ref else 1.0)
    catalog.close()
    return {"build_s": round(build_s, 1), "disk_mb": _disk_mb(folder), **summary(ms),
            "overlap_at_10_vs_exhaustive_fts5": round(statistics.mean(vs_fts), 3),
            "overlap_at_10_vs_tantivy_reference": round(statistics.mean(vs_ref), 3)}


# ------------------------------------------------------------------------------------- the part

def bench_lexical_scale(out: Path, sizes: list[int], fts5: bool = True, workdir: Path | None = None) -> dict:
    from rag.eval.synth import synthetic_papers
    from rag.index.tantivy_lexical import TantivyLexical
    from rag.text import content_terms

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench-lexical-"))
    top = max(sizes)
    t = time.perf_counter()
    chunks = synthetic_chunks(top)  # the papers of a smaller size are a prefix of a larger one (same seed)
    papers = {p["id"]: (p["title"], p["abstract"]) for p in synthetic_papers(top)} if fts5 else {}
    print(f"  {len(chunks):,} synthetic chunks of {top:,} papers in {time.perf_counter() - t:.0f} s", flush=True)
    queries = bench_queries([p["title"] for p in synthetic_papers(min(top, 5000))])
    vocabulary = {term for q in queries for term in content_terms(q)}
    extra = synthetic_chunks(10, seed=top + 1, start=top)
    try:  # sizes measured by an earlier run are kept (a later run at another size adds to them)
        previous = {r["papers"]: r for r in json.loads((out / "lexical_scale.json").read_text())["rows"]}
    except (OSError, ValueError, KeyError):
        previous = {}
    rows = []
    for n in sorted(sizes):
        part = [c for c in chunks if int(c[1].split("-")[1]) < n]
        folder = root / f"tantivy-{n}"
        row: dict = {"papers": n, "chunks": len(part), "queries": len(queries)}
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(root / f"fts5-{n}", ignore_errors=True)
        t, cpu = time.perf_counter(), time.process_time()
        lex = TantivyLexical(folder, create=True, writer_heap=128_000_000)
        for chunk_id, paper_id, doc, year, category in part:
            lex.add(chunk_id, paper_id, doc, year=year, categories=(category,))
        lex.commit()
        lex.close()  # waits for merges: the build is done when the index is at rest
        row["build_s"], row["build_cpu_s"] = round(time.perf_counter() - t, 1), round(time.process_time() - cpu, 1)
        row["disk_mb"] = _disk_mb(folder)
        print(f"  n={n:,}: built in {row['build_s']} s, {row['disk_mb']} MB", flush=True)

        t = time.perf_counter()
        ref = Bm25Reference((c[2] for c in part), vocabulary)
        row["reference_build_s"] = round(time.perf_counter() - t, 1)
        ids = {c[0]: i for i, c in enumerate(part)}
        worker = _run_worker(folder, queries)
        strict, tied, ref_ms, ref_top = [], [], [], []
        for q, got in zip(queries, worker["results"]):
            t = time.perf_counter()
            scores = ref.scores(content_terms(q))
            ref_ms.append((time.perf_counter() - t) * 1000)
            s, ti = overlap(got, scores, ids)
            strict.append(s)
            tied.append(ti)
            ref_top.append([part[i][0] for i, _ in ref.top(content_terms(q), 10)])
        row |= {"open_s": worker["open_s"], "p50_ms": worker["unfiltered"]["p50_ms"],
                "p95_ms": worker["unfiltered"]["p95_ms"], "filtered_p50_ms": worker["filtered"]["p50_ms"],
                "filtered_p95_ms": worker["filtered"]["p95_ms"],
                "overlap_at_10": round(statistics.mean(strict), 4), "overlap_at_10_ties": round(statistics.mean(tied), 4),
                "queries_below_1": sum(1 for x in tied if x < 1), "reader_peak_rss_mb": worker["peak_rss_mb"],
                "reference_p50_ms": round(statistics.median(ref_ms), 1)}
        del ref

        lex = TantivyLexical(folder)
        t = time.perf_counter()
        lex._w()
        row["writer_open_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        for chunk_id, paper_id, doc, year, category in extra:
            lex.add(chunk_id, paper_id, doc, year=year, categories=(category,))
        lex.commit()
        row["add_10_commit_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        lex.delete(c[0] for c in extra)
        lex.commit()
        row["delete_10_commit_s"] = round(time.perf_counter() - t, 3)
        lex.close()
        if fts5:
            row["fts5"] = _fts5(root / f"fts5-{n}", part, papers, queries, ref_top)
            print(f"  n={n:,}: fts5 {row['fts5']}", flush=True)
        row["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(f"  n={n:,}: {row}", flush=True)
        rows.append(row)
        save_json(out, "lexical_scale", _data(rows, previous))
    data = _data(rows, previous)
    _print(data)
    save_json(out, "lexical_scale", data)
    return data


def _data(rows: list[dict], previous: dict | None = None) -> dict:
    import platform

    import tantivy

    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "tantivy": getattr(tantivy, "__version__", "0.27"), "load_avg_at_end": os.getloadavg(),
                        "note": "shared 2-core machine (other sessions' work ran meanwhile): timings are upper bounds"},
            "chunker": f"word windows of {CHUNK_WORDS} words every {CHUNK_STEP}, title carried (not llama-index's)",
            "rows": sorted({**(previous or {}), **{r["papers"]: r for r in rows}}.values(), key=lambda r: r["papers"])}


def _print(data: dict) -> None:
    table = []
    for r in data["rows"]:
        f = r.get("fts5", {})
        table.append({"papers": f"{r['papers']:,}", "chunks": f"{r['chunks']:,}", "build_s": r["build_s"],
                      "disk_mb": r["disk_mb"], "p50/p95_ms": f"{r['p50_ms']}/{r['p95_ms']}",
                      "filtered_p50/p95_ms": f"{r['filtered_p50_ms']}/{r['filtered_p95_ms']}",
                      "overlap@10 (ties)": f"{r['overlap_at_10']} ({r['overlap_at_10_ties']})",
                      "add10/del10_s": f"{r['add_10_commit_s']}/{r['delete_10_commit_s']}",
                      "reader_rss_mb": r["reader_peak_rss_mb"],
                      "fts5 bounded p50_ms, overlap@10 vs fts5 exhaustive": (f"{f['p50_ms']}, {f['overlap_at_10_vs_exhaustive_fts5']}"
                                                                          if f else "-")})
    print_table("lexical index on tantivy at scale (" + data["machine"]["note"] + ")", table)
