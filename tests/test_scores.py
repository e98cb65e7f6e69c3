"""OOD scores against direct NumPy formulas, and the sign convention (high = ID)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_core.errors import UnknownNameError
from ood_core.models import ModelOutput
from ood_core.scores import SCORES, Score, make_score, scores_for_task


def _logsumexp(a, t=1.0):
    a = a / t
    m = a.max(axis=1, keepdims=True)
    return t * (m[:, 0] + np.log(np.exp(a - m).sum(axis=1)))


def _softmax_max(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


REFERENCES = {
    "msp": lambda z, l: _softmax_max(l),
    "maxlogit": lambda z, l: l.max(axis=1),
    "energy": lambda z, l: _logsumexp(l),
    "feature_norm": lambda z, l: np.sqrt((z**2).sum(axis=1)),
}


def _random_output(seed=0, n=64, d=16, k=7, scale=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.1, 5.0, (n, 1)).astype(np.float32)
    logits = (scale * rng.normal(size=(n, k))).astype(np.float32)
    return z, logits, ModelOutput(torch.from_numpy(z), torch.from_numpy(logits))


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("seed, scale", [(0, 1.0), (1, 3.0), (2, 30.0)])
def test_score_matches_numpy(name, seed, scale):
    z, logits, out = _random_output(seed, scale=scale)
    s = make_score(name)(out)
    assert isinstance(s, np.ndarray) and s.dtype == np.float64 and s.shape == (len(z),)
    expected = REFERENCES[name](z.astype(np.float64), logits.astype(np.float64))
    np.testing.assert_allclose(s, expected, rtol=1e-5, atol=1e-6)


def test_energy_temperature():
    z, logits, out = _random_output(3)
    for t in (0.5, 2.0, 10.0):
        s = make_score("energy", temperature=t)(out)
        np.testing.assert_allclose(s, _logsumexp(logits.astype(np.float64), t), rtol=1e-5, atol=1e-6)


def test_scores_accept_half_and_double_inputs():
    z, logits, out = _random_output(4)
    ref = make_score("energy")(out)
    for dtype in (torch.float64, torch.float16):
        other = ModelOutput(out.features.to(dtype), out.logits.to(dtype))
        np.testing.assert_allclose(make_score("energy")(other), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["msp", "maxlogit", "energy"])
def test_confident_scores_higher_than_flat(name):
    logits = torch.tensor([[12.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    out = ModelOutput(torch.ones(2, 8), logits)
    s = make_score(name)(out)
    assert s[0] > s[1]


def test_feature_norm_sign():
    out = ModelOutput(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), torch.zeros(2, 3))
    s = make_score("feature_norm")(out)
    assert s[0] > s[1]
    np.testing.assert_allclose(s, [5.0, 0.5], rtol=1e-6)


def test_msp_is_a_probability_and_shift_invariant():
    z, logits, out = _random_output(5)
    s = make_score("msp")(out)
    k = logits.shape[1]
    assert (s >= 1.0 / k - 1e-6).all() and (s <= 1.0 + 1e-6).all()
    shifted = ModelOutput(out.features, out.logits + 100.0)
    np.testing.assert_allclose(make_score("msp")(shifted), s, rtol=1e-4)


def test_every_registered_score_runs_on_a_model():
    # the evaluator's path: fit on training outputs and labels, then score outputs (or inputs)
    from ood_core.models import build_model

    torch.manual_seed(0)
    model = build_model("smallcnn", 3, (1, 8, 8)).eval()
    x = torch.rand(160, 1, 8, 8)  # enough samples for ViM's 64-dim principal space to leave a residual
    y = torch.arange(160) % 3
    with torch.no_grad():
        out = model(x)
    for name, cls in SCORES.items():
        assert issubclass(cls, Score) and cls.name == name
        assert cls.describe()
        score = make_score(name)
        labels = y if "multiclass" in cls.tasks else torch.nn.functional.one_hot(y, 3).float()
        if score.requires_fit:
            score.fit(out, labels, model)
        s = score.score_inputs(model, x[:6]) if score.requires_inputs else score(ModelOutput(out.features[:6], out.logits[:6]))
        assert s.shape == (6,) and np.isfinite(s).all(), name


def test_make_score_unknown_lists_names():
    with pytest.raises(UnknownNameError) as err:
        make_score("nope")
    assert isinstance(err.value, KeyError)
    for name in SCORES:
        assert name in str(err.value)


def test_scores_for_task():
    assert set(REFERENCES) <= set(scores_for_task("multiclass"))
    assert set(scores_for_task("multiclass")) <= set(SCORES)
    assert set(scores_for_task("multilabel")) <= set(SCORES)
    assert scores_for_task("no-such-task") == []


@pytest.mark.parametrize("scale", [1.0, 0.5, 32.0])
def test_msp_and_energy_logit_scale_against_numpy(scale):
    # logit_scale s multiplies the logits before the softmax / logsumexp (s = 32: movr's training scale)
    z, logits, out = _random_output(5, scale=1.0)
    a = scale * logits.astype(np.float64)
    np.testing.assert_allclose(make_score("msp", logit_scale=scale)(out), _softmax_max(a), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(make_score("energy", logit_scale=scale)(out), _logsumexp(a), rtol=1e-5, atol=1e-5)
    # with an energy temperature T as well: T * logsumexp(s f / T)
    np.testing.assert_allclose(make_score("energy", logit_scale=scale, temperature=4.0)(out), _logsumexp(a, 4.0),
                               rtol=1e-5, atol=1e-5)


def test_msp_logit_scale_by_hand():
    # cosines (0.9, 0.1, -0.5) at s = 32: softmax_0 = 1 / (1 + e^{-25.6} + e^{-44.8})
    out = ModelOutput(torch.zeros(1, 2), torch.tensor([[0.9, 0.1, -0.5]]))
    assert make_score("msp", logit_scale=32.0)(out)[0] == pytest.approx(1 / (1 + np.exp(-25.6) + np.exp(-44.8)), rel=1e-6)
    assert make_score("msp")(out)[0] == pytest.approx(np.exp(0.9) / (np.exp(0.9) + np.exp(0.1) + np.exp(-0.5)), rel=1e-6)
    assert make_score("energy", logit_scale=32.0)(out)[0] == pytest.approx(
        28.8 + np.log1p(np.exp(-25.6) + np.exp(-44.8)), rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_logit_scale_and_temperature_are_refused(bad):
    from ood_core.errors import OODCoreError

    for name in ("msp", "energy"):
        with pytest.raises(OODCoreError, match="logit_scale"):
            make_score(name, logit_scale=bad)
    if not isinstance(bad, str):
        with pytest.raises(OODCoreError, match="temperature"):
            make_score("energy", temperature=bad)
