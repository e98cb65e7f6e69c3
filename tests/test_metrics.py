"""ood_core.metrics against independent computations (scikit-learn and brute force).

Convention: a score is high for ID; ID is the positive class except in AUPR-Out.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

from ood_core import metrics as M
from ood_core.errors import DataError

ABS = 1e-9


# --------------------------------------------------------------------------- references
def _labels(s_id, s_ood):
    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    s = np.r_[np.asarray(s_id, float), np.asarray(s_ood, float)]
    return y, s


def ref_auroc(s_id, s_ood):
    y, s = _labels(s_id, s_ood)
    return roc_auc_score(y, s)


def ref_aupr_in(s_id, s_ood):
    y, s = _labels(s_id, s_ood)
    return average_precision_score(y, s)


def ref_aupr_out(s_id, s_ood):
    y, s = _labels(s_id, s_ood)
    return average_precision_score(1 - y, -s)


def _rates(s_id, s_ood, t):
    return np.mean(np.asarray(s_id) >= t), np.mean(np.asarray(s_ood) >= t)


def brute_fpr95(s_id, s_ood):
    thresholds = np.r_[np.unique(np.r_[s_id, s_ood]), np.inf]
    best = np.inf
    for t in thresholds:
        tpr, fpr = _rates(s_id, s_ood, t)
        if tpr >= 0.95:
            best = min(best, fpr)
    return best


def sklearn_fpr95(s_id, s_ood):
    y, s = _labels(s_id, s_ood)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


def brute_detection_error(s_id, s_ood):
    thresholds = np.r_[-np.inf, np.unique(np.r_[s_id, s_ood]), np.inf]
    return min(0.5 * (1 - tpr) + 0.5 * fpr for tpr, fpr in (_rates(s_id, s_ood, t) for t in thresholds))


def check_all(s_id, s_ood):
    """Every detection metric against its independent reference."""
    s_id, s_ood = np.asarray(s_id, float), np.asarray(s_ood, float)
    assert M.auroc(s_id, s_ood) == pytest.approx(ref_auroc(s_id, s_ood), abs=ABS)
    assert M.aupr_in(s_id, s_ood) == pytest.approx(ref_aupr_in(s_id, s_ood), abs=ABS)
    assert M.aupr_out(s_id, s_ood) == pytest.approx(ref_aupr_out(s_id, s_ood), abs=ABS)
    fpr = M.fpr_at_95_tpr(s_id, s_ood)
    assert fpr == pytest.approx(brute_fpr95(s_id, s_ood), abs=ABS)
    assert fpr == pytest.approx(sklearn_fpr95(s_id, s_ood), abs=ABS)
    assert M.detection_error(s_id, s_ood) == pytest.approx(brute_detection_error(s_id, s_ood), abs=ABS)
    d = M.ood_metrics(s_id, s_ood)
    assert d["auroc"] == pytest.approx(ref_auroc(s_id, s_ood), abs=ABS)
    assert d["fpr95"] == pytest.approx(fpr, abs=ABS)
    assert d["aupr_in"] == pytest.approx(ref_aupr_in(s_id, s_ood), abs=ABS)
    assert d["aupr_out"] == pytest.approx(ref_aupr_out(s_id, s_ood), abs=ABS)
    assert d["detection_error"] == pytest.approx(brute_detection_error(s_id, s_ood), abs=ABS)
    assert {"auroc", "fpr95", "aupr_in", "aupr_out"} <= set(d)


# --------------------------------------------------------------------------- fixed cases
RNG = np.random.default_rng(12345)
CASES = {
    "random": (RNG.normal(1.0, 1.0, 200), RNG.normal(0.0, 1.0, 150)),
    "random-overlapping": (RNG.normal(0.0, 1.0, 57), RNG.normal(0.0, 1.0, 91)),
    "ties-small-int-range": (RNG.integers(0, 4, 120).astype(float), RNG.integers(-1, 3, 80).astype(float)),
    "ties-binary": (RNG.integers(0, 2, 33).astype(float), RNG.integers(0, 2, 47).astype(float)),
    "ties-across-only": (np.array([1.0, 2.0, 3.0, 3.0]), np.array([3.0, 3.0, 0.0])),
    "constant": (np.full(25, 0.3), np.full(40, 0.3)),
    "single-each": (np.array([0.7]), np.array([0.2])),
    "single-each-reversed": (np.array([0.2]), np.array([0.7])),
    "single-each-tied": (np.array([0.5]), np.array([0.5])),
    "separated": (np.linspace(2, 3, 30), np.linspace(-1, 1, 20)),
    "reversed": (np.linspace(-1, 1, 20), np.linspace(2, 3, 30)),
    "unbalanced": (RNG.normal(0.5, 1, 7), RNG.normal(0, 1, 300)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_match_references(case):
    check_all(*CASES[case])


def test_auroc_special_values():
    assert M.auroc(np.full(10, 2.0), np.full(7, 2.0)) == 0.5
    assert M.auroc([0.9, 0.8], [0.1, 0.2, 0.3]) == 1.0
    assert M.auroc([0.1, 0.2, 0.3], [0.9, 0.8]) == 0.0
    assert M.auroc([1.0], [0.0]) == 1.0
    assert M.auroc([0.0], [1.0]) == 0.0
    assert M.auroc([1.0], [1.0]) == 0.5
    # hand-computed with ties: pairs (id > ood) + 0.5 (id == ood) over 2*2 pairs
    assert M.auroc([1.0, 2.0], [1.0, 0.0]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_perfect_and_reversed_separation_other_metrics():
    s_id, s_ood = np.linspace(2, 3, 30), np.linspace(-1, 1, 20)
    assert M.aupr_in(s_id, s_ood) == pytest.approx(1.0)
    assert M.aupr_out(s_id, s_ood) == pytest.approx(1.0)
    assert M.fpr_at_95_tpr(s_id, s_ood) == 0.0
    assert M.detection_error(s_id, s_ood) == 0.0
    # reversed: every ID sample below every OOD sample
    assert M.fpr_at_95_tpr(s_ood, s_id) == 1.0
    assert M.detection_error(s_ood, s_id) == 0.5  # best is accept-all or accept-none


def test_constant_scores():
    s_id, s_ood = np.full(25, 0.3), np.full(40, 0.3)
    assert M.auroc(s_id, s_ood) == 0.5
    assert M.aupr_in(s_id, s_ood) == pytest.approx(25 / 65)
    assert M.aupr_out(s_id, s_ood) == pytest.approx(40 / 65)
    assert M.fpr_at_95_tpr(s_id, s_ood) == 1.0
    assert M.detection_error(s_id, s_ood) == 0.5


# --------------------------------------------------------------------------- FPR@95 specifics
@pytest.mark.parametrize("n_id", [1, 2, 19, 20, 21, 40, 59, 60, 100, 101])
@pytest.mark.parametrize("ties", [False, True])
def test_fpr95_against_brute_force_and_roc_curve(n_id, ties):
    rng = np.random.default_rng(n_id * 7 + ties)
    if ties:
        s_id = rng.integers(0, 6, n_id).astype(float)
        s_ood = rng.integers(-2, 4, 77).astype(float)
    else:
        s_id = rng.normal(1.0, 1.0, n_id)
        s_ood = rng.normal(0.0, 1.0, 77)
    fpr = M.fpr_at_95_tpr(s_id, s_ood)
    assert fpr == pytest.approx(brute_fpr95(s_id, s_ood), abs=ABS)
    assert fpr == pytest.approx(sklearn_fpr95(s_id, s_ood), abs=ABS)


def test_fpr95_threshold_boundary_hand_computed():
    # n_id = 20: 0.95 * 20 = 19, so the 19th highest ID score (= 2) is the threshold
    s_id = np.arange(1, 21, dtype=float)  # 1..20
    s_ood = np.array([1.5, 2.0, 2.5, 100.0])
    assert M.threshold_at_tpr(s_id, 0.95) == 2.0
    assert M.fpr_at_95_tpr(s_id, s_ood) == pytest.approx(3 / 4)  # 2.0, 2.5, 100 are >= 2
    # n_id = 21: 0.95 * 21 = 19.95 -> must keep 20 -> threshold is the 20th highest = 2
    s_id = np.arange(1, 22, dtype=float)  # 1..21
    assert M.threshold_at_tpr(s_id, 0.95) == 2.0
    assert M.fpr_at_95_tpr(s_id, s_ood) == pytest.approx(3 / 4)
    # n_id = 1: the one ID sample is the threshold
    assert M.fpr_at_95_tpr([2.0], s_ood) == pytest.approx(3 / 4)


def test_threshold_at_tpr_rejects_bad_tpr():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            M.threshold_at_tpr([1.0, 2.0], bad)


@pytest.mark.parametrize("tpr", [0.5, 0.8, 0.9, 1.0])
def test_fpr_at_other_tpr(tpr):
    rng = np.random.default_rng(3)
    s_id, s_ood = rng.integers(0, 8, 45).astype(float), rng.integers(-3, 5, 30).astype(float)
    thresholds = np.r_[np.unique(np.r_[s_id, s_ood]), np.inf]
    expected = min(np.mean(s_ood >= t) for t in thresholds if np.mean(s_id >= t) >= tpr)
    assert M.fpr_at_tpr(s_id, s_ood, tpr) == pytest.approx(expected)


# --------------------------------------------------------------------------- properties
_tied_values = st.integers(-3, 3).map(float)
_float_values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
_arrays = st.lists(st.one_of(_tied_values, _float_values), min_size=1, max_size=40)
_int_arrays = st.lists(_tied_values, min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(s_id=_arrays, s_ood=_arrays)
def test_property_mixed_values(s_id, s_ood):
    check_all(s_id, s_ood)


@settings(max_examples=60, deadline=None)
@given(s_id=_int_arrays, s_ood=_int_arrays)
def test_property_heavy_ties(s_id, s_ood):
    check_all(s_id, s_ood)


@settings(max_examples=60, deadline=None)
@given(s_id=_arrays, s_ood=_arrays)
def test_property_swap_and_bounds(s_id, s_ood):
    a = M.auroc(s_id, s_ood)
    assert M.auroc(s_ood, s_id) == pytest.approx(1 - a, abs=ABS)
    for value in M.ood_metrics(s_id, s_ood).values():
        assert 0.0 <= value <= 1.0
    assert M.detection_error(s_id, s_ood) <= 0.5


_extreme_values = st.sampled_from([1e300, -1e300, 1.7e308, -1.7e308, 1e-300, -1e-300, 5e-324, 0.0, 1.0, -1.0])
_extreme_arrays = st.lists(st.one_of(_extreme_values, _float_values), min_size=1, max_size=30)
_any_value = st.one_of(_extreme_values, _float_values, _tied_values)


def _ranks_of_union(s_id, s_ood):
    """The same order with small integers: the distinct values replaced by their rank."""
    _, inverse = np.unique(np.r_[s_id, s_ood], return_inverse=True)
    return inverse[: len(s_id)].astype(float), inverse[len(s_id):].astype(float)


@settings(max_examples=60, deadline=None)
@given(s_id=_extreme_arrays, s_ood=_extreme_arrays)
def test_property_extreme_values(s_id, s_ood):
    # huge (+-1e300, the float64 limit) mixed with tiny (1e-300, subnormal 5e-324) values
    check_all(s_id, s_ood)
    d = M.ood_metrics(s_id, s_ood)
    assert all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in d.values())
    # every metric depends on the order of the scores only
    r_id, r_ood = _ranks_of_union(np.asarray(s_id, float), np.asarray(s_ood, float))
    for name, value in M.ood_metrics(r_id, r_ood).items():
        assert d[name] == pytest.approx(value, abs=ABS), name


@settings(max_examples=60, deadline=None)
@given(a=_any_value, b=_any_value)
def test_property_single_sample_each_side(a, b):
    check_all([a], [b])
    expected = 1.0 if a > b else 0.0 if a < b else 0.5
    assert M.auroc([a], [b]) == expected
    assert M.fpr_at_95_tpr([a], [b]) == (1.0 if b >= a else 0.0)
    assert M.detection_error([a], [b]) == (0.0 if a > b else 0.5)


@settings(max_examples=60, deadline=None)
@given(c=_any_value, n_id=st.integers(1, 60), n_ood=st.integers(1, 60))
def test_property_constant_scores(c, n_id, n_ood):
    s_id, s_ood = np.full(n_id, c), np.full(n_ood, c)
    assert M.auroc(s_id, s_ood) == 0.5
    assert M.aupr_in(s_id, s_ood) == pytest.approx(n_id / (n_id + n_ood))
    assert M.aupr_out(s_id, s_ood) == pytest.approx(n_ood / (n_id + n_ood))
    assert M.fpr_at_95_tpr(s_id, s_ood) == 1.0
    assert M.detection_error(s_id, s_ood) == 0.5


@settings(max_examples=40, deadline=None)
@given(s_id=_arrays, s_ood=_arrays, bad=st.sampled_from([np.nan, np.inf, -np.inf]), pos=st.integers(0, 10**6),
       side=st.sampled_from(["id", "ood"]))
def test_property_non_finite_rejected_with_position(s_id, s_ood, bad, pos, side):
    target = list(s_id if side == "id" else s_ood)
    i = pos % len(target)
    target[i] = bad
    args = (target, s_ood) if side == "id" else (s_id, target)
    for func in METRIC_FUNCS:
        with pytest.raises(DataError, match=rf"{side}_scores contains 1 NaN/Inf value\(s\) \(first at index {i}\)"):
            func(*args)


def test_swap_sign_convention_fixed():
    s_id, s_ood = CASES["random"]
    assert M.auroc(s_id, s_ood) > 0.6
    assert M.auroc(s_ood, s_id) == pytest.approx(1 - M.auroc(s_id, s_ood), abs=ABS)
    # negating every score is the same as swapping the roles
    assert M.auroc(-s_id, -s_ood) == pytest.approx(1 - M.auroc(s_id, s_ood), abs=ABS)


# --------------------------------------------------------------------------- bad input
METRIC_FUNCS = [M.auroc, M.aupr_in, M.aupr_out, M.fpr_at_95_tpr, M.detection_error, M.ood_metrics]


@pytest.mark.parametrize("func", METRIC_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "NaN"), (-np.inf, "NaN")])
@pytest.mark.parametrize("side", ["id", "ood"])
def test_non_finite_raises(func, bad, word, side):
    good = np.array([0.1, 0.2, 0.3])
    broken = np.array([0.1, bad, 0.3])
    args = (broken, good) if side == "id" else (good, broken)
    with pytest.raises(DataError, match=word):
        func(*args)


@pytest.mark.parametrize("func", METRIC_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("side", ["id", "ood"])
def test_empty_raises(func, side):
    good = np.array([0.1, 0.2, 0.3])
    args = ([], good) if side == "id" else (good, [])
    with pytest.raises(DataError, match="empty"):
        func(*args)


# --------------------------------------------------------------------------- classification
def test_accuracy_vs_sklearn():
    rng = np.random.default_rng(7)
    for n, k in [(1, 3), (50, 2), (200, 6)]:
        logits = rng.normal(size=(n, k))
        labels = rng.integers(0, k, n)
        expected = accuracy_score(labels, logits.argmax(1))
        assert M.accuracy(logits, labels) == pytest.approx(expected)
    logits = np.eye(4)
    assert M.accuracy(logits, [0, 1, 2, 3]) == 1.0
    assert M.accuracy(logits, [1, 2, 3, 0]) == 0.0


def test_accuracy_shape_mismatch_raises():
    with pytest.raises(DataError):
        M.accuracy(np.zeros((5, 3)), np.zeros(4, dtype=int))
    with pytest.raises(DataError):
        M.accuracy(np.zeros(5), np.zeros(5, dtype=int))


def _ref_map(scores, targets):
    aps = [average_precision_score(targets[:, k], scores[:, k])
           for k in range(targets.shape[1]) if targets[:, k].sum() > 0]
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", range(5))
def test_mean_average_precision_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 60, 5
    targets = (rng.random((n, k)) < 0.3).astype(float)
    targets[:, 0] = 0.0  # a label with no positive is left out of the mean
    targets[:, 1] = 1.0  # a label where every sample is positive: AP = 1
    scores = rng.normal(size=(n, k)) + targets
    if seed % 2:
        scores = np.round(scores)  # ties
    assert M.mean_average_precision(scores, targets) == pytest.approx(_ref_map(scores, targets), abs=ABS)


def test_mean_average_precision_errors():
    with pytest.raises(DataError):
        M.mean_average_precision(np.zeros((4, 3)), np.zeros((4, 3)))  # no positive at all
    with pytest.raises(DataError):
        M.mean_average_precision(np.zeros((4, 3)), np.zeros((4, 2)))


def test_roc_points_match_sklearn_and_integrate_to_auroc():
    from sklearn.metrics import roc_auc_score, roc_curve

    from ood_core.metrics import auroc, confusion_at_threshold, roc_curve_points

    rng = np.random.default_rng(5)
    id_s = np.round(rng.normal(1, 1, 200), 1)  # rounding makes ties
    ood_s = np.round(rng.normal(0, 1, 150), 1)
    fpr, tpr, thr = roc_curve_points(id_s, ood_s)
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    sk_fpr, sk_tpr, _ = roc_curve(y, np.r_[id_s, ood_s], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, np.r_[id_s, ood_s]), abs=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(id_s, ood_s), abs=1e-12)
    c = confusion_at_threshold(id_s, ood_s, thr[10])
    assert c["id_as_id"] == int((id_s >= thr[10]).sum()) and c["id_as_id"] + c["id_as_ood"] == 200
    assert c["ood_as_id"] + c["ood_as_ood"] == 150
    assert (c["tpr"], c["fpr"]) == pytest.approx((tpr[10], fpr[10]))
