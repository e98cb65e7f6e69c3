"""Post-hoc scores (Mahalanobis, KNN, ViM) against brute-force NumPy computations, their signs, and
KNN's memory-bounded chunks."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from ood_core.errors import OODCoreError
from ood_core.models import LinearHead, ModelOutput
from ood_core.recipes import posthoc
from ood_core.recipes.posthoc import KNN, Mahalanobis, ViM, vim_dimension
from ood_core.scores import MEMORY_BUDGET_BYTES, SCORES, make_score, row_chunks, scores_for_task


def _out(z, logits=None, k=3):
    z = np.asarray(z, dtype=np.float32)
    if logits is None:
        logits = np.zeros((len(z), k), dtype=np.float32)
    return ModelOutput(torch.from_numpy(z), torch.from_numpy(np.asarray(logits, dtype=np.float32)))


def _train_set(seed=0, n=60, d=5, k=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    z = rng.normal(size=(n, d)) + 3 * rng.normal(size=(k, d))[y]
    return z.astype(np.float32), y


def test_registered_with_fit():
    for name in ("mahalanobis", "knn", "vim"):
        assert SCORES[name].requires_fit
        assert name in scores_for_task("multiclass")
    assert "mahalanobis" in scores_for_task("multilabel") and "vim" not in scores_for_task("multilabel")


@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_mahalanobis_matches_loops(ridge):
    z, y = _train_set(1)
    test = np.random.default_rng(2).normal(size=(7, 5)) * 3
    s = make_score("mahalanobis", ridge=ridge).fit(_out(z), torch.tensor(y))
    zd = z.astype(np.float64)
    means = [zd[y == c].mean(0) for c in range(3)]
    cov = np.zeros((5, 5))
    for i in range(len(zd)):
        cov += np.outer(zd[i] - means[y[i]], zd[i] - means[y[i]])
    cov /= len(zd)
    cov += ridge * np.trace(cov) / 5 * np.eye(5)
    prec = np.linalg.inv(cov)
    expected = [-min((t - m) @ prec @ (t - m) for m in means) for t in test.astype(np.float32).astype(np.float64)]
    np.testing.assert_allclose(s(_out(test)), expected, rtol=1e-6)


def test_mahalanobis_pinv_ignores_dead_dimensions():
    """A dimension with no training variance: the pseudo-inverse ignores it (as sklearn's pinvh)."""
    z, y = _train_set(3, d=4)
    z = np.hstack([z, np.zeros((len(z), 1), np.float32)])
    s = Mahalanobis().fit(_out(z), torch.tensor(y))
    a = s(_out(z[:5]))
    b = s(_out(np.hstack([z[:5, :4], np.full((5, 1), 7.0, np.float32)])))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.isfinite(a).all()


def test_mahalanobis_multilabel_per_label_means():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(40, 3))
    y = (rng.random((40, 2)) < 0.6).astype(np.float32)
    y[y.sum(1) == 0, 0] = 1.0
    s = Mahalanobis().fit(_out(z, k=2), torch.tensor(y))
    zd = z.astype(np.float32).astype(np.float64)
    means = [zd[y[:, c] > 0].mean(0) for c in range(2)]
    cov, cnt = np.zeros((3, 3)), 0
    for i in range(40):
        for c in range(2):
            if y[i, c] > 0:
                cov += np.outer(zd[i] - means[c], zd[i] - means[c])
                cnt += 1
    prec = np.linalg.inv(cov / cnt)
    expected = [-min((t - m) @ prec @ (t - m) for m in means) for t in zd[:6]]
    np.testing.assert_allclose(s(_out(z[:6], k=2)), expected, rtol=1e-6)


def test_knn_matches_full_sort():
    z, _ = _train_set(5, n=50)
    test = np.random.default_rng(6).normal(size=(9, 5)).astype(np.float32) * 2
    for k in (1, 4, 10):
        s = KNN(k=k, memory_budget=4 * (4 * 50 + 20 * 5)).fit(_out(z), None)  # 4 rows per chunk
        zn = z / np.linalg.norm(z, axis=1, keepdims=True)
        tn = test / np.linalg.norm(test, axis=1, keepdims=True)
        dist = np.sqrt(((tn[:, None, :].astype(np.float64) - zn[None]) ** 2).sum(-1))
        expected = -np.sort(dist, axis=1)[:, k - 1]
        np.testing.assert_allclose(s(_out(test)), expected, rtol=1e-5, atol=1e-6)


def test_knn_small_budget_equals_brute_force_and_respects_the_budget(monkeypatch):
    rng = np.random.default_rng(15)
    bank, test = rng.normal(size=(50, 5)), rng.normal(size=(37, 5)) * 2
    calls = []

    def spy(n_rows, bytes_per_row, budget=None):
        slices = list(row_chunks(n_rows, bytes_per_row, budget))
        calls.append((n_rows, bytes_per_row, budget, slices))
        return iter(slices)

    monkeypatch.setattr(posthoc, "row_chunks", spy)
    budget = 4 * (4 * 50 + 28 * 5)  # 4 rows of (1 x 50) float32 similarities plus the row vectors
    for k in (1, 3, 10):
        calls.clear()
        s = KNN(k=k, memory_budget=budget).fit(_out(bank))
        got = s(_out(test))
        tn = torch.nn.functional.normalize(torch.from_numpy(test.astype(np.float32).astype(np.float64)), dim=1)
        bn = torch.nn.functional.normalize(torch.from_numpy(bank.astype(np.float32).astype(np.float64)), dim=1)
        dist = torch.cdist(tn, bn, compute_mode="donot_use_mm_for_euclid_dist")
        expected = -dist.sort(dim=1).values[:, k - 1].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
        (n_rows, per_row, used, slices), = [c for c in calls if c[0] == len(test)]  # scoring (fit chunks too)
        assert (n_rows, used) == (37, budget) and per_row >= 4 * 50
        assert [sl.stop - sl.start for sl in slices] == [4] * 9 + [1]
        assert all((sl.stop - sl.start) * 4 * 50 <= budget for sl in slices)
        one_chunk = KNN(k=k).fit(_out(bank))
        assert np.array_equal(one_chunk(_out(test)), got)


def test_knn_default_chunks_of_a_50000_bank_stay_under_the_budget():
    s = KNN()
    s.bank = torch.zeros(50_000, 512)  # no fit needed to plan the chunks
    rows = [sl.stop - sl.start for sl in row_chunks(4096, s.bytes_per_row())]
    block = max(rows) * 50_000 * 4
    assert block <= MEMORY_BUDGET_BYTES < 4096 * 50_000 * 4  # before: one 4096-row block, 0.8 GB
    assert sum(rows) == 4096 and max(rows) == MEMORY_BUDGET_BYTES // s.bytes_per_row()


def _sizes(slices) -> list[int]:
    return [sl.stop - sl.start for sl in slices]


def test_row_chunks_keeps_small_rows_to_cache_sized_blocks_within_the_budget():
    from ood_core import scores as scores_mod

    cache, low = scores_mod.CACHE_BLOCK_BYTES, scores_mod.CACHE_BLOCK_MIN_ROWS
    per_row = 6184  # a KNN row of a 650 x 128 bank: 4 * 650 + 28 * 128
    slices = list(row_chunks(20_000, per_row))
    step = cache // per_row
    assert step >= low and _sizes(slices) == [step] * (20_000 // step) + [20_000 % step]
    assert [sl.start for sl in slices] == list(range(0, 20_000, step))  # contiguous, in order, all rows
    assert max(_sizes(slices)) * per_row <= cache
    # the budget still wins when it is the smaller limit, and cache_blocks=False leaves only the budget
    assert _sizes(row_chunks(100, 1000, budget=10_000)) == [10] * 10
    assert _sizes(row_chunks(20_000, per_row, cache_blocks=False)) == [20_000]
    assert _sizes(row_chunks(20_000, per_row, budget=2**30, cache_blocks=False)) == [20_000]
    # rows whose cache-sized block would be under CACHE_BLOCK_MIN_ROWS are cut by the budget alone
    big = cache // low + 1
    assert _sizes(row_chunks(10_000, big)) == [MEMORY_BUDGET_BYTES // big] * (10_000 // (MEMORY_BUDGET_BYTES // big)) \
        + ([10_000 % (MEMORY_BUDGET_BYTES // big)] if 10_000 % (MEMORY_BUDGET_BYTES // big) else [])


def test_scores_do_not_depend_on_the_cache_block_size(monkeypatch):
    from ood_core import scores as scores_mod

    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 16)).astype(np.float32)
    y = np.arange(300) % 4
    logits = rng.normal(size=(300, 4)).astype(np.float32)
    test = _out(rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(500, 4)).astype(np.float32))
    train = _out(z, logits)
    got = {}
    for cache in (scores_mod.CACHE_BLOCK_BYTES, 64 * 2**30):  # cache-sized blocks, then one block
        monkeypatch.setattr(scores_mod, "CACHE_BLOCK_BYTES", cache)
        monkeypatch.setattr(scores_mod, "CACHE_BLOCK_MIN_ROWS", 1)
        for name in ("knn", "mahalanobis", "min_distance"):
            got.setdefault(name, []).append(make_score(name).fit(train, torch.from_numpy(y))(test))
    monkeypatch.setattr(scores_mod, "CACHE_BLOCK_BYTES", 8 * 1024)  # blocks of a few rows
    for name in ("knn", "mahalanobis", "min_distance"):
        got[name].append(make_score(name).fit(train, torch.from_numpy(y))(test))
        for other in got[name][1:]:
            np.testing.assert_allclose(other, got[name][0], rtol=1e-12, atol=1e-12)


def _vim_numpy(z, logits, w, b, dim, test_z, test_logits):
    u = -np.linalg.pinv(w) @ b
    x = z - u
    evals, evecs = np.linalg.eig(np.cov(x.T, bias=True) + np.outer(x.mean(0), x.mean(0)))  # = x^T x / n
    order = np.argsort(evals.real)[::-1]
    ns = evecs.real[:, order[dim:]]
    alpha = logits.max(1).mean() / np.linalg.norm(x @ ns, axis=1).mean()
    lse = np.log(np.exp(test_logits).sum(1))
    return lse - alpha * np.linalg.norm((test_z - u) @ ns, axis=1)


def test_vim_matches_numpy_eig_and_lstsq_recovers_linear_head():
    rng = np.random.default_rng(7)
    n, d, k = 80, 8, 3
    head = LinearHead(d, k).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor(rng.normal(size=(k, d))))
        head.bias.copy_(torch.tensor(rng.normal(size=k) + 2.0))
    z = (rng.normal(size=(n, d)) * np.linspace(3, 0.2, d)).astype(np.float32)
    w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    logits = z.astype(np.float64) @ w.T + b
    tz = rng.normal(size=(6, d)).astype(np.float32) * 2
    tl = tz.astype(np.float64) @ w.T + b
    model = types.SimpleNamespace(head=head)
    s = ViM().fit(_out(z, logits), None, model)
    assert s.source == "head" and s.principal_dim == vim_dimension(d, k) == 4
    expected = _vim_numpy(z.astype(np.float64), logits.astype(np.float32).astype(np.float64), w, b, 4,
                          tz.astype(np.float64), tl.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(s(_out(tz, tl)), expected, rtol=1e-4, atol=1e-4)
    s2 = ViM().fit(_out(z, logits), None, None)  # no model: affine least-squares fit of the logits
    assert s2.source == "lstsq"
    np.testing.assert_allclose(s2.u, s.u, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(s2(_out(tz, tl)), s(_out(tz, tl)), rtol=1e-3, atol=1e-3)


def test_vim_dimension_rule_and_refusals():
    assert vim_dimension(512, 10) == 256 and vim_dimension(128, 6) == 64
    assert vim_dimension(10, 6) == 6
    with pytest.raises(OODCoreError, match="feature dimension"):
        vim_dimension(6, 6)
    z, y = _train_set(8, d=3)
    with pytest.raises(OODCoreError, match="feature dimension"):
        ViM().fit(_out(z, np.zeros((len(z), 4))), None, None)
    with pytest.raises(OODCoreError, match="principal dimension"):
        ViM(dim=5).fit(_out(z, np.zeros((len(z), 1))), None, None)


def test_signs_high_is_id():
    z, y = _train_set(9, n=60, d=6)
    w = np.random.default_rng(10).normal(size=(3, 6))
    logits = z @ w.T + 1.0
    maha = Mahalanobis().fit(_out(z, logits), torch.tensor(y))
    mu0 = z[y == 0].mean(0)
    probe = np.stack([mu0, mu0 + 40.0])
    assert np.diff(maha(_out(probe)))[0] < 0 and maha(_out(probe))[0] == pytest.approx(0.0, abs=1e-3)
    knn = KNN(k=1).fit(_out(z), None)
    far = -z[0] + np.random.default_rng(11).normal(size=6)  # opposite direction: far on the unit sphere
    sk = knn(_out(np.stack([z[0], far])))
    assert sk[0] > sk[1] and sk[0] == pytest.approx(0.0, abs=1e-3)
    vim = ViM(dim=3).fit(_out(z, logits), None, None)
    base = z[:1].astype(np.float64)
    resid_dir = vim.residual_basis[:, 0]
    moved = base + 10.0 * resid_dir  # a larger residual, same logits given to both
    sv = vim(_out(np.vstack([base, moved]), np.vstack([logits[:1], logits[:1]])))
    assert sv[0] > sv[1]


def test_unfitted_and_bad_parameters_refused():
    z, y = _train_set(12)
    with pytest.raises(OODCoreError, match="fit"):
        Mahalanobis()(_out(z))
    with pytest.raises(OODCoreError, match="k=100"):
        KNN(k=100).fit(_out(z), None)
    with pytest.raises(OODCoreError):
        KNN(k=0)
    with pytest.raises(OODCoreError):
        Mahalanobis(ridge=-1)
    with pytest.raises(OODCoreError, match="no training sample"):
        Mahalanobis().fit(_out(z, k=4), torch.tensor(y))


def test_posthoc_scores_on_a_trained_model(tiny_digits_run):
    import ood_core

    bench = ood_core.load_benchmark("digits")
    ev = ood_core.evaluate(tiny_digits_run.model, bench, score_names=["mahalanobis", "knn", "vim"])
    for name in ("mahalanobis", "knn", "vim"):
        assert np.isfinite(ev.scores[f"id/{name}"]).all()
        assert 0.0 <= ev.report["ood"]["uniform-noise"][name]["auroc"] <= 1.0
