"""GEN, KL matching and GradNorm (ood_core.recipes.logit_scores) against hand-worked examples,
independent NumPy/SciPy loops and, for GradNorm, torch.autograd through a real nn.Linear."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy
from torch import nn

from ood_core.errors import OODCoreError
from ood_core.models import ModelOutput
from ood_core.scores import SCORES, make_score, scores_for_task

NAMES = ["gen", "klm", "gradnorm"]


def _out(logits, z=None) -> ModelOutput:
    logits = torch.as_tensor(np.asarray(logits, np.float32))
    if z is None:
        z = torch.ones(logits.shape[0], 4)
    return ModelOutput(torch.as_tensor(np.asarray(z, np.float32)), logits)


# ----------------------------------------------------------------------------- GEN
def test_gen_hand_examples():
    # two equal logits: p = [1/2, 1/2]; each term (1/2)^0.1 (1/2)^0.1 = (1/4)^0.1
    assert make_score("gen")(_out([[0.0, 0.0]]))[0] == pytest.approx(-2 * 0.25**0.1, rel=1e-12)
    # logits [log 3, 0]: p = [3/4, 1/4]; both terms (3/16)^gamma; gamma = 0.5: -2 * sqrt(3)/4
    assert make_score("gen", gamma=0.5)(_out([[math.log(3.0), 0.0]]))[0] == pytest.approx(
        -math.sqrt(3.0) / 2, rel=1e-6)
    # logits [40, 0]: p_2 = 1/(1 + e^40), p_1 = 1 - p_2, so p_1 (1 - p_1) = p_2 (1 - p_2) and both
    # terms are (p_2 (1 - p_2))^0.1 ~ e^-4. In float64 p_1 rounds to 1, so the direct formula
    # loses the first term and gives half of this.
    p2 = 1.0 / (1.0 + math.exp(40.0))
    expected = -2 * (p2 * (1 - p2)) ** 0.1
    assert make_score("gen")(_out([[40.0, 0.0]]))[0] == pytest.approx(expected, rel=1e-9)
    p = softmax(np.array([40.0, 0.0]))
    assert np.sum(p**0.1 * (1 - p) ** 0.1) == pytest.approx(-expected / 2, rel=1e-6)


def _gen_loop(logits, gamma, m):
    scores = []
    for row in np.asarray(logits, np.float64):
        e = [math.exp(v - max(row)) for v in row]
        p = sorted((v / sum(e) for v in e), reverse=True)[:m]
        scores.append(-sum(q**gamma * (1 - q) ** gamma for q in p))
    return scores


@pytest.mark.parametrize("gamma, m", [(0.1, 100), (0.5, 3), (2.0, 1), (0.1, 7)])
def test_gen_matches_a_loop_over_the_top_m(gamma, m):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(25, 7)) * 2).astype(np.float32)  # moderate: the direct formula is exact enough
    got = make_score("gen", gamma=gamma, M=m)(_out(logits))
    np.testing.assert_allclose(got, _gen_loop(logits, gamma, m), rtol=1e-9, atol=1e-12)
    assert np.ptp(got) > 1e-3


def test_gen_ranks_confident_above_flat():
    s = make_score("gen")(_out([[8.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    assert s[0] > s[1] > s[2]


# ----------------------------------------------------------------------------- KL matching
def test_klm_hand_example_and_direction():
    # training posteriors [3/4, 1/4] (predicted 0) and [1/4, 3/4] (predicted 1): templates
    # d_0 = [3/4, 1/4], d_1 = [1/4, 3/4].
    ln3 = math.log(3.0)
    train = _out([[ln3, 0.0], [0.0, ln3]])
    s = make_score("klm").fit(train, torch.tensor([1, 1]))  # labels are not used: predictions are
    np.testing.assert_allclose(s.templates.numpy(), [[0.75, 0.25], [0.25, 0.75]], rtol=1e-7)
    # a posterior equal to a template: KL = 0
    assert s(_out([[ln3, 0.0]]))[0] == pytest.approx(0.0, abs=1e-7)
    # p = [1/2, 1/2]: KL(p || d_0) = 1/2 log((1/2)/(3/4)) + 1/2 log((1/2)/(1/4)) = 1/2 log(4/3),
    # the same for d_1. The other direction, KL(d_0 || p) = 3/4 log(3/2) + 1/4 log(1/2), differs.
    assert s(_out([[0.0, 0.0]]))[0] == pytest.approx(-0.5 * math.log(4.0 / 3.0), rel=1e-6)
    assert abs(0.5 * math.log(4 / 3) - (0.75 * math.log(1.5) + 0.25 * math.log(0.5))) > 0.01


def test_klm_matches_scipy_and_skips_classes_never_predicted():
    rng = np.random.default_rng(1)
    k = 5
    train_logits = rng.normal(size=(60, k)) * 2
    train_logits[:, 4] -= 50.0  # class 4 is never predicted: no template
    test_logits = rng.normal(size=(12, k)) * 3
    s = make_score("klm").fit(_out(train_logits), None)
    tl = train_logits.astype(np.float32).astype(np.float64)
    p_train = softmax(tl, axis=1)
    pred = p_train.argmax(axis=1)
    templates = {c: p_train[pred == c].mean(axis=0) for c in sorted(set(pred.tolist()))}
    assert sorted(templates) == [0, 1, 2, 3] == s.classes.tolist()
    expected = []
    for row in test_logits.astype(np.float32).astype(np.float64):
        p = softmax(row)
        expected.append(-min(entropy(p, d) for d in templates.values()))  # entropy(p, q) = KL(p || q)
    got = s(_out(test_logits))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert np.all(got <= 0) and np.ptp(got) > 1e-3


def test_klm_needs_fit_and_the_same_classes():
    with pytest.raises(OODCoreError, match="call fit"):
        make_score("klm")(_out([[0.0, 1.0]]))
    s = make_score("klm").fit(_out([[0.0, 1.0], [1.0, 0.0]]), None)
    with pytest.raises(OODCoreError, match="fitted on 2 classes but got 3"):
        s(_out([[0.0, 1.0, 2.0]]))


# ----------------------------------------------------------------------------- GradNorm
def _autograd_gradnorm(w, b, z, temperature, ones_target=False):
    """Per sample: build the linear layer, backprop KL(u || softmax(f/T)), L1 of the weight grad."""
    lin = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w))
        lin.bias.copy_(torch.as_tensor(b))
    norms = []
    for row in torch.as_tensor(z, dtype=torch.float64):
        lin.zero_grad()
        logp = torch.log_softmax(lin(row[None]) / temperature, dim=1)[0]
        k = logp.shape[0]
        if ones_target:  # the authors' code: sum_k -log p_k
            loss = -logp.sum()
        else:  # KL(u || p) = sum_k (1/K) (log(1/K) - log p_k)
            loss = (torch.full((k,), 1.0 / k, dtype=torch.float64) * (math.log(1.0 / k) - logp)).sum()
        loss.backward()
        norms.append(lin.weight.grad.abs().sum().item())
    return np.array(norms)


class _LinearModel(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.head = nn.Linear(np.shape(w)[1], np.shape(w)[0]).double()
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(w, dtype=torch.float64))
            self.head.bias.copy_(torch.as_tensor(b, dtype=torch.float64))


def _gradnorm(w, b, z, **params):
    """GradNorm fitted (its head check) on a model whose head is the linear layer (w, b)."""
    logits = np.asarray(z, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T + np.asarray(b)
    return make_score("gradnorm", **params).fit(_out(logits, z), None, _LinearModel(w, b)), _out(logits, z)


def test_gradnorm_refuses_a_head_it_is_not_the_gradient_of():
    from ood_core.models import CosineHead

    model = nn.Module()
    model.head = CosineHead(3, 2)
    with pytest.raises(OODCoreError, match="needs a linear classifier head.*CosineHead"):
        make_score("gradnorm").fit(_out([[0.0, 1.0]], [[1.0, 2.0, 3.0]]), None, model)
    with pytest.raises(OODCoreError, match="call fit"):
        make_score("gradnorm")(_out([[0.0, 1.0]], [[1.0, 2.0, 3.0]]))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_gradnorm_equals_autograd_on_a_linear_layer(temperature):
    rng = np.random.default_rng(2)
    k, d = 4, 6
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    z = (rng.normal(size=(8, d)) * 2).astype(np.float32).astype(np.float64)
    s, out = _gradnorm(w, b, z, temperature=temperature)
    got = s(out)
    # the cached logits are float32: compare with autograd at that precision
    np.testing.assert_allclose(got, _autograd_gradnorm(w, b, z, temperature), rtol=1e-5)
    # the authors' all-ones target gives K times the KL version: the same ranking
    np.testing.assert_allclose(k * got, _autograd_gradnorm(w, b, z, temperature, ones_target=True), rtol=1e-5)
    assert np.ptp(got) > 1e-2


def test_gradnorm_hand_example():
    # K = 2, logits [log 3, 0]: p = [3/4, 1/4], sum_k |p_k - 1/2| = 1/2; z = [1, -2, 3]: sum |z_j| = 6
    s, out = _gradnorm(np.zeros((2, 3)), [math.log(3.0), 0.0], [[1.0, -2.0, 3.0]])  # logits = the bias
    assert s(out)[0] == pytest.approx(3.0)
    # a uniform posterior has zero gradient whatever the features
    s, out = _gradnorm(np.zeros((2, 3)), [2.0, 2.0], [[5.0, 1.0, 1.0]])
    assert s(out)[0] == 0.0


# ----------------------------------------------------------------------------- registry and params
def test_registered_multiclass_only_on_cached_outputs():
    for name in NAMES:
        cls = SCORES[name]
        assert cls.cost == "outputs" and cls.tasks == ("multiclass",) and not cls.requires_inputs
        assert name in scores_for_task("multiclass") and name not in scores_for_task("multilabel")
        assert "sigmoid" in cls.refusal("multilabel")
        assert "high = ID" in cls.describe()
    assert SCORES["klm"].requires_fit and not SCORES["gen"].requires_fit
    assert SCORES["gradnorm"].requires_fit  # to check that the head is linear


def test_defaults():
    gen = make_score("gen")
    assert gen.gamma == 0.1 and gen.M == 100
    assert make_score("gradnorm").temperature == 1.0
    logits = np.random.default_rng(3).normal(size=(5, 3))
    for name in NAMES:
        s = make_score(name)
        if name == "gradnorm":
            s, _ = _gradnorm(np.zeros((3, 2)), [0.0, 0.0, 0.0], np.ones((5, 2)))
        elif s.requires_fit:
            s.fit(_out(logits), None)
        got = s(_out(logits, np.abs(logits)))
        assert got.shape == (5,) and np.isfinite(got).all()


@pytest.mark.parametrize("name, params, match", [
    ("gen", {"gamma": 0}, "gen gamma must be a positive number"),
    ("gen", {"gamma": -0.1}, "gen gamma must be a positive number"),
    ("gen", {"gamma": "x"}, "gen gamma must be a positive number"),
    ("gen", {"M": 0}, "gen M must be a positive integer"),
    ("gen", {"M": 2.5}, "gen M must be a positive integer"),
    ("gen", {"M": True}, "gen M must be a positive integer"),
    ("gen", {"M": None}, "gen M must be a positive integer"),
    ("gradnorm", {"temperature": 0}, "gradnorm temperature must be a positive number"),
    ("gradnorm", {"temperature": float("inf")}, "gradnorm temperature must be a positive number"),
])
def test_invalid_parameters_are_refused(name, params, match):
    with pytest.raises(OODCoreError, match=match):
        make_score(name, **params)
