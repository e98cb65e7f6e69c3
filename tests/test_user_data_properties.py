"""Property-based: whatever bytes a user's ``.npy`` or image file holds, ``load_user_ood`` either
refuses it with one ``DataError`` line or returns a tensor of the model's shape, of bounded
size, with finite values in [0, 1]. Never another exception, never a traceback in the message.

Random ``.npy`` headers (random bytes after the magic, random shapes with negative or huge
dimensions, random dtypes, truncated data) and random image files (random bytes, truncated
PNG/JPEG/GIF/BMP/TIFF/WebP, huge declared sizes) are written to a temporary folder.
"""
from __future__ import annotations

import io
import math
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ood_core import data as D
from ood_core.errors import DataError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SHAPES = [(1, 8, 8), (3, 8, 8), (2,)]
MAX_OUTPUT = 4 * D.MAX_USER_BYTES  # the converted tensor never exceeds this (limits.check_decoded_size)


def _check_outcome(path: Path, input_shape) -> tuple[str, str]:
    """``("error", message)`` or ``("ok", "")``, after checking the property."""
    try:
        _, x = D.load_user_ood(path, input_shape)
    except DataError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg, repr(msg)
        assert path.name in msg, msg  # names the file
        return "error", msg
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape[1:]) == tuple(input_shape) and x.shape[0] >= 1
    assert x.numel() * 4 <= MAX_OUTPUT
    assert torch.isfinite(x).all()
    if len(input_shape) == 3:  # images are in [0, 1]; points are not rescaled
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    return "ok", ""


# --------------------------------------------------------------------------- .npy
_DESCRS = ["|u1", "|i1", "<u2", ">u2", "<i4", "<f2", "<f4", ">f8", "<f8", "|b1", "<c8", "|O", "<U3", "|V4",
           "<M8[s]", "|S2", "<f16", "<i8", "garbage", "[('a', '<f4')]", "('<f4', (2,))"]
_dims = st.one_of(st.integers(-3, 12), st.sampled_from([2 ** 31, 2 ** 40, 2 ** 63, 10 ** 30, 16000]))


@st.composite
def npy_files(draw) -> bytes:
    kind = draw(st.sampled_from(["header", "random-after-magic", "valid-truncated"]))
    if kind == "random-after-magic":
        version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x00\x07"]))
        return b"\x93NUMPY" + version + draw(st.binary(max_size=200))
    if kind == "valid-truncated":
        shape = draw(st.sampled_from([(4, 8, 8), (3, 8, 8, 3), (2, 3, 8, 8), (5, 2), (6, 16, 16)]))
        dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_]))
        arr = np.random.default_rng(draw(st.integers(0, 99))).random(shape)
        arr = (arr * draw(st.sampled_from([1.0, 255.0, 300.0, -1.0]))).astype(dtype)
        if draw(st.booleans()) and dtype in (np.float32, np.float64):
            arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        buf = io.BytesIO()
        np.save(buf, arr)
        raw = buf.getvalue()
        cut = draw(st.integers(0, len(raw)))
        return raw[:cut] if draw(st.booleans()) else raw
    # a header written by hand: any descr, shape, order; a little (or no) data after it
    first = draw(st.sampled_from([-1, -7, 0, 1, 2, 5, 2 ** 40]))  # the sample count: negative ones often
    shape = tuple(draw(st.lists(_dims, min_size=0, max_size=4)))
    shape = (first, *shape) if draw(st.integers(0, 4)) else shape
    descr = draw(st.sampled_from(_DESCRS))
    fortran = draw(st.booleans())
    descr_text = descr if descr.startswith(("[", "(")) else repr(descr)
    header = f"{{'descr': {descr_text}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    header = header.encode("latin1")
    header += b" " * ((-(len(header) + 11)) % 64) + b"\n"
    version2 = draw(st.booleans())
    head = b"\x93NUMPY" + (b"\x02\x00" + struct.pack("<I", len(header)) if version2
                           else b"\x01\x00" + struct.pack("<H", len(header)))
    return head + header + draw(st.binary(max_size=600))


@SETTINGS
@given(content=npy_files(), input_shape=st.sampled_from(SHAPES), as_npz=st.booleans())
def test_random_npy_files_give_a_tensor_or_one_line(content, input_shape, as_npz):
    import zipfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("case.npz" if as_npz else "case.npy")
        if as_npz:
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("x.npy", content)
        else:
            path.write_bytes(content)
        _check_outcome(path, input_shape)


def test_npy_header_edge_cases_are_refused():
    """Deterministic cases of the property (each used to escape or allocate): negative and
    huge dimensions, and one sample larger than the pixel limit."""
    cases = {(-1, 8, 8): "negative", (2, -8, 8): "negative", (2 ** 40, 8, 8): "too large",
             (1, 16000, 16000): "16000x16000 pixels", (2, 8, 2 ** 62): "too large"}
    with tempfile.TemporaryDirectory() as d:
        for shape, word in cases.items():
            p = Path(d) / "edge.npy"
            with open(p, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            with pytest.raises(DataError, match=word):
                D.load_user_ood(p, (1, 8, 8))


# --------------------------------------------------------------------------- images
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encoded(fmt: str, seed: int, size: tuple[int, int], mode: str) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    if fmt in ("JPEG",) and im.mode not in ("L", "RGB", "CMYK"):
        im = im.convert("RGB")
    if fmt in ("GIF", "BMP", "WEBP") and im.mode == "I;16":
        im = im.convert("L")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def image_files(draw) -> tuple[str, bytes, int]:
    """``(suffix, content, pixels its header declares: 0 when not known)``."""
    kind = draw(st.sampled_from(["random", "truncated", "damaged", "declared-huge", "valid"]))
    suffix = draw(st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=400)), 0
    if kind == "declared-huge":  # a tiny PNG whose header declares a huge (or zero) size
        w = draw(st.sampled_from([0, 1, 9000, 40_000, 2 ** 31 - 1]))
        h = draw(st.sampled_from([0, 1, 9000, 40_000, 2 ** 31 - 1]))
        depth, colour = draw(st.sampled_from([(8, 0), (1, 0), (16, 0), (8, 2), (8, 6), (8, 3), (3, 7)]))
        ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
        return ".png", (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(64)))
                        + _chunk(b"IEND", b"")), w * h
    fmt = {".png": "PNG", ".jpg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF", ".webp": "WEBP"}[suffix]
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16", "CMYK", "LA"]))
    if fmt == "WEBP":
        from PIL import features

        if not features.check("webp"):
            fmt, suffix = "PNG", ".png"
    try:
        raw = _encoded(fmt, draw(st.integers(0, 50)), (draw(st.integers(1, 24)), draw(st.integers(1, 24))), mode)
    except (OSError, ValueError, KeyError):  # a mode this format cannot store: save it as PNG
        raw = _encoded("PNG", 0, (8, 8), "RGB")
    if kind == "truncated":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif kind == "damaged":
        raw = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            j = draw(st.integers(0, len(raw) - 1))
            raw[j] = draw(st.integers(0, 255))
        raw = bytes(raw)
    return suffix, raw, 0


@SETTINGS
@given(image=image_files(), input_shape=st.sampled_from(SHAPES[:2]), in_folder=st.booleans())
def test_random_image_files_give_a_tensor_or_one_line(image, input_shape, in_folder):
    suffix, content, declared = image
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "imgs"
        folder.mkdir()
        (folder / f"img{suffix}").write_bytes(content)
        outcome, msg = _check_outcome(folder, input_shape)
        if declared > D.MAX_IMAGE_PIXELS:  # refused from the header, before any pixel is decoded
            assert outcome == "error" and "refused" in msg and ("megapixels" in msg or "bomb" in msg), msg
        if in_folder and outcome == "ok":  # a good image beside it: both converted, in order
            from PIL import Image

            Image.new("RGB", (5, 7), (255, 0, 0)).save(folder / "zz_red.png")
            _, x = D.load_user_ood(folder, input_shape)
            assert x.shape[0] == 2 and math.isclose(float(x[1].max()), 1.0 if input_shape[0] == 3 else 0.299,
                                                    abs_tol=0.01)
