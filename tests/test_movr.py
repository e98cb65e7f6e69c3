"""m-OvR loss (Park et al., arXiv 2209.11436) against hand/NumPy values, its gradients, and its scores' signs."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ood_core
from ood_core.data import Split
from ood_core.errors import OODCoreError
from ood_core.geometry import jacobian_norm
from ood_core.methods import METHODS, LossContext
from ood_core.models import CosineHead, ModelOutput, build_model
from ood_core.recipes.movr import MarginalOvRLoss, add_angular_margin
from ood_core.scores import make_score


def _np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _out(cos):
    cos = torch.as_tensor(cos, dtype=torch.float64)
    return ModelOutput(torch.zeros(cos.shape[0], 3, dtype=torch.float64), cos)


def test_loss_matches_a_hand_computed_two_class_example():
    cos = np.array([[0.8, 0.3], [-0.2, 0.6], [0.1, -0.4]])
    y = np.array([0, 1, 1])
    T, m = 2.0, 0.5
    # by hand: theta_y = arccos(s_y); s_y' = cos(theta_y + m); L_i = -log p_y - log(1 - p_other)
    expected = []
    for c, t in zip(cos, y):
        s_y = math.cos(math.acos(c[t]) + m)
        s_o = c[1 - t]
        expected.append(-math.log(_np_sigmoid(T * s_y)) - math.log(1 - _np_sigmoid(T * s_o)))
    loss = MarginalOvRLoss(T=T, m=m, rotation=0.0)(_out(cos), torch.as_tensor(y))  # the OvR term alone
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-6)
    # first sample by the addition formula: cos(theta + m) = 0.8 cos m - 0.6 sin m = 0.41441
    s_y0 = 0.8 * math.cos(0.5) - 0.6 * math.sin(0.5)
    l0 = math.log1p(math.exp(-2 * s_y0)) + math.log1p(math.exp(2 * 0.3))
    assert expected[0] == pytest.approx(l0, rel=1e-12)
    assert l0 == pytest.approx(1.39974, abs=1e-5)


def test_margin_uses_clamped_acos_and_the_arcface_fallback_past_pi():
    c = torch.tensor([1.0, 0.5, 0.0, -0.95, -1.0], dtype=torch.float64)
    m = 0.5
    got = add_angular_margin(c, m).numpy()
    theta = np.arccos(np.clip(c.numpy(), -1 + 1e-6, 1 - 1e-6))
    want = np.where(theta + m <= np.pi, np.cos(theta + m), np.clip(c.numpy(), -1 + 1e-6, 1) - m * np.sin(m))
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert got[0] == pytest.approx(math.cos(0.5), abs=1e-3)
    # monotone in the cosine and finite gradient everywhere, including +-1
    x = torch.linspace(-1, 1, 201, dtype=torch.float64, requires_grad=True)
    s = add_angular_margin(x, m)
    assert torch.all(s[1:] >= s[:-1])
    s.sum().backward()
    assert torch.isfinite(x.grad).all()
    np.testing.assert_array_equal(add_angular_margin(c, 0.0).numpy(), c.numpy())


def test_m0_is_summed_binary_cross_entropy_and_small_T_gives_K_log2():
    torch.manual_seed(0)
    cos = torch.rand(5, 4, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 3, 1, 1, 2])
    T = 7.0
    bce = F.binary_cross_entropy_with_logits(T * cos, F.one_hot(y, 4).double(), reduction="sum") / 5
    assert MarginalOvRLoss(T=T, m=0.0, rotation=0.0)(_out(cos), y).item() == pytest.approx(bce.item(), rel=1e-9)
    assert MarginalOvRLoss(T=1e-6, m=0.5, rotation=0.0)(_out(cos), y).item() == pytest.approx(4 * math.log(2), rel=1e-5)


def test_gradient_raises_target_cosine_and_lowers_the_others():
    torch.manual_seed(0)
    loss_fn = MarginalOvRLoss(T=32.0, m=0.5, rotation=0.0)
    # on the cosines themselves: dL/ds_y < 0, dL/ds_k > 0
    s = (torch.rand(6, 5, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss_fn(ModelOutput(torch.zeros(6, 2), s), y).backward()
    onehot = F.one_hot(y, 5).bool()
    assert (s.grad[onehot] < 0).all() and (s.grad[~onehot] > 0).all()
    # through a cosine head: one SGD step on the prototypes moves each s_k the right way
    # (T = 4 so that no sigmoid saturates and every cosine gets a visible gradient)
    loss_fn = MarginalOvRLoss(T=4.0, m=0.5, rotation=0.0)
    head = CosineHead(8, 5, scale=1.0).double()
    z = torch.randn(1, 8, dtype=torch.float64)
    target = torch.tensor([2])
    before = head(z).detach()
    ctx = LossContext(torch.zeros(1, 1), torch.nn.ModuleDict({"head": head}), 1, 1)
    loss_fn(ModelOutput(z, head(z)), target, ctx).backward()
    with torch.no_grad():
        head.weight -= 1e-2 * head.weight.grad
    after = head(z).detach()
    assert after[0, 2] > before[0, 2]
    assert (after[0, [0, 1, 3, 4]] < before[0, [0, 1, 3, 4]]).all()


def test_cosine_head_scale_is_divided_out():
    torch.manual_seed(0)
    head = CosineHead(8, 3, scale=16.0)
    z = torch.randn(4, 8)
    y = torch.tensor([0, 1, 2, 0])
    ctx = LossContext(torch.zeros(4, 1), torch.nn.ModuleDict({"head": head}), 1, 1)
    with_ctx = MarginalOvRLoss(rotation=0.0)(ModelOutput(z, head(z)), y, ctx)
    on_cos = MarginalOvRLoss(rotation=0.0)(ModelOutput(z, head(z) / 16.0), y)
    assert with_ctx.item() == pytest.approx(on_cos.item(), rel=1e-6)
    linear = torch.nn.ModuleDict({"head": torch.nn.Linear(8, 3)})
    with pytest.raises(OODCoreError, match="cosine head"):
        MarginalOvRLoss()(ModelOutput(z, head(z)), y, LossContext(torch.zeros(4, 1), linear, 1, 1))


def test_rotation_auxiliary_loss_adds_a_positive_term_and_trains_its_head():
    torch.manual_seed(0)
    model = build_model("smallcnn", 3, (1, 8, 8), head="cosine", cosine_scale=1.0).eval()  # BN: no batch stats
    x = torch.rand(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = MarginalOvRLoss(rotation=0.0)
    assert len(list(plain.parameters())) == 0
    rot = MarginalOvRLoss(rotation=0.1)
    opt = torch.optim.Adam(list(model.parameters()) + list(rot.parameters()), lr=1e-2)  # before the lazy head is built
    ctx = LossContext(x, model, 1, 1)
    torch.manual_seed(1)
    out = model(x)
    base = plain(out, y, ctx)
    total = rot(out, y, ctx)
    # independent recomputation of the auxiliary term
    feats = torch.cat([out.features] + [model(torch.rot90(x, k, dims=(2, 3))).features for k in (1, 2, 3)])
    aux = F.cross_entropy(rot.rotation_head(feats), torch.tensor([0] * 6 + [1] * 6 + [2] * 6 + [3] * 6))
    assert aux.item() > 0
    assert (total - base).item() == pytest.approx(0.1 * aux.item(), rel=1e-4)
    w0 = rot.rotation_head.weight.detach().clone()
    opt.zero_grad()
    total.backward()
    assert rot.rotation_head.weight.grad is not None and rot.rotation_head.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(rot.rotation_head.weight.detach(), w0)
    vec = build_model("mlp", 3, (2,), head="cosine")
    xv = torch.randn(4, 2)
    with pytest.raises(OODCoreError, match="square images"):  # asked for directly: a clear error
        rot.rotation_loss(vec(xv), LossContext(xv, vec, 1, 1))
    # in the loss, vector inputs (toy2d) train without the term, with one warning per loss
    on_vectors = MarginalOvRLoss(rotation=0.1)
    with pytest.warns(UserWarning, match="square images"):
        got = on_vectors(vec(xv), y[:4], LossContext(xv, vec, 1, 1))
    assert got.item() == pytest.approx(MarginalOvRLoss(rotation=0.0)(vec(xv), y[:4], LossContext(xv, vec, 1, 1)).item())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on_vectors(vec(xv), y[:4], LossContext(xv, vec, 1, 1))  # warned once already


def test_bad_loss_parameters_are_refused():
    for kw in ({"T": 0}, {"T": float("nan")}, {"m": -0.1}, {"m": 4.0}, {"rotation": -1}):
        with pytest.raises(OODCoreError):
            MarginalOvRLoss(**kw)


def _prototype_model(head_kind):
    """d = 5, K = 3 prototypes along e0, e1, e2 (e3, e4 are orthogonal to all of them)."""
    model = build_model("mlp", 3, (2,), head=head_kind, feature_dim=5, cosine_scale=1.0)
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(5)[:3] * torch.tensor([[2.0], [0.5], [1.0]]))
    return model


@pytest.mark.parametrize("head_kind", ["cosine", "linear"])
def test_cosine_scores_match_numpy_and_rank_aligned_above_orthogonal(head_kind):
    model = _prototype_model(head_kind)
    feats = torch.tensor([[3.0, 0, 0, 0, 0],  # aligned with prototype 0
                          [0, 0, 0, 1.0, 2.0],  # orthogonal to every prototype
                          [0.2, 1.0, 0.1, 0.3, 0]])
    out = ModelOutput(feats, torch.zeros(3, 3))
    train = ModelOutput(torch.zeros(1, 5), torch.zeros(1, 3))
    mc = make_score("max_cosine").fit(train, torch.zeros(1, dtype=torch.long), model)(out)
    ovr = make_score("ovr").fit(train, torch.zeros(1, dtype=torch.long), model)(out)
    f = feats.numpy().astype(np.float64)
    w = model.head.weight.detach().numpy().astype(np.float64)
    cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(mc, cos.max(1), atol=1e-6)
    k = cos.argmax(1)
    T = 32.0
    want = np.array([-(np.log1p(np.exp(-T * c[i])) + sum(np.log1p(np.exp(T * c[j])) for j in range(3) if j != i))
                     for c, i in zip(cos, k)])
    np.testing.assert_allclose(ovr, want, rtol=1e-6)
    assert mc[0] > mc[1] and ovr[0] > ovr[1]
    assert mc[0] == pytest.approx(1.0) and mc[1] == pytest.approx(0.0, abs=1e-7)


def test_cosine_scores_need_fit_with_a_headed_model():
    out = ModelOutput(torch.randn(2, 5), torch.randn(2, 3))
    with pytest.raises(OODCoreError, match="fitted"):
        make_score("max_cosine")(out)
    with pytest.raises(OODCoreError, match="weight"):
        make_score("ovr").fit(out, torch.zeros(2), torch.nn.Linear(2, 2))


def test_jacobian_norm_score_is_the_negated_norm():
    torch.manual_seed(0)
    model = build_model("mlp", 3, (2,), head="cosine", cosine_scale=1.0)
    x = torch.randn(20, 2)
    score = make_score("jacobian_norm", method="exact")
    assert score.requires_inputs
    np.testing.assert_allclose(score.score_inputs(model, x), -jacobian_norm(model, x, method="exact"))
    est = make_score("jacobian_norm").score_inputs(model, x)
    assert np.all(est <= 0) and est.shape == (20,)


def test_movr_is_registered_with_a_unit_scale_cosine_head():
    m = METHODS["movr"]
    assert m.head == "cosine" and m.model_params == {"cosine_scale": 1.0} and m.baseline == "ce"
    assert m.task == "multiclass"
    assert m.loss_params == {"T": 32.0, "m": 0.5, "rotation": 0.1}  # the paper's recipe, rotation on
    assert m.scores == ("ovr", "max_cosine", "jacobian_norm", "msp", "energy")
    assert MarginalOvRLoss().rotation == 0.1 and MarginalOvRLoss().rotation_head is not None


def test_the_recommended_movr_config_has_the_papers_weight_decay():
    from ood_core.train import TrainConfig, recommended_config

    assert recommended_config("movr").weight_decay == 1e-3
    assert recommended_config("movr", weight_decay=5e-4).weight_decay == 5e-4  # the user's value wins
    assert recommended_config("movr", weight_decay=None).weight_decay == 1e-3  # an unset CLI option falls through
    assert recommended_config("ce").weight_decay == TrainConfig().weight_decay == 5e-4


def test_movr_score_params_follow_the_checkpoints_training_temperature():
    from ood_core.methods import method_score_params

    want32 = {"msp": {"logit_scale": 32.0}, "energy": {"logit_scale": 32.0}, "ovr": {"T": 32.0}}
    assert method_score_params("movr") == want32
    assert method_score_params(METHODS["movr"]) == want32
    assert method_score_params({"method": "movr", "loss_params": {"T": 32.0, "m": 0.5, "rotation": 0.1}}) == want32
    # a run trained with --param T=16 is scored at 16
    assert method_score_params({"method": "movr", "loss_params": {"T": 16.0}})["msp"] == {"logit_scale": 16.0}
    assert method_score_params("movr", {"T": 8})["ovr"] == {"T": 8.0}
    # other methods and unknown checkpoints: every score at its defaults
    assert method_score_params("ce") == {}
    assert method_score_params({"method": "not-a-method"}) == {} and method_score_params({}) == {}


def test_short_training_and_evaluation_with_the_movr_scores():
    full = ood_core.load_benchmark("digits")
    sub = lambda split, n: Split(split.x[:n], split.y[:n])  # noqa: E731  (a small slice keeps the test fast)
    bench = dataclasses.replace(full, train=sub(full.train, 256), val=sub(full.val, 64), test=sub(full.test, 60))
    run = ood_core.train("movr", bench, ood_core.TrainConfig(epochs=2, seed=0), evaluate_after=False)
    assert run.model.spec["cosine_scale"] == 1.0
    out = ood_core.extract_outputs(run.model, bench.test.x[:50])
    assert out.logits.abs().max() <= 1.0 + 1e-5  # the logits are cosines
    ev = ood_core.evaluate(run.model, bench, ood_sets={"unknown": bench.ood["unknown"][:40]},
                           score_names=["ovr", "max_cosine", "jacobian_norm"])
    np.testing.assert_allclose(ev.scores["id/max_cosine"][:50], out.logits.max(1).values.double().numpy(), atol=1e-5)
    for name in ("ovr", "max_cosine", "jacobian_norm"):
        assert np.isfinite(ev.scores[f"unknown/{name}"]).all()
        assert 0.0 <= ev.report["ood"]["unknown"][name]["auroc"] <= 1.0


def _np_softmax_max_and_lse(a):
    m = a.max(axis=1, keepdims=True)
    e = np.exp(a - m)
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1), m[:, 0] + np.log(e.sum(axis=1))


def test_evaluate_scores_a_movr_model_at_the_training_scale():
    """MSP/energy on the cosine head = softmax/logsumexp of 32 * cos (NumPy), above the T = 1 cap."""
    from ood_core.methods import method_score_params

    full = ood_core.load_benchmark("digits")
    sub = lambda split, n: Split(split.x[:n], split.y[:n])  # noqa: E731
    bench = dataclasses.replace(full, train=sub(full.train, 256), val=sub(full.val, 64), test=sub(full.test, 60))
    run = ood_core.train("movr", bench, ood_core.TrainConfig(epochs=3, seed=0), evaluate_after=False)
    ood = {"unknown": bench.ood["unknown"][:40]}
    ev = ood_core.evaluate(run.model, bench, ood_sets=ood, score_names=["msp", "energy", "ovr"],
                           score_params=method_score_params(run.meta))
    assert ev.report["score_params"] == {"msp": {"logit_scale": 32.0}, "energy": {"logit_scale": 32.0},
                                         "ovr": {"T": 32.0}}
    from ood_core.evaluate import format_table

    assert "score parameters: msp logit_scale=32; energy logit_scale=32; ovr T=32" in format_table(ev.report)
    for set_name, x in (("id", bench.test.x), ("unknown", ood["unknown"])):
        cos = ood_core.extract_outputs(run.model, x).logits.double().numpy()
        msp, lse = _np_softmax_max_and_lse(32.0 * cos)
        np.testing.assert_allclose(ev.scores[f"{set_name}/msp"], msp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ev.scores[f"{set_name}/energy"], lse, rtol=1e-5, atol=1e-5)
    K = bench.num_classes
    cap = math.e / (math.e + (K - 1) / math.e)  # max softmax of K cosines at scale 1 (~0.597 for K = 6)
    assert ev.scores["id/msp"].max() > cap + 0.2
    plain = ood_core.evaluate(run.model, bench, ood_sets=ood, score_names=["msp"])
    assert plain.report["score_params"] == {"msp": {}}
    assert plain.scores["id/msp"].max() <= cap + 1e-6
    assert "score parameters" not in format_table(plain.report)


def test_train_evaluate_after_scores_movr_at_the_training_scale():
    full = ood_core.load_benchmark("digits")
    sub = lambda split, n: Split(split.x[:n], split.y[:n])  # noqa: E731
    bench = dataclasses.replace(full, train=sub(full.train, 128), val=sub(full.val, 32), test=sub(full.test, 40))
    run = ood_core.train("movr", bench, ood_core.TrainConfig(epochs=1, seed=0))
    assert run.meta["metrics"]["score_params"]["msp"] == {"logit_scale": 32.0}
