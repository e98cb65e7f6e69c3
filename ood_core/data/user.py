"""User OOD sets: ``.npy``/``.npz`` arrays and image folders (CLI ``--ood-file``, app uploads).

:func:`load_user_ood` reads a file or folder and converts it to the ID format with the
rules of :mod:`.convert`. Reading is safe and bounded: headers (shape, dtype, size) are
checked before any data are read, pickles are never loaded, and sets above the size caps
(:func:`user_limits`) are refused with the way to raise them; one sample (an image file or
an array row) may hold at most :func:`image_pixel_limit` pixels. Only regular files are
opened (FIFOs, devices and links to them are refused before opening), and image folders
are walked with the bounds of :mod:`.images`.
"""
from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fileio import open_regular
from .convert import batch_size_for, check_declared, convert_batches, convert_to_id_format, image_layout
from .images import decode_unit, list_images
from .limits import (MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV, MAX_USER_BYTES, MAX_USER_BYTES_ENV,  # noqa: F401
                     MAX_USER_SAMPLES, MAX_USER_SAMPLES_ENV, check_decoded_size, check_sample_pixels,
                     check_user_size, env_limit, human, image_pixel_limit, user_limits)

# Limits on a user OOD set (an array file or an image folder, CLI ``--ood-file`` and app
# uploads alike): see :mod:`.limits`. The data are converted in batches of samples (images one
# at a time) into a preallocated tensor of the model's input shape, so peak memory is the
# converted output (capped) plus a few times convert.CHUNK_BYTES of work space plus one
# sample (capped by the pixel limit), whatever the file size.
FORTRAN_MAX_BYTES = 64 << 20  # column-major (Fortran-order) arrays cannot be read a batch of samples at a time

# what reading a .npy/.npz (a zip, read lazily) can raise when the file is damaged
_UNREADABLE = (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError)

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
    check_user_size(n, sample_shape, dtype.itemsize, source)
    if len(input_shape) == 3:  # one sample is decoded at a time: bounded like one image file
        check_sample_pixels(sample_shape, dtype.itemsize, image_layout(shape, source), source)
    check_decoded_size(n, input_shape, source, factor=4)
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        available = None if total_size is None else total_size - f.tell()
    except (OSError, ValueError):  # a stream that cannot tell: a short read is caught later
        available = None
    if available is not None and available < nbytes:
        raise DataError(f"{source}: truncated: the header declares shape {shape} of {dtype} ({human(nbytes)}) "
                        f"but the file holds {human(max(available, 0))} of data")
    if fortran and len(shape) > 1:
        if nbytes > FORTRAN_MAX_BYTES:
            raise DataError(f"{source}: stored in Fortran (column-major) order, which cannot be read in batches, and "
                            f"larger than {human(FORTRAN_MAX_BYTES)}; re-save it with "
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
    f = open_regular(path, DataError)  # a FIFO would block, a link to /dev/zero never end
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


def _read_image_folder(path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Decode the folder's images one at a time into a preallocated (N, C, H, W) tensor.

    The folder walk is bounded and checked (:func:`.images.list_images`); each image is
    converted to grey (1 channel) or RGB and resized to (H, W) on its own
    (:func:`.images.decode_unit`), so memory holds one decoded image at a time and images of
    different sizes mix freely.
    """
    files = list_images(path)
    check_decoded_size(len(files), input_shape, str(path))
    c, h, w = input_shape
    out = torch.empty((len(files), c, h, w), dtype=torch.float32)
    for i, f in enumerate(files):
        out[i] = decode_unit(f, c, h, w)
    return out


def load_user_ood(path, input_shape: tuple[int, ...]) -> tuple[str, torch.Tensor]:
    """Load a user's OOD set from ``.npy``/``.npz`` or an image folder; returns (name, tensor).

    The name is the file stem (or folder name). See :func:`convert_to_id_format` for the
    conversion rules. Pickled (object) arrays are refused. Safety: an array's header (shape,
    dtype, size) is checked before its data are read, and sets above :func:`user_limits`
    (``$OOD_MAX_USER_BYTES``, ``$OOD_MAX_USER_SAMPLES``) are refused; arrays are converted a
    batch of samples at a time and images one at a time, so memory stays bounded by the
    converted output plus a few times ``CHUNK_BYTES`` plus one sample, itself bounded by
    :func:`image_pixel_limit` (``$OOD_MAX_IMAGE_PIXELS``). Damaged or oversized images
    (decompression bombs), non-regular files (FIFOs, devices) and folders with links to
    folders or repeated files raise :class:`DataError` naming the file.
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
