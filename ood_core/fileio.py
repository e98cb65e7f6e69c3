"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OODCoreError


class OutputError(OODCoreError, OSError):
    """An output file cannot be written (its folder is missing/not a folder, read-only, or the disk is full).

    Also an :class:`OSError` (``errno`` is kept), so code that tolerates a failed cache write
    by catching ``OSError`` keeps doing so; the CLI prints it as one line.
    """

    def __str__(self) -> str:  # OSError would reformat it as "[Errno N] ..."
        return str(self.args[0]) if self.args else ""


def _output_error(path: Path, e: OSError) -> OutputError:
    reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
    blocker = next((a for a in path.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        reason = f"{blocker} is a file, not a folder"
    err = OutputError(f"cannot write {path}: {reason}")
    err.errno = e.errno
    return err


def check_writable(path) -> Path:
    """Fail now, with one clear line, if ``atomic_write(path, ...)`` could not create its file.

    Creates ``path``'s folder if needed and creates and removes an empty temporary file in
    it; ``path`` itself is not touched. Lets a command refuse a bad output path before it
    spends minutes computing what it would write there.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; pass a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise _output_error(path, e) from None
    return path


MAX_NAME_BYTES = 200  # file names the app writes (most file systems allow 255; a save adds a temporary name)


def file_name_problem(name: str) -> str | None:
    """Why ``name`` is unfit as the name of a file the app writes (control characters, or more
    than :data:`MAX_NAME_BYTES` bytes), or None when it is fine."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains control characters (NUL, newline, tab...)"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        return f"is too long ({size} bytes; at most {MAX_NAME_BYTES})"
    return None


def atomic_write(path, write: Callable[[BinaryIO], object], fsync: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync it, then rename it over ``path``.

    ``fsync=False`` skips the flush to disk (for caches: after a power loss the file may be
    empty, never partial, so a reader that checks it recomputes).

    If ``write`` or the process fails midway, ``path`` keeps its previous content and the
    temporary file is removed (or, after a hard kill, left as a hidden ``.NAME.*.tmp``, which
    no ``*.NAME-suffix`` glob matches). An :class:`OSError` (folder missing or not a folder,
    no permission, disk full) is raised as :class:`OutputError`, one line naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _output_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints and reports are meant to be shared
        os.replace(tmp, path)
    except OutputError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _output_error(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C (SIGINT) until the block has finished, then raise KeyboardInterrupt.

    For saves from the command line: ``torch.save`` turns an interrupt that lands inside its
    writer into a RuntimeError, which would be reported as an internal error although the atomic
    write left every file whole. Signal handlers belong to the main thread, so elsewhere (the
    app's training thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def regular_file_problem(path) -> str | None:
    """Why ``path`` cannot be read as a plain file, or None when it can: missing, or a folder,
    FIFO, device or socket (also through a symbolic link: a link to ``/dev/zero`` never ends,
    and opening a FIFO blocks until a writer comes). Only ``stat`` is called: nothing is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file" + (" (a broken symbolic link)" if os.path.islink(path) else "")
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        return f"cannot be read ({getattr(e, 'strerror', None) or e})"
    if stat.S_ISREG(st.st_mode):
        return None
    link = "a symbolic link to " if os.path.islink(path) else ""
    return f"not a regular file ({link}{_file_kind(st.st_mode)})"


def open_regular(path, error: type[Exception] = OODCoreError, max_bytes: int | None = None,
                 limit_hint: str = "") -> BinaryIO:
    """Open ``path`` for reading in binary mode, only if it is a regular file of at most ``max_bytes``.

    Checked before anything is read (see :func:`regular_file_problem`), and again on the open
    file (opened non-blocking, so a file swapped for a FIFO in between cannot hang the call).
    Raises ``error`` with one line naming the file; ``limit_hint`` ends the size message (how
    to raise the limit).
    """
    problem = regular_file_problem(path)
    if problem:
        raise error(f"{path}: {problem}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as e:
        raise error(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file ({_file_kind(st.st_mode)})")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{path}: too large: {st.st_size:,} bytes, more than the limit of {max_bytes:,}"
                        + (f"; {limit_hint}" if limit_hint else ""))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
