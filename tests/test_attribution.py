"""Integrated Gradients of OOD scores (ood_core.attribution) against independent computations:
completeness, closed forms for a linear and a quadratic score, a brute-force Riemann sum of
autograd gradients, the registry's own score values, and the error messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ood_core.attribution import integrated_gradients, score_function
from ood_core.errors import DataError, OODCoreError
from ood_core.evaluate import extract_outputs
from ood_core.models import CentersHead, ModelOutput, OODModel, build_model
from ood_core.scores import make_score

# Scores whose compute is differentiable in the outputs (see the module docstring). SMOOTH ones
# have no max/argmax inside, so on a smooth network the path integrand is smooth and the
# quadrature converges fast; msp and maxlogit have kinks where the top class changes.
SMOOTH_SCORES = ["energy", "feature_norm", "joint_energy", "sum_sigmoid"]
KINKED_SCORES = ["msp", "maxlogit"]
FITTED_SCORES = ["min_distance", "max_cosine", "ovr", "separation"]  # need a fit (head or labels)


class TanhNet(nn.Module):
    """A smooth tiny network (tanh features, linear head): IG's path integral converges fast."""

    def __init__(self, d_in=5, d=4, k=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(d_in, d), nn.Tanh())
        self.head = nn.Linear(d, k)

    def forward(self, x):
        z = self.backbone(x)
        return ModelOutput(z, self.head(z))


def _registry_score(model, name_or_score, x) -> np.ndarray:
    """The score as the evaluator computes it: model outputs (no grad), then ``Score.__call__``."""
    score = make_score(name_or_score) if isinstance(name_or_score, str) else name_or_score
    with torch.no_grad():
        return score(model(x))


# ------------------------------------------------------------------------------- (a) completeness
@pytest.mark.parametrize("name", SMOOTH_SCORES)
def test_completeness_on_a_smooth_model(name):
    model = TanhNet()
    x = torch.randn(6, 5) * 2
    x0 = torch.randn(5) * 0.5
    res = integrated_gradients(model, x, name, baseline=x0, n_steps=48)
    assert res.attributions.shape == x.shape
    # completeness from score values computed independently of captum
    gap = _registry_score(model, name, x) - _registry_score(model, name, x0[None].expand_as(x))
    sums = res.attributions.double().sum(dim=1).numpy()
    np.testing.assert_allclose(sums, gap, rtol=1e-4, atol=1e-5)
    assert res.delta.abs().max() < 1e-4
    np.testing.assert_allclose(res.scores.numpy(), _registry_score(model, name, x), rtol=1e-6, atol=1e-7)
    # not vacuous: the score really changes along the path
    assert np.abs(gap).min() > 1e-3


@pytest.mark.parametrize("name", ["energy", "msp"])
def test_captum_delta_is_the_completeness_gap_and_shrinks_with_steps(name):
    """On a trained ReLU CNN (the shipped digits model: kinks along the path, so the quadrature
    converges slowly) delta is not tiny, but it is exactly sum(attr) - (s(x) - s(x0)), and it
    shrinks as the path gets more points."""
    from conftest import CHECKPOINTS
    from ood_core.checkpoint import load_checkpoint
    from ood_core.data import load_benchmark_from_spec

    model, meta = load_checkpoint(CHECKPOINTS / "ce_digits.pt", device="cpu")
    x = load_benchmark_from_spec(meta["dataset"]).test.x[:8]
    worst = []
    for n in (8, 256):
        res = integrated_gradients(model, x, name, n_steps=n)
        gap = _registry_score(model, name, x) - _registry_score(model, name, torch.zeros_like(x))
        own_delta = res.attributions.double().flatten(1).sum(1).numpy() - gap
        np.testing.assert_allclose(res.delta.numpy(), own_delta, atol=2e-4)
        worst.append(np.median(np.abs(own_delta / gap)))
    assert worst[0] > 0.01  # few steps: a visible quadrature error (so the check below means something)
    assert worst[1] < worst[0] / 2


# ------------------------------------------------------------------------------- (b) closed forms
def _linear_model(d_in=6, d=3):
    """features z = A x + a, one logit w.z + b: maxlogit(x) = w.(A x + a) + b, linear in x."""
    torch.manual_seed(2)
    backbone = nn.Linear(d_in, d)
    head = nn.Linear(d, 1)
    return OODModel(backbone, head, {"input_shape": [d_in]}), backbone, head


def test_linear_score_has_ig_equal_to_input_times_weight():
    model, backbone, head = _linear_model()
    x = torch.randn(5, 6)
    x0 = torch.randn(5, 6)  # one baseline per sample
    res = integrated_gradients(model, x, "maxlogit", baseline=x0, n_steps=4)
    # ds/dx = A^T w everywhere, so IG = (x - x0) * A^T w exactly, for any number of steps
    grad = (backbone.weight.detach().T @ head.weight.detach()[0]).double()
    expected = (x - x0).double() * grad
    np.testing.assert_allclose(res.attributions.double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    # sign convention: high = ID, so a coordinate moved along +grad pushes toward ID (positive)
    push = (x - x0).double() * grad.sign()
    assert (torch.sign(res.attributions.double()) == torch.sign(push)).float().mean() > 0.99


def test_quadratic_score_matches_its_midpoint_closed_form():
    """min_distance with one centre c and z = A x + a: s(x) = -||A x + a - c||^2. Its gradient
    -2 A^T (A x + a - c) is affine in x, so the path average is the gradient at the midpoint."""
    torch.manual_seed(3)
    backbone = nn.Linear(4, 3)
    head = CentersHead(3, 1)
    model = OODModel(backbone, head, {"input_shape": [4]})
    score = make_score("min_distance").fit(ModelOutput(torch.zeros(2, 3), torch.zeros(2, 1)), torch.zeros(2), model)
    assert score.source == "head"
    x = torch.randn(3, 4) * 2
    res = integrated_gradients(model, x, score, baseline="zeros", n_steps=8)
    a_mat, a_vec = backbone.weight.detach().double(), backbone.bias.detach().double()
    c = head.centers.detach().double()[0]
    mid = x.double() / 2  # baseline 0
    grad_mid = -2 * (a_mat.T @ ((mid @ a_mat.T + a_vec - c).T)).T
    expected = x.double() * grad_mid
    np.testing.assert_allclose(res.attributions.double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- (c) Riemann sum
@pytest.mark.parametrize("name", ["energy", "feature_norm", "joint_energy"])
def test_agrees_with_a_brute_force_riemann_sum_of_autograd(name):
    model = TanhNet(seed=4)
    x = torch.randn(3, 5) * 2
    x0 = torch.zeros_like(x)
    m = 4000  # midpoint rule: error O(1/m^2)
    total = torch.zeros_like(x, dtype=torch.float64)
    for a in (torch.arange(m, dtype=torch.float64) + 0.5) / m:
        xa = (x0 + float(a) * (x - x0)).requires_grad_(True)
        out = model(xa)
        s = make_score(name).compute(ModelOutput(out.features, out.logits))
        (g,) = torch.autograd.grad(s.sum(), xa)
        total += g.double()
    brute = (x - x0).double() * total / m
    res = integrated_gradients(model, x, name, n_steps=64)
    np.testing.assert_allclose(res.attributions.double().numpy(), brute.numpy(), rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------- (d) registry values
@pytest.mark.parametrize("name", SMOOTH_SCORES + KINKED_SCORES + FITTED_SCORES)
def test_differentiable_score_equals_the_registry_score(name):
    torch.manual_seed(5)
    model = build_model("smallcnn", 4, (1, 8, 8), feature_dim=16).eval()
    x = torch.rand(10, 1, 8, 8)
    score = make_score(name)
    if score.requires_fit:
        train_x, train_y = torch.rand(40, 1, 8, 8), torch.arange(40) % 4
        score.fit(extract_outputs(model, train_x), train_y, model)
    expected = score(extract_outputs(model, x))  # the evaluator's path
    xg = x.clone().requires_grad_(True)
    got = score_function(model, score)(xg)
    assert got.requires_grad  # differentiable, so attributable
    np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    res = integrated_gradients(model, x[:2], score, n_steps=8)
    np.testing.assert_allclose(res.scores.numpy(), expected[:2], rtol=1e-5, atol=1e-6)


def test_single_sample_mean_baseline_and_mode_restored():
    torch.manual_seed(6)
    model = build_model("mlp", 3, (2,), feature_dim=8)
    model.train()
    ref = torch.randn(50, 2) + 3.0
    x = torch.tensor([0.5, -1.0])
    with torch.no_grad():  # the caller's no_grad must not break the attribution
        res = integrated_gradients(model, x, "energy", baseline="mean", reference=ref, n_steps=64)
    assert res.attributions.shape == (2,)
    assert model.training
    model.eval()
    gap = _registry_score(model, "energy", x[None]) - _registry_score(model, "energy", ref.mean(0, keepdim=True))
    assert res.baseline_scores.item() == pytest.approx(float(_registry_score(model, "energy", ref.mean(0, keepdim=True))[0]),
                                                       rel=1e-6)
    assert float(res.attributions.double().sum()) == pytest.approx(float(gap[0]), abs=abs(float(res.delta[0])) + 1e-6)


# ------------------------------------------------------------------------------- (e) errors
def test_score_that_needs_inputs_is_refused():
    model = build_model("smallcnn", 4, (1, 8, 8), feature_dim=16)
    with pytest.raises(OODCoreError, match="jacobian_norm.*cannot be attributed.*inputs"):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), "jacobian_norm")


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "vim"])
def test_non_differentiable_fitted_scores_are_refused(name):
    torch.manual_seed(7)
    model = build_model("smallcnn", 4, (1, 8, 8), feature_dim=16).eval()
    train_x, train_y = torch.rand(40, 1, 8, 8), torch.arange(40) % 4
    score = make_score(name).fit(extract_outputs(model, train_x), train_y, model)
    with pytest.raises(OODCoreError, match=f"{name}.*not differentiable"):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), score)


def test_unfitted_score_name_says_how_to_fit():
    model = build_model("smallcnn", 4, (1, 8, 8), feature_dim=16)
    with pytest.raises(OODCoreError, match=r"needs training statistics.*\.fit\("):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), "mahalanobis")


def test_wrong_shapes_and_options_are_refused():
    model = build_model("smallcnn", 4, (1, 8, 8), feature_dim=16)
    with pytest.raises(DataError, match=r"shape \(2, 1, 16, 16\).*\(1, 8, 8\)"):
        integrated_gradients(model, torch.rand(2, 1, 16, 16), "energy")
    with pytest.raises(DataError, match="baseline has shape"):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), "energy", baseline=torch.zeros(3, 3))
    with pytest.raises(OODCoreError, match="reference"):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), "energy", baseline="mean")
    with pytest.raises(OODCoreError, match="unknown baseline"):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), "energy", baseline="blur")
    with pytest.raises(OODCoreError, match="n_steps"):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), "energy", n_steps=1)
    with pytest.raises(DataError, match="NaN"):
        integrated_gradients(model, torch.full((1, 1, 8, 8), float("nan")), "energy")
    with pytest.raises(OODCoreError, match="unknown score"):
        integrated_gradients(model, torch.rand(2, 1, 8, 8), "no_such_score")


def test_batchnorm_model_is_attributed_in_eval_mode():
    """A model left in train mode would normalise with batch statistics (scores depending on
    the other samples); the attribution uses eval mode and gives the mode back."""
    torch.manual_seed(8)
    model = build_model("smallcnn", 4, (1, 8, 8), feature_dim=16)
    with torch.no_grad():  # give BatchNorm running statistics unlike any batch's
        model(torch.rand(64, 1, 8, 8) * 3)
    model.train()
    x = torch.rand(3, 1, 8, 8)
    res = integrated_gradients(model, x, "energy", n_steps=8)
    assert model.training
    model.eval()
    np.testing.assert_allclose(res.scores.numpy(), _registry_score(model, "energy", x), rtol=1e-5)
    model.train()
    assert not np.allclose(res.scores.numpy(), _registry_score(model, "energy", x), rtol=1e-3)
