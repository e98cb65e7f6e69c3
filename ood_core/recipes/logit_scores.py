"""Scores of the softmax posterior and of the head's gradient, on cached outputs (high = ID).

* ``gen``: Liu, Lochman, Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
  Detection", CVPR 2023.
* ``klm``: KL matching of Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt, Song,
  "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022 (arXiv 1911.11132).
* ``gradnorm``: Huang, Geng, Li, "On the Importance of Gradients for Detecting Distributional
  Shifts in the Wild", NeurIPS 2021 (arXiv 2110.00218).

All three read only the cached logits (and, for GradNorm, the features); they are computed
in float64.
"""
from __future__ import annotations

import math

import torch

from ..errors import OODCoreError
from ..models import ModelOutput
from ..scores import Score, check_positive, register_score, row_chunks
from .posthoc import _f64, _FittedScore


@register_score
class GEN(Score):
    """GEN: minus the generalized entropy of the M largest softmax probabilities (high = ID).

    Liu, Lochman, Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
    Detection", CVPR 2023. With p = softmax(f(x)) and p_(1) >= p_(2) >= ... its sorted entries,

      S(x) = - sum_{j=1..min(M, K)} p_(j)^gamma (1 - p_(j))^gamma.

    A confident (peaked) posterior gives terms near 0, so a score near 0 (the maximum); a flat
    one gives large terms and a very negative score.

    ``gamma`` (default 0.1) and ``M`` (default 100, capped at K): the paper's recommended
    values and OpenOOD's ``gen.yml`` (gamma = 0.1, M = 100). With K <= 100 classes, as in every
    dataset here, M = K: all probabilities count.

    Computed in log space: p^gamma (1 - p)^gamma = exp(gamma (log p + log(1 - p))), with
    log(1 - p) = log1p(-p) for p <= 1/2 and, for the largest p above 1/2, the log of the sum of
    the other probabilities (a logsumexp). So 1 - p stays exact when p rounds to 1 (e.g.
    logits [40, 0]), where the direct formula would lose the top term.
    """

    name = "gen"
    tasks = ("multiclass",)
    task_note = ("the generalized entropy of one softmax distribution over mutually exclusive classes; a "
                 "multi-label head gives independent per-label sigmoids, which are not one distribution")

    def __init__(self, gamma: float = 0.1, M: int = 100):
        self.gamma = check_positive(gamma, "gen gamma")
        try:
            m = int(M)
        except (TypeError, ValueError):
            m = 0
        if isinstance(M, bool) or m != M or m < 1:
            raise OODCoreError(f"gen M must be a positive integer (the number of top probabilities, e.g. 100), "
                               f"got {M!r}")
        self.M = m

    def compute(self, out):
        logp = torch.log_softmax(_f64(out.logits), dim=1)
        k = logp.shape[1]
        top = logp.topk(min(self.M, k), dim=1).values  # log p of the largest probabilities, descending
        log1m = torch.log1p(-top.exp())
        if k > 1:
            # log(1 - p_max) = log sum_{j != argmax} p_j: exact even when p_max rounds to 1
            others = logp.scatter(1, logp.argmax(dim=1, keepdim=True), -math.inf)
            log_rest = torch.logsumexp(others, dim=1)
            log1m[:, 0] = torch.where(top[:, 0] > math.log(0.5), log_rest, log1m[:, 0])
        return -torch.exp(self.gamma * (top + log1m)).sum(dim=1)


@register_score
class KLMatching(_FittedScore):
    """KL matching: minus the smallest KL divergence from the softmax to a class template (high = ID).

    Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt, Song, "Scaling
    Out-of-Distribution Detection for Real-World Settings", ICML 2022 (arXiv 1911.11132).
    With p(x) = softmax(f(x)):

      d_k  = mean of p(x') over the training samples x' that the model *predicts* as k
             (argmax; labels are not used, as in the paper, OpenOOD and pytorch-ood),
      S(x) = - min_k KL(p(x) || d_k) = - min_k sum_j p_j(x) log(p_j(x) / d_kj).

    The direction is KL(posterior || template), as in the paper and OpenOOD's
    ``kl_matching_postprocessor``. Classes that no training sample is predicted as have no
    template and are skipped (pytorch-ood does the same). Template entries are floored at the
    smallest normal float64 so that a probability that underflowed in training stays finite.

    The paper and OpenOOD build the templates on held-out ID (validation) data; the evaluator
    here passes the training split, whose posteriors are more confident. No hyper-parameters.
    """

    name = "klm"
    tasks = ("multiclass",)
    task_note = ("its templates are mean softmax posteriors over exclusive classes, indexed by the single "
                 "predicted class; a multi-label sample has several labels and independent sigmoids")

    def fit(self, train, labels=None, model=None):
        logits = torch.as_tensor(train.logits).detach().cpu()
        n, k = logits.shape
        sums = torch.zeros(k, k, dtype=torch.float64)  # row c: the summed posteriors of the samples predicted c
        counts = torch.zeros(k, dtype=torch.int64)
        # in float64 row chunks (per row: the copy, the softmax and its temporaries), never all logits
        for rows in row_chunks(n, 8 * 4 * k):
            p = torch.softmax(_f64(logits[rows]), dim=1)
            pred = p.argmax(dim=1)
            sums.index_add_(0, pred, p)
            counts += torch.bincount(pred, minlength=k)
        self.classes = torch.nonzero(counts).ravel()
        templates = sums[self.classes] / counts[self.classes, None]
        self.templates = templates
        self.log_templates = templates.clamp_min(torch.finfo(torch.float64).tiny).log()
        self.num_classes = k
        self._fitted = True
        return self

    def divergences(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) KL(p(x) || d_c) for the C fitted templates."""
        self._check_fitted()
        if logits.shape[1] != self.num_classes:
            raise OODCoreError(f"score 'klm' was fitted on {self.num_classes} classes but got {logits.shape[1]} logits")
        logp = torch.log_softmax(_f64(logits), dim=1)
        p = logp.exp()
        neg_entropy = (p * logp).sum(dim=1, keepdim=True)  # p = 0 where log p is very negative: 0, not NaN
        return (neg_entropy - p @ self.log_templates.T).clamp_min(0)

    def compute(self, out):
        return -self.divergences(out.logits).min(dim=1).values


@register_score
class GradNorm(Score):
    """GradNorm: L1 norm of the head-weight gradient of KL(uniform || softmax(f(x)/T)) (high = ID).

    Huang, Geng, Li, "On the Importance of Gradients for Detecting Distributional Shifts in the
    Wild", NeurIPS 2021 (arXiv 2110.00218). For a linear head f(x) = W z + b, with
    u = (1/K, ..., 1/K) and p = softmax(f(x)/T):

      KL(u || p) = -log K - (1/K) sum_k log p_k,
      d KL / d f_k = (p_k - 1/K) / T,   d KL / d W_kj = (p_k - 1/K) z_j / T,
      S(x) = ||d KL / d W||_1 = (1/T) (sum_k |p_k - 1/K|) (sum_j |z_j|),

    the product form of the paper (an output-space term U times a feature-space term V). It is
    computed from the cached features and logits, with no backward pass. In-distribution
    inputs give larger gradients (a peaked softmax far from uniform), so high = ID.

    ``temperature`` T (default 1): the paper's and OpenOOD's setting. The authors' code (and
    OpenOOD) back-propagate sum_k -log p_k, i.e. an all-ones target instead of u, which is K
    times this value: the same ranking for a given model. The gradient is taken with respect
    to the head's weight only (not its bias), as in the paper.

    The closed form assumes logits = W features + b (the ``linear`` and ``mlp-bn`` heads), so
    :meth:`fit` checks the model's head and refuses a cosine, l2norm or centres head (for which
    the formula would not be the gradient of that head's weight).
    """

    name = "gradnorm"
    tasks = ("multiclass",)
    task_note = ("the gradient of the KL divergence between the uniform distribution and a softmax over "
                 "exclusive classes; a multi-label head is trained with independent per-label sigmoids")

    requires_fit = True  # only to check that the head is linear: nothing is learned

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_positive(temperature, "gradnorm temperature")
        self._fitted = False

    def fit(self, train: ModelOutput, labels=None, model=None):
        from .shaping import linear_head

        linear_head(model, self.name, train)
        self._fitted = True
        return self

    def compute(self, out):
        if not self._fitted:
            raise OODCoreError("score 'gradnorm' checks the model's head first: call fit(train_outputs, labels, model) "
                               "(the evaluator does)")
        t = self.temperature
        p = torch.softmax(_f64(out.logits) / t, dim=1)
        output_term = (p - 1.0 / p.shape[1]).abs().sum(dim=1)
        feature_term = _f64(out.features).abs().sum(dim=1)
        return output_term * feature_term / t
