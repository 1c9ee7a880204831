"""The seal: what an ingest published, recorded so that damage is detected and never served.

`DATA_DIR/index.seal` (JSON) holds, for every file of the embedded Chroma store and for the catalog, its size,
mtime and CRC-32, and a few canary queries: stored vectors with the ids the store returned for them at
publication. A reader trusts files whose size and mtime are as recorded (a stat, no read); a changed file is
summed, and if its content changed too (an embedded Chroma client rewrites its HNSW files when it loads
them, so readers change them legitimately) the store is probed in a child process: SQLite's quick_check of
`chroma.sqlite3`, then the canaries, whose results must be the recorded ones. A probe that passes records
the files as they are now; any mismatch is a damaged store (`rag ingest` sets it aside and rebuilds it from
cached vectors). The child process keeps a damaged native file that crashes the library from killing the
reader.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

from rag.errors import RagError

log = logging.getLogger(__name__)

SEAL = "index.seal"
CATALOG_FILE = "index.sqlite"
CANARIES = 6  # query vectors per collection, spread over the order the papers were stored in
CANARY_TOP = 5  # the results compared (of CANARY_FETCH fetched, after dropping vectors not published)
CANARY_FETCH = 20
SIM_TOLERANCE = 0.02  # per rank: approximate search among near-duplicates; damage moves far more
PROBE_TIMEOUT_S = 300


def crc32(path: Path) -> int:
    """CRC-32 of a file, read in 1 MiB blocks (zlib runs at GB/s: the cheap checksum)."""
    value = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            value = zlib.crc32(block, value)
    return value


def _store_files(data_dir: Path) -> dict[str, Path]:
    chroma = data_dir / "chroma"
    if not chroma.is_dir():
        return {}
    return {str(p.relative_to(data_dir)): p for p in sorted(chroma.rglob("*"))
            if p.is_file() and not p.name.endswith(("-journal", "-wal", "-shm"))}


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _record(path: Path, summed: bool = True) -> dict:
    size, mtime = _stat(path) or [None, None]
    return {"size": size, "mtime": mtime, "crc": crc32(path) if summed and size is not None else None}


def read_seal(data_dir: Path) -> dict | None:
    try:
        seal = json.loads((Path(data_dir) / SEAL).read_text())
        return seal if isinstance(seal, dict) and isinstance(seal.get("files"), dict) else None
    except (OSError, ValueError):
        return None


def _write_seal(data_dir: Path, seal: dict) -> None:
    from rag.index.layout import atomic_write

    try:
        atomic_write(Path(data_dir) / SEAL, json.dumps(seal))
    except OSError as exc:  # a read-only data dir: the check runs again next time
        log.debug("cannot record the seal: %s", exc)


# ------------------------------------------------------------------------------ writing (ingest)

def _pick(ids: list[str], n: int) -> list[str]:
    if len(ids) <= n:
        return list(ids)
    return [ids[round(i * (len(ids) - 1) / (n - 1))] for i in range(n)]


def _b64(vector) -> str:
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()


def canaries(store, chunk_ids: list[str], paper_ids: list[str]) -> dict:
    """Canary queries (their expected results are filled in by `seal`): chunks and papers spread over the
    published ones, with their stored vectors, read from the ingest's open store."""
    out: dict[str, list] = {"chunks": [], "papers": []}
    for kind, ids in (("chunks", _pick(chunk_ids, CANARIES)), ("papers", _pick(paper_ids, CANARIES))):
        if not ids:
            continue
        vectors = store.chunks(ids, with_vectors=True) if kind == "chunks" else store.paper_vectors(ids)
        for cid in ids:
            got = vectors.get(cid)
            vec = got[1] if kind == "chunks" and got is not None else got
            if vec is not None:
                out[kind].append({"id": cid, "vector": _b64(vec)})
    out["chunks_count"], out["papers_count"] = len(chunk_ids), len(paper_ids)
    return out


def seal(data_dir: Path, canary_queries: dict | None, embedded: bool, generation: str | None = None,
         collection: str = "papers") -> None:
    """Record the published files (sizes, mtimes, CRC-32) and the canaries of `generation`, after the store is
    closed. The canaries' expected results come from a child process that loads the files as a reader will
    (queries in the writing process, right after its writes, can miss vectors its index has not taken in
    yet). `canary_queries` None: keep the recorded canaries if they are of this generation."""
    data_dir = Path(data_dir)
    previous = read_seal(data_dir) or {}
    if canary_queries is None and previous.get("generation") == generation:
        canary_queries = previous.get("canaries") or {}
    elif canary_queries and embedded:
        problem, got = _probe(data_dir, collection, canary_queries)
        if problem or got is None or got.get("sqlite") != "ok":
            log.warning("the canary queries of the new index failed (%s): it is sealed without them", problem)
            canary_queries = {}
        else:
            for kind in ("chunks", "papers"):
                answered = {h["id"]: h for h in got.get(kind) or []}
                canary_queries[kind] = [dict(q, near=answered[q["id"]]["near"], sims=answered[q["id"]]["sims"])
                                        for q in canary_queries.get(kind) or []
                                        if q["id"] in answered and answered[q["id"]]["vector_ok"]]
    files = {name: _record(p) for name, p in _store_files(data_dir).items()} if embedded else {}
    catalog = data_dir / CATALOG_FILE
    _write_seal(data_dir, {"files": files, "catalog": _record(catalog) if catalog.is_file() else None,
                           "canaries": canary_queries or {}, "generation": generation})


def remember_store_files(data_dir: Path) -> None:
    """This process loaded the store after checking it, and its client rewrote some native files: record
    their new sizes and mtimes (not summed: the next `rag doctor` sums them and runs the canaries)."""
    data_dir = Path(data_dir)
    current = read_seal(data_dir)
    if current is None:
        return
    files = {}
    for name, path in _store_files(data_dir).items():
        old = current["files"].get(name)
        files[name] = old if old and old.get("mtime") is not None and _stat(path) == [old["size"], old["mtime"]] \
            else _record(path, summed=False)
    current["files"] = files
    _write_seal(data_dir, current)


def drop_seal(data_dir: Path) -> None:
    (Path(data_dir) / SEAL).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ checking

_PROBE = r"""
import json, sqlite3, sys
path, collection = sys.argv[1], sys.argv[2]
db = sqlite3.connect(f"file:{path}/chroma.sqlite3?mode=ro", uri=True)
ok = db.execute("PRAGMA quick_check").fetchall()
db.close()
if [r[0] for r in ok] != ["ok"]:
    print(json.dumps({"sqlite": " ".join("; ".join(r[0] for r in ok).split())[:200]}))
    sys.exit(0)
import base64
import numpy as np
import chromadb
from chromadb.config import Settings
queries = json.loads(sys.stdin.read() or "{}")
client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
out = {"sqlite": "ok", "chunks": [], "papers": []}
for kind, name in (("chunks", collection), ("papers", collection + "-papers")):
    try:
        col = client.get_collection(name, embedding_function=None)
    except Exception:
        if queries.get(kind):
            raise
        continue
    if not queries.get(kind):  # no canaries recorded: a query that must not crash
        got = col.get(limit=1, include=["embeddings"])
        if got["ids"]:
            col.query(query_embeddings=[got["embeddings"][0]], n_results=min(10, col.count()))
        continue
    out[kind + "_count"] = col.count()
    if not out[kind + "_count"]:
        continue
    ids = [q["id"] for q in queries[kind]]
    stored = col.get(ids=ids, include=["embeddings"])
    have = {i: np.asarray(v, dtype=np.float32) for i, v in zip(stored["ids"], stored["embeddings"])}
    vecs = [np.frombuffer(base64.b64decode(q["vector"]), dtype=np.float32) for q in queries[kind]]
    res = col.query(query_embeddings=vecs, n_results=min(int(sys.argv[3]), col.count()), include=["distances"])
    for q, vec, near, dist in zip(queries[kind], vecs, res["ids"], res["distances"]):
        same = q["id"] in have and float(np.max(np.abs(have[q["id"]] - vec))) < 1e-4
        out[kind].append({"id": q["id"], "vector_ok": same, "near": near, "sims": [1.0 - float(d) for d in dist]})
print(json.dumps(out))
"""


def _probe(data_dir: Path, collection: str, queries: dict) -> tuple[str | None, dict | None]:
    env = os.environ | {"ANONYMIZED_TELEMETRY": "False"}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(data_dir / "chroma"), collection, str(CANARY_FETCH)],
                              input=json.dumps(queries), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              env=env)
    except subprocess.TimeoutExpired:
        return f"the vector store did not answer a test query within {PROBE_TIMEOUT_S} s", None
    if proc.returncode < 0:
        return f"the vector store's index files crashed a test query (signal {-proc.returncode})", None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["unknown error"]
        full = [ln for ln in lines if "disk is full" in ln.lower() or "no space left" in ln.lower()]
        return f"the vector store cannot be read ({(full or lines)[-1][:200]})", None
    try:
        return None, json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"the vector store's test query gave no answer ({proc.stdout[-200:]!r})", None


def _canaries_match(recorded: dict, got: dict, published) -> str | None:
    """None when every canary's stored vector is unchanged and its query finds the recorded similarities; else
    what differs.
    `published(ids)`: the subset of `ids` in the published generation (vectors an unfinished update wrote
    are left out before comparing)."""
    for kind in ("chunks", "papers"):
        want = recorded.get(kind) or []
        have = got.get(kind) or []
        if want and got.get(kind + "_count") == 0:
            return f"{kind[:-1]} vectors: 0 of {recorded.get(kind + '_count', 0):,}"
        if len(have) != len(want):
            return f"the {kind} collection is missing"
        for q, h in zip(want, have):
            if not h.get("vector_ok"):
                return f"the stored vector of {q['id']} changed"
            keep = published(set(h["near"]) | set(q["near"]))
            a = [(i, sim) for i, sim in zip(q["near"], q.get("sims") or []) if i in keep][:CANARY_TOP]
            b = [(i, sim) for i, sim in zip(h["near"], h.get("sims") or []) if i in keep][:CANARY_TOP]
            # The nearest vectors' similarities must be the recorded ones (within SIM_TOLERANCE), all but one:
            # HNSW search is approximate, and in a graph rebuilt when a client loads it (Chroma replays its log)
            # a query may miss one neighbour, even itself, among near-duplicate papers, or ids may trade places.
            # Damaged native files change many (or fail the stored-vector check above, or the query itself).
            left = [sim for _, sim in b]
            matched = 0
            for _, sim in a:
                near = [x for x in left if abs(x - sim) <= SIM_TOLERANCE]
                if near:
                    left.remove(near[0])
                    matched += 1
            if matched < len(a) - 1 or len(b) < len(a) - 1:
                same = len({i for i, _ in a} & {i for i, _ in b})
                return f"a test query returns other {kind} than at publication ({same} of {len(a)} the same)"
    return None


def store_unchanged(data_dir: Path) -> bool:
    """Every file of the embedded store is as last recorded (size and mtime: a stat each, nothing read)."""
    current = read_seal(Path(data_dir))
    recorded = (current or {}).get("files") or {}
    files = _store_files(Path(data_dir))
    return bool(recorded) and set(files) == set(recorded) and all(
        _stat(files[n]) == [r["size"], r["mtime"]] for n, r in recorded.items())


class Published:
    """The published generation of a catalog, as the store check needs it: its id, and `published(ids)`, the
    subset of `ids` that are its chunk or paper ids (vectors an update wrote before publishing it, or left
    for deletion after it, are left out before canaries are compared)."""

    def __init__(self, catalog):
        self._catalog = catalog
        try:
            self.generation = catalog.generation()
        except RagError:
            self.generation = None

    def unchanged(self) -> bool:
        """No other generation was published since this one was read."""
        try:
            return self._catalog.generation() == self.generation
        except RagError:
            return False

    def __call__(self, ids) -> set[str]:
        try:
            return self._catalog.published_ids(ids)
        except RagError:
            return set(ids)


def published_filter(catalog) -> Published | None:
    """See Published; None without a readable catalog."""
    return None if catalog is None else Published(catalog)


def check_store(data_dir: Path, collection: str, thorough: bool = False, published=None,
                record: bool = True) -> str | None:
    """None when the embedded store is as published (or verified since); else what is wrong.

    Not `thorough`: files whose size and mtime are as recorded are trusted without reading them (a reader's
    open). `thorough` (`rag doctor`, `rag ingest`): every file is summed. `published(ids)`: see
    _canaries_match (None: every id counts)."""
    data_dir = Path(data_dir)
    if not (data_dir / "chroma").is_dir():
        return "the vector store is missing"
    current = read_seal(data_dir)
    files = _store_files(data_dir)
    recorded = (current or {}).get("files", {})
    if current is not None and recorded:
        if not thorough and store_unchanged(data_dir):
            return None
        if set(files) == set(recorded) and all(
                r.get("crc") is not None and _stat(files[n])[0] == r["size"] and crc32(files[n]) == r["crc"]
                for n, r in recorded.items()):
            if record:
                current["files"] = {n: _record(p) for n, p in files.items()}
                _write_seal(data_dir, current)
            return None
    queries = (current or {}).get("canaries") or {}
    problem, got = _probe(data_dir, collection, queries)
    if problem:
        return problem
    if got.get("sqlite") != "ok":
        return f"the vector store's database is damaged ({got.get('sqlite')})"
    # The canaries describe the generation that was sealed: after another one is published (and before its
    # ingest seals it, or if that ingest was killed), only the probe's own checks apply.
    sealed = current.get("generation") if current else None
    if queries and (published is None or published.generation in (None, sealed)):
        problem = _canaries_match(queries, got, published or (lambda ids: ids))
        if problem and (published is None or published.unchanged()):
            return f"the vector store is damaged: {problem}"
        if problem:  # a generation was published while the probe ran: its results are of the new one
            return None
    if record and current is not None:
        current["files"] = {n: _record(p) for n, p in files.items()}
        _write_seal(data_dir, current)
    elif record:  # an index sealed before this version: start recording
        seal(data_dir, None, embedded=True)
    return None


def check_catalog(data_dir: Path, thorough: bool = False) -> str | None:
    """None when the catalog is as published (size and mtime, or summed) or passes SQLite's quick_check."""
    data_dir = Path(data_dir)
    path = data_dir / CATALOG_FILE
    if not path.is_file():
        return "the catalog is missing"
    current = read_seal(data_dir)
    rec = (current or {}).get("catalog")
    if rec and (_stat(path) == [rec["size"], rec["mtime"]] and not thorough
                or _stat(path)[0] == rec["size"] and rec.get("crc") is not None and crc32(path) == rec["crc"]):
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"the catalog is damaged ({exc})"
    if rows != ["ok"]:
        return f"the catalog is damaged ({' '.join('; '.join(rows).split())[:160]})"
    return None
