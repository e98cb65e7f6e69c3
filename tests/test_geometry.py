"""Jacobian norms of the representation against torch.autograd, and the random-projection estimate's statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ood_core.errors import DataError, OODCoreError
from ood_core.geometry import (jacobian_norm, jacobian_norm_difference, jacobian_norm_map, jacobian_norm_path,
                               plane_bounds)
from ood_core.models import ModelOutput, build_model


def _reference(model, x, normalize):
    """Brute force: one torch.autograd.functional.jacobian per sample, in eval mode."""
    was = model.training
    model.eval()
    out = []
    for xi in x:
        def f(a):
            o = model(a.unsqueeze(0))
            z = o.features if isinstance(o, ModelOutput) else o
            return (F.normalize(z, dim=1) if normalize else z)[0]
        out.append(torch.autograd.functional.jacobian(f, xi).double().pow(2).sum().sqrt().item())
    model.train(was)
    return np.array(out)


class SmallCNNWithBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(4, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        z = self.net(x)
        return ModelOutput(z, z[:, :2])


def _mlp(n_in, d, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 16), nn.Tanh(), nn.Linear(16, d))


def _bn_trained(model, x):
    """Give BatchNorm running statistics that differ from a batch's own (so eval mode matters)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x * 3 + 1)
    return model


@pytest.mark.parametrize("n_in, d", [(3, 8), (12, 5)])  # forward-mode (n < d) and reverse-mode paths
@pytest.mark.parametrize("normalize", [True, False])
def test_exact_matches_autograd_on_mlp(n_in, d, normalize):
    model = _mlp(n_in, d)
    x = torch.randn(7, n_in)
    got = jacobian_norm(model, x, method="exact", normalize=normalize, chunk_size=3)
    assert got.dtype == np.float64 and got.shape == (7,)
    np.testing.assert_allclose(got, _reference(model, x, normalize), rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_exact_matches_autograd_on_cnn_in_eval_mode_and_restores_mode(normalize):
    torch.manual_seed(1)
    x = torch.rand(4, 1, 6, 6)
    model = _bn_trained(SmallCNNWithBN(), torch.rand(16, 1, 6, 6))
    model.net[0].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    assert model.training
    got = jacobian_norm(model, x, method="exact", normalize=normalize)
    jacobian_norm(model, x, method="estimate", n_proj=2)
    assert model.training  # restored
    assert [p.requires_grad for p in model.parameters()] == flags
    np.testing.assert_allclose(got, _reference(model, x, normalize), rtol=1e-5)
    model.eval()
    jacobian_norm(model, x[:2])
    assert not model.training


def test_exact_does_not_depend_on_chunking():
    model = _bn_trained(SmallCNNWithBN(), torch.rand(16, 1, 6, 6))
    x = torch.rand(5, 1, 6, 6)
    a = jacobian_norm(model, x, chunk_size=1)
    b = jacobian_norm(model, x, chunk_size=64)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_known_closed_form_and_jnd_sign():
    """f(x) = x*x elementwise (no normalisation): J = diag(2x), ||J||_F = 2||x||."""
    square = lambda x: x * x  # noqa: E731
    model = nn.Module()
    model.forward = square
    x_known = torch.randn(5, 4) * 0.1
    x_unknown = torch.randn(6, 4) * 3.0
    kw = dict(method="exact", normalize=False)
    np.testing.assert_allclose(jacobian_norm(model, x_known, **kw), 2 * x_known.double().norm(dim=1).numpy(), rtol=1e-6)
    jnd = jacobian_norm_difference(model, x_known, x_unknown, **kw)
    expected = 2 * (x_unknown.double().norm(dim=1).mean() - x_known.double().norm(dim=1).mean()).item()
    assert jnd == pytest.approx(expected, rel=1e-6)
    assert jnd > 0


def test_estimate_is_unbiased_in_squared_norm():
    """mean_p ||v_p^T J||^2 -> ||J||_F^2; Var(||v^T J||^2) = 2||J^T J||_F^2 <= 2||J||_F^4."""
    model = _mlp(6, 10, seed=3)
    x = torch.randn(48, 6)
    exact_sq = _reference(model, x, True) ** 2
    n_proj = 300
    est_sq = jacobian_norm(model, x, method="estimate", n_proj=n_proj, seed=0) ** 2
    rel = est_sq / exact_sq
    assert np.all(np.abs(rel - 1) < 4.5 * np.sqrt(2 / n_proj))  # every sample within 4.5 sigma (bound)
    # the 32 sample means pooled: their mean is within 4 standard errors of 1
    assert abs(rel.mean() - 1) < 4 * np.sqrt(2 / (n_proj * len(x)))
    # and the estimate is per sample: samples with larger norms get larger estimates
    assert np.corrcoef(est_sq, exact_sq)[0, 1] > 0.9


def test_estimate_error_shrinks_with_more_projections():
    model = _mlp(6, 10, seed=4)
    x = torch.randn(64, 6)
    exact = _reference(model, x, True)
    errs = [np.mean(np.abs(jacobian_norm(model, x, method="estimate", n_proj=p, seed=1) / exact - 1))
            for p in (2, 16, 256)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.06


def test_estimate_is_reproducible_for_a_seed():
    model = _mlp(6, 10)
    x = torch.randn(10, 6)
    a = jacobian_norm(model, x, method="estimate", n_proj=4, seed=7)
    b = jacobian_norm(model, x, method="estimate", n_proj=4, seed=7)
    c = jacobian_norm(model, x, method="estimate", n_proj=4, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_works_on_the_smallcnn_model():
    torch.manual_seed(0)
    model = build_model("smallcnn", 6, (1, 8, 8), head="cosine", cosine_scale=1.0)
    _bn_trained(model, torch.rand(32, 1, 8, 8))
    x = torch.rand(2, 1, 8, 8)
    exact = jacobian_norm(model, x, method="exact")
    assert model.training
    np.testing.assert_allclose(exact, _reference(model, x, True), rtol=1e-4)
    est = jacobian_norm(model, x, method="estimate", n_proj=200)
    assert np.all(np.abs(est / exact - 1) < 0.25)


def test_bad_arguments_are_refused():
    model = _mlp(3, 4)
    with pytest.raises(OODCoreError, match="unknown Jacobian method"):
        jacobian_norm(model, torch.randn(2, 3), method="nope")
    with pytest.raises(OODCoreError, match="n_proj"):
        jacobian_norm(model, torch.randn(2, 3), method="estimate", n_proj=0)
    with pytest.raises(DataError):
        jacobian_norm(model, torch.randn(0, 3))


def test_path_norms_match_pointwise_reference():
    """f(x) = x*x: ||J(x(t))||_F = 2 ||(1 - t) a + t b|| along the path, end points included."""
    model = nn.Module()
    model.forward = lambda x: x * x
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 2.0, 3.0])
    t, norms = jacobian_norm_path(model, a, b, steps=5, method="exact", normalize=False)
    np.testing.assert_allclose(t, [0, 0.25, 0.5, 0.75, 1])
    expected = [2 * np.linalg.norm((1 - ti) * a.numpy() + ti * b.numpy()) for ti in t]
    np.testing.assert_allclose(norms, expected, rtol=1e-6)
    with pytest.raises(DataError, match="differ in shape"):
        jacobian_norm_path(model, a, b[:2])
    with pytest.raises(OODCoreError, match="steps"):
        jacobian_norm_path(model, a, b, steps=1)


def test_plane_map_is_indexed_y_then_x_and_matches_autograd():
    model = _mlp(2, 5, seed=2)
    xs, ys, grid = jacobian_norm_map(model, (-1.0, 2.0, 0.0, 1.0), resolution=4)
    assert grid.shape == (4, 4)
    np.testing.assert_allclose(xs, np.linspace(-1, 2, 4))
    np.testing.assert_allclose(ys, np.linspace(0, 1, 4))
    for iy, ix in [(0, 3), (2, 1), (3, 0)]:
        point = torch.tensor([[xs[ix], ys[iy]]], dtype=torch.float32)
        assert grid[iy, ix] == pytest.approx(_reference(model, point, True)[0], rel=1e-5)
    with pytest.raises(OODCoreError, match="bounds"):
        jacobian_norm_map(model, (1.0, 0.0, 0.0, 1.0))
    assert plane_bounds(np.array([[0.0, 0.0], [2.0, 4.0]]), margin=0.5) == (-1.0, 3.0, -2.0, 6.0)


def test_training_records_geometry_per_epoch_without_changing_the_run():
    from ood_core import load_benchmark
    from ood_core.geometry import nc_metrics
    from ood_core.train import TrainConfig, _geometry_probe, train

    cfg = TrainConfig(epochs=4, seed=1, geometry_every=2, probe_size=64)
    tracked = train("ce", "toy2d", cfg, evaluate_after=False)
    plain = train("ce", "toy2d", TrainConfig(epochs=4, seed=1), evaluate_after=False)
    for va, vb in zip(tracked.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(va, vb)  # the record draws from its own generator and runs in eval mode
    recorded = [h["epoch"] for h in tracked.history if "nc1" in h]
    assert recorded == [2, 4]
    assert all("jnd" in h and "nc4" in h for h in tracked.history if h["epoch"] in (2, 4))
    assert tracked.meta["history"] == tracked.history
    # the last record equals the NC metrics of the final model, recomputed here with plain torch
    probe = _geometry_probe(load_benchmark("toy2d"), cfg)
    model = tracked.model.eval()
    with torch.no_grad():
        z = model.backbone(probe["x_train"])
    ref = nc_metrics(z, probe["y_train"], model.head.weight, bias=model.head.bias)
    for k in ("nc1", "nc2_equinorm", "nc3", "nc4"):
        assert tracked.history[-1][k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6)
    with pytest.raises(OODCoreError, match="geometry_every"):
        train("ce", "toy2d", TrainConfig(epochs=1, geometry_every=-1))


def test_neural_collapse_progresses_during_training():
    """On digits, NC1 falls and the classifier aligns with the class means as CE training goes on."""
    from ood_core.train import TrainConfig, train

    run = train("ce", "digits", TrainConfig(epochs=8, seed=0, geometry_every=1), evaluate_after=False)
    first, last = run.history[0], run.history[-1]
    assert last["nc1"] < 0.25 * first["nc1"]
    assert last["nc3"] < first["nc3"]
    assert last["nc4"] < 0.05


def test_a_probe_missing_a_class_records_the_jnd_only():
    from ood_core.geometry import model_geometry_snapshot

    model = build_model("mlp", 3, (2,))
    x = torch.randn(6, 2)
    snap = model_geometry_snapshot(model, "multiclass", x, torch.tensor([0, 0, 1, 1, 0, 1]), x, x + 5)
    assert "nc1" not in snap and "jnd" in snap
    full = model_geometry_snapshot(model, "multiclass", x, torch.tensor([0, 1, 2, 0, 1, 2]), x, x + 5)
    assert "nc1" in full
