"""Input attributions of OOD scores: which pixels (or coordinates) make a sample look ID.

:func:`integrated_gradients` attributes one OOD score of the registry (:mod:`ood_core.scores`)
to the input with Integrated Gradients (Sundararajan, Taly, Yan, "Axiomatic Attribution for
Deep Networks", ICML 2017, arXiv 1703.01365), computed by captum's ``IntegratedGradients``.

The attributed function is ``s(x) = score.compute(model(x))``: the model's forward pass followed
by the registry's own ``compute`` of the score, so the attributed number is exactly the number
the evaluator reports (there is no second copy of any score formula here).

Which scores can be attributed: those whose ``compute`` is differentiable with respect to the
model outputs (features, logits). With the shipped registry that is ``msp``, ``maxlogit``,
``energy``, ``feature_norm``, ``max_cosine``, ``ovr``, ``separation``, ``min_distance``,
``joint_energy``, ``max_sigmoid`` and ``sum_sigmoid`` (arg-max / arg-min choices inside them are
piecewise constant, so gradients exist almost everywhere). Not attributable: ``mahalanobis``,
``knn`` and ``vim`` (their ``compute`` works on detached float64 copies of the features) and
``jacobian_norm`` (``requires_inputs``: it is itself a derivative of the inputs). This is
checked on the actual computation (:func:`check_attributable`), not read from a list, so a
newly registered score is judged by what its ``compute`` does.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .errors import DataError, OODCoreError
from .models import ModelOutput
from .scores import Score, make_score

BASELINES = ("zeros", "mean")
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


class Attribution(NamedTuple):
    """Result of :func:`integrated_gradients`.

    attributions: same shape as the input ``x``; ``attributions[i]`` sums to about
        ``scores[i] - baseline_scores[i]`` (completeness).
    delta: (N,) captum's convergence delta, ``sum(attributions[i]) - (s(x_i) - s(x0_i))``;
        the error of the path integral's quadrature (small when ``n_steps`` is enough).
    scores: (N,) the score s(x) of each sample (float64).
    baseline_scores: (N,) the score s(x0) of each sample's baseline (float64).
    """

    attributions: torch.Tensor
    delta: torch.Tensor
    scores: torch.Tensor
    baseline_scores: torch.Tensor


def _resolve_score(score: str | Score) -> Score:
    """A Score instance from a registry name or an instance; fitted scores must come fitted."""
    if isinstance(score, str):
        score = make_score(score)
        if score.requires_fit:
            raise OODCoreError(
                f"score {score.name!r} needs training statistics: fit it first, "
                f"s = make_score({score.name!r}).fit(train_outputs, train_labels, model), and pass s")
    if not isinstance(score, Score):
        raise OODCoreError(f"score must be a registered score name or a Score instance, got {type(score).__name__}")
    if score.requires_inputs:
        raise OODCoreError(
            f"score {score.name!r} cannot be attributed: it is computed from the inputs themselves "
            "(requires_inputs, e.g. a Jacobian norm), not from the model outputs; choose a score such as "
            "'energy' or 'msp'")
    return score


def score_function(model: torch.nn.Module, score: str | Score) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> s(x)``: the model's forward pass, then the registry's ``compute`` of ``score``.

    Returns a function from an input batch (N, ...) to the (N,) scores, differentiable in x
    whenever the score's ``compute`` is (see :func:`check_attributable`). Outputs are cast
    to float32 and moved to the CPU first, as the evaluator's cached outputs are, so the
    numbers equal ``make_score(name)(outputs)``. The model is used as it is (call
    ``model.eval()`` first; :func:`integrated_gradients` does).
    """
    score = _resolve_score(score)

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return score.compute(ModelOutput(out.features.float().cpu(), out.logits.float().cpu()))

    return forward


def check_attributable(score: Score, values: torch.Tensor) -> None:
    """Raise OODCoreError unless ``values`` (a score computed from inputs that require grad)
    is connected to the inputs by autograd, i.e. the score's ``compute`` is differentiable."""
    if not (isinstance(values, torch.Tensor) and values.requires_grad):
        raise OODCoreError(
            f"score {score.name!r} cannot be attributed: its compute is not differentiable with respect to the "
            "model outputs (it works on detached copies or a non-differentiable selection); attributable scores "
            "include msp, maxlogit, energy, feature_norm, max_cosine, min_distance")


def _batched(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(x as a batch, whether a single sample was given)``; checks shape and values."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"x must be a torch tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DataError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    spec_shape = (getattr(model, "spec", None) or {}).get("input_shape")
    if spec_shape is not None:
        shape = tuple(int(s) for s in spec_shape)
        if tuple(x.shape) == shape:
            x, single = x.unsqueeze(0), True
        elif x.dim() == len(shape) + 1 and tuple(x.shape[1:]) == shape:
            single = False
        else:
            raise DataError(f"x has shape {tuple(x.shape)}; the model takes one sample of shape {shape} "
                            f"or a batch (N, {', '.join(map(str, shape))})")
    else:  # a model without a stored spec: x must already be a batch
        if x.dim() < 2:
            raise DataError(f"x must be a batch (N, ...) of samples, got shape {tuple(x.shape)}")
        single = False
    if x.shape[0] == 0:
        raise DataError("x is an empty batch")
    if not torch.isfinite(x).all():
        raise DataError("x contains NaN or Inf values")
    return x, single


def _baseline_batch(baseline, x: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """The baseline x0 for every sample of the batch ``x``, same shape as ``x``."""
    sample_shape = tuple(x.shape[1:])
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "mean":
            if reference is None:
                raise OODCoreError("baseline='mean' needs reference= samples (e.g. the ID training inputs) "
                                   "to average")
            ref = torch.as_tensor(reference).to(device=x.device, dtype=x.dtype)
            if tuple(ref.shape[1:]) != sample_shape or ref.shape[0] == 0:
                raise DataError(f"reference has shape {tuple(ref.shape)}; expected (M, "
                                f"{', '.join(map(str, sample_shape))}) with M >= 1")
            return ref.mean(dim=0, keepdim=True).expand_as(x).clone()
        raise OODCoreError(f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)} or pass a tensor")
    b = torch.as_tensor(baseline).to(device=x.device, dtype=x.dtype)
    if tuple(b.shape) == sample_shape:
        b = b.unsqueeze(0).expand_as(x).clone()
    elif tuple(b.shape) != tuple(x.shape):
        raise DataError(f"baseline has shape {tuple(b.shape)}; pass one sample {sample_shape} or one per sample "
                        f"{tuple(x.shape)}")
    if not torch.isfinite(b).all():
        raise DataError("baseline contains NaN or Inf values")
    return b


def integrated_gradients(model: torch.nn.Module, x: torch.Tensor, score: str | Score, baseline="zeros",
                         n_steps: int = 32, reference: torch.Tensor | None = None,
                         method: str = "gausslegendre", internal_batch_size: int | None = None) -> Attribution:
    """Integrated Gradients of an OOD score with respect to the input.

    For a sample x, a baseline x0 and the score s (model forward + registry ``compute``),

        IG_j(x) = (x_j - x0_j) * integral_0^1  ds/dx_j (x0 + a (x - x0)) da,

    approximated with ``n_steps`` points of ``method`` (captum's default Gauss-Legendre
    quadrature). Sundararajan, Taly, Yan, ICML 2017 (arXiv 1703.01365).

    Completeness: sum_j IG_j(x) = s(x) - s(x0) (exactly for the integral, up to the
    quadrature error for the sum); ``delta`` in the result is that error, as captum reports it.

    Sign: every score is high = ID, so a *positive* attribution means that input pixel (or
    coordinate), moved from the baseline to its actual value, pushed the sample toward "ID";
    a negative one pushed it toward "OOD".

    Args:
        model: an :class:`~ood_core.models.OODModel` (anything returning ``ModelOutput``);
            used in eval mode (BatchNorm statistics fixed), its mode restored afterwards.
        x: one sample (the model's ``input_shape``) or a batch (N, *input_shape).
        score: a registry name (a score that needs no fit) or a :class:`~ood_core.scores.Score`
            instance, fitted already when it ``requires_fit`` (fit it as the evaluator does:
            ``s.fit(train_outputs, train_labels, model)``). Must be attributable (module docstring).
        baseline: ``"zeros"`` (black image / origin), ``"mean"`` (the mean of ``reference``,
            e.g. the ID training inputs), or a tensor: one sample or one per sample.
        n_steps: number of points on the straight path from x0 to x (>= 2).
        reference: samples averaged by ``baseline="mean"``.
        method: captum's quadrature, one of ``IG_METHODS``.
        internal_batch_size: forward at most this many path points at once (memory bound).

    Returns:
        :class:`Attribution` ``(attributions, delta, scores, baseline_scores)``;
        ``attributions`` has the shape and dtype of ``x`` (on the CPU).

    Raises:
        OODCoreError: a score that cannot be attributed (needs the inputs, needs a fit it has
            not had, or is not differentiable in the outputs), an unknown baseline or method.
        DataError: an input or baseline of the wrong shape, or with NaN/Inf.
    """
    from captum.attr import IntegratedGradients  # lazy: captum is only needed here

    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 2:
        raise OODCoreError(f"n_steps must be an integer >= 2, got {n_steps!r}")
    if method not in IG_METHODS:
        raise OODCoreError(f"unknown integration method {method!r}; choose one of: {', '.join(IG_METHODS)}")
    score_obj = _resolve_score(score)
    xb, single = _batched(model, x)
    device = next(model.parameters()).device
    xb = xb.detach().to(device)
    x0 = _baseline_batch(baseline, xb, reference).detach()
    forward = score_function(model, score_obj)

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # callers (Streamlit caches, evaluators) may run under no_grad
            probe = xb[:1].clone().requires_grad_(True)
            check_attributable(score_obj, forward(probe))
            ig = IntegratedGradients(forward)
            attributions, delta = ig.attribute(xb, baselines=x0, n_steps=n_steps, method=method,
                                               internal_batch_size=internal_batch_size,
                                               return_convergence_delta=True)
        with torch.no_grad():
            s_x, s_x0 = forward(xb).double(), forward(x0).double()
    finally:
        model.train(was_training)
    attributions = attributions.detach().cpu()
    if single:
        attributions = attributions[0]
    return Attribution(attributions, delta.detach().double().cpu(), s_x.cpu(), s_x0.cpu())
