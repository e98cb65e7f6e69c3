"""Neural-collapse metrics, principal subspaces and cosine matrices against direct NumPy loops,
and the per-epoch geometry record of the training loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core.errors import DataError, OODCoreError
from ood_core.geometry import (NC_KEYS, cosine_matrix, feature_norm_stats, nc_metrics, orthogonal_energy_share,
                               principal_subspace, subspace_energy_share)


def _nc_reference(h, y, w, b):
    """Papyan et al.'s definitions written out with explicit loops over samples and class pairs."""
    n, d = h.shape
    c = w.shape[0]
    mu_g = h.sum(axis=0) / n
    mus = []
    for k in range(c):
        rows = [h[i] for i in range(n) if y[i] == k]
        mus.append(sum(rows) / len(rows))
    mus = np.array(mus)
    sw = np.zeros((d, d))
    for i in range(n):
        v = (h[i] - mus[y[i]])[:, None]
        sw += v @ v.T
    sw /= n
    sb = np.zeros((d, d))
    for k in range(c):
        v = (mus[k] - mu_g)[:, None]
        sb += v @ v.T
    sb /= c
    nc1 = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10)) / c
    centred = [mus[k] - mu_g for k in range(c)]
    lengths = np.array([np.sqrt(v @ v) for v in centred])
    cosines = np.array([centred[a] @ centred[b2] / (lengths[a] * lengths[b2])
                        for a in range(c) for b2 in range(c) if a != b2])
    m = np.stack(centred, axis=1)  # d x C
    nc3 = np.sum((w.T / np.sqrt(np.sum(w ** 2)) - m / np.sqrt(np.sum(m ** 2))) ** 2)
    mismatches = 0
    for i in range(n):
        logit = w @ h[i] + b
        dist = [np.sum((h[i] - mus[k]) ** 2) for k in range(c)]
        mismatches += int(np.argmax(logit) != np.argmin(dist))
    return {"nc1": nc1, "nc2_equinorm": np.std(lengths) / np.mean(lengths), "nc2_equiangular": np.std(cosines),
            "nc2_maxangle": np.mean(np.abs(cosines + 1 / (c - 1))), "nc3": nc3, "nc4": mismatches / n}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nc_metrics_match_direct_numpy_loops(seed):
    rng = np.random.default_rng(seed)
    c, d, n = 4, 6, 60
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])  # every class present, unbalanced
    h = rng.normal(size=(n, d)) + 2 * rng.normal(size=(c, d))[y]
    w, b = rng.normal(size=(c, d)), rng.normal(size=c)
    got = nc_metrics(torch.tensor(h), torch.tensor(y), torch.tensor(w), bias=b)
    ref = _nc_reference(h, y, w, b)
    assert set(got) == set(NC_KEYS)
    for k in NC_KEYS:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    assert 0 < got["nc4"] < 1  # random weights: the check is not vacuous


def _simplex_etf(c, d, rng):
    """C unit vectors in R^d with pairwise cosine -1/(C-1), rotated by a random orthogonal matrix."""
    e = np.eye(c) - np.ones((c, c)) / c  # rows: centred one-hot vectors, a simplex in R^C
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.normal(size=(d, c)))  # d x C with orthonormal columns
    return e @ q.T  # (C, d)


def test_nc_metrics_vanish_on_collapsed_features():
    rng = np.random.default_rng(0)
    c, d = 5, 12
    etf = 3.0 * _simplex_etf(c, d, rng)
    y = np.repeat(np.arange(c), 20)
    h = etf[y]  # every sample sits exactly on its class mean; means form a simplex ETF
    got = nc_metrics(h, y, weight=etf * 0.7)  # classifier = scaled class means (self-duality)
    for k in NC_KEYS:
        assert abs(got[k]) < 1e-10, (k, got[k])
    # a little within-class noise moves nc1 away from 0, and nc3 moves when W is not the means
    noisy = nc_metrics(h + 0.3 * rng.normal(size=h.shape), y, weight=etf)
    assert noisy["nc1"] > 1e-3
    assert nc_metrics(h, y, weight=rng.normal(size=(c, d)))["nc3"] > 0.1


def test_nc_metrics_use_given_logits_for_nc4():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 10)
    h = rng.normal(size=(30, 4)) + 5 * np.eye(3, 4)[y]
    w = np.eye(3, 4)
    wrong = np.roll(np.eye(3)[y], 1, axis=1)  # logits that always pick the next class
    assert nc_metrics(h, y, w, logits=wrong)["nc4"] == pytest.approx(1.0)
    assert nc_metrics(h, y, w)["nc4"] == pytest.approx(0.0)


def test_nc_metrics_refuse_bad_input():
    h, y = np.zeros((6, 3)), np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(DataError, match="weight must be"):
        nc_metrics(h, y, np.zeros((3, 4)))
    with pytest.raises(DataError, match="labels must lie"):
        nc_metrics(h, y, np.zeros((2, 3)))
    with pytest.raises(DataError, match="no sample"):
        nc_metrics(h, np.array([0, 0, 1, 1, 1, 1]), np.ones((3, 3)))
    with pytest.raises(DataError, match="logits must be"):
        nc_metrics(h, y, np.ones((3, 3)), logits=np.zeros((6, 2)))


def test_principal_subspace_from_weights_and_from_means():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 7))
    basis = principal_subspace(weight=w)
    assert basis.shape == (3, 7)
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
    # the projector equals the one from least squares: P = W^T (W W^T)^-1 W
    p_ref = w.T @ np.linalg.inv(w @ w.T) @ w
    np.testing.assert_allclose(basis.T @ basis, p_ref, atol=1e-12)
    # rank-deficient W: a duplicated row adds no direction
    assert principal_subspace(weight=np.vstack([w, w[:1]])).shape == (3, 7)
    # class means: centred, so C means span at most C - 1 directions
    means = rng.normal(size=(4, 7))
    b_means = principal_subspace(class_means_=means)
    assert b_means.shape == (3, 7)
    centred = means - means.mean(axis=0)
    np.testing.assert_allclose(b_means.T @ b_means @ centred.T, centred.T, atol=1e-12)  # contains them all
    assert principal_subspace(class_means_=means, k=1).shape == (1, 7)
    with pytest.raises(OODCoreError, match="exactly one"):
        principal_subspace()
    with pytest.raises(OODCoreError, match="exactly one"):
        principal_subspace(weight=w, class_means_=means)


def test_energy_shares_inside_and_outside_add_up_and_match_brute_force():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 6))
    h = rng.normal(size=(20, 6))
    inside = subspace_energy_share(h, principal_subspace(weight=w))
    outside = orthogonal_energy_share(h, w)
    np.testing.assert_allclose(inside + outside, 1.0, atol=1e-12)
    # brute force: least-squares projection of each sample onto the rows of W
    for i in range(len(h)):
        coef, *_ = np.linalg.lstsq(w.T, h[i], rcond=None)
        proj = w.T @ coef
        assert inside[i] == pytest.approx(proj @ proj / (h[i] @ h[i]), rel=1e-9)
    with pytest.raises(DataError, match="same d"):
        subspace_energy_share(h, np.eye(3, 5))


def test_cosine_matrix_and_feature_norm_stats():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    got = cosine_matrix(a, b)
    for i in range(3):
        for j in range(4):
            assert got[i, j] == pytest.approx(a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]), rel=1e-12)
    assert np.all(cosine_matrix(np.zeros((1, 5)), b) == 0)
    z = rng.normal(size=(101, 5))
    stats = feature_norm_stats(torch.tensor(z))
    norms = np.sqrt((z ** 2).sum(axis=1))
    assert stats["mean"] == pytest.approx(norms.mean()) and stats["median"] == pytest.approx(np.sort(norms)[50])
    assert stats["min"] <= stats["p05"] <= stats["p25"] <= stats["median"] <= stats["p75"] <= stats["p95"] <= stats["max"]
    with pytest.raises(DataError):
        feature_norm_stats(np.zeros((0, 3)))
