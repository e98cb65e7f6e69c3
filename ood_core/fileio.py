"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
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


STREAM_FOLDERS = ("/dev", "/proc")  # output paths there are devices or streams, never regular files


def _target(path: Path) -> Path:
    """The file a write to ``path`` lands in: ``path`` with ``..`` and symbolic links resolved
    (:func:`os.path.realpath`), so a link is written through to its target and kept, and
    ``a/sub/../x`` never creates ``a/sub``. OutputError if ``path`` exists and is not a regular
    file or folder (``/dev/stdout``, a terminal, pipe, device or socket)."""
    where = os.path.abspath(path)
    for _ in range(40):  # the path and each link it leads through (out.json -> /dev/stdout)
        if any(where == d or where.startswith(d + os.sep) for d in STREAM_FOLDERS):
            raise OutputError(f"cannot write {path}: a device or stream (such as /dev/stdout) is not a regular "
                              "file; pass the path of a file")
        if not os.path.islink(where):
            break
        where = os.path.join(os.path.dirname(where), os.readlink(where))
    try:
        st = os.stat(path)  # follows links, also /proc's magic ones (/dev/stdout -> pipe:[N])
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _output_error(path, e) from None
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise OutputError(f"cannot write {path}: it is not a regular file (a terminal, pipe, device or socket); "
                          "pass the path of a file")
    return Path(os.path.realpath(path))


def _make_folders(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True, exist_ok=True)``, returning the folders it created (outermost first)."""
    missing = []
    for f in [folder, *folder.parents]:
        if f.exists() or f.is_symlink():
            break
        missing.append(f)
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders :func:`_make_folders` created, innermost first, when they are still empty."""
    for f in reversed(created):
        try:
            f.rmdir()
        except OSError:
            break


def check_writable(path) -> Path:
    """Fail now, with one clear line, if ``atomic_write(path, ...)`` could not create its file.

    Creates ``path``'s missing folders, creates and removes an empty temporary file in the
    last one, then removes the folders it created; ``path`` itself is not touched and nothing
    is left behind. Lets a command refuse a bad output path before it spends minutes
    computing what it would write there.
    """
    path = Path(path)
    target = _target(path)
    if target.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; pass a file name")
    created = []
    try:
        created = _make_folders(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise _output_error(path, e) from None
    finally:
        _remove_folders(created)
    return path


def _same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file: the same resolved path, or the same inode
    (a hard link, a bind mount)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_outputs(outputs: dict, inputs: dict | None = None) -> None:
    """Refuse, with one line, output paths that would destroy an input or each other, before
    any work: ``outputs`` and ``inputs`` map an option name (``"--json"``) to a path, a list of
    paths or None (unused).

    Each output is checked by :func:`check_writable` (and so refused when it is a folder, a
    terminal, pipe or device, or cannot be created); an output naming the same file as an
    input (same resolved path or same inode, through links and ``..`` too) is refused, as are
    two outputs naming one file. A symbolic link as output is written through to its target.
    """
    def paths(value):
        return [] if value is None else [value] if isinstance(value, (str, os.PathLike)) else list(value)

    written: dict[str, tuple[str, object]] = {}
    for option, value in outputs.items():
        for path in paths(value):
            check_writable(path)
            for in_option, in_value in (inputs or {}).items():
                for src in paths(in_value):
                    if _same_file(path, src):
                        instead = f"pass another {option} file" if option.startswith("-") else f"remove or rename {path}"
                        raise OutputError(f"{option} {path} is the same file as the {in_option} input {src}; writing "
                                          f"it would replace that input; {instead}")
            key = os.path.realpath(path)
            for other, (other_option, other_path) in written.items():
                if key == other or _same_file(path, other_path):
                    raise OutputError(f"{other_option} {other_path} and {option} {path} are the same file; "
                                      "pass a different file to each")
            written[key] = (option, path)


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
    target = _target(path)
    if target.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; pass a file name")
    created = []
    try:
        created = _make_folders(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        _remove_folders(created)
        raise _output_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _WriteRecorder(raw)
            try:
                write(f)
            except Exception as e:
                real = f.error(e)
                if real is e:
                    raise
                raise real from e
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints and reports are meant to be shared
        os.replace(tmp, target)
    except OutputError:
        _discard(tmp, created)
        raise
    except OSError as e:
        _discard(tmp, created)
        raise _output_error(path, e) from e
    except BaseException:
        _discard(tmp, created)
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


def _discard(tmp: str, created: list[Path]) -> None:
    Path(tmp).unlink(missing_ok=True)
    _remove_folders(created)


class _WriteRecorder:
    """A binary file that remembers the first OSError of its writes.

    Writers that catch it (``torch.save`` turns a failed write, such as a full disk, into a
    RuntimeError "... unexpected pos ...") then still give the real reason: :meth:`error`.
    """

    def __init__(self, f: BinaryIO):
        self._f, self._error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self._error = self._error or e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self._error = self._error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)

    def error(self, e: Exception) -> Exception:
        """What to raise for ``e``, raised by the writer: the recorded OSError when there is one;
        for torch's "unexpected pos" (its writer lost bytes) an OSError(ENOSPC); else ``e``."""
        if isinstance(e, OSError):
            return e
        if self._error is not None:
            return self._error
        if isinstance(e, RuntimeError) and "unexpected pos" in str(e):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return e


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
