"""The catalog: paper records, term statistics and the lexical (FTS5) index in one SQLite file,
`DATA_DIR/index.sqlite`, updated in place.

Generations: an ingest changes the catalog inside one write transaction and commits it together with a
new generation id; that commit is the publication. Readers (WAL mode) keep seeing the last committed
generation while an ingest runs, and see the new one from their next request on (`generation()` is a
one-row read, cheap enough to check per request). A crash rolls the transaction back, leaving the
previous generation intact.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rag.corpus.parse import LineDigest
from rag.errors import ConfigError, IndexCorruptError, RagError
from rag.index.layout import read_only_fs
from rag.index.lexical import expression
from rag.records import Chunk, Paper
from rag.text import content_terms

CATALOG = "index.sqlite"
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS papers (paper_id TEXT PRIMARY KEY, hash TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terms (term TEXT PRIMARY KEY, df INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, paper_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_paper ON chunks (paper_id);
CREATE VIRTUAL TABLE IF NOT EXISTS lexical USING fts5 (tokens, tokenize = 'unicode61 remove_diacritics 0');
CREATE TABLE IF NOT EXISTS lines (key TEXT PRIMARY KEY, digest TEXT NOT NULL) WITHOUT ROWID;
"""


def _corrupt(path: Path, exc: Exception) -> RagError:
    """The error for a failed SQLite call: damage (rebuilt by `rag ingest`), or a full disk or a file that
    cannot be opened here, which are not damage and are not reported as such."""
    text = str(exc).lower()
    if "disk is full" in text or "no space" in text:
        return ConfigError(f"no space left on the device holding {path.parent}: free some space (the index is not "
                           "damaged)")
    if isinstance(exc, sqlite3.OperationalError) and ("unable to open" in text or "readonly" in text):
        return ConfigError(f"cannot open the index catalog {path} ({exc}): check the data dir's permissions and "
                           "free space (the index is not damaged)")
    return IndexCorruptError(
        f"the index catalog {path} is unreadable ({exc.__class__.__name__}: {exc}): run `rag ingest` to rebuild it "
        "(vectors are reused from the cache)"
    )


def _varints(blob: bytes) -> list[int]:
    """SQLite varints (FTS5's record format for its totals and document sizes)."""
    out, i = [], 0
    while i < len(blob):
        value = 0
        for k in range(9):
            byte = blob[i]
            i += 1
            if k == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        out.append(value)
    return out


class Catalog:
    """One SQLite connection to the catalog (thread-safe behind a lock)."""

    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(self.path)
        try:
            if not create and read_only_fs(self.path):
                # a read-only file system: nobody can write the file, so no locks or WAL index are needed
                self._db = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True, timeout=30,
                                           check_same_thread=False, isolation_level=None)
            else:
                self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self._db.executescript(_SCHEMA)
            self._db.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise _corrupt(self.path, exc) from None
        self._lock = threading.RLock()
        self._vocab = False

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: Iterable = ()) -> list:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise _corrupt(self.path, exc) from None

    # -- reading -------------------------------------------------------------------------------

    def meta(self) -> dict:
        """Every meta value (JSON-decoded), {} for a catalog nothing was ever published to."""
        return {k: json.loads(v) for k, v in self._query("SELECT key, value FROM meta")}

    def generation(self) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = 'generation'")
        return json.loads(rows[0][0]) if rows else None

    def paper(self, paper_id: str) -> Paper | None:
        rows = self._query("SELECT record FROM papers WHERE paper_id = ?", (paper_id,))
        return Paper.from_dict(json.loads(rows[0][0])) if rows else None

    def papers(self) -> list[Paper]:
        return [Paper.from_dict(json.loads(r)) for (r,) in self._query("SELECT record FROM papers ORDER BY rowid")]

    def paper_hashes(self) -> dict[str, str]:
        return dict(self._query("SELECT paper_id, hash FROM papers"))

    def paper_sources(self, paper_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """paper_id -> the corpus files it is listed in, for these papers (those in the catalog)."""
        ids = list(paper_ids)
        out = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            sql = (f"SELECT paper_id, json_extract(record, '$.sources') FROM papers WHERE paper_id IN "
                   f"({','.join('?' * len(part))})")
            out.update({pid: tuple(json.loads(sources or "[]")) for pid, sources in self._query(sql, part)})
        return out

    def chunk_ids(self, paper_ids: Iterable[str]) -> dict[str, list[str]]:
        """paper_id -> its chunks' ids, for these papers (those in the catalog)."""
        ids = list(paper_ids)
        out: dict[str, list[str]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            sql = f"SELECT paper_id, chunk_id FROM chunks WHERE paper_id IN ({','.join('?' * len(part))})"
            for pid, chunk_id in self._query(sql, part):
                out.setdefault(pid, []).append(chunk_id)
        return out

    def all_chunk_ids(self) -> list[str]:
        """Every published chunk id, in the order they were added."""
        return [r[0] for r in self._query("SELECT chunk_id FROM chunks ORDER BY id")]

    def all_paper_ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT paper_id FROM papers ORDER BY rowid")]

    def published_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of `ids` that are published chunk or paper ids."""
        ids = list(ids)
        out: set[str] = set()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            out.update(r[0] for r in self._query(f"SELECT chunk_id FROM chunks WHERE chunk_id IN ({marks}) "
                                                 f"UNION SELECT paper_id FROM papers WHERE paper_id IN ({marks})",
                                                 part + part))
        return out

    def published_chunks(self, chunk_ids: list[str]) -> set[str]:
        """The subset of `chunk_ids` in the published generation (a reader skips vectors an update wrote
        before publishing, or left for deletion after it)."""
        if not chunk_ids:
            return set()
        marks = ",".join("?" * len(chunk_ids))
        return {r[0] for r in self._query(f"SELECT chunk_id FROM chunks WHERE chunk_id IN ({marks})", chunk_ids)}

    def snapshot(self) -> tuple[dict, dict]:
        """(metadata, counts of papers, chunks and lexical rows) read in one transaction: the same generation."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    meta = {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
                    counts = {"papers": self._db.execute("SELECT count(*) FROM papers").fetchone()[0],
                              "chunks": self._db.execute("SELECT count(*) FROM chunks").fetchone()[0],
                              "lexical": self._db.execute("SELECT count(*) FROM lexical").fetchone()[0]}
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise _corrupt(self.path, exc) from None
        return meta, counts

    def scanned_lines(self) -> dict[str, LineDigest]:
        """The corpus lines parsed by earlier ingests (key per rag.corpus.parse.LINE_KEYS -> digest), so that an ingest of a
        large JSONL parses only its new lines."""
        try:
            rows = self._query("SELECT key, digest FROM lines")
            # map() with the tuple constructor: 2x a comprehension calling loads() (300k rows at 300k papers)
            return dict(zip([key for key, _ in rows], map(LineDigest._make, map(str.split, [d for _, d in rows]))))
        except IndexCorruptError:
            raise
        except (TypeError, ValueError):
            return {}  # an unexpected row: forget them all (they are only a cache)

    def count_papers(self) -> int:
        return self._query("SELECT count(*) FROM papers")[0][0]

    def count_chunks(self) -> int:
        return self._query("SELECT count(*) FROM chunks")[0][0]

    def count_lexical(self) -> int:
        return self._query("SELECT count(*) FROM lexical")[0][0]

    def df(self, term: str) -> int:
        rows = self._query("SELECT df FROM terms WHERE term = ?", (term,))
        return rows[0][0] if rows else 0

    def term_rows(self, term: str) -> int:
        """Lexical rows (chunks) containing the token `term` (FTS5's own posting statistics)."""
        with self._lock:
            if not self._vocab:
                # a view of the FTS5 index in the connection's temp schema: nothing is written to the file
                self._query("CREATE VIRTUAL TABLE IF NOT EXISTS temp.lexical_vocab USING fts5vocab(main, 'lexical', 'row')")
                self._vocab = True
            rows = self._query("SELECT doc FROM temp.lexical_vocab WHERE term = ?", (term,))
        return rows[0][0] if rows else 0

    def lexical(self, match: str, n: int) -> list[tuple[str, float]]:
        """(chunk_id, BM25 score) for an FTS5 MATCH expression, best first (scores positive)."""
        sql = ("SELECT c.chunk_id, -bm25(lexical) FROM lexical JOIN chunks c ON c.id = lexical.rowid "
               "WHERE lexical MATCH ? ORDER BY bm25(lexical) LIMIT ?")
        return [(cid, float(score)) for cid, score in self._query(sql, (match, n))]

    def lexical_candidates(self, terms: list[str], n: int) -> list[tuple[str, float, str, int, set[str]]]:
        """The `n` best rows for an OR of `terms`: (chunk_id, BM25 score over `terms`, lexical document, length
        in tokens, `terms`), for rag.index.lexical.bm25_scores to add the other terms of the query."""
        sql = ("WITH top AS (SELECT rowid AS id, -bm25(lexical) AS score FROM lexical WHERE lexical MATCH ? "
               "ORDER BY bm25(lexical) LIMIT ?) "
               "SELECT c.chunk_id, top.score, l.tokens, d.sz FROM top JOIN lexical l ON l.rowid = top.id "
               "JOIN lexical_docsize d ON d.id = top.id JOIN chunks c ON c.id = top.id")
        found_by = set(terms)
        return [(cid, float(score), doc, _varints(size)[0], found_by)
                for cid, score, doc, size in self._query(sql, (expression(terms), n))]

    def lexical_totals(self) -> tuple[int, int]:
        """(rows, tokens) of the lexical index: FTS5's own totals (its "averages" record), which bm25() uses."""
        rows = self._query("SELECT block FROM lexical_data WHERE id = 1")
        if not rows:
            return 0, 0
        values = _varints(rows[0][0])
        return values[0], values[1]

    def integrity(self) -> str:
        """SQLite's quick_check ("ok" when the file is sound)."""
        return "; ".join(r[0] for r in self._query("PRAGMA quick_check"))

    # -- writing (one transaction = one generation) ---------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator["Writer"]:
        """A write transaction: committed (published) when the block ends, rolled back on an error."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise _corrupt(self.path, exc) from None
            try:
                yield Writer(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


class Writer:
    """Changes inside a Catalog transaction."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def clear(self) -> None:
        for table in ("papers", "terms", "chunks", "lexical", "meta", "lines"):
            self._db.execute(f"DELETE FROM {table}")

    def remove_papers(self, paper_ids: Iterable[str]) -> None:
        """Drop papers with their chunks, lexical rows and term counts."""
        for pid in paper_ids:
            rows = self._db.execute("SELECT record FROM papers WHERE paper_id = ?", (pid,)).fetchall()
            if not rows:
                continue
            paper = Paper.from_dict(json.loads(rows[0][0]))
            self._change_df(set(content_terms(f"{paper.title} {paper.abstract}")), -1)
            ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE paper_id = ?", (pid,))]
            self._db.executemany("DELETE FROM lexical WHERE rowid = ?", [(i,) for i in ids])
            self._db.execute("DELETE FROM chunks WHERE paper_id = ?", (pid,))
            self._db.execute("DELETE FROM papers WHERE paper_id = ?", (pid,))

    def add_paper(self, paper: Paper, content_hash: str, chunks: list[Chunk], documents: list[str]) -> None:
        """Insert a paper (not present) with its chunks' lexical documents and its terms."""
        self._db.execute("INSERT INTO papers VALUES (?, ?, ?)", (paper.paper_id, content_hash, json.dumps(paper.to_dict())))
        for chunk, doc in zip(chunks, documents):
            cur = self._db.execute("INSERT INTO chunks (chunk_id, paper_id) VALUES (?, ?)", (chunk.chunk_id, paper.paper_id))
            self._db.execute("INSERT INTO lexical (rowid, tokens) VALUES (?, ?)", (cur.lastrowid, doc))
        self._change_df(set(content_terms(f"{paper.title} {paper.abstract}")), +1)

    def update_sources(self, paper: Paper, content_hash: str) -> None:
        """Same text, other metadata (e.g. the files a duplicated paper is listed in)."""
        self._db.execute("UPDATE papers SET record = ?, hash = ? WHERE paper_id = ?",
                         (json.dumps(paper.to_dict()), content_hash, paper.paper_id))

    def _change_df(self, terms: set[str], delta: int) -> None:
        if delta > 0:
            self._db.executemany("INSERT INTO terms VALUES (?, 1) ON CONFLICT(term) DO UPDATE SET df = df + 1",
                                 [(t,) for t in terms])
        else:
            self._db.executemany("UPDATE terms SET df = df - 1 WHERE term = ?", [(t,) for t in terms])
            self._db.execute("DELETE FROM terms WHERE df <= 0")

    def count_chunks(self) -> int:
        return self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def forget_lines(self) -> None:
        """Drop the whole line cache (made with another key scheme)."""
        self._db.execute("DELETE FROM lines")

    def remember_lines(self, lines: dict[str, LineDigest], forget: Iterable[str] = ()) -> None:
        """Record the digests of parsed corpus lines (new keys only), forgetting lines no longer in the corpus."""
        self._db.executemany("DELETE FROM lines WHERE key = ?", [(k,) for k in forget])
        self._db.executemany("INSERT OR IGNORE INTO lines VALUES (?, ?)", [(k, d.dumps()) for k, d in lines.items()])

    def set_meta(self, values: dict) -> None:
        self._db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                             [(k, json.dumps(v)) for k, v in values.items()])
