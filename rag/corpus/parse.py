"""Parse corpus files into deduplicated `Paper` records.

Two formats: scraped listing pages (`.txt`: boilerplate, then title line / abstract line pairs)
and JSONL (`{"title", "abstract"}` plus optional `id`, `authors`, `categories`, `date`, `url`,
the arXiv metadata snapshot's shape). Unparseable lines are reported with file and line and
skipped; `strict=True` makes the first one fatal.

A paper's identity (its `paper_id`) is its JSONL `id` when the line has one (arXiv ids without their
version suffix): a later line with the same id is a revision and replaces the earlier one. Without an id
(every listing page, JSONL lines without one) it is the normalised title, as it always was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from rag.errors import CorpusError, ParseError
from rag.records import Paper

log = logging.getLogger(__name__)

BOILERPLATE = {
    "new",
    "subscribe",
    "get trending papers in your email inbox!",
    "get trending papers in your email inbox once a day!",
    "byak and the research community",
}
_DATE = re.compile(r"^(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}(, \d{4})?$", re.I)
# "Subscribe" glued to the first title by the scrape, but not words like "Subscribers".
_GLUED = re.compile(r"^Subscribe(?!(?:rs?|d|s)\b)(?=\S)")
_LATEX_ESCAPE = re.compile(r"\\([%_&#$])")
_LATEX_CMD = re.compile(r"\\(?:emph|textbf|textit|texttt|mathrm|mathbf|text)\{([^{}]*)\}")
_LATEX_SYMBOL = {"\\times": "×", "\\sim": "~", "\\(": "", "\\)": "", "\\uparrow": "↑", "\\downarrow": "↓"}
_URL = re.compile(
    r"(?:https?://|www\.|github\.com/)[^\s<>\"')\]}]+"
    # bare GitHub Pages project sites, e.g. "muse-bench.github.io"
    r"|\b[\w-]+(?:\.[\w-]+)*\.github\.io\b[^\s<>\"')\]}]*",
    re.I,
)
# Every URL above contains one of these. Most abstracts have none, and checking for them first spares
# them the pattern, which backtracks over every word (it cost ~0.2 ms an abstract, 21 s per 100k papers).
_URL_HINTS = ("http", "www.", "github")
_URL_HINT = re.compile(r"http|www\.|github", re.I)  # the same test, for text where lower() is not enough
_MAX_TITLE_CHARS = 400
_MAX_ABSTRACT_CHARS = 20_000
CORPUS_SUFFIXES = (".txt", ".jsonl")
_BOM = "\ufeff"
_ARXIV_ID = re.compile(r"^(\d{4}\.\d{4,5}|[a-z-]+(?:\.[A-Z]{2})?/\d{7})(v\d+)?$")
# A JSON \u escape of a UTF-16 surrogate: the only way a decoded line can hold a lone surrogate (which no
# UTF-8 text can encode); lines without one are not checked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class ParseIssue:
    file: str
    line: int
    message: str
    fatal: bool = True  # False: a notice (nothing was skipped), never fatal with --strict

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class CorpusLoad:
    papers: list[Paper]
    issues: list[ParseIssue] = field(default_factory=list)
    entries: int = 0
    duplicates: int = 0
    files: list[str] = field(default_factory=list)


def clean_text(text: str) -> str:
    """Unicode-normalise, drop LaTeX escapes such as `\\%`, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text)
    text = _LATEX_ESCAPE.sub(r"\1", text)
    text = _LATEX_CMD.sub(r"\1", text)
    for macro, plain in _LATEX_SYMBOL.items():
        text = text.replace(macro, plain)
    return " ".join(text.split())


def normalise_title(title: str) -> str:
    text = unicodedata.normalize("NFKC", title).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def paper_id_for(title: str, abstract: str = "") -> str:
    """Stable id from the normalised title; a title that normalises to nothing ("???", "🔥🚀") is
    identified by its raw text and abstract instead, so distinct papers never share an id."""
    norm = normalise_title(title)
    key = norm if norm else f"raw:{title}\n{abstract}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def corpus_id(value) -> str | None:
    """The identity a JSONL `id` gives: the id as text, an arXiv id without its version ("2303.07345v2" ->
    "2303.07345", so a revision is the same paper); None when there is no usable id."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = " ".join(str(value).split())
    if not text:
        return None
    arxiv = _ARXIV_ID.match(text)
    return arxiv.group(1) if arxiv else text


def id_paper_id(ident: str) -> str:
    """The paper_id of a paper identified by its corpus id (see corpus_id)."""
    return hashlib.sha1(f"id:{ident}".encode()).hexdigest()[:16]


def variant_id(title: str, abstract: str) -> str:
    """The id of a paper that repeats an earlier paper's title with a different abstract."""
    return hashlib.sha1(f"{normalise_title(title)}\n{abstract}".encode()).hexdigest()[:16]


def abstract_hash(abstract: str) -> str:
    return hashlib.sha1(abstract.encode()).hexdigest()


def find_code_urls(text: str) -> tuple[str, ...]:
    urls = []
    if text.isascii():
        lower = text.lower()
        if not any(hint in lower for hint in _URL_HINTS):
            return ()
    elif not _URL_HINT.search(text):
        return ()
    for match in _URL.findall(text):
        url = match.rstrip(".,;:")
        if not url.lower().startswith("http"):
            url = "https://" + url
        if url not in urls:
            urls.append(url)
    return tuple(urls)


def corpus_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories into their .txt/.jsonl files; a missing path is an error."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in CORPUS_SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise CorpusError(f"corpus path {path} does not exist: pass --corpus PATH or set RAG_CORPUS")
    if not files:
        raise CorpusError(
            "no corpus files (.txt or .jsonl) found in " + ", ".join(str(p) for p in paths)
        )
    return files


def corpus_fingerprint(files: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        digest.update(path.name.encode())
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as exc:
            raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from None
    return digest.hexdigest()


def _read_lines(path: Path, issues: list[ParseIssue]) -> list[tuple[int, str]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from None
    if b"\x00" in raw[:8192]:
        issues.append(ParseIssue(path.name, 1, "binary content (NUL bytes): file skipped"))
        return []
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows editors write one): not text
        raw = raw[3:]
    lines = []
    for no, blob in enumerate(raw.split(b"\n"), start=1):
        try:
            line = blob.decode("utf-8")
        except UnicodeDecodeError as exc:
            issues.append(ParseIssue(path.name, no, f"invalid UTF-8 at byte {exc.start}: line skipped"))
            lines.append((no, None))
            continue
        lines.append((no, line.strip()))
    return lines


def _looks_like_title(line: str) -> bool:
    return len(line) <= _MAX_TITLE_CHARS and not (line.endswith(".") and len(line) > 200)


def _looks_like_abstract(line: str) -> bool:
    return len(line) >= 150 or (line.endswith(".") and len(line.split()) >= 8)


def parse_listing(path: Path, issues: list[ParseIssue]) -> Iterator[tuple[int, str, str]]:
    """Yield (line, title, abstract) from a scraped listing page."""
    lines = [(n, t) for n, t in _read_lines(path, issues) if t != ""]
    # Page header: boilerplate and a date line before the first title.
    start = 0
    while start < len(lines) and lines[start][1] is not None and (
        lines[start][1].casefold() in BOILERPLATE or _DATE.match(lines[start][1])
    ):
        start += 1
    body = lines[start:]
    i = 0
    while i < len(body):
        no, line = body[i]
        if line is None:  # undecodable, already reported
            i += 1
            continue
        if line.casefold() in BOILERPLATE:
            i += 1
            continue
        line = _GLUED.sub("", line)
        if not _looks_like_title(line):
            issues.append(ParseIssue(path.name, no, "expected a title line, found abstract-like text: skipped"))
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else None
        if nxt is None or nxt[1] is None:
            issues.append(ParseIssue(path.name, no, f"title without abstract: {line[:60]!r} skipped"))
            i += 1 if nxt is None else 2
            continue
        after = body[i + 2][1] if i + 2 < len(body) else None
        abstract = nxt[1]
        if not _looks_like_abstract(abstract) and _looks_like_title(abstract) and (
            after is not None and _looks_like_abstract(after)
        ):
            # The next line is itself a title followed by an abstract: this title lost its abstract.
            issues.append(ParseIssue(path.name, no, f"title without abstract: {line[:60]!r} skipped"))
            i += 1
            continue
        yield no, line, abstract
        i += 2


def parse_jsonl(path: Path, issues: list[ParseIssue]) -> Iterator[tuple[int, dict]]:
    """Yield (line, object) from a JSONL paper file, reporting malformed lines."""
    for no, blob in _jsonl_lines(path):
        obj = _jsonl_object(path.name, no, blob, issues)
        if obj is not None:
            yield no, obj


def _jsonl_lines(path: Path, offsets: array | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of every non-blank line; `offsets` collects each line's byte offset (line n
    at index n - 1: 8 bytes a line)."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from None
    with handle:
        at = 0
        for no, blob in enumerate(handle, start=1):
            if offsets is not None:
                offsets.append(at)
                at += len(blob)
            if blob.strip():
                yield no, blob


def _jsonl_lines_at(path: Path, offsets: Mapping[int, int]) -> Iterator[tuple[int, bytes]]:
    """These lines (line number -> byte offset), read by seeking: a few lines of a large file."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from None
    with handle:
        for no in sorted(offsets):
            handle.seek(offsets[no])
            yield no, handle.readline()


def _jsonl_object(fname: str, no: int, blob: bytes, issues: list[ParseIssue]) -> dict | None:
    """The paper object on one JSONL line, or None (and an issue) when it is not one. Any line the JSON
    parser or UTF-8 cannot take (invalid bytes, a lone surrogate, nesting or a number too large to decode)
    is reported, never raised: one bad line must not stop an ingest."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        issues.append(ParseIssue(fname, no, f"invalid UTF-8 at byte {exc.start}: line skipped"))
        return None
    if no == 1 and text.startswith(_BOM):  # a byte order mark opening the file
        text = text[1:]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        issues.append(ParseIssue(fname, no, f"not a JSON object (JSONDecodeError: {exc.msg} at column "
                                            f"{exc.colno}): skipped"))
        return None
    except RecursionError:
        issues.append(ParseIssue(fname, no, "not a paper: JSON nested too deeply to decode: skipped"))
        return None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        issues.append(ParseIssue(fname, no, f"not a paper: JSON value the decoder refuses ({str(exc)[:80]}): "
                                            "skipped"))
        return None
    if _SURROGATE_ESCAPE.search(blob) and not _encodable(obj):
        issues.append(ParseIssue(fname, no, "a string holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape "
                                            "without its pair), which is not text: skipped"))
        return None
    if not isinstance(obj, dict):
        issues.append(ParseIssue(fname, no, "not a JSON object: skipped"))
        return None
    title, abstract = obj.get("title"), obj.get("abstract")
    if not isinstance(title, str) or not title.strip():
        issues.append(ParseIssue(fname, no, "missing or empty 'title': skipped"))
        return None
    if not isinstance(abstract, str) or not abstract.strip():
        issues.append(ParseIssue(fname, no, "missing or empty 'abstract': skipped"))
        return None
    return obj


def _encodable(obj) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        return False
    return True


def _as_tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        parts = re.split(r",| and " if "," in value or " and " in value else r"\s+", value)
        return tuple(p.strip() for p in parts if p.strip())
    if isinstance(value, (list, tuple)):  # ["A. Author", ...] or the snapshot's [["Last", "First", ""], ...]
        items = (" ".join(str(w) for w in v if isinstance(w, (str, int, float)) and str(w).strip())
                 if isinstance(v, list) else str(v) for v in value)
        return tuple(" ".join(item.split()) for item in items if item.strip())
    return (str(value),)


def iter_raw_papers(files: Iterable[Path], issues: list[ParseIssue]) -> Iterator[tuple[str, int, Paper]]:
    """Yield (file, line, Paper) for every entry, before deduplication. Streams JSONL."""
    for path in files:
        path = Path(path)
        if path.suffix == ".jsonl":
            for no, obj in parse_jsonl(path, issues):
                yield path.name, no, _jsonl_paper(path.name, no, obj, issues)
        else:
            for no, title, abstract in parse_listing(path, issues):
                yield path.name, no, _make_paper(path.name, no, clean_text(title), clean_text(abstract), issues)


def _jsonl_paper(fname: str, no: int, obj: dict, issues: list[ParseIssue]) -> Paper:
    title = clean_text(obj["title"])
    abstract = clean_text(obj["abstract"])
    url = obj.get("url") if isinstance(obj.get("url"), str) else None
    if not url and isinstance(obj.get("id"), str) and re.match(r"^\d{4}\.\d{4,5}(v\d+)?$", obj["id"]):
        url = f"https://arxiv.org/abs/{obj['id']}"
    ident = corpus_id(obj.get("id"))
    if ident is None and obj.get("id") not in (None, ""):
        issues.append(ParseIssue(fname, no, "'id' is not a string or a number: the paper is identified by its "
                                            "title", fatal=False))
    return _make_paper(
        fname, no, title, abstract, issues, ident=ident,
        authors=_as_tuple(obj.get("authors")),
        categories=_as_tuple(obj.get("categories")),
        date=str(obj.get("date") or obj.get("update_date") or "") or None,
        url=url,
    )


def _make_paper(fname, no, title, abstract, issues, ident: str | None = None, **extra) -> Paper:
    if len(abstract) > _MAX_ABSTRACT_CHARS:
        issues.append(ParseIssue(fname, no, f"abstract of {len(abstract)} chars truncated to {_MAX_ABSTRACT_CHARS}"))
        abstract = abstract[:_MAX_ABSTRACT_CHARS]
    return Paper(
        paper_id=id_paper_id(ident) if ident is not None else paper_id_for(title, abstract),
        title=title,
        abstract=abstract,
        sources=(fname,),
        code_urls=find_code_urls(abstract),
        **extra,
    )


class LineDigest(NamedTuple):
    """What pass one needs from an entry, derived from its text alone (so it can be remembered per line)."""

    title_id: str  # the paper's identity: paper_id_for(title, abstract), or id_paper_id of its corpus id
    abstract_hash: str
    variant_id: str  # the id if an earlier entry has this title with another abstract; == title_id: keyed by id
    content_hash: str

    @classmethod
    def of(cls, paper: Paper) -> LineDigest:
        keyed = paper.paper_id != paper_id_for(paper.title, paper.abstract)
        return cls(paper.paper_id, abstract_hash(paper.abstract),
                   paper.paper_id if keyed else variant_id(paper.title, paper.abstract), paper.content_hash())

    @property
    def keyed(self) -> bool:
        """Identified by its corpus id: an entry with the same id is a revision, never a variant."""
        return self.variant_id == self.title_id

    def dumps(self) -> str:
        return " ".join(self)

    @classmethod
    def loads(cls, text: str) -> LineDigest:
        return cls(*text.split(" "))


# A JSONL line's digest is remembered under sha1(file name + "\n" + the stripped line): the name, so a line
# moved to another file counts as changed (its paper's list of files changes). sha1 is 2.5x BLAKE2b here and
# this is a cache key. The catalog's line cache made with another scheme is rebuilt (rag.index.ingest); the
# scheme's name also changes when what a digest means does ("sha1-id": papers with an `id` are keyed by it).
LINE_KEYS = "sha1-id"


@dataclass
class CorpusScan:
    """Pass one over the corpus: per unique paper its content hash, merged sources and where it is, no texts."""

    files: list[Path]
    hashes: dict[str, str] = field(default_factory=dict)
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    first_abstract: dict[str, str] = field(default_factory=dict)  # title id -> abstract hash of its first entry
    first_seen: dict[str, tuple[str, int]] = field(default_factory=dict)  # title id -> (file, line) of its first entry
    locations: dict[str, tuple[int, int]] = field(default_factory=dict)  # paper id -> (file index, line)
    offsets: dict[int, array] = field(default_factory=dict)  # JSONL file index -> byte offset of each line
    fresh: set[str] = field(default_factory=set)  # papers with an entry that was parsed, not remembered
    lines: dict[str, LineDigest] = field(default_factory=dict)  # JSONL line key -> digest, every clean line
    issues: list[ParseIssue] = field(default_factory=list)
    entries: int = 0
    duplicates: int = 0


def scan_corpus(paths: Iterable[Path], strict: bool = False,
                known: Mapping[str, LineDigest] | None = None) -> CorpusScan:
    """Stream every entry once (constant memory in the texts), deduplicating by paper_id.

    `known` maps JSONL line keys to their digests from an earlier scan (see `CorpusScan.lines`): a known line
    is not parsed again (an unchanged line of a large file costs a hash, not a JSON decode and text cleaning);
    lines that raised an issue are never remembered, so their warnings are reported on every scan. The loop
    over a JSONL file runs per corpus line (300k at 300k papers), so its common case, an unchanged line of a
    paper seen once, is written out inline."""
    scan = CorpusScan(corpus_files(paths))
    known = known or {}
    hashes, sources, locations, first_abstract, first_seen = (scan.hashes, scan.sources, scan.locations,
                                                               scan.first_abstract, scan.first_seen)

    def add(fidx: int, fname: str, no: int, digest: LineDigest, parsed: bool) -> None:
        scan.entries += 1
        pid = _resolve(scan, digest.title_id, digest.abstract_hash, digest.variant_id, fname, no)
        if parsed:
            scan.fresh.add(pid)
        if pid in hashes:
            scan.duplicates += 1
            if fname not in sources[pid]:
                sources[pid] += (fname,)
            if digest.keyed and hashes[pid] != digest.content_hash:  # a revision: the later entry replaces it
                before = locations[pid]
                scan.issues.append(ParseIssue(fname, no, f"same id as {scan.files[before[0]].name}:{before[1]} "
                                                         "with another title or abstract: replaces it", fatal=False))
                hashes[pid] = digest.content_hash
                locations[pid] = (fidx, no)
            return
        hashes[pid] = digest.content_hash
        sources[pid] = (fname,)
        locations[pid] = (fidx, no)

    def fatal() -> bool:
        return strict and any(i.fatal for i in scan.issues)

    for fidx, path in enumerate(scan.files):
        path = Path(path)
        if path.suffix != ".jsonl":
            for fname, no, paper in iter_raw_papers([path], scan.issues):
                if fatal():
                    break
                add(fidx, fname, no, LineDigest.of(paper), True)
            continue
        name = path.name
        prefix = name.encode() + b"\n"
        sha1, lines, fast = hashlib.sha1, scan.lines, 0
        for no, blob in _jsonl_lines(path, scan.offsets.setdefault(fidx, array("q"))):
            key = sha1(prefix + blob.strip()).hexdigest()  # the LINE_KEYS scheme
            digest = known.get(key)
            if digest is not None:
                lines[key] = digest
                pid, abstract = digest[0], digest[1]  # title_id, abstract_hash
                if pid not in first_abstract:  # the first entry with this title: add(), inlined
                    first_abstract[pid] = abstract
                    first_seen[pid] = (name, no)
                    hashes[pid] = digest[3]  # content_hash
                    sources[pid] = (name,)
                    locations[pid] = (fidx, no)
                    fast += 1
                else:
                    add(fidx, name, no, digest, False)
                continue
            before = len(scan.issues)
            obj = _jsonl_object(name, no, blob, scan.issues)
            if obj is not None:
                digest = LineDigest.of(_jsonl_paper(name, no, obj, scan.issues))
                if len(scan.issues) == before:
                    lines[key] = digest
                add(fidx, name, no, digest, True)
            if fatal():
                break
        scan.entries += fast
        if fatal():
            break
    fatal = [i for i in scan.issues if i.fatal]
    if strict and fatal:
        raise ParseError(f"{fatal[0]} (strict mode; drop --strict to skip bad lines)")
    for issue in scan.issues:  # the caller reports them (rag ingest prints them, --json lists them): not again
        log.debug("%s", issue)
    if not scan.hashes:
        raise CorpusError(
            "the corpus holds no papers: " + ", ".join(str(f) for f in scan.files)
            + (f" ({len(scan.issues)} lines could not be parsed, first: {scan.issues[0]})" if scan.issues else "")
        )
    return scan


def _resolve(scan: CorpusScan, pid: str, digest: str, alt: str, fname: str, no: int) -> str:
    """The paper's id: its corpus id's (a later entry with that id replaces it: see scan_corpus), else its title
    id, unless an earlier paper has that title with another abstract; then it is kept as a separate paper
    (reported once, with both places) under a title-and-abstract id."""
    first = scan.first_abstract.setdefault(pid, digest)
    if first == digest or pid == alt:  # the same text, or a paper keyed by its id (never a variant)
        scan.first_seen.setdefault(pid, (fname, no))
        return pid
    if alt not in scan.hashes:
        seen = scan.first_seen[pid]
        scan.issues.append(ParseIssue(fname, no, f"same title as {seen[0]}:{seen[1]} with a different abstract: "
                                                 "kept as a separate paper", fatal=False))
    return alt


SEEK_LINES = 2000  # up to this many wanted lines of a JSONL file are read by seeking, more by one pass


def iter_unique(scan: CorpusScan, only: Iterable[str] | None = None) -> Iterator[Paper]:
    """Pass two: each unique paper once (or only those in `only`), from its first entry, with the sources
    of all its copies, in corpus order. Only the lines holding wanted papers are parsed."""
    wanted: dict[int, dict[int, str]] = {}
    for pid in scan.locations if only is None else only:
        fidx, no = scan.locations[pid]
        wanted.setdefault(fidx, {})[no] = pid
    for fidx, path in enumerate(scan.files):
        at = wanted.get(fidx)
        if not at:
            continue
        path = Path(path)
        if path.suffix == ".jsonl":
            known = scan.offsets.get(fidx)
            if known is not None and len(at) <= SEEK_LINES and max(at) <= len(known):  # a few lines: seek to them
                entries = _jsonl_lines_at(path, {no: known[no - 1] for no in at})
            else:
                entries = ((no, blob) for no, blob in _jsonl_lines(path) if no in at)
            papers = ((no, _jsonl_object(path.name, no, blob, [])) for no, blob in entries)
            papers = ((no, _jsonl_paper(path.name, no, obj, [])) for no, obj in papers if obj is not None)
        else:
            papers = ((no, paper) for _, no, paper in iter_raw_papers([path], []) if no in at)
        changed = CorpusError(f"{path.name} changed while it was being ingested: run `rag ingest` again once it "
                              "is written (nothing of this run is lost: it resumes)")
        read = set()
        for no, paper in papers:
            pid = at[no]
            if paper.content_hash() != scan.hashes[pid]:  # the file changed since pass one read it
                raise changed
            read.add(no)
            yield replace(paper, paper_id=pid, sources=scan.sources[pid])
        if len(read) < len(at):  # wanted lines gone or no longer parseable
            raise changed


def load_corpus(paths: Iterable[Path], strict: bool = False) -> CorpusLoad:
    """Parse, clean and deduplicate (by JSONL id, else by normalised title) every paper in `paths`."""
    scan = scan_corpus(paths, strict=strict)
    papers = list(iter_unique(scan))
    return CorpusLoad(papers, scan.issues, scan.entries, scan.duplicates, [str(f) for f in scan.files])
