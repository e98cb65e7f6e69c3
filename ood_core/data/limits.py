"""Size limits on user data (array files, image files and folders), checked from what a file
declares (an array header, an image header, a folder listing) before anything is allocated.

Every limit has a default and an environment variable that raises it; a set above a limit is
refused with one :class:`~ood_core.errors.DataError` line that names the file, the limit and
the variable. Together they bound the memory a user set can take:

* ``$OOD_MAX_USER_BYTES`` (:data:`MAX_USER_BYTES`): bytes of array data in a file, and of the
  decoded float32 tensor of an image folder;
* ``$OOD_MAX_USER_SAMPLES`` (:data:`MAX_USER_SAMPLES`): samples (array rows, image files); a
  folder walk stops at this many images and visits at most :func:`walk_limit` entries;
* ``$OOD_MAX_IMAGE_PIXELS`` (:data:`MAX_IMAGE_PIXELS`): pixels (height x width) of one image,
  in an image file or as one sample of an array; one sample of an array also holds at most
  ``4 * MAX_IMAGE_PIXELS`` bytes. Decoding one image takes about 10 bytes per pixel at most.
"""
from __future__ import annotations

import math
import os

from ..errors import DataError

MAX_USER_BYTES = 1 << 30  # bytes of array data in a .npy/.npz file (1 GiB)
MAX_USER_SAMPLES = 100_000  # samples: array rows or image files
MAX_IMAGE_PIXELS = 32_000_000  # pixels of one image (e.g. 6500 x 4900); Pillow's own limit is 89 M
MAX_USER_BYTES_ENV = "OOD_MAX_USER_BYTES"
MAX_USER_SAMPLES_ENV = "OOD_MAX_USER_SAMPLES"
MAX_IMAGE_PIXELS_ENV = "OOD_MAX_IMAGE_PIXELS"
SAMPLE_BYTES_PER_PIXEL = 4  # one array sample: at most this many bytes per pixel of the pixel limit
WALK_ENTRIES_PER_SAMPLE = 4  # a folder walk visits at most this many entries per allowed sample (+ WALK_SLACK)
WALK_SLACK = 10_000
# a checkpoint or weights file read for loading or hashing (4 GiB; the lab's own are < 10 MB)
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_CHECKPOINT_BYTES_ENV = "OOD_MAX_CHECKPOINT_BYTES"


def env_limit(var: str, default: int) -> int:
    """The positive whole number in ``$var``, or ``default`` when it is unset or empty
    (``1_000_000`` and ``3e9`` are accepted); DataError naming the variable otherwise."""
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
    return env_limit(MAX_USER_BYTES_ENV, MAX_USER_BYTES), env_limit(MAX_USER_SAMPLES_ENV, MAX_USER_SAMPLES)


def image_pixel_limit() -> int:
    """Pixels (height x width) one user image may hold: :data:`MAX_IMAGE_PIXELS` or ``$OOD_MAX_IMAGE_PIXELS``."""
    return env_limit(MAX_IMAGE_PIXELS_ENV, MAX_IMAGE_PIXELS)


def walk_limit() -> int:
    """Entries (files and folders) a walk of an image folder visits at most."""
    return WALK_ENTRIES_PER_SAMPLE * user_limits()[1] + WALK_SLACK


def human(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} bytes"
    value = nbytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def check_sample_count(n: int, source: str, what: str = "samples", instead: str = "a subset",
                       at_least: bool = False) -> None:
    """Refuse more than the sample cap (array rows or image files) with the way to raise it."""
    _, max_samples = user_limits()
    if n > max_samples:
        count = f"{'at least ' if at_least else ''}{n:,}{' files' if what == 'images' else ''}"
        raise DataError(f"{source}: too many {what}: {count}, more than the limit of {max_samples:,} for a user "
                        f"set; pass {instead}, or raise the limit with the environment variable "
                        f"{MAX_USER_SAMPLES_ENV}={n}{' or more' if at_least else ''}")


def check_user_size(n: int, sample_shape: tuple[int, ...], itemsize: int, source: str) -> None:
    """Refuse an array above the caps, from its declared shape (before any data is read)."""
    max_bytes, _ = user_limits()
    nbytes = n * math.prod(sample_shape) * itemsize
    if nbytes > max_bytes:
        raise DataError(f"{source}: too large: {n:,} samples of shape {tuple(sample_shape)} hold {human(nbytes)} of "
                        f"data, more than the limit of {human(max_bytes)} for a user OOD set; pass a subset, or "
                        f"raise the limit with the environment variable {MAX_USER_BYTES_ENV}={nbytes}")
    check_sample_count(n, source)


def check_decoded_size(n: int, sample_shape: tuple[int, ...], source: str, factor: int = 1) -> None:
    """Refuse ``n`` samples whose decoded float32 tensor would exceed ``factor`` times the byte
    cap, before any is decoded (image folders: a dataset or an OOD set; ``factor`` 4 for arrays,
    whose cap counts the bytes in the file: a uint8 array becomes 4 times as large)."""
    max_bytes, _ = user_limits()
    nbytes = n * math.prod(sample_shape) * 4
    if nbytes > factor * max_bytes:
        raise DataError(f"{source}: too large: {n:,} samples at the model's input size {tuple(sample_shape)} take "
                        f"{human(nbytes)} as float32, more than the limit of {human(factor * max_bytes)}; pass a "
                        f"subset, or raise the limit with the environment variable "
                        f"{MAX_USER_BYTES_ENV}={-(-nbytes // factor)}")
    check_sample_count(n, source)


def check_image_pixels(width: int, height: int, source: str, what: str = "the image declares") -> None:
    """Refuse an image of more than :func:`image_pixel_limit` pixels (a possible decompression
    bomb, when a file's header declares it)."""
    limit = image_pixel_limit()
    if width * height > limit:
        bomb = " (a possible decompression bomb)" if "declares" in what else ""
        raise DataError(f"{source}: refused: {what} {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), "
                        f"more than the limit of {limit / 1e6:g} megapixels for one image{bomb}; resize it first, "
                        f"or raise the limit with the environment variable {MAX_IMAGE_PIXELS_ENV}={width * height}")


def check_sample_pixels(sample_shape: tuple[int, ...], itemsize: int, layout: str, source: str) -> None:
    """Refuse an array whose single sample (``sample_shape``, layout nhw/nhwc/nchw) holds more
    pixels than an image may, or more than ``SAMPLE_BYTES_PER_PIXEL`` bytes per allowed pixel."""
    if layout == "nhw":
        h, w = sample_shape
    elif layout == "nhwc":
        h, w = sample_shape[:2]
    else:
        h, w = sample_shape[1:]
    check_image_pixels(w, h, source, "one sample holds")
    limit = image_pixel_limit()
    nbytes = math.prod(sample_shape) * itemsize
    if nbytes > SAMPLE_BYTES_PER_PIXEL * limit:
        raise DataError(f"{source}: refused: one sample of shape {tuple(sample_shape)} holds {human(nbytes)}, more "
                        f"than the limit of {human(SAMPLE_BYTES_PER_PIXEL * limit)} per sample; store the images "
                        f"smaller (or as uint8), or raise the limit with the environment variable "
                        f"{MAX_IMAGE_PIXELS_ENV}={-(-nbytes // SAMPLE_BYTES_PER_PIXEL)}")


def checkpoint_byte_limit() -> int:
    """Bytes a checkpoint (or an imported model's weights file) may hold: :data:`MAX_CHECKPOINT_BYTES`
    or ``$OOD_MAX_CHECKPOINT_BYTES``."""
    return env_limit(MAX_CHECKPOINT_BYTES_ENV, MAX_CHECKPOINT_BYTES)
