"""ReAct, ASH-P/B/S, SCALE and DICE (ood_core.recipes.shaping) against hand-worked examples and
per-sample NumPy loops written independently of the implementation (sorting, explicit sums,
a hand-rolled percentile), plus the head checks and parameter validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ood_core.errors import OODCoreError
from ood_core.models import ModelOutput, build_model
from ood_core.recipes.shaping import n_kept
from ood_core.scores import SCORES, make_score, scores_for_task

NAMES = ["react", "ash_p", "ash_b", "ash_s", "scale", "dice"]


class _HeadOnly(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head


def _linear(w, b) -> _HeadOnly:
    w = torch.as_tensor(w, dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return _HeadOnly(lin)


def _outputs(model, z) -> ModelOutput:
    z = torch.as_tensor(np.asarray(z, np.float32))
    with torch.no_grad():
        return ModelOutput(z, model.head(z))


def _energy(logits) -> float:
    logits = np.asarray(logits, np.float64)
    m = logits.max()
    return float(m + math.log(sum(math.exp(v - m) for v in logits)))


# The tiny example used by the hand-worked tests: 3 features, 2 classes.
W = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]
B = [0.5, -0.5]
Z = [[3.0, 1.0, 2.0]]


def _fitted(name, train_z, **params):
    model = _linear(W, B)
    return make_score(name, **params).fit(_outputs(model, train_z), torch.zeros(len(train_z), dtype=torch.long),
                                          model), model


# ----------------------------------------------------------------------------- hand-worked examples
def test_react_hand_example():
    # training activations 0, 1, ..., 11: the 90th percentile (linear interpolation) sits at
    # position 0.9 * 11 = 9.9 of the sorted values, i.e. c = 9.9.
    # z = [11, 2, 5] -> min(z, c) = [9.9, 2, 5]; logits = [9.9 + 2*5 + 0.5, 2 - 5 - 0.5] = [20.4, -3.5]
    s, model = _fitted("react", np.arange(12.0).reshape(4, 3))
    assert s.threshold == pytest.approx(9.9)
    got = s(_outputs(model, [[11.0, 2.0, 5.0]]))
    assert got[0] == pytest.approx(20.4 + math.log1p(math.exp(-23.9)), rel=1e-12)
    # below the threshold nothing is clipped: the plain energy of the head's logits
    # z = [3, 1, 2] -> logits [3 + 4 + 0.5, 1 - 2 - 0.5] = [7.5, -1.5]
    assert s(_outputs(model, Z))[0] == pytest.approx(7.5 + math.log1p(math.exp(-9.0)), rel=1e-12)


def test_ash_hand_examples():
    # d = 3, percentile 30: k = 3 - round(0.9) = 2 kept; z = [3, 1, 2] keeps entries 0 and 2.
    assert n_kept(3, 30) == 2
    train = np.ones((2, 3))
    # ASH-P: z' = [3, 0, 2] -> logits [3 + 4 + 0.5, 0 - 2 - 0.5] = [7.5, -2.5]
    s, model = _fitted("ash_p", train, percentile=30)
    assert s(_outputs(model, Z))[0] == pytest.approx(7.5 + math.log1p(math.exp(-10.0)), rel=1e-12)
    # ASH-B: s1 = 6 shared by the 2 kept entries: z' = [3, 0, 3] -> logits [3 + 6 + 0.5, -3 - 0.5]
    s, model = _fitted("ash_b", train, percentile=30)
    assert s(_outputs(model, Z))[0] == pytest.approx(9.5 + math.log1p(math.exp(-13.0)), rel=1e-12)
    # ASH-S: s1 = 6, s2 = 3 + 2 = 5, z' = e^1.2 [3, 0, 2] -> logits e^1.2 [7, -2] + [0.5, -0.5]
    s, model = _fitted("ash_s", train, percentile=30)
    e = math.exp(1.2)
    assert s(_outputs(model, Z))[0] == pytest.approx(_energy([7 * e + 0.5, -2 * e - 0.5]), rel=1e-12)


def test_scale_hand_example():
    # percentile 30: k = 2, s1 = 6, s2 = 3 + 2 = 5; no pruning: z' = e^1.2 [3, 1, 2]
    # -> W z' = e^1.2 [3 + 4, 1 - 2] = e^1.2 [7, -1]; logits + [0.5, -0.5]
    s, model = _fitted("scale", np.ones((2, 3)), percentile=30)
    e = math.exp(1.2)
    assert s(_outputs(model, Z))[0] == pytest.approx(_energy([7 * e + 0.5, -e - 0.5]), rel=1e-12)
    # the default p = 85 with d = 3: round(2.55) = 3, so k = max(1, 0) = 1: s2 = 3, r = 2
    s, model = _fitted("scale", np.ones((2, 3)))
    e2 = math.exp(2.0)
    assert s(_outputs(model, Z))[0] == pytest.approx(_energy([7 * e2 + 0.5, -e2 - 0.5]), rel=1e-12)


def test_dice_hand_example():
    # training features [2, 0, 4] and [4, 2, 0]: mean m = [3, 1, 2]
    # V = W * m = [[3, 0, 4], [0, 1, -2]]; sorted: -2, 0, 0, 1, 3, 4
    train = [[2.0, 0.0, 4.0], [4.0, 2.0, 0.0]]
    # p = 50: position 0.5 * 5 = 2.5 -> t = 0.5; V > t keeps 3, 4 (row 0) and 1 (row 1)
    # masked W = [[1, 0, 2], [0, 1, 0]]; z = [3, 1, 2] -> logits [3 + 4 + 0.5, 1 - 0.5] = [7.5, 0.5]
    s, model = _fitted("dice", train, percentile=50)
    assert s.threshold == pytest.approx(0.5)
    assert s.mask.tolist() == [[True, False, True], [False, True, False]]
    assert s(_outputs(model, Z))[0] == pytest.approx(7.5 + math.log1p(math.exp(-7.0)), rel=1e-12)
    # p = 90 (default): position 4.5 -> t = 3.5; only V = 4 survives: W' = [[0, 0, 2], [0, 0, 0]]
    # -> logits [4 + 0.5, -0.5]
    s, model = _fitted("dice", train)
    assert s(_outputs(model, Z))[0] == pytest.approx(4.5 + math.log1p(math.exp(-5.0)), rel=1e-12)


# ----------------------------------------------------------------------------- per-sample loops
def _percentile_by_hand(values, p):
    """Linear-interpolation percentile from a sorted Python list (numpy's default definition)."""
    v = sorted(float(x) for x in values)
    pos = (len(v) - 1) * p / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _loop_logits(w, b, zp):
    return [sum(w[c][j] * zp[j] for j in range(len(zp))) + b[c] for c in range(len(w))]


def _loop_shape(name, z, p, threshold=None):
    """One sample, edited as the papers describe, with plain Python lists."""
    d = len(z)
    if name == "react":
        return [min(v, threshold) for v in z]
    k = max(1, d - int(round(d * p / 100.0)))
    order = sorted(range(d), key=lambda j: -z[j])[:k]  # indices of the k largest entries
    keep = set(order)
    total = sum(z)
    kept_sum = sum(z[j] for j in keep)
    if name == "ash_p":
        return [z[j] if j in keep else 0.0 for j in range(d)]
    if name == "ash_b":
        return [total / k if j in keep else 0.0 for j in range(d)]
    if name == "ash_s":
        return [z[j] * math.exp(total / kept_sum) if j in keep else 0.0 for j in range(d)]
    if name == "scale":
        return [v * math.exp(total / kept_sum) for v in z]
    raise AssertionError(name)


def _random_problem(seed, n_train=40, n=9, d=12, k=4):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(k, d)).round(3)
    b = rng.normal(size=k).round(3)
    # post-ReLU-like features: non-negative, a few exact zeros, no ties among the positive entries
    train = np.maximum(rng.normal(0.5, 1.0, size=(n_train, d)), 0.0)
    test = np.maximum(rng.normal(0.5, 1.5, size=(n, d)), 0.0)
    return w, b, train.astype(np.float32), test.astype(np.float32)


@pytest.mark.parametrize("name, p", [("react", 90), ("react", 60), ("ash_p", 90), ("ash_p", 65),
                                     ("ash_b", 90), ("ash_b", 70), ("ash_s", 90), ("ash_s", 65),
                                     ("scale", 85), ("scale", 50)])
@pytest.mark.parametrize("seed", [0, 1])
def test_shaping_matches_a_per_sample_loop(name, p, seed):
    w, b, train, test = _random_problem(seed)
    model = _linear(w, b)
    s = make_score(name, percentile=p).fit(_outputs(model, train), torch.zeros(len(train)), model)
    got = s(_outputs(model, test))
    wl = np.asarray(model.head.weight.detach(), np.float64).tolist()  # the float32 weights as stored
    bl = np.asarray(model.head.bias.detach(), np.float64).tolist()
    c = _percentile_by_hand(train.astype(np.float64).ravel(), p) if name == "react" else None
    expected = [_energy(_loop_logits(wl, bl, _loop_shape(name, row.astype(np.float64).tolist(), p, c)))
                for row in test]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # not a constant, and really different from the plain energy of the logits
    assert np.ptp(got) > 1e-3
    plain = make_score("energy")(_outputs(model, test))
    assert np.max(np.abs(got - plain)) > 1e-3


@pytest.mark.parametrize("p", [90, 70])
@pytest.mark.parametrize("seed", [0, 3])
def test_dice_matches_a_loop(p, seed):
    w, b, train, test = _random_problem(seed)
    model = _linear(w, b)
    s = make_score("dice", percentile=p).fit(_outputs(model, train), torch.zeros(len(train)), model)
    wl = np.asarray(model.head.weight.detach(), np.float64)
    bl = np.asarray(model.head.bias.detach(), np.float64)
    k, d = wl.shape
    mean = [sum(float(r[j]) for r in train) / len(train) for j in range(d)]
    contrib = [wl[c, j] * mean[j] for c in range(k) for j in range(d)]
    t = _percentile_by_hand(contrib, p)
    masked = [[wl[c, j] if wl[c, j] * mean[j] > t else 0.0 for j in range(d)] for c in range(k)]
    expected = [_energy(_loop_logits(masked, bl, row.astype(np.float64).tolist())) for row in test]
    np.testing.assert_allclose(s(_outputs(model, test)), expected, rtol=1e-10, atol=1e-10)
    kept = sum(v != 0.0 for row in masked for v in row)
    assert kept == int(s.mask.sum()) and abs(kept - (100 - p) / 100 * k * d) <= 1


def test_ash_keeps_the_documented_number_of_activations():
    # d - round(d p / 100), round half to even (the reference code's np.round), at least 1
    assert [n_kept(512, p) for p in (65, 85, 90, 95)] == [179, 77, 51, 26]
    assert n_kept(10, 85) == 2 and n_kept(10, 75) == 2 and n_kept(8, 95) == 1 and n_kept(4, 0) == 4
    _, model = _fitted("ash_p", np.ones((2, 3)))
    s = make_score("ash_p", percentile=0).fit(_outputs(model, np.ones((2, 3))), torch.zeros(2), model)
    # p = 0 keeps everything: ASH-P is then the plain energy
    np.testing.assert_allclose(s(_outputs(model, Z)), make_score("energy")(_outputs(model, Z)), rtol=1e-6)


def test_ratio_uses_positive_parts_and_is_one_without_positive_activations():
    # documented extension for features with negative entries (the papers assume post-ReLU ones)
    _, model = _fitted("scale", np.ones((2, 3)))
    s = make_score("scale", percentile=30).fit(_outputs(model, np.ones((2, 3))), torch.zeros(2), model)
    # z = [3, -1, 2]: positive parts [3, 0, 2] -> s1 = 5, top-2 = {3, 2} -> s2 = 5, r = 1
    # z' = e [3, -1, 2] -> W z' = e [3 + 4, -1 - 2] = e [7, -3]
    e = math.e
    assert s(_outputs(model, [[3.0, -1.0, 2.0]]))[0] == pytest.approx(_energy([7 * e + 0.5, -3 * e - 0.5]))
    # all entries negative: no positive mass, r = 1; z' = e z
    z = [-1.0, -2.0, -0.5]
    wz = [-1.0 - 1.0, -2.0 + 0.5]
    assert s(_outputs(model, [z]))[0] == pytest.approx(_energy([e * wz[0] + 0.5, e * wz[1] - 0.5]))


def test_react_caps_an_abnormally_large_activation():
    # OOD-like sanity check: one unit far above anything seen in training. The plain energy
    # grows with it; ReAct's score is capped at the value with that unit at the threshold.
    w, b, train, test = _random_problem(5)
    model = _linear(np.abs(w), b)  # all-positive weights: a larger activation raises every logit
    s = make_score("react").fit(_outputs(model, train), torch.zeros(len(train)), model)
    spiked = test[:1].copy()
    spiked[0, 0] = 1000.0
    capped = test[:1].copy()
    capped[0, 0] = s.threshold
    energy = make_score("energy")
    assert energy(_outputs(model, spiked))[0] > energy(_outputs(model, test[:1]))[0] + 100
    np.testing.assert_allclose(s(_outputs(model, spiked)), s(_outputs(model, capped)), rtol=1e-6)


# ----------------------------------------------------------------------------- registry, heads, params
def test_registered_multiclass_only_with_head_cost():
    for name in NAMES:
        cls = SCORES[name]
        assert cls.requires_fit and cls.cost == "head" and cls.tasks == ("multiclass",)
        assert name in scores_for_task("multiclass") and name not in scores_for_task("multilabel")
        msg = cls.refusal("multilabel")
        assert "softmax" in msg and "sigmoid" in msg and name in msg
        assert "high = ID" in cls.describe()


@pytest.mark.parametrize("name", NAMES)
def test_defaults_fit_and_score_a_real_model(name):
    torch.manual_seed(0)
    for head in ("linear", "mlp-bn"):
        model = build_model("smallcnn", 3, (1, 8, 8), head=head, head_hidden=16).eval()
        with torch.no_grad():
            train = model(torch.rand(48, 1, 8, 8))
            test = model(torch.rand(7, 1, 8, 8))
        s = make_score(name).fit(train, torch.arange(48) % 3, model)
        got = s(test)
        assert got.shape == (7,) and got.dtype == np.float64 and np.isfinite(got).all()
        assert np.ptp(got) > 0  # not constant


def test_default_hyper_parameters():
    assert make_score("react").percentile == 90
    assert make_score("ash_p").percentile == make_score("ash_b").percentile == make_score("ash_s").percentile == 90
    assert make_score("dice").percentile == 90
    assert make_score("scale").percentile == 85


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head", ["cosine", "l2norm", "centers"])
def test_non_linear_heads_are_refused_naming_the_head(name, head):
    model = build_model("mlp", 3, (2,), head=head).eval()
    with torch.no_grad():
        train = model(torch.randn(20, 2))
    with pytest.raises(OODCoreError, match=f"needs a linear classifier head.*{type(model.head).__name__}"):
        make_score(name).fit(train, torch.arange(20) % 3, model)


@pytest.mark.parametrize("name", NAMES)
def test_fit_needs_the_model_and_matching_outputs(name):
    model = _linear(W, B)
    train = _outputs(model, np.ones((4, 3)))
    with pytest.raises(OODCoreError, match="pass the model"):
        make_score(name).fit(train, torch.zeros(4))
    with pytest.raises(OODCoreError, match=r"not model.head\(features\)"):
        make_score(name).fit(ModelOutput(train.features, train.logits + 1.0), torch.zeros(4), model)
    with pytest.raises(OODCoreError, match="4 features"):
        make_score(name).fit(ModelOutput(torch.ones(4, 4), train.logits), torch.zeros(4), model)
    with pytest.raises(OODCoreError, match="call fit"):
        make_score(name)(train)
    s = make_score(name).fit(train, torch.zeros(4), model)
    with pytest.raises(OODCoreError, match="5 dimensions"):
        s(ModelOutput(torch.ones(2, 5), torch.zeros(2, 2)))


def test_bias_free_linear_head_is_accepted():
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
    model = _HeadOnly(lin)
    s = make_score("ash_p", percentile=30).fit(_outputs(model, np.ones((2, 3))), torch.zeros(2), model)
    # z' = [3, 0, 2] -> logits [7, -2]
    assert s(_outputs(model, Z))[0] == pytest.approx(_energy([7.0, -2.0]), rel=1e-12)


@pytest.mark.parametrize("name, bad", [("react", 0), ("react", 100.5), ("react", -5), ("react", "high"),
                                       ("react", float("nan")), ("ash_p", 100), ("ash_b", -1), ("ash_s", 101),
                                       ("scale", 100), ("scale", None), ("dice", 100), ("dice", -0.1)])
def test_invalid_percentiles_are_refused(name, bad):
    with pytest.raises(OODCoreError, match=f"{name} percentile must be a number"):
        make_score(name, percentile=bad)


def test_valid_edge_percentiles():
    assert make_score("react", percentile=100).percentile == 100
    assert make_score("ash_s", percentile=0).percentile == 0
    assert make_score("dice", percentile=0).percentile == 0


# ----------------------------------------------------------------------------- bounded percentile
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentile_of_entries_is_numpys_in_any_chunking(dtype):
    """ReAct's threshold without a float64 copy: the radix select against numpy.percentile on
    continuous values, ties (many zeros, both signs of zero), all-negative and huge values,
    one row or one column, and budgets from one row per chunk upwards."""
    from ood_core.recipes.posthoc import percentile_of_entries

    rng = np.random.default_rng(7)
    for trial in range(120):
        n, d = int(rng.integers(1, 30)), int(rng.integers(1, 20))
        x = rng.normal(size=(n, d))
        x = [x, np.maximum(x, 0), np.round(x * 2) / 2, -np.abs(x) * 1e30, np.full((n, d), 3.0)][trial % 5]
        x = x.astype(dtype)
        for q in (0.0, 0.5, 50.0, 90.0, 100.0, float(rng.uniform(0, 100))):
            ref = np.percentile(x.astype(np.float64).ravel(), q)
            got = percentile_of_entries(torch.from_numpy(x), q, budget=int(rng.integers(1, 4000)))
            assert got == pytest.approx(ref, rel=1e-12, abs=0.0), (trial, q)
    with pytest.raises(OODCoreError, match="finite"):
        percentile_of_entries(torch.tensor([[1.0, float("nan")]]), 50)
