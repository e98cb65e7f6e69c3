"""Conversion of image and point arrays to a benchmark's ID format (shape and [0, 1] range).

One set of rules for every source: user files and uploads (:mod:`.user`), the real
datasets' OOD sets (:mod:`.real`) and the far-real crops (:mod:`.embedded`). See
:func:`convert_to_id_format` for the rules.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError

# image files read from a folder (user OOD folders, uploads, the real OOD image sets)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CHUNK_BYTES = 16 << 20  # float32 work space per batch of samples


def _image_layout(shape: tuple[int, ...], source: str) -> str:
    """"nhw", "nhwc" or "nchw" for (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1,3,4}."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4:
        if shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
            return "nhwc"
        if shape[1] not in (1, 3, 4):
            raise DataError(f"{source}: shape {shape} has no channel axis of size 1, 3 or 4")
        return "nchw"
    raise DataError(f"{source}: shape {shape} is not an image batch; "
                    "expected (N, H, W), (N, H, W, C) or (N, C, H, W)")


image_layout = _image_layout


def _as_nchw_view(arr: np.ndarray, source: str) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) as an (N, C, H, W) view (no copy; alpha kept)."""
    layout = _image_layout(arr.shape, source)
    if layout == "nhw":
        return arr[:, None]
    if layout == "nhwc":
        return arr.transpose(0, 3, 1, 2)
    return arr


def as_nchw(arr: np.ndarray, channels: int, source: str) -> np.ndarray:
    """Accept (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1,3,4}; return (N, channels, H, W)."""
    layout = _image_layout(arr.shape, source)
    if layout == "nhw":
        arr = arr[:, None]
    elif layout == "nhwc":
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] == 4:
        arr = arr[:, :3]  # drop alpha
    if arr.shape[1] == 3 and channels == 1:
        arr = (0.299 * arr[:, 0] + 0.587 * arr[:, 1] + 0.114 * arr[:, 2])[:, None]
    elif arr.shape[1] == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=1)
    return arr


def check_declared(shape: tuple[int, ...], dtype: np.dtype, input_shape: tuple[int, ...], source: str) -> None:
    """Validate the shape and dtype an array declares (a file header), before reading data."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise DataError(f"{source}: the header declares a negative dimension (shape {shape}); the file is damaged")
    if len(shape) >= 1 and math.prod(shape) == 0:
        raise DataError(f"{source}: no samples (shape {shape})")
    if len(input_shape) == 1:
        if len(shape) != 2 or shape[1] != input_shape[0]:
            raise DataError(f"{source}: shape {shape} does not fit this model; it takes (N, {input_shape[0]}) points")
        if dtype.kind not in "fiu":
            raise DataError(f"{source}: dtype {dtype} is not numeric")
        return
    if dtype.kind not in "fiub":
        raise DataError(f"{source}: dtype {dtype} is not numeric; save images as uint8 or float arrays")
    _image_layout(shape, source)


def batch_size_for(shape: tuple[int, ...]) -> int:
    """Samples per batch so that one batch in float32 takes about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // max(1, 4 * math.prod(shape[1:])))


def resize_images(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Images (N, C, H', W') resized bilinearly (antialiased) to (H, W); unchanged if already that size."""
    if t.shape[-2:] == (h, w):
        return t
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def convert_batches(batches, n: int, dtype: np.dtype, input_shape: tuple[int, ...], source: str) -> torch.Tensor:
    """Convert samples arriving in consecutive batches into a preallocated (n, *input_shape) tensor.

    The range rule needs the range of the whole array, so float/int batches are converted
    unscaled while their range is tracked, and the whole output is divided by 255 at the end
    when the values are 0..255 (every step in between is linear, so this equals scaling first).
    """
    if len(input_shape) == 1:
        out = torch.empty((n, input_shape[0]), dtype=torch.float32)
        start, bad = 0, False
        for batch in batches:
            with np.errstate(over="ignore"):  # beyond the float32 range -> inf, refused below
                x = np.asarray(batch, dtype=np.float32)
            bad = bad or not np.isfinite(x).all()
            if not bad:
                out[start:start + len(x)] = torch.from_numpy(x)
            start += len(x)
        if bad:
            raise DataError(f"{source}: contains NaN/Inf values (or values beyond the float32 range); "
                            "replace them before evaluating")
        return out
    c, h, w = input_shape
    fixed = 255.0 if dtype == np.uint8 else (1.0 if dtype.kind == "b" else None)
    out = torch.empty((n, c, h, w), dtype=torch.float32)
    start, bad, lo, hi = 0, 0, np.inf, -np.inf
    for batch in batches:
        m = len(batch)
        x = _as_nchw_view(np.asarray(batch), source)
        kept = 3 if x.shape[1] >= 3 else 1  # alpha dropped
        bands = []
        # one channel at a time in float32: the work space is a third of the batch's (a large
        # sample costs 4 bytes per pixel); every step is linear per pixel, so resizing before
        # the channel conversion (luminance, repetition) equals converting first
        for ch in range(x.shape[1]):
            with np.errstate(over="ignore"):  # beyond the float32 range -> inf, refused below
                xc = x[:, ch].astype(np.float32)  # a copy: modified in place below
            if fixed is None:
                nonfinite = xc.size - int(np.count_nonzero(np.isfinite(xc)))
                bad += nonfinite
                if not nonfinite:
                    lo, hi = min(lo, float(xc.min())), max(hi, float(xc.max()))
            if ch >= kept or bad or lo < 0 or hi > 255:  # refused below; only keep counting
                continue
            if fixed is not None and fixed != 1.0:
                xc /= fixed
            bands.append(resize_images(torch.from_numpy(xc)[:, None], h, w)[:, 0])
            del xc
        if len(bands) == kept:
            if kept == 3 and c == 1:
                out[start:start + m, 0] = 0.299 * bands[0] + 0.587 * bands[1] + 0.114 * bands[2]
            elif kept == 1:
                out[start:start + m] = bands[0][:, None]  # broadcast: grey -> RGB by repetition
            else:
                out[start:start + m] = torch.stack(bands, 1)
        start += m
    if start != n:  # pragma: no cover - the readers yield exactly n samples
        raise AssertionError(f"{source}: converted {start} of {n} samples")
    if bad:
        raise DataError(f"{source}: {bad} NaN/Inf value(s); replace them before evaluating")
    if fixed is None:
        if lo >= 0.0 and hi <= 1.0:
            pass
        elif lo >= 0.0 and hi <= 255.0:
            out /= 255.0  # 0..255 pixel values stored as float/int
        else:
            raise DataError(f"{source}: values span [{lo:g}, {hi:g}]; images must be in [0, 1] or [0, 255]")
    return out.clamp_(0.0, 1.0)


def convert_to_id_format(arr: np.ndarray, input_shape: tuple[int, ...], source: str = "array") -> torch.Tensor:
    """Convert a user array to the ID format ``input_shape`` (C, H, W) or (D,), range [0, 1].

    Rules: uint8 is divided by 255; float/int arrays in [0, 1] are kept, in [0, 255]
    divided by 255, anything else is refused, as are NaN/Inf. Channels: RGB(A) -> grey by
    luminance when the model takes 1 channel, grey -> RGB by repetition. Spatial size:
    bilinear resize with antialiasing. Vector datasets (toy2d) need an (N, D) array and are
    not rescaled. The conversion runs in batches of about ``CHUNK_BYTES`` (float32) into a
    preallocated output, so ``arr`` may be a memory map larger than the memory.
    """
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    input_shape = tuple(input_shape)
    check_declared(arr.shape, arr.dtype, input_shape, source)
    k = batch_size_for(arr.shape)
    batches = (arr[i:i + k] for i in range(0, arr.shape[0], k))
    return convert_batches(batches, arr.shape[0], arr.dtype, input_shape, source)
