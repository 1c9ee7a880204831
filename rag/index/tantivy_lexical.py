"""The lexical (BM25) index on tantivy: exact BM25 top-k at every corpus size, with metadata filters inside
the engine.

Why tantivy (issue 24): SQLite FTS5 scores every row a query's terms match, so above 5,000 rows
rag.index.lexical bounds the work and loses recall (top-10 overlap 0.62 with exhaustive BM25 at 100k
papers). Tantivy's block-max WAND skips blocks that cannot enter the top k and still returns the exact top k
under its BM25 score; its commits are segment-based (an update costs what changed) and many readers can
search while one writer writes.

Documents are what `rag.text.term_document` made of a chunk (the project's one tokenizer: folded, stemmed,
space-separated terms), so the `terms` field uses tantivy's built-in "whitespace" tokenizer: it splits on
whitespace only and neither lowercases nor stems again, so the index holds exactly our terms. Queries are
`content_terms` of the question, each a term query (not tokenized by tantivy), OR-ed.

The score is tantivy's BM25 (k1 1.2, b 0.75, idf log(1 + (N - n + 0.5) / (n + 0.5)), document lengths
quantized to one byte as Lucene does; `bm25_reference` in tests/test_tantivy_lexical.py and
rag/eval/bench_lexical.py recompute it exhaustively). Statistics (N, n, average length) count documents
deleted but not yet merged away, as tantivy does, so scores drift slightly between merges.

Filters (year range, categories, authors) are Must clauses scored 0, so the ranking is BM25's and a filter
restricts the candidates before the top k is taken (never a post-filter of a fixed top k).

Generations: every document carries the integer generation that added it. A reader passes the generation it
has published (`visible_through`) and the chunk ids that generation replaced or removed, whose older copies'
tantivy deletion may not be committed yet (`exclude`: copies added before `visible_through` are hidden), so
it sees one generation even while a writer has committed more. Chunk ids stay `paper_id:no` (Chroma's too):
a changed paper's new chunks have the same ids as its old ones and are told apart by generation
(`delete(ids, before=G)`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Iterable
from pathlib import Path

from rag.errors import IndexCorruptError, IndexLockedError, IndexMissingError
from rag.text import TERMS_VERSION, content_terms, fold

FORMAT = 1  # of the schema below; recorded with TERMS_VERSION in MARKER (a change means a rebuild)
MARKER = "rag_lexical.json"
WRITER_HEAP = 64_000_000  # bytes of the writer's buffer before it flushes a segment (tantivy's minimum is 15 MB)
REBUILD = "run `rag ingest` to rebuild it"


def _tantivy():
    import tantivy  # imported on first use: no native library loaded when the module is imported

    return tantivy


def _schema():
    t = _tantivy()
    sb = t.SchemaBuilder()
    # raw: one token per value, kept verbatim (ids, categories, folded author names); "basic" = no freqs needed
    sb.add_text_field("chunk_id", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("paper_id", stored=True, tokenizer_name="raw", index_option="basic")
    # BM25 needs term frequencies but not positions (no phrase queries): "freq" keeps the index smaller
    sb.add_text_field("terms", tokenizer_name="whitespace", index_option="freq")
    sb.add_integer_field("year", indexed=True, fast=True)
    sb.add_integer_field("generation", indexed=True, fast=True)
    sb.add_text_field("category", tokenizer_name="raw", index_option="basic")
    sb.add_text_field("author", tokenizer_name="raw", index_option="basic")
    return sb.build()


def author_key(name: str) -> str:
    """How author names are indexed and matched: folded (case, accents), whitespace collapsed, so
    "Yann  LeCun" and "yann lecun" are the same author."""
    return " ".join(fold(name).split())


def _damaged(folder: Path, exc: BaseException) -> IndexCorruptError:
    return IndexCorruptError(f"the lexical index {folder} is unreadable ({exc.__class__.__name__}: {exc}): {REBUILD}")


class TantivyLexical:
    """One tantivy index in a folder: many readers (any process), one writer (a lock file tantivy holds).

    Readers see the commits made up to their last `reload()`; the writer is opened on the first add or
    delete and released by `close()`. `create=True` makes an empty index when the folder holds none (a
    folder without the marker file is a half-made index and is replaced) and opens an existing one."""

    def __init__(self, folder: Path, create: bool = False, writer_heap: int = WRITER_HEAP):
        self.folder = Path(folder)
        self._heap = writer_heap
        self._writer = None
        t = _tantivy()
        marker = self.folder / MARKER
        if create and not marker.is_file():
            if self.folder.exists() and any(self.folder.iterdir()):
                if not (self.folder / ".managed.json").is_file():  # not tantivy's: never delete someone's folder
                    raise IndexCorruptError(f"{self.folder} holds files that are not a lexical index: move them "
                                            "away or choose another folder")
                shutil.rmtree(self.folder)  # a half-made index (no marker): nothing in it was published
            self.folder.mkdir(parents=True)
            self._index = t.Index(_schema(), path=str(self.folder), reuse=False)
            marker.write_text(json.dumps({"format": FORMAT, "terms_version": TERMS_VERSION}))
        else:
            if not marker.is_file():
                raise IndexMissingError(f"no lexical index in {self.folder}: run `rag ingest` to build it")
            try:
                recorded = json.loads(marker.read_text())
            except (OSError, ValueError) as exc:
                raise _damaged(self.folder, exc) from None
            if recorded.get("format") != FORMAT or recorded.get("terms_version") != TERMS_VERSION:
                raise IndexCorruptError(f"the lexical index {self.folder} was made by another version "
                                        f"({recorded}, this one writes format {FORMAT}, terms {TERMS_VERSION}): {REBUILD}")
            try:
                self._index = t.Index.open(str(self.folder))  # reads meta.json and every segment's files
            except ValueError as exc:
                raise _damaged(self.folder, exc) from None
        self._schema = self._index.schema
        # manual: a reader moves to newer commits only when it calls reload() (it decides which generation it sees)
        self._index.config_reader(reload_policy="manual")

    # -- reading -------------------------------------------------------------------------------

    def reload(self) -> None:
        """See every commit made so far (by this or another process)."""
        try:
            self._index.reload()
        except ValueError as exc:
            raise _damaged(self.folder, exc) from None

    def doc_count(self) -> int:
        """Live documents (deleted ones excluded) as of the last reload."""
        return self._index.searcher().num_docs

    def check(self) -> int:
        """Open a searcher over every segment and count documents: a cheap integrity check (it reads each
        segment's metadata, not the postings). Returns the count; raises IndexCorruptError with the fix."""
        try:
            self._index.reload()
            searcher = self._index.searcher()
            searcher.search(_tantivy().Query.all_query(), 1, count=True)
            return searcher.num_docs
        except ValueError as exc:
            raise _damaged(self.folder, exc) from None

    def clear(self) -> None:
        """Delete every document (a rebuild); effective at the next `commit()`."""
        self._w().delete_all_documents()

    def search(self, query: str, n: int, since: int | None = None, until: int | None = None,
               categories: Iterable[str] | None = None, authors: Iterable[str] | None = None,
               visible_through: int | None = None, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """(chunk_id, BM25 score) of the `n` best chunks, best first: BM25 over the query's content terms OR-ed,
        among chunks matching every filter given (year within since..until inclusive, any of `categories`,
        any of `authors`), added by a generation <= `visible_through`, and not in `exclude`."""
        t = _tantivy()
        terms = list(dict.fromkeys(content_terms(query)))
        if not terms or n <= 0:
            return []
        should = [(t.Occur.Should, t.Query.term_query(self._schema, "terms", term, index_option="freq"))
                  for term in terms]
        text = should[0][1] if len(should) == 1 else t.Query.boolean_query(should)
        filters = self._filters(since, until, categories, authors, visible_through)
        negative = [(t.Occur.MustNot, self._copies(exclude, visible_through))] if exclude else []
        if filters or negative:
            # scored 0: the filters decide which chunks compete, BM25 alone decides the order
            clauses = [(t.Occur.Must, t.Query.const_score_query(f, 0.0)) for f in filters]
            text = t.Query.boolean_query([(t.Occur.Must, text), *clauses, *negative])
        searcher = self._index.searcher()
        hits = searcher.search(text, n, count=False).hits
        return [(searcher.doc(address)["chunk_id"][0], float(score)) for score, address in hits]

    def _copies(self, chunk_ids: Collection[str], before: int | None):
        """The documents of these chunk ids (only those added by a generation < `before`, when given)."""
        t = _tantivy()
        ids = t.Query.term_set_query(self._schema, "chunk_id", list(chunk_ids))
        if before is None:
            return ids
        older = t.Query.range_query(self._schema, "generation", t.FieldType.Integer, None, before - 1)
        return t.Query.boolean_query([(t.Occur.Must, ids), (t.Occur.Must, older)])

    def _filters(self, since, until, categories, authors, visible_through) -> list:
        t = _tantivy()
        out = []
        if since is not None or until is not None:
            out.append(t.Query.range_query(self._schema, "year", t.FieldType.Integer, since, until))
        if categories:
            out.append(t.Query.term_set_query(self._schema, "category", list(categories)))
        if authors:
            out.append(t.Query.term_set_query(self._schema, "author", [author_key(a) for a in authors]))
        if visible_through is not None:
            out.append(t.Query.range_query(self._schema, "generation", t.FieldType.Integer, None, visible_through))
        return out

    # -- writing (one writer) ------------------------------------------------------------------

    def _w(self):
        if self._writer is None:
            try:
                # one indexing thread: the machine's other core serves queries; the heap bounds memory
                self._writer = self._index.writer(heap_size=self._heap, num_threads=1)
            except ValueError as exc:
                if "LockBusy" in str(exc):
                    raise IndexLockedError(f"another process is writing the lexical index {self.folder} "
                                           "(a `rag ingest` running?): wait for it to finish, then retry") from None
                raise _damaged(self.folder, exc) from None
        return self._writer

    def add(self, chunk_id: str, paper_id: str, text_terms: str, year: int | None = None,
            categories: Iterable[str] = (), authors: Iterable[str] = (), generation: int = 0) -> None:
        """Add a chunk (its `rag.text.term_document`); visible after `commit()`. Adding an existing chunk_id
        adds a second copy: delete it first."""
        doc = _tantivy().Document(chunk_id=chunk_id, paper_id=paper_id, terms=text_terms, generation=generation)
        if year is not None:
            doc.add_integer("year", int(year))
        for c in categories:
            doc.add_text("category", c)
        for a in authors:
            doc.add_text("author", author_key(a))
        self._w().add_document(doc)

    def delete(self, chunk_ids: Iterable[str], before: int | None = None) -> None:
        """Delete chunks by id (only their copies added by a generation < `before`, when given: a changed
        paper's old chunks, not its new ones); effective at the next `commit()`."""
        writer = self._w()
        ids = list(chunk_ids)
        if before is not None:
            if ids:
                writer.delete_documents_by_query(self._copies(ids, before))
            return
        for cid in ids:
            writer.delete_documents_by_term("chunk_id", cid)

    def delete_after(self, generation: int) -> None:
        """Delete every chunk added by a generation > `generation` (an unpublished ingest's leftovers)."""
        t = _tantivy()
        query = t.Query.range_query(self._schema, "generation", t.FieldType.Integer, generation + 1, None)
        self._w().delete_documents_by_query(query)

    def commit(self) -> None:
        """Make the adds and deletes since the last commit durable and visible to readers that reload."""
        if self._writer is not None:
            self._writer.commit()

    def rollback(self) -> None:
        """Drop the adds and deletes since the last commit."""
        if self._writer is not None:
            self._writer.rollback()

    def close(self) -> None:
        """Finish background merges and release the writer lock (uncommitted changes are dropped)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.rollback()
            writer.wait_merging_threads()  # consumes the writer: the lock is released here


def check_index(folder: Path) -> int:
    """For `rag doctor`: the number of live chunks in the lexical index in `folder`; IndexMissingError or
    IndexCorruptError (each saying to run `rag ingest`) when it is missing or damaged."""
    return TantivyLexical(folder).check()
