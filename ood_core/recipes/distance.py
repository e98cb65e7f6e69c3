"""Post-hoc detectors built on distances in feature or logit space: SHE, NNGuide, fDBD,
Relative Mahalanobis, the ViM residual and OpenMax.

All are fitted on the *training* split's cached outputs (``requires_fit = True``; the
evaluator calls ``fit(train_outputs, labels, model)``) and score cached
``ModelOutput(features, logits)``, features = the penultimate z that ``model.head`` classifies.
Convention: **high = ID**. Statistics are float64 on the CPU; every samples x bank,
samples x classes or samples x classes x classes temporary is built in row chunks under
:data:`ood_core.scores.MEMORY_BUDGET_BYTES` (:func:`ood_core.recipes.posthoc.rowwise`).

* ``she``: Zhang, Fu, Chen, Du, Li, Wang, Liu, Han, Zhang, "Out-of-Distribution Detection
  based on In-Distribution Data Patterns Memorization with Modern Hopfield Energy", ICLR 2023
  (OpenReview KkazG4lgKL; no arXiv version).
* ``nnguide``: Park, Jung, Teoh, "Nearest Neighbor Guidance for Out-of-Distribution
  Detection", ICCV 2023 (arXiv 2309.14888).
* ``fdbd``: Liu, Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024
  (arXiv 2312.11536).
* ``rmds``: Ren, Fort, Liu, Roy, Padhy, Lakshminarayanan, "A Simple Fix to Mahalanobis
  Distance for Improving Near-OOD Detection", 2021 (arXiv 2106.09022).
* ``residual``: the residual part of ViM, Wang, Li, Feng, Zhang, CVPR 2022 (arXiv 2203.10807).
* ``openmax``: Bendale, Boult, "Towards Open Set Deep Networks", CVPR 2016 (arXiv 1511.06233).

Class means and covariances are shared with ``mahalanobis`` (:func:`class_scatter`,
:func:`gaussian_precision`, :func:`squared_mahalanobis`) and the residual space with ``vim``
(:class:`ResidualSpace`), all in :mod:`ood_core.recipes.posthoc`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp as np_logsumexp
from torch import nn

from ..errors import OODCoreError
from ..models import LinearHead, ModelOutput
from ..scores import register_score, row_chunks
from .posthoc import (Mahalanobis, ResidualSpace, _f64, _FittedScore, check_memory_budget, class_scatter,
                      gaussian_precision, mean_rows, rowwise, squared_mahalanobis)


# --------------------------------------------------------------------------- shared helpers
def _positive_int(value, what: str, score: str, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value \
            or int(value) < 1:
        raise OODCoreError(f"{score} {what} must be a positive integer{hint}, got {value!r}")
    return int(value)


def _choice(value, options: tuple[str, ...], what: str, score: str) -> str:
    if value not in options:
        raise OODCoreError(f"{score} {what} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _class_labels(labels, n: int, k: int, score: str) -> torch.Tensor:
    """``labels`` as (N,) int64 class indices in 0..K-1, or OODCoreError saying what to pass."""
    if labels is None:
        raise OODCoreError(f"{score} needs the training labels: fit(train_outputs, labels, model)")
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() != 1 or labels.shape[0] != n:
        raise OODCoreError(f"{score} needs (N,) class indices for its {n} training samples (a multi-class "
                           f"model), got labels of shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise OODCoreError(f"{score} needs integer class indices as labels")
    labels = labels.long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise OODCoreError(f"{score}: labels must lie in 0..{k - 1} for a model with {k} classes")
    return labels


def correct_members(labels: torch.Tensor, pred: torch.Tensor, k: int, min_count: int,
                    score: str) -> tuple[list[torch.Tensor], list[int]]:
    """Per class c the indices of the training samples labelled c *and* predicted c (the
    correctly classified ones, as SHE and OpenMax use). A class with fewer than ``min_count``
    of them (a weak model) falls back to every training sample labelled c; those classes are
    returned as the second value. OODCoreError when a class has no (or too few) samples at all."""
    members, fallback = [], []
    for c in range(k):
        labelled = labels == c
        idx = torch.nonzero(labelled & (pred == c)).flatten()
        if idx.numel() < min_count:
            idx = torch.nonzero(labelled).flatten()
            fallback.append(c)
            if idx.numel() < min_count:
                raise OODCoreError(f"{score}: class {c} has {idx.numel()} training sample(s); it needs at least "
                                   f"{min_count}")
        members.append(idx)
    return members, fallback


def _linear_head(model, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (K, d), b (K,)) float64 of a plain linear head (logits = W z + b), else OODCoreError."""
    head = getattr(model, "head", None)
    if type(head) not in (LinearHead, nn.Linear) or head.bias is None:
        kind = "no model" if model is None else f"a {type(head).__name__} head"
        raise OODCoreError(f"{score} needs the model with a linear classifier head (logits = W z + b with a bias: "
                           f"the linear or mlp-bn heads), got {kind}; its decision boundaries are hyperplanes only "
                           "then. Pass fit(train_outputs, labels, model) with such a model")
    return _f64(head.weight), _f64(head.bias)


# --------------------------------------------------------------------------- SHE
@register_score
class SHE(_FittedScore):
    """Simplified Hopfield Energy: inner product of z with the stored pattern of its predicted class (high = ID).

    Zhang, Fu, Chen, Du, Li, Wang, Liu, Han, Zhang, ICLR 2023 (OpenReview KkazG4lgKL):

      S_c  = mean of the training features z_i with y_i = c and argmax_k f_k(x_i) = c
             (one stored pattern per class from its correctly classified training samples,
             as OpenOOD and pytorch-ood build it),
      S(x) = z^T S_{c(x)},   c(x) = argmax_k f_k(x) (the model's prediction).

    The "inner_product" metric of the paper and of OpenOOD's default config; no
    hyper-parameters. A larger inner product with the pattern means more ID.
    A class with no correctly classified training sample (a weak model) uses the mean of all
    its training samples instead; ``self.fallback_classes`` lists those (ours: the reference
    code would produce NaN there).
    """

    name = "she"
    tasks = ("multiclass",)
    task_note = "its pattern is chosen by the one predicted class (argmax of the logits) and built from the " \
                "correctly classified samples of each class; a multi-label sample has several classes"

    def fit(self, train: ModelOutput, labels, model=None):
        z = train.features.detach().cpu()  # float32 as given; each class's rows averaged in float64
        k = train.logits.shape[1]
        labels = _class_labels(labels, z.shape[0], k, self.name)
        pred = train.logits.detach().cpu().argmax(dim=1)
        members, self.fallback_classes = correct_members(labels, pred, k, 1, self.name)
        self.patterns = torch.stack([mean_rows(z, idx) for idx in members])  # (K, d)
        self._fitted = True
        return self

    def compute(self, out):
        self._check_fitted()
        pred = out.logits.detach().argmax(dim=1).cpu()
        d = self.patterns.shape[1]
        return rowwise(lambda zb, pb: (_f64(zb) * self.patterns[pb]).sum(1), pred.shape[0], 8 * 2 * d,
                       out.features, pred)


# --------------------------------------------------------------------------- NNGuide
@register_score
class NNGuide(_FittedScore):
    """Nearest-neighbour guidance: energy times the mean of the top-k confidence-scaled similarities (high = ID).

    Park, Jung, Teoh, ICCV 2023 (arXiv 2309.14888). With z_hat = z/||z||_2 and the energy
    E(x) = logsumexp_k f_k(x) as the base confidence:

      bank  B_i = E(x_i) * z_hat_i                 (every training sample i),
      G(x)  = (1/k) sum of the k largest z_hat^T B_i  (neighbours ranked by that scaled inner product),
      S(x)  = E(x) * G(x).

    ``k`` (default 10): the authors' code (github.com/roomo7time/nnguide) defaults to
    ``knn_k = 10``; OpenOOD uses k = 100 for ImageNet with a bank of 1% of its 1.28M training
    images (12,800). Our training sets have ~650 samples, so the bank is the whole training set
    and k = 10 (about 1.5% of it, as for ``knn``); k larger than the bank is refused.
    Sign: as in the paper, high = ID when energies are positive (a confident model); a
    negative energy flips the direction of the guidance for that sample or bank entry.
    Memory: the (rows x bank) float64 similarity block is chunked under ``memory_budget``
    bytes (None: :data:`ood_core.scores.MEMORY_BUDGET_BYTES`).
    """

    name = "nnguide"
    tasks = ("multiclass",)
    task_note = "its confidence is the softmax energy logsumexp_k f_k, which assumes one class per sample"

    def __init__(self, k: int = 10, memory_budget: int | None = None):
        self.k = _positive_int(k, "k", self.name, " (the number of nearest neighbours, e.g. 10)")
        self.memory_budget = check_memory_budget(memory_budget, self.name)

    def fit(self, train: ModelOutput, labels=None, model=None):
        z = train.features.detach().to("cpu")
        if z.shape[0] < self.k:
            raise OODCoreError(f"nnguide: k={self.k} but the bank holds only {z.shape[0]} training samples; "
                               f"pass k <= {z.shape[0]}")
        # the bank in float32 (half the memory of float64; the similarities are then float32 products
        # summed in float64 below), built in row chunks: no float64 copy of the whole bank is kept
        self.bank = torch.empty(z.shape, dtype=torch.float32)
        for sl in row_chunks(z.shape[0], 24 * z.shape[1], self.memory_budget):
            energy = torch.logsumexp(_f64(train.logits[sl]), dim=1)
            self.bank[sl] = (nn.functional.normalize(_f64(z[sl]), dim=1) * energy[:, None]).float()  # (M, d)
        self._fitted = True
        return self

    def compute(self, out):
        self._check_fitted()
        m, d = self.bank.shape

        def block(zb, lb):
            sims = nn.functional.normalize(_f64(zb), dim=1).float() @ self.bank.T  # (rows, M)
            return torch.logsumexp(_f64(lb), dim=1) * sims.topk(self.k, dim=1).values.double().mean(1)

        return rowwise(block, out.features.shape[0], 4 * m + 8 * (2 * d + out.logits.shape[1]), out.features, out.logits,
                       budget=self.memory_budget)


# --------------------------------------------------------------------------- fDBD
@register_score
class FDBD(_FittedScore):
    """Mean distance to the predicted class's decision boundaries over ||z - mu_train|| (high = ID).

    Liu, Qin, ICML 2024 (arXiv 2312.11536). For a linear head f_k = w_k^T z + b_k and the
    predicted class c = argmax_k f_k:

      D_k(z) = |(w_c - w_k)^T z + (b_c - b_k)| / ||w_c - w_k||_2   (distance from z to the c|k boundary),
      S(x)   = [ (1/(K-1)) sum_{k != c} D_k(z) ] / ||z - mu_train||_2.

    mu_train is the mean training feature (``center="train_mean"``, the paper's regulariser:
    ID and OOD are compared at equal deviation from the mean); ``center="origin"`` divides by
    ||z||_2 instead (the alternative OpenOOD sweeps). The paper averages over the K - 1
    boundaries; its code (and OpenOOD) sums them: the constant 1/(K-1) changes no ranking.
    Hyper-parameter free. Sign: ID features lie further from the boundaries, so high = ID.
    The logits are recomputed from the features with the head's W, b in float64 (cost
    "head"). A plain linear head with a bias is required (linear, mlp-bn); other heads have no
    hyperplane boundaries in z and are refused. A denominator below 1e-12 is clamped there.
    """

    name = "fdbd"
    tasks = ("multiclass",)
    task_note = "it measures distances to the decision boundaries of the one predicted (argmax) class; a " \
                "multi-label head has one independent boundary per label instead"
    cost = "head"
    CENTERS = ("train_mean", "origin")

    def __init__(self, center: str = "train_mean"):
        self.center = _choice(center, self.CENTERS, "center", self.name)

    def fit(self, train: ModelOutput, labels=None, model=None):
        w, b = _linear_head(model, self.name)
        k, d = w.shape
        if k < 2:
            raise OODCoreError("fdbd needs at least 2 classes (decision boundaries between them)")
        if train.features.shape[1] != d:
            raise OODCoreError(f"fdbd: features have {train.features.shape[1]} dimensions but the head weight has {d}")
        norms = torch.empty(k, k, dtype=torch.float64)  # ||w_c - w_k||, rows in chunks under the memory budget
        for rows in row_chunks(k, 8 * k * d):
            norms[rows] = (w[rows, None, :] - w[None, :, :]).norm(dim=2)
        off = ~torch.eye(k, dtype=torch.bool)
        if bool((norms[off] == 0).any()):
            i, j = (int(t) for t in torch.nonzero((norms == 0) & off)[0])
            raise OODCoreError(f"fdbd: classes {i} and {j} have identical head weights, so there is no boundary "
                               "between them")
        norms[~off] = 1.0  # the predicted class itself contributes |f_c - f_c| / 1 = 0
        self.weight, self.bias, self.pair_norms = w, b, norms
        z = train.features.detach().cpu()
        self.train_mean = mean_rows(z) if self.center == "train_mean" else torch.zeros(d, dtype=torch.float64)
        self._fitted = True
        return self

    def compute(self, out):
        self._check_fitted()
        k, d = self.weight.shape

        def block(zb):
            zb = _f64(zb)
            f = zb @ self.weight.T + self.bias  # (rows, K)
            top, c = f.max(dim=1)
            boundary = ((top[:, None] - f).abs() / self.pair_norms[c]).sum(1) / (k - 1)
            return boundary / (zb - self.train_mean).norm(dim=1).clamp_min(1e-12)

        return rowwise(block, out.features.shape[0], 8 * (2 * d + 3 * k), out.features)


# --------------------------------------------------------------------------- RMDS
@register_score
class RMDS(Mahalanobis):
    """Relative Mahalanobis distance: class Mahalanobis minus a background Gaussian's, negated min (high = ID).

    Ren, Fort, Liu, Roy, Padhy, Lakshminarayanan, 2021 (arXiv 2106.09022), on the penultimate
    features z:

      MD_k(z) = (z - mu_k)^T P (z - mu_k)      (class means, one shared covariance: ``mahalanobis``'s fit),
      MD_0(z) = (z - mu_0)^T P_0 (z - mu_0)    (mu_0, Sigma_0: mean and covariance (1/N) of all training features),
      S(x)    = -min_k (MD_k(z) - MD_0(z)).

    P, P_0 are hermitian pseudo-inverses (``ridge`` as for ``mahalanobis``, default 0, the
    ``EmpiricalCovariance`` precision of the reference code). Subtracting MD_0 removes the
    directions every class shares, which helps near-OOD. High = ID (small relative distance).
    Multi-label (labels (N, K) multi-hot): mu_k and P as in ``mahalanobis``'s multi-label fit;
    the background uses every training sample once. No softmax is involved.
    """

    name = "rmds"
    tasks = ("multiclass", "multilabel")

    def fit(self, train: ModelOutput, labels, model=None):
        super().fit(train, labels, model)
        z = train.features.detach().cpu()
        # one Gaussian over all features: the class scatter of a single class, in row chunks
        mean, cov = class_scatter(z, torch.zeros(z.shape[0], dtype=torch.long), 1, self.name)
        self.background_mean = mean[0]
        self.background_precision = gaussian_precision(cov, self.ridge)
        return self

    def compute(self, out):
        self._check_fitted()
        md_0 = squared_mahalanobis(out.features, self.background_mean[None], self.background_precision)  # (N, 1)
        return -(self.distances(out.features) - md_0).min(dim=1).values


# --------------------------------------------------------------------------- Residual
@register_score
class Residual(ResidualSpace):
    """Negative norm of the feature's residual: its part outside the principal subspace (high = ID).

    The "Residual" score of ViM, Wang, Li, Feng, Zhang, CVPR 2022 (arXiv 2203.10807), fitted
    exactly as ``vim`` (:class:`~ood_core.recipes.posthoc.ResidualSpace`):

      u    = -pinv(W) b,   R = eigenvectors of (1/N) sum_i (z_i - u)(z_i - u)^T beyond the top D,
      S(x) = -||R^T (z - u)||_2.

    ``dim`` = D (default :func:`~ood_core.recipes.posthoc.vim_dimension`: d/2 when d >= 2K,
    the ViM paper's and OpenOOD's ResNet choice); W, b from the linear head, or the
    least-squares affine fit of the logits for other heads (``self.source``), as ``vim``.
    It uses neither labels nor a softmax, so it also applies to multi-label models.
    """

    name = "residual"
    label = "residual"
    tasks = ("multiclass", "multilabel")

    def fit(self, train: ModelOutput, labels=None, model=None):
        self.fit_residual_space(train, model)
        return self

    def compute(self, out):
        return -self.residual_norm(out.features)


# --------------------------------------------------------------------------- OpenMax
LIBMR_TRANSLATION = 10000.0  # libMR's FitHigh shifts the tail so its smallest value sits here


def weibull_mle(x) -> tuple[float, float]:
    """Maximum-likelihood (shape, scale) of a two-parameter Weibull (location 0) fitted to ``x`` > 0.

    The shape c solves sum_i x_i^c ln x_i / sum_i x_i^c - 1/c - mean(ln x) = 0 (increasing in
    c, one root; found with Brent's method, the weights x_i^c computed as a softmax of c ln x
    so a large c cannot overflow); then scale = (mean x^c)^(1/c). What libMR's ``weibull_fit``
    (a port of MATLAB's ``wblfit``) and ``scipy.stats.weibull_min.fit(x, floc=0)`` estimate.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < 2 or not np.all(np.isfinite(x)) or not np.all(x > 0):
        raise OODCoreError(f"a Weibull fit needs at least 2 finite positive values, got {x.size}")
    y = np.log(x)
    ymax, ybar = y.max(), y.mean()
    if not ymax - y.min() > 0:
        raise OODCoreError("a Weibull fit needs values that are not all equal")

    def g(c):
        t = c * (y - ymax)
        w = np.exp(t - np_logsumexp(t))
        return float(w @ y - ybar - 1.0 / c)

    lo, hi = 1.0, 1.0
    while g(lo) > 0:  # g -> -inf as c -> 0
        lo /= 2.0
    while g(hi) < 0:  # g -> max(ln x) - mean(ln x) > 0 as c -> inf
        hi *= 2.0
        if hi > 1e300:
            raise OODCoreError("a Weibull fit needs values that are not all (nearly) equal")
    c = brentq(g, lo, hi, xtol=1e-14, rtol=1e-13, maxiter=1000)
    scale = math.exp(ymax + (np_logsumexp(c * (y - ymax)) - math.log(x.size)) / c)
    return float(c), float(scale)


def weibull_cdf(x: torch.Tensor, shape, scale) -> torch.Tensor:
    """1 - exp(-(x/scale)^shape) for x > 0, else 0 (elementwise; shape and scale broadcast)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    ratio = (x / torch.as_tensor(scale, dtype=torch.float64)).clamp_min(0)
    return -torch.expm1(-torch.exp(torch.as_tensor(shape, dtype=torch.float64) * torch.log(ratio)))


def fit_high(distances, tailsize: int) -> tuple[float, float, float]:
    """libMR's ``FitHigh`` on the ``tailsize`` largest ``distances``: (shape, scale, shift).

    The tail is translated so its smallest value becomes :data:`LIBMR_TRANSLATION` (shift =
    10000 - min(tail)) and a Weibull is fitted by maximum likelihood to it; the outlier
    probability of a distance d is then ``weibull_cdf(d + shift, shape, scale)`` (libMR's
    ``w_score``). All values of the tail are used when there are fewer than ``tailsize``.
    """
    d = np.sort(np.asarray(distances, dtype=np.float64).ravel())
    tail = d[-int(tailsize):]
    shift = LIBMR_TRANSLATION - tail.min()
    shape, scale = weibull_mle(tail + shift)
    return shape, scale, float(shift)


@register_score
class OpenMax(_FittedScore):
    """OpenMax: logits recalibrated by per-class Weibull models of distance to the class mean; 1 - P(unknown).

    Bendale, Boult, CVPR 2016 (arXiv 1511.06233), on the logits v = f(x) (the activation vector):

    fit, per class c: the mean activation vector MAV_c of the correctly classified training
    samples of c (all samples of c if fewer than 2 are correct; ``self.fallback_classes``);
    a Weibull fitted, as libMR's FitHigh does (:func:`fit_high`), to the ``tailsize`` largest
    distances of those samples to MAV_c.
    score: with the classes ranked by v (top first), rank r = 1..alpha gets the weight
    omega = (alpha + 1 - r)/alpha (1, ..., 1/alpha; 0 beyond alpha) and

      w_c      = WeibullCDF_c(dist(v, MAV_c))          (probability that v is an outlier of c),
      v_hat_c  = v_c (1 - omega_c w_c),   v_hat_0 = sum_c v_c omega_c w_c   ("unknown" logit),
      P        = softmax(v_hat_0, v_hat_1, ..., v_hat_K),
      S(x)     = 1 - P_0 = sigmoid(logsumexp_c v_hat_c - v_hat_0)   (probability of a known class).

    High = ID: far from every class mean, the top classes' logits move to the unknown logit.
    Defaults (OpenOOD's OpenMax postprocessor): ``tailsize`` = 20, ``alpha`` = 3 (None: min(3, K);
    an explicit alpha above K is refused), ``distance`` = "euclidean" (||v - MAV||, as OpenOOD).
    "eucos" is the original OSDN code's eucos_weight * ||v - MAV|| + (1 - cos(v, MAV)) with
    eucos_weight = 1/200 (a zero vector counts as cosine 0). The rank weights follow the authors'
    code (OSDN), which OpenOOD and pytorch-ood copy.
    Limits: S saturates at exactly 1.0 in float64 once the known-vs-unknown logit margin
    exceeds ~37, so very confident samples tie; with negative logits, revising v_c makes it
    larger (a known quirk of the method, kept as published).
    """

    name = "openmax"
    tasks = ("multiclass",)
    task_note = "it revises the top-alpha logits of one softmax and adds an 'unknown' class to it; a multi-label " \
                "model has independent sigmoids, not one softmax over exclusive classes"
    DISTANCES = ("euclidean", "eucos")

    def __init__(self, tailsize: int = 20, alpha: int | None = None, distance: str = "euclidean",
                 eucos_weight: float = 1.0 / 200):
        self.tailsize = _positive_int(tailsize, "tailsize", self.name, " (the number of largest training distances "
                                                                        "the Weibull is fitted to, e.g. 20)")
        self.alpha = None if alpha is None else _positive_int(alpha, "alpha", self.name,
                                                              " (the number of top classes revised, e.g. 3) or None")
        self.distance = _choice(distance, self.DISTANCES, "distance", self.name)
        w = float(eucos_weight) if isinstance(eucos_weight, (int, float, np.floating)) else float("nan")
        if not (w > 0 and math.isfinite(w)):
            raise OODCoreError(f"openmax eucos_weight must be a positive number (default 1/200), got {eucos_weight!r}")
        self.eucos_weight = w

    def _distances(self, v: torch.Tensor, mavs: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, C) distances of each row of v (float64) to every MAV (or to the C rows of ``mavs``)."""
        mavs = self.mavs if mavs is None else mavs
        eucl = (v[:, None, :] - mavs[None]).norm(dim=2)
        if self.distance == "euclidean":
            return eucl
        tiny = torch.finfo(torch.float64).tiny
        cos = (v @ mavs.T) / (v.norm(dim=1, keepdim=True) * mavs.norm(dim=1)[None]).clamp_min(tiny)
        return self.eucos_weight * eucl + (1.0 - cos)

    def fit(self, train: ModelOutput, labels, model=None):
        v = torch.as_tensor(train.logits).detach().cpu()  # as given; class rows read in float64 chunks
        n, k = v.shape
        alpha = min(3, k) if self.alpha is None else self.alpha
        if alpha > k:
            raise OODCoreError(f"openmax alpha={alpha} but the model has only {k} classes; pass alpha <= {k} (or None)")
        labels = _class_labels(labels, n, k, self.name)
        members, self.fallback_classes = correct_members(labels, v.argmax(dim=1), k, 2, self.name)
        self.mavs = torch.stack([mean_rows(v, idx) for idx in members])  # (K, K)
        params = []
        for c, idx in enumerate(members):
            dist = torch.cat([self._distances(_f64(v[idx[sl]]), self.mavs[c:c + 1])[:, 0]
                              for sl in row_chunks(idx.numel(), 8 * 3 * k)])
            try:
                params.append(fit_high(dist.numpy(), self.tailsize))
            except OODCoreError as e:
                raise OODCoreError(f"openmax: cannot fit the Weibull model of class {c}: {e}") from None
        self.shape, self.scale, self.shift = (torch.tensor(p, dtype=torch.float64) for p in zip(*params))
        self.alpha_used = alpha
        self.rank_weights = torch.tensor([(alpha - r) / alpha for r in range(alpha)], dtype=torch.float64)
        self._fitted = True
        return self

    def compute(self, out):
        self._check_fitted()
        k, alpha = self.mavs.shape[0], self.alpha_used

        def block(vb):
            v = _f64(vb)
            w = weibull_cdf(self._distances(v) + self.shift, self.shape, self.scale)  # (rows, K)
            top = torch.argsort(v, dim=1, descending=True, stable=True)[:, :alpha]
            omega = torch.zeros_like(v).scatter_(1, top, self.rank_weights.expand(v.shape[0], alpha).contiguous())
            revised = v * (1.0 - omega * w)
            unknown = (v * omega * w).sum(1)
            return torch.sigmoid(torch.logsumexp(revised, dim=1) - unknown)

        return rowwise(block, out.logits.shape[0], 8 * (2 * k * k + 8 * k), out.logits)
