"""The distance-based detectors (she, nnguide, fdbd, rmds, residual, openmax) and the bounded
memory of the fitted scores, each against an independent computation: explicit per-sample
loops in NumPy/SciPy/scikit-learn written differently from the implementation, or a tiny
example worked out by hand."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial import distance as spd
from sklearn.covariance import EmpiricalCovariance

import ood_core  # noqa: F401  (registers the recipes' scores)
import ood_core.scores as scores_mod
from ood_core.errors import OODCoreError
from ood_core.models import CosineHead, LinearHead, ModelOutput
from ood_core.recipes import posthoc
from ood_core.recipes.distance import (FDBD, LIBMR_TRANSLATION, RMDS, SHE, NNGuide, OpenMax, Residual, fit_high,
                                       weibull_cdf, weibull_mle)
from ood_core.scores import SCORES, make_score, scores_for_task

NEW = ("she", "nnguide", "fdbd", "rmds", "residual", "openmax")


def _out(z, logits) -> ModelOutput:
    return ModelOutput(torch.as_tensor(np.asarray(z, np.float32)), torch.as_tensor(np.asarray(logits, np.float32)))


def _f(a) -> np.ndarray:
    """What the scores see: the float32 values, as float64."""
    return np.asarray(a, np.float32).astype(np.float64)


def _problem(seed=0, n=90, d=6, k=3, n_test=12, noise=1.0):
    """Training/test features around K class centres, a linear head (model) and its logits."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(k, d))
    y = np.arange(n) % k
    z = (centres[y] + noise * rng.normal(size=(n, d))).astype(np.float32)
    head = LinearHead(d, k).double()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(centres / 3.0 + 0.3 * rng.normal(size=(k, d))))
        head.bias.copy_(torch.from_numpy(rng.normal(size=k)))
    w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    logits = (z.astype(np.float64) @ w.T + b).astype(np.float32)
    tz = np.vstack([centres[rng.integers(0, k, n_test // 2)] + rng.normal(size=(n_test // 2, d)),
                    4.0 * rng.normal(size=(n_test - n_test // 2, d))]).astype(np.float32)
    tl = (tz.astype(np.float64) @ w.T + b).astype(np.float32)
    return dict(z=z, y=y, logits=logits, model=types.SimpleNamespace(head=head), w=w, b=b, tz=tz, tl=tl)


def _fitted(name, p, **params):
    return make_score(name, **params).fit(_out(p["z"], p["logits"]), torch.tensor(p["y"]), p["model"])


def _argmax_first(row) -> int:
    best = 0
    for j in range(1, len(row)):
        if row[j] > row[best]:
            best = j
    return best


def _lse(row) -> float:
    m = max(row)
    return m + math.log(sum(math.exp(r - m) for r in row))


# --------------------------------------------------------------------------- registry
def test_registered_with_defaults_tasks_and_notes():
    for name in NEW:
        cls = SCORES[name]
        assert cls.requires_fit and cls.describe() and not cls.requires_inputs
        score = make_score(name)
        assert isinstance(score, cls) and score.cost in scores_mod.COSTS
        if "multilabel" not in cls.tasks:
            assert cls.task_note and "multilabel" in cls.refusal("multilabel")
        assert cls.refusal("multiclass") is None
    assert {"rmds", "residual"} <= set(scores_for_task("multilabel"))
    assert not {"she", "nnguide", "fdbd", "openmax"} & set(scores_for_task("multilabel"))
    assert SCORES["fdbd"].cost == "head"
    d = make_score("openmax")
    assert (d.tailsize, d.alpha, d.distance) == (20, None, "euclidean")
    assert make_score("nnguide").k == 10 and make_score("fdbd").center == "train_mean"
    assert make_score("rmds").ridge == 0.0 and make_score("residual").dim is None


@pytest.mark.parametrize("name, params", [
    ("nnguide", {"k": 0}), ("nnguide", {"k": 2.5}), ("nnguide", {"k": "10"}), ("nnguide", {"k": True}),
    ("nnguide", {"memory_budget": 0}), ("nnguide", {"memory_budget": -5}), ("nnguide", {"memory_budget": "1GB"}),
    ("knn", {"memory_budget": 0}), ("knn", {"memory_budget": 1.5}),
    ("fdbd", {"center": "mean"}), ("rmds", {"ridge": -1.0}),
    ("residual", {"dim": 0}), ("residual", {"dim": -3}), ("residual", {"dim": 2.5}), ("vim", {"dim": 0}),
    ("openmax", {"tailsize": 0}), ("openmax", {"alpha": 0}), ("openmax", {"alpha": 1.5}),
    ("openmax", {"distance": "cosine"}), ("openmax", {"eucos_weight": 0.0}),
    ("openmax", {"eucos_weight": float("nan")}), ("openmax", {"eucos_weight": "x"}),
])
def test_invalid_parameters_are_refused(name, params):
    with pytest.raises(OODCoreError, match=next(iter(params))):
        make_score(name, **params)


@pytest.mark.parametrize("name", NEW)
def test_unfitted_is_refused(name):
    with pytest.raises(OODCoreError, match="fit"):
        make_score(name)(_out(np.ones((2, 6)), np.ones((2, 3))))


def test_fit_refusals_say_what_to_pass():
    p = _problem(1)
    train, y = _out(p["z"], p["logits"]), torch.tensor(p["y"])
    with pytest.raises(OODCoreError, match="k <= 90"):
        NNGuide(k=91).fit(train, y, p["model"])
    with pytest.raises(OODCoreError, match="alpha <= 3"):
        OpenMax(alpha=4).fit(train, y, p["model"])
    with pytest.raises(OODCoreError, match="linear classifier head.*no model"):
        FDBD().fit(train, y, None)
    cosine = types.SimpleNamespace(head=CosineHead(6, 3))
    with pytest.raises(OODCoreError, match="CosineHead"):
        FDBD().fit(train, y, cosine)
    multi_hot = torch.nn.functional.one_hot(y, 3).float()
    for cls in (SHE, OpenMax):
        with pytest.raises(OODCoreError, match=r"\(N,\) class indices"):
            cls().fit(train, multi_hot, p["model"])
        with pytest.raises(OODCoreError, match="labels must lie in 0..2"):
            cls().fit(train, y + 1, p["model"])
    with pytest.raises(OODCoreError, match="no training sample"):
        RMDS().fit(_out(p["z"], np.zeros((90, 4))), y, None)
    twin = LinearHead(6, 3)
    with torch.no_grad():
        twin.weight[2] = twin.weight[0]
    with pytest.raises(OODCoreError, match="classes 0 and 2 have identical"):
        FDBD().fit(train, y, types.SimpleNamespace(head=twin))


# --------------------------------------------------------------------------- SHE
def test_she_by_hand():
    # labels 0,0,1,1; predictions 0,0,1,0: the last sample is misclassified and left out
    z = [[1, 0], [3, 0], [0, 2], [5, 5]]
    logits = [[2, 0], [1, 0], [0, 1], [3, 1]]
    s = SHE().fit(_out(z, logits), torch.tensor([0, 0, 1, 1]))
    np.testing.assert_allclose(s.patterns.numpy(), [[2, 0], [0, 2]])  # means of the correct ones
    # z = (2, 3): predicted 0 -> (2,3).(2,0) = 4; predicted 1 -> (2,3).(0,2) = 6
    np.testing.assert_allclose(s(_out([[2, 3], [2, 3]], [[1, 0], [0, 1]])), [4.0, 6.0])
    assert s.fallback_classes == []


def test_she_matches_loops_and_falls_back_to_all_class_samples():
    p = _problem(2)
    s = _fitted("she", p)
    z, y, lg = _f(p["z"]), p["y"], _f(p["logits"])
    patterns = []
    for c in range(3):
        acc, cnt = np.zeros(6), 0
        for i in range(len(z)):
            if y[i] == c and _argmax_first(lg[i]) == c:
                acc += z[i]
                cnt += 1
        patterns.append(acc / cnt)
    tz, tl = _f(p["tz"]), _f(p["tl"])
    expected = [float(np.dot(tz[i], patterns[_argmax_first(tl[i])])) for i in range(len(tz))]
    np.testing.assert_allclose(s(_out(p["tz"], p["tl"])), expected, rtol=1e-12)
    # a model that never predicts class 2: its pattern is the mean of every sample labelled 2
    lg2 = p["logits"].copy()
    lg2[:, 2] = -100.0
    s2 = SHE().fit(_out(p["z"], lg2), torch.tensor(p["y"]))
    assert s2.fallback_classes == [2]
    np.testing.assert_allclose(s2.patterns[2].numpy(), z[y == 2].mean(0), rtol=1e-12)


# --------------------------------------------------------------------------- NNGuide
def _nnguide_loop(z, logits, tz, tl, k):
    bank = [zi / np.sqrt(np.sum(zi * zi)) * _lse(li) for zi, li in zip(z, logits)]
    out = []
    for t, l in zip(tz, tl):
        th = t / np.sqrt(np.sum(t * t))
        sims = sorted((float(np.dot(th, bi)) for bi in bank), reverse=True)
        out.append(_lse(l) * sum(sims[:k]) / k)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_nnguide_matches_loops(k):
    p = _problem(3)
    expected = _nnguide_loop(_f(p["z"]), _f(p["logits"]), _f(p["tz"]), _f(p["tl"]), k)
    s = _fitted("nnguide", p, k=k)
    got = s(_out(p["tz"], p["tl"]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # the bank and its products are float32
    bank_row = 4 * 90 + 8 * (2 * 6 + 3)
    small = _fitted("nnguide", p, k=k, memory_budget=3 * bank_row)  # 3 test rows per chunk
    np.testing.assert_allclose(small(_out(p["tz"], p["tl"])), got, rtol=1e-6)  # chunks: float32 sums in another order


def test_nnguide_by_hand():
    # bank: e1 with energy log(2) (logits 0,0), e2 with energy log(e + e) = 1 + log 2
    z, logits = [[2, 0], [0, 3]], [[0, 0], [1, 1]]
    s = NNGuide(k=1).fit(_out(z, logits))
    # test (1, 1)/sqrt2, logits (0, 0): top-1 of {log2/sqrt2, (1+log2)/sqrt2} times log 2
    got = s(_out([[1, 1]], [[0, 0]]))[0]
    assert got == pytest.approx(math.log(2) * (1 + math.log(2)) / math.sqrt(2), rel=1e-6)  # float32 bank
    s2 = NNGuide(k=2).fit(_out(z, logits))
    assert s2(_out([[1, 1]], [[0, 0]]))[0] == pytest.approx(
        math.log(2) * (math.log(2) + 1 + math.log(2)) / (2 * math.sqrt(2)), rel=1e-6)


# --------------------------------------------------------------------------- fDBD
def _fdbd_loop(w, b, train_z, tz, center=True):
    mu = train_z.mean(0) if center else np.zeros(train_z.shape[1])
    out = []
    for t in tz:
        f = w @ t + b
        c = _argmax_first(f)
        dists = []
        for k in range(len(b)):
            if k == c:
                continue
            normal, offset = w[c] - w[k], b[c] - b[k]
            foot = t - (normal @ t + offset) / (normal @ normal) * normal  # nearest point of the boundary
            assert abs(normal @ foot + offset) < 1e-9 * (1 + abs(offset) + np.abs(normal).sum() * np.abs(t).sum())
            dists.append(np.sqrt(np.sum((t - foot) ** 2)))
        out.append(np.mean(dists) / np.sqrt(np.sum((t - mu) ** 2)))
    return np.array(out)


@pytest.mark.parametrize("center", ["train_mean", "origin"])
def test_fdbd_matches_geometric_loops(center):
    p = _problem(4, k=4, d=7)
    s = _fitted("fdbd", p, center=center)
    expected = _fdbd_loop(p["w"], p["b"], _f(p["z"]), _f(p["tz"]), center == "train_mean")
    # the cached logits are not used: the head is applied to the features again
    np.testing.assert_allclose(s(_out(p["tz"], np.zeros_like(p["tl"]))), expected, rtol=1e-10)


def test_fdbd_by_hand():
    # classes 0 (w=(1,0)) and 1 (w=(-1,0)), no bias: the boundary is x = 0; z = (3, 4) lies 3 from it
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        head.bias.zero_()
    train = _out([[1, 1], [-1, -1]], [[1, -1], [-1, 1]])  # mean feature (0, 0)
    s = FDBD().fit(train, torch.tensor([0, 1]), types.SimpleNamespace(head=head))
    np.testing.assert_allclose(s(_out([[3, 4], [-0.375, 0.5]], [[0, 0], [0, 0]])), [3 / 5, 0.375 / 0.625], rtol=1e-12)


# --------------------------------------------------------------------------- RMDS
def test_rmds_matches_sklearn_and_loops():
    p = _problem(5, n=120, d=5, k=3)
    z, y = _f(p["z"]), p["y"]
    centred = np.vstack([z[y == c] - z[y == c].mean(0) for c in range(3)])
    prec = EmpiricalCovariance(assume_centered=True).fit(centred).precision_
    mu0 = z.mean(0)
    prec0 = EmpiricalCovariance().fit(z).precision_
    tz = _f(p["tz"])
    expected = []
    for t in tz:
        md0 = (t - mu0) @ prec0 @ (t - mu0)
        rel = [(t - z[y == c].mean(0)) @ prec @ (t - z[y == c].mean(0)) - md0 for c in range(3)]
        expected.append(-min(rel))
    s = _fitted("rmds", p)
    np.testing.assert_allclose(s(_out(p["tz"], p["tl"])), expected, rtol=1e-8, atol=1e-8)
    # rmds = mahalanobis + MD_0: the class part is mahalanobis's fit
    maha = _fitted("mahalanobis", p)(_out(p["tz"], p["tl"]))
    md0 = np.array([(t - mu0) @ prec0 @ (t - mu0) for t in tz])
    np.testing.assert_allclose(s(_out(p["tz"], p["tl"])), maha + md0, rtol=1e-8, atol=1e-8)


def test_rmds_multilabel():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(60, 3)) + 2.0
    y = (rng.random((60, 2)) < 0.6).astype(np.float32)
    y[y.sum(1) == 0, 1] = 1.0
    s = RMDS().fit(_out(z, np.zeros((60, 2))), torch.tensor(y))
    zd = _f(z)
    means = [zd[y[:, c] > 0].mean(0) for c in range(2)]
    cov, cnt = np.zeros((3, 3)), 0
    for i in range(60):
        for c in range(2):
            if y[i, c] > 0:
                cov += np.outer(zd[i] - means[c], zd[i] - means[c])
                cnt += 1
    prec, prec0, mu0 = np.linalg.inv(cov / cnt), np.linalg.inv(np.cov(zd.T, bias=True)), zd.mean(0)
    test = zd[:7] * 1.5
    expected = [-min((t - m) @ prec @ (t - m) - (t - mu0) @ prec0 @ (t - mu0) for m in means) for t in _f(test)]
    np.testing.assert_allclose(s(_out(test, np.zeros((7, 2)))), expected, rtol=1e-8, atol=1e-8)


def test_rmds_sign_high_is_id():
    p = _problem(7, noise=0.5)
    s = _fitted("rmds", p)
    mu = p["z"][p["y"] == 1].mean(0)
    far = mu + 30.0 * np.random.default_rng(8).normal(size=6)
    got = s(_out(np.stack([mu, far]), np.zeros((2, 3))))
    assert got[0] > got[1]


# --------------------------------------------------------------------------- Residual
def test_residual_matches_sklearn_eig_and_vim():
    p = _problem(9, n=100, d=8, k=3)
    z, w, b = _f(p["z"]), p["w"], p["b"]
    u = -np.linalg.pinv(w) @ b
    cov = EmpiricalCovariance(assume_centered=True).fit(z - u).covariance_
    evals, evecs = np.linalg.eig(cov)
    principal = evecs.real[:, np.argsort(-evals.real)[:4]]  # D = d/2 = 4
    expected = []
    for t in _f(p["tz"]):
        x = t - u
        # residual = what is left after projecting onto the principal subspace
        expected.append(-np.sqrt(max(x @ x - np.sum((principal.T @ x) ** 2), 0.0)))
    s = _fitted("residual", p)
    assert s.source == "head" and s.principal_dim == 4
    got = s(_out(p["tz"], p["tl"]))
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9)
    vim = _fitted("vim", p)  # vim = energy - alpha * residual norm, from the same fit
    lse = np.array([_lse(l) for l in _f(p["tl"])])
    np.testing.assert_allclose(vim(_out(p["tz"], p["tl"])), lse + vim.alpha * got, rtol=1e-10)
    with pytest.raises(OODCoreError, match="residual principal dimension"):
        Residual(dim=8).fit(_out(p["z"], p["logits"]), None, p["model"])


def test_residual_applies_to_multilabel_models():
    p = _problem(10, n=80, d=8, k=3)
    multi_hot = torch.tensor((np.random.default_rng(0).random((80, 3)) < 0.5).astype(np.float32))
    s = Residual().fit(_out(p["z"], p["logits"]), multi_hot, p["model"])
    assert np.isfinite(s(_out(p["tz"], p["tl"]))).all() and Residual.refusal("multilabel") is None


# --------------------------------------------------------------------------- OpenMax: Weibull
def test_weibull_mle_recovers_known_parameters_and_matches_scipy():
    x = stats.weibull_min.rvs(1.7, scale=2.5, size=6000, random_state=np.random.default_rng(11))
    shape, scale = weibull_mle(x)
    assert shape == pytest.approx(1.7, rel=0.04) and scale == pytest.approx(2.5, rel=0.03)
    c_sp, _, s_sp = stats.weibull_min.fit(x, floc=0)
    assert shape == pytest.approx(c_sp, rel=1e-4) and scale == pytest.approx(s_sp, rel=1e-4)
    # it is the maximum: no worse a log-likelihood than SciPy's optimiser, and a local maximum
    ll = lambda c, s: stats.weibull_min.logpdf(x, c, scale=s).sum()  # noqa: E731
    assert ll(shape, scale) >= ll(c_sp, s_sp) - 1e-9
    for dc, ds in ((1.001, 1), (0.999, 1), (1, 1.001), (1, 0.999)):
        assert ll(shape, scale) > ll(shape * dc, scale * ds)


def test_weibull_cdf_matches_scipy():
    x = torch.tensor([-1.0, 0.0, 0.3, 1.0, 2.5, 7.0, 1e6])
    np.testing.assert_allclose(weibull_cdf(x, 1.7, 2.5).numpy(),
                               stats.weibull_min.cdf(x.numpy(), 1.7, scale=2.5), rtol=1e-12, atol=1e-15)


def test_fit_high_translates_the_tail_like_libmr():
    d = stats.weibull_min.rvs(2.0, scale=3.0, size=200, random_state=np.random.default_rng(12))
    shape, scale, shift = fit_high(d, 20)
    tail = np.sort(d)[-20:]
    assert shift == pytest.approx(LIBMR_TRANSLATION - tail[0])
    # the libMR-style fit with SciPy (as pytorch-ood's LibNotMR): exponentiated Weibull, a = 1, loc = 0
    _, c_sp, _, s_sp = stats.exponweib.fit(tail + shift, floc=0, f0=1)
    assert shape == pytest.approx(c_sp, rel=1e-3) and scale == pytest.approx(s_sp, rel=1e-6)
    assert len(np.unique(fit_high(d[:5], 20))) == 3  # fewer than tailsize: all values used
    with pytest.raises(OODCoreError, match="not all"):
        fit_high(np.full(30, 2.0), 20)


# --------------------------------------------------------------------------- OpenMax: the detector
def _openmax_loop(train_logits, y, test_logits, tailsize, alpha, distance, eu_weight=1 / 200, params=None):
    """OpenMax after the OSDN code, one sample at a time; the Weibull via SciPy unless ``params``."""
    k = train_logits.shape[1]

    def dist(a, m):
        e = spd.euclidean(a, m)
        return e if distance == "euclidean" else eu_weight * e + spd.cosine(a, m)

    mavs, models, tails = [], [], []
    for c in range(k):
        rows = [v for v, t in zip(train_logits, y) if t == c and _argmax_first(v) == c]
        mav = np.mean(rows, axis=0)
        tail = sorted(dist(v, mav) for v in rows)[-tailsize:]
        shift = LIBMR_TRANSLATION - min(tail)
        tails.append(np.array(tail) + shift)
        if params is None:
            _, shape, _, scale = stats.exponweib.fit(tails[-1], floc=0, f0=1)
        else:
            shape, scale = params[0][c], params[1][c]
        mavs.append(mav)
        models.append((shape, scale, shift))
    weights = [(alpha + 1 - i) / alpha for i in range(1, alpha + 1)]
    out, wscores = [], []
    for v in test_logits:
        ranked = sorted(range(k), key=lambda j: (-v[j], j))[:alpha]
        revised, unknown = [], 0.0
        for c in range(k):
            shape, scale, shift = models[c]
            ws = stats.exponweib.cdf(dist(v, mavs[c]) + shift, 1, shape, loc=0, scale=scale)
            wscores.append(ws)
            omega = weights[ranked.index(c)] if c in ranked else 0.0
            revised.append(v[c] * (1 - ws * omega))
            unknown += v[c] - revised[-1]
        m = max(revised + [unknown])
        e = [math.exp(r - m) for r in revised]
        e0 = math.exp(unknown - m)
        out.append(1.0 - e0 / (sum(e) + e0))
    return np.array(out), np.array(wscores), tails


@pytest.mark.parametrize("distance, alpha, tailsize, tol", [("euclidean", 3, 20, 2e-3), ("euclidean", 2, 8, 2e-3),
                                                           ("eucos", 3, 15, 1e-2)])
def test_openmax_matches_osdn_loops(distance, alpha, tailsize, tol):
    p = _problem(13, n=150, d=6, k=4, n_test=16)
    s = _fitted("openmax", p, distance=distance, alpha=alpha, tailsize=tailsize)
    assert s.fallback_classes == []
    lg, y = _f(p["logits"]), p["y"]
    test = np.vstack([_f(p["tl"]), lg[:6]])  # training-like rows land in the fitted tails too
    got = s(_out(np.zeros((len(test), 6)), test))
    # the test-time formula exactly, with the detector's own Weibull parameters ...
    exact, ws, tails = _openmax_loop(lg, y, test, tailsize, alpha, distance,
                                     params=(s.shape.numpy(), s.scale.numpy()))
    np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-12)
    assert ((ws > 0.05) & (ws < 0.95)).sum() >= 3, "the test must reach the Weibull tails"
    assert (got < 0.99).sum() >= 3 and (got > 0.5).sum() >= 3
    # the translated tails are nearly constant (spread ~1e-5 of 10000), so the likelihood is
    # flat: the fitted parameters must be at least as likely as SciPy's two optimisers' ...
    for c, tail in enumerate(tails):
        ll = lambda shape, scale: stats.weibull_min.logpdf(tail, shape, scale=scale).sum()  # noqa: E731
        ours = ll(s.shape[c].item(), s.scale[c].item())
        _, c1, _, s1 = stats.exponweib.fit(tail, floc=0, f0=1)
        c2, _, s2 = stats.weibull_min.fit(tail, floc=0)
        assert ours >= max(ll(c1, s1), ll(c2, s2)) - 1e-8 * abs(ours)
    # ... and end to end with SciPy's fit the scores agree to what that flatness allows
    ref, _, _ = _openmax_loop(lg, y, test, tailsize, alpha, distance)
    np.testing.assert_allclose(got, ref, atol=tol)


def test_openmax_default_alpha_sign_and_fallback():
    p = _problem(14, n=60, d=4, k=2)
    s = _fitted("openmax", p)
    assert s.alpha_used == 2  # min(3, K)
    mav = s.mavs[1].numpy()
    got = s(_out(np.zeros((2, 4)), np.stack([mav, mav + 50.0])))
    assert got[0] > 0.5 > got[1]  # at the class mean: known; far beyond every tail: unknown
    lg = p["logits"].copy()
    lg[:, 1] = lg[:, 0] - 1.0  # a model that never predicts class 1
    s2 = OpenMax().fit(_out(p["z"], lg), torch.tensor(p["y"]))
    assert s2.fallback_classes == [1]
    np.testing.assert_allclose(s2.mavs[1].numpy(), _f(lg)[p["y"] == 1].mean(0), rtol=1e-12)


# --------------------------------------------------------------------------- memory
@pytest.mark.parametrize("name", NEW + ("mahalanobis", "knn", "vim"))
def test_scores_are_the_same_one_row_at_a_time(name, monkeypatch):
    p = _problem(16, n=90, d=6, k=3, n_test=9)
    s = _fitted(name, p)
    test = _out(p["tz"], p["tl"])
    whole = s(test)
    monkeypatch.setattr(scores_mod, "MEMORY_BUDGET_BYTES", 1)  # every chunk: one row
    chunks = []
    real = posthoc.row_chunks
    monkeypatch.setattr(posthoc, "row_chunks", lambda *a, **kw: chunks.append(list(real(*a, **kw))) or iter(chunks[-1]))
    rtol = 1e-6 if name == "nnguide" else 1e-10  # nnguide's float32 products are summed in another order
    np.testing.assert_allclose(s(test), whole, rtol=rtol, atol=1e-12)
    assert chunks and all(len(c) == 9 and all(sl.stop - sl.start == 1 for sl in c) for c in chunks)


# --------------------------------------------------------------------------- end to end
def test_new_detectors_on_a_trained_model(tiny_digits_run):
    bench = ood_core.load_benchmark("digits")
    ev = ood_core.evaluate(tiny_digits_run.model, bench, score_names=list(NEW))
    for name in NEW:
        assert np.isfinite(ev.scores[f"id/{name}"]).all()
        assert 0.0 <= ev.report["ood"]["uniform-noise"][name]["auroc"] <= 1.0
