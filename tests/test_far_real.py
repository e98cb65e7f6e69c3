"""The far-real OOD sets: crops of the images shipped in the scikit-image wheel."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import skimage.data
import torch
from skimage.measure import block_reduce

from ood_core import data as D
from ood_core.data import embedded as E  # the module whose settings the tests patch
from ood_core.errors import DataError, UnknownNameError
from ood_core.evaluate import group_means

REAL = ["real-photos", "real-textures", "real-faces"]
SHAPES = [(1, 8, 8), (1, 16, 16)]


@functools.lru_cache(maxsize=None)
def _real(name, shape=(1, 8, 8), seed=0):
    return D.real_ood(name, D.N_GENERATED, shape, seed)


@functools.lru_cache(maxsize=None)
def _bench(name, ood_seed=0):
    return D.load_benchmark(name, ood_seed=ood_seed)


def test_real_sets_registered_exactly():
    assert list(D.REAL_OOD_SETS) == REAL
    assert not set(D.REAL_OOD_SETS) & set(D.IMAGE_OOD_SETS)  # the generated families keep their names


def test_block_means_on_a_hand_checkable_gradient():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)  # img[r, c] = 4r + c
    # the 2x2 blocks average to 2.5, 4.5, 10.5, 12.5; min-max over those: (v - 2.5) / 10
    np.testing.assert_allclose(D.real_crop_to_input(img, 0, 0, 2, (2, 2)), [[0.0, 0.2], [0.8, 1.0]])
    # an offset crop: rows 1-2, columns 2-3 of a 4x6 image of 6r + c -> one block of mean 6*1.5 + 2.5
    img = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert E._block_means(img, 1, 2, 2, (1, 1)).item() == pytest.approx(11.5)
    # a flat crop has no range to stretch: all zeros, not NaN
    assert (D.real_crop_to_input(np.ones((4, 4), np.float32), 0, 0, 2, (2, 2)) == 0).all()
    with pytest.raises(DataError, match="leaves"):
        D.real_crop_to_input(img, 2, 0, 2, (2, 2))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", REAL)
def test_real_format(name, shape):
    x = _real(name, shape)
    assert x.shape == (D.N_GENERATED, *shape) and x.dtype == torch.float32
    flat = x.flatten(1)
    assert torch.isfinite(flat).all()
    # min-max per image: every crop spans exactly [0, 1], so none is constant
    assert torch.allclose(flat.min(1).values, torch.zeros(len(x)))
    assert torch.allclose(flat.max(1).values, torch.ones(len(x)))
    assert len({img.numpy().tobytes() for img in x}) > 0.9 * len(x)  # crops vary, not one patch repeated


def test_real_sets_differ_from_each_other_and_from_the_generated():
    b = _bench("digits")
    names = REAL + list(D.IMAGE_OOD_SETS)
    for i, a in enumerate(names):
        for c in names[i + 1:]:
            assert not torch.equal(b.ood[a], b.ood[c]), (a, c)
    # and their content differs, not only their order: the mean images are apart
    means = {n: b.ood[n].mean(0) for n in REAL}
    for i, a in enumerate(REAL):
        for c in REAL[i + 1:]:
            assert (means[a] - means[c]).abs().max() > 0.02, (a, c)


def test_real_deterministic_and_seeded():
    a = D.real_ood("real-photos", 50, (1, 8, 8), seed=0)
    assert torch.equal(a, D.real_ood("real-photos", 50, (1, 8, 8), seed=0))
    assert not torch.equal(a, D.real_ood("real-photos", 50, (1, 8, 8), seed=1))
    b0, b1 = _bench("digits"), _bench("digits", ood_seed=1)
    assert torch.equal(b0.ood["unknown"], b1.ood["unknown"]) and torch.equal(b0.train.x, b1.train.x)
    for name in REAL:
        assert torch.equal(b0.ood[name], _real(name)), name  # the benchmark holds exactly real_ood's crops
        assert not torch.equal(b0.ood[name], b1.ood[name]), name


def test_adding_a_set_changes_no_other(monkeypatch):
    before = {n: _real(n) for n in REAL}
    extra = {"more-photos": D.RealOODSet(("camera",), (0.2, 0.3))}
    monkeypatch.setattr(E, "REAL_OOD_SETS", {**extra, **E.REAL_OOD_SETS})
    for n in REAL:
        assert torch.equal(D.real_ood(n, D.N_GENERATED, (1, 8, 8), 0), before[n]), n
    assert "more-photos" in D.load_benchmark("digits").ood


@pytest.mark.parametrize("dataset", ["digits", "digit-canvases"])
def test_no_real_crop_equals_an_id_image(dataset):
    b = _bench(dataset)
    id_images = {img.numpy().tobytes() for split in (b.train, b.val, b.test) for img in split.x}
    for name in REAL:
        assert not id_images & {img.numpy().tobytes() for img in b.ood[name]}, name


def test_faces_are_crops_of_the_shipped_faces():
    """Every 8x8 face sample equals one admissible crop of one of the 100 lfw faces, block-averaged
    by scikit-image (an independent implementation) and min-max stretched."""
    faces = skimage.data.lfw_subset()[:100].astype(np.float64)
    assert faces.shape == (100, 25, 25)
    # sides 0.6..1.0 of 25 as multiples of 8: 16 (k=2) and 24 (k=3)
    candidates, cand_k = [], []
    for f in faces:
        for k in (2, 3):
            s = 8 * k
            for top in range(25 - s + 1):
                for left in range(25 - s + 1):
                    small = block_reduce(f[top:top + s, left:left + s], (k, k), np.mean)
                    lo, hi = small.min(), small.max()
                    candidates.append(((small - lo) / (hi - lo) if hi > lo else small * 0).ravel())
                    cand_k.append(k)
    candidates, cand_k = np.stack(candidates), np.array(cand_k)
    x = _real("real-faces").numpy().reshape(D.N_GENERATED, -1).astype(np.float64)
    ks = []
    for img in x:
        err = np.abs(candidates - img).max(1)
        assert err.min() < 1e-5
        ks.append(int(cand_k[err.argmin()]))
    assert set(ks) == {2, 3}  # both crop sizes are drawn


def test_sources_are_grey_luminance_of_the_shipped_images():
    rgb = skimage.data.astronaut().astype(np.float64) / 255
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    (got,) = E._real_source("astronaut")
    assert got.dtype == np.float32 and not got.flags.writeable
    np.testing.assert_allclose(got, grey, atol=1e-6)
    assert len(E._real_source("lfw_faces")) == 100  # faces only, not the 100 background patches
    assert sum(len(E._real_source(s)) for s in D.REAL_OOD_SETS["real-photos"].sources) == 7


def test_photo_crop_sizes_span_the_range():
    """Crop sides of photos are drawn from 1/8 to 1/2 of the shorter side: seen through the block
    sizes k that the admissible range gives for camera (512 px) at 8x8."""
    assert E._crop_factors((512, 512), (8, 8), (1 / 8, 1 / 2)) == range(8, 33)
    assert E._crop_factors((300, 451), (16, 16), (1 / 8, 1 / 2)) == range(3, 10)
    assert E._crop_factors((25, 25), (16, 16), (0.6, 1.0)) == range(1, 2)  # 16/25 < 0.6: largest that fits


def test_sources_load_once(monkeypatch):
    calls = []
    counted = {k: (lambda f, k=k: lambda d: calls.append(k) or f(d))(f) for k, f in E.REAL_SOURCES.items()}
    monkeypatch.setattr(E, "REAL_SOURCES", counted)
    E._real_source.cache_clear()
    try:
        D.load_benchmark("digits")
        D.load_benchmark("digit-canvases", ood_seed=3)
    finally:
        E._real_source.cache_clear()  # drop entries loaded through the counting loaders
    assert sorted(calls) == sorted(E.REAL_SOURCES)


def test_real_errors(monkeypatch):
    with pytest.raises(UnknownNameError, match="real-photos"):
        D.real_ood("paintings", 5, (1, 8, 8))
    for shape in [(3, 32, 32), (2,)]:
        with pytest.raises(DataError, match="grey images"):
            D.real_ood("real-photos", 5, shape)
    with pytest.raises(DataError, match="smaller than"):
        D.real_ood("real-faces", 5, (1, 32, 32))  # the face patches are 25x25
    monkeypatch.setattr(E, "REAL_MIN_CONTRAST", 2.0)  # unreachable on a [0, 1] scale
    with pytest.raises(DataError, match="contrast"):
        D.real_ood("real-photos", 1, (1, 8, 8))


def test_group_means_keep_far_real_and_far_synthetic_apart():
    per_set = {n: {"msp": {"auroc": v}} for n, v in
               [("u", 0.1), ("f", 0.2), ("s1", 0.3), ("s2", 0.5), ("r", 0.7), ("n", 0.9)]}
    groups = {"u": "user", "f": "far", "s1": "far-synthetic", "s2": "far-synthetic", "r": "far-real", "n": "near"}
    out = group_means(per_set, groups)
    assert list(out) == ["near", "far-real", "far-synthetic", "far", "user"]
    assert out["far-synthetic"]["msp"]["auroc"] == pytest.approx(0.4)
    assert out["far-real"]["msp"]["auroc"] == pytest.approx(0.7)
