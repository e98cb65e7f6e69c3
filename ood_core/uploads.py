"""Storing the user's uploads on disk, content-addressed: OOD sets and model weights (no Streamlit: the app's
uploader hands its files here; :func:`ood_core.data.load_user_ood` reads the result)."""
from __future__ import annotations

from pathlib import Path

from .data import IMAGE_SUFFIXES
from .errors import DataError
from .fileio import file_name_problem
from .paths import default_cache_dir

ARRAY_SUFFIXES = (".npy", ".npz")


def save_upload(files, folder: str | Path | None = None) -> Path:
    """Store the user's uploaded OOD set on disk and return the path :func:`load_user_ood` reads.

    ``files``: objects with ``.name`` and ``.getvalue()`` (Streamlit's UploadedFile): either
    one ``.npy``/``.npz`` array file, or image files (an image folder). They are written under
    ``folder`` (default ``<default_cache_dir()>/uploads``) in a sub-folder named by a SHA-256
    of the names and contents, so the returned path identifies the content (a sound cache key)
    and uploading the same files twice writes nothing new. File names are reduced to their
    last component, so a crafted name cannot write outside that folder. Returns the array
    file, or the image folder ``.../<digest>/<set name>`` (set name: ``uploaded_images``).
    Raises DataError for no files, an unsupported suffix, or arrays mixed with images.
    """
    files = [f for f in (files or []) if f is not None]
    if not files:
        raise DataError("no file uploaded; upload one .npy/.npz array file or image files")
    # the last component only (also of a Windows path), so a crafted name cannot leave the folder
    names = [Path(str(f.name).replace("\\", "/")).name for f in files]
    kinds = []
    for name in names:
        problem = file_name_problem(name)
        if problem:
            raise DataError(f"{name[:40]!r}: the file name {problem}; rename the file")
        suffix = Path(name).suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            kinds.append("array")
        elif suffix in IMAGE_SUFFIXES:
            kinds.append("image")
        else:
            raise DataError(f"{name}: unsupported file type {suffix or '(none)'!r}; upload one .npy/.npz array "
                            f"file or image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if "array" in kinds and len(files) > 1:
        raise DataError(f"upload one .npy/.npz array file on its own, or only image files; got {len(files)} files "
                        f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    if len(set(names)) != len(names):
        raise DataError("two uploaded files share a name; rename one (images from sub-folders are stored side by side)")
    root = Path(folder) if folder is not None else default_cache_dir() / "uploads"
    return _store_by_content(names, files, root, names[0] if kinds[0] == "array" else "uploaded_images",
                             single=kinds[0] == "array")


WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


def save_weights_upload(file, folder: str | Path | None = None) -> Path:
    """Store an uploaded weights file (``.pth``/``.pt``/``.safetensors``; read later with the
    weights-only loader, never unpickled as code) under ``folder`` (default
    ``<default_cache_dir()>/uploads/weights``), named by its content; returns its path."""
    if file is None:
        raise DataError("no weights file uploaded")
    name = Path(str(file.name).replace("\\", "/")).name
    problem = file_name_problem(name)
    if problem:
        raise DataError(f"{name[:40]!r}: the file name {problem}; rename the file")
    if Path(name).suffix.lower() not in WEIGHT_SUFFIXES:
        raise DataError(f"{name}: upload a state dict ({', '.join(WEIGHT_SUFFIXES)})")
    root = Path(folder) if folder is not None else default_cache_dir() / "uploads" / "weights"
    return _store_by_content([name], [file], root, name, single=True)


def _store_by_content(names: list[str], files: list, root: Path, leaf: str, single: bool) -> Path:
    """Write ``files`` (one file as ``leaf``, or a folder ``leaf`` of them) into
    ``root/<SHA-256 of names and contents>/``, whole or not at all; an identical upload is
    found there and written once. Returns ``root/<digest>/<leaf>``."""
    import hashlib
    import shutil
    import tempfile

    digest = hashlib.sha256()
    for name, f in sorted(zip(names, files), key=lambda t: t[0]):
        data = f.getvalue()
        digest.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little") + data)
    target = root / digest.hexdigest()[:24]
    if not (target / leaf).exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))  # written whole, then renamed into place
        try:
            (tmp / leaf).parent.mkdir(parents=True, exist_ok=True)
            if single:
                (tmp / leaf).write_bytes(files[0].getvalue())
            else:
                (tmp / leaf).mkdir()
                for name, f in zip(names, files):
                    (tmp / leaf / name).write_bytes(f.getvalue())
            try:
                tmp.rename(target)
            except OSError:  # another session stored the same content first: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target / leaf
