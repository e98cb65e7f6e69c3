"""The app's cached computations: every ``st.cache_data`` / ``st.cache_resource`` wrapper,
the shared in-memory store of model outputs and the background worker.

Keyed on ``(path, version)``: ``version`` (:func:`checkpoint_version`) is a SHA-256 of the
file's content and, for a real-data checkpoint, the data root, so a checkpoint replaced on
disk is re-read (even with the same mtime) and another data root gives other results, never
stale ones:

* :func:`load_model_cached` (``st.cache_resource``): ``(model, meta)``, one shared model.
* :func:`outputs_cached`: the model's outputs on every split and OOD set, extracted once per
  process (a shared in-memory store) and per model and data on disk
  (:class:`~ood_core.feature_cache.FeatureCache`, shared with the CLI's ``features``
  command), and reused by the evaluation, the geometry and the projections.
* :func:`evaluation_cached` (``st.cache_data``): a pickleable dict (report, per-sample
  scores as numpy arrays, table rows); no torch objects, so every caller gets a copy.
* :func:`geometry_cached` (``st.cache_data``): :func:`ood_core.geometry.geometry_summary`.
* :func:`projection_cached` (``st.cache_data``): a 2-D PCA/UMAP map, also cached on disk
  (``$OOD_CACHE_DIR`` or ``~/.cache/ood-lab``) so it survives app restarts.

Errors caused by the file (missing, corrupt, foreign, unknown dataset) are raised as
:class:`~ood_core.errors.OODCoreError` subclasses; Streamlit does not cache exceptions, so
a fixed file is picked up on the next run.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import threading
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from ..checkpoint import checkpoint_benchmark, load_checkpoint, read_checkpoint
from ..checkpoint_store import file_version, list_checkpoints
from ..data import load_user_ood
from ..errors import DataNotFound, OODCoreError
from ..evaluate import evaluate, extract_benchmark_outputs
from ..feature_cache import default_feature_cache
from ..geometry import (class_mean_subspace, classifier_vectors, geometry_summary, jacobian_norms,
                        jacobian_norm_map, jacobian_norm_path, plane_bounds, principal_subspace,
                        subspace_energy_share)
from ..methods import method_score_params
from ..paths import SHIPPED_CHECKPOINTS
# JACOBIAN_VIEW and jacobian_view_sets: the Jacobian page's defaults (pages import only ood_core.app)
from ..precomputed import JACOBIAN_VIEW, jacobian_view_sets, stored_jacobian_norms  # noqa: F401
from ..projection import Projection, default_cache_dir, project_benchmark
from ..runtime import select_device
from ..scores import make_score
from ..views import evaluate_model, needs_data_root, scored_sets, set_inputs
from .state import data_root_setting

OUTPUT_STORE_ENTRIES = 8  # (checkpoint, version[, upload]) entries of model outputs kept in memory


@st.cache_resource(max_entries=16, show_spinner="Loading checkpoint…")
def load_model_cached(path: str, version: tuple):
    """``(model, meta)`` of the checkpoint at ``path``; ``version`` only versions the cache key."""
    return load_checkpoint(path, device=select_device("auto"))


def checkpoint_version(path: str) -> tuple[str, str | None]:
    """The cache-key version of a checkpoint: ``(content digest, data root)``
    (:func:`file_version`), the data root only for a real-data checkpoint (embedded ones do
    not depend on it, so changing it recomputes nothing for them). Every cached wrapper is
    keyed on ``(path, version, ...)``, so a file replaced on disk (whatever its mtime) or
    another data root never gets another model's or data's results. CheckpointError if the
    file is gone."""
    digest = file_version(path)
    return digest, data_root_setting() if needs_data_root(checkpoint_dataset(path, digest)) else None


@st.cache_resource(max_entries=8, show_spinner="Building the benchmark…")
def _benchmark_of_spec(spec: str, root: str | None):
    """The benchmark of a dataset spec (JSON text) and data root, built once for every
    checkpoint trained on it (six digits checkpoints: one build); shared, read-only."""
    from ..data import load_benchmark_from_spec

    preload_real_images().join()  # started with the server: done by now, or about to be
    return _benchmark_for_app(lambda r: load_benchmark_from_spec(json.loads(spec), data_root=r), root)


@st.cache_resource(max_entries=16, show_spinner=False)
def benchmark_cached(path: str, version: tuple):
    """The benchmark the checkpoint was trained on, from its metadata and the data root in
    ``version``, checked against its model; shared, read-only."""
    _, meta = load_model_cached(path, version)
    root = version[1] if len(version) > 1 else None
    bench = _benchmark_of_spec(json.dumps(meta.get("dataset"), sort_keys=True, default=str), root)
    return checkpoint_benchmark(meta, name=Path(path).name, bench=bench)


def _benchmark_for_app(build, root: str | None):
    """``build(root)``, with a missing-data error pointing at the sidebar's "Data root"."""
    try:
        return build(root)
    except DataNotFound as e:
        raise DataNotFound(f"{e} (in the app: set **Data root** in the sidebar's *Real datasets* box)") from None


@st.cache_resource(max_entries=8, show_spinner="Reading your OOD set…")
def user_ood_cached(upload: str, input_shape: tuple[int, ...]) -> tuple[str, torch.Tensor]:
    """``(name, tensor)`` of the uploaded OOD set at ``upload`` (a path from :func:`save_upload`,
    content-addressed, so the path is a sound cache key), converted to ``input_shape`` by
    :func:`ood_core.data.load_user_ood` (the CLI's ``--ood-file`` loader)."""
    return load_user_ood(upload, tuple(input_shape))


def user_ood_set(path: str, version: tuple, user_ood: str | None) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the user's OOD set for this checkpoint's input format ({} if none)."""
    if not user_ood:
        return {}
    bench = benchmark_cached(path, version)
    name, x = user_ood_cached(user_ood, tuple(bench.input_shape))
    bench.check_user_names([name])  # an upload named train.npy must not replace the training split
    return {name: x}


@st.cache_resource
def _outputs_store():
    """``(OrderedDict, Lock)`` shared by every session: ``{key: {set name: ModelOutput}}``,
    least recently used first. A published dict is never changed again (a newer one replaces
    it), so sessions may read it while another extracts."""
    return collections.OrderedDict(), threading.Lock()


def _shared_outputs(key, fill) -> dict:
    """The store's dict for ``key`` after ``fill(copy)`` added what was missing to a copy."""
    store, lock = _outputs_store()
    with lock:
        current = store.get(key, {})
    done = fill(dict(current))
    with lock:
        if len(done) > len(current):
            store[key] = current = done
        if key in store:
            store.move_to_end(key)
        while len(store) > OUTPUT_STORE_ENTRIES:
            store.popitem(last=False)
    return current


def outputs_cached(path: str, version: tuple, user_ood: str | None = None, progress=None) -> dict:
    """Model outputs (features, logits) of the ID splits used by the scores (``"id"``,
    ``"train"``) and every OOD set of the checkpoint's benchmark, plus the user's OOD set when
    ``user_ood`` (a :func:`save_upload` path) is given. Shared and read-only.

    Each set is extracted once per process (kept in memory for the last
    ``OUTPUT_STORE_ENTRIES`` checkpoints) and once per model and data on disk: features the
    CLI's ``python -m ood_core features`` (or ``evaluate``) stored in the same cache folder
    (``$OOD_CACHE_DIR``) are read, not recomputed. ``progress(set, done, total, from_cache)``
    is called while sets are read or extracted (see :func:`outputs_with_progress`); a page left
    midway loses nothing that reached the disk cache.
    """
    model, _ = load_model_cached(path, version)
    bench = benchmark_cached(path, version)
    cache = default_feature_cache()
    base = _shared_outputs((path, version), lambda outs: extract_benchmark_outputs(
        model, bench, outputs=outs, cache=cache, progress=progress))
    if not user_ood:
        return base
    extra = user_ood_set(path, version, user_ood)
    user = _shared_outputs((path, version, user_ood), lambda outs: extract_benchmark_outputs(
        model, bench, sets=list(extra), extra_ood=extra, outputs=outs, cache=cache, progress=progress))
    return {**base, **user}


@st.cache_data(max_entries=16, show_spinner="Scoring the ID test split and the OOD sets…")
def evaluation_cached(path: str, version: tuple, user_ood: str | None = None, detectors: tuple[str, ...] = ()) -> dict:
    """:func:`evaluate_model` of the cached model: ``{report, scores, table}`` (pickleable);
    with ``user_ood`` the user's set is scored too (group ``user``); ``detectors``: more
    registry scores beside the checkpoint's own."""
    model, meta = load_model_cached(path, version)
    return evaluate_model(model, meta, outputs=dict(outputs_cached(path, version, user_ood)),
                          bench=benchmark_cached(path, version), extra_ood=user_ood_set(path, version, user_ood),
                          detectors=tuple(detectors))


@st.cache_data(max_entries=16, show_spinner="Measuring the representation's geometry…")
def geometry_cached(path: str, version: tuple, jacobian: str | None = "estimate") -> dict:
    """:func:`ood_core.geometry.geometry_summary` of the cached model (JSON-able dict)."""
    model, _ = load_model_cached(path, version)
    return geometry_summary(model, benchmark_cached(path, version), outputs=dict(outputs_cached(path, version)),
                            jacobian=jacobian)


@st.cache_data(max_entries=16, show_spinner="Computing the 2-D map…")
def projection_cached(path: str, version: tuple, method: str = "pca", fit_on: str = "union",
                      normalize: bool = False, seed: int = 0, user_ood: str | None = None) -> Projection:
    """:func:`ood_core.projection.project_benchmark` of the cached model (OOD sets: the
    benchmark's plus the user's), cached in memory and on disk
    (:func:`ood_core.projection.default_cache_dir`)."""
    return _projection_call(path, version, method, fit_on, normalize, seed, user_ood)()


def _projection_call(path: str, version: tuple, method: str, fit_on: str, normalize: bool, seed: int,
                     user_ood: str | None):
    """:func:`ood_core.projection.project_benchmark` bound to the cached model, benchmark and
    outputs (the user's set included) and the disk cache: call it here or in a worker thread."""
    model, _ = load_model_cached(path, version)  # cached objects are fetched in the script thread
    bench = benchmark_cached(path, version)
    return functools.partial(project_benchmark, model, bench, method=method, fit_on=fit_on, normalize=normalize,
                             seed=seed, sets=[*bench.ood, *user_ood_set(path, version, user_ood)],
                             outputs=dict(outputs_cached(path, version, user_ood)), cache_dir=default_cache_dir())


@st.cache_resource
def _background_work():
    """One worker thread for long computations, shared by every session of this server, and
    their futures by key. One worker: a second UMAP fit at the same time would only halve the
    speed of both on a small machine."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ood-background"), {}


def projection_in_background(path: str, version: tuple, method: str = "umap", fit_on: str = "union",
                             normalize: bool = False, seed: int = 0, user_ood: str | None = None):
    """Start (once per arguments) the fit of :func:`projection_cached`'s map in a worker thread
    and return its ``concurrent.futures.Future``.

    A UMAP fit takes 10-40 s (numba compiles on the first one in a process). Run in the page's
    own script it would hold the session until it ends, and a click on another page would wait
    for it. In the worker, the page returns at once, polls the future
    (:func:`rerun_when_done`), and other pages stay usable. The worker writes the map to the
    disk cache, so :func:`projection_cached` then reads it in milliseconds. A future that failed
    is started again on the next call (its error has been shown by then).
    """
    pool, futures = _background_work()
    key = (path, version, method, fit_on, normalize, seed, user_ood)
    future = futures.get(key)
    if future is None or (future.done() and future.exception() is not None):
        future = futures[key] = pool.submit(_projection_call(path, version, method, fit_on, normalize, seed, user_ood))
    return future


@st.cache_data(max_entries=256, show_spinner=False)
def jacobian_norm_set_cached(path: str, version: tuple, set_name: str, method: str = "estimate", n_proj: int = 16,
                             probe_size: int = 256, user_ood: str | None = None) -> np.ndarray:
    """||d(z/||z||)/dx||_F of the first ``probe_size`` samples of one set (``"id"`` = the ID
    test split, an OOD set, or the user's), as :func:`ood_core.geometry.jacobian_norms_by_set`
    computes it (same seed per set, so the numbers are the same). A shipped checkpoint's first
    view is read from :mod:`ood_core.precomputed` when it holds exactly these inputs and settings."""
    model, _ = load_model_cached(path, version)
    x = set_inputs(benchmark_cached(path, version), set_name, user_ood_set(path, version, user_ood))
    stored = stored_jacobian_norms(version[0], set_name, x, method, n_proj, probe_size)
    if stored is not None:
        return stored
    return jacobian_norms(model, {set_name: x}, probe_size, method=method, n_proj=n_proj, seed=0)[set_name]


def ood_set_names(path: str, version: tuple, user_ood: str | None = None) -> list[str]:
    """The OOD sets of a checkpoint's benchmark, then the user's set (if any), without computing anything."""
    return [*benchmark_cached(path, version).ood, *user_ood_set(path, version, user_ood)]


def jacobian_norms_cached(path: str, version: tuple, method: str = "estimate", n_proj: int = 16,
                          probe_size: int = 256, user_ood: str | None = None, progress=None,
                          sets: list[str] | None = None) -> dict[str, np.ndarray]:
    """||d(z/||z||)/dx||_F of the first ``probe_size`` samples of the ID test split (``"id"``)
    and of the OOD ``sets`` (None: every OOD set and the user's, :func:`ood_set_names`; unknown
    names are skipped), one cached set at a time (:func:`jacobian_norm_set_cached`): exact norms
    on many samples take seconds per set, so ``progress(done, total, set_name)`` is called after
    each set (for a progress bar) and a page left midway keeps what it finished."""
    known = ood_set_names(path, version, user_ood)
    wanted = None if sets is None else set(sets)
    names = ["id", *(n for n in known if wanted is None or n in wanted)]
    norms = {}
    for done, name in enumerate(names, start=1):
        norms[name] = jacobian_norm_set_cached(path, version, name, method, n_proj, probe_size, user_ood)
        if progress is not None:
            progress(done, len(names), name)
    return norms


@st.cache_data(max_entries=32, show_spinner="Computing Jacobian norms along the path…")
def jacobian_path_cached(path: str, version: tuple, start: int, end: int, method: str = "exact",
                         steps: int = 33) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ood_core.geometry.jacobian_norm_path` between ID test samples ``start`` and ``end``."""
    model, _ = load_model_cached(path, version)
    x = benchmark_cached(path, version).test.x
    return jacobian_norm_path(model, x[start], x[end], steps=steps, method=method)


@st.cache_data(max_entries=8, show_spinner="Mapping the Jacobian norm over the plane…")
def jacobian_map_cached(path: str, version: tuple, resolution: int = 60):
    """``(xs, ys, grid, points)``: :func:`ood_core.geometry.jacobian_norm_map` over the
    bounds of the ID test split and every OOD set, and those sets' points (2-D inputs only)."""
    model, _ = load_model_cached(path, version)
    bench = benchmark_cached(path, version)
    if tuple(bench.input_shape) != (2,):
        raise OODCoreError(f"the plane map needs 2-D inputs (toy2d); {bench.name} has {tuple(bench.input_shape)}")
    points = {"ID (test)": bench.test.x.numpy(), **{f"OOD: {k}": v.numpy() for k, v in bench.ood.items()}}
    bounds = plane_bounds(np.concatenate(list(points.values())), margin=0.05)
    xs, ys, grid = jacobian_norm_map(model, bounds, resolution=resolution, method="exact")
    return xs, ys, grid, points


@st.cache_data(max_entries=16, show_spinner="Mapping the score over the plane…")
def landscape_cached(path: str, version: tuple, score: str, resolution: int = 60):
    """``(landscape, training points)``: :func:`ood_core.landscape.decision_landscape` of ``score``
    over the training points and every OOD set (a fitted score fitted on the training split, as
    the evaluator does; the method's score parameters), 2-D inputs only."""
    from ..jobs import landscape_frame
    from ..landscape import decision_landscape

    model, meta = load_model_cached(path, version)
    bench = benchmark_cached(path, version)
    if tuple(bench.input_shape) != (2,):
        raise OODCoreError(f"a score landscape needs 2-D inputs (toy2d); {bench.name} has {tuple(bench.input_shape)}")
    bounds, points = landscape_frame(bench)  # the frame of a training run's landscapes
    land = decision_landscape(model, bounds, resolution, score=score, fit_on=(bench.train.x, bench.train.y),
                              score_params=method_score_params(meta).get(score))
    return land, points


@st.cache_data(max_entries=16, show_spinner="Measuring energy shares…")
def energy_shares_cached(path: str, version: tuple, subspace: str = "weights",
                         user_ood: str | None = None) -> dict[str, np.ndarray]:
    """Per-sample share of ||z||^2 *outside* the principal subspace, for the ID test split
    and every OOD set: ``subspace="weights"`` = span{w_c} (the classifier's row space),
    ``"means"`` = the top-(C-1) centred class-mean directions of the training features."""
    model, _ = load_model_cached(path, version)
    outputs = outputs_cached(path, version, user_ood)
    if subspace == "weights":
        basis = principal_subspace(weight=classifier_vectors(model))
    elif subspace == "means":
        bench = benchmark_cached(path, version)
        if bench.task != "multiclass":
            raise OODCoreError("the class-mean subspace needs single-label classes; use the classifier span")
        basis = class_mean_subspace(outputs["train"].features, bench.train.y, bench.num_classes)
    else:
        raise OODCoreError(f"subspace must be 'weights' or 'means', got {subspace!r}")
    return {name: 1.0 - subspace_energy_share(out.features, basis) for name, out in scored_sets(outputs).items()}


@st.cache_data(max_entries=16)
def test_labels_cached(path: str, version: tuple) -> np.ndarray:
    """Labels of the checkpoint's ID test split ((N,) classes or (N, K) multi-hot)."""
    return benchmark_cached(path, version).test.y.numpy()


@st.cache_data(max_entries=64)
def checkpoint_meta_cached(path: str, digest: str) -> dict:
    """The metadata of the checkpoint at ``path`` (validated, weights not built); ``digest``
    (:func:`file_version`) only versions the cache key."""
    return read_checkpoint(path)["meta"]


def checkpoint_dataset(path: str, digest: str | None = None) -> str | None:
    """The dataset name a checkpoint was trained on, or None when the file cannot be read;
    ``digest``: its :func:`file_version` when the caller has it already."""
    try:
        return (checkpoint_meta_cached(path, digest or file_version(path)).get("dataset") or {}).get("name")
    except OODCoreError:
        return None


@st.cache_resource(max_entries=4, show_spinner="Building the benchmark…")
def benchmark_by_name_cached(name: str, data_root: str | None = None):
    """The benchmark ``name`` with its default split (what the in-app training uses), real
    datasets read from ``data_root``; shared with the background training thread, read-only."""
    from ..data import load_benchmark

    return _benchmark_for_app(lambda root: load_benchmark(name, data_root=root), data_root)


@st.cache_data(max_entries=64)
def sample_cached(path: str, version: tuple, set_name: str, index: int, user_ood: str | None = None) -> np.ndarray:
    """Input ``index`` of ``set_name`` (:func:`set_inputs`) as numpy; OODCoreError when out of range."""
    x = set_inputs(benchmark_cached(path, version), set_name, user_ood_set(path, version, user_ood))
    if not 0 <= index < x.shape[0]:
        raise OODCoreError(f"sample #{index} is out of range: {set_name!r} has {x.shape[0]} samples")
    return x[index].numpy()


@st.cache_resource(max_entries=32, show_spinner="Fitting the score on the training features…")
def fitted_score_cached(path: str, version: tuple, name: str):
    """The registry score ``name`` with the checkpoint method's parameters (as the evaluator
    builds it, :func:`ood_core.methods.method_score_params`), fitted as the evaluator fits it
    (training-split outputs, labels and the model) when it ``requires_fit``; shared, read-only."""
    model, meta = load_model_cached(path, version)
    score = make_score(name, **method_score_params(meta).get(name, {}))
    if score.requires_fit:
        score.fit(outputs_cached(path, version)["train"], benchmark_cached(path, version).train.y, model)
    return score


@st.cache_data(max_entries=64, show_spinner="Computing Integrated Gradients…")
def attribution_cached(path: str, version: tuple, set_name: str, index: int, score: str, n_steps: int = 128,
                       baseline: str = "zeros", user_ood: str | None = None) -> dict:
    """Integrated Gradients (:func:`ood_core.attribution.integrated_gradients`) of ``score`` for
    sample ``index`` of ``set_name`` (``"id"`` = ID test split, an OOD set, or the user's).

    ``baseline``: ``"zeros"`` or ``"mean"`` (mean of the ID training inputs). Returns numpy
    values: ``input`` and ``attributions`` (the sample's shape), ``score``, ``baseline_score``
    and ``delta`` (completeness error: sum of attributions - (score - baseline_score)).
    OODCoreError for a score that cannot be attributed or an index out of range.
    """
    configure_matplotlib_dir()
    from ..attribution import integrated_gradients

    model, _ = load_model_cached(path, version)
    bench = benchmark_cached(path, version)
    x = torch.from_numpy(sample_cached(path, version, set_name, index, user_ood))
    res = integrated_gradients(model, x, fitted_score_cached(path, version, score), baseline=baseline,
                               n_steps=int(n_steps), reference=bench.train.x if baseline == "mean" else None)
    return {"input": x.numpy(), "attributions": res.attributions.numpy(),
            "score": float(res.scores[0]), "baseline_score": float(res.baseline_scores[0]),
            "delta": float(res.delta[0])}


def configure_matplotlib_dir() -> str:
    """Keep matplotlib's config and font cache out of the user's home: captum imports
    matplotlib, which on its first import writes ``~/.config/matplotlib`` and
    ``~/.cache/matplotlib/fontlist-*.json``. Unless ``$MPLCONFIGDIR`` is set (the user's
    choice wins), it is pointed at ``<cache folder>/matplotlib`` before that import, so the
    app writes only into its checkpoint and cache folders. Idempotent; returns the folder."""
    current = os.environ.get("MPLCONFIGDIR", "")
    if current.strip():
        return current
    folder = default_cache_dir() / "matplotlib"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return ""  # not writable: matplotlib falls back to its own defaults rather than break the page
    os.environ["MPLCONFIGDIR"] = str(folder)
    return str(folder)


def _in_background(name: str, work) -> threading.Thread:
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread


@functools.cache  # once per process: later calls return the same thread
def preload_attribution_modules() -> threading.Thread:
    """Import captum (and matplotlib, which it imports) in a background thread, once per process;
    returns that thread.

    Why: the import costs about 0.7 s on 2 cores, and the Embeddings page, whose first screen
    shows an attribution, otherwise paid it on its first render after a server start. Started
    when the server loads the app, it is done long before a visitor opens that page (an import
    still under way then simply waits for this one). The matplotlib folder is set first
    (:func:`configure_matplotlib_dir`). A failing import is left to :func:`attribution_cached`
    to report where it is used."""
    def work():
        configure_matplotlib_dir()
        try:
            import captum.attr  # noqa: F401
        except Exception:  # noqa: BLE001 - said by the page that needs it, with its message
            pass

    return _in_background("ood-lab-preload-captum", work)


@functools.cache  # once per process: later calls return the same thread
def preload_real_images() -> threading.Thread:
    """Read the scikit-image photographs of the far-real OOD sets in a background thread, once
    per process (:func:`ood_core.data.embedded.preload_real_sources`); returns that thread.

    Why: decoding them costs about 0.25 s on 2 cores, which the first page that built a digits
    benchmark after a server start paid (Home builds none). :func:`_benchmark_of_spec` waits for
    this thread before it builds, so the images are never read twice."""
    from ..data.embedded import preload_real_sources

    return _in_background("ood-lab-preload-images", preload_real_sources)


@st.cache_data(max_entries=16, show_spinner="Reading feature norms…")
def feature_norms_cached(path: str, version: tuple, user_ood: str | None = None) -> dict[str, np.ndarray]:
    """||z||_2 per sample for the ID test split (``"id"``) and every OOD set (and the user's)."""
    norm = make_score("feature_norm")  # the registry's ||z|| score
    return {name: norm(out) for name, out in scored_sets(outputs_cached(path, version, user_ood)).items()}


@st.cache_data(max_entries=16, show_spinner="Computing energies…")
def energies_cached(path: str, version: tuple,
                    user_ood: str | None = None) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(score name, per-sample score per set, per-label terms per set)``.

    Multiclass: the negative free energy logsumexp_k s f_k (``energy``, Liu et al. 2020), and as
    per-label terms the scaled logits s f_k it is built from (s = the method's ``logit_scale``,
    1 unless the method declares one, e.g. T = 32 for ``movr``). Multi-label: JointEnergy
    sum_k softplus(f_k) (``joint_energy``, Wang et al. 2021) and its per-label terms
    softplus(f_k). High = ID.
    """
    multilabel = benchmark_cached(path, version).task == "multilabel"
    name = "joint_energy" if multilabel else "energy"
    _, meta = load_model_cached(path, version)
    params = method_score_params(meta).get(name, {})
    score_fn = make_score(name, **params)  # the registry's score: the same numbers as the evaluator's
    scale = float(params.get("logit_scale", 1.0))
    score, terms = {}, {}
    for set_name, out in scored_sets(outputs_cached(path, version, user_ood)).items():
        logits = scale * out.logits.double()
        score[set_name] = score_fn(out)
        terms[set_name] = (torch.nn.functional.softplus(logits) if multilabel else logits).numpy()
    return name, score, terms


@st.cache_data(max_entries=4, show_spinner=False)
def _claims_results(path: str, version: str) -> dict:
    from ..claims import load_results

    return load_results(path)


def claims_results(path: str | Path | None = None) -> dict:
    """The stored results of ``benchmarks/compare.py`` (claims and runs), re-read when the file
    changes. OODCoreError with the command to run when it is missing."""
    from .. import claims

    path = Path(path or claims.COMPARE_RESULTS)
    if not path.is_file():
        return claims.load_results(path)  # raises the one-line error
    return _claims_results(str(path), file_version(path))


@st.cache_data(max_entries=2, show_spinner="Computing the mechanism figures on the shipped checkpoints…")
def _mechanisms_computed(folder: str, versions: tuple) -> dict:
    from ..claims import compute_mechanisms

    return compute_mechanisms(folder)


def claims_mechanisms(folder: str | Path = SHIPPED_CHECKPOINTS) -> dict:
    """Per-sample mechanism values on the shipped checkpoints: the stored file when it matches
    the checkpoints' contents (the usual case: read, not computed), else computed once."""
    from ..claims import load_mechanisms

    stored = load_mechanisms(folder)
    if stored is not None:
        return stored
    versions = tuple((p.name, file_version(p)) for p in list_checkpoints(folder))
    return _mechanisms_computed(str(folder), versions)


def checkpoint_method(path: str) -> str | None:
    """The method a checkpoint was trained with, or None when the file cannot be read."""
    try:
        return checkpoint_meta_cached(path, file_version(path)).get("method")
    except OODCoreError:
        return None


@st.cache_data(max_entries=32, show_spinner="Scoring the ID test split and the OOD sets…")
def score_metrics_cached(path: str, version: tuple, score: str, user_ood: str | None = None) -> dict[str, dict]:
    """``{OOD set: metrics}`` of one registry score (``feature_norm``, ``energy``, ...) with
    the method's parameters, from the evaluator's report on the cached outputs: the figures
    the Models page shows, also for a score the method does not list."""
    model, meta = load_model_cached(path, version)
    result = evaluate(model, benchmark_cached(path, version), score_names=[score],
                      outputs=dict(outputs_cached(path, version, user_ood)),
                      extra_ood=user_ood_set(path, version, user_ood), score_params=method_score_params(meta))
    return {name: per_score[score] for name, per_score in result.report["ood"].items()}
