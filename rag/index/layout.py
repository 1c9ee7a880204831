"""The data dir's files as one writer and many readers share them: atomic writes, the ingest lock, and
setting a damaged file aside."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from rag.errors import ConfigError, IndexLockedError

log = logging.getLogger(__name__)
STATE = "ingest.json"  # an unfinished ingest's resume log (rag.index.ingest)
GARBAGE = "ingest.garbage"  # vector ids a publication left for deletion (rag.index.ingest._AfterPublication)


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never a partial one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def set_aside(path: Path, why: str, label: str = "damaged", quiet: bool = False) -> Path | None:
    """Move a damaged file or folder out of the way (renamed `<name>.<label>-<time>`), with a warning."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    stamp = time.strftime('%Y%m%dT%H%M%S')
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{label}-{stamp}-{n}")
    path.rename(target)
    (log.info if quiet else log.warning)("%s: %s; moved it to %s and rebuilding", path, why, target.name)
    return target


def disk_full(exc: BaseException | str) -> bool:
    """The error (or its text) is a full disk, whoever raised it: the OS, SQLite, or Chroma's native code."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "disk is full", "os error 28"))


def read_only_fs(path: Path) -> bool:
    """True when `path` is on a file system mounted read-only (nobody can change its files)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def ensure_writable(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ConfigError(f"no space left on the device holding {data_dir}: free some space or set RAG_DATA_DIR") from None
        raise ConfigError(
            f"data dir {data_dir} is not writable ({exc.strerror}): fix its permissions or set RAG_DATA_DIR"
        ) from None


@contextmanager
def ingest_lock(data_dir: Path):
    """One writer at a time; the OS releases the lock if the process dies."""
    path = data_dir / "ingest.lock"
    if path.exists() and not path.is_file():
        set_aside(path, "the ingest lock is not a file")
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise IndexLockedError(
            f"the index in {data_dir} is being written by {holder}: wait for that `rag ingest` to finish"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def ingest_running(data_dir: Path) -> bool:
    """True while another process holds the ingest lock."""
    path = Path(data_dir) / "ingest.lock"
    if not path.is_file():
        return False
    try:
        fh = open(path)  # read-only: a reader must not need a writable data dir
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False
