"""JointEnergy / SNoJoE recipe (ood_core/recipes/multilabel.py): scores, BCE loss, spectral norm."""
import math

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

import ood_core  # noqa: F401  (registers the recipes)
from ood_core.errors import OODCoreError
from ood_core.methods import applicable_scores, get_method
from ood_core.models import ModelOutput, build_model
from ood_core.recipes.multilabel import BCEWithLogits
from ood_core.scores import make_score, scores_for_task
from ood_core.train import TrainConfig, train


def _out(logits) -> ModelOutput:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return ModelOutput(torch.zeros(logits.shape[0], 3), logits)


def _np_softplus(x):
    # independent of torch: log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _np_sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


REFERENCE = {
    "joint_energy": lambda f: _np_softplus(f).sum(axis=1),
    "max_sigmoid": lambda f: _np_sigmoid(f).max(axis=1),
    "sum_sigmoid": lambda f: _np_sigmoid(f).sum(axis=1),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_scores_match_numpy_on_random_logits(name, scale):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((50, 6)) * scale).astype(np.float32)
    got = make_score(name)(_out(logits))
    np.testing.assert_allclose(got, REFERENCE[name](logits), rtol=1e-5, atol=1e-5)


def test_joint_energy_is_finite_and_exact_for_huge_logits():
    logits = np.array([[1e3, -1e3, 0.0], [1e3, 1e3, 1e3], [-1e3, -1e3, -1e3]], dtype=np.float32)
    got = make_score("joint_energy")(_out(logits))
    assert np.isfinite(got).all()
    # log(1+e^1000) = 1000, log(1+e^-1000) = 0, log(1+e^0) = log 2
    np.testing.assert_allclose(got, [1000 + math.log(2), 3000, 0.0], rtol=1e-6, atol=1e-6)
    for name in ("max_sigmoid", "sum_sigmoid"):
        s = make_score(name)(_out(logits))
        assert np.isfinite(s).all()
        np.testing.assert_allclose(s, REFERENCE[name](logits), atol=1e-6)


@pytest.mark.parametrize("name", ["joint_energy", "max_sigmoid", "sum_sigmoid", "maxlogit", "energy"])
def test_confident_positive_labels_score_higher_than_all_negative(name):
    confident = [[8.0, -6.0, 7.0, -5.0, -6.0, -7.0]]  # two labels confidently present
    negative = [[-6.0, -6.0, -5.0, -5.0, -6.0, -7.0]]  # nothing known on the canvas
    s = make_score(name)
    assert s(_out(confident))[0] > s(_out(negative))[0]


def test_joint_energy_rewards_several_confident_labels_unlike_maxlogit():
    one = [[6.0, -6.0, -6.0]]
    two = [[6.0, 6.0, -6.0]]
    assert make_score("joint_energy")(_out(two))[0] > make_score("joint_energy")(_out(one))[0] + 5
    assert make_score("maxlogit")(_out(two))[0] == make_score("maxlogit")(_out(one))[0]


def test_multilabel_scores_are_registered_for_multilabel_only():
    ml, mc = scores_for_task("multilabel"), scores_for_task("multiclass")
    for name in ("joint_energy", "max_sigmoid", "sum_sigmoid"):
        assert name in ml and name not in mc


def test_bce_on_a_hand_computed_example():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # -log s(0) = log 2; -log(1 - s(2)) = log(1 + e^2); -log(1 - s(-1)) = log(1 + e^-1); -log s(0) = log 2
    expected = (math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1) + math.log(2)) / 4
    loss = BCEWithLogits()(_out(logits), target, None)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # pos_weight multiplies the positive terms only (the two log 2 terms here)
    loss3 = BCEWithLogits(pos_weight=3.0)(_out(logits), target, None)
    expected3 = (3 * math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1) + 3 * math.log(2)) / 4
    assert loss3.item() == pytest.approx(expected3, rel=1e-6)


def test_bce_gradient_pushes_present_labels_up_and_absent_labels_down():
    logits = torch.zeros(1, 3, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 1.0]])
    BCEWithLogits()(_out(logits), target, None).backward()
    # dL/df_i = (sigmoid(f_i) - y_i) / (N K) = (0.5 - y_i) / 3
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.5, 0.5, -0.5]]) / 3)


def test_bce_refuses_class_index_targets_and_bad_pos_weight():
    with pytest.raises(OODCoreError, match="multi-hot"):
        BCEWithLogits()(_out(torch.zeros(4, 3)), torch.tensor([0, 1, 2, 0]), None)
    with pytest.raises(OODCoreError, match="pos_weight"):
        BCEWithLogits(pos_weight=0.0)


def test_methods_are_registered_as_specified():
    je, sn = get_method("jointenergy"), get_method("snojoe")
    assert je.task == sn.task == "multilabel"
    assert je.head == sn.head == "mlp-bn"
    assert not je.spectral_norm and sn.spectral_norm
    # the two recipes differ only in spectral norm
    assert je.model_params == sn.model_params == {"norm": "batch", "head_hidden": 256, "spectral_norm_linear": False}
    assert je.train_defaults == sn.train_defaults == {"weight_decay": 0.0}
    assert je.loss_params == sn.loss_params and je.make_loss is sn.make_loss
    assert sn.baseline == "jointenergy"
    assert je.scores == sn.scores == ("joint_energy", "maxlogit", "msp", "max_sigmoid", "energy")
    assert applicable_scores(sn)[0] == "joint_energy"


def _spec(**kw):
    return dict(arch="smallcnn", num_classes=4, input_shape=(1, 16, 16), head="mlp-bn", **kw)


def _sn_convs(model):
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]


def _twin(norm):
    """A plain and a spectral-norm model with the same raw weights (the SN model's ``original``)."""
    torch.manual_seed(0)
    plain = build_model(**_spec(norm=norm))
    sn = build_model(**_spec(norm=norm, spectral_norm=True))
    with torch.no_grad():
        for a, b in zip(_sn_convs(plain), _sn_convs(sn)):
            b.parametrizations.weight.original.copy_(a.weight * 3.0 if norm == "none" else a.weight)
        own = {k: v for k, v in plain.state_dict().items() if not k.endswith("0.weight") or "neck" in k}
        missing = sn.load_state_dict(own, strict=False)
    assert not missing.unexpected_keys
    for a, b in zip(_sn_convs(plain), _sn_convs(sn)):  # the raw weights really are shared
        if norm == "batch":
            assert torch.equal(a.weight, b.parametrizations.weight.original)
    return plain, sn


def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g), (torch.rand(n, 4, generator=g) < 0.4).float()


def test_spectral_norm_before_batchnorm_changes_neither_the_function_nor_the_gradient():
    # BN(c W x) = BN(W x) for c > 0: with the same raw weights the spectral-norm network computes
    # the same training-mode logits (float32, default eps: to float error)
    plain, sn = _twin("batch")
    plain.train(), sn.train()
    x, y = _batch()
    out_p, out_s = plain(x), sn(x)
    assert (out_p.logits - out_s.logits).abs().max().item() < 1e-4 * max(1.0, out_p.logits.abs().max().item())
    sigmas = [torch.linalg.matrix_norm(c.weight.reshape(c.weight.shape[0], -1), ord=2).item() for c in _sn_convs(plain)]
    assert max(abs(s - 1) for s in sigmas) > 0.2  # the normalisation really rescales the convs
    # ... and, the loss of the raw parameters being the same function, the same gradient of every
    # raw parameter: exact (float64) once BatchNorm's eps, the one term that sees the scale, is ~0.
    # With the default eps=1e-5 the conv gradients differ by ~1 % on this batch.
    plain, sn = (m.double() for m in _twin("batch"))
    for m in (*plain.modules(), *sn.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-14
    plain.train(), sn.train()
    x, y = x.double(), y.double()
    out_p, out_s = plain(x), sn(x)
    torch.testing.assert_close(out_p.logits, out_s.logits, rtol=1e-10, atol=1e-10)
    BCEWithLogits()(out_p, y).backward()
    BCEWithLogits()(out_s, y).backward()
    for a, b in zip(_sn_convs(plain), _sn_convs(sn)):
        ga, gb = a.weight.grad, b.parametrizations.weight.original.grad
        assert (ga - gb).norm() <= 1e-9 * ga.norm(), ((ga - gb).norm(), ga.norm())
        # why: a scale-invariant loss has <dL/dW, W> = 0, which cancels the term through sigma
        assert abs((ga * a.weight).sum()) <= 1e-9 * ga.norm() * a.weight.norm()
    torch.testing.assert_close(plain.head.weight.grad, sn.head.weight.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(plain.neck[0].weight.grad, sn.neck[0].weight.grad, rtol=1e-9, atol=1e-12)


def test_spectral_norm_without_batchnorm_is_the_net_with_w_over_sigma_and_changes_the_function():
    plain, sn = _twin("none")  # raw conv weights 3x the plain ones, so sigma is far from 1
    sn.train()
    with torch.no_grad():
        for _ in range(200):  # power iteration: each read of the weight in train mode runs one step
            for c in _sn_convs(sn):
                c.weight
    sn.eval(), plain.eval()
    # independent computation: the plain network with every conv weight divided by its exact
    # largest singular value (of the (out, in*kh*kw) matrix, what spectral_norm normalises)
    torch.manual_seed(0)
    ref = build_model(**_spec(norm="none"))
    ref.load_state_dict(plain.state_dict())
    ref.eval()
    with torch.no_grad():
        for c_ref, c_sn in zip(_sn_convs(ref), _sn_convs(sn)):
            w = c_sn.parametrizations.weight.original
            c_ref.weight.copy_(w / torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2))
        x, _ = _batch()
        got, want = sn(x), ref(x)
        raw = plain(x)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got.features, want.features, rtol=1e-3, atol=1e-5)
    # unlike with BatchNorm, the backbone function changed, and by more than a positive scalar
    # (the biases are not rescaled): residual of the best fit z_sn ~ c z_raw
    z_sn, z_raw = sn.backbone(x).flatten(), plain.backbone(x).flatten()
    c = (z_sn @ z_raw) / (z_raw @ z_raw)
    assert (z_sn - c * z_raw).norm() > 0.05 * z_sn.norm(), ((z_sn - c * z_raw).norm(), z_sn.norm())


@pytest.fixture(scope="module")
def trained_pair():
    cfg, bench = TrainConfig(epochs=2, seed=0), ood_core.load_benchmark("digit-canvases")
    sn = train("snojoe", bench, cfg, evaluate_after=False).model
    je = train("jointenergy", bench, cfg, evaluate_after=False).model
    return sn.eval(), je.eval(), bench


def _conv_sigmas(model):
    sig = []
    for mod in model.backbone.modules():
        if isinstance(mod, torch.nn.Conv2d):
            w = mod.weight.detach()  # the parametrised (normalised) weight when spectral norm is on
            sig.append(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item())
    return sig


def test_snojoe_bounds_conv_spectral_norms_and_leaves_the_head_alone(trained_pair):
    sn, je, bench = trained_pair
    convs = _sn_convs(sn)
    assert len(convs) == 5 and all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert not parametrize.is_parametrized(sn.head)
    assert not any(parametrize.is_parametrized(m) for m in sn.neck.modules())  # the reference head: untouched
    assert isinstance(sn.neck[1], torch.nn.BatchNorm1d) and sn.head.weight.shape == (bench.num_classes, 256)
    assert not any(parametrize.is_parametrized(m) for m in sn.backbone.modules()
                   if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Linear)))
    sigmas = _conv_sigmas(sn)
    assert max(sigmas) <= 1.05 and min(sigmas) >= 0.9, sigmas
    # the baseline is unconstrained: no parametrisation, and its conv weights are free to grow
    assert not any(parametrize.is_parametrized(m) for m in je.modules())
    assert max(_conv_sigmas(je)) > 1.05


def test_same_seed_with_and_without_spectral_norm_ends_at_different_logits(trained_pair):
    # same seed = same initial raw weights and batch order; the functions agree at the start
    # (previous tests) but not after training: BN's eps, its running statistics and rounding,
    # amplified over the steps, are enough (the size of that effect on FPR95 is for
    # benchmarks/snojoe_ablation.py to measure)
    sn, je, bench = trained_pair
    with torch.no_grad():
        diff = (sn(bench.test.x).logits - je(bench.test.x).logits).abs().max().item()
    assert diff > 1e-3, diff
