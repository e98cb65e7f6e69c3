"""Activation and weight shaping: post-hoc scores that edit the features (or the head's weights)
and pass the result through the classifier head again, then take the energy (high = ID).

* ``react``: Sun, Guo, Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
  NeurIPS 2021 (arXiv 2111.12797).
* ``ash_p``, ``ash_b``, ``ash_s``: Djurisic, Bozanic, Ashok, Liu, "Extremely Simple
  Activation Shaping for Out-of-Distribution Detection", ICLR 2023 (arXiv 2209.09858).
* ``dice``: Sun, Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection",
  ECCV 2022 (arXiv 2111.09805).
* ``scale``: Xu, Chen, Franchi, Yao, "Scaling for Training Time and Post-hoc
  Out-of-distribution Detection Enhancement", ICLR 2024 (arXiv 2310.00227).

All of them work on the penultimate features z = ``ModelOutput.features`` (the input of
``model.head``) and recompute logits W z' + b with the head's weight W (K, d) and bias b, so
``fit`` needs the model and its head must be a plain affine layer (``nn.Linear`` with the
stock forward: the ``linear`` and ``mlp-bn`` heads here). Other heads (cosine, l2norm, centers)
are refused with an :class:`~ood_core.errors.OODCoreError`: their logits are not W z + b, so
"the head applied to shaped features" would be a different method. The head is copied at fit
time to the CPU in float64, and every score is computed in float64.

ASH and SCALE are applied per sample to the (already pooled) penultimate vector, as OpenOOD
does for its ResNets (the original ASH code also shapes after the global average pool).

The energy is logsumexp_k of the recomputed logits (temperature 1, as in all four papers).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import OODCoreError
from ..models import ModelOutput
from ..scores import register_score
from .posthoc import _f64, _FittedScore, mean_rows, percentile_of_entries, rowwise

_SOFTMAX_NOTE = ("its score is the energy logsumexp_k of a softmax classifier over mutually exclusive classes; "
                 "a multi-label head scores every label with its own sigmoid, so there is no such energy to reshape")


def _check_percentile(value, score: str, *, allow_zero: bool, allow_hundred: bool) -> float:
    """``value`` as a float percentile, or OODCoreError saying which range to pass."""
    lo = "0 <=" if allow_zero else "0 <"
    hi = "<= 100" if allow_hundred else "< 100"
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise OODCoreError(f"{score} percentile must be a number with {lo} p {hi}, got {value!r}") from None
    ok = (p >= 0 if allow_zero else p > 0) and (p <= 100 if allow_hundred else p < 100)
    if not (ok and np.isfinite(p)):
        raise OODCoreError(f"{score} percentile must be a number with {lo} p {hi} (a percentage, e.g. 90), "
                           f"got {value!r}")
    return p


def linear_head(model: nn.Module | None, score: str, train: ModelOutput | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of ``model.head`` as CPU float64 tensors, (K, d) and (K,), for a plain linear head.

    Raises OODCoreError when there is no model, when the head is not an ``nn.Linear`` with the
    stock forward (logits = W z + b), or, given the training outputs, when their shapes do not
    fit the head or their logits are not head(features) (then the cached features are not
    the head's input and re-applying the head to edited features would be meaningless).
    """
    if model is None:
        raise OODCoreError(f"score {score!r} re-applies the classifier head to edited features: pass the model, "
                           "fit(train_outputs, labels, model) (the evaluator does)")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        kind = type(head).__name__ if head is not None else "missing"
        raise OODCoreError(f"score {score!r} needs a linear classifier head (logits = W z + b), but this model's "
                           f"head is {kind}; use a score that reads the logits (energy, msp, maxlogit, ...) for "
                           "this model, or train it with head='linear' or 'mlp-bn'")
    w = head.weight.detach().to("cpu", torch.float64).clone()
    b = (head.bias.detach().to("cpu", torch.float64).clone() if head.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    if train is not None:
        n, d = train.features.shape
        if d != w.shape[1] or train.logits.shape[1] != w.shape[0]:
            raise OODCoreError(f"score {score!r}: the training outputs have {d} features and {train.logits.shape[1]} "
                               f"logits but the head maps {w.shape[1]} features to {w.shape[0]} logits")
        rows = slice(0, min(n, 256))
        z = _f64(train.features[rows])
        again = z @ w.T + b
        scale = z.abs() @ w.abs().T + b.abs()  # size of the terms summed: float32 rounding is relative to it
        if bool(((again - _f64(train.logits[rows])).abs() > 1e-3 * scale + 1e-6).any()):
            raise OODCoreError(f"score {score!r}: the training logits are not model.head(features); it needs "
                               "outputs whose features are the input of the model's final linear layer")
    return w, b


class _HeadEnergyScore(_FittedScore):
    """Base: energy of W shape(z) + b, with W, b copied from the model's linear head in ``fit``."""

    tasks = ("multiclass",)
    task_note = _SOFTMAX_NOTE
    cost = "head"

    def fit(self, train: ModelOutput, labels=None, model=None):
        self.weight, self.bias = linear_head(model, self.name, train)
        self._fit_features(torch.as_tensor(train.features).detach().cpu())
        self._fitted = True
        return self

    def _fit_features(self, z: torch.Tensor) -> None:
        """Training statistics from z, the training features as given (float32, not copied to
        float64: a fit reads them in row chunks under the memory budget); default: none."""

    def shape(self, z: torch.Tensor) -> torch.Tensor:
        """The edited features (float64, same shape as ``z``)."""
        return z

    def head_weight(self) -> torch.Tensor:
        return self.weight

    def compute(self, out):
        self._check_fitted()
        n, d = out.features.shape
        if d != self.weight.shape[1]:
            raise OODCoreError(f"score {self.name!r}: the features have {d} dimensions but the head fitted on takes "
                               f"{self.weight.shape[1]}")
        w, k = self.head_weight(), self.weight.shape[0]
        # a few float64 copies of the rows and their logits per row
        return rowwise(lambda zb: torch.logsumexp(self.shape(_f64(zb)) @ w.T + self.bias, dim=1), n,
                       8 * (4 * d + 2 * k), out.features)


@register_score
class ReAct(_HeadEnergyScore):
    """ReAct: energy of the head applied to features clipped at a training percentile (high = ID).

    Sun, Guo, Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021
    (arXiv 2111.12797):

      c    = the p-th percentile of all training activations (every entry of every training
             feature vector, pooled; linear interpolation as numpy.percentile),
      z'   = min(z, c)   (elementwise; only large activations are cut),
      S(x) = logsumexp_k (W z' + b)_k.

    ``percentile`` p (default 90, in percent, 0 < p <= 100): the paper's default (its ImageNet
    and CIFAR results use p = 90) and OpenOOD's ``react.yml``. The paper estimates c on ID
    data; here it comes from the training split's cached features (OpenOOD uses its ID
    validation split). Needs a linear head (see the module docstring).
    """

    name = "react"

    def __init__(self, percentile: float = 90.0):
        self.percentile = _check_percentile(percentile, "react", allow_zero=False, allow_hundred=True)

    def _fit_features(self, z):
        self.threshold = percentile_of_entries(z, self.percentile)

    def shape(self, z):
        return z.clamp(max=self.threshold)


def n_kept(d: int, percentile: float) -> int:
    """How many of d activations ASH and SCALE keep at ``percentile``: d - round(d * p / 100)
    (as the reference code; round half to even), at least 1."""
    return max(1, d - int(np.round(d * percentile / 100.0)))


def _top_mask(z: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of each row (ties broken by torch.topk)."""
    idx = z.topk(k, dim=1).indices
    return torch.zeros_like(z, dtype=torch.bool).scatter_(1, idx, True)


def _mass_ratio(z: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """r = s1 / s2 per row: the sum of all activations over the sum of the kept ones, both over
    positive parts; r = 1 for a row with no positive activation.

    For non-negative (post-ReLU) features this is exactly the ratio of ASH-S and SCALE. With
    negative entries the papers' ratio is undefined (s2 can be 0 or change sign, and exp(s1/s2)
    overflows); positive parts keep 1 <= r <= d/k. Every backbone here ends in a ReLU.
    """
    s1 = z.clamp_min(0).sum(dim=1)
    s2 = kept.clamp_min(0).sum(dim=1)
    return torch.where(s2 > 0, s1 / torch.where(s2 > 0, s2, torch.ones_like(s2)), torch.ones_like(s1))


class _ASH(_HeadEnergyScore):
    """Base of the ASH variants: keeps the top (100 - p)% activations of each sample."""

    def __init__(self, percentile: float = 90.0):
        self.percentile = _check_percentile(percentile, self.name, allow_zero=True, allow_hundred=False)

    def _split(self, z):
        k = n_kept(z.shape[1], self.percentile)
        mask = _top_mask(z, k)
        return k, mask, torch.where(mask, z, torch.zeros_like(z))


_ASH_DOC_TAIL = """
    Djurisic, Bozanic, Ashok, Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
    Detection", ICLR 2023 (arXiv 2209.09858). Per sample, on the penultimate vector z (d
    entries): keep the k = d - round(d p / 100) largest entries (at least one), prune the rest,
    shape the kept ones, then S(x) = logsumexp_k (W z' + b)_k. No training statistics are used;
    ``fit`` only copies the linear head.

    ``percentile`` p (default 90, in percent, 0 <= p < 100): OpenOOD's ``ash.yml`` (90, which
    OpenOOD applies as ASH-B) and the configs of the authors' code (``ash_s@90``); the abstract's
    "e.g. 90%". The paper tunes p per variant and network.
    """


@register_score
class ASHP(_ASH):
    """ASH-P: energy of the head on the top (100-p)% activations of each sample, rest zeroed (high = ID).

      z'_j = z_j if z_j is among the k largest entries of z, else 0.
    """

    name = "ash_p"

    def shape(self, z):
        return self._split(z)[2]


@register_score
class ASHB(_ASH):
    """ASH-B: energy of the head on a binarised top-(100-p)% mask of each sample (high = ID).

      s1 = sum_j z_j (all entries, before pruning),
      z'_j = s1 / k if z_j is among the k largest entries of z, else 0
      (the kept entries share the sample's total activation equally).
    """

    name = "ash_b"

    def shape(self, z):
        k, mask, _ = self._split(z)
        fill = (z.sum(dim=1, keepdim=True) / k).expand_as(z)
        return torch.where(mask, fill, torch.zeros_like(z))


@register_score
class ASHS(_ASH):
    """ASH-S: energy of the head on the top-(100-p)% activations, rescaled by exp(s1/s2) (high = ID).

      s1 = sum_j z_j (before pruning), s2 = sum of the k kept entries (after pruning),
      z'_j = z_j * exp(s1 / s2) if z_j is among the k largest entries of z, else 0.

    s1 and s2 are sums of positive parts (identical for post-ReLU features; see
    :func:`_mass_ratio` for why, and r = 1 when no entry is positive).
    """

    name = "ash_s"

    def shape(self, z):
        _, _, kept = self._split(z)
        return kept * _mass_ratio(z, kept).exp()[:, None]


for _cls in (ASHP, ASHB, ASHS):
    _cls.__doc__ += _ASH_DOC_TAIL


@register_score
class SCALE(_HeadEnergyScore):
    """SCALE: energy of the head on all features rescaled by exp(s1/s2), ASH-S without pruning (high = ID).

    Xu, Chen, Franchi, Yao, "Scaling for Training Time and Post-hoc Out-of-distribution Detection
    Enhancement", ICLR 2024 (arXiv 2310.00227). Per sample, on the penultimate vector z:

      k    = d - round(d p / 100)     (at least one),
      s1   = sum_j z_j,  s2 = sum of the k largest entries of z,
      z'   = z * exp(s1 / s2)         (every entry kept: only the scale changes),
      S(x) = logsumexp_k (W z' + b)_k.

    The paper shows that ASH's benefit comes from this per-sample scale and that pruning hurts,
    so SCALE keeps the full vector. s1 and s2 are sums of positive parts (identical for
    post-ReLU features; see :func:`_mass_ratio`).

    ``percentile`` p (default 85, in percent, 0 <= p < 100): the authors' config
    (``configs/postprocessors/scale.yml`` of their code, also OpenOOD's ``scale.yml``).
    No training statistics; ``fit`` only copies the linear head.
    """

    name = "scale"

    def __init__(self, percentile: float = 85.0):
        self.percentile = _check_percentile(percentile, "scale", allow_zero=True, allow_hundred=False)

    def shape(self, z):
        k = n_kept(z.shape[1], self.percentile)
        top = z.topk(k, dim=1).values
        return z * _mass_ratio(z, top).exp()[:, None]


@register_score
class DICE(_HeadEnergyScore):
    """DICE: energy of a head whose weights with small training contribution are zeroed (high = ID).

    Sun, Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022
    (arXiv 2111.09805):

      m      = mean of the training features (d,),
      V      = W * m[None, :]               (K, d: the average contribution of unit j to logit k),
      t      = the p-th percentile of the K*d entries of V (numpy.percentile),
      M      = [V > t]                      (keeps the top (100 - p)% contributions),
      S(x)   = logsumexp_k ((W * M) z + b)_k.

    ``percentile`` p (default 90, in percent, 0 <= p < 100): the sparsity p of the paper, 90 in
    the authors' CIFAR runs (``demo-cifar.sh``, ``RouteDICE(p=90)``) and OpenOOD's ``dice.yml``.
    m is the mean over the training split, as the authors' precomputation and OpenOOD do.
    """

    name = "dice"

    def __init__(self, percentile: float = 90.0):
        self.percentile = _check_percentile(percentile, "dice", allow_zero=True, allow_hundred=False)

    def _fit_features(self, z):
        self.mean_features = mean_rows(z)
        contribution = self.weight * self.mean_features[None, :]
        self.threshold = float(np.percentile(contribution.numpy(), self.percentile))
        self.mask = contribution > self.threshold
        self.masked_weight = torch.where(self.mask, self.weight, torch.zeros_like(self.weight))

    def head_weight(self):
        return self.masked_weight
