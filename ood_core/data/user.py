"""User OOD sets: ``.npy``/``.npz`` arrays and image folders (CLI ``--ood-file``, app uploads).

:func:`load_user_ood` reads a file or folder and converts it to the ID format with the
rules of :mod:`.convert`. Reading is safe and bounded: headers (shape, dtype, size) are
checked before any data are read, pickles are never loaded, and sets above the size caps
(:func:`user_limits`) are refused with the way to raise them.
"""
from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .convert import (IMAGE_SUFFIXES, batch_size_for, check_declared, convert_batches, convert_to_id_format,
                      resize_images)

# Limits on a user OOD set (an array file or an image folder, CLI ``--ood-file`` and app
# uploads alike). The data are converted in batches of samples into a preallocated tensor of
# the model's input shape, so peak memory is the (small) converted output plus a few times
# convert.CHUNK_BYTES of work space, whatever the file size; the caps bound the output and the
# evaluation that follows. Both caps can be raised with the environment variables below.
MAX_USER_BYTES = 1 << 30  # bytes of array data in a .npy/.npz file (1 GiB)
MAX_USER_SAMPLES = 100_000  # samples: array rows or image files
MAX_USER_BYTES_ENV = "OOD_MAX_USER_BYTES"
MAX_USER_SAMPLES_ENV = "OOD_MAX_USER_SAMPLES"
FORTRAN_MAX_BYTES = 64 << 20  # column-major (Fortran-order) arrays cannot be read a batch of samples at a time

# what reading a .npy/.npz (a zip, read lazily) can raise when the file is damaged
_UNREADABLE = (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError)


def _env_limit(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        text = raw.replace("_", "")
        value = int(text) if text.isdigit() else int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise DataError(f"${var}={raw!r} is not a positive number; set it to a count such as {default}")
    return value


def user_limits() -> tuple[int, int]:
    """``(max bytes, max samples)`` of a user OOD set: :data:`MAX_USER_BYTES` and
    :data:`MAX_USER_SAMPLES`, or ``$OOD_MAX_USER_BYTES`` / ``$OOD_MAX_USER_SAMPLES`` when set."""
    return _env_limit(MAX_USER_BYTES_ENV, MAX_USER_BYTES), _env_limit(MAX_USER_SAMPLES_ENV, MAX_USER_SAMPLES)


def _human(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} bytes"
    value = nbytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _check_sample_count(n: int, source: str, what: str = "samples", instead: str = "a subset") -> None:
    """Refuse more than the sample cap (array rows or image files) with the way to raise it."""
    _, max_samples = user_limits()
    if n > max_samples:
        raise DataError(f"{source}: too many {what}: {n:,}{' files' if what == 'images' else ''}, more than the limit "
                        f"of {max_samples:,} for a user OOD set; pass {instead}, or raise the limit with the "
                        f"environment variable {MAX_USER_SAMPLES_ENV}={n}")


def _check_user_size(n: int, sample_shape: tuple[int, ...], itemsize: int, source: str) -> None:
    """Refuse an array above the caps, from its declared shape (before any data is read)."""
    max_bytes, _ = user_limits()
    nbytes = n * math.prod(sample_shape) * itemsize
    if nbytes > max_bytes:
        raise DataError(f"{source}: too large: {n:,} samples of shape {tuple(sample_shape)} hold {_human(nbytes)} of "
                        f"data, more than the limit of {_human(max_bytes)} for a user OOD set; pass a subset, or "
                        f"raise the limit with the environment variable {MAX_USER_BYTES_ENV}={nbytes}")
    _check_sample_count(n, source)


def check_decoded_size(n: int, sample_shape: tuple[int, ...], source: str) -> None:
    """Refuse ``n`` images whose decoded float32 tensor would exceed the user-data limits,
    before any is decoded (image folders: a dataset or an OOD set)."""
    _check_user_size(n, sample_shape, 4, source)


def _read_exact(f, buf: np.ndarray, source: str) -> None:
    """Fill the uint8 array ``buf`` from the stream ``f``; a short read is a truncated file."""
    view, got = memoryview(buf), 0
    try:
        while got < len(view):
            r = f.readinto(view[got:])
            if not r:
                raise DataError(f"{source}: truncated: the data end after {got} of {len(view)} bytes of a batch; "
                                "the file is incomplete")
            got += r
    except _UNREADABLE as e:
        raise DataError(f"{source}: not readable ({e.__class__.__name__}: {e})") from None


def _read_npy_header(f, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
    except (ValueError, SyntaxError, *_UNREADABLE) as e:
        raise DataError(f"{source}: not a readable .npy array (bad header: {e})") from None
    raise DataError(f"{source}: .npy format version {version[0]}.{version[1]} is not supported; "
                    "save plain numeric arrays with np.save")


def _read_npy_stream(f, source: str, input_shape: tuple[int, ...], total_size: int | None) -> torch.Tensor:
    """Read a .npy stream (a file or a zip member of ``total_size`` bytes) positioned at its
    magic, converting a batch of samples at a time.

    Shape, dtype and size are checked from the header before any data is read; object
    arrays (pickles) are refused there.
    """
    shape, fortran, dtype = _read_npy_header(f, source)
    if dtype.hasobject:
        raise DataError(f"{source}: refused: object arrays need pickle, which is not loaded")
    check_declared(shape, dtype, input_shape, source)
    n, sample_shape = shape[0], tuple(shape[1:])
    _check_user_size(n, sample_shape, dtype.itemsize, source)
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        available = None if total_size is None else total_size - f.tell()
    except (OSError, ValueError):  # a stream that cannot tell: a short read is caught later
        available = None
    if available is not None and available < nbytes:
        raise DataError(f"{source}: truncated: the header declares shape {shape} of {dtype} ({_human(nbytes)}) "
                        f"but the file holds {_human(max(available, 0))} of data")
    if fortran and len(shape) > 1:
        if nbytes > FORTRAN_MAX_BYTES:
            raise DataError(f"{source}: stored in Fortran (column-major) order, which cannot be read in batches, and "
                            f"larger than {_human(FORTRAN_MAX_BYTES)}; re-save it with "
                            "np.save(path, np.ascontiguousarray(x))")
        buf = np.empty(nbytes, np.uint8)
        _read_exact(f, buf, source)
        return convert_to_id_format(buf.view(dtype).reshape(shape, order="F"), input_shape, source)
    k = batch_size_for(shape)
    per_sample = math.prod(sample_shape) * dtype.itemsize

    def batches():
        buf = np.empty(min(k, n) * per_sample, np.uint8)  # reused: each batch is converted before the next read
        for i in range(0, n, k):
            m = min(k, n - i)
            raw = buf[: m * per_sample]
            _read_exact(f, raw, source)
            yield raw.view(dtype).reshape((m, *sample_shape))
        try:
            f.read(1)  # reach the end, so that a zip member's CRC is checked
        except _UNREADABLE as e:
            raise DataError(f"{source}: not readable ({e.__class__.__name__}: {e})") from None

    return convert_batches(batches(), n, dtype, input_shape, source)


def _read_npz(path: Path, f, input_shape: tuple[int, ...]) -> torch.Tensor:
    try:
        archive = zipfile.ZipFile(f)
    except (ValueError, *_UNREADABLE) as e:
        raise DataError(f"{path}: not a readable .npy/.npz file ({e})") from None
    with archive:
        names = archive.namelist()
        keys = [n[:-4] if n.endswith(".npy") else n for n in names]  # as np.load's NpzFile.files
        if not keys:
            raise DataError(f"{path}: the .npz archive holds no array")
        key = "x" if "x" in keys else keys[0]
        if len(keys) > 1 and key != "x":
            raise DataError(f"{path}: the .npz holds several arrays {keys}; name the images 'x'")
        info = archive.getinfo(names[keys.index(key)])
        source = f"{path} (array {key!r})"
        try:
            member = archive.open(info)
        except _UNREADABLE as e:
            raise DataError(f"{source}: not readable ({e.__class__.__name__}: {e})") from None
        # a compressed member cannot be memory-mapped: its stream is decompressed a batch at a time
        with member:
            return _read_npy_stream(member, source, input_shape, total_size=info.file_size)


def _read_array_file(path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: not a readable .npy/.npz file ({e})") from None
    with f:
        try:
            magic = f.read(6)
            f.seek(0)
        except OSError as e:
            raise DataError(f"{path}: not a readable .npy/.npz file ({e})") from None
        if magic.startswith(b"PK"):
            return _read_npz(path, f, input_shape)
        if magic == b"\x93NUMPY":
            return _read_npy_stream(f, str(path), input_shape, total_size=os.fstat(f.fileno()).st_size)
        if magic[:1] == b"\x80":
            raise DataError(f"{path}: refused: this is a pickle, which is never loaded (it can run code); "
                            "save the images with np.save(path, x) as a numeric array")
        raise DataError(f"{path}: not a readable .npy/.npz file (it starts with neither the .npy nor the zip signature)")


# what decoding a damaged image can raise (PIL's plugins raise more than OSError)
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def _pil_to_unit(im, channels: int, f: Path) -> np.ndarray:
    """One PIL image as float32 (channels, H, W) in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit / 32-bit grey: convert("L") would clip at 255
        a = np.asarray(im).astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"{f}: NaN/Inf pixel values")
        lo, hi = float(a.min()), float(a.max())
        if mode == "F":  # float image: the array rule
            if lo >= 0 and hi <= 1:
                pass
            elif lo >= 0 and hi <= 255:
                a /= 255.0
            else:
                raise DataError(f"{f}: float pixel values span [{lo:g}, {hi:g}]; images must be in [0, 1] or [0, 255]")
        elif lo >= 0 and hi <= 65535:  # 16-bit grey (mode I;16, or I as older Pillow opens 16-bit PNGs)
            a /= 65535.0
        else:
            raise DataError(f"{f}: {mode} pixel values span [{lo:g}, {hi:g}]; integer images must be 8- or 16-bit")
        a = a[None]
        return np.repeat(a, 3, axis=0) if channels == 3 else a
    # palette, RGBA, LA, CMYK, bilevel, ...: PIL's conversion (alpha dropped, palette applied)
    a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _decode_image(f: Path, channels: int) -> np.ndarray:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(f) as im:
            if limit and im.size[0] * im.size[1] > limit:  # PIL only warns up to twice its limit
                raise DataError(f"{f}: refused: the image declares {im.size[0]}x{im.size[1]} pixels, more than "
                                f"{limit:,} (a possible decompression bomb); resize it first")
            return _pil_to_unit(im, channels, f)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{f}: refused: a possible decompression bomb ({e})") from None
    except _IMAGE_ERRORS as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"{f}: unreadable image ({e.__class__.__name__}: {e})") from None


def _read_image_folder(path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Decode the folder's images one at a time into a preallocated (N, C, H, W) tensor.

    Each image is converted to grey (1 channel) or RGB and resized to (H, W) on its own, so
    memory holds one decoded image at a time and images of different sizes mix freely.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    _check_sample_count(len(files), str(path), "images", "a smaller folder")
    c, h, w = input_shape
    out = torch.empty((len(files), c, h, w), dtype=torch.float32)
    for i, f in enumerate(files):
        t = torch.from_numpy(np.ascontiguousarray(_decode_image(f, c)))[None]
        out[i] = resize_images(t, h, w).clamp_(0.0, 1.0)[0]
    return out


def load_user_ood(path, input_shape: tuple[int, ...]) -> tuple[str, torch.Tensor]:
    """Load a user's OOD set from ``.npy``/``.npz`` or an image folder; returns (name, tensor).

    The name is the file stem (or folder name). See :func:`convert_to_id_format` for the
    conversion rules. Pickled (object) arrays are refused. Safety: an array's header (shape,
    dtype, size) is checked before its data are read, and sets above :func:`user_limits`
    (``$OOD_MAX_USER_BYTES``, ``$OOD_MAX_USER_SAMPLES``) are refused; arrays are converted a
    batch of samples at a time and images one at a time, so memory stays bounded by the
    converted output plus a few times ``CHUNK_BYTES``. Damaged or oversized images
    (decompression bombs) raise :class:`DataError` naming the file.
    """
    path = Path(path)
    input_shape = tuple(input_shape)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if len(input_shape) != 3:
            raise DataError(f"{path}: an image folder cannot be an OOD set for a model taking points of shape {input_shape}")
        return path.name, _read_image_folder(path, input_shape)
    if path.suffix.lower() in (".npy", ".npz"):
        return path.stem, _read_array_file(path, input_shape)
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; pass a .npy/.npz array or a folder of images")
