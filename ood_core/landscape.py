"""Decision and score landscapes of a classifier with 2-D inputs (the ``toy2d`` benchmark).

A landscape evaluates the model on a regular grid over a rectangle of the input plane and
records, for every grid point p = (x, y):

* ``predicted[i, j]``: the class the model predicts at p, argmax_k f_k(p) (f = the logits).
  The regions of equal value are the *decision regions*; their borders are the decision
  boundaries.
* ``score[i, j]``: an OOD score of the registry (:mod:`ood_core.scores`) at p, e.g. the
  energy score logsumexp_k f_k(p). Every score follows the registry's convention: **high =
  in-distribution (ID)**. A good detector has high values on the training classes and low
  values everywhere else; a plain cross-entropy model usually keeps (or even raises) the
  score far from the data, because its logits grow linearly along rays leaving the origin,
  which is why OOD detection by softmax/energy fails far away.

Grids are indexed ``[i, j] = [y index, x index]`` (``i`` along ``ys``, ``j`` along ``xs``),
the layout plotting libraries expect for a heatmap with ``x=xs, y=ys``.

The model is evaluated in eval mode without gradients and its train/eval mode is restored
afterwards, so computing a landscape in the middle of training changes nothing about the
run (see ``ood_core.train.train(epoch_end=...)``). Scores that learn from the training data
(Mahalanobis, KNN, ...) are fitted on the training set's outputs of the same model, as the
evaluator does, so every snapshot shows the score the model would get at that epoch.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .errors import OODCoreError
from .evaluate import extract_outputs
from .scores import make_score

DEFAULT_SCORE = "energy"


@dataclasses.dataclass(frozen=True)
class Landscape:
    """One evaluation of a model over a grid of the plane (see the module docstring).

    ``xs`` (nx,) and ``ys`` (ny,) are the grid coordinates; ``predicted`` (ny, nx) int64
    holds the predicted class per point, ``score`` (ny, nx) float64 the OOD score
    ``score_name`` (high = ID). ``epoch`` says when it was taken (None outside training).
    """

    xs: np.ndarray
    ys: np.ndarray
    predicted: np.ndarray
    score: np.ndarray
    score_name: str
    epoch: int | None = None

    def grid_points(self) -> np.ndarray:
        """The (ny * nx, 2) grid points in the order of ``predicted.ravel()``."""
        gx, gy = np.meshgrid(self.xs, self.ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)


def grid_axes(bounds: tuple[float, float, float, float], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)``: ``resolution`` evenly spaced points per axis over ``bounds`` =
    (x_min, x_max, y_min, y_max), ends included."""
    try:
        x_min, x_max, y_min, y_max = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise OODCoreError(f"bounds must be four numbers (x_min, x_max, y_min, y_max), got {bounds!r}") from None
    if not (x_min < x_max and y_min < y_max):
        raise OODCoreError(f"bounds must be (x_min, x_max, y_min, y_max) with min < max, got {bounds}")
    if int(resolution) < 2:
        raise OODCoreError(f"resolution must be >= 2 grid points per axis, got {resolution}")
    return np.linspace(x_min, x_max, int(resolution)), np.linspace(y_min, y_max, int(resolution))


def check_landscape_score(score: str, can_fit: bool = True, score_params: dict | None = None):
    """The registry score ``score`` (built with ``score_params``, its keyword parameters), after
    checking a landscape can compute it: from the model's outputs (not the inputs' gradients),
    and, for a score that learns from the training data (``requires_fit``: mahalanobis, knn,
    ...), only when training data is given (``can_fit``)."""
    scorer = make_score(score, **(score_params or {}))
    if scorer.requires_inputs:
        raise OODCoreError(f"score {score!r} needs input gradients, too slow for a grid; a landscape uses scores "
                           "computed from the model's outputs: pass e.g. 'energy', 'msp' or 'mahalanobis'")
    if scorer.requires_fit and not can_fit:
        raise OODCoreError(f"score {score!r} learns from the training data: pass fit_on=(x_train, y_train), "
                           "or a score computed from the logits alone such as 'energy', 'msp' or 'maxlogit'")
    return scorer


def decision_landscape(model: torch.nn.Module, bounds: tuple[float, float, float, float], resolution: int = 60,
                       score: str = DEFAULT_SCORE, epoch: int | None = None,
                       fit_on: tuple[torch.Tensor, torch.Tensor] | None = None,
                       score_params: dict | None = None) -> Landscape:
    """Predicted class and OOD score of ``model`` over a ``resolution`` x ``resolution`` grid.

    ``model`` takes (N, 2) inputs and returns :class:`~ood_core.models.ModelOutput`;
    ``bounds`` = (x_min, x_max, y_min, y_max), e.g. from :func:`ood_core.geometry.plane_bounds`;
    ``score`` is a registry score computed from the outputs (``energy``, ``msp``, ``maxlogit``,
    ``feature_norm``; with ``fit_on`` = (training inputs, labels) also the scores that are
    fitted on the training set's outputs, as the evaluator does: ``mahalanobis``, ``knn``,
    ``min_distance``, ...). ``score_params``: the score's keyword parameters (for a method's
    model: ``method_score_params(method).get(score)``, e.g. msp's ``logit_scale`` on ``movr``).
    Cost: resolution^2 forward passes (+ one pass over ``fit_on``).
    """
    scorer = check_landscape_score(score, can_fit=fit_on is not None, score_params=score_params)
    xs, ys = grid_axes(bounds, resolution)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    with torch.no_grad():  # extract_outputs: eval mode, the model's mode restored afterwards
        outputs = extract_outputs(model, points)
        if scorer.requires_fit:
            x_train, y_train = fit_on
            scorer.fit(extract_outputs(model, x_train), y_train, model)
    if outputs.logits.dim() != 2:
        raise OODCoreError(f"expected (N, K) logits, got shape {tuple(outputs.logits.shape)}")
    predicted = outputs.logits.argmax(dim=1).numpy().reshape(gx.shape).astype(np.int64)
    score_grid = np.asarray(scorer(outputs), dtype=np.float64).reshape(gx.shape)
    return Landscape(xs, ys, predicted, score_grid, score, epoch)
