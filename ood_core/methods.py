"""Training methods: a recipe is a head, optional spectral norm, a loss and its scores.

One registry, ``METHODS``, used by the CLI, the benchmarks and the app. A loss is a plain
``nn.Module`` called as ``loss(output: ModelOutput, target, ctx: LossContext)``; ``ctx``
carries the batch inputs, the model, the epoch and (for outlier-exposure recipes) a batch
of auxiliary outliers. Anything a *score* needs after training (prototypes, centres) must
live in the model, not in the loss, because only the model is saved.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from .errors import unknown
from .models import ModelOutput


@dataclasses.dataclass
class LossContext:
    """What a loss may need beyond (output, target). Tensors are on the training device."""

    x: torch.Tensor  # the ID batch
    model: nn.Module
    epoch: int  # 1-based
    epochs: int
    outliers: torch.Tensor | None = None  # auxiliary outlier batch when the method asks for one


class CrossEntropy(nn.Module):
    """Plain softmax cross-entropy on the logits: L = -log softmax(f(x))_y."""

    def __init__(self):
        super().__init__()
        self.ce = nn.CrossEntropyLoss()

    def forward(self, out: ModelOutput, target, ctx: LossContext | None = None):
        return self.ce(out.logits, target)


@dataclasses.dataclass(frozen=True)
class Method:
    """A training recipe. ``make_loss(**loss_params)`` builds its loss module.

    ``model_params`` override the model spec (e.g. ``cosine_scale``); ``outliers`` names a
    training-outlier family of ``ood_core.data.TRAIN_OUTLIERS`` (never an evaluation set);
    ``scores`` are the scores reported for the method (the first is its own score);
    ``baseline`` is the method it must be compared with; ``train_defaults`` are the
    TrainConfig values the recipe is run with unless the user overrides them. ``pretrain``
    names the method whose trained model is the recipe's starting point (a fine-tune recipe):
    ``train()`` without ``init`` first trains that method with its own defaults, same seed.

    ``score_params(loss_params) -> {score name: keyword parameters}`` gives the parameters
    its scores are built with for a model trained with ``loss_params`` (the method's
    defaults merged with the run's overrides), e.g. the training temperature for a softmax
    score on a cosine head; None = every score at its defaults. Read it through
    :func:`method_score_params`, which every evaluation of a checkpoint uses.
    """

    name: str
    description: str
    task: str  # "multiclass" or "multilabel"
    head: str
    make_loss: Callable[..., nn.Module]
    spectral_norm: bool = False
    loss_params: dict = dataclasses.field(default_factory=dict)
    model_params: dict = dataclasses.field(default_factory=dict)
    outliers: str | None = None
    outlier_ratio: float = 1.0  # outliers per ID sample in a batch
    scores: tuple[str, ...] = ("msp", "maxlogit", "energy", "feature_norm")
    baseline: str | None = None
    train_defaults: dict = dataclasses.field(default_factory=dict)  # TrainConfig fields this recipe needs
    pretrain: str | None = None  # the method this recipe fine-tunes (None: trained from a random init)
    paper: str = ""
    score_params: Callable[[dict], dict[str, dict]] | None = None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


register_method(Method(
    name="ce", description="cross-entropy baseline, linear head", task="multiclass", head="linear",
    make_loss=CrossEntropy, paper="baseline",
    scores=("msp", "maxlogit", "energy", "feature_norm", "mahalanobis", "knn", "vim", "min_distance"),
))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]


def applicable_scores(method: Method, bench=None) -> list[str]:
    """The scores reported for ``method`` (its own first) that are registered for the data's task."""
    from .scores import scores_for_task

    task_scores = scores_for_task(bench.task if bench is not None else method.task)
    return [s for s in method.scores if s in task_scores]


def default_score_names(meta: dict, bench) -> list[str]:
    """The scores to report for a checkpoint: its method's; for any other model (an ``import``ed
    one, an unknown method) every score of the data's task that runs on cached outputs (those
    that need input gradients or extra passes, ``cost == "inputs"``, are asked for by name)."""
    from .scores import SCORES, scores_for_task

    method = METHODS.get(str(meta.get("method")))
    if method is not None:
        return applicable_scores(method, bench)
    return [s for s in scores_for_task(bench.task) if SCORES[s].cost != "inputs"]


def method_score_params(method: "Method | dict | str | None", loss_params: dict | None = None) -> dict[str, dict]:
    """``{score name: keyword parameters}`` to build the scores of a model of ``method`` with.

    ``method``: a :class:`Method`, its name, or a checkpoint's ``meta`` (its ``"method"``
    names the method and its ``"loss_params"`` are the ones the model was trained with).
    ``loss_params`` (with a Method or name) override the method's defaults, as in training.
    A score not listed, a method without ``score_params`` and a method that is not
    registered (an unknown checkpoint) all get the scores' defaults: ``{}``.
    """
    if isinstance(method, dict):  # checkpoint meta
        loss_params = {**(method.get("loss_params") or {}), **(loss_params or {})}
        method = method.get("method")
    if isinstance(method, str) or method is None:
        method = METHODS.get(str(method))
    if method is None or method.score_params is None:
        return {}
    params = method.score_params({**method.loss_params, **(loss_params or {})})
    return {name: dict(kw) for name, kw in params.items()}
