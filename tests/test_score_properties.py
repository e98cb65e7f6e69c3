"""Property tests (hypothesis) of every registered score on cached outputs (issue 7).

For each score in ``SCORES`` that runs on ``ModelOutput(features, logits)`` (the fitted ones
fitted once on a small fixed training set): output shape (N,) and finite for finite input,
also for extreme values (|x| up to 3e38, the float32 limit) and a single sample; ties (equal
rows) give equal scores (up to float rounding, see the test); permuting samples permutes scores; a sample scores the same alone
as in a batch; NaN/Inf in features or logits (scoring or fitting) raise a DataError naming
the input. Score-specific invariants are checked against independent SciPy/NumPy formulas.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp, softmax

import ood_core  # noqa: F401  (registers the recipes' scores)
from ood_core.errors import DataError
from ood_core.models import ModelOutput
from ood_core.scores import SCORES, make_score

D_FEAT, K = 8, 3
NAMES = sorted(n for n, cls in SCORES.items() if not cls.requires_inputs)
SKIPPED = sorted(n for n, cls in SCORES.items() if cls.requires_inputs)  # need the inputs (jacobian_norm, odin)
FAST = settings(max_examples=25, deadline=None)


class _Model(torch.nn.Module):
    """Just a linear head: what the fitted scores read from a model (weights, bias)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(D_FEAT, K)


@functools.lru_cache(maxsize=None)
def _train():
    rng = np.random.default_rng(0)
    labels = torch.arange(30) % K
    z = torch.from_numpy(rng.normal(size=(30, D_FEAT)).astype(np.float32)) + 2.0 * torch.eye(K, D_FEAT)[labels]
    model = _Model()
    with torch.no_grad():
        logits = model.head(z)
    return ModelOutput(z, logits), labels, model


@functools.lru_cache(maxsize=None)
def _scorer(name: str):
    score = make_score(name)
    if score.requires_fit:
        train, labels, model = _train()
        score.fit(train, labels, model)
    return score


def _out(z, logits) -> ModelOutput:
    return ModelOutput(torch.as_tensor(np.asarray(z, np.float32)), torch.as_tensor(np.asarray(logits, np.float32)))


def _score(name, z, logits) -> np.ndarray:
    return _scorer(name)(_out(z, logits))


# --------------------------------------------------------------------------- strategies
_moderate = st.floats(-50, 50, width=32)
_extreme = st.sampled_from([0.0, 1e-30, -1e-30, 1.0, -1.0, 1e4, -1e4, 1e10, -1e10, 1e20, -1e20, 1e30, -1e30,
                            3e38, -3e38])
_values = st.one_of(_moderate, _extreme)


@st.composite
def outputs(draw, elements=_values, n=st.integers(1, 6)):
    rows = draw(n)
    z = draw(hnp.arrays(np.float32, (rows, D_FEAT), elements=elements))
    logits = draw(hnp.arrays(np.float32, (rows, K), elements=elements))
    return z, logits


def _close(a, b, rtol=1e-5):
    """Equal up to float32 rounding, relative to the magnitudes involved."""
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * (1.0 + np.max(np.abs(b), initial=0.0)))


# --------------------------------------------------------------------------- every score
def test_the_properties_cover_every_output_score():
    assert set(NAMES) | set(SKIPPED) == set(SCORES) and len(NAMES) >= 14
    # only scores that need the inputs are left out (tests/test_odin.py, tests/test_movr.py test those)
    assert {"jacobian_norm", "odin"} <= set(SKIPPED)
    assert all(SCORES[n].cost == "inputs" for n in SKIPPED)


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=outputs())
def test_shape_and_finite_for_finite_input_even_extreme(name, data):
    z, logits = data
    s = _score(name, z, logits)
    assert s.shape == (len(z),) and s.dtype == np.float64
    assert np.isfinite(s).all(), (name, z, logits, s)


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=outputs(n=st.just(1)), copies=st.integers(2, 40))
def test_ties_give_equal_scores(name, data, copies):
    # equal up to float rounding: knn (float32 matrix product), joint_energy (float32 sum) and
    # ovr can differ in the last bits between identical rows at different batch positions
    # (BLAS/SIMD tail handling), by < 1e-6 relative; maxlogit (a max) is exact
    z, logits = data
    s = _score(name, np.repeat(z, copies, 0), np.repeat(logits, copies, 0))
    _close(s, np.full_like(s, s[0]), rtol=1e-6)
    if name == "maxlogit":
        assert np.all(s == s[0])


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=outputs(n=st.integers(2, 6)), seed=st.integers(0, 2**16))
def test_permuting_samples_permutes_scores_and_single_samples_match(name, data, seed):
    z, logits = data
    s = _score(name, z, logits)
    perm = np.random.default_rng(seed).permutation(len(z))
    _close(_score(name, z[perm], logits[perm]), s[perm], rtol=1e-6)
    for i in range(len(z)):  # N = 1: the same score alone as in the batch
        _close(_score(name, z[i:i + 1], logits[i:i + 1]), s[i:i + 1], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=outputs(elements=_moderate, n=st.integers(1, 5)), where=st.sampled_from(["features", "logits"]),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), pos=st.integers(0, 10**6))
def test_non_finite_outputs_are_rejected_naming_the_input(name, data, where, bad, pos):
    z, logits = (a.copy() for a in data)
    target = z if where == "features" else logits
    target.flat[pos % target.size] = bad
    with pytest.raises(DataError, match=f"'{name}': the {where} contain 1 NaN/Inf"):
        _score(name, z, logits)


@pytest.mark.parametrize("name", [n for n in NAMES if SCORES[n].requires_fit])
@pytest.mark.parametrize("where", ["features", "logits"])
def test_fit_rejects_non_finite_training_outputs(name, where):
    train, labels, model = _train()
    z, logits = train.features.clone(), train.logits.clone()
    (z if where == "features" else logits)[4, 1] = float("nan")
    with pytest.raises(DataError, match=f"the training {where} contain 1 NaN/Inf"):
        make_score(name).fit(ModelOutput(z, logits), labels, model)


def test_float64_outputs_beyond_float32_are_rejected_not_silently_inf():
    z = torch.zeros(2, D_FEAT, dtype=torch.float64)
    logits = torch.tensor([[1e39, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(DataError, match="logits contain 1 NaN/Inf.*float32 range"):
        make_score("energy")(ModelOutput(z, logits))


# --------------------------------------------------------------------------- per-score invariants
@FAST
@given(data=outputs())
def test_msp_against_scipy_and_bounds(data):
    z, logits = data
    s = _score("msp", z, logits)
    assert np.all(s >= 1.0 / K - 1e-6) and np.all(s <= 1.0 + 1e-6)
    _close(s, softmax(logits.astype(np.float64), axis=1).max(axis=1), rtol=1e-5)


@FAST
@given(data=outputs())
def test_maxlogit_is_the_max(data):
    z, logits = data
    assert np.array_equal(_score("maxlogit", z, logits), logits.max(axis=1).astype(np.float64))


@FAST
@given(data=outputs(), temperature=st.sampled_from([1.0, 0.01, 0.5, 3.0, 1000.0]))
def test_energy_against_scipy_and_bounds(data, temperature):
    # energy stays finite (no overflow) for every finite float32 logit, at any temperature
    z, logits = data
    s = make_score("energy", temperature=temperature)(_out(z, logits))
    l64 = logits.astype(np.float64)
    _close(s, temperature * logsumexp(l64 / temperature, axis=1), rtol=1e-6)
    m = l64.max(axis=1)
    tol = 1e-6 * (1 + np.abs(m) + temperature * np.log(K))
    assert np.all(s >= m - tol) and np.all(s <= m + temperature * np.log(K) + tol)


@FAST
@given(data=outputs(elements=_moderate), shift=st.floats(-1e4, 1e4, width=32))
def test_energy_shift_equivariant_msp_shift_invariant(data, shift):
    z, logits = data
    shifted = (logits + np.float32(shift)).astype(np.float32)
    # exact in float64 of what was actually passed (the shift itself is rounded in float32)
    _close(_score("energy", z, shifted) - _score("energy", z, logits),
           logsumexp(shifted.astype(np.float64), 1) - logsumexp(logits.astype(np.float64), 1), rtol=1e-5)
    _close(_score("msp", z, shifted), softmax(shifted.astype(np.float64), axis=1).max(axis=1), rtol=1e-5)


@FAST
@given(c=st.one_of(_moderate, _extreme), n=st.integers(1, 4))
def test_constant_logits(c, n):
    z = np.ones((n, D_FEAT), np.float32)
    logits = np.full((n, K), c, np.float32)
    c = float(np.float32(c))
    _close(_score("msp", z, logits), np.full(n, 1.0 / K), rtol=1e-6)
    assert np.array_equal(_score("maxlogit", z, logits), np.full(n, c))
    _close(_score("energy", z, logits), np.full(n, c + np.log(K)), rtol=1e-6)
    _close(_score("joint_energy", z, logits), np.full(n, K * np.logaddexp(0.0, c)), rtol=1e-5)


@FAST
@given(data=outputs())
def test_feature_norm_against_numpy(data):
    z, logits = data
    _close(_score("feature_norm", z, logits), np.linalg.norm(z.astype(np.float64), axis=1), rtol=1e-6)


@FAST
@given(data=outputs())
def test_multilabel_scores_against_numpy(data):
    z, logits = data
    l64 = logits.astype(np.float64)
    _close(_score("joint_energy", z, logits), np.logaddexp(0.0, l64).sum(axis=1), rtol=1e-5)
    sig = 1.0 / (1.0 + np.exp(-np.clip(l64, -700, 700)))
    _close(_score("max_sigmoid", z, logits), sig.max(axis=1), rtol=1e-5)
    _close(_score("sum_sigmoid", z, logits), sig.sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize("name", ["max_cosine", "ovr", "separation", "knn"])
@FAST
@given(data=outputs(elements=st.floats(-50, 50, width=32).filter(lambda v: abs(v) > 1e-3)),
       scale=st.sampled_from([1e-6, 1e-3, 7.0, 1e10, 1e30]))
def test_cosine_scores_ignore_the_feature_scale(name, data, scale):
    # down to norms of ~1e-9; below F.normalize's eps (1e-12) a feature counts as the zero vector
    z, logits = data
    big = (z.astype(np.float64) * scale).astype(np.float32)
    _close(_score(name, big, logits), _score(name, z, logits), rtol=1e-4)


@FAST
@given(data=outputs())
def test_bounded_scores_stay_in_range(data):
    z, logits = data
    assert np.all(np.abs(_score("max_cosine", z, logits)) <= 1 + 1e-6)
    knn = _score("knn", z, logits)
    assert np.all(knn <= 0) and np.all(knn >= -2 - 1e-6)
    assert np.all(_score("mahalanobis", z, logits) <= 0)
    assert np.all(_score("min_distance", z, logits) <= 0)
    assert np.all(_score("ovr", z, logits) <= 0)
