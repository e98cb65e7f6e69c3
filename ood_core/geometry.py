"""Geometry of the representation: Jacobian norms, class geometry (radii, centre distances,
separation ratio, Davies-Bouldin) and the share of feature energy outside span{w_c}.

Park, Park, Jeong, Teoh, "Understanding Open-Set Recognition by Jacobian Norm of
Representation" (arXiv 2209.11436; Pattern Recognition 2024) argue that intra-class
learning lowers ||df(x)/dx||_F on known classes while inter-class learning raises it in the
open space between classes; the gap between unknown and known samples (the Jacobian Norm
Difference, JND) is what open-set recognition relies on.

Notation: x is one input (any shape, n = numel(x) entries), z = backbone features in R^d,
f(x) = z/||z||_2 (``normalize=True``, the representation of a cosine head) or f(x) = z
(``normalize=False``); J(x) = df(x)/dx in R^{d x n}.

The model may return a :class:`ood_core.models.ModelOutput` (its ``features`` are used) or a
plain (N, d) tensor. Every function evaluates the model in eval mode (BatchNorm uses its
running statistics, so samples do not interact), with the parameters' ``requires_grad``
switched off for the duration, and restores both on exit. The results are numbers (NumPy),
never part of an autograd graph.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError, OODCoreError

JACOBIAN_METHODS = ("exact", "estimate")


def _representation(model: nn.Module, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    out = model(x)
    z = out.features if hasattr(out, "features") else out
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise OODCoreError("the model must return ModelOutput(features, logits) or an (N, d) feature tensor")
    return F.normalize(z, dim=1) if normalize else z


@contextlib.contextmanager
def _frozen_eval_mode(model: nn.Module):
    """Eval mode and parameters with requires_grad=False (only input gradients are needed,
    and autograd is much faster without the parameter branch); both restored on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else x.device


def _exact_sq(model, xb, normalize):
    """Squared Frobenius norms of the per-sample Jacobians of a chunk: jacrev (or jacfwd) + vmap.

    Reverse mode costs d vector-Jacobian products per sample, forward mode numel(x_i)
    Jacobian-vector products; the cheaper one is used (same Jacobian either way).
    """

    def f_single(xi):
        return _representation(model, xi.unsqueeze(0), normalize)[0]

    with torch.no_grad():
        d = _representation(model, xb[:1], normalize).shape[1]
    transform = torch.func.jacfwd if xb[0].numel() < d else torch.func.jacrev
    jac = torch.func.vmap(transform(f_single))(xb)  # (B, d, *x.shape[1:])
    return jac.flatten(1).pow(2).sum(1)


def _estimate_sq(model, xb, normalize, n_proj, gen):
    """Unbiased estimates of the squared Frobenius norms of a chunk: mean_p ||v_p^T J||^2."""
    xr = xb.detach().clone().requires_grad_(True)
    f = _representation(model, xr, normalize)
    acc = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
    for p in range(n_proj):
        # v drawn on the CPU from a seeded generator: the same numbers on every device.
        v = torch.randn(f.shape, generator=gen, dtype=f.dtype).to(f.device)
        # grad of sum_i v_i . f(x_i) w.r.t. x_i is v_i^T J(x_i): one pass for the whole chunk.
        (g,) = torch.autograd.grad(f, xr, grad_outputs=v, retain_graph=p < n_proj - 1)
        acc += g.flatten(1).pow(2).sum(1).double()
    return acc / n_proj


def jacobian_norm(model: nn.Module, x: torch.Tensor, method: str = "exact", n_proj: int = 16,
                  normalize: bool = True, chunk_size: int = 64, seed: int = 0) -> np.ndarray:
    """Per-sample Frobenius norm of the representation's input Jacobian, ||df(x)/dx||_F.

    ``f`` is the model's features, unit-normalised when ``normalize`` (f = z/||z||, the
    representation a cosine head sees); ``x`` is (N, ...) in the model's input format.
    Returns a float64 array of shape (N,), >= 0. No sign flip here (as a score, *low* = ID:
    see the ``jacobian_norm`` score, which negates it).

    method="exact": J(x_i) via ``torch.func.jacrev`` vmapped over the samples of a chunk of
      ``chunk_size``; ||J||_F = sqrt(sum of squared entries). Cost: about min(d, n) passes
      per chunk (d = feature dimension, n = numel(x_i); ``jacfwd`` is used when n < d),
      memory chunk_size * d * n numbers.
    method="estimate": Hutchinson-style random projections (Hoffman, Roberts, Yaida 2019):
      ||J||_F^2 = E_v ||v^T J||^2 for v ~ N(0, I_d), since E[v v^T] = I. Per chunk: one
      forward pass, then for each of ``n_proj`` projections one backward pass of
      sum_i v_i . f(x_i) for the whole chunk; its input gradient's i-th row is v_i^T J(x_i)
      because samples are independent in eval mode, so the per-sample squared norms are
      taken row by row (never the norm of the whole batch gradient). The mean over
      projections is unbiased for ||J||_F^2 (its relative std is about sqrt(2/n_proj) in the
      worst case); the square root returned is slightly biased low. Cost: n_proj backward
      passes per chunk. v comes from a CPU generator seeded by ``seed``: reproducible.
    """
    if method not in JACOBIAN_METHODS:
        raise OODCoreError(f"unknown Jacobian method {method!r}; choose one of: {', '.join(JACOBIAN_METHODS)}")
    if int(n_proj) < 1:
        raise OODCoreError(f"n_proj must be >= 1, got {n_proj}")
    if int(chunk_size) < 1:
        raise OODCoreError(f"chunk_size must be >= 1, got {chunk_size}")
    x = torch.as_tensor(x)
    if x.shape[0] == 0:
        raise DataError("cannot compute Jacobian norms of an empty set")
    if not x.is_floating_point():
        x = x.float()
    device = _model_device(model, x)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    with _frozen_eval_mode(model), torch.enable_grad():
        for i in range(0, x.shape[0], int(chunk_size)):
            xb = x[i:i + int(chunk_size)].to(device)
            if method == "exact":
                sq = _exact_sq(model, xb, normalize)
            else:
                sq = _estimate_sq(model, xb, normalize, int(n_proj), gen)
            out.append(sq.detach().double().cpu())
    return torch.cat(out).clamp_min(0).sqrt().numpy()


def jacobian_norm_difference(model: nn.Module, x_known: torch.Tensor, x_unknown: torch.Tensor, **kw) -> float:
    """Jacobian Norm Difference (Park et al. 2022): JND = mean_unknown ||J||_F - mean_known ||J||_F.

    Positive when the representation varies faster on unknowns than on known-class
    samples, which is what the paper ties to good open-set recognition. Keyword arguments
    go to :func:`jacobian_norm` (method, n_proj, normalize, chunk_size, seed); the cost is
    that of two :func:`jacobian_norm` calls.
    """
    known = jacobian_norm(model, x_known, **kw)
    unknown = jacobian_norm(model, x_unknown, **kw)
    return float(unknown.mean() - known.mean())


# --------------------------------------------------------------------------- class geometry
def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _check(z, y):
    z, y = _np(z), np.asarray(torch.as_tensor(y).cpu().numpy() if isinstance(y, torch.Tensor) else y)
    if z.ndim != 2 or y.ndim != 1 or len(z) != len(y):
        raise DataError(f"expected features (N, d) and labels (N,), got {z.shape} and {y.shape}")
    return z, y.astype(np.int64)


def class_means(z, y, num_classes: int | None = None) -> np.ndarray:
    """(K, d) mean feature of each class; K = ``num_classes`` or max(y) + 1. Empty classes are refused."""
    z, y = _check(z, y)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    counts = np.bincount(y, minlength=k)
    if (counts[:k] == 0).any():
        raise DataError(f"class(es) {np.flatnonzero(counts[:k] == 0).tolist()} have no sample")
    means = np.zeros((k, z.shape[1]))
    np.add.at(means, y, z)
    return means / counts[:k, None]


def class_radii(z, y, centers=None) -> np.ndarray:
    """(K,) per-class radius: mean Euclidean distance of a class's samples to its own centre.

    ``centers`` default to the class means of (z, y).
    """
    z, y = _check(z, y)
    c = class_means(z, y) if centers is None else _np(centers)
    dist = np.linalg.norm(z - c[y], axis=1)
    return np.bincount(y, weights=dist, minlength=len(c)) / np.maximum(np.bincount(y, minlength=len(c)), 1)


def center_distances(centers) -> np.ndarray:
    """(K, K) Euclidean distances between centres (0 on the diagonal)."""
    c = _np(centers)
    return np.sqrt(np.maximum(((c[:, None] - c[None]) ** 2).sum(-1), 0))


def separation_ratio(z, y, centers=None) -> float:
    """Fisher-like separation index: mean centre-to-centre distance / mean class radius.

    inter = mean over pairs k != l of ||c_k - c_l||, intra = mean over classes of the class
    radius (:func:`class_radii`). Scale-invariant; higher = more compact, better separated.
    ``centers`` default to the class means, which makes models with and without learned
    centres comparable.
    """
    z, y = _check(z, y)
    c = class_means(z, y) if centers is None else _np(centers)
    k = len(c)
    if k < 2:
        raise DataError("the separation ratio needs at least two classes")
    inter = center_distances(c)[~np.eye(k, dtype=bool)].mean()
    return float(inter / class_radii(z, y, c).mean())


def davies_bouldin(z, y) -> float:
    """Davies-Bouldin index (Davies & Bouldin 1979) of the labelled clusters; lower = better separated.

    s_k = mean distance of class k's samples to its mean, M_kl = ||mu_k - mu_l||,
    DB = (1/K) sum_k max_{l != k} (s_k + s_l) / M_kl (same definition as
    ``sklearn.metrics.davies_bouldin_score``; pairs of coincident means count as 0 there and here).
    """
    z, y = _check(z, y)
    c = class_means(z, y)
    s = class_radii(z, y, c)
    m = center_distances(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (s[:, None] + s[None]) / m
    r[~np.isfinite(r)] = 0.0
    np.fill_diagonal(r, -np.inf)
    return float(r.max(axis=1).mean())


def geometry_report(z, y, centers=None) -> dict:
    """Radii, centre distances, separation ratio and Davies-Bouldin of features z with labels y."""
    z, y = _check(z, y)
    c = class_means(z, y) if centers is None else _np(centers)
    radii = class_radii(z, y, c)
    cd = center_distances(c)
    return {"radii": radii.tolist(), "mean_radius": float(radii.mean()),
            "center_distances": cd.tolist(),
            "mean_center_distance": float(cd[~np.eye(len(c), dtype=bool)].mean()),
            "separation_ratio": separation_ratio(z, y, c), "davies_bouldin": davies_bouldin(z, y)}


# --------------------------------------------------------------------------- subspaces
def orthogonal_energy_share(features, weight, rtol: float = 1e-6) -> np.ndarray:
    """Per-sample share of feature energy outside span{w_c}: ||h - P h||^2 / ||h||^2.

    P is the orthogonal projector onto the row space of ``weight`` (K, d), built from an
    orthonormal basis (SVD; singular values below ``rtol`` * the largest are dropped, so a
    rank-deficient W is handled). 0 for h in span{w_c}, 1 for h orthogonal to every w_c;
    NaN for h = 0. Wu et al. (arXiv 2405.17816): OOD features should have a larger share
    than ID features after training with the separation loss.
    """
    h = torch.as_tensor(features.detach() if isinstance(features, torch.Tensor) else np.asarray(features)).double()
    w = torch.as_tensor(weight.detach() if isinstance(weight, torch.Tensor) else np.asarray(weight)).double()
    if h.dim() != 2 or w.dim() != 2 or h.shape[1] != w.shape[1]:
        raise OODCoreError(f"features must be (N, d) and weight (K, d) with the same d; got "
                           f"{tuple(h.shape)} and {tuple(w.shape)}")
    h, w = h.cpu(), w.cpu()
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    basis = vh[s > rtol * s.max()] if s.numel() and s.max() > 0 else vh[:0]  # (r, d) orthonormal rows
    proj = (h @ basis.T) @ basis
    return ((h - proj).pow(2).sum(dim=1) / h.pow(2).sum(dim=1)).numpy()  # 0/0 = NaN for h = 0
