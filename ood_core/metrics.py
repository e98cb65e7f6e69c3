"""OOD detection metrics from per-sample scores.

Convention (see ``../shared/docs/methods.md``): a score is **high for in-distribution
(ID)** samples. Every function takes ``id_scores`` and ``ood_scores`` as 1-D arrays.

* ``auroc``: probability that a random ID sample scores above a random OOD sample,
  ties counted as 1/2 (Mann-Whitney U / (n_id * n_ood)).
* ``aupr_in``: average precision with ID as the positive class.
* ``aupr_out``: average precision with OOD as the positive class (scores negated).
* ``fpr_at_95_tpr``: FPR on OOD at the threshold that keeps 95% of ID. The threshold t is
  the largest value with ``mean(id >= t) >= 0.95``; the result is ``mean(ood >= t)``.
  This is the convention of the ODIN, Energy, JointEnergy and Separation papers
  (OpenOOD reports the opposite positive class).
* ``detection_error``: min over thresholds of ``0.5 * (1 - TPR) + 0.5 * FPR``.

Average precision is the step-wise sum ``sum_n (R_n - R_{n-1}) P_n`` over distinct
thresholds, the same definition as scikit-learn's ``average_precision_score``; the tests
check all of them against scikit-learn and a brute-force threshold sweep.
"""
from __future__ import annotations

import numpy as np

from .errors import DataError

def _check_scores(scores, what: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if arr.size == 0:
        raise DataError(f"{what} is empty; pass at least one score")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataError(
            f"{what} contains {int(bad.sum())} NaN/Inf value(s) (first at index {int(np.argmax(bad))}); "
            "scores must be finite"
        )
    return arr


def _pair(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    return _check_scores(id_scores, "id_scores"), _check_scores(ood_scores, "ood_scores")


def _rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # boundaries of runs of equal values
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], sorted_vals.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive: P(s_id > s_ood) + 0.5 P(s_id = s_ood)."""
    s_id, s_ood = _pair(id_scores, ood_scores)
    ranks = _rank_average(np.concatenate([s_id, s_ood]))
    n_id, n_ood = s_id.size, s_ood.size
    u = ranks[:n_id].sum() - n_id * (n_id + 1) / 2.0
    return float(u / (n_id * n_ood))


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step-wise average precision of `pos` (positive class, high score) vs `neg`."""
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # the last index of each run of equal scores is one threshold
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[last]
    predicted = last + 1.0
    precision = tp / predicted
    recall = tp / pos.size
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class (higher score = more ID)."""
    s_id, s_ood = _pair(id_scores, ood_scores)
    return _average_precision(s_id, s_ood)


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class (the score is negated)."""
    s_id, s_ood = _pair(id_scores, ood_scores)
    return _average_precision(-s_ood, -s_id)


def threshold_at_tpr(id_scores, tpr: float = 0.95) -> float:
    """Largest threshold t with ``mean(id_scores >= t) >= tpr``."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s_id = np.sort(_check_scores(id_scores, "id_scores"))[::-1]  # descending
    # keeping the k highest ID scores (and their ties) gives TPR >= k/n
    k = int(np.ceil(tpr * s_id.size - 1e-9))
    return float(s_id[max(k, 1) - 1])


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """FPR on OOD at the threshold keeping `tpr` of ID: ``mean(ood >= t)``."""
    s_id, s_ood = _pair(id_scores, ood_scores)
    t = threshold_at_tpr(s_id, tpr)
    return float(np.mean(s_ood >= t))


def fpr_at_95_tpr(id_scores, ood_scores) -> float:
    """FPR on OOD at the threshold that keeps 95% of ID (ID = positive class)."""
    return fpr_at_tpr(id_scores, ood_scores, 0.95)


def detection_error(id_scores, ood_scores) -> float:
    """min_t 0.5 (1 - TPR(t)) + 0.5 FPR(t) over all thresholds, incl. accept-all/none."""
    s_id, s_ood = _pair(id_scores, ood_scores)
    thresholds = np.unique(np.concatenate([s_id, s_ood, [np.inf]]))
    s_id_sorted, s_ood_sorted = np.sort(s_id), np.sort(s_ood)
    tpr = 1.0 - np.searchsorted(s_id_sorted, thresholds, side="left") / s_id.size
    fpr = 1.0 - np.searchsorted(s_ood_sorted, thresholds, side="left") / s_ood.size
    return float(np.min(0.5 * (1.0 - tpr) + 0.5 * fpr))


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """All detection metrics for one score and one OOD set, as a dict of floats."""
    s_id, s_ood = _pair(id_scores, ood_scores)
    return {
        "auroc": auroc(s_id, s_ood),
        "fpr95": fpr_at_95_tpr(s_id, s_ood),
        "aupr_in": aupr_in(s_id, s_ood),
        "aupr_out": aupr_out(s_id, s_ood),
        "detection_error": detection_error(s_id, s_ood),
    }


def accuracy(logits, labels) -> float:
    """Top-1 accuracy of ``argmax(logits)`` against integer labels."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).ravel()
    if logits.ndim != 2 or logits.shape[0] != labels.size:
        raise DataError(f"accuracy needs logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    return float(np.mean(logits.argmax(axis=1) == labels))


def mean_average_precision(scores, targets) -> float:
    """Multi-label mAP: mean over labels (with at least one positive) of average precision.

    ``scores`` (N, K), higher = label present; ``targets`` (N, K) in {0, 1}.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise DataError(f"mAP needs scores and targets of the same (N, K) shape, got {scores.shape} and {targets.shape}")
    aps = []
    for k in range(scores.shape[1]):
        pos = targets[:, k] > 0.5
        if pos.any():
            aps.append(_average_precision(scores[pos, k], scores[~pos, k]) if (~pos).any() else 1.0)
    if not aps:
        raise DataError("mAP is undefined: no label has a positive sample")
    return float(np.mean(aps))


def roc_curve_points(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with ID as the positive class: ``(fpr, tpr, thresholds)``.

    A sample is called ID when its score >= threshold. Thresholds run over the distinct
    scores from high to low, preceded by +inf (the point (0, 0)); so ``tpr[i] =
    mean(id >= thresholds[i])`` and ``fpr[i] = mean(ood >= thresholds[i])``. The area under
    these points (trapezoids) equals :func:`auroc`.
    """
    id_s, ood_s = _pair(id_scores, ood_scores)
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([id_s, ood_s]))[::-1]])
    id_sorted, ood_sorted = np.sort(id_s), np.sort(ood_s)
    tpr = (len(id_s) - np.searchsorted(id_sorted, thresholds, side="left")) / len(id_s)
    fpr = (len(ood_s) - np.searchsorted(ood_sorted, thresholds, side="left")) / len(ood_s)
    return fpr, tpr, thresholds


def confusion_at_threshold(id_scores, ood_scores, threshold: float) -> dict[str, float]:
    """Counts and rates when samples with score >= ``threshold`` are called ID.

    ``id_as_id`` (true positives), ``id_as_ood``, ``ood_as_id`` (false positives),
    ``ood_as_ood``, and ``tpr`` = id_as_id / n_id, ``fpr`` = ood_as_id / n_ood.
    """
    id_s, ood_s = _pair(id_scores, ood_scores)
    tp, fp = int((id_s >= threshold).sum()), int((ood_s >= threshold).sum())
    return {"id_as_id": tp, "id_as_ood": len(id_s) - tp, "ood_as_id": fp, "ood_as_ood": len(ood_s) - fp,
            "tpr": tp / len(id_s), "fpr": fp / len(ood_s)}
