"""Reliability of image folders (``imagefolder:DIR`` datasets, ``import``, ``--ood-file`` folders
and uploads): checked before any image is decoded or any training starts, with one DataError
line (CLI exit 2) for a folder that cannot be used; EXIF orientation applied; and a train run
whose data are too small for some score still saves its model.

Without the protections: a link loop inside a class folder repeated that class 41 times (in
train and test alike), a decompression bomb was "internal error DecompressionBombError"
(exit 1), a 1-class folder was only refused after decoding, and a 2 x 10-image folder trained
and then saved nothing because ViM refused the tiny fit.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ood_core import data as D
from ood_core.cli import main
from ood_core.data import images, limits, real
from ood_core.errors import DataError

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="links and FIFOs: POSIX")


def _folder(root: Path, per_class=(6, 6), size=(12, 10)) -> Path:
    rng = np.random.default_rng(len(per_class))
    for k, n in enumerate(per_class):
        d = root / f"class{k}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"img{i:02d}.png")
    return root


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if an image is decoded: the checks must come first."""
    def refuse(*a, **k):
        raise AssertionError("an image was decoded before the folder was checked")

    monkeypatch.setattr(images, "load_image", refuse)


def _bench(path) -> D.Benchmark:
    return D.load_benchmark(f"imagefolder:{path}")


# --------------------------------------------------------------------------- links, loops, odd files
def test_link_loop_in_a_class_folder_is_refused_not_followed(tmp_path, no_decoding):
    root = _folder(tmp_path / "loop")
    os.symlink("..", root / "class0" / "again")  # class0/again/class0/again/... : a loop
    with pytest.raises(DataError, match=r"class0/again: a symbolic link to a folder; links to folders are not "
                                        r"followed"):
        _bench(root)
    with pytest.raises(DataError, match="again: a symbolic link to a folder"):
        D.load_user_ood(root, (3, 8, 8))


def test_a_file_reached_twice_is_refused(tmp_path, no_decoding):
    root = _folder(tmp_path / "twice")
    os.symlink(root / "class1" / "img00.png", root / "class0" / "link.png")
    with pytest.raises(DataError, match=r"img00.png: the same file as .*link.png|link.png: the same file as"):
        _bench(root)
    with pytest.raises(DataError, match="the same file as"):
        D.load_user_ood(root, (3, 8, 8))


def test_the_same_image_in_train_and_test_is_refused(tmp_path, no_decoding):
    _folder(tmp_path / "split" / "train", (12, 12))
    _folder(tmp_path / "split" / "test", (2, 2))
    os.link(tmp_path / "split" / "train" / "class0" / "img03.png", tmp_path / "split" / "test" / "class0" / "dup.png")
    with pytest.raises(DataError, match=r"test/class0/dup.png: the same file as .*train/class0/img03.png"):
        _bench(tmp_path / "split")


def test_links_to_files_and_a_linked_class_folder_are_read_once(tmp_path):
    root = _folder(tmp_path / "linked", (6, 6))
    elsewhere = _folder(tmp_path / "elsewhere", (6,))
    os.symlink(elsewhere / "class0", root / "class2")  # a class folder may be a link (as in torchvision)
    os.rename(root / "class1" / "img05.png", tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "class1" / "img05.png")  # a file may be a link
    bench = _bench(root)
    assert bench.class_names == ["class0", "class1", "class2"]
    assert len(bench.train) + len(bench.val) + len(bench.test) == 18


@pytest.mark.parametrize("make", ["fifo", "dev-zero-link", "broken-link"])
def test_non_regular_image_files_are_refused_before_opening(tmp_path, make, no_decoding):
    root = _folder(tmp_path / make)
    target = root / "class1" / "odd.png"
    if make == "fifo":
        os.mkfifo(target)
    elif make == "dev-zero-link":
        os.symlink("/dev/zero", target)
    else:
        os.symlink(tmp_path / "gone.png", target)
    word = {"fifo": "FIFO", "dev-zero-link": "a symbolic link to a character device",
            "broken-link": "broken symbolic link"}[make]
    for load in (lambda: _bench(root), lambda: D.load_user_ood(root, (3, 8, 8))):
        with pytest.raises(DataError, match=f"odd.png: .*{word}"):
            load()


def test_the_walk_is_bounded_in_entries_depth_and_images(tmp_path, monkeypatch):
    root = tmp_path / "many"
    (root / "a").mkdir(parents=True)
    for i in range(60):  # not images: visited, not counted as samples
        (root / "a" / f"note{i}.txt").write_text("x")
    monkeypatch.setenv(limits.MAX_USER_SAMPLES_ENV, "5")
    monkeypatch.setattr(limits, "WALK_SLACK", 0)  # walk_limit() = 4 * 5 entries
    with pytest.raises(DataError, match=r"more than 20 files and folders"):
        D.load_user_ood(root, (1, 8, 8))
    monkeypatch.setattr(limits, "WALK_SLACK", 10_000)
    deep = tmp_path / "deep"
    d = deep
    for i in range(images.MAX_DEPTH + 2):
        d = d / "d"
    d.mkdir(parents=True)
    with pytest.raises(DataError, match=f"nested more than {images.MAX_DEPTH} folders deep"):
        D.load_user_ood(deep, (1, 8, 8))
    root = _folder(tmp_path / "images", (30,))
    seen = []
    monkeypatch.setattr(images._Walk, "_image", lambda self, e, _f=images._Walk._image: seen.append(e) or _f(self, e))
    with pytest.raises(DataError, match=rf"at least 6 files, more than the limit of 5 .*"
                                        rf"{limits.MAX_USER_SAMPLES_ENV}=6 or more"):
        D.load_user_ood(root, (1, 8, 8))
    assert len(seen) == 6  # stopped at the first image over the cap


# --------------------------------------------------------------------------- validation before decoding
def test_one_class_is_refused_up_front(tmp_path, no_decoding):
    root = _folder(tmp_path / "one", (20,))
    with pytest.raises(DataError, match="1 class folder .*at least 2 classes"):
        _bench(root)
    assert main(["train", "--dataset", f"imagefolder:{root}", "--out", str(tmp_path / "m.pt")]) == 2
    assert not (tmp_path / "m.pt").exists()


def test_too_few_images_per_class_says_how_many_are_needed(tmp_path, no_decoding):
    root = _folder(tmp_path / "few", (8, 4))
    with pytest.raises(DataError, match=rf"class1 \(4\); the stratified 60/20/20 .* needs at least "
                                        rf"{real.MIN_PER_CLASS} images per class"):
        _bench(root)
    _folder(tmp_path / "split" / "train", (5, 4, 1))
    _folder(tmp_path / "split" / "test", (1, 1, 1))
    with pytest.raises(DataError, match=r"class2 \(1\); the stratified 90/10 .* at least 2 images per class"):
        _bench(tmp_path / "split")
    _folder(tmp_path / "split2" / "train", (5, 4, 2))
    _folder(tmp_path / "split2" / "test", (1, 1, 1))
    with pytest.raises(DataError, match=r"11 images for 3 classes; .* at least 21 images in all"):
        _bench(tmp_path / "split2")


def test_the_minimum_folder_splits(tmp_path):
    """The minimum the checks ask for is enough: the split never fails past them."""
    bench = _bench(_folder(tmp_path / "min", (real.MIN_PER_CLASS,) * 3))
    assert len(bench.test) >= 3 and set(bench.train.y.tolist()) == {0, 1, 2}
    _folder(tmp_path / "split" / "train", (19, 2))  # 21 images (10 % = 3 >= 2 classes), 2 per class at least
    _folder(tmp_path / "split" / "test", (1, 1))
    bench = _bench(tmp_path / "split")
    assert (len(bench.train), len(bench.val), len(bench.test)) == (18, 3, 2)


def _declared_png(width: int, height: int) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(width + 1) * 4)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width", [8_000, 20_000])  # over our limit only; over Pillow's own error limit too
def test_a_decompression_bomb_in_an_image_folder_is_one_line_exit_2(tmp_path, capsys, width):
    root = _folder(tmp_path / "bomb")
    (root / "class0" / "bomb.png").write_bytes(_declared_png(width, width))
    with pytest.raises(DataError, match="bomb.png: refused.*decompression bomb"):
        _bench(root)
    capsys.readouterr()
    rc = main(["train", "--dataset", f"imagefolder:{root}", "--epochs", "1", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "bomb.png" in err and "internal error" not in err
    assert len(err.splitlines()) == 1


def test_the_pixel_limit_is_configurable(tmp_path, monkeypatch):
    folder = tmp_path / "ood"
    folder.mkdir()
    Image.new("L", (300, 200), 128).save(folder / "a.png")
    monkeypatch.setenv(limits.MAX_IMAGE_PIXELS_ENV, "59_999")
    with pytest.raises(DataError, match=rf"a.png: refused: the image declares 300x200 pixels .* limit of 0.059999 "
                                        rf"megapixels .*{limits.MAX_IMAGE_PIXELS_ENV}=60000"):
        D.load_user_ood(folder, (1, 8, 8))
    np.save(tmp_path / "arr.npy", np.zeros((2, 200, 300), np.uint8))
    with pytest.raises(DataError, match=r"arr.npy: refused: one sample holds 300x200 pixels"):
        D.load_user_ood(tmp_path / "arr.npy", (1, 8, 8))
    monkeypatch.setenv(limits.MAX_IMAGE_PIXELS_ENV, "60000")
    assert D.load_user_ood(folder, (1, 8, 8))[1].shape == (1, 1, 8, 8)
    assert D.load_user_ood(tmp_path / "arr.npy", (1, 8, 8))[1].shape == (2, 1, 8, 8)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    folder = tmp_path / "ood"
    folder.mkdir()
    img = np.zeros((400, 600, 3), np.uint8)
    img[:, :300] = 255  # left half white
    Image.fromarray(img).save(folder / "photo.jpg", quality=95)
    monkeypatch.setenv(limits.MAX_IMAGE_PIXELS_ENV, "60000")  # 240k pixels: 1/2 scale (60k) fits
    x = D.load_user_ood(folder, (1, 8, 8))[1][0, 0]
    assert float(x[:, :3].min()) > 0.95 and float(x[:, 5:].max()) < 0.05
    monkeypatch.setenv(limits.MAX_IMAGE_PIXELS_ENV, "3000")  # even 1/8 (75 x 50) is too many: refused
    with pytest.raises(DataError, match="photo.jpg: refused: the image declares 600x400 pixels"):
        D.load_user_ood(folder, (1, 8, 8))


def test_the_output_at_the_models_size_is_capped(tmp_path, monkeypatch):
    np.save(tmp_path / "small.npy", np.zeros((100, 8, 8), np.uint8))  # 6.4 KB in the file
    monkeypatch.setenv(limits.MAX_USER_BYTES_ENV, "100000")
    with pytest.raises(DataError, match=r"small.npy: too large: 100 samples at the model's input size \(3, 64, 64\)"):
        D.load_user_ood(tmp_path / "small.npy", (3, 64, 64))  # 4.9 MB as float32
    folder = _folder(tmp_path / "imgs", (10,))
    with pytest.raises(DataError, match=r"imgs: too large: 10 samples at the model's input size"):
        D.load_user_ood(folder, (3, 64, 64))


# --------------------------------------------------------------------------- EXIF orientation
def _oriented_jpeg(path: Path, orientation: int) -> np.ndarray:
    """Save a 40 x 20 (wide) image with a bright left strip under an EXIF orientation; return
    how it must look upright."""
    from PIL import ImageOps

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :8] = 255
    ex = Image.Exif()
    ex[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, exif=ex.tobytes(), quality=100)
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.float32) / 255.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = _oriented_jpeg(tmp_path / "ood" / "photo.jpg", orientation)
    h, w = upright.shape
    assert (h, w) == ((20, 40) if orientation == 3 else (40, 20))
    x = D.load_user_ood(tmp_path / "ood", (1, h, w))[1][0, 0].numpy()
    np.testing.assert_allclose(x, upright, atol=1e-6)
    _oriented_jpeg(tmp_path / "cls" / "a" / "photo.jpg", orientation)
    xs, _, _ = real.load_image_folder(tmp_path / "cls", (h, w), channels=1)
    np.testing.assert_allclose(xs[0, 0].numpy() / 255.0, upright, atol=1 / 255)


def test_the_published_ood_image_sets_are_read_without_rotation(tmp_path, monkeypatch):
    """DTD, Places365 and TinyImageNet are read as their benchmarks read them (numbers stay comparable)."""
    monkeypatch.delenv(real.DOWNLOAD_ENV, raising=False)
    folder = tmp_path / "root" / "dtd" / "dtd" / "images" / "banded"
    _oriented_jpeg(folder / "photo.jpg", 6)
    x = real.load_image_set("dtd", (20, 40), channels=1, root=tmp_path / "root")
    assert x.shape == (1, 1, 20, 40) and float(x[0, 0, :, :6].float().mean()) > 200  # still wide, strip left


# --------------------------------------------------------------------------- train always saves
def test_a_tiny_folder_trains_saves_and_names_the_scores_left_out(tmp_path, capsys):
    root = _folder(tmp_path / "tiny", (10, 10), size=(8, 8))
    out = tmp_path / "tiny.pt"
    rc = main(["train", "--method", "ce", "--dataset", f"imagefolder:{root}", "--epochs", "1", "--arch", "smallcnn",
               "--out", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert rc == 0 and out.exists()
    from ood_core.checkpoint import load_checkpoint

    _, meta = load_checkpoint(out)
    skipped = meta["metrics"]["skipped_scores"]
    assert "vim" in skipped and "vim" not in meta["metrics"]["ood"]["blobs"]
    assert "msp" in meta["metrics"]["ood"]["blobs"]
    assert f"left out (cannot be fitted here): {', '.join(skipped)}" in stdout
