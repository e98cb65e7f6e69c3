"""Multi-label OOD detection: JointEnergy (baseline) and SNoJoE (spectral-normalised JointEnergy).

* JointEnergy: Wang, Liu, Bocchieri, Li, "Can multi-label classification networks know what
  they don't know?", NeurIPS 2021 (arXiv 2109.14162). A multi-label network with K
  per-label logits f_i(x) is trained with binary cross-entropy; its OOD score sums the
  label-wise free energies, S(x) = sum_i log(1 + exp(f_i(x))).
* SNoJoE: Mei, Wang, Zhang, Wang, "Spectral Normalized Joint Energy for Multi-Label
  Out-of-Distribution Detection" (arXiv 2405.04759). The same score on a network trained
  with spectral normalisation (``torch.nn.utils.parametrizations.spectral_norm``, one power
  iteration per training forward) on every convolution of the backbone; the classifier head
  and BatchNorm are left alone, as in the reference code. Adam, BCE.

Both recipes: SmallCNN backbone (``norm="batch"``: bias-free conv -> BatchNorm2d -> ReLU, like
the reference ResNet), the reference head ``mlp-bn`` (global average pool -> Linear(d, 256)
-> BatchNorm1d -> ReLU -> Linear(256, K); 256 hidden units where the reference has 1000),
BCE (:class:`BCEWithLogits`), Adam without weight decay, the same TrainConfig. They differ
**only** in the model's ``spectral_norm`` flag. Scores follow the project convention:
**high = ID**.

What spectral norm changes in the reference layout (every conv followed by BatchNorm)
-------------------------------------------------------------------------------------
In training mode BatchNorm computes (u - mean u) / sqrt(var u + eps) per channel, so
BN(c W x) = BN(W x) for any c > 0 (up to eps). Spectral norm replaces the raw weight W by
W / sigma(W), sigma a positive scalar, so the network as a function of its *raw* parameters
is the same function: F_SN(W) = F(W / sigma(W)) = F(W). Three consequences:

1. The function class is unchanged (no Lipschitz bound survives the BatchNorm after it).
2. The loss of the raw parameters is the same function, so is its gradient. (Directly: with
   G the gradient at W_n = W/sigma and sigma = u^T W v from the power iteration,
   d/dW L(W/sigma) = (G - <G, W_n> u v^T) / sigma, and scale invariance gives <G, W_n> = 0,
   leaving G/sigma, which is also d/dW L(W).) From the same initial raw weights Adam (or SGD),
   with or without weight decay on the raw W, takes the same steps.
3. The "effective learning rate ~ 1/sigma" of the normalised weight W/sigma is real but holds
   with and without spectral norm alike: BatchNorm already makes the function depend only on
   each channel's direction, and the optimiser sees the same raw W in both cases.

What remains is BatchNorm's eps (relative weight eps sigma^2 / var(W x)), the running
statistics used at test time (an exponential average of pre-activations whose scale 1/sigma_t
drifts during training; at the start of a fine-tune the pretrained statistics belong to the
unnormalised weights), and float rounding, which training amplifies like a change of seed.
JointEnergy's released training script runs BatchNorm on batch statistics (it calls
``model.train()`` every epoch and only freezes the BN affine parameters), so this holds for the
reference protocol too: there SN is a re-parametrisation whose effect on the trained network
is of the size of seed noise. At our scale the same: for the same raw weights the training-mode
logits agree to float error (tested), and two runs with the same seed end apart only as far
as rounding drives them (tested: a few tenths of a logit after 2 epochs, like two seeds).
``benchmarks/snojoe_ablation.py`` measures whether any FPR95 difference survives a paired
interval over seeds.

Without BatchNorm (``norm="none"``, convs with bias) the scale is no longer undone by the next
layer. Positively homogeneous layers (ReLU, max/average pool) give
g(x; W/sigma, b) = g(x; W, b') / prod_l sigma_l with the bias of layer l rescaled by
prod_{k<=l} sigma_k, so the function class is again the same up to one scalar, which a linear
head absorbs by growing its weight (and a BatchNorm1d head removes outright); but the loss of
the raw parameters differs, so the training dynamics, and with finite training the trained
network, do. That variant is in the ablation; the recipes keep the reference layout.
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

# What both recipes share; they differ only in ``spectral_norm`` (see the module docstring).
MODEL_PARAMS = {"norm": "batch", "head_hidden": 256, "spectral_norm_linear": False}
TRAIN_DEFAULTS = {"weight_decay": 0.0}  # the reference's plain Adam has none

register_method(Method(
    name="jointenergy",
    description="multi-label BCE, reference MLP-BN head, JointEnergy score (baseline of SNoJoE)",
    task="multilabel", head="mlp-bn", make_loss=BCEWithLogits, spectral_norm=False,
    model_params=dict(MODEL_PARAMS), train_defaults=dict(TRAIN_DEFAULTS),
    loss_params={"pos_weight": 1.0}, scores=_SCORES, baseline=None,
    paper="Wang, Liu, Bocchieri, Li, NeurIPS 2021 (arXiv 2109.14162)",
))

register_method(Method(
    name="snojoe",
    description="multi-label BCE with spectral norm on every backbone conv, MLP-BN head, JointEnergy score",
    task="multilabel", head="mlp-bn", make_loss=BCEWithLogits, spectral_norm=True,
    model_params=dict(MODEL_PARAMS), train_defaults=dict(TRAIN_DEFAULTS),
    loss_params={"pos_weight": 1.0}, scores=_SCORES, baseline="jointenergy",
    paper="Mei, Wang, Zhang, Wang, arXiv 2405.04759 (SNoJoE)",
))
