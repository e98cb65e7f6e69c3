"""Multi-label OOD detection: JointEnergy (baseline) and SNoJoE (spectral-normalised JointEnergy).

* JointEnergy: Wang, Liu, Bocchieri, Li, "Can multi-label classification networks know what
  they don't know?", NeurIPS 2021 (arXiv 2109.14162). A multi-label network with K
  per-label logits f_i(x) is trained with binary cross-entropy; its OOD score sums the
  label-wise free energies, S(x) = sum_i log(1 + exp(f_i(x))).
* SNoJoE: Mei, Wang, Zhang, Wang, "Spectral Normalized Joint Energy for Multi-Label
  Out-of-Distribution Detection" (arXiv 2405.04759). The same score on a network trained
  with spectral normalisation (``torch.nn.utils.parametrizations.spectral_norm``) on every
  convolution of the backbone; the linear classifier head and BatchNorm are left alone, as
  in the reference code. Adam, BCE.

Both methods use the same loss (:class:`BCEWithLogits`); they differ only in the model's
``spectral_norm`` flag. Scores follow the project convention: **high = ID**.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OODCoreError
from ..methods import LossContext, Method, register_method
from ..models import ModelOutput
from ..scores import Score, register_score


class BCEWithLogits(nn.Module):
    """Binary cross-entropy on per-label logits, averaged over samples and labels.

    L = -(1/(N K)) sum_n sum_i [ y_ni log s(f_i(x_n)) + (1 - y_ni) log(1 - s(f_i(x_n))) ],
    s = sigmoid, y multi-hot (N, K) float. The multi-label training loss of JointEnergy
    (Wang et al., NeurIPS 2021) and SNoJoE (Mei et al., arXiv 2405.04759). Computed with
    ``F.binary_cross_entropy_with_logits`` (numerically stable log-sigmoid).

    ``pos_weight`` (ours, default 1.0 = the papers' plain BCE) multiplies the positive term
    of every label, a knob for label imbalance.
    """

    def __init__(self, pos_weight: float = 1.0):
        super().__init__()
        pos_weight = float(pos_weight)
        if not pos_weight > 0:
            raise OODCoreError(f"pos_weight must be a positive number, got {pos_weight}")
        self.pos_weight = pos_weight

    def forward(self, out: ModelOutput, target, ctx: LossContext | None = None):
        logits = out.logits
        if target.shape != logits.shape:
            raise OODCoreError(f"BCE needs multi-hot targets of shape {tuple(logits.shape)}, "
                               f"got {tuple(target.shape)}; use a multi-label dataset")
        pw = None
        if self.pos_weight != 1.0:
            pw = torch.full((logits.shape[1],), self.pos_weight, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pw)


@register_score
class JointEnergy(Score):
    """JointEnergy, S(x) = sum_i softplus(f_i(x)) = sum_i log(1 + exp(f_i(x))) (high = ID).

    Wang, Liu, Bocchieri, Li, NeurIPS 2021 (arXiv 2109.14162); the score of SNoJoE (Mei et
    al., arXiv 2405.04759). Each term is the negative free energy of one binary label; a
    confident positive label adds about f_i, a confident negative adds about 0, so canvases
    with several confident known labels score high. ``softplus`` keeps it finite for large
    logits (log(1 + e^1000) = 1000, not inf).
    """

    name = "joint_energy"
    tasks = ("multilabel",)

    def compute(self, out):
        return F.softplus(out.logits).sum(dim=1)


@register_score
class MaxSigmoid(Score):
    """Maximum label probability, max_i sigmoid(f_i(x)) (high = ID).

    The multi-label analogue of MSP used as a baseline by Wang et al., NeurIPS 2021
    (arXiv 2109.14162). Saturates at 1 for logits above ~17 in float32.
    """

    name = "max_sigmoid"
    tasks = ("multilabel",)

    def compute(self, out):
        return torch.sigmoid(out.logits).max(dim=1).values


@register_score
class SumSigmoid(Score):
    """Sum of label probabilities, sum_i sigmoid(f_i(x)) (high = ID).

    Baseline of Wang et al., NeurIPS 2021 (arXiv 2109.14162): expected number of labels present.
    """

    name = "sum_sigmoid"
    tasks = ("multilabel",)

    def compute(self, out):
        return torch.sigmoid(out.logits).sum(dim=1)


_SCORES = ("joint_energy", "maxlogit", "msp", "max_sigmoid", "energy")

register_method(Method(
    name="jointenergy",
    description="multi-label BCE, linear head, JointEnergy score (baseline of SNoJoE)",
    task="multilabel", head="linear", make_loss=BCEWithLogits, spectral_norm=False,
    loss_params={"pos_weight": 1.0}, scores=_SCORES, baseline=None,
    paper="Wang, Liu, Bocchieri, Li, NeurIPS 2021 (arXiv 2109.14162)",
))

register_method(Method(
    name="snojoe",
    description="multi-label BCE with spectral norm on every backbone conv, JointEnergy score",
    task="multilabel", head="linear", make_loss=BCEWithLogits, spectral_norm=True,
    model_params={"spectral_norm_linear": False},
    loss_params={"pos_weight": 1.0}, scores=_SCORES, baseline="jointenergy",
    paper="Mei, Wang, Zhang, Wang, arXiv 2405.04759 (SNoJoE)",
))
