"""The folder of checkpoints the app lists, the content versions its caches are keyed on, and
which file to show beside which (no Streamlit: usable from the tests or a notebook)."""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from .errors import CheckpointError
from .fileio import regular_file_problem
from .methods import METHODS
from .paths import SHIPPED_CHECKPOINTS

CHECKPOINT_ENV = "OOD_CHECKPOINT_DIR"
TRAIN_COMMAND = "python -m ood_core train --method ce --dataset digits --out checkpoints/ce_digits.pt"


def checkpoint_dir() -> Path:
    """The folder the app lists checkpoints from.

    ``$OOD_CHECKPOINT_DIR`` when set (absolute, or relative to the working directory), else the
    shipped checkpoints (:data:`ood_core.paths.SHIPPED_CHECKPOINTS`; the checkout's
    ``checkpoints/`` links there, so files trained into ``checkpoints/`` are listed too).
    """
    env = os.environ.get(CHECKPOINT_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return SHIPPED_CHECKPOINTS


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The ``*.pt`` files directly in ``folder``, sorted by name; [] if the folder is missing.

    Hidden files (``save_checkpoint``'s in-flight temporaries start with a dot) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _stat(path: str | Path) -> os.stat_result:
    try:
        s = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file (was it moved or deleted?)") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(s.st_mode):  # a FIFO would block the read, a link to /dev/zero never end
        raise CheckpointError(f"{path}: {regular_file_problem(path) or 'not a regular file'}")
    return s


# Content digests of checkpoint files, memoised per path on everything stat() tells about the
# file: {path: (stat key, digest)}. A file whose inode was changed less than
# _RACY_WINDOW_NS ago is hashed on every call, not memoised: timestamps come from a coarse
# clock (a few ms), so a file rewritten in place twice within one tick with the same size
# would otherwise keep its first digest (git's "racily clean" problem).
_DIGESTS: dict[str, tuple[tuple, str]] = {}
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_MAX = 256
_RACY_WINDOW_NS = 2_000_000_000


def _stat_key(s: os.stat_result) -> tuple:
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def file_version(path: str | Path) -> str:
    """A SHA-256 of the file's bytes (hex, 32 characters): the file part of a checkpoint's
    cache key. Unlike a modification time it changes whenever the content does, also when a
    file is replaced by another with the same mtime (``cp -p``, ``os.utime``, a coarse-mtime
    file system). Memoised on (device, inode, size, mtime_ns, ctime_ns), so an unchanged file
    is read once (checkpoints are well under a few MB; hashing one costs about a millisecond
    per MB). CheckpointError if the file is gone or unreadable, not a regular file (a FIFO, a
    device, a link to one) or larger than :func:`ood_core.checkpoint.checkpoint_byte_limit`."""
    import hashlib
    import time

    key = str(path)
    before = _stat(path)
    with _DIGESTS_LOCK:
        memo = _DIGESTS.get(key)
    if memo is not None and memo[0] == _stat_key(before):
        return memo[1]
    from .checkpoint import open_checkpoint_file

    h = hashlib.sha256()
    f = open_checkpoint_file(path)  # a regular file under the size cap, or one line
    try:
        with f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({e.strerror or e})") from None
    digest = h.hexdigest()[:32]
    after = _stat(path)
    if _stat_key(after) == _stat_key(before) and time.time_ns() - after.st_ctime_ns > _RACY_WINDOW_NS:
        with _DIGESTS_LOCK:
            _DIGESTS[key] = (_stat_key(after), digest)
            while len(_DIGESTS) > _DIGESTS_MAX:
                _DIGESTS.pop(next(iter(_DIGESTS)))
    return digest


def same_dataset_checkpoints(paths: list[str], current: str, dataset_of, limit: int = 4) -> list[str]:
    """``current`` and then the other files of ``paths`` trained on the same dataset
    (``dataset_of(path)`` gives a file's dataset name, None when unreadable), at most ``limit``."""
    want = dataset_of(current)
    same = [p for p in paths if p != current and want is not None and dataset_of(p) == want]
    return [current, *same][:limit]


def companion(options: list[str], current: str, method_of, prefer: tuple[str, ...] = ()) -> str:
    """The checkpoint of ``options`` to show beside ``current`` on a two-model page.

    The method's baseline first (``Method.baseline``: the model its paper compares against);
    a baseline method has none, so then a method that names it as baseline, those in ``prefer``
    (the page's subject, e.g. ``l2norm`` beside ``ce``) before the others; then any other file;
    ``current`` itself when it is alone. ``method_of(path)`` gives a file's method name (None
    when unreadable). Ties go to the first file in ``options`` (sorted by name).
    """
    others = [o for o in options if o != current]
    methods = {o: method_of(o) for o in others}
    own = method_of(current)
    baseline = getattr(METHODS.get(own), "baseline", None)
    if baseline is not None:
        match = [o for o in others if methods[o] == baseline]
        if match:
            return match[0]
    followers = [o for o in others if own is not None and getattr(METHODS.get(methods[o]), "baseline", None) == own]
    followers.sort(key=lambda o: prefer.index(methods[o]) if methods[o] in prefer else len(prefer))
    return (followers or others or [current])[0]
