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

from .checks import MAX_PROJECTIONS, whole
from .errors import DataError, OODCoreError, unknown
from .models import CentersHead, CosineHead, L2NormHead

# How a head compares features with its class vectors. The ``mlp-bn`` head of build_model is a
# hidden layer (the model's features) followed by a linear head, so it is of kind "linear".
HEAD_KINDS = ("linear", "cosine", "l2norm", "centers")

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
    n_proj = whole(n_proj, "n_proj (random projections)", 1, MAX_PROJECTIONS)
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


def jacobian_norms(model: nn.Module, sets, probe_size: int | None = None, **kw) -> dict[str, np.ndarray]:
    """:func:`jacobian_norm` of the first ``probe_size`` samples (None: all) of each set of the
    mapping ``sets`` (name -> inputs), in its order: the one per-set loop. Keyword arguments go to
    :func:`jacobian_norm`; every set gets the same ``seed``. Cost: one :func:`jacobian_norm` per set."""
    return {name: jacobian_norm(model, x if probe_size is None else x[:probe_size], **kw) for name, x in sets.items()}


def jnd(norms, reference: str = "id") -> dict[str, float]:
    """Jacobian Norm Difference of every set of ``norms`` (name -> per-sample ||J||_F) against
    ``reference``: mean of the set - mean of ``reference`` (see :func:`jacobian_norm_difference`)."""
    ref = norms[reference].mean()
    return {name: float(v.mean() - ref) for name, v in norms.items() if name != reference}


def jacobian_norm_difference(model: nn.Module, x_known: torch.Tensor, x_unknown: torch.Tensor, **kw) -> float:
    """Jacobian Norm Difference (Park et al. 2022): JND = mean_unknown ||J||_F - mean_known ||J||_F.

    Positive when the representation varies faster on unknowns than on known-class
    samples, which is what the paper ties to good open-set recognition. Keyword arguments
    go to :func:`jacobian_norm` (method, n_proj, normalize, chunk_size, seed); the cost is
    that of two :func:`jacobian_norm` calls.
    """
    return jnd(jacobian_norms(model, {"known": x_known, "unknown": x_unknown}, **kw), "known")["unknown"]


def jacobian_norm_path(model: nn.Module, x_start: torch.Tensor, x_end: torch.Tensor, steps: int = 33,
                       **kw) -> tuple[np.ndarray, np.ndarray]:
    """||J||_F along the straight path x(t) = (1 - t) x_start + t x_end, t = 0 .. 1.

    ``x_start`` and ``x_end`` are single inputs (the model's input shape, no batch axis).
    Returns ``(t, norms)``, both of shape (steps,). Between two samples of one class the
    norm should stay low; between classes it should peak in the open space between them
    (Park et al.: inter-class learning raises the norm there). Keyword arguments go to
    :func:`jacobian_norm`; the cost is one :func:`jacobian_norm` call on ``steps`` inputs.
    """
    a, b = torch.as_tensor(x_start).float(), torch.as_tensor(x_end).float()
    if a.shape != b.shape:
        raise DataError(f"the two end points differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if int(steps) < 2:
        raise OODCoreError(f"steps must be >= 2, got {steps}")
    t = torch.linspace(0, 1, int(steps))
    path = a.unsqueeze(0) + t.view(-1, *([1] * a.dim())) * (b - a).unsqueeze(0)
    return t.double().numpy(), jacobian_norm(model, path, **kw)


def jacobian_norm_map(model: nn.Module, bounds: tuple[float, float, float, float], resolution: int = 64,
                      **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """||J||_F over a grid of the plane, for models with 2-D inputs (the ``toy2d`` benchmark).

    ``bounds`` = (x_min, x_max, y_min, y_max); the grid has ``resolution`` points per axis.
    Returns ``(xs, ys, norms)`` with norms of shape (resolution, resolution), indexed
    [y, x] as plotting libraries expect for a heatmap. Keyword arguments go to
    :func:`jacobian_norm` (``method="exact"`` is cheap here: d passes of a tiny MLP).
    Cost: resolution^2 Jacobians.
    """
    x_min, x_max, y_min, y_max = (float(v) for v in bounds)
    if not (x_min < x_max and y_min < y_max):
        raise OODCoreError(f"bounds must be (x_min, x_max, y_min, y_max) with min < max, got {bounds}")
    if int(resolution) < 2:
        raise OODCoreError(f"resolution must be >= 2, got {resolution}")
    xs = np.linspace(x_min, x_max, int(resolution))
    ys = np.linspace(y_min, y_max, int(resolution))
    gx, gy = np.meshgrid(xs, ys)  # (res_y, res_x)
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    norms = jacobian_norm(model, grid, **kw)
    return xs, ys, norms.reshape(gx.shape)


def plane_bounds(x, margin: float = 0.25) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) of 2-D points, widened by ``margin`` times each range."""
    p = _np(x)
    if p.ndim != 2 or p.shape[1] != 2:
        raise DataError(f"expected 2-D points of shape (N, 2), got {p.shape}")
    lo, hi = p.min(axis=0), p.max(axis=0)
    pad = margin * np.maximum(hi - lo, 1e-6)
    return float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1])


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
    DB = (1/K) sum_k max_{l != k} (s_k + s_l) / M_kl, as ``sklearn.metrics.davies_bouldin_score``
    computes it (pairs of coincident means count as 0). Needs at least two classes.
    """
    from sklearn.metrics import davies_bouldin_score

    z, y = _check(z, y)
    k = len(np.unique(y))
    if k < 2:
        raise DataError("the Davies-Bouldin index needs at least two classes")
    if k == len(y):  # one sample per class (a tiny split): no spread, so 0; sklearn refuses this case
        return 0.0
    return float(davies_bouldin_score(z, y))


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

    P is the orthogonal projector onto the row space of ``weight`` (K, d), built from
    :func:`principal_subspace` (a rank-deficient W is handled). 0 for h in span{w_c}, 1 for
    h orthogonal to every w_c; NaN for h = 0. Wu et al. (arXiv 2405.17816): OOD features
    should have a larger share than ID features after training with the separation loss.
    """
    h, w = _np(features), _np(weight)
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1]:
        raise OODCoreError(f"features must be (N, d) and weight (K, d) with the same d; got "
                           f"{tuple(h.shape)} and {tuple(w.shape)}")
    basis = principal_subspace(weight=w, rtol=rtol)
    residual = h - (h @ basis.T) @ basis  # computed directly: 1 - inside share loses digits near 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return (residual ** 2).sum(axis=1) / (h ** 2).sum(axis=1)


def principal_subspace(weight=None, class_means_=None, k: int | None = None, rtol: float = 1e-6) -> np.ndarray:
    """Orthonormal basis (r, d) of a model's principal feature subspace; give exactly one source.

    ``weight`` (K, d): span{w_c}, the classifier's row space (what the logits can see); rank
      r <= K, from the SVD of W (singular values below ``rtol`` * the largest dropped).
    ``class_means_`` (K, d): the top ``k`` directions of the *centred* class means
      M = [mu_c - mu_G] (default k = K - 1, the most a centred mean matrix can span), from
      the SVD of M. Under neural collapse both subspaces coincide (NC3).
    Cost: one SVD of a (K, d) matrix.
    """
    if (weight is None) == (class_means_ is None):
        raise OODCoreError("give exactly one of weight=(K, d) classifier weights or class_means_=(K, d) class means")
    if weight is not None:
        a = _np(weight)
    else:
        m = _np(class_means_)
        a = m - m.mean(axis=0)
    if a.ndim != 2 or a.shape[0] == 0:
        raise DataError(f"expected a (K, d) matrix, got shape {a.shape}")
    _, s, vh = np.linalg.svd(a, full_matrices=False)
    keep = s > rtol * s.max() if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    if class_means_ is not None:
        k = a.shape[0] - 1 if k is None else int(k)
        if k < 1:
            raise OODCoreError(f"k must be >= 1, got {k}")
        keep &= np.arange(len(s)) < k
    return vh[keep]


def subspace_energy_share(features, basis) -> np.ndarray:
    """Per-sample share of feature energy inside the subspace spanned by ``basis``: ||P h||^2 / ||h||^2.

    ``basis`` is (r, d) with orthonormal rows (see :func:`principal_subspace`), so
    P h = B^T B h. 1 = the feature lies in the subspace, 0 = it is orthogonal to it; the
    share in the orthogonal complement is 1 minus this. NaN for h = 0. Cost: O(N r d).
    """
    h, b = _np(features), _np(basis)
    if h.ndim != 2 or b.ndim != 2 or h.shape[1] != b.shape[1]:
        raise DataError(f"features must be (N, d) and basis (r, d) with the same d; got {h.shape} and {b.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((h @ b.T) ** 2).sum(axis=1) / (h ** 2).sum(axis=1)


def cosine_matrix(a, b) -> np.ndarray:
    """(K, L) cosine similarities between the rows of ``a`` (K, d) and ``b`` (L, d).

    With (a, b) = :func:`head_comparison` (centred class means, classifier vectors), a
    collapsed network shows a dominant diagonal (NC3, self-duality). Zero rows give 0, not NaN.
    """
    a, b = _np(a), _np(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DataError(f"expected (K, d) and (L, d) matrices with the same d; got {a.shape} and {b.shape}")
    return _unit_rows(a) @ _unit_rows(b).T


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay 0 (not NaN)."""
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(n > 0, n, 1)


def feature_norm_stats(features) -> dict:
    """Summary of ||z||_2 over the rows: mean, std (ddof 0), min, 5/25/50/75/95th percentile, max."""
    norms = np.linalg.norm(_np(features), axis=1)
    if norms.size == 0:
        raise DataError("no features to summarise")
    q = np.percentile(norms, [5, 25, 50, 75, 95])
    return {"mean": float(norms.mean()), "std": float(norms.std()), "min": float(norms.min()),
            "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": float(norms.max())}


# --------------------------------------------------------------------------- neural collapse
PINV_RTOL = 1e-10  # eigenvalues of Sigma_B below this times the largest count as 0 in nc1
NC_KEYS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3", "nc4")


def _check_classifier(features, labels, weight, head: str):
    """Features (N, d), labels (N,) in 0..C-1 and class vectors (C, d), C >= 2, as arrays."""
    h, y = _check(features, labels)
    w = _np(weight)
    if head not in HEAD_KINDS:
        raise unknown("head kind", head, HEAD_KINDS)
    c = int(w.shape[0]) if w.ndim == 2 else 0
    if w.ndim != 2 or w.shape[1] != h.shape[1]:
        raise DataError(f"weight must be (C, d) with d = {h.shape[1]} (the feature dimension); got {w.shape}")
    if c < 2:
        raise DataError("neural-collapse metrics need at least two classes")
    if y.min() < 0 or y.max() >= c:
        raise DataError(f"labels must lie in 0..{c - 1} (one per row of weight); got {y.min()}..{y.max()}")
    return h, y, w


def head_comparison(features, labels, weight, head: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """``(M, V)``: centred class means and classifier vectors, both (C, d), in the space where a
    head of kind ``head`` (:data:`HEAD_KINDS`) compares features with its class
    vectors. NC3 (:func:`nc_metrics`) and the class-mean-vs-classifier cosines
    (:func:`geometry_summary`) compare exactly these two matrices.

    h = ``features`` (N, d), ``weight`` (C, d) = the head's raw class vectors
    (:func:`classifier_vectors`), p_k = share of the samples in class k, u = h/||h||:
      linear   M = [mu_c(h) - mu_G(h)],  V = W             (logits W h + b; Papyan et al.)
      l2norm   M = [mu_c(u) - mu_G(u)],  V = W             (logits W u + b: only the direction of h reaches the head)
      cosine   M = [mu_c(u) - mu_G(u)],  V = w_c/||w_c||   (logits s cos(h, w_c): neither ||h|| nor ||w_c|| matters)
      centers  M = [mu_c(h) - mu_G(h)],  V = c_k - sum_j p_j c_j
    The centres head is linear in disguise: -||h - c_k||^2 = 2 c_k.h - ||c_k||^2 - ||h||^2, rows
    2 c_k that the softmax sees only up to a common shift (it moves every logit by the same
    amount); the shift that centres them like M (mu_G = sum_j p_j mu_j) is taken, so a common
    offset of all centres (which only changes the implicit biases) does not count.

    Perfect collapse, where NC3 = 0 and the diagonal cosines are 1: every sample on its class
    mean (any global shift of the features), the centred means a simplex ETF, and
      linear   W = lambda M (lambda > 0);
      l2norm   the same for the directions u (per-sample norms are free, the head cannot see
               them): W = lambda M of u;
      cosine   directions collapsed as for l2norm, each w_c any positive multiple of row c of M
               (rows of equal length after normalising: the ETF's means are equinorm);
      centers  c_k = mu_k + o for any common offset o.
    For the normalising heads a global shift must be orthogonal to the ETF, otherwise the
    directions u do not form an ETF (the head then sees a different geometry).
    Cost: O(N d).
    """
    h, y, w = _check_classifier(features, labels, weight, head)
    c = w.shape[0]
    if head in ("l2norm", "cosine"):
        h = _unit_rows(h)
    m = class_means(h, y, num_classes=c) - h.mean(axis=0)
    if head == "cosine":
        w = _unit_rows(w)
    elif head == "centers":
        w = w - (np.bincount(y, minlength=c) / len(y)) @ w
    return m, w


def _head_logits(h: np.ndarray, w: np.ndarray, bias, head: str) -> np.ndarray:
    """Logits of a ``head`` with raw class vectors ``w``, up to a positive scale (enough for argmax)."""
    if head in ("cosine", "centers") and bias is not None:
        raise OODCoreError(f"a {head} head has no bias; pass bias=None")
    b = 0.0 if bias is None else _np(bias)
    if head == "linear":
        return h @ w.T + b
    if head == "l2norm":
        return _unit_rows(h) @ w.T + b
    if head == "cosine":
        return _unit_rows(h) @ _unit_rows(w).T  # the head's scale s > 0 does not move the argmax
    return -((h[:, None, :] - w[None, :, :]) ** 2).sum(axis=2)


def nc_metrics(features, labels, weight, bias=None, logits=None, head: str = "linear") -> dict[str, float]:
    """Neural-collapse metrics (Papyan, Han, Donoho, PNAS 2020); every one tends to 0 under collapse.

    h_i = features (N, d) with labels y_i in 0..C-1 (every class present), mu_c = class
    means, mu_G = mean of all samples, M = [mu_c - mu_G] (d x C), W = ``weight`` (C, d).
      Sigma_W = (1/N) sum_i (h_i - mu_y)(h_i - mu_y)^T, Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T
      nc1 = Tr(Sigma_W Sigma_B^+) / C                    (within-class variability collapse)
      nc2_equinorm = std_c ||mu_c - mu_G|| / mean_c ||mu_c - mu_G||
      nc2_equiangular = std_{c != c'} cos(mu_c - mu_G, mu_c' - mu_G)
      nc2_maxangle = mean_{c != c'} |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C - 1)|  (simplex ETF)
      nc3 = || V/||V||_F - M'/||M'||_F ||_F^2 over (C, d) rows  (classifier aligned with the means)
      nc4 = share of samples with argmax_c logits != argmin_c ||h - mu_c||  (nearest class mean)
    ``head`` (:data:`HEAD_KINDS`, default "linear") is the kind of head ``weight``
    belongs to; nc3 compares (M', V) = :func:`head_comparison` (for "linear" M' = M and
    V = W, Papyan's definition), nc1, nc2 and nc4 always use the raw features h.
    Standard deviations use ddof 0; Sigma_B^+ is the Moore-Penrose pseudo-inverse with
    eigenvalues below :data:`PINV_RTOL` times the largest treated as 0. The logits
    for nc4 are ``logits`` when given, else the head's own logits from ``weight`` (and
    ``bias`` for the linear and l2norm heads). Cost: O(N d^2 + d^3) (one pseudo-inverse), plus
    O(N C d) for a centres head's default logits. Returns floats keyed by :data:`NC_KEYS`;
    only for single-label (multiclass) models.
    """
    h, y, w = _check_classifier(features, labels, weight, head)
    c = w.shape[0]
    mu = class_means(h, y, num_classes=c)
    mu_g = h.mean(axis=0)
    m = mu - mu_g  # (C, d): rows are the centred means (the columns of M)
    dev = h - mu[y]
    sigma_w = dev.T @ dev / len(h)
    sigma_b = m.T @ m / c
    # Sigma_B has rank <= C - 1 < d: its null-space eigenvalues are rounding noise (~1e-16 of
    # the largest), which a default-tolerance pseudo-inverse may invert into huge numbers.
    nc1 = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rtol=PINV_RTOL, hermitian=True)) / c)
    norms = np.linalg.norm(m, axis=1)
    off = ~np.eye(c, dtype=bool)
    cos = cosine_matrix(m, m)[off]
    m3, v3 = head_comparison(h, y, w, head=head)
    m_f, v_f = np.linalg.norm(m3), np.linalg.norm(v3)
    nc3 = float(((v3 / v_f - m3 / m_f) ** 2).sum()) if m_f > 0 and v_f > 0 else float("nan")
    logits = _head_logits(h, w, bias, head) if logits is None else _np(logits)
    if logits.shape != (len(h), c):
        raise DataError(f"logits must be (N, C) = {(len(h), c)}, got {logits.shape}")
    nearest = ((mu ** 2).sum(axis=1) - 2 * h @ mu.T).argmin(axis=1)  # ||h - mu_c||^2 up to ||h||^2
    return {"nc1": nc1,
            "nc2_equinorm": float(norms.std() / norms.mean()) if norms.mean() > 0 else float("nan"),
            "nc2_equiangular": float(cos.std()),
            "nc2_maxangle": float(np.abs(cos + 1.0 / (c - 1)).mean()),
            "nc3": nc3,
            "nc4": float((logits.argmax(axis=1) != nearest).mean())}


# --------------------------------------------------------------------------- whole-model summaries
def head_kind(model: nn.Module) -> str:
    """The kind of a model's head, one of :data:`HEAD_KINDS`: from its class, and
    "linear" for any other head with a (K, d) ``weight`` (e.g. a plain ``nn.Linear``)."""
    head = getattr(model, "head", None)
    for cls, kind in ((CosineHead, "cosine"), (L2NormHead, "l2norm"), (CentersHead, "centers")):
        if isinstance(head, cls):  # before the linear fallback: L2NormHead is an nn.Linear
            return kind
    classifier_vectors(model)  # raises the one-line error for a head without class vectors
    return "linear"


def classifier_vectors(model: nn.Module) -> torch.Tensor:
    """The raw (K, d) class vectors of a model's head: ``head.weight`` (linear, cosine, l2norm
    heads) or ``head.centers`` (centres head), detached on the CPU. Their span is what
    :func:`orthogonal_energy_share` uses; to compare them with class means (NC3, cosines) pass
    them through :func:`head_comparison` with ``head=``:func:`head_kind` of the model."""
    head = getattr(model, "head", None)
    for name in ("weight", "centers"):
        v = getattr(head, name, None)
        if isinstance(v, torch.Tensor) and v.dim() == 2:
            return v.detach().float().cpu()
    raise OODCoreError("this needs a model whose head has a (K, d) weight or centres matrix "
                       "(model.head.weight or model.head.centers)")


def model_geometry_snapshot(model: nn.Module, task: str, x_train: torch.Tensor, y_train: torch.Tensor,
                            x_known: torch.Tensor, x_unknown: torch.Tensor | None, n_proj: int = 8,
                            seed: int = 0) -> dict[str, float]:
    """The numbers the training loop records per epoch (see ``TrainConfig.geometry_every``).

    Multiclass (when every class is in the probe): :func:`nc_metrics` of the training probe, with the head's class vectors
    (:func:`classifier_vectors`) compared as its kind requires (:func:`head_kind`) and the model's own logits for nc4. Every task: the mean
    Jacobian norm (``method="estimate"``, ``n_proj`` projections, fixed ``seed`` so epochs
    are comparable) of the known and unknown probes and their difference ``jnd``.
    Cost: one forward pass over the probes plus 2 x ``n_proj`` backward passes.
    """
    from .evaluate import extract_outputs  # here, not at the top: evaluate imports scores, recipes import us

    out: dict[str, float] = {}
    w = classifier_vectors(model)
    # NC needs every class in the probe; a tiny probe may miss one: then the NC keys are left out
    if task == "multiclass" and len(torch.unique(torch.as_tensor(y_train))) == w.shape[0]:
        o = extract_outputs(model, x_train)
        out.update(nc_metrics(o.features, y_train, w, logits=o.logits, head=head_kind(model)))
    if x_unknown is not None and len(x_unknown):
        norms = jacobian_norms(model, {"known": x_known, "unknown": x_unknown}, method="estimate", n_proj=n_proj,
                               seed=seed)
        out.update(jacobian_known=float(norms["known"].mean()), jacobian_unknown=float(norms["unknown"].mean()),
                   jnd=jnd(norms, "known")["unknown"])
    return out


def jacobian_norms_by_set(model: nn.Module, bench, method: str = "estimate", n_proj: int = 16,
                          probe_size: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`jacobian_norms` of the first ``probe_size`` samples of the ID test split (key
    ``"id"``) and of every OOD set of ``bench``."""
    return jacobian_norms(model, bench.inputs(training=False), probe_size, method=method, n_proj=n_proj, seed=seed)


def class_mean_subspace(features, labels, num_classes: int) -> np.ndarray:
    """:func:`principal_subspace` of the centred class means of labelled features (top C-1 directions)."""
    return principal_subspace(class_means_=class_means(features, labels, num_classes=num_classes))


def geometry_summary(model: nn.Module, bench, outputs: dict | None = None, jacobian: str | None = "estimate",
                     n_proj: int = 16, probe_size: int = 256, seed: int = 0) -> dict:
    """Every geometry number of one model on one benchmark, JSON-able (used by the CLI and the app).

    ``outputs`` are reused model outputs (:func:`ood_core.evaluate.extract_benchmark_outputs`);
    missing sets are extracted once and added to it. Keys:

    * ``nc`` (multiclass): :func:`nc_metrics` of the training split.
    * ``class_geometry`` (multiclass): :func:`geometry_report` of the ID test split.
    * ``cosine_means_vs_weights`` (multiclass): :func:`cosine_matrix` of the centred class
      means (training split) against the head's class vectors, both as :func:`head_comparison`
      prepares them for the model's :func:`head_kind` (rows: means, columns: classes).
    * ``feature_norms``: :func:`feature_norm_stats` per set ("id" = ID test split).
    * ``energy_outside_span_w``: mean :func:`orthogonal_energy_share` per set.
    * ``energy_inside_mean_subspace`` (multiclass): mean :func:`subspace_energy_share` per set
      for the top-(C-1) centred class-mean directions.
    * ``jacobian_mean`` and ``jnd`` (unless ``jacobian`` is None): mean ||J||_F of up to
      ``probe_size`` samples per set (the first ones; ``jacobian`` = "estimate" or "exact")
      and, per OOD set, its JND against the ID test split.
    """
    from .evaluate import extract_benchmark_outputs

    outputs = extract_benchmark_outputs(model, bench, outputs=outputs)
    multiclass = bench.task == "multiclass"
    sets = ["id", *bench.ood]
    w = classifier_vectors(model)
    summary: dict = {"task": bench.task}
    if multiclass:
        train = outputs["train"]
        kind = head_kind(model)
        summary["nc"] = nc_metrics(train.features, bench.train.y, w, logits=train.logits, head=kind)
        summary["class_geometry"] = geometry_report(outputs["id"].features, bench.test.y)
        summary["cosine_means_vs_weights"] = cosine_matrix(
            *head_comparison(train.features, bench.train.y, w, head=kind)).tolist()
        basis = class_mean_subspace(train.features, bench.train.y, bench.num_classes)
        summary["energy_inside_mean_subspace"] = {
            s: float(np.nanmean(subspace_energy_share(outputs[s].features, basis))) for s in sets}
    summary["feature_norms"] = {s: feature_norm_stats(outputs[s].features) for s in sets}
    summary["energy_outside_span_w"] = {s: float(np.nanmean(orthogonal_energy_share(outputs[s].features, w)))
                                        for s in sets}
    if jacobian is not None:
        norms = jacobian_norms_by_set(model, bench, method=jacobian, n_proj=n_proj, probe_size=probe_size, seed=seed)
        summary["jacobian_mean"] = {s: float(v.mean()) for s, v in norms.items()}
        summary["jnd"] = jnd(norms)
    return summary
