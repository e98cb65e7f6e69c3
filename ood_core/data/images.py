"""Reading image files and image folders safely: one decoder for user OOD folders, uploads,
``imagefolder:`` datasets (and ``import``) and the real OOD image sets.

Decoding (:func:`load_image`, then :func:`decode_unit` or :func:`decode_uint8`):

* only regular files are opened (a FIFO, device or socket, also behind a symbolic link, is
  refused before it is opened: :func:`ood_core.fileio.open_regular`);
* only the formats of :data:`IMAGE_FORMATS` are decoded, whatever the file's suffix;
* the pixel count is checked from the header before any pixel is decoded
  (:func:`~.limits.check_image_pixels`, ``$OOD_MAX_IMAGE_PIXELS``); a JPEG above it is
  decoded at 1/2, 1/4 or 1/8 scale by libjpeg when that brings it under the limit;
* the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so photos come in
  upright (not for the published real OOD sets, which are read as their benchmarks do);
* 16- and 32-bit grey images are scaled by their bit depth, not clipped at 255;
* a damaged file, or one Pillow cannot decode, raises one :class:`DataError` line naming it.

Memory: one decoded image at a time, about 10 bytes per pixel at most, so well under
``10 * MAX_IMAGE_PIXELS`` bytes whatever the file.

Folders (:func:`list_images`, :func:`list_class_images`): the walk never follows a symbolic
link to a folder below the class folders (a link loop would repeat images), refuses a file
that is not a regular one, the same file reached twice (through a link or a hard link: it
would be counted twice, or land in both train and test), and stops after the sample cap
(``$OOD_MAX_USER_SAMPLES``) or :func:`~.limits.walk_limit` entries, or past
:data:`MAX_DEPTH` nested folders, so a huge or endless tree (``/proc``) is refused quickly.
"""
from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fileio import open_regular, regular_file_problem
from .convert import IMAGE_SUFFIXES, resize_images
from .limits import (MAX_USER_SAMPLES_ENV, check_image_pixels, check_sample_count, image_pixel_limit, user_limits,
                     walk_limit)

# what Pillow may decode (by content, whatever the suffix); its other plugins are not needed
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM")  # JPEG includes MPO
DEEP_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # 16-/32-bit grey: scaled by bit depth
GREY_MODES = ("1", "L", "LA", "La", *DEEP_MODES)
MAX_DEPTH = 32  # nested folders below an image folder (or a class folder)

# what decoding a damaged image can raise (Pillow's plugins raise more than OSError)
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                 zlib.error, ZeroDivisionError, OverflowError)


# --------------------------------------------------------------------------- one image
def _check_declared_size(im, path) -> None:
    """Refuse an image whose header declares more pixels than the limit, before decoding it; a
    JPEG above the limit is decoded at the smallest reduced scale (1/2, 1/4, 1/8) that fits."""
    w, h = im.size
    limit = image_pixel_limit()
    if w * h > limit and im.format in ("JPEG", "MPO"):
        for s in (2, 4, 8):
            if math.ceil(w / s) * math.ceil(h / s) <= limit:
                im.draft(None, (max(1, w // s), max(1, h // s)))
                break
        if im.size[0] * im.size[1] <= limit:
            return
    check_image_pixels(w, h, str(path))


def load_image(path, channels: int, exif: bool = True, keep_deep: bool = False):
    """The image file ``path`` decoded (checked as the module says), in mode ``L`` (grey, or
    ``channels == 1``) or ``RGB``; with ``keep_deep`` a 16-/32-bit grey image keeps its mode
    (one of :data:`DEEP_MODES`). Alpha is dropped, palettes are applied."""
    from PIL import Image, ImageOps

    f = open_regular(path, DataError)
    with f:
        try:
            im = Image.open(f, formats=IMAGE_FORMATS)
            _check_declared_size(im, path)
            im.load()
            if exif:
                ImageOps.exif_transpose(im, in_place=True)
            if im.size[0] * im.size[1] > image_pixel_limit():  # pragma: no cover - a header that lied
                check_image_pixels(*im.size, str(path), "the decoded image holds")
            if keep_deep and im.mode in DEEP_MODES:
                return im
            target = "L" if channels == 1 or im.mode in GREY_MODES else "RGB"
            if im.mode == target:
                return im
            out = _deep_to_l(im, path) if im.mode in DEEP_MODES else im.convert(target)
            im.close()  # frees the decoded original before the caller makes its copies
            return out if out.mode == target else out.convert(target)
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{path}: refused: a possible decompression bomb ({' '.join(str(e).split())})") from None
        except _IMAGE_ERRORS as e:  # UnidentifiedImageError is an OSError
            detail = " ".join(str(e).split())[:200]
            raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {detail})") from None


def deep_to_unit(im, path) -> np.ndarray:
    """A 16-/32-bit grey image as float32 (H, W) in [0, 1]: 16-bit by 65535, float images by
    the array rule ([0, 1] kept, [0, 255] divided by 255)."""
    mode = im.mode
    a = np.asarray(im).astype(np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{path}: NaN/Inf pixel values")
    lo, hi = float(a.min()), float(a.max())
    if mode == "F":
        if lo >= 0 and hi <= 1:
            pass
        elif lo >= 0 and hi <= 255:
            a /= 255.0
        else:
            raise DataError(f"{path}: float pixel values span [{lo:g}, {hi:g}]; images must be in [0, 1] or [0, 255]")
    elif lo >= 0 and hi <= 65535:  # 16-bit grey (mode I;16, or I as older Pillow opens 16-bit PNGs)
        a /= 65535.0
    else:
        raise DataError(f"{path}: {mode} pixel values span [{lo:g}, {hi:g}]; integer images must be 8- or 16-bit")
    return a


def _deep_to_l(im, path):
    from PIL import Image

    return Image.fromarray(np.rint(deep_to_unit(im, path) * 255.0).astype(np.uint8), "L")


def decode_unit(path, channels: int, h: int, w: int) -> torch.Tensor:
    """The image file ``path`` as float32 (channels, h, w) in [0, 1], resized bilinearly
    (antialiased) from the decoded image, one band at a time (user OOD folders and uploads)."""
    im = load_image(path, channels, keep_deep=True)
    if im.mode in DEEP_MODES:
        bands, scale = [deep_to_unit(im, path)], 1.0
    else:
        bands, scale = (list(im.split()) if im.mode == "RGB" else [im]), 255.0
    im = None  # the bands hold the pixels now
    out = torch.empty((len(bands), h, w), dtype=torch.float32)
    for i in range(len(bands)):
        band, bands[i] = bands[i], None
        t = torch.from_numpy(np.asarray(band, dtype=np.float32))
        del band
        out[i] = resize_images(t[None, None], h, w)[0, 0]
        del t
    if scale != 1.0:
        out /= scale
    out.clamp_(0.0, 1.0)
    return out.expand(channels, h, w) if out.shape[0] != channels else out


def decode_uint8(path, channels: int, size, resize: int | None = None, exif: bool = True) -> np.ndarray:
    """The image file ``path`` as uint8 (H, W, channels) at ``size`` (H, W): a bilinear resize,
    or with ``resize`` the shorter side scaled to it and the centre cut out (image folders and
    the real OOD image sets)."""
    im = load_image(path, channels, exif=exif)
    if channels == 3 and im.mode != "RGB":
        im = im.convert("RGB")
    try:
        im = _resize_crop(im, size, resize)
    except _IMAGE_ERRORS as e:  # pragma: no cover - a decoded image always resizes
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
    return np.asarray(im).reshape(size[0], size[1], channels)


def _resize_crop(im, size, resize: int | None):
    """``im`` at ``size`` (H, W): a plain bilinear resize, or with ``resize`` the shorter side
    scaled to ``resize`` and the centre ``size`` cut out (torchvision's eval transform)."""
    from PIL import Image

    if not resize:
        return im.resize((size[1], size[0]), Image.BILINEAR)
    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(size[1], round(w * scale)), max(size[0], round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size[1]) // 2, (h - size[0]) // 2
    return im.crop((left, top, left + size[1], top + size[0]))


# --------------------------------------------------------------------------- folders
class _Walk:
    """A bounded walk of one folder tree (see the module doc); ``seen`` maps each image's
    (device, inode) to its path, shared between the walks of one dataset."""

    def __init__(self, source: str, seen: dict | None = None):
        self.source = source
        self.seen = {} if seen is None else seen
        self.entries = 0
        self.max_entries = walk_limit()
        self.images = 0
        self.max_images = user_limits()[1]

    def _scandir(self, folder: str) -> list:
        try:
            with os.scandir(folder) as it:
                out = []
                for entry in it:
                    self.entries += 1
                    if self.entries > self.max_entries:
                        raise DataError(f"{self.source}: more than {self.max_entries:,} files and folders below it; "
                                        "not an image folder? pass a folder that holds the images only (the walk "
                                        f"grows with the sample limit, environment variable {MAX_USER_SAMPLES_ENV})")
                    out.append(entry)
                return out
        except DataError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(f"{folder}: cannot list the folder ({getattr(e, 'strerror', None) or e})") from None

    def _image(self, entry) -> bool:
        """Whether ``entry`` is an image file to read; refuses links to folders and
        non-regular or repeated image files."""
        path = entry.path
        link = entry.is_symlink()
        if link:
            try:
                target = os.stat(path)
            except OSError:
                target = None
            if target is not None and stat.S_ISDIR(target.st_mode):
                raise DataError(f"{path}: a symbolic link to a folder; links to folders are not followed inside an "
                                "image folder (they can loop or repeat images); copy or move the images there")
        if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
            return False
        problem = regular_file_problem(path)
        if problem:
            raise DataError(f"{path}: {problem}; an image folder may hold image files only")
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        first = self.seen.get(key)
        if first is not None:
            raise DataError(f"{path}: the same file as {first} (a link or a hard link); each image may appear once "
                            "in an image folder, else it is counted twice (or lands in both train and test)")
        self.seen[key] = path
        self.images += 1
        if self.images > self.max_images:
            check_sample_count(self.images, self.source, "images", "a smaller folder", at_least=True)
        return True

    def files(self, top: str) -> list[tuple[str, list[str]]]:
        """``[(folder, [image file names])]`` of every folder below ``top`` (``top`` included),
        in ``os.walk`` order, sorted as ``sorted(os.walk(top))`` sorts them."""
        found, stack = [], [(top, 0)]
        while stack:
            folder, depth = stack.pop()
            names = []
            for entry in self._scandir(folder):
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    if depth + 1 > MAX_DEPTH:
                        raise DataError(f"{entry.path}: nested more than {MAX_DEPTH} folders deep below "
                                        f"{self.source}; not an image folder?")
                    stack.append((entry.path, depth + 1))
                elif self._image(entry):
                    names.append(entry.name)
            found.append((folder, sorted(names)))
        return sorted(found)


def _top(path) -> Path:
    path = Path(path).expanduser()
    problem = None if path.is_dir() else ("no such folder" if not path.exists() else "not a folder")
    if problem:
        raise DataError(f"{path}: {problem}; pass a folder of images")
    return path


def list_images(path, seen: dict | None = None) -> list[Path]:
    """Every image file below the folder ``path`` (any depth), sorted by path; bounded and
    checked as the module says. DataError when there is none."""
    path = _top(path)
    walk = _Walk(str(path), seen)
    files = sorted(Path(folder) / name for folder, names in walk.files(str(path)) for name in names)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return files


def list_class_images(path, seen: dict | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """``(class names, [(image file, class index)])`` of a labelled folder ``<path>/<class>/...``
    (torchvision's ImageFolder layout and order: classes sorted by name, files as
    ``sorted(os.walk(class folder))``; a class folder may be a link, folders below it may not).
    DataError for no class folder or a class folder without images."""
    path = _top(path)
    walk = _Walk(str(path), seen)
    classes = []
    for entry in walk._scandir(str(path)):
        try:
            if entry.is_dir():  # a link to a folder counts as a class folder, as in torchvision
                classes.append(entry.name)
        except OSError:
            continue
    classes.sort()
    if not classes:
        raise DataError(f"{path}: no class folders; an image folder holds one sub-folder of images per class "
                        "(<path>/<class>/<image>)")
    samples, empty = [], []
    for k, name in enumerate(classes):
        before = len(samples)
        for folder, names in walk.files(os.path.join(str(path), name)):
            samples.extend((os.path.join(folder, n), k) for n in names)
        if len(samples) == before:
            empty.append(name)
    if empty:
        raise DataError(f"{path}: class folder(s) {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''} hold no "
                        f"image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes, samples
