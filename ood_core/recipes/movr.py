"""Marginal one-vs-rest (m-OvR) loss on a cosine head, and the Jacobian-norm view of open-set recognition.

Park, Park, Jeong, Teoh, "Understanding Open-Set Recognition by Jacobian Norm of
Representation", arXiv 2209.11436 (Pattern Recognition 2024).

Method ``movr`` (baseline ``ce``): a cosine head with scale 1, so the model's logits are the
cosines s_k = cos(z, w_k) between the features and unit class prototypes, trained with
:class:`MarginalOvRLoss`. Scores (high = ID): ``ovr`` (negated sample-wise OvR loss at the
predicted class), ``max_cosine`` and ``jacobian_norm`` (negated ||df/dx||_F of the
unit-normalised features, see :mod:`ood_core.geometry`), and the softmax baselines ``msp``
and ``energy``.

The default run follows the paper's recipe (methods.md, "Protocols of the reference code"):
T = 32, m = 0.5, the 4-way rotation-prediction auxiliary loss with weight 0.1 (square
image inputs; see :class:`MarginalOvRLoss`) and weight decay 1e-3 (the method's
``train_defaults``, applied by :func:`ood_core.train.recommended_config`, which the CLI,
the app and the benchmarks build their configs with). Ours differs in the optimiser and
schedule (the shared Adam 1e-3, cosine over 30 epochs on the small CNN, not SGD on a
WRN/VGG/ResNet). ``--param rotation=0`` / ``--weight-decay 5e-4`` switch the additions off.

Softmax baselines on this head use the training scale: the method's ``score_params`` give
``msp`` and ``energy`` ``logit_scale = T`` (and ``ovr`` the same T), read from the
checkpoint's loss parameters by :func:`ood_core.methods.method_score_params`. Without it
the softmax of K = 6 cosines in [-1, 1] is capped near 0.6.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OODCoreError
from ..geometry import jacobian_norm
from ..methods import LossContext, Method, register_method
from ..models import CosineHead, ModelOutput
from ..scores import PrototypeCosineScore, Score, register_score

ACOS_EPS = 1e-6  # cosines are clamped to [-1 + eps, 1 - eps] before acos (finite gradient)


def _check_ovr_params(T: float, m: float) -> tuple[float, float]:
    T, m = float(T), float(m)
    if not (T > 0 and math.isfinite(T)):
        raise OODCoreError(f"m-OvR temperature T must be a positive number, got {T}")
    if not (0 <= m < math.pi and math.isfinite(m)):
        raise OODCoreError(f"m-OvR angular margin m must be in [0, pi) radians, got {m}")
    return T, m


def add_angular_margin(cos_y: torch.Tensor, m: float) -> torch.Tensor:
    """cos(theta_y + m) with theta_y = acos(clamp(cos_y, -1 + eps, 1 - eps)).

    Where theta_y + m would pass pi (cos(theta + m) stops decreasing there) the ArcFace
    fallback cos_y - m sin(m) is used instead (Deng et al., arXiv 1801.07698, official code),
    so the target logit stays monotone in theta_y and keeps a gradient. m = 0 returns cos_y.
    """
    if m == 0:
        return cos_y
    c = cos_y.clamp(-1 + ACOS_EPS, 1 - ACOS_EPS)
    theta = torch.acos(c)
    with_margin = torch.cos(theta + m)
    return torch.where(theta + m <= math.pi, with_margin, c - m * math.sin(m))


def ovr_loss_per_sample(cos: torch.Tensor, target: torch.Tensor, T: float, m: float) -> torch.Tensor:
    """Sample-wise m-OvR loss, (N,) from cosines (N, K) and class indices (N,).

    p_k = sigma(T s_k) with s_y = cos(theta_y + m) on the target and s_k = cos theta_k else;
    L = -log p_y - sum_{k != y} log(1 - p_k) = softplus(-T s_y) + sum_{k != y} softplus(T s_k).
    """
    onehot = F.one_hot(target, cos.shape[1]).to(dtype=torch.bool)
    s_y = add_angular_margin(cos.gather(1, target[:, None])[:, 0], m)
    pos = F.softplus(-T * s_y)
    neg = F.softplus(T * cos).masked_fill(onehot, 0.0).sum(dim=1)
    return pos + neg


def _cosines_from_logits(out: ModelOutput, ctx: LossContext | None) -> torch.Tensor:
    head = getattr(ctx.model, "head", None) if ctx is not None else None
    if ctx is not None and not isinstance(head, CosineHead):
        raise OODCoreError("the m-OvR loss needs a model with a cosine head (method 'movr' builds one)")
    scale = head.scale if head is not None else 1.0
    return out.logits / scale


class MarginalOvRLoss(nn.Module):
    """Marginal one-vs-rest loss (Park, Park, Jeong, Teoh, arXiv 2209.11436).

    Cosine head, unit prototypes w_k: s_k = cos theta_k = cos(f(x), w_k); for the target
    class the ArcFace-style angular margin s_y = cos(theta_y + m) (methods.md: the paper's
    text is ambiguous about where the margin goes; here only the target gets it, with a
    clamped acos, see :func:`add_angular_margin`); p_k = sigma(T s_k);
    L = -log p_y - sum_{k != y} log(1 - p_k), averaged over the batch. Each class is its own
    binary problem, so every prototype pushes *all* other classes away (inter-class
    learning), which the paper ties to a larger Jacobian norm in the open space.

    The logits are read as cosines: with the method's ``cosine_scale = 1`` they are the
    cosines; another scale is divided out (the loss reads ``ctx.model.head.scale``).

    Parameters: ``T`` temperature (default 32), ``m`` margin in radians (default 0.5),
    ``rotation`` weight of the 4-way rotation-prediction auxiliary loss (default 0.1, the
    paper's "additional strategies"; 0 = off). When ``rotation > 0`` the loss owns a
    rotation head ``nn.LazyLinear(4)`` on the backbone features z (its input size is taken
    from the first batch, so one loss serves any backbone): the batch ctx.x is rotated by
    90, 180 and 270 degrees (``torch.rot90`` on the last two dims), ``ctx.model`` is run on
    the rotated copies (the 0-degree features are ``out.features``) and
    rotation * CE(rotation head, rotation index) over the 4N samples is added. This costs
    three extra forward/backward passes per step (30 epochs of the small CNN on digits take
    about 2-2.5x as long as without it). It is defined for square images only: on other
    inputs (toy2d's 2-D points, non-square images) the term is left out, with one warning per
    loss, as a 2-D point has no image to rotate. The rotation head is used in training
    only (it is not saved with the model).
    """

    def __init__(self, T: float = 32.0, m: float = 0.5, rotation: float = 0.1):
        super().__init__()
        self.T, self.m = _check_ovr_params(T, m)
        self.rotation = float(rotation)
        if not (self.rotation >= 0 and math.isfinite(self.rotation)):
            raise OODCoreError(f"rotation loss weight must be >= 0, got {rotation}")
        self.rotation_head = nn.LazyLinear(4) if self.rotation > 0 else None
        self._warned_inputs = False

    @staticmethod
    def rotates(x: torch.Tensor) -> bool:
        """Whether the rotation loss applies to a batch: square images (N, C, H, H)."""
        return x.dim() >= 4 and x.shape[-1] == x.shape[-2]

    def rotation_loss(self, out: ModelOutput, ctx: LossContext) -> torch.Tensor:
        """CE of predicting the rotation (0/90/180/270 degrees) of every sample from its features."""
        x = ctx.x
        if not self.rotates(x):
            raise OODCoreError(f"the rotation auxiliary loss needs square images (N, C, H, H); got inputs of "
                               f"shape {tuple(x.shape)}; set rotation=0")
        rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3)])
        feats = torch.cat([out.features, ctx.model(rotated).features])
        labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
        return F.cross_entropy(self.rotation_head(feats), labels)

    def forward(self, out: ModelOutput, target: torch.Tensor, ctx: LossContext | None = None) -> torch.Tensor:
        cos = _cosines_from_logits(out, ctx)
        loss = ovr_loss_per_sample(cos, target, self.T, self.m).mean()
        if self.rotation > 0:
            if ctx is None:
                raise OODCoreError("the rotation auxiliary loss needs the LossContext (inputs and model)")
            if self.rotates(ctx.x):
                loss = loss + self.rotation * self.rotation_loss(out, ctx)
            elif not self._warned_inputs:
                self._warned_inputs = True
                warnings.warn(f"m-OvR: the rotation auxiliary loss (weight {self.rotation:g}) needs square images; "
                              f"inputs of shape {tuple(ctx.x.shape[1:])} are trained without it")
        return loss


@register_score
class MaxCosine(PrototypeCosineScore):
    """Maximum cosine to a class prototype, max_k cos(z, w_k) (Park et al., arXiv 2209.11436); high = ID.

    The prototypes are the head's weight rows (read in fit()), so the score applies to any
    model with a linear, cosine or l2norm head (biases are ignored); on the ``movr`` model
    (cosine head, scale 1) it equals max_k logit_k.
    """

    name = "max_cosine"

    def compute(self, out):
        return self.cosines(out).max(dim=1).values


@register_score
class OvRScore(PrototypeCosineScore):
    """Negated sample-wise OvR loss at the predicted class (Park et al., arXiv 2209.11436); high = ID.

    S(x) = -[softplus(-T s_yhat) + sum_{k != yhat} softplus(T s_k)], yhat = argmax_k s_k,
    s_k = cos(z, w_k) with the head's weight rows (read in fit(), so any linear/cosine head
    works). T and m are constructor parameters, default T = 32 (the training default; a
    ``movr`` checkpoint trained with another T is scored with its own, see the method's
    ``score_params``) and m = 0: at test time there is no label to put a margin on, and with m = 0 the score is
    the plain OvR likelihood of the predicted class. High when one prototype is close and
    all others are far.
    """

    name = "ovr"

    def __init__(self, T: float = 32.0, m: float = 0.0):
        super().__init__()
        self.T, self.m = _check_ovr_params(T, m)

    def compute(self, out):
        cos = self.cosines(out).double()
        return -ovr_loss_per_sample(cos, cos.argmax(dim=1), self.T, self.m)


@register_score
class JacobianNormScore(Score):
    """Negated Jacobian norm of the representation, -||d f(x)/dx||_F (Park et al., arXiv 2209.11436); high = ID.

    f = z/||z|| (``normalize=True``, default: the representation of a cosine head, and a
    scale that compares across models) or z. Computed from the inputs with
    :func:`ood_core.geometry.jacobian_norm`, by default the random-projection estimate with
    ``n_proj = 16`` and a fixed seed (reproducible; ``method="exact"`` is about d/16 times
    slower). The paper's finding is that knowns have the *lower* norm, hence the minus sign.
    """

    name = "jacobian_norm"
    tasks = ("multiclass",)
    requires_inputs = True
    cost = "inputs"

    def __init__(self, method: str = "estimate", n_proj: int = 16, normalize: bool = True,
                 chunk_size: int = 256, seed: int = 0):
        self.kw = dict(method=method, n_proj=int(n_proj), normalize=bool(normalize),
                       chunk_size=int(chunk_size), seed=int(seed))

    def score_inputs(self, model, x) -> np.ndarray:
        return -jacobian_norm(model, x, **self.kw)

    def compute(self, out):
        raise OODCoreError("score 'jacobian_norm' needs the inputs: call score_inputs(model, x)")


def _movr_score_params(loss_params: dict) -> dict[str, dict]:
    """The training temperature T for every score that reads the logits as T * cos."""
    T = float(loss_params["T"])
    return {"msp": {"logit_scale": T}, "energy": {"logit_scale": T}, "ovr": {"T": T}}


register_method(Method(
    name="movr",
    description="marginal one-vs-rest loss on a cosine head (scale 1), rotation-prediction auxiliary loss, "
                "weight decay 1e-3 (the paper's recipe); msp/energy use the training scale T",
    task="multiclass",
    head="cosine",
    make_loss=MarginalOvRLoss,
    loss_params={"T": 32.0, "m": 0.5, "rotation": 0.1},
    model_params={"cosine_scale": 1.0},
    scores=("ovr", "max_cosine", "jacobian_norm", "msp", "energy"),
    baseline="ce",
    train_defaults={"weight_decay": 1e-3},
    score_params=_movr_score_params,
    paper="Park, Park, Jeong, Teoh, Understanding Open-Set Recognition by Jacobian Norm of Representation, "
          "arXiv 2209.11436",
))
