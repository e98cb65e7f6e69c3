"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import zipfile
import zlib
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


ZIP_CHUNK = 1 << 20  # bytes read at a time when checking a zip archive's CRCs


def zip_damage(f: BinaryIO) -> tuple[str, str] | None:
    """``(member, why)`` for the first member of the zip archive ``f`` whose contents do not
    match the CRC-32 recorded for it (or cannot be read at all), None when every member is intact.

    ``torch.load`` and ``np.load`` never check these CRCs, so a checkpoint or cache entry with
    overwritten bytes would otherwise load. Every member is read in :data:`ZIP_CHUNK` pieces
    (the CRC is compared at each member's end, by :mod:`zipfile`), so the memory used does
    not grow with the file. ``f`` is a seekable binary file; its position is left anywhere.
    """
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        return "(zip directory)", " ".join(str(e).split())[:200] or type(e).__name__
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    while member.read(ZIP_CHUNK):
                        pass
            except zipfile.BadZipFile as e:
                why = ("its contents do not match their CRC-32" if "CRC" in str(e)
                       else " ".join(str(e).split())[:200])
                return info.filename, why
            except (zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
                return info.filename, f"unreadable ({' '.join(str(e).split())[:200] or type(e).__name__})"
    return None


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
