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

Statistics are computed in float64 and stored on the CPU.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import OODCoreError
from ..models import LinearHead, ModelOutput
from ..scores import Score, register_score


def _f64(t) -> torch.Tensor:
    return torch.as_tensor(t).detach().to("cpu", torch.float64)


class _FittedScore(Score):
    requires_fit = True
    _fitted = False

    def _check_fitted(self):
        if not self._fitted:
            raise OODCoreError(f"score {self.name!r} needs training statistics: call fit(train_outputs, labels, model) "
                               "first (the evaluator does this)")


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
    """

    name = "mahalanobis"
    tasks = ("multiclass", "multilabel")

    def __init__(self, ridge: float = 0.0):
        ridge = float(ridge)
        if not ridge >= 0:
            raise OODCoreError(f"mahalanobis ridge must be >= 0, got {ridge}")
        self.ridge = ridge

    def fit(self, train: ModelOutput, labels, model=None):
        z = _f64(train.features)
        labels = torch.as_tensor(labels)
        k = train.logits.shape[1]
        if labels.dim() == 1:
            onehot = torch.zeros(z.shape[0], k, dtype=torch.float64)
            onehot[torch.arange(z.shape[0]), labels.long()] = 1.0
        else:
            onehot = (labels > 0.5).to(torch.float64)
        counts = onehot.sum(0)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise OODCoreError(f"mahalanobis: no training sample of class(es) {missing}; cannot estimate their means")
        self.means = (onehot.T @ z) / counts[:, None]  # (K, d)
        d = z.shape[1]
        cov = torch.zeros(d, d, dtype=torch.float64)
        for c in range(k):  # pooled over (sample, label) pairs; K is small
            diff = z[onehot[:, c] > 0] - self.means[c]
            cov += diff.T @ diff
        cov /= counts.sum()
        if self.ridge > 0:
            cov = cov + self.ridge * (torch.trace(cov) / d) * torch.eye(d, dtype=torch.float64)
        self.precision = torch.linalg.pinv(cov, hermitian=True)
        self._fitted = True
        return self

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(N, K) squared Mahalanobis distances (z - mu_c)^T P (z - mu_c)."""
        self._check_fitted()
        z = _f64(z)
        zp = z @ self.precision
        mp = self.means @ self.precision
        d2 = (zp * z).sum(1, keepdim=True) - 2 * zp @ self.means.T + (mp * self.means).sum(1)[None]
        return d2.clamp_min(0)

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
    """

    name = "knn"
    tasks = ("multiclass", "multilabel")

    def __init__(self, k: int = 10, chunk_size: int = 4096):
        if int(k) != k or int(k) < 1:
            raise OODCoreError(f"knn k must be a positive integer, got {k}")
        self.k = int(k)
        self.chunk_size = int(chunk_size)

    def fit(self, train: ModelOutput, labels=None, model=None):
        z = _f64(train.features)
        if z.shape[0] < self.k:
            raise OODCoreError(f"knn: k={self.k} but only {z.shape[0]} training samples; lower k")
        self.bank = nn.functional.normalize(z, dim=1).float()
        self._fitted = True
        return self

    def compute(self, out):
        # On the unit sphere ||a - b||^2 = 2 - 2 a.b, so the k-th nearest neighbour is the k-th
        # largest cosine: one float32 matrix product + topk, about 3x faster than cdist in
        # float64. Cosines carry float32 rounding (~1e-7), i.e. distance errors ~1e-7 / d,
        # at most ~5e-4 for near-duplicates (d ~ 0); rankings of distinct points are unaffected.
        self._check_fitted()
        z = nn.functional.normalize(_f64(out.features), dim=1).float()
        res = []
        for i in range(0, z.shape[0], self.chunk_size):
            cos_k = (z[i:i + self.chunk_size] @ self.bank.T).topk(self.k, dim=1).values[:, -1]
            res.append((2.0 - 2.0 * cos_k.double()).clamp_min(0).sqrt())
        return -torch.cat(res)


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


@register_score
class ViM(_FittedScore):
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

    def __init__(self, dim: int | None = None):
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

    def fit(self, train: ModelOutput, labels=None, model=None):
        z = train.features.double().cpu().numpy()
        logits = train.logits.double().cpu().numpy()
        n, d = z.shape
        k = logits.shape[1]
        dim = vim_dimension(d, k) if self.dim is None else self.dim
        if not 0 < dim < d:
            raise OODCoreError(f"ViM principal dimension must be in 1..{d - 1} for d={d}; got {dim}")
        w, b, self.source = self._affine(train, model)
        self.u = -np.linalg.pinv(w) @ b
        x = z - self.u
        evals, evecs = np.linalg.eigh(x.T @ x / n)
        order = np.argsort(evals)[::-1]
        self.residual_basis = np.ascontiguousarray(evecs[:, order[dim:]])  # (d, d - D)
        self.principal_dim = dim
        r = np.linalg.norm(x @ self.residual_basis, axis=1)
        if not r.mean() > 1e-12:
            raise OODCoreError(f"ViM: the training features span at most {dim} dimensions, so the residual is 0; "
                               "pass a smaller dim")
        self.alpha = float(abs(logits.max(axis=1).mean()) / r.mean())
        self._fitted = True
        return self

    def residual_norm(self, z: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        x = _f64(z) - torch.from_numpy(self.u)
        return (x @ torch.from_numpy(self.residual_basis)).norm(dim=1)

    def compute(self, out):
        return torch.logsumexp(_f64(out.logits), dim=1) - self.alpha * self.residual_norm(out.features)
