"""The embedded benchmark (digits, toy2d, digit-canvases), generated OOD sets, user OOD sets."""
from __future__ import annotations

import functools
import pickle  # noqa: F401  (documents that np.save(allow_pickle=True) pickles)

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ood_core import data as D
from ood_core.data import embedded as E
from ood_core.errors import DataError, UnknownNameError


# --------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _sk_digits():
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def _class_of_image():
    """Map image bytes -> original digit class (the 1,797 sklearn images are all distinct)."""
    images, target = _sk_digits()
    table = {img.tobytes(): int(t) for img, t in zip(images, target)}
    assert len(table) == len(target)
    return table


def _classes(x: torch.Tensor) -> np.ndarray:
    """Original classes of a batch of (N, 1, 8, 8) digit images, looked up by content."""
    table = _class_of_image()
    return np.array([table[img.tobytes()] for img in x.numpy()[:, 0].astype(np.float32)])


@functools.lru_cache(maxsize=None)
def _bench(name, known=None, split_seed=0, ood_seed=0):
    return D.load_benchmark(name, known=known, split_seed=split_seed, ood_seed=ood_seed)


# --------------------------------------------------------------------------- digits
def test_digits_splits_partition_known_classes():
    b = _bench("digits")
    _, target = _sk_digits()
    assert b.name == "digits" and b.task == "multiclass" and b.input_shape == (1, 8, 8)
    assert b.known == D.DEFAULT_KNOWN == (0, 1, 2, 3, 4, 5)
    n_known = int(np.isin(target, b.known).sum())
    assert len(b.train) + len(b.val) + len(b.test) == n_known
    # unknown = the test-split images of the other classes; all test images = 20% of 1,797
    assert len(b.test) + len(b.ood["unknown"]) == 1797 - int(round(0.6 * 1797)) - 359
    for split in (b.train, b.val, b.test, D.Split(b.ood["unknown"], torch.zeros(0))):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (1, 8, 8)
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0


def test_digits_splits_disjoint_and_complete_per_class():
    b = _bench("digits")
    images, target = _sk_digits()
    split_images = {name: {img.tobytes() for img in s.x.numpy()[:, 0]}
                    for name, s in (("train", b.train), ("val", b.val), ("test", b.test))}
    split_images["unknown"] = {img.tobytes() for img in b.ood["unknown"].numpy()[:, 0]}
    names = list(split_images)
    for i, a in enumerate(names):
        for c in names[i + 1:]:
            assert not split_images[a] & split_images[c], f"{a} and {c} share images"
    # no duplicates inside a split either
    for name, s in (("train", b.train), ("val", b.val), ("test", b.test)):
        assert len(split_images[name]) == len(s)
    # per known class, train+val+test is exactly sklearn's set of images of that class
    for k in b.known:
        got = set()
        for s in (b.train, b.val, b.test):
            got |= {img.tobytes() for img in s.x.numpy()[s.y.numpy() == b.known.index(k), 0]}
        expected = {img.tobytes() for img in images[target == k]}
        assert got == expected, f"class {k}"
    # per-class counts match load_digits
    for k in b.known:
        n = sum(int((s.y == b.known.index(k)).sum()) for s in (b.train, b.val, b.test))
        assert n == int((target == k).sum())


def test_digits_stratified_60_20_20():
    b = _bench("digits")
    _, target = _sk_digits()
    unk_classes = _classes(b.ood["unknown"])
    for k in range(10):
        n_k = int((target == k).sum())
        if k in b.known:
            j = b.known.index(k)
            counts = [int((s.y == j).sum()) for s in (b.train, b.val, b.test)]
            for c, frac in zip(counts, D.SPLIT_FRACTIONS):
                assert abs(c - frac * n_k) <= 2, (k, counts, n_k)
        else:  # unknown classes only show up through their test split
            assert abs(int((unk_classes == k).sum()) - 0.2 * n_k) <= 2


def test_digits_labels_remapped():
    b = _bench("digits", known=(1, 3, 5, 7, 9))
    assert b.known == (1, 3, 5, 7, 9)
    assert b.num_classes == 5 and b.class_names == ["1", "3", "5", "7", "9"]
    for s in (b.train, b.val, b.test):
        assert s.y.dtype == torch.int64
        assert set(s.y.tolist()) == set(range(5))
        orig = _classes(s.x)
        np.testing.assert_array_equal(np.array(b.known)[s.y.numpy()], orig)


def test_digits_custom_known_unknown_set():
    odd = _bench("digits", known=(1, 3, 5, 7, 9))
    even = _bench("digits", known=(0, 2, 4, 6, 8))
    unk = odd.ood["unknown"]
    assert set(_classes(unk).tolist()) == {0, 2, 4, 6, 8}
    # same split: the unknown set of one is exactly the ID test set of the complement
    assert len(unk) == len(even.test)
    assert torch.equal(unk, even.test.x)
    assert len(odd.test) + len(unk) == len(_bench("digits").test) + len(_bench("digits").ood["unknown"])
    default_unknown = set(_classes(_bench("digits").ood["unknown"]).tolist())
    assert default_unknown == {6, 7, 8, 9}


def test_digits_known_order_and_duplicates_are_normalised():
    b = D.load_benchmark("digits", known=[5, 1, 3, 1])
    assert b.known == (1, 3, 5)


def test_digits_deterministic():
    a = D.load_benchmark("digits")
    b = D.load_benchmark("digits")
    for s, t in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)
    assert a.ood.keys() == b.ood.keys()
    for name in a.ood:
        assert torch.equal(a.ood[name], b.ood[name]), name


def test_digits_split_seed_changes_split():
    a = _bench("digits", split_seed=0)
    b = _bench("digits", split_seed=1)
    assert len(a.train) == len(b.train)
    assert not torch.equal(a.train.x, b.train.x)
    assert a.spec()["split_seed"] == 0 and b.spec()["split_seed"] == 1


@pytest.mark.parametrize("dataset", ["digits", "digit-canvases"])
def test_image_ood_sets_and_groups(dataset):
    b = _bench(dataset)
    real = ["real-photos", "real-textures", "real-faces"]
    synthetic = ["uniform-noise", "gaussian-noise", "constant", "blobs", "textures"]
    assert b.ood_groups == {"unknown": "near", **{n: "far-real" for n in real},
                            **{n: "far-synthetic" for n in synthetic}}
    assert list(b.ood) == list(b.ood_groups)  # near, then far-real, then far-synthetic
    for name in real + synthetic:
        assert b.ood[name].shape == (D.N_GENERATED, *b.input_shape)


def test_toy2d_groups():
    assert _bench("toy2d").ood_groups == {"ring": "far-synthetic", "uniform-box": "far-synthetic"}


def test_ood_seed_changes_generated_sets_only():
    a = _bench("digits", ood_seed=0)
    b = _bench("digits", ood_seed=1)
    assert torch.equal(a.train.x, b.train.x)
    assert torch.equal(a.ood["unknown"], b.ood["unknown"])
    assert not torch.equal(a.ood["uniform-noise"], b.ood["uniform-noise"])


@pytest.mark.parametrize("known", [(3,), tuple(range(10)), (0, 12), (-1, 2)])
@pytest.mark.parametrize("dataset", ["digits", "digit-canvases"])
def test_bad_known_raises(known, dataset):
    with pytest.raises(DataError):
        D.load_benchmark(dataset, known=known)


def test_parse_known():
    assert D.parse_known("0,1,2") == (0, 1, 2)
    assert D.parse_known(None) is None
    assert D.parse_known("") is None
    for bad in ("a,b", "1,,2", "1;2"):
        with pytest.raises(DataError):
            D.parse_known(bad)


def test_unknown_dataset_lists_names():
    with pytest.raises(UnknownNameError) as err:
        D.load_benchmark("cifar-1000")
    for name in D.DATASETS:
        assert name in str(err.value)


# --------------------------------------------------------------------------- generated OOD sets
SHAPES = [(1, 8, 8), (3, 16, 16), (1, 28, 28), (1, 8, 12)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(D.IMAGE_OOD_SETS))
def test_generated_ood_format(name, shape):
    x = D.generate_ood(name, 40, shape, seed=0)
    assert tuple(x.shape) == (40, *shape)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x, D.generate_ood(name, 40, shape, seed=0))
    assert not torch.equal(x, D.generate_ood(name, 40, shape, seed=1))
    # images differ from one another
    assert len({img.numpy().tobytes() for img in x}) > 1


@pytest.mark.parametrize("shape", SHAPES)
def test_generated_constant_and_textures(shape):
    const = D.generate_ood("constant", 50, shape, seed=3).flatten(1)
    assert torch.equal(const.max(1).values, const.min(1).values)
    assert len(set(const[:, 0].tolist())) == 50
    tex = D.generate_ood("textures", 50, shape, seed=3).flatten(1)
    assert (tex.max(1).values - tex.min(1).values > 0.3).all()
    blobs = D.generate_ood("blobs", 50, shape, seed=3).flatten(1)
    assert torch.allclose(blobs.max(1).values, torch.ones(50))  # scaled to peak 1
    assert (blobs.min(1).values < 1.0).all()


def test_generated_noise_statistics():
    u = D.generate_ood("uniform-noise", 300, (1, 8, 8), seed=0)
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.01
    g = D.generate_ood("gaussian-noise", 300, (1, 8, 8), seed=0)
    assert abs(float(g.mean()) - 0.5) < 0.02
    assert 0.2 < float(g.std()) < 0.26  # N(0.5, 0.25) a little shrunk by clipping


def test_generated_families_independent_streams():
    # one random stream per family: with a shared stream, the 'constant' levels would be the
    # first uniform draws, i.e. the first pixels of 'uniform-noise'
    n = 20
    levels = D.generate_ood("constant", n, (1, 8, 8), seed=0)[:, 0, 0, 0]
    first_pixels = D.generate_ood("uniform-noise", n, (1, 8, 8), seed=0).flatten()[:n]
    assert not torch.allclose(levels, first_pixels)
    # generating one family does not disturb another
    a = D.generate_ood("blobs", 10, (1, 8, 8), seed=0)
    D.generate_ood("uniform-noise", 10, (1, 8, 8), seed=0)
    assert torch.equal(a, D.generate_ood("blobs", 10, (1, 8, 8), seed=0))


def test_generated_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        D.generate_ood("plaid", 5, (1, 8, 8))
    for name in D.IMAGE_OOD_SETS:
        assert name in str(err.value)


# --------------------------------------------------------------------------- toy2d
def _toy_centres():
    angles = np.pi / 4 + np.arange(4) * np.pi / 2
    return 3.0 * np.stack([np.cos(angles), np.sin(angles)], 1)


def test_toy2d_shapes_and_balance():
    b = _bench("toy2d")
    assert b.input_shape == (2,) and b.num_classes == 4 and b.task == "multiclass"
    for s in (b.train, b.val, b.test):
        assert s.x.ndim == 2 and s.x.shape[1] == 2 and s.x.dtype == torch.float32
        assert s.y.dtype == torch.int64
        counts = np.bincount(s.y.numpy(), minlength=4)
        assert len(counts) == 4 and (counts == counts[0]).all() and counts[0] > 0
    # class k is centred at radius 3, angle pi/4 + k pi/2
    centres = _toy_centres()
    for k in range(4):
        mean = b.train.x[b.train.y == k].numpy().mean(0)
        assert np.linalg.norm(mean - centres[k]) < 0.15


def test_toy2d_ood_geometry():
    b = _bench("toy2d")
    assert set(b.ood) == {"ring", "uniform-box"}
    ring = b.ood["ring"].numpy().astype(np.float64)
    r = np.linalg.norm(ring, axis=1)
    assert len(ring) == D.N_GENERATED and ring.shape[1] == 2
    assert r.min() >= 5.0 - 1e-5 and r.max() <= 7.0 + 1e-5
    box = b.ood["uniform-box"].numpy().astype(np.float64)
    assert len(box) == D.N_GENERATED and box.shape[1] == 2
    assert np.abs(box).max() <= 7.0
    dist = np.linalg.norm(box[:, None] - _toy_centres()[None], axis=2)
    assert dist.min() >= 1.5 - 1e-5


def test_toy2d_deterministic_and_known_rejected():
    a = D.load_benchmark("toy2d")
    b = D.load_benchmark("toy2d")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.ood["ring"], b.ood["ring"])
    assert not torch.equal(a.train.x, _bench("toy2d", split_seed=1).train.x)
    with pytest.raises(DataError):
        D.load_benchmark("toy2d", known=(0, 1))
    assert D.load_benchmark("toy2d", known=(0, 1, 2, 3)).num_classes == 4


# --------------------------------------------------------------------------- digit canvases
def _slot_contents(canvases: torch.Tensor):
    """Per canvas: list of original digit classes in its non-empty slots, and the images."""
    table = _class_of_image()
    x = canvases.numpy()
    out = []
    for canvas in x:
        slots = [canvas[0, r:r + 8, c:c + 8] for r, c in D.CANVAS_SLOTS]
        filled = [s for s in slots if s.max() > 0]
        out.append(([table[s.astype(np.float32).tobytes()] for s in filled],
                    {s.astype(np.float32).tobytes() for s in filled}))
    return out


def test_digit_canvases_format_and_targets():
    b = _bench("digit-canvases")
    assert b.task == "multilabel" and b.input_shape == (1, 16, 16) and b.known == D.DEFAULT_KNOWN
    for name, s in (("train", b.train), ("val", b.val), ("test", b.test)):
        assert s.x.shape == (D.CANVAS_SIZES[name], 1, 16, 16) and s.x.dtype == torch.float32
        assert s.y.shape == (D.CANVAS_SIZES[name], b.num_classes) and s.y.dtype == torch.float32
        assert set(torch.unique(s.y).tolist()) <= {0.0, 1.0}
        pos = s.y.sum(1)
        assert pos.min() >= 1 and pos.max() <= 3
        assert float(s.x.min()) >= 0 and float(s.x.max()) <= 1


def test_digit_canvases_slots_match_targets():
    """Each non-empty slot holds one whole digit; the target is the set of its classes.

    Two slots may hold different images of the same class (the target is the *set* of labels
    present), so the number of non-empty slots is >= the number of positives, not always equal.
    """
    b = _bench("digit-canvases")
    train_digits = set()
    for name, s in (("train", b.train), ("val", b.val), ("test", b.test)):
        digits_in_split = set()
        for (classes, imgs), target in zip(_slot_contents(s.x), s.y.numpy()):
            assert 1 <= len(classes) <= 3
            assert len(imgs) == len(classes)  # no image repeated within a canvas
            positives = {b.known[j] for j in np.flatnonzero(target)}
            assert set(classes) == positives
            assert len(classes) >= int(target.sum())
            digits_in_split |= imgs
        if name == "train":
            train_digits = digits_in_split
        else:  # no val/test digit is ever seen in training
            assert not digits_in_split & train_digits, name


def test_digit_canvases_unknown_set():
    b = _bench("digit-canvases")
    unk = b.ood["unknown"]
    assert unk.shape == (D.N_GENERATED, 1, 16, 16)
    assert (unk.flatten(1).max(1).values > 0).all()
    unknown_classes = set(range(10)) - set(b.known)
    test_digits = {img.tobytes() for img in E._digit_splits(0)["test"][0][:, 0]}
    for classes, imgs in _slot_contents(unk):
        assert 1 <= len(classes) <= 3
        assert set(classes) <= unknown_classes
        assert imgs <= test_digits
    for name in D.IMAGE_OOD_SETS:
        assert b.ood[name].shape == (D.N_GENERATED, 1, 16, 16)


def test_digit_canvases_custom_known():
    b = D.load_benchmark("digit-canvases", known=(2, 7))
    assert b.train.y.shape[1] == 2
    for classes, _ in _slot_contents(b.test.x[:100]):
        assert set(classes) <= {2, 7}
    for classes, _ in _slot_contents(b.ood["unknown"][:100]):
        assert not set(classes) & {2, 7}


# --------------------------------------------------------------------------- user OOD sets
def test_user_npy_uint8(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    p = tmp_path / "my_set.npy"
    np.save(p, arr)
    name, x = D.load_user_ood(p, (1, 8, 8))
    assert name == "my_set"
    assert x.shape == (6, 1, 8, 8) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy()[:, 0], arr.astype(np.float64) / 255.0, rtol=0, atol=1e-7)


def test_user_npy_float_unit_range_kept_and_0_255_scaled(tmp_path):
    arr = np.random.default_rng(1).random((4, 8, 8))
    np.save(tmp_path / "unit.npy", arr)
    np.testing.assert_allclose(D.load_user_ood(tmp_path / "unit.npy", (1, 8, 8))[1].numpy()[:, 0], arr, atol=1e-7)
    np.save(tmp_path / "wide.npy", arr * 255.0)
    np.testing.assert_allclose(D.load_user_ood(tmp_path / "wide.npy", (1, 8, 8))[1].numpy()[:, 0], arr, atol=1e-6)


def test_user_npy_rgb_to_grey_and_resized(tmp_path):
    rng = np.random.default_rng(2)
    colours = rng.random((5, 3))
    arr = np.broadcast_to(colours[:, None, None, :], (5, 8, 8, 3)).astype(np.float32)  # NHWC
    p = tmp_path / "rgb.npy"
    np.save(p, arr)
    name, x = D.load_user_ood(p, (1, 16, 16))
    assert name == "rgb" and x.shape == (5, 1, 16, 16) and x.dtype == torch.float32
    lum = 0.299 * colours[:, 0] + 0.587 * colours[:, 1] + 0.114 * colours[:, 2]
    np.testing.assert_allclose(x.numpy(), np.broadcast_to(lum[:, None, None, None], x.shape), atol=1e-5)
    # a non-constant RGB image keeps its shape contract and range after resizing
    noisy = rng.random((3, 8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "noisy.npy", noisy)
    _, y = D.load_user_ood(tmp_path / "noisy.npy", (1, 16, 16))
    assert y.shape == (3, 1, 16, 16) and float(y.min()) >= 0 and float(y.max()) <= 1
    grey = 0.299 * noisy[..., 0] + 0.587 * noisy[..., 1] + 0.114 * noisy[..., 2]
    np.testing.assert_allclose(y.numpy().mean(axis=(1, 2, 3)), grey.mean(axis=(1, 2)), atol=0.02)


def test_user_npz(tmp_path):
    arr = np.random.default_rng(3).random((4, 8, 8))
    np.savez(tmp_path / "with_x.npz", x=arr, labels=np.arange(4))
    name, x = D.load_user_ood(tmp_path / "with_x.npz", (1, 8, 8))
    assert name == "with_x"
    np.testing.assert_allclose(x.numpy()[:, 0], arr, atol=1e-7)
    np.savez(tmp_path / "single.npz", images=arr)
    np.testing.assert_allclose(D.load_user_ood(tmp_path / "single.npz", (1, 8, 8))[1].numpy()[:, 0], arr, atol=1e-7)
    np.savez(tmp_path / "several.npz", a=arr, b=arr)
    with pytest.raises(DataError, match="'x'"):
        D.load_user_ood(tmp_path / "several.npz", (1, 8, 8))


def test_user_image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    small = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(2)]
    Image.fromarray(small[0]).save(folder / "a0.png")
    Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / "a1.png")
    Image.fromarray(small[1]).save(folder / "a2.png")
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / "a3.png")  # RGB
    (folder / "notes.txt").write_text("not an image")
    name, x = D.load_user_ood(folder, (1, 8, 8))
    assert name == "pngs"
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    np.testing.assert_allclose(x.numpy()[0, 0], small[0] / 255.0, atol=1e-7)
    np.testing.assert_allclose(x.numpy()[2, 0], small[1] / 255.0, atol=1e-7)


def test_user_image_folder_corrupt_file(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(np.random.default_rng(5).bytes(300))
    with pytest.raises(DataError, match="broken.png"):
        D.load_user_ood(folder, (1, 8, 8))


def test_user_empty_folder_and_folder_for_points(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        D.load_user_ood(tmp_path / "empty", (1, 8, 8))
    with pytest.raises(DataError):
        D.load_user_ood(tmp_path / "empty", (2,))


@pytest.mark.parametrize("arr, word", [
    (np.full((3, 8, 8), np.nan), "NaN"),
    (np.where(np.eye(8, dtype=bool), np.nan, 0.5)[None].repeat(2, 0), "NaN"),
    (np.full((3, 8, 8), np.inf), "NaN"),
    (np.linspace(-3, 40, 3 * 64).reshape(3, 8, 8), "span"),
    (np.full((2, 8, 8), 300.0), "span"),
    (np.zeros((0, 8, 8), dtype=np.float32), "no samples"),
    (np.zeros((4, 8), dtype=np.float32), "shape"),
    (np.zeros((4, 5, 8, 8), dtype=np.float32), "channel"),
])
def test_user_bad_arrays(tmp_path, arr, word):
    p = tmp_path / "bad.npy"
    np.save(p, arr)
    with pytest.raises(DataError, match=word):
        D.load_user_ood(p, (1, 8, 8))


def test_user_bad_paths(tmp_path):
    txt = tmp_path / "set.txt"
    txt.write_text("1 2 3")
    with pytest.raises(DataError, match="unsupported"):
        D.load_user_ood(txt, (1, 8, 8))
    with pytest.raises(DataError, match="no such"):
        D.load_user_ood(tmp_path / "missing.npy", (1, 8, 8))
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x00\x01 not numpy")
    with pytest.raises(DataError):
        D.load_user_ood(garbage, (1, 8, 8))


def test_user_corrupt_npz(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(8).random((3, 8, 8)))
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.npz"  # not a zip any more
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated.npz"):
        D.load_user_ood(truncated, (1, 8, 8))
    flipped = tmp_path / "flipped.npz"  # zip directory intact, member data damaged (bad CRC)
    flipped.write_bytes(raw[:120] + bytes(b ^ 0xFF for b in raw[120:170]) + raw[170:])
    with pytest.raises(DataError, match="flipped.npz"):
        D.load_user_ood(flipped, (1, 8, 8))


class _Trap:
    """Unpickling this object creates a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_user_pickled_object_array_refused(tmp_path):
    marker = tmp_path / "unpickled.marker"
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = _Trap(marker), _Trap(marker)
    p = tmp_path / "evil.npy"
    np.save(p, arr, allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(DataError, match="pickle"):
        D.load_user_ood(p, (1, 8, 8))
    assert not marker.exists(), "the pickle was executed"
    # control: loading with pickle enabled does run the payload, so the check above can fail
    loaded = np.load(p, allow_pickle=True)
    for f in loaded:
        f.close()
    assert marker.exists()


def test_user_pickled_npz_refused(tmp_path):
    marker = tmp_path / "unpickled.marker"
    arr = np.empty(1, dtype=object)
    arr[0] = _Trap(marker)
    p = tmp_path / "evil.npz"
    np.savez(p, x=arr)
    with pytest.raises(DataError):
        D.load_user_ood(p, (1, 8, 8))
    assert not marker.exists()


def test_user_points_for_toy2d(tmp_path):
    pts = np.random.default_rng(6).normal(0, 5, (10, 2))
    np.save(tmp_path / "pts.npy", pts)
    name, x = D.load_user_ood(tmp_path / "pts.npy", (2,))
    assert name == "pts" and x.shape == (10, 2) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), pts, rtol=1e-6)  # points are not rescaled
    np.save(tmp_path / "pts3.npy", np.zeros((10, 3)))
    with pytest.raises(DataError):
        D.load_user_ood(tmp_path / "pts3.npy", (2,))
    bad = pts.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "ptsnan.npy", bad)
    with pytest.raises(DataError, match="NaN"):
        D.load_user_ood(tmp_path / "ptsnan.npy", (2,))
