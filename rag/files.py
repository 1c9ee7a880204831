"""File signatures: has a file changed since we last looked, without reading it?"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def files_signature(paths: Iterable[Path], root: Path | None = None) -> str:
    """One line per file, "name:size:mtime_ns" ("name:-" when it does not exist), named relative to `root`
    (else by file name). Equal signatures: as far as a stat can tell, the files are as they were."""
    parts = []
    for path in paths:
        path = Path(path)
        name = path.relative_to(root) if root is not None else path.name
        try:
            st = path.stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return "\n".join(parts)
