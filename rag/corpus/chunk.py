"""Split abstracts into token-counted chunks: llama-index's SentenceSplitter with a tiktoken counter,
the paper's title carried into each chunk so every vector knows what paper it is about."""

from __future__ import annotations

from collections.abc import Iterable

from rag.records import Chunk, Paper
from rag.text import term_document
from rag.token_counts import encoding


class Chunker:
    """Title-carrying chunks small enough for MiniLM's 256-wordpiece window."""

    def __init__(self, chunk_size: int, chunk_overlap: int, tokenizer: str = "cl100k_base"):
        from llama_index.core.node_parser import SentenceSplitter

        enc = encoding(tokenizer)
        self.params = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "tokenizer": tokenizer}
        self._splitter = SentenceSplitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            tokenizer=lambda t: enc.encode(t, disallowed_special=()),
        )

    def chunk(self, paper: Paper) -> list[Chunk]:
        bodies = self._splitter.split_text(paper.abstract) or [paper.abstract]
        # The id names the paper's version (its content hash): a changed paper's new chunks are stored beside
        # the published ones until the new generation is published (rag.index.ingest, copy-on-write).
        version = paper.content_hash()[:8]
        return [
            Chunk(
                chunk_id=f"{paper.paper_id}:{version}.{no}",
                paper_id=paper.paper_id,
                title=paper.title,
                chunk_no=no,
                text=f"{paper.title}\n{body}",
                body=body,
            )
            for no, body in enumerate(bodies)
        ]

    def chunk_all(self, papers: Iterable[Paper]) -> list[Chunk]:
        return [c for p in papers for c in self.chunk(p)]


ChunkedPaper = tuple[Paper, list[Chunk], list[str]]  # a paper, its chunks, their lexical documents


def _chunk_with_documents(chunker: Chunker, paper: Paper) -> ChunkedPaper:
    chunks = chunker.chunk(paper)
    return paper, chunks, [term_document(c.text) for c in chunks]


def _frame(obj) -> bytes:
    import pickle

    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(blob).to_bytes(8, "little") + blob


def _read_frame(stream):
    """The next object on `stream`, or EOFError when it ended (between or inside a frame)."""
    import pickle

    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    size = int.from_bytes(head, "little")
    blob = stream.read(size)
    if len(blob) < size:
        raise EOFError
    return pickle.loads(blob)  # noqa: S301 - frames come from this package's own child process


def _serve(params: dict) -> None:
    """The child process (`python -m rag.corpus.chunk PARAMS`): build the chunker (the expensive import), then
    chunk the batches read from stdin, writing results to stdout, until stdin ends."""
    import sys

    # NLTK imports scipy.stats (1-2 s) for collocation statistics that sentence splitting never uses, and
    # treats scipy as optional (nltk/metrics/association.py): this process, which only chunks, hides it.
    sys.modules.setdefault("scipy.stats", None)
    out = sys.stdout.buffer
    try:
        chunker = Chunker(**params)
        chunker.chunk(Paper(paper_id="warm-up", title="Warm up", abstract="Loads the sentence tokenizer. Now."))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which chunks in-process instead
        out.write(_frame(("error", f"{exc.__class__.__name__}: {exc}")))
        out.flush()
        return
    while True:
        try:
            papers = _read_frame(sys.stdin.buffer)
        except EOFError:
            return
        try:
            reply = ("ok", [_chunk_with_documents(chunker, p)[1:] for p in papers])
        except Exception as exc:  # noqa: BLE001
            reply = ("error", f"{exc.__class__.__name__}: {exc}")
        out.write(_frame(reply))
        out.flush()


class ChunkWorker:
    """Chunking and lexical tokenising in a child process, started before it is needed.

    Hand-written on purpose, because it measurably serves (README, Benchmarks: append 10 papers): importing
    llama-index and NLTK costs seconds in every `rag ingest` process, more than the rest of a 10-paper update
    of a 100k-paper index. Started first, the child imports them on the second core while this process opens
    the index and scans the corpus; in a large ingest it chunks the next batches while this process embeds and
    writes (Chroma's writes hold the GIL, so a thread could not). A plain subprocess speaking length-prefixed
    pickles, not multiprocessing, so the parent's main module is never re-imported. If the child cannot start,
    fails or dies, chunking continues in this process (with a warning). A long-lived process (the UI, tests)
    imports the chunker once and has no use for it.
    """

    AHEAD = 2  # batches in flight
    REPLY_TIMEOUT_S = 300.0  # a batch takes well under a second; the first waits for the child's imports

    def __init__(self, chunk_size: int, chunk_overlap: int, tokenizer: str = "cl100k_base"):
        import json
        import queue
        import subprocess
        import sys
        import threading

        self.params = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "tokenizer": tokenizer}
        self._local = LocalChunking(chunk_size, chunk_overlap, tokenizer)  # the fallback
        self.failure: str | None = None
        self._results: queue.Queue = queue.Queue()
        self._requests: queue.Queue = queue.Queue()
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "rag.corpus.chunk", json.dumps(self.params)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as exc:
            self._proc = None
            self._fail(f"cannot start ({exc})")
            return
        # a thread each way, so neither side can block the other on a full pipe
        threading.Thread(target=self._write, args=(self._proc,), daemon=True, name="rag-chunker-in").start()
        threading.Thread(target=self._read, args=(self._proc,), daemon=True, name="rag-chunker-out").start()

    def _write(self, proc) -> None:
        try:
            while (papers := self._requests.get()) is not None:
                proc.stdin.write(_frame(papers))
                proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the child is gone: its reader reports it
        try:
            proc.stdin.close()
        except OSError:
            pass

    def _read(self, proc) -> None:
        while True:
            try:
                self._results.put(_read_frame(proc.stdout))
            except (EOFError, OSError, ValueError) as exc:
                self._results.put(("error", f"ended ({exc.__class__.__name__}, exit code {proc.poll()})"))
                return
            except Exception as exc:  # noqa: BLE001 - an unreadable frame
                self._results.put(("error", f"sent an unreadable reply ({exc.__class__.__name__})"))
                return

    def _fail(self, why: str) -> None:
        import logging

        if self.failure is None:
            logging.getLogger(__name__).warning("chunking worker %s: chunking in this process", why)
            self.failure = why
        self.close()

    def _receive(self, papers: list[Paper]) -> list[ChunkedPaper]:
        import queue

        if self._proc is not None:
            try:
                status, value = self._results.get(timeout=self.REPLY_TIMEOUT_S)
            except queue.Empty:
                status, value = "error", f"sent no reply in {self.REPLY_TIMEOUT_S:.0f} s"
            if status == "ok" and len(value) == len(papers):
                return [(p, chunks, docs) for p, (chunks, docs) in zip(papers, value)]
            self._fail(str(value))
        return list(self._local.stream(papers))

    def stream(self, papers: Iterable[Paper], batch: int = 64) -> Iterable[ChunkedPaper]:
        """Every paper with its chunks and their lexical documents, in order."""
        from collections import deque

        inflight: deque[list[Paper]] = deque()
        group: list[Paper] = []

        def send(group: list[Paper]) -> None:
            inflight.append(group)
            if self._proc is not None:
                self._requests.put(group)

        def take() -> list[ChunkedPaper]:
            return self._receive(inflight.popleft())

        for paper in papers:
            group.append(paper)
            if len(group) >= batch:
                send(group)
                group = []
                if len(inflight) >= self.AHEAD:
                    yield from take()
        if group:
            send(group)
        while inflight:
            yield from take()

    def close(self) -> None:
        """Stop the child at once: it holds no state worth a clean exit (waiting for one costs ~0.2 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._requests.put(None)  # ends the writer thread
        proc.kill()
        proc.wait()


class LocalChunking:
    """The same interface as ChunkWorker, chunking in this process."""

    def __init__(self, chunk_size: int, chunk_overlap: int, tokenizer: str = "cl100k_base"):
        self.params = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "tokenizer": tokenizer}
        self._chunker: Chunker | None = None
        self.failure = None

    def stream(self, papers: Iterable[Paper], batch: int = 64) -> Iterable[ChunkedPaper]:
        for paper in papers:
            if self._chunker is None:
                self._chunker = Chunker(**self.params)
            yield _chunk_with_documents(self._chunker, paper)

    def close(self) -> None:
        pass


if __name__ == "__main__":
    import json
    import sys

    _serve(json.loads(sys.argv[1]))
