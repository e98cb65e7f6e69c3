"""2-D projections: PCA against a NumPy SVD, far OOD kept apart (PCA and UMAP), the UMAP
fit_on="id" caveat, determinism, the disk cache, nearest-ID distances against brute force,
and the input errors.

UMAP is slow to start (import ~10 s, numba compilation ~10 s on first use in a process), so
every real UMAP fit happens once, in the module-scoped ``umap_maps`` fixture; the other
UMAP tests use a stand-in fitter.
"""
from __future__ import annotations

import os
import re
import shutil
import time

import numpy as np
import pytest
import torch

from ood_core import projection as P
from ood_core.errors import DataError, OODCoreError
from ood_core.projection import (FIT_ON, PROJECTION_METHODS, Projection, default_cache_dir, nearest_id_distance,
                                 project, separation_in_map)

CACHE_NAME = re.compile(r"projection-(pca|umap)-[0-9a-f]{32}\.npz")


# ---------------------------------------------------------------------------------------------
# data and independent references


def _anisotropic(seed=0, n_id=120, n_ood=70, d=12):
    """ID and OOD sets with distinct means and well separated leading variances (so the top
    principal directions are unique and the comparison with NumPy is exact up to sign)."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(6.0, 0.5, d)
    x_id = rng.normal(size=(n_id, d)) * scales + 3.0
    x_ood = rng.normal(size=(n_ood, d)) * scales[::-1] - 2.0
    return {"id": x_id.astype(np.float32), "ood": x_ood.astype(np.float32)}


def _far_ood(seed=0, d=32, n_per=80, n_far=60):
    """ID = three tight Gaussian clusters in d-D; far OOD = one tight blob 10x farther from the
    origin than the farthest ID cluster centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(3, d))
    x_id = np.concatenate([c + 0.3 * rng.normal(size=(n_per, d)) for c in centres])
    far = rng.normal(size=d)
    far *= 10 * np.linalg.norm(centres, axis=1).max() / np.linalg.norm(far)
    x_far = far + 0.3 * rng.normal(size=(n_far, d))
    return {"id": x_id.astype(np.float32), "far": x_far.astype(np.float32)}


def _sign_rule(v):
    """Flip each row so its largest-|entry| is positive (the convention documented in projection.py)."""
    idx = np.abs(v).argmax(axis=1)
    s = np.sign(v[np.arange(len(v)), idx])
    return v * s[:, None]


def _numpy_pca(fit, sets, k=2):
    """PCA by hand: centre the fit matrix, SVD, top-k right singular vectors (sign rule applied)."""
    fit = np.asarray(fit, dtype=np.float64)
    mu = fit.mean(axis=0)
    _, s, vt = np.linalg.svd(fit - mu, full_matrices=False)
    v = _sign_rule(vt[:k])
    coords = {name: (np.asarray(x, dtype=np.float64) - mu) @ v.T for name, x in sets.items()}
    return coords, (s[:k] ** 2 / (s ** 2).sum())


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# PCA


def test_constants():
    assert PROJECTION_METHODS == ("pca", "umap")
    assert FIT_ON == ("union", "id")


def test_pca_union_matches_numpy_svd():
    feats = _anisotropic()
    proj = project(feats, method="pca", fit_on="union")
    ref, evr = _numpy_pca(np.concatenate(list(feats.values())), feats)
    assert list(proj.coords) == ["id", "ood"]
    for name in feats:
        assert proj.coords[name].dtype == np.float32 and proj.coords[name].shape == (len(feats[name]), 2)
        _close(proj.coords[name], ref[name])
    np.testing.assert_allclose(proj.explained_variance_ratio, evr, rtol=1e-6)
    assert proj.method == "pca" and proj.fit_on == "union" and proj.caveat is None and not proj.from_cache
    assert proj.params["svd_solver"] == "covariance_eigh" and proj.params["normalize"] is False  # 190 x 12: tall


def test_pca_of_a_fit_set_with_fewer_rows_than_dimensions_takes_the_svd_and_matches_numpy():
    """The covariance route needs n_fit >= d; a wide fit set (8 ID rows, d = 12) is fitted by
    the full SVD, and both routes agree with NumPy's SVD."""
    feats = _anisotropic(n_id=8, n_ood=30)
    wide = project(feats, method="pca", fit_on="id")
    tall = project(feats, method="pca", fit_on="union")
    assert wide.params["svd_solver"] == "full" and tall.params["svd_solver"] == "covariance_eigh"
    for proj, fit in ((wide, feats["id"]), (tall, np.concatenate(list(feats.values())))):
        ref, evr = _numpy_pca(fit, feats)
        for name in feats:
            _close(proj.coords[name], ref[name])
        np.testing.assert_allclose(proj.explained_variance_ratio, evr, rtol=1e-6)


def test_pca_id_fit_uses_only_the_id_mean_and_components():
    feats = _anisotropic()
    proj = project(feats, method="pca", fit_on="id")
    ref, evr = _numpy_pca(feats["id"], feats)
    for name in feats:
        _close(proj.coords[name], ref[name])
    np.testing.assert_allclose(proj.explained_variance_ratio, evr, rtol=1e-6)
    # and it really differs from the union fit (the OOD set has its own mean and spread)
    union = project(feats, method="pca", fit_on="union")
    assert not np.allclose(union.coords["ood"], proj.coords["ood"], atol=1e-2)


def test_pca_sign_does_not_depend_on_lapack():
    """Negating the data negates the centred matrix; with the sign rule the components stay
    put, so the coordinates must negate exactly (an SVD-convention sign would not)."""
    x = _anisotropic()["id"]
    a = project({"id": x}).coords["id"]
    b = project({"id": -x}).coords["id"]
    _close(b, -a)


@pytest.mark.parametrize("flip", [(-1, 1), (1, -1), (-1, -1)])
def test_pca_sign_survives_another_svd_sign_convention(monkeypatch, flip):
    """sklearn 1.9 happens to use the same convention; simulate a build/version that returns
    the components with other signs: the map must not change."""
    import sklearn.decomposition

    real = sklearn.decomposition.PCA

    class OtherSignPCA(real):
        def fit(self, x, y=None):
            super().fit(x)
            self.components_ = self.components_ * np.array(flip, dtype=self.components_.dtype)[:, None]
            return self

    feats = _anisotropic()
    ref = project(feats)
    monkeypatch.setattr(sklearn.decomposition, "PCA", OtherSignPCA)
    flipped = project(feats)
    for name in feats:
        _close(flipped.coords[name], ref.coords[name])


def test_pca_normalize_is_row_l2_normalisation():
    feats = _anisotropic()
    unit = {k: v / np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True) for k, v in feats.items()}
    ref, _ = _numpy_pca(np.concatenate(list(unit.values())), unit)
    proj = project(feats, normalize=True)
    for name in feats:
        np.testing.assert_allclose(proj.coords[name], ref[name], rtol=1e-4, atol=1e-5)
    # invariant to a positive rescaling of each row
    rng = np.random.default_rng(1)
    scaled = {k: v * rng.uniform(0.5, 5.0, size=(len(v), 1)).astype(np.float32) for k, v in feats.items()}
    again = project(scaled, normalize=True)
    for name in feats:
        np.testing.assert_allclose(again.coords[name], proj.coords[name], rtol=1e-4, atol=1e-5)


def test_torch_tensors_and_float64_give_the_float32_result():
    feats = _anisotropic()
    ref = project(feats)
    as_torch = project({k: torch.from_numpy(v.astype(np.float64)).requires_grad_() for k, v in feats.items()})
    for name in feats:
        np.testing.assert_array_equal(as_torch.coords[name], ref.coords[name])


def test_pca_keeps_far_ood_apart_for_both_fits():
    feats = _far_ood()
    for fit_on in FIT_ON:
        proj = project(feats, method="pca", fit_on=fit_on)
        d_id = nearest_id_distance(proj.coords["id"]).mean()
        d_far = nearest_id_distance(proj.coords["id"], proj.coords["far"]).mean()
        assert d_far > 2 * d_id, fit_on
        assert separation_in_map(proj)["far"] > 2, fit_on


def test_stacked_concatenates_in_dict_order():
    feats = _anisotropic()
    proj = project({"ood": feats["ood"], "id": feats["id"]})
    xy, labels = proj.stacked()
    assert xy.shape == (len(feats["ood"]) + len(feats["id"]), 2)
    np.testing.assert_array_equal(xy[: len(feats["ood"])], proj.coords["ood"])
    np.testing.assert_array_equal(xy[len(feats["ood"]):], proj.coords["id"])
    assert labels.tolist() == ["ood"] * len(feats["ood"]) + ["id"] * len(feats["id"])


def test_pca_is_deterministic():
    feats = _anisotropic()
    a, b = project(feats), project(feats)
    for name in feats:
        np.testing.assert_array_equal(a.coords[name], b.coords[name])


# ---------------------------------------------------------------------------------------------
# UMAP (real fits, once per module)


@pytest.fixture(scope="module")
def umap_maps(tmp_path_factory):
    pytest.importorskip("umap")
    feats = _far_ood()
    cache = tmp_path_factory.mktemp("umap-cache")
    kw = dict(method="umap", n_epochs=100, seed=0)
    t0 = time.perf_counter()
    union = project(feats, fit_on="union", cache_dir=cache, **kw)
    first_seconds = time.perf_counter() - t0  # includes the one-time numba compilation
    union_again = project(feats, fit_on="union", **kw)  # no cache: a second, independent fit
    id_fit = project(feats, fit_on="id", cache_dir=cache, **kw)
    return dict(feats=feats, cache=cache, kw=kw, union=union, union_again=union_again, id_fit=id_fit,
                first_seconds=first_seconds)


def test_umap_union_keeps_far_ood_apart(umap_maps):
    proj = umap_maps["union"]
    assert proj.coords["id"].shape == (240, 2) and proj.coords["far"].shape == (60, 2)
    assert proj.coords["id"].dtype == np.float32
    d_id = nearest_id_distance(proj.coords["id"]).mean()
    d_far = nearest_id_distance(proj.coords["id"], proj.coords["far"]).mean()
    assert d_far > 2 * d_id
    assert separation_in_map(proj)["far"] > 2
    assert proj.caveat is None and proj.explained_variance_ratio is None
    assert proj.params["seed"] == 0 and proj.params["n_epochs"] == 100 and proj.params["pca_dims_used"] is None


def test_umap_union_is_deterministic(umap_maps):
    a, b = umap_maps["union"], umap_maps["union_again"]
    for name in a.coords:
        np.testing.assert_array_equal(a.coords[name], b.coords[name])


def test_umap_id_fit_sets_the_caveat_and_hides_the_separation(umap_maps):
    """The documented pitfall: transform pulls far OOD next to ID, so the map shows much less
    separation than the union fit of the same data."""
    id_fit, union = umap_maps["id_fit"], umap_maps["union"]
    assert id_fit.caveat is not None
    assert "transform" in id_fit.caveat and "fit_on='union'" in id_fit.caveat and "PCA" in id_fit.caveat
    assert separation_in_map(union)["far"] > 5 * separation_in_map(id_fit)["far"]


def test_umap_cache_hit_needs_no_fit(umap_maps, monkeypatch):
    def no_fit(*a, **k):
        raise AssertionError("a cache hit must not fit")

    monkeypatch.setattr(P, "_fit_umap", no_fit)
    for fit_on, ref in (("union", umap_maps["union"]), ("id", umap_maps["id_fit"])):
        hit = project(umap_maps["feats"], fit_on=fit_on, cache_dir=umap_maps["cache"], **umap_maps["kw"])
        assert hit.from_cache and not ref.from_cache
        assert hit.caveat == ref.caveat and hit.params == ref.params and hit.fit_on == fit_on
        for name in ref.coords:
            np.testing.assert_array_equal(hit.coords[name], ref.coords[name])
    assert sorted(p.name for p in umap_maps["cache"].iterdir()) == sorted(
        p.name for p in umap_maps["cache"].iterdir() if CACHE_NAME.fullmatch(p.name))


class _FakeUMAP:
    """Stands in for umap.UMAP: records what it is given, returns the first two columns."""

    calls: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        _FakeUMAP.calls.append(("init", kwargs))

    def fit_transform(self, x):
        _FakeUMAP.calls.append(("fit_transform", np.array(x)))
        return np.asarray(x)[:, :2]

    def transform(self, x):
        _FakeUMAP.calls.append(("transform", np.array(x)))
        return np.asarray(x)[:, :2]


@pytest.mark.parametrize("fit_on", FIT_ON)
def test_umap_pca_pre_reduction_is_fitted_on_the_fit_set(monkeypatch, fit_on):
    umap = pytest.importorskip("umap")
    monkeypatch.setattr(umap, "UMAP", _FakeUMAP)
    _FakeUMAP.calls = []
    feats = _anisotropic(d=20)
    proj = project(feats, method="umap", fit_on=fit_on, pca_dims=8, seed=3, n_neighbors=7, min_dist=0.2, n_epochs=40)
    assert proj.params["pca_dims_used"] == 8
    kinds = [c[0] for c in _FakeUMAP.calls]
    assert kinds == (["init", "fit_transform"] if fit_on == "union" else ["init", "fit_transform", "transform"])
    assert _FakeUMAP.calls[0][1] == dict(n_components=2, n_neighbors=7, min_dist=0.2, n_epochs=40, random_state=3,
                                         init="spectral")
    fit_x = _FakeUMAP.calls[1][1]
    fit_raw = np.concatenate(list(feats.values())) if fit_on == "union" else feats["id"]
    ref, _ = _numpy_pca(fit_raw, {"fit": fit_raw, "ood": feats["ood"]}, k=8)
    assert fit_x.shape == (len(fit_raw), 8)
    np.testing.assert_allclose(fit_x, ref["fit"], rtol=1e-4, atol=1e-3)  # same sign rule
    if fit_on == "id":
        np.testing.assert_allclose(_FakeUMAP.calls[2][1], ref["ood"], rtol=1e-4, atol=1e-3)
        assert proj.caveat is not None
    else:
        assert proj.caveat is None


def test_umap_n_neighbors_must_be_below_the_fit_size():
    feats = {"id": np.zeros((10, 4), np.float32) + np.arange(10, dtype=np.float32)[:, None],
             "ood": np.ones((30, 4), np.float32)}
    with pytest.raises(DataError, match=r"n_neighbors=15 .* fitted on \(10\).*lower n_neighbors"):
        project(feats, method="umap", fit_on="id", n_neighbors=15)


# ---------------------------------------------------------------------------------------------
# cache


def _count_calls(monkeypatch, name):
    calls = []
    real = getattr(P, name)

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(P, name, counting)
    return calls


def _cache_files(folder):
    return sorted(os.listdir(folder))


def test_cache_hit_returns_identical_coords_without_fitting(tmp_path, monkeypatch):
    feats = _anisotropic()
    cache = tmp_path / "nested" / "cache"  # created on demand
    first = project(feats, cache_dir=cache)
    assert not first.from_cache
    files = _cache_files(cache)
    assert len(files) == 1 and CACHE_NAME.fullmatch(files[0]) and files[0].startswith("projection-pca-")

    def no_fit(*a, **k):
        raise AssertionError("a cache hit must not fit")

    monkeypatch.setattr(P, "_fit_pca", no_fit)
    t0 = time.perf_counter()
    hit = project(feats, cache_dir=cache)
    assert hit.from_cache and hit.seconds < 0.01 and time.perf_counter() - t0 < 1.0
    assert list(hit.coords) == list(first.coords)
    for name in feats:
        np.testing.assert_array_equal(hit.coords[name], first.coords[name])
    assert hit.explained_variance_ratio == first.explained_variance_ratio
    assert hit.params == first.params and hit.method == "pca" and hit.fit_on == "union" and hit.caveat is None
    # PCA has no randomness, so the seed is not part of its key
    assert project(feats, cache_dir=cache, seed=7).from_cache


def test_cache_misses_on_any_change_of_data_or_parameters(tmp_path, monkeypatch):
    feats = _anisotropic()
    project(feats, cache_dir=tmp_path)
    calls = _count_calls(monkeypatch, "_fit_pca")

    nudged = {k: v.copy() for k, v in feats.items()}
    nudged["ood"][17, 3] += 1e-3
    renamed = {"id": feats["id"], "other": feats["ood"]}
    reordered = {"ood": feats["ood"], "id": feats["id"]}
    variants = [(nudged, {}), (renamed, {}), (reordered, {}), (feats, {"normalize": True}), (feats, {"fit_on": "id"}),
                ({"x": feats["id"], "ood": feats["ood"]}, {"id_key": "x"})]
    for i, (f, kw) in enumerate(variants, start=1):
        proj = project(f, cache_dir=tmp_path, **kw)
        assert not proj.from_cache, kw
        assert len(calls) == i
    assert len(_cache_files(tmp_path)) == 1 + len(variants)
    assert project(feats, cache_dir=tmp_path).from_cache  # the original is still a hit


def test_umap_cache_key_covers_its_parameters(tmp_path, monkeypatch):
    """Each UMAP parameter changes the key (the fit is replaced by a cheap stand-in)."""
    calls = []

    def fake_fit(xs, fit_names, **kw):
        calls.append(kw)
        return {k: np.asarray(v[:, :2], np.float32) for k, v in xs.items()}, None

    monkeypatch.setattr(P, "_fit_umap", fake_fit)
    feats = _anisotropic()
    base = dict(method="umap", seed=0, n_neighbors=15, min_dist=0.1, n_epochs=200, pca_dims=50)
    project(feats, cache_dir=tmp_path, **base)
    assert project(feats, cache_dir=tmp_path, **base).from_cache and len(calls) == 1
    for change in ({"seed": 1}, {"n_neighbors": 10}, {"min_dist": 0.2}, {"n_epochs": 100}, {"pca_dims": 5},
                   {"normalize": True}):
        assert not project(feats, cache_dir=tmp_path, **{**base, **change}).from_cache, change
    assert len(calls) == 7


def test_corrupt_cache_file_is_recomputed_with_a_warning_and_fixed(tmp_path, monkeypatch):
    feats = _anisotropic()
    good = project(feats, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"\x00garbage, not a zip archive" * 10)
    calls = _count_calls(monkeypatch, "_fit_pca")
    with pytest.warns(UserWarning, match=re.escape(path.name)):
        again = project(feats, cache_dir=tmp_path)
    assert not again.from_cache and len(calls) == 1
    for name in feats:
        np.testing.assert_array_equal(again.coords[name], good.coords[name])
    fixed = project(feats, cache_dir=tmp_path)  # rewritten: a clean hit now
    assert fixed.from_cache and len(calls) == 1
    assert _cache_files(tmp_path) == [path.name]


def test_mismatching_cache_file_is_recomputed(tmp_path, monkeypatch):
    """A valid cache file of other data under this key's name (e.g. a copied folder) is not trusted."""
    feats = _anisotropic()
    other = _anisotropic(seed=5)
    project(other, cache_dir=tmp_path)
    (other_path,) = tmp_path.iterdir()
    project(feats, cache_dir=tmp_path)
    (path,) = [p for p in tmp_path.iterdir() if p != other_path]
    shutil.copyfile(other_path, path)
    with pytest.warns(UserWarning, match="mismatching"):
        proj = project(feats, cache_dir=tmp_path)
    assert not proj.from_cache
    _close(proj.coords["id"], project(feats).coords["id"])
    assert project(feats, cache_dir=tmp_path).from_cache


def test_unwritable_cache_warns_and_still_returns(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    feats = _anisotropic()
    with pytest.warns(UserWarning, match="could not write projection cache"):
        proj = project(feats, cache_dir=blocker)
    _close(proj.coords["id"], project(feats).coords["id"])
    assert _cache_files(tmp_path) == ["a-file"]


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    real_atomic_write = P.atomic_write

    def dying_midway(path, write):
        def half(f):  # the real atomic_write, with a writer that fails after some bytes
            f.write(b"partial")
            raise OSError("disk full")

        return real_atomic_write(path, half)

    monkeypatch.setattr(P, "atomic_write", dying_midway)
    with pytest.warns(UserWarning, match="disk full"):
        proj = project(_anisotropic(), cache_dir=tmp_path)
    assert proj.coords["id"].shape == (120, 2)
    assert _cache_files(tmp_path) == []


def test_no_stray_files_in_cache_dir(tmp_path):
    feats = _anisotropic()
    for kw in ({}, {"fit_on": "id"}, {"normalize": True}, {}):
        project(feats, cache_dir=tmp_path, **kw)
    names = _cache_files(tmp_path)
    assert len(names) == 3
    assert all(CACHE_NAME.fullmatch(n) and not n.startswith(".") for n in names)


def test_cache_dir_none_writes_nothing(tmp_path, monkeypatch):
    home, env_cache, cwd = tmp_path / "home", tmp_path / "env", tmp_path / "cwd"
    for d in (home, env_cache, cwd):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OOD_CACHE_DIR", str(env_cache))
    monkeypatch.chdir(cwd)

    def no_write(*a, **k):
        raise AssertionError("cache_dir=None must not write")

    monkeypatch.setattr(P, "atomic_write", no_write)
    proj = project(_anisotropic())
    assert not proj.from_cache
    assert [p for d in (home, env_cache, cwd) for p in d.rglob("*")] == []


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("OOD_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "ood-lab"


# ---------------------------------------------------------------------------------------------
# nearest-ID distances and separation


def _brute_nearest(a, b=None):
    out = []
    for i, p in enumerate(a if b is None else b):
        ds = [np.sqrt(((p - q) ** 2).sum()) for j, q in enumerate(a) if b is not None or j != i]
        out.append(min(ds))
    return np.array(out)


def test_nearest_id_distance_against_brute_force():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 2))
    a[4] = a[7]  # an exact duplicate: its nearest *other* point is at distance 0
    b = rng.normal(size=(6, 2)) * 3
    np.testing.assert_allclose(nearest_id_distance(a, b), _brute_nearest(a, b), rtol=1e-12)
    self_d = nearest_id_distance(a)
    np.testing.assert_allclose(self_d, _brute_nearest(a), rtol=1e-12, atol=1e-12)
    assert self_d[4] == 0 and self_d[7] == 0 and (np.delete(self_d, [4, 7]) > 0).all()


def test_nearest_id_distance_errors():
    with pytest.raises(DataError, match="at least 2 ID points"):
        nearest_id_distance(np.zeros((1, 2)))
    with pytest.raises(DataError, match=r"\(m, 2\)"):
        nearest_id_distance(np.zeros((3, 2)), np.zeros((3, 3)))


def test_separation_in_map_by_hand():
    grid = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)  # every nearest other point at 1
    proj = Projection(coords={"id": grid, "far": np.array([[10, 0], [0, 5]], np.float32), "on": grid + 0.0},
                      method="pca", fit_on="union", params={})
    sep = separation_in_map(proj)
    assert sep == pytest.approx({"far": (9 + 4) / 2, "on": 0.0})
    with pytest.raises(DataError, match="'in'"):
        separation_in_map(proj, id_key="in")


# ---------------------------------------------------------------------------------------------
# errors


def _ok(n=5, d=3):
    return np.arange(n * d, dtype=np.float32).reshape(n, d) ** 0.5


@pytest.mark.parametrize("features, match", [
    ({}, "empty"),
    ({"train": _ok()}, r"ID set 'id' is missing .*'train'"),
    ({"id": _ok().ravel()}, r"'id' must be a 2-D"),
    ({"id": _ok(), "ood": np.zeros((4, 3, 1))}, r"'ood' must be a 2-D .*\(4, 3, 1\)"),
    ({"id": _ok(), "ood": _ok(d=4)}, r"'ood' has 4 features per row but 'id' has 3"),
    ({"id": _ok(), "ood": np.zeros((0, 3))}, r"'ood' is empty"),
    ({"id": _ok(), "ood": np.where(np.eye(5, 3) > 0, np.nan, 1.0)}, r"'ood' contains NaN or Inf .*3 of 5 rows"),
    ({"id": np.full((4, 3), np.inf), "ood": _ok()}, r"'id' contains NaN or Inf"),
    ({"id": _ok(), "ood": np.full((2, 3), 1e300)}, r"'ood' contains NaN or Inf"),  # overflows float32
    ({"id": [["a", "b"]]}, r"'id' cannot be read as a float array"),
])
def test_bad_features_raise_data_error(features, match):
    with pytest.raises(DataError, match=match):
        project(features)


def test_unknown_method_and_fit_on_list_the_choices():
    with pytest.raises(OODCoreError, match=r"unknown projection method 'tsne'; choose one of: pca, umap"):
        project({"id": _ok()}, method="tsne")
    with pytest.raises(OODCoreError, match=r"unknown fit_on choice 'ood'; choose one of: id, union"):
        project({"id": _ok()}, fit_on="ood")


@pytest.mark.parametrize("kw, match", [
    ({"n_neighbors": 1}, "n_neighbors must be >= 2"),
    ({"n_neighbors": 7.5}, "n_neighbors must be an integer"),
    ({"min_dist": -0.1}, "min_dist must be between 0 and 1"),
    ({"n_epochs": 0}, "n_epochs must be >= 1"),
    ({"seed": None}, "seed must be an integer"),
])
def test_bad_umap_parameters(kw, match):
    with pytest.raises(OODCoreError, match=match):
        project({"id": _ok(30)}, method="umap", **kw)


def test_pca_needs_two_points_and_two_features():
    with pytest.raises(DataError, match="at least 2 fit points and 2 features"):
        project({"id": _ok(n=1)})
    with pytest.raises(DataError, match="at least 2 fit points and 2 features"):
        project({"id": _ok(d=1)})
