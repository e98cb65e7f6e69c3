"""Neural-collapse metrics, principal subspaces and cosine matrices against direct NumPy loops,
NC3 and the class-mean-vs-classifier cosines of every head kind, and the per-epoch geometry
record of the training loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core.errors import DataError, OODCoreError
from ood_core.geometry import (NC_KEYS, cosine_matrix, feature_norm_stats, geometry_summary, head_comparison, head_kind,
                               model_geometry_snapshot, nc_metrics, orthogonal_energy_share, principal_subspace,
                               subspace_energy_share)
from ood_core.geometry import HEAD_KINDS as HEADS
from ood_core.models import build_model


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


# --------------------------------------------------------------------------- NC3 per head kind
def _nc3_and_cosines_reference(h, y, w, head):
    """NC3 and the class-mean-vs-classifier cosines of one head kind, written out with loops:
    normalising heads see h/||h||, a cosine head unit rows, a centres head's centres are
    centred by their sample-weighted mean."""
    n, c = len(h), len(w)
    feats = [h[i] / np.sqrt(h[i] @ h[i]) if head in ("cosine", "l2norm") else h[i] for i in range(n)]
    g = sum(feats) / n
    means = []
    for k in range(c):
        rows = [feats[i] for i in range(n) if y[i] == k]
        means.append(sum(rows) / len(rows) - g)
    if head == "cosine":
        vecs = [w[k] / np.sqrt(w[k] @ w[k]) for k in range(c)]
    elif head == "centers":
        avg = sum(w[y[i]] for i in range(n)) / n
        vecs = [w[k] - avg for k in range(c)]
    else:
        vecs = [w[k] for k in range(c)]
    m_norm = np.sqrt(sum(m @ m for m in means))
    v_norm = np.sqrt(sum(v @ v for v in vecs))
    nc3 = sum((vecs[k][j] / v_norm - means[k][j] / m_norm) ** 2 for k in range(c) for j in range(h.shape[1]))
    cos = np.array([[means[a] @ vecs[b] / np.sqrt((means[a] @ means[a]) * (vecs[b] @ vecs[b])) for b in range(c)]
                    for a in range(c)])
    return nc3, cos


def _collapsed(head, rng, c=4, d=9, per_class=15):
    """Features under perfect collapse for ``head``, class vectors aligned with them and a bias.

    Every sample = global shift + its class's vertex of a scaled simplex ETF. For the
    normalising heads (cosine, l2norm) the shift is orthogonal to the ETF (so the directions
    still form an ETF) and every sample gets its own positive norm, which those heads cannot see.
    """
    etf = 2.5 * _simplex_etf(c, d, rng)
    y = np.repeat(np.arange(c), per_class)
    shift = rng.normal(size=d)
    if head in ("cosine", "l2norm"):
        basis = principal_subspace(weight=etf)
        shift = 3.0 * (shift - basis.T @ (basis @ shift))
        h = (shift + etf[y]) * rng.uniform(0.2, 5.0, size=(len(y), 1))
    else:
        h = shift + etf[y]
    bias = None
    if head == "linear":
        w = 0.7 * etf  # = 0.7 M
        bias = -w @ shift  # absorbs the global shift (Papyan et al.'s b)
    elif head == "l2norm":
        w = 0.7 * etf / np.sqrt(shift @ shift + etf[0] @ etf[0])  # 0.7 x the centred means of h/||h||
    elif head == "cosine":
        w = rng.uniform(0.2, 5.0, size=(c, 1)) * etf  # any positive multiple of each row
    else:
        w = shift + etf + 0.2 * rng.normal(size=d)  # the class means plus a common offset (small: it moves the biases)
    return h, y, w, bias


@pytest.mark.parametrize("head", HEADS)
def test_nc3_and_cosines_vanish_under_perfect_collapse_for_every_head(head):
    rng = np.random.default_rng(HEADS.index(head))
    h, y, w, bias = _collapsed(head, rng)
    got = nc_metrics(h, y, w, bias=bias, head=head)
    assert got["nc3"] < 1e-6, got["nc3"]
    # nc1, nc2 and nc4 read the raw features: they collapse too for linear and centres; for the
    # normalising heads ||h|| varies on purpose (those heads cannot see it), so they need not be 0
    if head in ("linear", "centers"):
        for k in NC_KEYS:
            assert abs(got[k]) < 1e-9, (k, got[k])
    cos = cosine_matrix(*head_comparison(h, y, w, head=head))
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-9)
    np.testing.assert_allclose(cos[~np.eye(len(w), dtype=bool)], -1 / (len(w) - 1), atol=1e-9)  # ETF off-diagonal
    if head != "linear":  # the same collapse read with the linear-head comparison (the bug) is far from 0
        assert nc_metrics(h, y, w)["nc3"] > 1e-2


def test_centres_are_centred_by_the_class_shares_so_imbalance_and_offsets_do_not_count():
    rng = np.random.default_rng(7)
    c, d = 3, 5
    means = rng.normal(size=(c, d))
    y = np.array([0] * 5 + [1] * 20 + [2] * 40)
    h = means[y]
    m, v = head_comparison(h, y, means + rng.normal(size=d), head="centers")
    np.testing.assert_allclose(v, m, atol=1e-12)  # c_k - sum p_j c_j = mu_k - mu_G exactly
    assert nc_metrics(h, y, means - 4.0, head="centers")["nc3"] < 1e-12


@pytest.mark.parametrize("head", HEADS)
def test_nc3_and_cosines_of_every_head_match_a_brute_force_loop(head):
    rng = np.random.default_rng(10 + HEADS.index(head))
    c, d, n = 4, 6, 50
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])  # unbalanced
    h = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(c, d))[y] + 0.5
    w = rng.normal(size=(c, d))
    nc3_ref, cos_ref = _nc3_and_cosines_reference(h, y, w, head)
    got = nc_metrics(torch.tensor(h), torch.tensor(y), torch.tensor(w), head=head)
    assert got["nc3"] == pytest.approx(nc3_ref, rel=1e-9)
    assert got["nc3"] > 0.1  # not collapsed
    np.testing.assert_allclose(cosine_matrix(*head_comparison(h, y, w, head=head)), cos_ref, rtol=1e-9, atol=1e-12)


def test_head_comparison_refuses_bad_input():
    h, y = np.ones((4, 3)), np.array([0, 0, 1, 1])
    with pytest.raises(OODCoreError, match="head"):
        head_comparison(h, y, np.ones((2, 3)), head="softmax")
    with pytest.raises(OODCoreError, match="no bias"):
        nc_metrics(h + np.eye(4, 3), y, np.eye(2, 3), bias=np.zeros(2), head="cosine")
    with pytest.raises(DataError, match="labels must lie"):
        head_comparison(h, np.array([0, 0, 1, 2]), np.ones((2, 3)))


def _collapsed_model(head, rng, c=3, d=8, per_class=6):
    """A real mlp OODModel whose features sit exactly on a shifted simplex ETF (one input per
    class, the last backbone layer solved for it) and whose head is set to the collapsed
    configuration of ``head``. The shift (all ones) is orthogonal to the ETF and keeps every
    feature positive, so the backbone's final ReLU passes them unchanged."""
    model = build_model("mlp", c, (2,), head=head, feature_dim=d).eval()
    e = np.eye(c) - 1.0 / c
    etf = np.zeros((c, d))
    etf[:, :c] = 1.5 * e / np.linalg.norm(e, axis=1, keepdims=True)  # rows sum to 0: orthogonal to ones
    targets = 2.0 + etf
    prototypes = torch.randn(c, 2, generator=torch.Generator().manual_seed(int(rng.integers(1 << 31))))
    last = model.backbone.net[-2]
    with torch.no_grad():
        hidden = model.backbone.net[:-2](prototypes).double().numpy()  # (c, hidden)
        last.weight.copy_(torch.tensor(targets.T @ np.linalg.pinv(hidden.T)))
        last.bias.zero_()
        if head == "linear":
            model.head.weight.copy_(torch.tensor(0.7 * etf))
            model.head.bias.copy_(torch.tensor(rng.normal(size=c)))
        elif head == "l2norm":
            model.head.weight.copy_(torch.tensor(0.7 * etf))
            model.head.bias.copy_(torch.tensor(0.1 * rng.normal(size=c)))
        elif head == "cosine":
            model.head.weight.copy_(torch.tensor(rng.uniform(0.2, 5.0, size=(c, 1)) * etf))
        else:
            model.head.centers.copy_(torch.tensor(targets + 0.2 * rng.normal(size=d)))
    y = torch.arange(c).repeat_interleave(per_class)
    x = prototypes[y]
    with torch.no_grad():
        np.testing.assert_allclose(model.backbone(x).double().numpy(), targets[y.numpy()], atol=1e-5)
    return model, x, y


@pytest.mark.parametrize("head", HEADS)
def test_model_level_nc3_and_cosines_vanish_for_a_collapsed_model_of_every_head(head):
    from ood_core.data import Benchmark, Split

    rng = np.random.default_rng(20 + HEADS.index(head))
    model, x, y = _collapsed_model(head, rng)
    assert head_kind(model) == head
    snap = model_geometry_snapshot(model, "multiclass", x, y, x, None)
    assert snap["nc3"] < 1e-6 and snap["nc1"] < 1e-6 and snap["nc4"] == 0.0
    bench = Benchmark(name="collapsed", task="multiclass", input_shape=(2,), known=(0, 1, 2),
                      class_names=["a", "b", "c"], train=Split(x, y), val=Split(x, y),
                      test=Split(x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), y),
                      ood={"far": x + 10.0}, ood_groups={"far": "far"})
    s = geometry_summary(model, bench, jacobian=None)
    assert s["nc"]["nc3"] < 1e-6
    cos = np.asarray(s["cosine_means_vs_weights"])
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-6)
    # nc_metrics' default logits for this head kind give the same nc4 as the model's own head
    with torch.no_grad():
        out = model(x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    w = model.head.centers if head == "centers" else model.head.weight
    bias = getattr(model.head, "bias", None) if head in ("linear", "l2norm") else None
    assert (nc_metrics(out.features, y, w.detach(), bias=None if bias is None else bias.detach(), head=head)["nc4"]
            == nc_metrics(out.features, y, w.detach(), logits=out.logits, head=head)["nc4"])


def test_head_kind_of_other_heads():
    model = build_model("mlp", 3, (2,))
    model.head = torch.nn.Linear(32, 3)
    assert head_kind(model) == "linear"
    model.head = torch.nn.Identity()
    with pytest.raises(OODCoreError, match="head"):
        head_kind(model)


def test_the_mlp_bn_head_is_a_linear_head_on_its_hidden_features():
    from ood_core.geometry import head_kind

    model = build_model("mlp", 3, (2,), head="mlp-bn", head_hidden=8)
    assert head_kind(model) == "linear"
    assert model(torch.zeros(4, 2)).features.shape == (4, 8)
