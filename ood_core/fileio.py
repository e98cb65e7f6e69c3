"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path, write: Callable[[BinaryIO], object], fsync: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync it, then rename it over ``path``.

    ``fsync=False`` skips the flush to disk (for caches: after a power loss the file may be
    empty, never partial, so a reader that checks it recomputes).

    If ``write`` or the process fails midway, ``path`` keeps its previous content and the
    temporary file is removed (or, after a hard kill, left as a hidden ``.NAME.*.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
