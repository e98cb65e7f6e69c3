"""Training methods: a recipe is a head, optional spectral norm and a loss.

One registry, ``METHODS``, used by the CLI, the benchmarks and the app. A loss is a plain
``nn.Module`` called as ``loss(output: ModelOutput, target, batch_x)``; ``batch_x`` is there
for recipes with auxiliary inputs (rotations, outliers).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from .errors import unknown
from .models import ModelOutput


class CrossEntropy(nn.Module):
    """Plain softmax cross-entropy on the logits: L = -log softmax(f(x))_y."""

    def __init__(self):
        super().__init__()
        self.ce = nn.CrossEntropyLoss()

    def forward(self, out: ModelOutput, target, batch_x=None):
        return self.ce(out.logits, target)


@dataclasses.dataclass(frozen=True)
class Method:
    """A training recipe. ``make_loss(**loss_params)`` builds its loss module."""

    name: str
    description: str
    task: str  # "multiclass" or "multilabel"
    head: str
    make_loss: Callable[..., nn.Module]
    spectral_norm: bool = False
    loss_params: dict = dataclasses.field(default_factory=dict)
    paper: str = ""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


register_method(Method(
    name="ce", description="cross-entropy baseline, linear head", task="multiclass", head="linear",
    make_loss=CrossEntropy, paper="baseline",
))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]
