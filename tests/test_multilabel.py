"""JointEnergy / SNoJoE recipe (ood_core/recipes/multilabel.py): scores, BCE loss, spectral norm."""
import math

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

import ood_core  # noqa: F401  (registers the recipes)
from ood_core.errors import OODCoreError
from ood_core.methods import applicable_scores, get_method
from ood_core.models import ModelOutput
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
    assert je.head == sn.head == "linear"
    assert not je.spectral_norm and sn.spectral_norm
    assert not sn.model_params.get("spectral_norm_linear", False)
    assert sn.baseline == "jointenergy"
    assert je.scores == sn.scores == ("joint_energy", "maxlogit", "msp", "max_sigmoid", "energy")
    assert applicable_scores(sn)[0] == "joint_energy"


def _conv_sigmas(model):
    sig = []
    for mod in model.backbone.modules():
        if isinstance(mod, torch.nn.Conv2d):
            w = mod.weight.detach()  # the parametrised (normalised) weight when spectral norm is on
            sig.append(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item())
    return sig


def test_snojoe_bounds_conv_spectral_norms_and_leaves_the_head_alone():
    cfg, bench = TrainConfig(epochs=1, seed=0), ood_core.load_benchmark("digit-canvases")
    sn = train("snojoe", bench, cfg, evaluate_after=False).model
    je = train("jointenergy", bench, cfg, evaluate_after=False).model
    sn.eval()
    convs = [m for m in sn.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert not parametrize.is_parametrized(sn.head)
    assert not any(parametrize.is_parametrized(m) for m in sn.backbone.modules()
                   if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Linear)))
    sigmas = _conv_sigmas(sn)
    assert max(sigmas) <= 1.05 and min(sigmas) >= 0.9, sigmas
    # the baseline is unconstrained: no parametrisation, and its conv weights are free to grow
    assert not any(parametrize.is_parametrized(m) for m in je.modules())
    assert max(_conv_sigmas(je)) > 1.05
