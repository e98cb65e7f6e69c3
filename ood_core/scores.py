"""OOD scores: one registry, used by the CLI, the benchmarks and every app page.

Convention: **higher score = more in-distribution (ID)**. Each score is a small class whose
docstring gives the formula and the paper. Scores run on cached model outputs
(``ModelOutput(features, logits)``), so one forward pass serves every score. A score that
needs statistics of the training data (Mahalanobis, KNN, ...) overrides :meth:`Score.fit`,
which receives the training-set outputs, their labels and the model.

Add a score by subclassing :class:`Score` and decorating it with :func:`register_score`.

Reliability (checked by ``tests/test_score_properties.py``): calling a score (and fitting
one) rejects NaN/Inf in the features or logits with a :class:`~ood_core.errors.DataError`
naming the score and the input; finite outputs always give finite scores: a score whose
float32 arithmetic overflows on extreme but finite outputs (e.g. logits ~1e38, energy at a
small temperature) is recomputed in float64.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, OODCoreError, unknown
from .models import ModelOutput

SCORES: dict[str, type["Score"]] = {}


def check_finite_outputs(out: ModelOutput, score: str, what: str = "") -> None:
    """Raise DataError if the features or logits of ``out`` hold NaN/Inf (one cheap pass)."""
    for name, t in (("features", out.features), ("logits", out.logits)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        if bool(torch.isfinite(t.sum())):  # fast path (~30x cheaper): any NaN/Inf makes the sum non-finite
            continue
        bad = ~torch.isfinite(t)
        if not bool(bad.any()):
            continue
        bad_rows = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.dim() > 1 else bad
        raise DataError(
            f"score {score!r}: the {what}{name} contain {int(bad.sum())} NaN/Inf value(s) in "
            f"{int(bad_rows.sum())} sample(s) (first: sample {int(bad_rows.float().argmax())}); scores need finite "
            "model outputs (values beyond the float32 range count as Inf)")


# Working memory a score may use per call for its largest temporary (a distance block, a
# perturbed batch, ...): chunk the rows so that block stays under it. Well under 1 GB on CPU.
MEMORY_BUDGET_BYTES = 256 * 2**20

# Speed, not memory: when blocks of at least CACHE_BLOCK_MIN_ROWS rows can stay this small, the
# rows are cut into blocks of about CACHE_BLOCK_BYTES, whose temporaries stay in the CPU caches.
# One pass over 20,000 rows with 50 MB temporaries goes through main memory instead: on 2 cores
# Mahalanobis took 29 ms and KNN 76 ms that way, 10 ms and 39 ms in 4 MB blocks
# (benchmarks/geometry_speed.py --sections scoring). Larger rows (a 50,000-sample KNN bank) spill
# the caches at any useful block size, and only the memory budget cuts them.
CACHE_BLOCK_BYTES = 4 * 2**20
CACHE_BLOCK_MIN_ROWS = 256


def row_chunks(n_rows: int, bytes_per_row: int, budget: int | None = None, cache_blocks: bool = True):
    """Slices over ``range(n_rows)`` such that ``len(slice) * bytes_per_row <= budget`` (at
    least one row per slice). ``budget`` defaults to :data:`MEMORY_BUDGET_BYTES`; e.g. a KNN
    block of ``rows x 50,000`` float32 cosines has ``bytes_per_row = 4 * 50,000``.

    Within the budget, slices are kept to about :data:`CACHE_BLOCK_BYTES` when that still
    leaves :data:`CACHE_BLOCK_MIN_ROWS` rows per slice (cache-sized blocks are faster);
    ``cache_blocks=False`` leaves only the budget (for batches of model passes, e.g. on a GPU,
    where larger is faster)."""
    budget = MEMORY_BUDGET_BYTES if budget is None else int(budget)
    if budget <= 0:
        raise OODCoreError(f"memory budget must be a positive number of bytes, got {budget}")
    per_row = max(1, int(bytes_per_row))
    step = max(1, budget // per_row)
    if cache_blocks and CACHE_BLOCK_BYTES // per_row >= CACHE_BLOCK_MIN_ROWS:
        step = min(step, CACHE_BLOCK_BYTES // per_row)
    for start in range(0, int(n_rows), step):
        yield slice(start, min(start + step, int(n_rows)))


def register_score(cls: type["Score"]) -> type["Score"]:
    """Class decorator adding a score to ``SCORES`` under ``cls.name``."""
    if cls.name in SCORES:
        raise ValueError(f"score {cls.name!r} is registered twice")
    SCORES[cls.name] = cls
    return cls


# What a score costs beyond the one forward pass that caches features and logits (``Score.cost``;
# printed by ``list`` and timed by benchmarks/geometry_speed.py).
COSTS = {
    "outputs": "cached features and logits only",
    "head": "cached features passed through the classifier head again",
    "inputs": "the inputs themselves: input gradients or extra forward passes",
}


class Score:
    """Base class. Subclasses set ``name``, ``tasks`` and implement :meth:`compute`."""

    name: str = ""
    tasks: tuple[str, ...] = ("multiclass", "multilabel")
    # why a score is not defined for the tasks it leaves out (shown when it is asked for there)
    task_note: str = ""
    requires_fit: bool = False
    # True for scores that need the inputs themselves (e.g. Jacobian norms): the evaluator
    # then calls score_inputs(model, x) instead of reading cached outputs.
    requires_inputs: bool = False
    cost: str = "outputs"  # a key of COSTS

    @classmethod
    def refusal(cls, task: str) -> str | None:
        """None when the score applies to ``task``, else the sentence that says why not."""
        if task in cls.tasks:
            return None
        why = f": {cls.task_note}" if cls.task_note else ""
        return f"score {cls.name!r} is defined for {', '.join(cls.tasks)} models, not {task}{why}"

    def __init_subclass__(cls, **kwargs):
        # every fit (also a recipe's) rejects non-finite training outputs before using them
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if fit is not None and not getattr(fit, "_checks_finite", False):
            @functools.wraps(fit)
            def checked_fit(self, train, *args, **kw):
                if isinstance(train, ModelOutput):
                    check_finite_outputs(train, self.name, "training ")
                return fit(self, train, *args, **kw)

            checked_fit._checks_finite = True
            cls.fit = checked_fit

    def fit(self, train: ModelOutput, labels: torch.Tensor, model: torch.nn.Module | None = None) -> "Score":
        """Learn what the score needs from training-set outputs and labels; default: nothing.

        ``labels`` are (N,) class indices, or (N, K) multi-hot for multi-label data.
        """
        return self

    def compute(self, out: ModelOutput) -> torch.Tensor:
        raise NotImplementedError

    def score_inputs(self, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError(f"score {self.name!r} is computed from cached outputs")

    def __call__(self, out: ModelOutput) -> np.ndarray:
        """Scores (N,) as float64 of the cached outputs, computed in float32.

        NaN/Inf in the features or logits raise DataError. When finite outputs give a
        non-finite float32 score (overflow on extreme values), it is recomputed in float64.
        """
        out = ModelOutput(out.features.float(), out.logits.float())
        check_finite_outputs(out, self.name)
        with torch.no_grad():
            s = self.compute(out)
            if not bool(torch.isfinite(s).all()):
                s = self.compute(ModelOutput(out.features.double(), out.logits.double()))
                if not bool(torch.isfinite(s).all()):
                    raise OODCoreError(f"score {self.name!r} is not finite for {int((~torch.isfinite(s)).sum())} "
                                       "sample(s) although the model outputs are finite")
        return s.double().cpu().numpy()

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]


def check_positive(value, what: str) -> float:
    """``value`` as a float, or OODCoreError naming ``what`` unless it is a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OODCoreError(f"{what} must be a positive number, got {value!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise OODCoreError(f"{what} must be a positive number, got {value!r}")
    return v


def check_logit_scale(logit_scale) -> float:
    """``logit_scale`` as a float, or OODCoreError unless it is a finite number > 0."""
    return check_positive(logit_scale, "logit_scale")


@register_score
class MSP(Score):
    """Maximum softmax probability, max_k softmax(s * f(x))_k (Hendrycks & Gimpel, ICLR 2017); high = ID.

    ``logit_scale`` s (default 1.0) multiplies the logits before the softmax: s = 1 is the
    plain MSP of the model's logits. It is the inverse of a softmax temperature (s = 1/T in
    the ODIN/pytorch-ood sense). Use it to score a head whose logits are not the ones the
    softmax was trained on: the ``movr`` model outputs cosines and was trained on 32 * cos,
    so its MSP uses s = 32 (its method declares it, see :func:`ood_core.methods.method_score_params`);
    at s = 1 the softmax of K cosines in [-1, 1] is capped near e / (e + (K - 1) / e).
    """

    name = "msp"

    def __init__(self, logit_scale: float = 1.0):
        self.logit_scale = check_logit_scale(logit_scale)

    def compute(self, out):
        z = out.logits if self.logit_scale == 1.0 else self.logit_scale * out.logits
        return z.softmax(dim=1).max(dim=1).values


@register_score
class MaxLogit(Score):
    """Maximum logit, max_k f_k(x) (Hendrycks et al., ICML 2022)."""

    name = "maxlogit"

    def compute(self, out):
        return out.logits.max(dim=1).values


@register_score
class Energy(Score):
    """Negative free energy, T * logsumexp_k(s * f_k(x) / T) (Liu et al., NeurIPS 2020); high = ID.

    ``logit_scale`` s (default 1.0) first turns the model's logits into the logits the
    softmax was trained on (``movr``: cosines, trained as 32 * cos, so s = 32, declared by
    the method, see :func:`ood_core.methods.method_score_params`); ``temperature`` T
    (default 1.0) is the energy temperature of Liu et al. applied to those. s = T = 1 is
    the plain logsumexp_k f_k(x).
    """

    name = "energy"

    def __init__(self, temperature: float = 1.0, logit_scale: float = 1.0):
        self.temperature = check_positive(temperature, "energy temperature")
        self.logit_scale = check_logit_scale(logit_scale)

    def compute(self, out):
        t, z = self.temperature, out.logits
        z = z if self.logit_scale == 1.0 else self.logit_scale * z  # s = 1: exactly the unscaled numbers
        return t * torch.logsumexp(z / t, dim=1)


@register_score
class FeatureNorm(Score):
    """L2 norm of the penultimate features, ||z||_2 (Haas et al., TMLR 2024)."""

    name = "feature_norm"

    def compute(self, out):
        return out.features.norm(dim=1)


def make_score(name: str, **params) -> Score:
    """Instantiate a registered score by name with keyword parameters."""
    if name not in SCORES:
        raise unknown("score", name, SCORES)
    return SCORES[name](**params)


def scores_for_task(task: str) -> list[str]:
    """Names of the registered scores that apply to a task ("multiclass"/"multilabel")."""
    return [n for n, cls in SCORES.items() if task in cls.tasks]


class PrototypeCosineScore(Score):
    """Base for scores built on cos(z, w_k) with the classifier head's weight rows w_k.

    ``fit`` reads W from the model (linear, cosine or l2norm head); :meth:`cosines` gives
    the (N, K) matrix of cosines between features and prototypes.
    """

    tasks = ("multiclass",)
    requires_fit = True

    def __init__(self):
        self.prototypes: torch.Tensor | None = None

    def fit(self, train, labels, model=None):
        from .models import head_weight

        self.prototypes = F.normalize(head_weight(model).detach().float().cpu(), dim=1)
        return self

    def cosines(self, out: ModelOutput) -> torch.Tensor:
        if self.prototypes is None:
            raise OODCoreError(f"score {self.name!r} is not fitted: call fit(train_outputs, labels, model) first")
        if out.features.shape[1] != self.prototypes.shape[1]:
            raise OODCoreError(f"features have {out.features.shape[1]} dimensions but the head weight "
                               f"has {self.prototypes.shape[1]}")
        z = out.features
        norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        if bool(torch.isfinite(norms).all()):
            z = z / norms.clamp_min(1e-12)  # what F.normalize does, reusing the norms
        else:  # ||z|| of float32 features above ~1e19 overflows float32: normalise in float64
            z = F.normalize(z.double(), dim=1).to(z.dtype)
        return z @ self.prototypes.to(z.device, z.dtype).T
