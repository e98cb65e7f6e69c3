"""Models: a backbone that maps inputs to features z, and a head that maps z to logits.

Every model returns ``ModelOutput(features, logits)``; ``features`` is the backbone's
un-normalised penultimate representation z (the cosine and L2 heads normalise it
internally, so the feature-norm score still sees ||z||).

Backbones: ``smallcnn`` (grey 8x8 .. 28x28), ``mlp`` (vectors, e.g. toy2d), ``resnet18``
(torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 RGB).
Heads: ``linear`` (W z + b), ``cosine`` (scale * cos(z, w_k), unit features and weights),
``l2norm`` (W z/||z|| + b, Haas et al. 2023), ``centers`` (-||z - c_k||^2), ``mlp-bn``
(Linear(d, head_hidden) -> BatchNorm1d -> ReLU -> Linear(head_hidden, K), the classifier of
the JointEnergy / SNoJoE reference code, scaled down from 1000 hidden units to 256).
``spectral_norm=True`` wraps every conv (and, with ``spectral_norm_linear``, every linear)
layer of the backbone in ``torch.nn.utils.parametrizations.spectral_norm``; the head (all
of ``mlp-bn``) and BatchNorm are left alone.

SmallCNN's conv blocks are ``norm="batch"`` (bias-free conv -> BatchNorm -> ReLU, the
default) or ``norm="none"`` (conv with bias -> ReLU). The distinction matters for spectral
norm: BatchNorm undoes any positive rescaling of the conv in front of it, so W <- W/sigma(W)
changes nothing there (see :mod:`ood_core.recipes.multilabel`).

``features`` is always the input of the final linear classifier: the backbone output z for
the one-layer heads, the ReLU output of the hidden layer (``model.neck``) for ``mlp-bn``. So
``model.head`` is a plain linear layer whose weight classifies ``features`` for every head
that has one, and scores or geometry that read ``head.weight`` work unchanged.

A model is rebuilt from the JSON-able spec stored in its checkpoint, ``build_model(**spec)``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checks import MAX_CLASSES, MAX_WIDTH, finite, whole
from .errors import OODCoreError, unknown


class ModelOutput(NamedTuple):
    features: torch.Tensor  # (N, d) penultimate representation z
    logits: torch.Tensor  # (N, K)


NORMS = ("batch", "none")


def _conv_block(c_in: int, c_out: int, norm: str = "batch") -> nn.Sequential:
    if norm == "none":  # without BatchNorm the conv needs its own bias
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=True), nn.ReLU(inplace=True))
    # BatchNorm's shift makes a conv bias redundant
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _traced(x: torch.Tensor) -> bool:
    """Whether ``x`` carries derivatives that no_grad does not switch off: a ``torch.func``
    transform's wrapped tensor (jacfwd, jvp, vmap) or a forward-mode dual tensor."""
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    if wrapped is None or wrapped(x):
        return True  # unknown torch build: take the exact path
    return torch.autograd.forward_ad.unpack_dual(x).tangent is not None


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose forward pass without autograd is the elementwise maximum of the
    four strided sub-grids of each 2x2 window.

    The values are max_pool2d's (the max of the same four numbers; an odd last row or column is
    dropped, as its floor mode does; NaN propagates), but on the CPU it is about 10x faster:
    max_pool2d also builds the argmax indices, and took 36% of SmallCNN's inference on 8x8
    digits. With autograd on, under a ``torch.func`` transform or on forward-mode duals
    (training, input gradients, Jacobians, even under no_grad) it is max_pool2d itself, whose
    gradient goes to one position of a tie, so training runs and Jacobians are unchanged.
    """

    def __init__(self):
        super().__init__(2)

    def forward(self, x):
        if torch.is_grad_enabled() or x.dim() != 4 or _traced(x) or min(x.shape[-2:]) < 2:
            return super().forward(x)
        x = x[..., :x.shape[-2] // 2 * 2, :x.shape[-1] // 2 * 2]
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                             torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


class SmallCNN(nn.Module):
    """Three conv stages (32, 64, feature_dim channels), two 2x max-pools, global average pool.

    ``norm="batch"``: each conv is bias-free and followed by BatchNorm2d; ``norm="none"``: each
    conv has a bias and no normalisation follows it.
    """

    def __init__(self, in_channels: int = 1, feature_dim: int = 128, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise unknown("SmallCNN norm", norm, NORMS)
        self.net = nn.Sequential(
            _conv_block(in_channels, 32, norm), _conv_block(32, 32, norm), MaxPool2x2(),
            _conv_block(32, 64, norm), _conv_block(64, 64, norm), MaxPool2x2(),
            _conv_block(64, feature_dim, norm), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = feature_dim
        self.norm = norm

    def forward(self, x):
        return self.net(x)


class MLP(nn.Module):
    """Two hidden ReLU layers of width `hidden`, then a ReLU feature layer."""

    def __init__(self, in_features: int = 2, feature_dim: int = 32, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, feature_dim), nn.ReLU(),
        )
        self.feature_dim = feature_dim

    def forward(self, x):
        return self.net(x)


class ResNet18Small(nn.Module):
    """torchvision ResNet-18 with a 32x32 stem (3x3 conv, stride 1, no max-pool); 512 features."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.feature_dim = 512

    def forward(self, x):
        return self.net(x)


class LinearHead(nn.Linear):
    """logits = W z + b."""


class CosineHead(nn.Module):
    """logits_k = scale * cos(z, w_k): unit-normalised features and weight rows."""

    def __init__(self, in_features: int, out_features: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = float(scale)

    def forward(self, z):
        return self.scale * F.linear(F.normalize(z, dim=1), F.normalize(self.weight, dim=1))


class L2NormHead(nn.Linear):
    """logits = W z/||z||_2 + b (training-time normalisation of Haas et al. 2023)."""

    def forward(self, z):
        return super().forward(F.normalize(z, dim=1))


class CentersHead(nn.Module):
    """logits_k = -||z - c_k||_2^2 with learned class centres C (K, d) (Ando, arXiv 2111.12950).

    The centres live in the model so that the distance score (``min_distance``) can read them
    after training. Initialised N(0, 1/d) (so ||c_k|| is about 1). Distances are computed as
    sum((z - c_k)^2) (exact, never negative; memory N*K*d per batch).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)

    def forward(self, z):
        return -(z.unsqueeze(1) - self.centers.unsqueeze(0)).pow(2).sum(dim=2)


def mlp_bn_neck(in_features: int, hidden: int) -> nn.Sequential:
    """The hidden layer of the ``mlp-bn`` head: Linear(d, hidden) -> BatchNorm1d -> ReLU.

    With the final ``LinearHead(hidden, K)`` it is the classifier of the JointEnergy reference
    code (Wang et al., NeurIPS 2021; reused by SNoJoE, Mei et al., arXiv 2405.04759), there
    Linear(ch, 1000) -> BN1d -> ReLU -> Linear(1000, K) after global average pooling.
    """
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))


class OODModel(nn.Module):
    """backbone (+ neck) + head, returning ``ModelOutput(features, logits)``.

    ``features = neck(backbone(x))`` (the neck is the identity unless the head has a hidden
    layer) and ``logits = head(features)``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict, neck: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()  # Identity: no state_dict keys
        self.head = head
        self.spec = dict(spec)

    def forward(self, x) -> ModelOutput:
        z = self.neck(self.backbone(x))
        return ModelOutput(z, self.head(z))


BACKBONES = ("smallcnn", "mlp", "resnet18")
HEADS = ("linear", "cosine", "l2norm", "centers", "mlp-bn")
_NATIVE_NORM = {"smallcnn": "batch", "mlp": "none", "resnet18": "batch"}  # what each backbone has built in


def apply_spectral_norm(module: nn.Module, linear: bool = False) -> nn.Module:
    """Wrap every Conv (and optionally Linear) weight of `module` in spectral normalisation."""
    from torch.nn.utils.parametrizations import spectral_norm

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d) + ((nn.Linear,) if linear else ())
    for name, child in list(module.named_modules()):
        if isinstance(child, kinds):
            spectral_norm(child)
    return module


def check_input_shape(input_shape) -> tuple[int, ...]:
    """A model's input shape as a tuple: (D,) vectors or (C, H, W) images, each a whole number
    in 1..MAX_WIDTH (OODCoreError otherwise)."""
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or len(input_shape) not in (1, 3):
        raise OODCoreError(f"input_shape must be (D,) or (C, H, W), got {input_shape!r}")
    return tuple(whole(s, "each input_shape entry", 1, MAX_WIDTH) for s in input_shape)


def build_model(arch: str, num_classes: int, input_shape, head: str = "linear", feature_dim: int | None = None,
                spectral_norm: bool = False, spectral_norm_linear: bool = False, cosine_scale: float = 16.0,
                norm: str | None = None, head_hidden: int = 256) -> OODModel:
    """Build a model from explicit parameters (the spec stored in checkpoints).

    ``input_shape`` is (C, H, W) for images or (D,) for vectors. ``feature_dim`` is the
    backbone's output width d. ``norm`` is the backbone's normalisation: None = its own
    ("batch" for smallcnn and resnet18, "none" for mlp); only smallcnn offers both (see
    :class:`SmallCNN`). ``head_hidden`` is the hidden width of the ``mlp-bn`` head (ignored
    by the other heads).
    """
    if arch not in BACKBONES:
        raise unknown("architecture", arch, BACKBONES)
    input_shape = check_input_shape(input_shape)
    takes = "vectors (D,)" if arch == "mlp" else "images (C, H, W)"
    if len(input_shape) != (1 if arch == "mlp" else 3):
        fits = "smallcnn or resnet18" if len(input_shape) == 3 else "mlp"
        raise OODCoreError(f"the {arch} backbone takes {takes}, but this data has inputs of shape "
                           f"{tuple(input_shape)}; use the {fits} backbone (--arch)")
    num_classes = whole(num_classes, "num_classes", 1, MAX_CLASSES)
    if feature_dim is not None:
        feature_dim = whole(feature_dim, "feature_dim", 1, MAX_WIDTH)
    cosine_scale = finite(cosine_scale, "cosine_scale", positive=True)
    if not isinstance(spectral_norm, bool) or not isinstance(spectral_norm_linear, bool):
        raise OODCoreError(f"spectral_norm and spectral_norm_linear must be true or false, got "
                           f"{spectral_norm!r}, {spectral_norm_linear!r}")
    if arch in _NATIVE_NORM:
        norm = _NATIVE_NORM[arch] if norm is None else norm
        if norm != _NATIVE_NORM[arch] and arch != "smallcnn":
            raise OODCoreError(f"norm={norm!r} is not available for the {arch} backbone "
                               f"(only smallcnn has both 'batch' and 'none'; {arch} has {_NATIVE_NORM[arch]!r})")
    head_hidden = whole(head_hidden, "head_hidden (of the mlp-bn head)", 1, MAX_WIDTH)
    if arch == "smallcnn":
        backbone = SmallCNN(input_shape[0], feature_dim or 128, norm)
    elif arch == "mlp":
        backbone = MLP(input_shape[0], feature_dim or 32)
    elif arch == "resnet18":
        backbone = ResNet18Small(input_shape[0])
    else:
        raise unknown("architecture", arch, BACKBONES)
    d = backbone.feature_dim
    neck = None
    if head == "linear":
        head_mod = LinearHead(d, num_classes)
    elif head == "mlp-bn":
        neck, head_mod = mlp_bn_neck(d, head_hidden), LinearHead(head_hidden, num_classes)
    elif head == "cosine":
        head_mod = CosineHead(d, num_classes, cosine_scale)
    elif head == "l2norm":
        head_mod = L2NormHead(d, num_classes)
    elif head == "centers":
        head_mod = CentersHead(d, num_classes)
    else:
        raise unknown("head", head, HEADS)
    if spectral_norm:  # the backbone only: the neck belongs to the head, which stays unconstrained
        apply_spectral_norm(backbone, linear=spectral_norm_linear)
    spec = dict(arch=arch, num_classes=int(num_classes), input_shape=list(input_shape), head=head,
                feature_dim=int(d), spectral_norm=bool(spectral_norm),
                spectral_norm_linear=bool(spectral_norm_linear), cosine_scale=float(cosine_scale),
                norm=norm, head_hidden=head_hidden)
    return OODModel(backbone, head_mod, spec, neck)


def default_arch(input_shape) -> str:
    """The backbone used for a dataset's input shape: mlp for vectors, resnet18 for RGB, else smallcnn."""
    if len(input_shape) == 1:
        return "mlp"
    return "resnet18" if input_shape[0] == 3 else "smallcnn"


def head_weight(model: nn.Module) -> torch.Tensor:
    """The (K, d) weight of the model's classifier head (linear, cosine, l2norm or mlp-bn head;
    for mlp-bn it is the final layer's, which classifies ``features``)."""
    weight = getattr(getattr(model, "head", None), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise OODCoreError("this needs a model whose classifier head has a (K, d) weight matrix "
                           "(linear, cosine or l2norm head; model.head.weight)")
    return weight
