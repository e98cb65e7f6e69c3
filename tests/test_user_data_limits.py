"""Reliability of user OOD sets (issue 7): bounded memory, size caps, damaged and odd inputs.

Every test here fails without the protection it names: streaming conversion (peak memory
far below the file size), the caps checked from the header before any data are read,
global (not per-batch) range rules, clear DataErrors for damaged files and decompression
bombs, and correct conversion of 16-bit, palette and RGBA images.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_core import data as D
from ood_core.data import convert, user  # the modules whose settings the tests patch
from ood_core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _reference(arr: np.ndarray, input_shape) -> np.ndarray:
    """The conversion rules applied to the whole array at once (no batches), in float64."""
    a = np.asarray(arr).astype(np.float64)
    if arr.dtype == np.uint8:
        a = a / 255.0
    elif arr.dtype.kind != "b" and not (a.min() >= 0 and a.max() <= 1):
        a = a / 255.0
    if a.ndim == 3:
        a = a[:, None]
    elif a.shape[1] not in (1, 3, 4):
        a = a.transpose(0, 3, 1, 2)
    a = a[:, :3]
    c, h, w = input_shape
    if a.shape[1] == 3 and c == 1:
        a = (0.299 * a[:, 0] + 0.587 * a[:, 1] + 0.114 * a[:, 2])[:, None]
    elif a.shape[1] == 1 and c == 3:
        a = np.repeat(a, 3, axis=1)
    t = torch.from_numpy(a)
    if t.shape[-2:] != (h, w):
        t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp(0, 1).numpy()


# --------------------------------------------------------------------------- bounded memory
_MEMORY_SCRIPT = r"""
import json, os, resource, sys, time
import numpy as np
from ood_core.data import load_user_ood

path, n = sys.argv[1], int(sys.argv[2])
m = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 64, 64))  # sparse: no RAM needed
m[::1000] = 255  # every 1000th sample white, the rest black
m.flush()
del m
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
name, x = load_user_ood(path, (1, 8, 8))
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
white = x[::1000].min().item() == 1.0
black = x[1::1000].max().item() == 0.0
print(json.dumps({"shape": list(x.shape), "file": os.path.getsize(path), "peak_before": before,
                  "peak_after": after, "seconds": seconds, "white": white, "black": black}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB and sparse files: Linux")
def test_large_npy_is_converted_in_bounded_memory(tmp_path):
    # ~1 GB of uint8 images; loading it whole would need ~1 GB (plus ~4 GB as float32)
    n = 250_000
    path = tmp_path / "big.npy"
    env = dict(os.environ, OOD_MAX_USER_BYTES=str(2 << 30), OOD_MAX_USER_SAMPLES=str(10 * n),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # started by a shell that forks it: on Linux ru_maxrss survives exec, so python run straight
    # from this pytest process would start at this process's peak and hide its own growth
    proc = subprocess.run(["/bin/sh", "-c", '"$0" "$@"', sys.executable, "-c", _MEMORY_SCRIPT, str(path), str(n)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nfile {r['file'] / 2**20:.0f} MiB, peak RSS {r['peak_before'] / 2**20:.0f} -> "
          f"{r['peak_after'] / 2**20:.0f} MiB, {r['seconds']:.1f} s")
    assert r["shape"] == [n, 1, 8, 8] and r["white"] and r["black"]
    assert r["file"] > 900e6
    growth = r["peak_after"] - r["peak_before"]  # the load's own peak, the imports (torch) excluded
    assert growth < 0.4 * r["file"], f"loading grew the peak RSS by {growth / 2**20:.0f} MiB"
    # and the output itself (250k x 64 floats = 61 MiB) is most of what was added
    assert growth < 64 * 2**20 + 8 * convert.CHUNK_BYTES


def _header_only_npy(path: Path, shape, dtype=np.uint8) -> Path:
    """A .npy whose header declares ``shape`` but that holds no data (sparse-free, instant)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return path


def test_byte_cap_refuses_from_the_header_before_reading(tmp_path, monkeypatch):
    monkeypatch.delenv(D.MAX_USER_BYTES_ENV, raising=False)
    p = _header_only_npy(tmp_path / "huge.npy", (500_000, 64, 64))  # declares 2 GB, holds nothing
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        D.load_user_ood(p, (1, 8, 8))
    assert time.perf_counter() - t0 < 2
    msg = str(err.value)
    # what is wrong (size), the limit and how to raise it; not "truncated": no data was read
    assert "huge.npy" in msg and "too large" in msg and "1.9 GiB" in msg and "1.0 GiB" in msg
    assert f"{D.MAX_USER_BYTES_ENV}=2048000000" in msg and "truncated" not in msg


def test_byte_cap_env_override_and_truncation_message(tmp_path, monkeypatch):
    p = _header_only_npy(tmp_path / "huge.npy", (500_000, 64, 64))
    monkeypatch.setenv(D.MAX_USER_BYTES_ENV, "3e9")
    monkeypatch.setenv(D.MAX_USER_SAMPLES_ENV, "1_000_000")
    with pytest.raises(DataError, match="truncated"):  # past the caps, the missing data are noticed, unread
        D.load_user_ood(p, (1, 8, 8))
    arr = np.zeros((20, 8, 8), np.uint8)
    np.save(tmp_path / "ok.npy", arr)
    monkeypatch.setenv(D.MAX_USER_BYTES_ENV, str(arr.nbytes - 1))
    with pytest.raises(DataError, match="too large"):
        D.load_user_ood(tmp_path / "ok.npy", (1, 8, 8))
    monkeypatch.setenv(D.MAX_USER_BYTES_ENV, str(arr.nbytes))
    assert D.load_user_ood(tmp_path / "ok.npy", (1, 8, 8))[1].shape == (20, 1, 8, 8)


def test_sample_cap_for_arrays_and_folders(tmp_path, monkeypatch):
    from PIL import Image

    np.save(tmp_path / "six.npy", np.zeros((6, 8, 8), np.uint8))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / f"{i}.png")
    monkeypatch.setenv(D.MAX_USER_SAMPLES_ENV, "5")
    for p in (tmp_path / "six.npy", folder):
        with pytest.raises(DataError, match=f"limit of 5 .*{D.MAX_USER_SAMPLES_ENV}=6"):
            D.load_user_ood(p, (1, 8, 8))
    monkeypatch.setenv(D.MAX_USER_SAMPLES_ENV, "6")
    assert D.load_user_ood(folder, (1, 8, 8))[1].shape == (6, 1, 8, 8)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "nan"])
def test_bad_limit_variable_is_a_clear_error(tmp_path, monkeypatch, value):
    np.save(tmp_path / "a.npy", np.zeros((2, 8, 8), np.uint8))
    monkeypatch.setenv(D.MAX_USER_BYTES_ENV, value)
    with pytest.raises(DataError, match=D.MAX_USER_BYTES_ENV):
        D.load_user_ood(tmp_path / "a.npy", (1, 8, 8))


def test_compressed_npz_is_refused_from_its_member_header(tmp_path, monkeypatch):
    p = tmp_path / "zeros.npz"
    np.savez_compressed(p, x=np.zeros((4000, 32, 32), np.uint8))  # 4 MB of data, a few KB on disk
    assert p.stat().st_size < 100_000
    monkeypatch.setenv(D.MAX_USER_BYTES_ENV, "1000000")
    with pytest.raises(DataError, match=r"zeros.npz \(array 'x'\): too large: 4,000 samples"):
        D.load_user_ood(p, (1, 8, 8))


# --------------------------------------------------------------------------- batches = whole
@pytest.fixture
def tiny_batches(monkeypatch):
    """Batches of a few samples, so that every array below spans many of them."""
    monkeypatch.setattr(convert, "CHUNK_BYTES", 3 * 16 * 16 * 4)


_RNG = np.random.default_rng(7)
_ARRAYS = {
    "uint8-nhw-resized": (_RNG.integers(0, 256, (11, 16, 16), dtype=np.uint8), (1, 8, 8)),
    "float-nhwc-rgb-to-grey": (_RNG.random((10, 16, 16, 3)).astype(np.float32), (1, 8, 8)),
    "float64-nchw-rgba-to-rgb": (_RNG.random((9, 4, 16, 16)), (3, 16, 16)),
    "int16-0-255-grey-to-rgb": (_RNG.integers(0, 256, (7, 16, 16)).astype(np.int16), (3, 8, 8)),
    "bool": (_RNG.random((8, 16, 16)) > 0.5, (1, 8, 8)),
    "float16": (_RNG.random((8, 16, 16)).astype(np.float16), (1, 16, 16)),
}


@pytest.mark.parametrize("case", sorted(_ARRAYS))
@pytest.mark.parametrize("container", ["npy", "npz", "npz-compressed", "array"])
def test_batched_conversion_equals_whole_array(tmp_path, tiny_batches, case, container):
    arr, shape = _ARRAYS[case]
    p = tmp_path / f"set.{container[:3]}"
    if container == "npy":
        np.save(p, arr)
    elif container == "npz":
        np.savez(p, x=arr)
    elif container == "npz-compressed":
        np.savez_compressed(p, x=arr)
    x = D.convert_to_id_format(arr, shape) if container == "array" else D.load_user_ood(p, shape)[1]
    assert x.shape == (len(arr), *shape) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), _reference(arr, shape), atol=2e-6)


def test_range_rule_is_global_not_per_batch(tmp_path, tiny_batches):
    # the first batches hold values in [0, 1], a later one 255: the whole array is 0..255
    arr = np.zeros((12, 16, 16), np.float32)
    arr[:9] = _RNG.random((9, 16, 16))
    arr[10, 0, 0] = 255.0
    np.save(tmp_path / "mixed.npy", arr)
    x = D.load_user_ood(tmp_path / "mixed.npy", (1, 16, 16))[1].numpy()
    np.testing.assert_allclose(x[:, 0], arr / 255.0, atol=1e-7)


@pytest.mark.parametrize("where", [0, 11])
@pytest.mark.parametrize("bad, word", [(np.nan, "3 NaN/Inf"), (np.inf, "3 NaN/Inf"), (-1.0, r"span \[-1"),
                                       (256.0, r"span \[0, 256\]")])
def test_bad_values_in_any_batch_are_found(tmp_path, tiny_batches, where, bad, word):
    arr = _RNG.random((12, 16, 16)).astype(np.float32)
    arr[:, 1, 1] = 0.0
    if np.isfinite(bad):
        arr[where, 0, 0] = bad
    else:
        arr[where, :3, 0] = bad  # 3 bad values, all counted
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(DataError, match=word):
        D.load_user_ood(tmp_path / "bad.npy", (1, 8, 8))


def test_fortran_order_small_read_large_refused(tmp_path, monkeypatch):
    arr = np.asfortranarray(_RNG.integers(0, 256, (5, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "f.npy", arr)
    with open(tmp_path / "f.npy", "rb") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[1]  # really stored in Fortran order
    np.testing.assert_allclose(D.load_user_ood(tmp_path / "f.npy", (1, 8, 8))[1].numpy()[:, 0], arr / 255.0, atol=1e-7)
    monkeypatch.setattr(user, "FORTRAN_MAX_BYTES", arr.nbytes - 1)
    with pytest.raises(DataError, match="Fortran.*ascontiguousarray"):
        D.load_user_ood(tmp_path / "f.npy", (1, 8, 8))


# --------------------------------------------------------------------------- odd array files
def test_scalar_npy_is_a_clear_error(tmp_path):
    np.save(tmp_path / "scalar.npy", np.float32(0.5))  # used to raise IndexError
    for shape, word in (((1, 8, 8), "not an image batch"), ((2,), "does not fit")):
        with pytest.raises(DataError, match=word):
            D.load_user_ood(tmp_path / "scalar.npy", shape)
        with pytest.raises(DataError, match=word):
            D.convert_to_id_format(np.float32(0.5), shape)


def test_points_beyond_float32_are_refused(tmp_path):
    pts = np.zeros((4, 2))
    pts[2, 1] = 1e39  # finite in float64, inf once converted to the model's float32
    np.save(tmp_path / "far.npy", pts)
    with pytest.raises(DataError, match="NaN/Inf"):
        D.load_user_ood(tmp_path / "far.npy", (2,))


@pytest.mark.parametrize("dtype", ["complex64", "U3", "datetime64[s]", [("a", "f4"), ("b", "f4")]])
def test_non_numeric_dtypes_refused_from_header(tmp_path, dtype):
    np.save(tmp_path / "odd.npy", np.zeros((3, 8, 8), dtype=dtype))
    with pytest.raises(DataError, match="not numeric"):
        D.load_user_ood(tmp_path / "odd.npy", (1, 8, 8))


def test_raw_pickle_named_npy_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "ran.marker"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.npy"
    p.write_bytes(pickle.dumps(Trap()))
    with pytest.raises(DataError, match="pickle"):
        D.load_user_ood(p, (1, 8, 8))
    assert not marker.exists()


def test_damaged_compressed_npz(tmp_path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=_RNG.random((40, 16, 16)))
    raw = bytearray(good.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0x5A for b in raw[mid:mid + 64])  # inside the deflate stream
    bad = tmp_path / "damaged.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="damaged.npz"):
        D.load_user_ood(bad, (1, 8, 8))


def test_npz_member_shorter_than_its_header(tmp_path):
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (10, 8, 8)})
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:
        z.writestr("x.npy", buf.getvalue() + bytes(100))  # 100 of 640 data bytes
    with pytest.raises(DataError, match="short.npz.*truncated"):
        D.load_user_ood(tmp_path / "short.npz", (1, 8, 8))


# --------------------------------------------------------------------------- images
def _png_bytes(arr, **kw) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    (arr if isinstance(arr, Image.Image) else Image.fromarray(arr)).save(b, format=kw.pop("format", "PNG"), **kw)
    return b.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _declared_png(width: int, height: int) -> bytes:
    """A tiny PNG (~1 KB) whose header declares width x height grey pixels."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(bytes(width + 1) * 4)) + _png_chunk(b"IEND", b""))


def _folder(tmp_path, files: dict) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


_GOOD = _png_bytes(np.zeros((8, 8), np.uint8))
_RANDOM_IMG = np.random.default_rng(11).integers(0, 256, (24, 24, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, content", [
    ("truncated.png", _png_bytes(_RANDOM_IMG)[:300]),
    ("truncated.jpg", _png_bytes(_RANDOM_IMG, format="JPEG")[:400]),
    ("text.png", b"this is not an image, just text with a .png name\n"),
    ("empty.png", b""),
    ("header-only.png", _png_bytes(_RANDOM_IMG)[:33]),
])
def test_unreadable_images_name_the_file(tmp_path, name, content):
    folder = _folder(tmp_path, {"a_good.png": _GOOD, name: content})
    with pytest.raises(DataError, match=f"{name.replace('.', '[.]')}: unreadable image"):
        D.load_user_ood(folder, (1, 8, 8))


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 10_000)])
def test_decompression_bomb_is_refused_quickly(tmp_path, width, height):
    from PIL import Image

    assert width * height > Image.MAX_IMAGE_PIXELS  # (10k)^2 is only a warning in PIL, (100k)^2 an error
    folder = _folder(tmp_path, {"a_good.png": _GOOD, "bomb.png": _declared_png(width, height)})
    assert (folder / "bomb.png").stat().st_size < 5000
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(DataError, match="bomb.png: refused.*decompression bomb"):
            D.load_user_ood(folder, (1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with warnings as errors (python -W error), the same DataError
        with pytest.raises(DataError, match="bomb.png: refused.*decompression bomb"):
            D.load_user_ood(folder, (1, 8, 8))
    assert time.perf_counter() - t0 < 5


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    folder = _folder(tmp_path, {"deep.png": _png_bytes(im)})
    for channels in (1, 3):
        x = D.load_user_ood(folder, (channels, 8, 8))[1].numpy()
        for c in range(channels):  # PIL's convert("L") would clip everything above 255 to white
            np.testing.assert_allclose(x[0, c], ramp / 65535.0, atol=1e-6)


def test_palette_rgba_and_grey_alpha_images(tmp_path):
    from PIL import Image

    rgb = _RANDOM_IMG[:8, :8]
    pal = Image.fromarray(rgb).quantize(16)  # mode P
    rgba = np.dstack([rgb, np.full((8, 8), 7, np.uint8)])  # alpha must not leak into the pixels
    grey = rgb[..., 0]
    folder = _folder(tmp_path, {"p.png": _png_bytes(pal), "rgba.png": _png_bytes(rgba),
                                "la.png": _png_bytes(Image.fromarray(np.dstack([grey, grey])[..., :2], "LA")),
                                "1bit.png": _png_bytes(Image.fromarray(grey > 127))})
    x = D.load_user_ood(folder, (3, 8, 8))[1].numpy()  # sorted: 1bit, la, p, rgba
    np.testing.assert_allclose(x[0], np.repeat(((grey > 127) * 1.0)[None], 3, 0), atol=1e-7)
    np.testing.assert_allclose(x[1], np.repeat(grey[None] / 255.0, 3, 0), atol=1e-7)
    np.testing.assert_allclose(x[2], np.asarray(pal.convert("RGB")).transpose(2, 0, 1) / 255.0, atol=1e-7)
    np.testing.assert_allclose(x[3], rgb.transpose(2, 0, 1) / 255.0, atol=1e-7)
    g = D.load_user_ood(folder, (1, 8, 8))[1].numpy()
    assert g.shape == (4, 1, 8, 8) and 0 <= g.min() and g.max() <= 1


def test_folder_mixing_sizes_resizes_each_image_to_the_model(tmp_path):
    from PIL import Image

    big = np.random.default_rng(12).integers(0, 256, (32, 24), dtype=np.uint8)
    files = {"a.png": _png_bytes(np.full((5, 7), 51, np.uint8)), "b.png": _png_bytes(big),
             "c.jpg": _png_bytes(np.full((40, 40, 3), 200, np.uint8), format="JPEG", quality=100),
             "d.bmp": _png_bytes(Image.fromarray(big[:16, :16]), format="BMP")}
    x = D.load_user_ood(_folder(tmp_path, files), (1, 16, 16))[1].numpy()
    assert x.shape == (4, 1, 16, 16)
    np.testing.assert_allclose(x[0], 0.2, atol=1e-6)  # a constant image stays constant, any size
    expected = torch.nn.functional.interpolate(torch.from_numpy(big / 255.0)[None, None], size=(16, 16),
                                               mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_allclose(x[1, 0], expected[0, 0].numpy(), atol=1e-6)  # resized once, from the original
    assert abs(float(x[2].mean()) - 200 / 255) < 0.01
    np.testing.assert_allclose(x[3, 0], big[:16, :16] / 255.0, atol=1e-7)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_corrupted_images_never_escape_as_other_errors(tmp_path, fmt):
    """Random byte damage gives a DataError naming the file, or a valid image; nothing else."""
    from PIL import features

    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow without WebP")
    clean = _png_bytes(_RANDOM_IMG, format=fmt)
    rng = np.random.default_rng(sum(map(ord, fmt)))
    suffix = {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, "." + fmt.lower())
    outcomes = set()
    for i in range(40):
        raw = bytearray(clean)
        kind = i % 4
        if kind == 0:  # truncate
            raw = raw[: int(rng.integers(1, len(raw)))]
        elif kind == 1:  # flip some bytes
            for j in rng.integers(0, len(raw), 1 + int(rng.integers(0, 8))):
                raw[j] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:  # overwrite a run with random bytes
            j = int(rng.integers(0, len(raw)))
            raw[j:j + 16] = rng.bytes(16)
        else:  # damage the header region
            j = int(rng.integers(0, min(64, len(raw))))
            raw[j] = int(rng.integers(0, 256))
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        (folder / f"img{suffix}").write_bytes(bytes(raw))
        try:
            x = D.load_user_ood(folder, (3, 8, 8))[1]
        except DataError as e:
            assert f"img{suffix}" in str(e)
            outcomes.add("error")
        else:
            assert x.shape == (1, 3, 8, 8) and torch.isfinite(x).all() and 0 <= x.min() and x.max() <= 1
            outcomes.add("ok")
    assert "error" in outcomes
