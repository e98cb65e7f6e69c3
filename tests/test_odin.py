"""ODIN (``ood_core/recipes/input_scores.py``) against independent computations.

* a linear model, whose input gradient of log softmax_yhat(f(x)/T) has the closed form
  W^T (onehot(yhat) - p) / T, so the perturbed input and the score are computed in NumPy;
* eps = 0 is the registry's ``msp`` with ``logit_scale = 1/T``;
* chunking under a tiny memory budget gives the scores of one batch;
* no gradient is left in the parameters, eval mode is used and the training flag restored;
* ``evaluate(..., score_names=["odin"])`` end to end on digits with the shipped CE model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

import ood_core
from ood_core.errors import DataError, OODCoreError
from ood_core.evaluate import extract_outputs
from ood_core.models import ModelOutput, build_model
from ood_core.recipes.input_scores import input_gradient_bytes_per_row
from ood_core.scores import SCORES, make_score

from conftest import CHECKPOINTS


class _Linear(torch.nn.Module):
    """logits = W flatten(x) + b; features = flatten(x)."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        super().__init__()
        self.head = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(w))
            self.head.bias.copy_(torch.from_numpy(b))

    def forward(self, x):
        z = x.flatten(1)
        return ModelOutput(z, self.head(z))


def _numpy_odin(x: np.ndarray, w: np.ndarray, b: np.ndarray, T: float, eps: float):
    """ODIN of a linear model in float64, from the closed-form gradient; also returns the gradient."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    logits = xf @ w.T + b
    p = softmax(logits / T, axis=1)
    onehot = np.eye(w.shape[0])[logits.argmax(axis=1)]
    grad = (onehot - p) @ w / T  # d log p_yhat / dx, one row per sample
    x_pert = xf - eps * np.sign(-grad)  # the paper's formula, sign convention as written
    return softmax((x_pert @ w.T + b) / T, axis=1).max(axis=1), grad


@pytest.fixture
def linear_case():
    rng = np.random.default_rng(0)
    k, d = 4, 6
    w = rng.normal(size=(k, d)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    x = rng.uniform(size=(40, 1, 2, 3)).astype(np.float32)  # image-shaped: the gradient is reshaped back
    return x, w, b


@pytest.mark.parametrize("T, eps", [(1000.0, 0.0014), (2.0, 0.05), (1.0, 0.3)])
def test_linear_model_against_the_closed_form_gradient(linear_case, T, eps):
    x, w, b = linear_case
    expected, grad = _numpy_odin(x, w, b, T, eps)
    # no gradient entry so close to 0 that float32 could flip its sign
    assert np.abs(grad).min() > 1e-4 * np.abs(grad).max()
    model = _Linear(w, b).eval()
    got = make_score("odin", temperature=T, eps=eps).score_inputs(model, torch.from_numpy(x))
    assert got.shape == (40,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    # the perturbation matters and goes the right way: confidence rises (log softmax is concave
    # in x for a linear model, and a small ascent step raises it)
    unperturbed = _numpy_odin(x, w, b, T, 0.0)[0]
    assert np.all(got >= unperturbed - 1e-9) and np.mean(got > unperturbed + 1e-12) > 0.9
    # the opposite sign would be a different score
    wrong = softmax(((x.reshape(40, -1) - eps * np.sign(grad)) @ w.T + b) / T, axis=1).max(axis=1)
    assert np.abs(wrong - expected).max() > 10 * np.abs(got - expected).max()


def test_defaults_and_parameters():
    s = make_score("odin")
    assert (s.temperature, s.eps) == (1000.0, 0.0014)
    cls = SCORES["odin"]
    assert cls.requires_inputs and cls.cost == "inputs" and cls.tasks == ("multiclass",)
    assert "sigmoid" in cls.refusal("multilabel") and cls.refusal("multiclass") is None
    for bad in (dict(temperature=0), dict(temperature=float("inf")), dict(eps=-1e-3), dict(eps=float("nan"))):
        with pytest.raises(OODCoreError):
            make_score("odin", **bad)
    with pytest.raises(OODCoreError, match="needs the inputs"):
        s.compute(ModelOutput(torch.zeros(2, 3), torch.zeros(2, 3)))
    with pytest.raises(DataError):
        s.score_inputs(_Linear(np.ones((2, 3), np.float32), np.zeros(2, np.float32)), torch.zeros(0, 3))


def _cnn(seed=0):
    torch.manual_seed(seed)
    model = build_model("smallcnn", 5, (1, 8, 8))
    model.train()
    # a few training-mode passes give BatchNorm non-trivial running statistics
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 1, 8, 8))
    return model.eval()


@pytest.mark.parametrize("T", [1000.0, 10.0, 1.0])
def test_eps_zero_is_msp_at_temperature_T(T):
    model = _cnn()
    x = torch.rand(50, 1, 8, 8)
    msp = make_score("msp", logit_scale=1.0 / T)(extract_outputs(model, x))
    odin = make_score("odin", temperature=T, eps=0.0).score_inputs(model, x)
    np.testing.assert_allclose(odin, msp, rtol=1e-6, atol=1e-9)


def test_chunks_under_a_tiny_budget_give_the_scores_of_one_batch():
    model = _cnn()
    x = torch.rand(23, 1, 8, 8)
    per_row = input_gradient_bytes_per_row(model, x[:1])
    # the activations of the CNN, not the 256-byte input, set the cost of a row
    assert per_row > 10 * 6 * x[0].numel() * 4
    one = make_score("odin", budget_bytes=1 << 40)
    ref = one.score_inputs(model, x)
    assert one.last_chunk_rows == 23
    for budget, rows in ((1, 1), (5 * per_row, 5)):  # 23 = 4 x 5 + 3: an uneven last chunk
        s = make_score("odin", budget_bytes=budget)
        np.testing.assert_allclose(s.score_inputs(model, x), ref, rtol=1e-6, atol=1e-9)
        assert s.last_chunk_rows == rows
    # the default budget (256 MiB) keeps the whole set in one chunk here
    s = make_score("odin")
    s.score_inputs(model, x)
    assert s.last_chunk_rows == 23


def test_no_parameter_gradient_and_eval_mode_used_and_restored():
    model = _cnn()
    x = torch.rand(16, 1, 8, 8)
    ref = make_score("odin").score_inputs(model, x)
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())

    # a model in training mode is scored in eval mode (BatchNorm running statistics, untouched)
    # and given back in training mode; gradients already in .grad stay as they were
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    model.train()
    got = make_score("odin").score_inputs(model, x)
    assert model.training
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert int(bn.num_batches_tracked) == stats[2]
    # the input is not modified and gets no gradient
    x2 = x.clone().requires_grad_(True)
    make_score("odin").score_inputs(model.eval(), x2)
    assert x2.grad is None and torch.equal(x2.detach(), x)


def test_non_finite_logits_are_refused():
    w = np.full((2, 3), 1e38, np.float32)
    model = _Linear(w, np.zeros(2, np.float32)).eval()
    with pytest.raises(DataError, match="odin"):
        make_score("odin").score_inputs(model, torch.full((4, 3), 10.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_scores_cpu_inputs_like_the_cpu_model():
    model = _cnn()
    x = torch.rand(64, 1, 8, 8)
    cpu = make_score("odin").score_inputs(model, x)
    gpu = make_score("odin").score_inputs(model.to("cuda"), x)
    assert next(model.parameters()).is_cuda
    # sign() of near-zero gradient entries can differ between devices: compare loosely
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-7)


def test_evaluate_end_to_end_on_digits():
    model, meta = ood_core.load_checkpoint(CHECKPOINTS / "ce_digits.pt")
    bench = ood_core.load_benchmark("digits")
    sets = {"unknown": bench.ood["unknown"], "uniform-noise": bench.ood["uniform-noise"][:100]}
    ev = ood_core.evaluate(model, bench, ood_sets=sets, score_names=["odin", "msp"])
    assert ev.scores["id/odin"].shape == (bench.test.x.shape[0],)
    np.testing.assert_allclose(ev.scores["id/odin"], make_score("odin").score_inputs(model, bench.test.x),
                               rtol=1e-6, atol=1e-9)
    for name in sets:
        assert np.isfinite(ev.scores[f"{name}/odin"]).all()
        # a trained model separates unknown digits and noise from the known ones
        assert ev.report["ood"][name]["odin"]["auroc"] > 0.8
    assert ev.report["score_params"]["odin"] == {}
    with pytest.raises(OODCoreError, match="multiclass"):
        ood_core.evaluate(model, ood_core.load_benchmark("digit-canvases"), score_names=["odin"])
