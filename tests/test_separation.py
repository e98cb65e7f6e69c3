"""Outlier Exposure and the neural-collapse Separation loss (Wu et al., arXiv 2405.17816)."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ood_core
from ood_core.data import TRAIN_OUTLIERS, Split, load_benchmark, training_outliers
from ood_core.errors import DataError, OODCoreError
from ood_core.evaluate import evaluate
from ood_core.methods import METHODS, LossContext
from ood_core.models import ModelOutput, build_model
from ood_core.recipes.separation import (
    OUTLIER_FAMILY, OutlierExposureLoss, SeparationLoss, SeparationScore, oe_uniform_loss, orthogonal_energy_share,
    orthogonal_loss, parallel_loss, separation_active)
from ood_core.scores import make_score
from ood_core.train import recommended_config

SQ2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- loss terms, hand-computed
def test_parallel_loss_hand_values():
    w = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    # features equal to (a positive multiple of) their class weight direction -> -1
    h = torch.tensor([[3.0, 0.0], [0.0, 0.1]])
    assert parallel_loss(h, torch.tensor([0, 1]), w).item() == pytest.approx(-1.0)
    # h = (3, 4): cos with w_0 = 0.6, with w_1 = 0.8
    h = torch.tensor([[3.0, 4.0], [3.0, 4.0]])
    assert parallel_loss(h, torch.tensor([0, 0]), w).item() == pytest.approx(-0.6)
    assert parallel_loss(h, torch.tensor([0, 1]), w).item() == pytest.approx(-(0.6 + 0.8) / 2)
    # anti-aligned feature -> +1
    assert parallel_loss(torch.tensor([[-1.0, 0.0]]), torch.tensor([0]), w).item() == pytest.approx(1.0)


def test_orthogonal_loss_hand_values_zero_and_positive():
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    # |0.6| + |0.8| for (3, 4, 0); (-3, 4, 0) gives the same (absolute values)
    h = torch.tensor([[3.0, 4.0, 0.0], [-3.0, 4.0, 0.0]])
    assert orthogonal_loss(h, w).item() == pytest.approx(1.4)
    # (1, 1, sqrt 2)/2: cosines 1/2 and 1/2 -> 1; mean with an orthogonal sample (0) -> 0.5
    h = torch.tensor([[1.0, 1.0, SQ2], [0.0, 0.0, 7.0]])
    assert orthogonal_loss(h, w).item() == pytest.approx(0.5)
    # orthogonal to every w_c -> exactly 0; any component in the span -> > 0
    assert orthogonal_loss(torch.tensor([[0.0, 0.0, 5.0]]), w).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonal_loss(torch.tensor([[0.0, 1e-3, 5.0]]), w).item() > 0


def test_oe_loss_is_log_k_for_uniform_logits_and_hand_value():
    for k in (2, 6, 10):
        logits = torch.full((4, k), 3.7)
        assert oe_uniform_loss(logits).item() == pytest.approx(math.log(k))
    # K = 2, logits (0, ln 3): softmax (1/4, 3/4); -(1/2)(ln 1/4 + ln 3/4) = 2 ln 2 - (1/2) ln 3
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert oe_uniform_loss(logits).item() == pytest.approx(2 * math.log(2) - 0.5 * math.log(3))
    # uniform is the minimum: zero gradient there, larger loss elsewhere
    z = torch.zeros(1, 5, requires_grad=True)
    oe_uniform_loss(z).backward()
    assert torch.allclose(z.grad, torch.zeros_like(z.grad), atol=1e-7)
    assert oe_uniform_loss(torch.randn(8, 5)).item() > math.log(5)


def test_weight_is_detached_in_par_and_orth():
    w = torch.randn(3, 5, requires_grad=True)
    h_in = torch.randn(4, 5, requires_grad=True)
    h_out = torch.randn(6, 5, requires_grad=True)
    (parallel_loss(h_in, torch.tensor([0, 1, 2, 0]), w) + orthogonal_loss(h_out, w)).backward()
    assert w.grad is None
    assert h_in.grad.abs().sum() > 0 and h_out.grad.abs().sum() > 0


def test_gradient_steps_move_features_the_right_way():
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    h = torch.tensor([[0.5, 0.5, 1.0]], requires_grad=True)
    g_orth, = torch.autograd.grad(orthogonal_loss(h, w), h)
    g_par, = torch.autograd.grad(parallel_loss(h, torch.tensor([0]), w), h)
    with torch.no_grad():
        assert orthogonal_loss(h - 0.1 * g_orth, w) < orthogonal_loss(h, w)  # towards the complement
        cos0 = lambda v: F.cosine_similarity(v, w[:1]).item()  # noqa: E731
        assert cos0(h - 0.1 * g_par) > cos0(h)  # towards its class direction


def test_warmup_rule():
    assert not separation_active(15, 30, 0.5) and separation_active(16, 30, 0.5)
    assert separation_active(1, 30, 0.0) and not separation_active(30, 30, 1.0)


# --------------------------------------------------------------------------- the full losses on a tiny model
def _tiny():
    torch.manual_seed(0)
    model = build_model("smallcnn", 3, (1, 8, 8), feature_dim=8)
    model.train()
    x = torch.rand(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 1, 0])
    xo = torch.rand(4, 1, 8, 8)
    return model, x, y, xo


def _ctx(model, x, xo, epoch, epochs=10):
    return LossContext(x, model, epoch, epochs, xo)


def test_warmup_switch_values():
    model, x, y, xo = _tiny()
    loss = SeparationLoss(alpha=1.0, beta=1.0, warmup=0.5)
    both = model(torch.cat([x, xo]))  # joint batch, as the loss does
    h_in, h_out, logits_in, logits_out = both.features[:5], both.features[5:], both.logits[:5], both.logits[5:]
    base = F.cross_entropy(logits_in, y) + 0.5 * (-F.log_softmax(logits_out, 1).mean())
    w = F.normalize(model.head.weight, dim=1)
    par = -(F.normalize(h_in, dim=1) * w[y]).sum(1).mean()
    orth = (F.normalize(h_out, dim=1) @ w.T).abs().sum(1).mean()
    assert loss(model(x), y, _ctx(model, x, xo, 5)).item() == pytest.approx(base.item(), rel=1e-5)  # warm-up
    assert "par" not in loss.last_terms
    on = loss(model(x), y, _ctx(model, x, xo, 6)).item()
    assert on == pytest.approx((base + par + orth).item(), rel=1e-5)
    assert loss.last_terms["orth"] > 0
    # and the OE baseline is the warm-up loss
    assert OutlierExposureLoss()(model(x), y, _ctx(model, x, xo, 6)).item() == pytest.approx(base.item(), rel=1e-5)


def test_separation_terms_send_no_gradient_to_the_head_weight():
    model, x, y, xo = _tiny()

    def grads(loss_fn):
        model.zero_grad()
        loss_fn(model(x), y, _ctx(model, x, xo, 10)).backward()
        return model.head.weight.grad.clone(), model.backbone.net[0][0].weight.grad.clone()

    w_sep, b_sep = grads(SeparationLoss())
    w_oe, b_oe = grads(OutlierExposureLoss())
    assert torch.allclose(w_sep, w_oe, atol=1e-6)  # L_par, L_orth add nothing to dL/dW
    assert not torch.allclose(b_sep, b_oe, atol=1e-6)  # ... but they do move the backbone


def test_separate_batch_option_and_missing_outliers():
    model, x, y, xo = _tiny()
    loss = SeparationLoss(joint_batch=False, warmup=0.0)
    out = model(x)
    value = loss(out, y, _ctx(model, x, xo, 1)).item()
    o = model(xo)
    w = F.normalize(model.head.weight, dim=1)
    expect = (F.cross_entropy(out.logits, y) + 0.5 * oe_uniform_loss(o.logits)
              - (F.normalize(out.features, dim=1) * w[y]).sum(1).mean()
              + (F.normalize(o.features, dim=1) @ w.T).abs().sum(1).mean())
    assert value == pytest.approx(expect.item(), rel=1e-5)
    with pytest.raises(OODCoreError, match="outliers"):
        loss(out, y, LossContext(x, model, 1, 10, None))
    for bad in ({"alpha": -1}, {"beta": float("nan")}, {"warmup": 1.5}, {"oe_weight": -0.1}):
        with pytest.raises(OODCoreError):
            SeparationLoss(**bad)


# --------------------------------------------------------------------------- score
class _Head(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        self.head.weight.data.copy_(w)


def test_score_value_and_sign():
    w = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    s = make_score("separation").fit(None, None, _Head(w))
    h = torch.tensor([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [0.0, 0.0]])
    got = s(ModelOutput(h, logits))
    # MSP 3/4 + 1; MSP 1/2 + 0.6 + 0.8; MSP 1/2 + 0
    np.testing.assert_allclose(got, [1.75, 1.9, 0.5], rtol=1e-6)
    # sign: an ID-like sample (in span{w_c}, confident) scores higher than an orthogonal, uncertain one
    id_like = s(ModelOutput(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[5.0, 0.0]])))
    ood_like = s(ModelOutput(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0]])))
    assert id_like[0] > ood_like[0]
    with pytest.raises(OODCoreError, match="not fitted"):
        SeparationScore()(ModelOutput(h, logits))


# --------------------------------------------------------------------------- geometry
def test_orthogonal_energy_share_brute_force_and_limits():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 6))
    h = rng.normal(size=(10, 6))
    share = orthogonal_energy_share(torch.tensor(h), torch.tensor(w))
    for i in range(10):  # projection by least squares: argmin_a ||W^T a - h||
        a, *_ = np.linalg.lstsq(w.T, h[i], rcond=None)
        r = h[i] - w.T @ a
        assert share[i] == pytest.approx(r @ r / (h[i] @ h[i]), rel=1e-9)
    in_span = np.array([[1.0, -2.0, 0.5]]) @ w
    null = np.linalg.svd(w)[2][3:]  # rows orthogonal to every w_c
    np.testing.assert_allclose(orthogonal_energy_share(in_span, w), [0.0], atol=1e-12)
    np.testing.assert_allclose(orthogonal_energy_share(null, w), np.ones(3), atol=1e-12)
    # a rank-deficient W (a repeated row) spans the same space
    np.testing.assert_allclose(orthogonal_energy_share(h, np.vstack([w, w[:1]])), share, atol=1e-12)
    with pytest.raises(OODCoreError):
        orthogonal_energy_share(h, w[:, :5])


# --------------------------------------------------------------------------- training outliers
@pytest.fixture(scope="module")
def digits():
    return load_benchmark("digits")


def test_outlier_family_shape_range_and_held_out(digits):
    assert OUTLIER_FAMILY in TRAIN_OUTLIERS and OUTLIER_FAMILY not in digits.ood
    o = training_outliers(OUTLIER_FAMILY, digits, n=400, seed=3)
    assert o.shape == (400, *digits.input_shape) and o.dtype == torch.float32
    assert o.min() >= 0 and o.max() <= 1
    assert torch.equal(o, training_outliers(OUTLIER_FAMILY, digits, n=400, seed=3))  # seeded
    flat = o.flatten(1)
    # no outlier is an image of any split or of any evaluation set
    for ref in [digits.train.x, digits.val.x, digits.test.x, *digits.ood.values()]:
        assert not (torch.cdist(flat, ref.flatten(1)) < 1e-6).any()
    # every outlier is a rearrangement of the pixels of some TRAINING image (same pixel multiset)
    train_sorted = digits.train.x.flatten(1).sort(dim=1).values
    d = torch.cdist(flat.sort(dim=1).values, train_sorted).min(dim=1).values
    assert (d < 1e-6).all()


def test_outliers_read_only_the_training_split(digits):
    # val/test replaced by a sentinel value that no training pixel has
    sentinel = 0.123456
    assert not (digits.train.x == sentinel).any()
    marked = dataclasses.replace(
        digits, val=Split(torch.full_like(digits.val.x, sentinel), digits.val.y),
        test=Split(torch.full_like(digits.test.x, sentinel), digits.test.y))
    o = training_outliers(OUTLIER_FAMILY, marked, n=300)
    assert not torch.isclose(o, torch.tensor(sentinel)).any()


def test_outlier_family_other_shapes(digits):
    rgb = dataclasses.replace(digits, input_shape=(3, 32, 28),
                              train=Split(torch.rand(20, 3, 32, 28), torch.zeros(20, dtype=torch.long)))
    o = training_outliers(OUTLIER_FAMILY, rgb, n=30)
    assert o.shape == (30, 3, 32, 28) and 0 <= o.min() and o.max() <= 1
    line = dataclasses.replace(digits, input_shape=(1, 1, 5),
                               train=Split(torch.rand(4, 1, 1, 5), torch.zeros(4, dtype=torch.long)))
    assert training_outliers(OUTLIER_FAMILY, line, n=5).shape == (5, 1, 1, 5)
    with pytest.raises(DataError):
        training_outliers(OUTLIER_FAMILY, load_benchmark("toy2d"), n=5)


# --------------------------------------------------------------------------- registration and a smoke run
def test_methods_registered():
    sep, oe = METHODS["separation"], METHODS["oe"]
    assert sep.baseline == "oe" and sep.scores == ("separation", "msp", "energy", "maxlogit")
    assert sep.outliers == oe.outliers == OUTLIER_FAMILY and sep.head == oe.head == "linear"
    assert {"oe_weight": 0.5, "alpha": 1.0, "beta": 1.0, "warmup": 0.5}.items() <= sep.loss_params.items()
    assert oe.loss_params["oe_weight"] == 0.5


def test_smoke_training_and_evaluation(digits):
    small = dataclasses.replace(digits, train=Split(digits.train.x[:96], digits.train.y[:96]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only add overhead on a busy CPU
    try:
        r = ood_core.train("separation", small, ood_core.TrainConfig(epochs=2, batch_size=32, seed=0),
                           evaluate_after=False)
    finally:
        torch.set_num_threads(threads)
    m = evaluate(r.model, small, ood_sets={"unknown": small.ood["unknown"]}, score_names=["separation", "msp"]).report
    assert "separation" in m["ood"]["unknown"] and 0 <= m["ood"]["unknown"]["separation"]["auroc"] <= 1
    assert r.meta["loss_params"]["warmup"] == 0.5


# --------------------------------------------------------------------------- the fine-tune protocol
def test_oe_and_separation_share_the_fine_tune_protocol():
    sep, oe = METHODS["separation"], METHODS["oe"]
    assert sep.pretrain == oe.pretrain == "ce"
    assert sep.train_defaults == oe.train_defaults  # same schedule ...
    assert sep.outliers == oe.outliers and sep.outlier_ratio == oe.outlier_ratio == 2.0  # ... same outliers
    d = sep.train_defaults
    assert (d["optimizer"], d["schedule"], d["weight_decay"], d["lr_min"]) == ("sgd", "cosine-step", 5e-4, 1e-6)
    assert METHODS["ce"].pretrain is None


@pytest.fixture
def quick_ce(monkeypatch):
    """The ce recipe with tiny defaults, so the implicit pretrain stage is cheap."""
    monkeypatch.setitem(METHODS, "ce", dataclasses.replace(METHODS["ce"], train_defaults={"epochs": 2, "batch_size": 32}))


def _fine(epochs=4, seed=0):
    return ood_core.TrainConfig(epochs=epochs, batch_size=32, seed=seed, optimizer="sgd", lr=0.01,
                                schedule="cosine-step", lr_min=1e-6)


def _record_separation_terms(monkeypatch):
    calls = []
    forward = SeparationLoss.forward

    def spy(self, out, target, ctx):
        loss = forward(self, out, target, ctx)
        calls.append((ctx.epoch, ctx.epochs, "par" in self.last_terms))
        return loss

    monkeypatch.setattr(SeparationLoss, "forward", spy)
    return calls


def test_implicit_pretrain_equals_explicit_init_and_terms_switch_on_in_the_fine_tune(digits, quick_ce, monkeypatch):
    small = dataclasses.replace(digits, train=Split(digits.train.x[:64], digits.train.y[:64]))
    calls = _record_separation_terms(monkeypatch)
    seen = []
    implicit = ood_core.train("separation", small, _fine(), progress=seen.append, evaluate_after=False)
    # progress: the pretrain stage (ce, 2 epochs of 2 steps) then the fine-tune (4 epochs of 2 steps)
    assert [(p.stage, p.epoch, p.epochs) for p in seen if p.step == p.steps] == [
        ("pretrain", 1, 2), ("pretrain", 2, 2), *(("train", e, 4) for e in (1, 2, 3, 4))]
    # warm-up = half of the FINE-TUNE epochs: the separation terms are on in fine-tune epochs 3 and 4
    assert sorted(set(calls)) == [(1, 4, False), (2, 4, False), (3, 4, True), (4, 4, True)]
    assert len(implicit.history) == 4 and implicit.meta["init"]["method"] == "ce"
    assert implicit.meta["init"]["source"] == "pretrained in this run"
    assert implicit.meta["init"]["train_config"]["epochs"] == 2

    ce = ood_core.train("ce", small, recommended_config("ce", seed=0), evaluate_after=False)
    explicit = ood_core.train("separation", small, _fine(), init=ce, evaluate_after=False)
    for (k, a), b in zip(implicit.model.state_dict().items(), explicit.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert implicit.meta["init"]["weights"] == explicit.meta["init"]["weights"]
    # and fine-tuning changed the CE weights
    assert not torch.equal(ce.model.head.weight, explicit.model.head.weight)
