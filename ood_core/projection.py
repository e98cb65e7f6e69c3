"""2-D maps (PCA or UMAP) of ID and OOD feature sets, seeded and optionally cached on disk.

:func:`project` takes a dict ``set name -> (n, d) features`` (the ID set plus any OOD sets)
and returns one (n, 2) map per set, all in the same coordinates. Two methods:

* ``pca``: a linear map, fitted on the union of all sets or on the ID set only. It
  extrapolates linearly, so a point far from ID in feature space stays far in the map
  (distances can only shrink, never be invented). Exact and deterministic.
* ``umap``: UMAP (McInnes, Healy, Melville, arXiv 1802.03426), which keeps local
  neighbourhoods but not global distances. Seeded with ``random_state`` (so single-threaded).

The UMAP ``transform`` pitfall (``fit_on="id"``): ``UMAP.transform`` initialises every new
point at the weighted mean of the embeddings of its nearest *ID* neighbours and then
optimises it against the fixed ID embedding. It cannot extrapolate: an OOD point far from
every ID point still lands at (or between) ID clusters, so OOD data can look as if it sat
inside ID (reported in lmcinnes/umap issues #506 and #211). Fit UMAP on the union of all
sets (``fit_on="union"``, the default) or use PCA to judge separation; a ``fit_on="id"``
UMAP :class:`Projection` carries a ``caveat`` saying so.

:func:`nearest_id_distance` and :func:`separation_in_map` measure how far each set sits from
ID *in the map* (mean distance to the nearest ID point, relative to the ID points' own
nearest-neighbour spacing), so a claim such as "far OOD stays apart" can be checked.

Caching: with ``cache_dir`` set, a result is stored as
``<cache_dir>/projection-<method>-<key[:32]>.npz``, where the key is a SHA-256 over the
method, its parameters, the library versions and the exact bytes of every feature set, so
any change of data or parameters is a cache miss. Files are written atomically and read
with ``allow_pickle=False``; a corrupt or mismatching file is recomputed and overwritten
(with a warning). Nothing is cached unless the caller passes ``cache_dir``; see
:func:`ood_core.paths.default_cache_dir` for the conventional location. UMAP's numba-compiled code is cached
too, in ``<default_cache_dir()>/numba`` unless ``NUMBA_CACHE_DIR`` is set
(:func:`configure_numba_cache`), so only the first UMAP fit on a machine pays the compilation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .checks import MAX_SEED
from .errors import DataError, OODCoreError, unknown
from .fileio import atomic_write
from .paths import default_cache_dir, point_tool_cache  # default_cache_dir also re-exported for older callers

PROJECTION_METHODS = ("pca", "umap")
FIT_ON = ("union", "id")

# Bump when the cache file layout or the computation changes, so old files become misses.
_CACHE_FORMAT = "ood-lab-projection-v1"

UMAP_ID_FIT_CAVEAT = (
    "UMAP was fitted on the ID set only and the other sets were placed with UMAP.transform, which "
    "puts each new point near its nearest ID neighbours and cannot extrapolate, so OOD points can look "
    "like they sit inside ID clusters; use fit_on='union' or PCA to judge separation."
)


@dataclasses.dataclass
class Projection:
    """A 2-D map of several feature sets in shared coordinates.

    Attributes:
        coords: set name -> (n_i, 2) float32 coordinates, in the order the sets were given.
        method: ``"pca"`` or ``"umap"``.
        fit_on: ``"union"`` (fitted on all sets together) or ``"id"`` (fitted on the ID set only).
        params: every parameter that determined the result (JSON-able).
        explained_variance_ratio: PCA only: the share of the fit set's total variance along
            each of the two components; ``None`` for UMAP.
        from_cache: True when the coordinates were read from the disk cache.
        seconds: compute time of the fit (about 0 when read from the cache).
        caveat: a sentence to show next to the map when it can mislead, else ``None``.
    """

    coords: dict[str, np.ndarray]
    method: str
    fit_on: str
    params: dict
    explained_variance_ratio: list[float] | None = None
    from_cache: bool = False
    seconds: float = 0.0
    caveat: str | None = None

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        """All sets' coordinates as one (N, 2) array and the (N,) array of their set names,
        concatenated in ``coords`` order (handy for plotting libraries that want long format)."""
        names = list(self.coords)
        xy = np.concatenate([self.coords[k] for k in names], axis=0)
        labels = np.repeat(np.array(names, dtype=str), [len(self.coords[k]) for k in names])
        return xy, labels


NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def configure_numba_cache() -> str:
    """Make numba's compiled UMAP code persist between processes; returns the cache folder used.

    umap-learn and pynndescent compile their functions with ``numba.njit(cache=True)``; the first
    UMAP fit of a fresh process otherwise spends tens of seconds compiling. Numba writes its
    cache to ``$NUMBA_CACHE_DIR`` when set, else next to the package sources (``__pycache__``,
    if writable) or a per-user folder. Unless the user already set ``NUMBA_CACHE_DIR``, this
    points it at ``<default_cache_dir()>/numba``, one known folder beside the projection cache,
    writable wherever the projection cache is. Numba reads the variable when a cached function
    is *defined*, i.e. when umap is imported, so this must run before ``import umap`` (it also
    makes an already imported numba re-read its configuration). Idempotent.
    """
    user_set = bool(os.environ.get(NUMBA_CACHE_ENV, "").strip())
    folder = point_tool_cache(NUMBA_CACHE_ENV, "numba")
    numba = sys.modules.get("numba")
    if folder and not user_set and numba is not None:  # numba imported before: its config holds the old value
        numba.core.config.reload_config()
    return folder


# ---------------------------------------------------------------------------------------------
# input checks


def _to_float32(name: str, x: Any) -> np.ndarray:
    """A C-contiguous float32 copy-or-view of ``x`` (NumPy array, torch tensor or nested list)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become Inf, reported by the caller
            arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError) as e:
        raise DataError(f"feature set {name!r} cannot be read as a float array: {e}") from None
    return arr


def _check_features(features: Mapping[str, Any], id_key: str) -> dict[str, np.ndarray]:
    if not isinstance(features, Mapping) or len(features) == 0:
        raise DataError("features is empty: pass a dict {set name: (n, d) array} holding at least the ID set")
    if id_key not in features:
        raise DataError(f"the ID set {id_key!r} is missing from features (sets given: {', '.join(map(repr, features))}); "
                        "pass it or name it with id_key=")
    out: dict[str, np.ndarray] = {}
    d = None
    for name, x in features.items():
        if not isinstance(name, str):
            raise DataError(f"feature set names must be strings, got {name!r}")
        arr = _to_float32(name, x)
        if arr.ndim != 2:
            raise DataError(f"feature set {name!r} must be a 2-D (n, d) array, got shape {tuple(arr.shape)}")
        if arr.shape[0] == 0:
            raise DataError(f"feature set {name!r} is empty (0 rows)")
        if d is None:
            d, first = arr.shape[1], name
        elif arr.shape[1] != d:
            raise DataError(f"feature set {name!r} has {arr.shape[1]} features per row but {first!r} has {d}; "
                            "all sets must come from the same representation")
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).any(axis=1).sum())
            raise DataError(f"feature set {name!r} contains NaN or Inf values (in {bad} of {arr.shape[0]} rows; "
                            "values beyond the float32 range also become Inf)")
        out[name] = arr
    return out


def _as_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OODCoreError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise OODCoreError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise OODCoreError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# the fits


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    # Same rule as torch.nn.functional.normalize: rows divided by max(||row||, eps), so an
    # all-zero row stays zero instead of becoming NaN.
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def pca_solver(n_fit: int, d: int) -> str:
    """sklearn's PCA solver for an (n_fit, d) fit matrix: ``"covariance_eigh"`` when n_fit >= d
    (the eigenvectors of the d x d covariance: one pass over the data and a small
    eigendecomposition; on 3,410 x 128 digits features 4 ms against 127 ms, components equal to
    ~1e-14), else ``"full"`` (an SVD of the fit matrix). Both are deterministic."""
    return "covariance_eigh" if n_fit >= d else "full"


def _sign_fixed_pca(fit_x: np.ndarray, n_components: int, svd_solver: str = "full"):
    """Fit sklearn PCA and return (fitted pca, signs) with the sign rule applied by the caller.

    Sign rule: each component is flipped so that its largest-|loading| entry is positive
    (first such entry on ties). SVD determines components only up to sign and the choice
    depends on the LAPACK build, so without this a map could mirror between machines.
    """
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, svd_solver=svd_solver)
    pca.fit(fit_x)
    comps = pca.components_
    signs = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return pca, signs


def _fit_pca(xs: dict[str, np.ndarray], fit_names: list[str],
             svd_solver: str) -> tuple[dict[str, np.ndarray], list[float]]:
    """PCA(2, svd_solver) on the rows of ``fit_names`` (the solver: :func:`pca_solver`); every
    set projected with it.

    Cost: O(n_fit * d^2) for the covariance (n_fit >= d), else an SVD of the (n_fit, d) fit
    matrix; milliseconds for thousands of points in a few hundred dimensions.
    """
    # float64 for the fit: centring float32 features with a large common offset loses digits.
    fit_x = np.concatenate([xs[k] for k in fit_names]).astype(np.float64)
    if min(fit_x.shape) < 2:
        raise DataError(f"PCA to 2-D needs at least 2 fit points and 2 features, got a {fit_x.shape[0]} x "
                        f"{fit_x.shape[1]} fit set")
    pca, signs = _sign_fixed_pca(fit_x, 2, svd_solver)
    coords = {k: (pca.transform(v.astype(np.float64)) * signs).astype(np.float32) for k, v in xs.items()}
    return coords, [float(r) for r in pca.explained_variance_ratio_]


def _fit_umap(xs: dict[str, np.ndarray], fit_names: list[str], *, seed: int, n_neighbors: int,
              min_dist: float, n_epochs: int, pca_dims: int) -> tuple[dict[str, np.ndarray], int | None]:
    """UMAP to 2-D, after a PCA to ``pca_dims`` when d is larger (PCA fitted on the same fit set).

    ``fit_names`` are fitted with ``fit_transform`` (on their concatenation); any other set
    is placed with ``transform``. Returns (coords, number of PCA dimensions used or None).
    Cost: exact k-NN below 4,096 points (O(n^2 d)), NN-descent above, then ``n_epochs`` of
    SGD, single-threaded (random_state is set). Measured on 2 CPU cores: ~0.1 s for 300
    points, ~10 s for 4,000 and ~30 s for 8,000 points (d=128, 200 epochs), plus ~10 s of
    numba compilation the first time in a process.
    """
    fit_x = np.concatenate([xs[k] for k in fit_names])
    n_fit, d = fit_x.shape
    if n_neighbors >= n_fit:
        raise DataError(f"n_neighbors={n_neighbors} must be smaller than the number of points UMAP is fitted on "
                        f"({n_fit}); lower n_neighbors (or fit on more points)")
    configure_numba_cache()  # before the import: numba picks its cache folder when umap's functions are defined
    import umap  # lazy, and after the checks: importing umap (numba, pynndescent) takes seconds

    used_dims = None
    if d > pca_dims:
        # A PCA first removes noise dimensions and makes the k-NN search much cheaper; the
        # sign rule does not matter for UMAP (distances are unchanged) but keeps it deterministic.
        used_dims = min(pca_dims, n_fit)
        pca, signs = _sign_fixed_pca(fit_x.astype(np.float64), used_dims)
        xs = {k: (pca.transform(v.astype(np.float64)) * signs).astype(np.float32) for k, v in xs.items()}
        fit_x = np.concatenate([xs[k] for k in fit_names])
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs,
                        random_state=seed, init="spectral")
    with warnings.catch_warnings():
        # With random_state set, UMAP runs single-threaded for reproducibility and says so.
        warnings.filterwarnings("ignore", message=r".*n_jobs value .* overridden to 1 by setting random_state.*")
        fit_y = reducer.fit_transform(fit_x)
        coords: dict[str, np.ndarray] = {}
        start = 0
        for k in fit_names:
            coords[k] = np.asarray(fit_y[start:start + len(xs[k])], dtype=np.float32)
            start += len(xs[k])
        for k in xs:
            if k not in coords:
                coords[k] = np.asarray(reducer.transform(xs[k]), dtype=np.float32)
    return {k: coords[k] for k in xs}, used_dims


# ---------------------------------------------------------------------------------------------
# the cache


def _library_versions(method: str) -> dict[str, str]:
    import sklearn

    versions = {"numpy": np.__version__, "sklearn": sklearn.__version__}
    if method == "umap":
        from importlib.metadata import version

        # The package metadata, so a cache hit does not pay for importing umap.
        versions["umap-learn"] = version("umap-learn")
    return versions


def _cache_key(method: str, fit_on: str, id_key: str, params: dict, xs: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    header = {"format": _CACHE_FORMAT, "method": method, "fit_on": fit_on, "id_key": id_key,
              "params": params, "versions": _library_versions(method)}
    h.update(json.dumps(header, sort_keys=True).encode())
    for name, arr in xs.items():  # dict order matters: it is the order of the returned coords
        h.update(json.dumps([name, list(arr.shape), arr.dtype.str]).encode())
        h.update(arr.tobytes())  # arr is float32 and C-contiguous (see _to_float32)
    return h.hexdigest()


def _cache_path(cache_dir, method: str, key: str) -> Path:
    return Path(cache_dir) / f"projection-{method}-{key[:32]}.npz"


def _write_cache(path: Path, key: str, proj: Projection) -> None:
    names = list(proj.coords)
    meta = {"key": key, "names": names, "method": proj.method, "fit_on": proj.fit_on, "params": proj.params,
            "explained_variance_ratio": proj.explained_variance_ratio, "caveat": proj.caveat,
            "seconds": proj.seconds}
    # Arrays are stored by position, names in the JSON, so any set name is fine as a key.
    arrays = {f"coords_{i}": proj.coords[k] for i, k in enumerate(names)}
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _read_cache(path: Path, key: str, xs: dict[str, np.ndarray]) -> Projection:
    """The cached projection; raises (anything) when the file is unreadable or does not match."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][()]))
        if meta.get("key") != key or meta.get("names") != list(xs):
            raise ValueError("the file belongs to other data or parameters")
        coords = {}
        for i, k in enumerate(meta["names"]):
            c = z[f"coords_{i}"]
            if c.shape != (len(xs[k]), 2) or c.dtype != np.float32 or not np.isfinite(c).all():
                raise ValueError(f"coordinates of {k!r} have shape {c.shape}, dtype {c.dtype}")
            coords[k] = np.array(c)
    evr = meta.get("explained_variance_ratio")
    return Projection(coords=coords, method=meta["method"], fit_on=meta["fit_on"], params=meta["params"],
                      explained_variance_ratio=None if evr is None else [float(r) for r in evr],
                      from_cache=True, seconds=0.0, caveat=meta.get("caveat"))


# ---------------------------------------------------------------------------------------------
# public entry points


def project(features: Mapping[str, Any], method: str = "pca", fit_on: str = "union", id_key: str = "id",
            seed: int = 0, normalize: bool = False, n_neighbors: int = 15, min_dist: float = 0.1,
            n_epochs: int = 200, pca_dims: int = 50, cache_dir=None) -> Projection:
    """Map every feature set to 2-D with one shared PCA or UMAP.

    Args:
        features: set name -> (n, d) features (NumPy array or torch tensor; used as float32).
            All sets share d; the result keeps this order.
        method: ``"pca"`` or ``"umap"``.
        fit_on: ``"union"`` fits on all sets concatenated; ``"id"`` fits on the ID set only
            and maps the other sets with the fitted transform (for UMAP this hides
            separation: see the module docstring and ``Projection.caveat``).
        id_key: name of the ID set in ``features`` (must be present).
        seed: UMAP ``random_state`` (PCA has no randomness).
        normalize: L2-normalise every row first (x / max(||x||, 1e-12)), for cosine-head models.
        n_neighbors, min_dist, n_epochs: UMAP parameters (defaults 15, 0.1, 200);
            ``n_neighbors`` must be smaller than the number of fit points.
        pca_dims: UMAP only: when d > pca_dims the features are first reduced with PCA
            (fitted on the same fit set) to min(pca_dims, n_fit) dimensions (default 50).
        cache_dir: folder for the disk cache, created if missing; ``None`` (default) caches nothing.

    What is computed:
        * PCA: ``sklearn.decomposition.PCA(n_components=2, svd_solver)`` fitted on the fit
          set, so ``coords = (x - mean_fit) @ V[:2].T`` with V the right singular vectors of
          the centred fit matrix (the covariance's eigenvectors); each component's sign is
          chosen so its largest-|loading| entry is positive. ``svd_solver`` is
          :func:`pca_solver`'s: ``"covariance_eigh"`` when the fit set has at least d rows,
          else ``"full"``. ``explained_variance_ratio`` = the two components' share of the fit
          set's total variance. Deterministic; milliseconds for a few thousand points.
        * UMAP: ``umap.UMAP(n_components=2, n_neighbors, min_dist, n_epochs,
          random_state=seed, init="spectral")``; ``fit_transform`` on the fit set,
          ``transform`` for sets outside it. Deterministic for a given seed and library
          versions (``random_state`` forces one thread). Seconds to tens of seconds: ~10 s
          for 4,000 points on 2 CPU cores, plus a one-time numba compilation of ~10 s per
          process; pass ``cache_dir`` so that the app pays this once per data set.

    Returns:
        A :class:`Projection`; ``from_cache`` tells whether it came from ``cache_dir``.

    Raises:
        DataError: empty ``features``, missing ID set, a set that is not 2-D, empty or
            non-finite, mismatched d, or ``n_neighbors`` >= the number of UMAP fit points.
        OODCoreError: unknown ``method``/``fit_on`` or an out-of-range parameter.
    """
    if method not in PROJECTION_METHODS:
        raise unknown("projection method", method, PROJECTION_METHODS)
    if fit_on not in FIT_ON:
        raise unknown("fit_on choice", fit_on, FIT_ON)
    xs = _check_features(features, id_key)

    params: dict[str, Any] = {"n_components": 2, "id_key": id_key, "normalize": bool(normalize)}
    fit_names = list(xs) if fit_on == "union" else [id_key]
    if method == "pca":
        params["svd_solver"] = pca_solver(sum(len(xs[k]) for k in fit_names), next(iter(xs.values())).shape[1])
    else:
        min_dist = float(min_dist)
        if not (np.isfinite(min_dist) and 0.0 <= min_dist <= 1.0):  # UMAP needs 0 <= min_dist <= spread (1)
            raise OODCoreError(f"min_dist must be between 0 and 1, got {min_dist}")
        params.update(seed=_as_int("seed", seed, 0, MAX_SEED), n_neighbors=_as_int("n_neighbors", n_neighbors, 2),
                      min_dist=min_dist, n_epochs=_as_int("n_epochs", n_epochs, 1),
                      pca_dims=_as_int("pca_dims", pca_dims, 2), init="spectral")

    path = None
    if cache_dir is not None:
        # Keyed on the raw (un-normalised) input plus the parameters: "model + data" by content.
        key = _cache_key(method, fit_on, id_key, params, xs)
        path = _cache_path(cache_dir, method, key)
        if path.exists():
            try:
                return _read_cache(path, key, xs)
            except Exception as e:  # any unreadable/foreign file: recompute and overwrite it
                warnings.warn(f"ignoring unreadable or mismatching projection cache file {path}: "
                              f"{type(e).__name__}: {e}; recomputing", stacklevel=2)

    work = {k: _l2_normalize(v) for k, v in xs.items()} if normalize else xs
    t0 = time.perf_counter()
    evr, caveat = None, None
    if method == "pca":
        coords, evr = _fit_pca(work, fit_names, params["svd_solver"])
    else:
        coords, used_dims = _fit_umap(work, fit_names, seed=params["seed"], n_neighbors=params["n_neighbors"],
                                      min_dist=params["min_dist"], n_epochs=params["n_epochs"],
                                      pca_dims=params["pca_dims"])
        params["pca_dims_used"] = used_dims  # derived from the data, so not part of the cache key
        if fit_on == "id" and len(xs) > 1:
            caveat = UMAP_ID_FIT_CAVEAT
    proj = Projection(coords=coords, method=method, fit_on=fit_on, params=params, explained_variance_ratio=evr,
                      from_cache=False, seconds=time.perf_counter() - t0, caveat=caveat)

    if path is not None:
        try:
            _write_cache(path, key, proj)
        except OSError as e:  # a read-only or full cache folder must not cost the user the result
            warnings.warn(f"could not write projection cache file {path}: {e}", stacklevel=2)
    return proj


def nearest_id_distance(coords_id, coords_other=None) -> np.ndarray:
    """Euclidean distance from each point to its nearest ID point (in the map, or any space).

    With ``coords_other`` (m, k): for each of its rows, the distance to the nearest row of
    ``coords_id`` (n, k). With ``coords_other=None``: for each ID point, the distance to its
    nearest *other* ID point (itself excluded; an exact duplicate counts, giving 0).
    Exact search with ``sklearn.neighbors.NearestNeighbors``; O((n + m) log n) in 2-D.
    Returns a float64 array of length m (or n).
    """
    from sklearn.neighbors import NearestNeighbors

    a = np.asarray(coords_id, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise DataError(f"coords_id must be a non-empty 2-D (n, k) array, got shape {a.shape}")
    nn = NearestNeighbors(n_neighbors=1).fit(a)
    if coords_other is None:
        if a.shape[0] < 2:
            raise DataError("the nearest other ID point needs at least 2 ID points")
        dist, _ = nn.kneighbors(n_neighbors=1)  # X=None: sklearn leaves each point out of its own query
        return dist[:, 0]
    b = np.asarray(coords_other, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != a.shape[1]:
        raise DataError(f"coords_other must be a 2-D (m, {a.shape[1]}) array, got shape {b.shape}")
    if b.shape[0] == 0:
        return np.zeros(0)
    dist, _ = nn.kneighbors(b, n_neighbors=1)
    return dist[:, 0]


def separation_in_map(projection: Projection, id_key: str = "id") -> dict[str, float]:
    """How far each non-ID set sits from ID in the map, relative to ID's own spacing.

    For each set S != ID: ``mean_{p in S} dist(p, nearest ID point)`` divided by
    ``mean_{q in ID} dist(q, nearest other ID point)``. About 1 or below: S is interleaved
    with ID points in the map; well above 1 (say > 2): S sits apart from ID. ``inf`` if
    every ID point coincides with another one (zero spacing) while S does not. Measures
    the *map* only: a fit_on="id" UMAP can report ~1 for data that is far apart in feature
    space (see the module docstring).
    """
    if id_key not in projection.coords:
        raise DataError(f"the ID set {id_key!r} is not in the projection (sets: {', '.join(map(repr, projection.coords))})")
    id_xy = projection.coords[id_key]
    spacing = float(nearest_id_distance(id_xy).mean())
    out = {}
    for name, xy in projection.coords.items():
        if name == id_key:
            continue
        far = float(nearest_id_distance(id_xy, xy).mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = float(np.float64(far) / spacing)
    return out


def project_benchmark(model, bench, method: str = "pca", fit_on: str = "union", outputs: dict | None = None,
                      sets: list[str] | None = None, normalize: bool = False, cache_dir=None,
                      **params) -> Projection:
    """:func:`project` of a model's features on its benchmark: the ID test split (key ``"id"``)
    and the OOD sets (``sets``, default all of ``bench.ood``).

    ``outputs`` are reused model outputs (:func:`ood_core.evaluate.extract_benchmark_outputs`;
    missing sets are extracted once and added to it). ``params`` go to :func:`project`
    (seed, n_neighbors, min_dist, n_epochs, pca_dims). With ``cache_dir`` the map is cached
    on disk by the content of the features, i.e. by model and data.
    """
    from .evaluate import extract_benchmark_outputs  # lazy: keeps this module free of torch at import

    names = list(bench.ood) if sets is None else list(sets)
    outputs = extract_benchmark_outputs(model, bench, ["id", *names], outputs=outputs)
    feats = {name: outputs[name].features.numpy() for name in ["id", *names]}
    return project(feats, method=method, fit_on=fit_on, normalize=normalize, cache_dir=cache_dir, **params)
