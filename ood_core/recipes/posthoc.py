"""Post-hoc baseline scores that need training-set statistics: Mahalanobis, KNN, ViM.

All three are computed on a trained model's cached outputs (``ModelOutput(features,
logits)``); each overrides :meth:`ood_core.scores.Score.fit`, which the evaluator calls with
the *training* split's outputs and labels (``requires_fit = True``). Convention: **high = ID**.

* ``mahalanobis``: Lee, Lee, Lee, Shin, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018 (arXiv 1807.03888).
* ``knn``: Sun, Ming, Zhu, Li, "Out-of-Distribution Detection with Deep Nearest Neighbors",
  ICML 2022 (arXiv 2204.06507).
* ``vim``: Wang, Li, Feng, Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching",
  CVPR 2022 (arXiv 2203.10807).

Statistics are computed in float64 and stored on the CPU. Every samples x bank or samples x
classes temporary is built in row chunks (:func:`rowwise` over :func:`ood_core.scores.row_chunks`)
so a call's working memory stays under :data:`ood_core.scores.MEMORY_BUDGET_BYTES`.
The pieces :func:`class_scatter`, :func:`gaussian_precision`, :func:`squared_mahalanobis` and
:class:`ResidualSpace` are shared with :mod:`ood_core.recipes.distance` (``rmds``, ``residual``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import DataError, OODCoreError
from ..models import LinearHead, ModelOutput
from ..scores import Score, register_score, row_chunks


def _f64(t) -> torch.Tensor:
    return torch.as_tensor(t).detach().to("cpu", torch.float64)


def check_memory_budget(budget, score: str) -> int | None:
    """``budget`` (bytes for a score's largest temporary block) as an int, or None for the
    default :data:`ood_core.scores.MEMORY_BUDGET_BYTES`; OODCoreError unless a positive integer."""
    if budget is None:
        return None
    try:
        b = int(budget)
    except (TypeError, ValueError):
        b = None
    if b is None or b != budget or b < 1:
        raise OODCoreError(f"{score} memory_budget must be a positive number of bytes (e.g. 2**28) or None "
                           f"for the default, got {budget!r}")
    return b


def rowwise(fn, n_rows: int, bytes_per_row: int, *tensors, budget: int | None = None) -> torch.Tensor:
    """``torch.cat([fn(*(t[rows] for t in tensors)) for rows in row_chunks(...)])``: apply a
    per-sample computation chunk by chunk so its temporaries stay under the memory budget.

    The result is written into one tensor allocated after the first chunk: small per-chunk
    results kept between the chunks' large freed temporaries fragment the heap, and the peak
    memory then grows with the number of rows (seen: +1 KB per row, 60 MB at 60,000 rows)."""
    out = None
    for rows in row_chunks(n_rows, bytes_per_row, budget):
        part = fn(*(t[rows] for t in tensors))
        if out is None:
            out = torch.empty((n_rows, *part.shape[1:]), dtype=part.dtype)
        out[rows] = part
        del part
    return fn(*(t[:0] for t in tensors)) if out is None else out


def mean_rows(x: torch.Tensor, rows: torch.Tensor | None = None, budget: int | None = None) -> torch.Tensor:
    """float64 mean over the rows of ``x`` (or over ``x[rows]`` for an index tensor ``rows``),
    summed in row chunks: no float64 copy of the whole matrix is made."""
    x = torch.as_tensor(x).detach()
    n = x.shape[0] if rows is None else int(rows.numel())
    if n == 0:
        raise OODCoreError("a mean over no rows is undefined")
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    for sl in row_chunks(n, 8 * max(1, x[0].numel()), budget):
        total += _f64(x[sl] if rows is None else x[rows[sl]]).sum(0)
    return total / n


def class_mean_rows(z: torch.Tensor, labels, k: int, budget: int | None = None) -> torch.Tensor:
    """(k, d) float64 mean feature of each class 0..k-1, summed in float64 row chunks (no float64
    copy of the whole matrix); a class with no sample is refused (DataError, which classes)."""
    z = torch.as_tensor(z).detach().cpu()
    y = torch.as_tensor(np.asarray(labels)).reshape(-1).to(torch.int64)
    if y.numel() != z.shape[0] or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= k)):
        raise DataError(f"class means need {z.shape[0]} labels in 0..{k - 1}")
    sums = torch.zeros(k, z.shape[1], dtype=torch.float64)
    for sl in row_chunks(z.shape[0], 8 * z.shape[1], budget):
        sums.index_add_(0, y[sl], _f64(z[sl]))
    counts = torch.bincount(y, minlength=k)
    if bool((counts == 0).any()):
        raise DataError(f"class(es) {torch.nonzero(counts == 0).ravel().tolist()} have no sample")
    return sums / counts[:, None]


def _float_bits(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` as float64 or float32 (a smaller float is widened exactly), and its bit width."""
    return (x, 64) if x.dtype == torch.float64 else (x.to(torch.float32), 32)


def _sortable_keys(x: torch.Tensor, width: int) -> torch.Tensor:
    """Signed int64 keys whose order is the order of the float values ``x`` (of ``width`` bits).
    About 16 bytes per entry at its peak (the keys and one mask), computed in place."""
    ints = torch.int64 if width == 64 else torch.int32
    keys = (x + 0.0).view(ints).to(torch.int64)  # + 0.0 turns -0.0 into 0.0: one key for zero
    # negative floats: flip every bit but the sign, which reverses their order
    flip = keys >> (width - 1)  # -1 where negative (arithmetic shift), else 0
    flip &= (1 << (width - 1)) - 1
    keys ^= flip
    return keys


def _key_value(key: int, width: int) -> float:
    if key < 0:
        key ^= (1 << (width - 1)) - 1
    ints, floats = (torch.int64, torch.float64) if width == 64 else (torch.int32, torch.float32)
    return float(torch.tensor([key], dtype=ints).view(floats))


def _kth_entry(x: torch.Tensor, k: int, budget: int | None) -> tuple[float, int]:
    """The k-th smallest (0-based) entry of the float matrix ``x`` and how many entries are
    <= it: a radix select on 16-bit digits of sortable keys (2 passes for float32, 4 for
    float64), in row chunks. For a fixed upper part of a key, its lower bits order as unsigned."""
    x, width = _float_bits(x)
    per_row = 40 * max(1, x.shape[1])  # bytes per entry at the peak: a float copy, keys, a mask, digits
    prefix, rank = None, k  # prefix: the key's bits above the current digit (arithmetic shift)
    for shift in range(width - 16, -1, -16):
        counts = torch.zeros(1 << 16, dtype=torch.int64)
        for sl in row_chunks(x.shape[0], per_row, budget):
            keys = _sortable_keys(x[sl], width).ravel()
            if prefix is not None:
                keys = keys[(keys >> (shift + 16)) == prefix]
            keys >>= shift
            if prefix is None:
                keys += 1 << 15  # the top digit is signed
            else:
                keys &= 0xFFFF
            counts += torch.bincount(keys, minlength=1 << 16)
            del keys
        below = torch.cumsum(counts, 0)
        digit = int(torch.searchsorted(below, rank, right=True))
        rank -= int(below[digit - 1]) if digit else 0
        prefix = digit - (1 << 15) if prefix is None else (prefix << 16) | digit
    n_le = sum(int((_sortable_keys(x[sl], width) <= prefix).sum())
               for sl in row_chunks(x.shape[0], per_row, budget))
    return _key_value(prefix, width), n_le


def percentile_of_entries(x: torch.Tensor, q: float, budget: int | None = None) -> float:
    """``numpy.percentile(x.ravel(), q)`` (linear interpolation) of a float matrix without
    sorting or copying it whole: an exact radix select in row chunks under the memory budget.
    ReAct's threshold at 50,000 x 2,048 is one of these, where numpy would partition a 0.8 GB
    float64 copy."""
    x = torch.as_tensor(x).detach().cpu()
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    n = x.numel()
    if n == 0:
        raise OODCoreError("a percentile of no values is undefined")
    # isfinite builds |x| and three masks: about 8 bytes per float32 entry
    if not all(bool(torch.isfinite(x[sl]).all()) for sl in row_chunks(x.shape[0], 16 * x.shape[1], budget)):
        raise OODCoreError("a percentile needs finite values (the features contain NaN or inf)")
    pos = (n - 1) * (float(q) / 100.0)
    lo = int(np.floor(pos))
    a, n_le = _kth_entry(x, lo, budget)
    if lo + 1 >= n or pos == lo:
        return a
    if n_le > lo + 1:  # ties: the next order statistic is the same value
        b = a
    else:  # the smallest entry above a
        b = min(float(torch.where(x[sl] > a, x[sl], torch.inf).min())
                for sl in row_chunks(x.shape[0], 16 * x.shape[1], budget))
    # numpy's linear interpolation in float64, with its rule for t >= 0.5
    t, diff = pos - lo, b - a
    return float(b - diff * (1.0 - t)) if t >= 0.5 else float(a + diff * t)


class _FittedScore(Score):
    requires_fit = True
    _fitted = False

    def _check_fitted(self):
        if not self._fitted:
            raise OODCoreError(f"score {self.name!r} needs training statistics: call fit(train_outputs, labels, model) "
                               "first (the evaluator does this)")


def class_scatter(z: torch.Tensor, labels, k: int, score: str,
                  budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (K, d) and the covariance pooled within the classes (d, d), float64.

    ``labels``: (N,) class indices, or (N, K) multi-hot (a sample then counts once for each
    label it has: the means are over the samples carrying label c and the covariance is
    pooled over all (sample, present label) pairs). OODCoreError when a class has no sample.
    ``z`` may be float32: it is read in row chunks under the memory budget (two passes: the
    class sums, then the scatter about the class means), never copied whole to float64.
    """
    labels = torch.as_tensor(labels)
    n, d = z.shape

    def onehot(rows) -> torch.Tensor:
        lab = labels[rows]
        if lab.dim() == 1:
            oh = torch.zeros(lab.shape[0], k, dtype=torch.float64)
            oh[torch.arange(lab.shape[0]), lab.long()] = 1.0
            return oh
        return (lab > 0.5).to(torch.float64)

    per_row = 8 * (3 * d + k)
    sums, counts = torch.zeros(k, d, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for rows in row_chunks(n, per_row, budget):
        oh = onehot(rows)
        sums += oh.T @ _f64(z[rows])
        counts += oh.sum(0)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise OODCoreError(f"{score}: no training sample of class(es) {missing}; cannot estimate their means")
    means = sums / counts[:, None]  # (K, d)
    cov = torch.zeros(d, d, dtype=torch.float64)
    for rows in row_chunks(n, per_row, budget):
        zb = _f64(z[rows])
        if labels.dim() == 1:  # one label per sample: one product per chunk (a loop over classes is
            diff = zb - means[labels[rows].long()]  # 1,000 small ones, 10x slower at 1,000 classes)
            cov += diff.T @ diff
            continue
        oh = onehot(rows)
        for c in torch.nonzero(oh.sum(0)).flatten().tolist():  # pooled over (sample, label) pairs
            diff = zb[oh[:, c] > 0] - means[c]
            cov += diff.T @ diff
    return means, cov / counts.sum()


def gaussian_precision(cov: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """pinv(cov + ridge * (tr(cov)/d) * I), hermitian pseudo-inverse (ridge 0: pure pinv)."""
    if ridge > 0:
        d = cov.shape[0]
        cov = cov + ridge * (torch.trace(cov) / d) * torch.eye(d, dtype=torch.float64)
    return torch.linalg.pinv(cov, hermitian=True)


def squared_mahalanobis(z: torch.Tensor, means: torch.Tensor, precision: torch.Tensor,
                        budget: int | None = None) -> torch.Tensor:
    """(N, M) squared distances (z - m)^T P (z - m) of every row of ``z`` to every row of
    ``means``, float64, from the expanded form z^T P z - 2 z^T P m + m^T P m (clamped at 0).
    Rows are processed in chunks so the temporaries (a float64 copy of the rows, z P and the
    (rows, M) block) stay under the memory budget."""
    mq = ((means @ precision) * means).sum(1)  # m^T P m, (M,)

    def block(zb):
        zb = _f64(zb)
        zp = zb @ precision
        return ((zp * zb).sum(1, keepdim=True) - 2 * zp @ means.T + mq[None]).clamp_min(0)

    d, m = precision.shape[0], means.shape[0]
    return rowwise(block, z.shape[0], 8 * (2 * d + 2 * m), z, budget=budget)


@register_score
class Mahalanobis(_FittedScore):
    """Mahalanobis distance to the closest class mean, tied covariance, negated (high = ID).

    Lee, Lee, Lee, Shin, NeurIPS 2018 (arXiv 1807.03888), on the penultimate features z, with
    no input pre-processing and no feature ensemble (the plain "Mahalanobis" of OpenOOD):

      mu_c  = mean of the training features of class c,
      Sigma = (1/N) sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T   (one covariance shared by all classes),
      P     = pinv(Sigma + ridge * (tr(Sigma)/d) * I)         (hermitian pseudo-inverse),
      S(x)  = -min_c (z - mu_c)^T P (z - mu_c).

    ``ridge`` (default 0: a pure pseudo-inverse, as ``sklearn.covariance.EmpiricalCovariance``
    in the reference code) adds a multiple of the mean variance to the diagonal; with 0,
    directions with no training variance (e.g. dead ReLU units) are ignored by the pinv.

    Multi-label (labels (N, K) multi-hot): mu_c is the mean over the samples where label c is
    present, and Sigma is pooled over all (sample, present label) pairs; the score is the same.
    The (N, K) distances are computed in row chunks under the memory budget.
    """

    name = "mahalanobis"
    tasks = ("multiclass", "multilabel")

    def __init__(self, ridge: float = 0.0):
        ridge = float(ridge)
        if not ridge >= 0:
            raise OODCoreError(f"{self.name} ridge must be >= 0, got {ridge}")
        self.ridge = ridge

    def fit(self, train: ModelOutput, labels, model=None):
        self.means, cov = class_scatter(train.features.detach().cpu(), labels, train.logits.shape[1], self.name)
        self.precision = gaussian_precision(cov, self.ridge)
        self._fitted = True
        return self

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(N, K) squared Mahalanobis distances (z - mu_c)^T P (z - mu_c)."""
        self._check_fitted()
        return squared_mahalanobis(z, self.means, self.precision)

    def compute(self, out):
        return -self.distances(out.features).min(dim=1).values


@register_score
class KNN(_FittedScore):
    """Negative distance to the k-th nearest training feature, unit-normalised features (high = ID).

    Sun, Ming, Zhu, Li, ICML 2022 (arXiv 2204.06507): z_hat = z/||z||_2 for the test sample
    and every training sample; S(x) = -||z_hat - z_hat_(k)||_2, z_hat_(k) the k-th nearest
    training feature. No labels are used.

    k: the paper uses k = 50 for CIFAR-10 (50,000 training images) and k = 1000 for ImageNet
    (about 0.1-1% of the training set); our embedded training sets have ~650 samples, so the
    default is k = 10 (about 1.5%). ``k`` larger than the training set is refused.

    Memory: test rows are processed in chunks whose (rows x bank) float32 similarity block
    stays under ``memory_budget`` bytes (default None: :data:`ood_core.scores.MEMORY_BUDGET_BYTES`,
    256 MiB), e.g. 1,276 rows at a time for a 50,000 x 512 bank instead of a fixed 4,096
    (0.8 GB).
    """

    name = "knn"
    tasks = ("multiclass", "multilabel")

    def __init__(self, k: int = 10, memory_budget: int | None = None):
        if int(k) != k or int(k) < 1:
            raise OODCoreError(f"knn k must be a positive integer, got {k}")
        self.k = int(k)
        self.memory_budget = check_memory_budget(memory_budget, "knn")

    def fit(self, train: ModelOutput, labels=None, model=None):
        z = train.features.detach().to("cpu")
        if z.shape[0] < self.k:
            raise OODCoreError(f"knn: k={self.k} but only {z.shape[0]} training samples; lower k")
        # State: the training features as given (float32: no copy) for the exact float64 distance
        # to the neighbour found, and their float32 unit vectors for the search; normalised in
        # float64 row chunks, so no float64 copy of the whole bank is ever made.
        self._raw = z.float()
        self.bank = torch.empty(z.shape, dtype=torch.float32)
        for sl in row_chunks(z.shape[0], 16 * z.shape[1], self.memory_budget):
            self.bank[sl] = nn.functional.normalize(_f64(z[sl]), dim=1).float()
        self._fitted = True
        return self

    def bytes_per_row(self) -> int:
        """Working memory per test row: its (1 x bank) float32 similarities plus the row's
        float64/float32 unit vector and its neighbour's float64 row."""
        m, d = self.bank.shape
        return 4 * m + 28 * d

    def compute(self, out):
        # On the unit sphere ||a - b||^2 = 2 - 2 a.b, so the k-th nearest neighbour is the one
        # with the k-th largest cosine: found with one float32 matrix product + topk (about 3x
        # faster than cdist in float64); its distance is then computed directly in float64, so
        # the score is exact for that neighbour (float32 cosines alone would give errors up to
        # ~5e-4 for near-duplicates). Only the choice between neighbours whose cosines agree to
        # float32 rounding (~1e-7) can differ from an exact float64 search.
        self._check_fitted()

        def block(zb):
            zn = nn.functional.normalize(_f64(zb), dim=1)
            kth = (zn.float() @ self.bank.T).topk(self.k, dim=1).indices[:, -1]
            return -(zn - nn.functional.normalize(_f64(self._raw[kth]), dim=1)).norm(dim=1)

        return rowwise(block, out.features.shape[0], self.bytes_per_row(), out.features, budget=self.memory_budget)


def vim_dimension(d: int, k: int) -> int:
    """Default principal-subspace dimension D of ViM for feature dim d and K classes.

    D = d // 2 when d >= 2K (the choice of the ViM paper and OpenOOD for ResNets: 1000 of
    2048, 256 of 512); D = K when K < d < 2K (the principal space must hold at least the
    K class directions); refused (OODCoreError) when d <= K: there is then no residual
    space left to measure.
    """
    if d >= 2 * k:
        return d // 2
    if d > k:
        return k
    raise OODCoreError(f"ViM needs a feature dimension larger than the number of classes; got d={d}, K={k}")


class ResidualSpace(_FittedScore):
    """The residual space of ViM (Wang et al., CVPR 2022), shared by ``vim`` and ``residual``.

    ``fit`` sets u = -pinv(W) b (W, b: the linear head, or the least-squares affine fit of
    the logits for other heads, ``self.source``) and the basis R (d, d - D) of the
    eigenvectors of (1/N) sum_i (z_i - u)(z_i - u)^T beyond the top ``dim`` = D;
    :meth:`residual_norm` gives ||R^T (z - u)||_2.
    """

    label = "ViM"  # how errors name the score

    def __init__(self, dim: int | None = None):
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer, float))
                                or int(dim) != dim or int(dim) < 1):
            raise OODCoreError(f"{self.name} dim (the principal-subspace dimension D) must be a positive integer, "
                               f"or None for the default (vim_dimension: d/2 when d >= 2K); got {dim!r}")
        self.dim = None if dim is None else int(dim)

    @staticmethod
    def _affine(train: ModelOutput, model) -> tuple[np.ndarray, np.ndarray, str]:
        head = getattr(model, "head", None)
        if type(head) in (LinearHead, nn.Linear) and head.bias is not None:
            return (head.weight.detach().cpu().double().numpy(), head.bias.detach().cpu().double().numpy(), "head")
        z = train.features.double().cpu().numpy()
        a = np.hstack([z, np.ones((z.shape[0], 1))])
        coef, *_ = np.linalg.lstsq(a, train.logits.double().cpu().numpy(), rcond=None)
        return coef[:-1].T, coef[-1], "lstsq"

    def fit_residual_space(self, train: ModelOutput, model) -> np.ndarray:
        """Fit u and R; return the (N,) residual norms of the training features."""
        z = train.features.detach().cpu()  # read in row chunks: no float64 copy of the whole bank
        n, d = z.shape
        k = train.logits.shape[1]
        dim = vim_dimension(d, k) if self.dim is None else self.dim
        if not 0 < dim < d:
            raise OODCoreError(f"{self.label} principal dimension must be in 1..{d - 1} for d={d}; got {dim}")
        w, b, self.source = self._affine(train, model)
        self.u = -np.linalg.pinv(w) @ b
        u = torch.from_numpy(self.u)
        second = torch.zeros(d, d, dtype=torch.float64)  # sum_i (z_i - u)(z_i - u)^T
        for rows in row_chunks(n, 8 * 2 * d):
            x = _f64(z[rows]) - u
            second += x.T @ x
        evals, evecs = np.linalg.eigh((second / n).numpy())
        order = np.argsort(evals)[::-1]
        self.residual_basis = np.ascontiguousarray(evecs[:, order[dim:]])  # (d, d - D)
        self.principal_dim = dim
        self._fitted = True  # residual_norm below checks it
        r = self.residual_norm(z).numpy()
        if not r.mean() > 1e-12:
            self._fitted = False
            raise OODCoreError(f"{self.label}: the training features span at most {dim} dimensions, so the residual "
                               "is 0; pass a smaller dim")
        self._fitted = True
        return r

    def residual_norm(self, z: torch.Tensor) -> torch.Tensor:
        """(N,) ||R^T (z - u)||_2, float64, in row chunks under the memory budget."""
        self._check_fitted()
        u, basis = torch.from_numpy(self.u), torch.from_numpy(self.residual_basis)
        return rowwise(lambda zb: ((_f64(zb) - u) @ basis).norm(dim=1), z.shape[0], 8 * (2 * basis.shape[0]), z)


@register_score
class ViM(ResidualSpace):
    """Virtual-logit matching: energy minus the scaled residual norm (high = ID).

    Wang, Li, Feng, Zhang, CVPR 2022 (arXiv 2203.10807). With logits = W z + b:

      u      = -pinv(W) b                     (origin: the point whose logits are 0),
      R      = eigenvectors of (1/N) sum_i (z_i - u)(z_i - u)^T beyond the top D
               (the orthogonal complement of the D-dim principal subspace),
      r(x)   = ||R^T (z - u)||_2               (residual norm),
      alpha  = mean_train max_k f_k(x) / mean_train r(x),
      S(x)   = logsumexp_k f_k(x) - alpha * r(x).

    D: ``dim`` (default :func:`vim_dimension`: d/2 when d >= 2K).
    W, b: read from the model's head when it is the plain linear head (the paper's case).
    For any other head (cosine, l2norm, centres) logits are not affine in z; W, b are then
    the least-squares affine fit of the training logits on the training features (our
    extension, ``self.source = "lstsq"``; exact for a linear head). When the mean training
    max-logit is negative (e.g. distance logits -||z - c_k||^2), its absolute value is used,
    so that a larger residual always lowers the score.
    """

    name = "vim"
    tasks = ("multiclass",)
    task_note = "its virtual logit is matched against the softmax energy logsumexp_k f_k, which assumes one class " \
                "per sample; use residual (its residual part alone) for multi-label models"

    def fit(self, train: ModelOutput, labels=None, model=None):
        r = self.fit_residual_space(train, model)
        max_logit = train.logits.detach().cpu().max(dim=1).values.double()  # (N,): no float64 copy of all logits
        self.alpha = float(abs(max_logit.mean()) / r.mean())
        return self

    def compute(self, out):
        return torch.logsumexp(_f64(out.logits), dim=1) - self.alpha * self.residual_norm(out.features)
