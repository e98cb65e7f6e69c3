"""IB data-description loss, centres head, min-distance score and geometry helpers,
each against an independent computation (NumPy loops, torch.autograd, scikit-learn)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_core.errors import DataError, OODCoreError
from ood_core.methods import METHODS, LossContext, applicable_scores
from ood_core.models import CentersHead, ModelOutput, build_model
from ood_core.recipes.ib import (IBLoss, MinDistance, center_distances, class_means, class_radii, davies_bouldin,
                                 geometry_report, separation_ratio)
from ood_core.scores import make_score


def _head_output(z, centers):
    head = CentersHead(z.shape[1], centers.shape[0]).to(centers.dtype)
    with torch.no_grad():
        head.centers.copy_(centers)
    return head, ModelOutput(z, head(z))


def _loss_numpy(z, c, y, beta, gamma, margin):
    """The documented loss, written as explicit per-sample loops."""
    n, k = len(z), len(c)
    ce = intra = 0.0
    hinge, pairs = 0.0, 0
    for i in range(n):
        d2 = np.array([((z[i] - c[j]) ** 2).sum() for j in range(k)])
        logits = -d2
        ce += -(logits[y[i]] - math.log(np.exp(logits).sum()))
        intra += d2[y[i]]
        for j in range(k):
            if j != y[i]:
                hinge += max(0.0, margin - d2[j])
                pairs += 1
    return ce / n + beta * intra / n + gamma * (hinge / pairs if pairs else 0.0)


def test_centers_head_logits_are_negative_squared_distances():
    torch.manual_seed(0)
    z, c = torch.randn(9, 5), torch.randn(4, 5)
    _, out = _head_output(z, c)
    torch.testing.assert_close(out.logits, -torch.cdist(z, c) ** 2, rtol=1e-5, atol=1e-5)
    m = build_model("mlp", 3, (2,), head="centers", feature_dim=8)
    assert isinstance(m.head, CentersHead) and m.head.centers.shape == (3, 8)
    assert m.spec["head"] == "centers"


@pytest.mark.parametrize("beta, gamma, margin", [(1.0, 0.1, 10.0), (0.3, 2.0, 3.0), (0.0, 0.0, 1.0)])
def test_ib_loss_matches_loops(beta, gamma, margin):
    rng = np.random.default_rng(1)
    z, c = rng.normal(size=(12, 3)), rng.normal(size=(4, 3))
    y = rng.integers(0, 4, 12)
    _, out = _head_output(torch.tensor(z), torch.tensor(c))
    loss = IBLoss(beta, gamma, margin)(out, torch.tensor(y))
    assert loss.item() == pytest.approx(_loss_numpy(z, c, y, beta, gamma, margin), rel=1e-9)


def test_ib_loss_one_class_no_margin_is_deep_svdd():
    rng = np.random.default_rng(2)
    z, c = rng.normal(size=(20, 6)), rng.normal(size=(1, 6))
    _, out = _head_output(torch.tensor(z), torch.tensor(c))
    loss = IBLoss(beta=1.0, gamma=0.0)(out, torch.zeros(20, dtype=torch.long))
    svdd = np.mean([np.sum((zi - c[0]) ** 2) for zi in z])  # Deep SVDD: mean ||phi(x) - c||^2
    assert loss.item() == pytest.approx(svdd, rel=1e-9)
    # the margin has no other centre to act on when K = 1
    assert IBLoss(beta=1.0, gamma=5.0)(out, torch.zeros(20, dtype=torch.long)).item() == pytest.approx(svdd, rel=1e-9)


def test_ib_loss_without_margin_is_deep_mcdd():
    """gamma = 0: L = beta * (L_MCDD - const), Deep-MCDD with sigma_k^2 = 1/2, b_k = 0, lambda = 1/beta."""
    rng = np.random.default_rng(3)
    n, k, d, beta = 15, 3, 4, 0.4
    z, c = rng.normal(size=(n, d)), rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    sigma2, lam = 0.5, 1.0 / beta
    dist = np.array([[np.sum((z[i] - c[j]) ** 2) / (2 * sigma2) + d * 0.5 * math.log(sigma2) for j in range(k)]
                     for i in range(n)])  # -log N(z; c_j, sigma^2 I) up to the 2*pi constant
    dd = dist[np.arange(n), y].mean()
    logp = -dist - np.log(np.exp(-dist).sum(1, keepdims=True))
    mcdd = dd + lam * (-logp[np.arange(n), y].mean())
    _, out = _head_output(torch.tensor(z), torch.tensor(c))
    loss = IBLoss(beta=beta, gamma=0.0)(out, torch.tensor(y))
    assert loss.item() == pytest.approx(beta * (mcdd - d * 0.5 * math.log(sigma2)), rel=1e-9)


def test_gradient_directions():
    """Compactness pulls z towards its own centre; the hinge pushes it from a close wrong centre only."""
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    z = torch.tensor([[0.3, 0.4]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    head, _ = _head_output(z.detach(), c)
    intra = IBLoss().terms(ModelOutput(z, head(z)), y)["intra"]
    (g,) = torch.autograd.grad(intra, z)
    torch.testing.assert_close(-g, 2 * (c[0] - z.detach()))  # descent direction points at c_y
    inter = IBLoss(margin=4.0).terms(ModelOutput(z, head(z)), y)["inter"]
    (g,) = torch.autograd.grad(inter, z)
    # centre 1 is within the margin (d^2 = 0.65 < 4), centre 2 is not (d^2 > 4): mean over 2 pairs
    torch.testing.assert_close(-g, (z.detach() - c[1]) * 2 / 2)
    assert float((-g * (z.detach() - c[1])).sum()) > 0  # away from the wrong centre


def test_centres_initialised_from_first_batch():
    torch.manual_seed(0)
    model = build_model("mlp", 3, (2,), head="centers", feature_dim=8)
    x, y = torch.randn(30, 2), torch.tensor([0, 1, 2] * 10)
    loss_fn = IBLoss()
    out = model(x)
    loss = loss_fn(out, y, LossContext(x, model, 1, 1))
    assert torch.isfinite(loss)
    for k in range(3):
        torch.testing.assert_close(model.head.centers[k].detach(), out.features[y == k].mean(0).detach())
    before = model.head.centers.detach().clone()
    loss_fn(model(x + 1.0), y, LossContext(x, model, 1, 1))  # only the first batch initialises
    torch.testing.assert_close(model.head.centers.detach(), before)


def test_ib_loss_refuses_other_heads_and_bad_params():
    model = build_model("mlp", 3, (2,), head="linear")
    x = torch.randn(4, 2)
    with pytest.raises(OODCoreError, match="centers"):
        IBLoss()(model(x), torch.zeros(4, dtype=torch.long), LossContext(x, model, 1, 1))
    with pytest.raises(OODCoreError, match="beta"):
        IBLoss(beta=-1.0)


def test_min_distance_reads_centres_and_falls_back_to_class_means():
    rng = np.random.default_rng(4)
    z, c = rng.normal(size=(10, 3)), rng.normal(size=(2, 3))
    head, _ = _head_output(torch.tensor(z), torch.tensor(c))
    model = torch.nn.Module()
    model.head = head
    train = ModelOutput(torch.tensor(z, dtype=torch.float32), torch.zeros(10, 2))
    y = np.array([0, 1] * 5)
    s = MinDistance().fit(train, torch.tensor(y), model)
    assert s.source == "head"
    expected = -np.array([min(np.sum((zi - cj) ** 2) for cj in c) for zi in z])
    np.testing.assert_allclose(s(train), expected, rtol=1e-5)
    s2 = make_score("min_distance").fit(train, torch.tensor(y), None)
    assert s2.source == "class_means"
    mu = np.stack([z[y == k].mean(0) for k in range(2)])
    np.testing.assert_allclose(s2(train), -np.array([min(np.sum((zi - m) ** 2) for m in mu) for zi in z]), rtol=1e-5)
    # sign: a sample at a centre is more ID than one far from both
    probe = ModelOutput(torch.tensor(np.stack([c[0], c[0] + 50.0]), dtype=torch.float32), torch.zeros(2, 2))
    sp = s(probe)
    assert sp[0] > sp[1] and sp[0] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(OODCoreError):
        MinDistance()(probe)


def test_geometry_helpers_against_loops():
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), [5, 7, 6, 8])
    z = rng.normal(size=(len(y), 3)) * 0.5 + rng.normal(size=(4, 3))[y] * 3
    mu = np.stack([z[y == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(class_means(z, y), mu)
    radii = [np.mean([np.linalg.norm(z[i] - mu[k]) for i in range(len(y)) if y[i] == k]) for k in range(4)]
    np.testing.assert_allclose(class_radii(z, torch.tensor(y)), radii)
    cd = np.array([[np.linalg.norm(mu[a] - mu[b]) for b in range(4)] for a in range(4)])
    np.testing.assert_allclose(center_distances(mu), cd, atol=1e-12)
    inter = np.mean([cd[a, b] for a in range(4) for b in range(4) if a != b])
    assert separation_ratio(z, y) == pytest.approx(inter / np.mean(radii))
    # Davies-Bouldin by its definition: mean over k of max_{l != k} (s_k + s_l) / ||mu_k - mu_l||
    db = np.mean([max((radii[a] + radii[b]) / cd[a, b] for b in range(4) if b != a) for a in range(4)])
    assert davies_bouldin(z, y) == pytest.approx(db, rel=1e-10)
    # hand example: two classes, radius 1 each, centres 4 apart -> ratio 4, DB (1 + 1)/4
    zz = np.array([[-1.0, 0], [1, 0], [3, 0], [5, 0]])
    yy = np.array([0, 0, 1, 1])
    assert separation_ratio(zz, yy) == pytest.approx(4.0)
    assert davies_bouldin(zz, yy) == pytest.approx(0.5)
    assert davies_bouldin(zz, np.arange(4)) == 0.0  # one sample per class: no spread
    with pytest.raises(DataError):
        davies_bouldin(zz, np.zeros(4, dtype=int))  # one class: no index
    rep = geometry_report(zz, yy)
    assert rep["mean_radius"] == pytest.approx(1.0) and rep["mean_center_distance"] == pytest.approx(4.0)
    # learned centres may be passed instead of the class means
    assert separation_ratio(zz, yy, centers=np.array([[0.0, 0], [8, 0]])) == pytest.approx(8.0 / 2.5)
    with pytest.raises(DataError):
        class_means(zz, np.array([0, 0, 2, 2]))  # class 1 empty


def test_ib_method_registered_and_trains():
    import ood_core

    m = METHODS["ib"]
    assert m.head == "centers" and m.baseline == "ce" and m.scores[0] == "min_distance"
    assert "mahalanobis" in m.scores and set(m.scores) <= set(applicable_scores(m))
    IBLoss(**m.loss_params)
    r = ood_core.train("ib", "toy2d", ood_core.TrainConfig(epochs=2, seed=0), evaluate_after=False)
    assert r.meta["loss_params"] == m.loss_params
    bench = ood_core.load_benchmark("toy2d")
    report = ood_core.evaluate(r.model, bench, score_names=list(m.scores)).report
    assert all(np.isfinite(report["ood"]["ring"][s]["auroc"]) for s in m.scores)
