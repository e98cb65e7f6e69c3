"""Computation behind the Streamlit app (``app.py`` + ``pages/``); the pages only draw.

Plain functions (usable without a running Streamlit server, e.g. in tests or a notebook):

* :func:`checkpoint_dir` / :func:`list_checkpoints`: where the app looks for ``*.pt`` files.
* :func:`compute_evaluation`: load a checkpoint, rebuild its benchmark, score every OOD set.
* :func:`metric_table`, :func:`score_names`, :func:`ood_set_names`, :func:`metadata_summary`:
  shape the results for display.
* :func:`histogram_figure`: the ID-vs-OOD score histogram (plotly).
* :func:`history_figure`: the per-epoch NC metrics and JND of a training history (plotly).

Cached wrappers, keyed on ``(path, mtime)`` so a checkpoint replaced on disk is re-read
rather than served stale:

* :func:`load_model_cached` (``st.cache_resource``): ``(model, meta)``, one shared model.
* :func:`outputs_cached` (``st.cache_resource``): the model's outputs on every split and
  OOD set, extracted once and shared by the evaluation, the geometry and the projections.
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

import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
import torch

from .checkpoint import load_checkpoint
from .data import load_benchmark_from_spec
from .errors import CheckpointError, OODCoreError
from .evaluate import FPR95_DEFINITION, evaluate, extract_benchmark_outputs
from .geometry import (class_mean_subspace, classifier_vectors, geometry_summary, jacobian_norm_map,
                       jacobian_norm_path, jacobian_norms_by_set, plane_bounds, principal_subspace,
                       subspace_energy_share)
from .methods import default_score_names
from .projection import Projection, default_cache_dir, project_benchmark
from .runtime import select_device
from .scores import make_score

CHECKPOINT_ENV = "OOD_CHECKPOINT_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_COMMAND = "python -m ood_core train --method ce --dataset digits --out checkpoints/ce_digits.pt"
TABLE_COLUMNS = ("ood_set", "group", "score", "auroc", "fpr95", "aupr_in", "aupr_out")
TABLE_CAPTION = (
    f"FPR95 = {FPR95_DEFINITION}; lower is better. AUROC, AUPR-In (ID positive) and AUPR-Out "
    "(OOD positive): higher is better. Every score follows one convention: high score = in-distribution (ID). "
    "Rows `mean (near)` / `mean (far)` average the OOD sets of each group."
)


# --------------------------------------------------------------------------- plain functions
def checkpoint_dir(app_dir: str | Path | None = None) -> Path:
    """The folder the app lists checkpoints from.

    ``$OOD_CHECKPOINT_DIR`` when set (absolute, or relative to the working directory),
    else ``<app_dir>/checkpoints`` (``app_dir`` defaults to the repository root).
    """
    env = os.environ.get(CHECKPOINT_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return Path(app_dir or REPO_ROOT).resolve() / "checkpoints"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The ``*.pt`` files directly in ``folder``, sorted by name; [] if the folder is missing.

    Hidden files (``save_checkpoint``'s in-flight temporaries start with a dot) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def file_mtime(path: str | Path) -> float:
    """Modification time of ``path`` (the cache key's version part); CheckpointError if gone."""
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file (was it moved or deleted?)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({e.strerror or e})") from None


def evaluate_model(model, meta: dict, outputs: dict | None = None, bench=None) -> dict:
    """Evaluate ``model`` on its benchmark; a pickleable dict ``{report, scores, table}``.

    ``scores`` maps ``"SET/SCORE"`` (``"id/SCORE"`` for the ID test split) to a 1-D numpy
    array; ``table`` is :meth:`Evaluation.table`'s list of row dicts. ``outputs``: model
    outputs already extracted (reused, see :func:`outputs_cached`); ``bench``: the benchmark
    already rebuilt from ``meta`` (default: rebuilt here).
    """
    bench = bench if bench is not None else load_benchmark_from_spec(meta.get("dataset"))
    result = evaluate(model, bench, score_names=default_score_names(meta, bench), outputs=outputs)
    return {"report": result.report,
            "scores": {k: np.asarray(v) for k, v in result.scores.items()},
            "table": result.table()}


def compute_evaluation(path: str | Path) -> dict:
    """Load the checkpoint at ``path`` and evaluate it (no caching, no Streamlit needed)."""
    model, meta = load_checkpoint(path, device=select_device("auto"))
    return evaluate_model(model, meta)


def score_names(scores: dict) -> list[str]:
    """Score names present in a per-sample score dict, in registry order."""
    return [k.split("/", 1)[1] for k in scores if k.startswith("id/")]


def ood_set_names(report: dict) -> list[str]:
    """OOD set names of a report, in evaluation order (near first, then far)."""
    return list(report.get("ood", {}))


def id_quality(report: dict) -> tuple[str, float | None]:
    """``(label, value)`` of the ID quality metric: accuracy (multiclass) or mAP (multilabel)."""
    if "id_accuracy" in report:
        return "ID accuracy", report["id_accuracy"]
    if "id_map" in report:
        return "ID mAP", report["id_map"]
    return "ID accuracy", None


def metric_table(rows: list[dict]) -> pd.DataFrame:
    """The table rows as a DataFrame: the standard columns first, any other metric after."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    first = [c for c in TABLE_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def metadata_summary(meta: dict) -> dict:
    """The checkpoint facts worth showing, as plain JSON-able values."""
    ds = meta.get("dataset") or {}
    return {
        "method": meta.get("method"),
        "dataset": ds.get("name"),
        "task": ds.get("task"),
        "known classes": ds.get("known"),
        "class names": ds.get("class_names"),
        "input shape": ds.get("input_shape"),
        "split / OOD seed": [ds.get("split_seed"), ds.get("ood_seed")],
        "created": meta.get("created"),
    }


def histogram_figure(id_scores, ood_scores, score_name: str, ood_name: str):
    """Overlaid density histograms of one score, ID test split vs one OOD set (2 traces)."""
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    id_label, ood_label = "ID (test)", f"OOD: {ood_name}"
    df = pd.DataFrame({
        score_name: np.concatenate([id_scores, ood_scores]),
        "set": [id_label] * id_scores.size + [ood_label] * ood_scores.size,
    })
    df = df[np.isfinite(df[score_name])]
    fig = px.histogram(df, x=score_name, color="set", barmode="overlay", histnorm="probability density",
                       opacity=0.6, nbins=60, category_orders={"set": [id_label, ood_label]},
                       title=f"{score_name}: ID vs {ood_name} (higher = more ID)")
    fig.update_layout(legend_title_text="", yaxis_title="density", margin=dict(t=50, b=40, l=40, r=10))
    return fig


HISTORY_KEYS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3", "nc4", "jnd")


def history_figure(history: list[dict]):
    """Line plot of the per-epoch geometry record (NC metrics, JND) of a training history,
    or None when nothing was recorded (``TrainConfig.geometry_every`` was 0)."""
    rows = [{"epoch": h["epoch"], "metric": k, "value": h[k]}
            for h in history for k in HISTORY_KEYS if k in h]
    if not rows:
        return None
    fig = px.line(pd.DataFrame(rows), x="epoch", y="value", color="metric", markers=True,
                  title="Geometry over training (NC metrics tend to 0 under collapse; JND = unknown - known ||J||)")
    fig.update_layout(legend_title_text="", margin=dict(t=50, b=40, l=40, r=10))
    return fig


def distributions_figure(values: dict[str, np.ndarray], x_label: str, title: str):
    """Overlaid density histograms, one trace per set (the first is drawn as the reference)."""
    frames = [pd.DataFrame({x_label: np.asarray(v, dtype=np.float64).ravel(), "set": name})
              for name, v in values.items()]
    df = pd.concat(frames, ignore_index=True)
    df = df[np.isfinite(df[x_label])]
    fig = px.histogram(df, x=x_label, color="set", barmode="overlay", histnorm="probability density",
                       opacity=0.55, nbins=60, category_orders={"set": list(values)}, title=title)
    fig.update_layout(legend_title_text="", yaxis_title="density", margin=dict(t=50, b=40, l=40, r=10))
    return fig


def path_figure(t: np.ndarray, norms: np.ndarray, start_label: str, end_label: str):
    """||J||_F along the straight path between two inputs (t = 0 at the first)."""
    fig = px.line(pd.DataFrame({"t": t, "||J||_F": norms}), x="t", y="||J||_F", markers=True,
                  title=f"Jacobian norm on the straight path from {start_label} (t = 0) to {end_label} (t = 1)")
    fig.update_layout(margin=dict(t=50, b=40, l=40, r=10))
    return fig


def plane_map_figure(xs, ys, grid, points: dict[str, np.ndarray]):
    """Heatmap of ||J||_F over the plane (toy2d) with the given 2-D point sets on top."""
    fig = go.Figure(go.Heatmap(x=xs, y=ys, z=grid, colorscale="Viridis", colorbar=dict(title="||J||_F")))
    for name, p in points.items():
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers", name=name, marker=dict(size=4, opacity=0.7)))
    fig.update_layout(title="Jacobian norm over the input plane", xaxis_title="x1", yaxis_title="x2",
                      legend=dict(orientation="h"), margin=dict(t=50, b=40, l=40, r=10))
    return fig


def cosine_heatmap_figure(matrix, class_names):
    """Heatmap of cos(centred class mean c, classifier vector c') (rows: means, columns: weights)."""
    names = [str(c) for c in class_names]
    fig = go.Figure(go.Heatmap(z=np.asarray(matrix), x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu",
                               reversescale=True, colorbar=dict(title="cos")))
    fig.update_layout(title="cos(class mean − global mean, classifier vector): a collapsed net has a bright diagonal",
                      xaxis_title="classifier vector of class", yaxis_title="centred mean of class",
                      yaxis=dict(autorange="reversed"), margin=dict(t=50, b=40, l=40, r=10))
    return fig


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], marker: tuple[float, float] | None = None):
    """ROC curves (ID = positive class) named by ``curves`` keys, the chance line, and an
    optional marker at the (FPR, TPR) of the chosen threshold."""
    fig = go.Figure()
    for name, (fpr, tpr) in curves.items():
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=name))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(dash="dot", color="grey")))
    if marker is not None:
        fig.add_trace(go.Scatter(x=[marker[0]], y=[marker[1]], mode="markers", name="threshold",
                                 marker=dict(size=12, symbol="x", color="black")))
    fig.update_layout(title="ROC (ID = positive class; a sample is called ID when its score ≥ threshold)",
                      xaxis_title="FPR (OOD called ID)", yaxis_title="TPR (ID kept)",
                      xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]), margin=dict(t=50, b=40, l=40, r=10))
    return fig


# --------------------------------------------------------------------------- cached wrappers
@st.cache_resource(max_entries=8, show_spinner="Loading checkpoint…")
def load_model_cached(path: str, mtime: float):
    """``(model, meta)`` of the checkpoint at ``path``; ``mtime`` only versions the cache key."""
    return load_checkpoint(path, device=select_device("auto"))


@st.cache_resource(max_entries=8, show_spinner="Building the benchmark…")
def benchmark_cached(path: str, mtime: float):
    """The benchmark the checkpoint was trained on, rebuilt once from its metadata; shared, read-only."""
    _, meta = load_model_cached(path, mtime)
    return load_benchmark_from_spec(meta.get("dataset"))


@st.cache_resource(max_entries=8, show_spinner="Extracting features…")
def outputs_cached(path: str, mtime: float) -> dict:
    """Model outputs (features, logits) of every split and OOD set of the checkpoint's
    benchmark, extracted once per (checkpoint, version); shared, treat as read-only."""
    model, _ = load_model_cached(path, mtime)
    return extract_benchmark_outputs(model, benchmark_cached(path, mtime))


def _scored_sets(outputs: dict) -> dict:
    """The ID test split (``"id"``) and the OOD sets of a benchmark's outputs (no train/val)."""
    return {name: out for name, out in outputs.items() if name not in ("train", "val")}


@st.cache_data(max_entries=16, show_spinner="Scoring the ID test split and the OOD sets…")
def evaluation_cached(path: str, mtime: float) -> dict:
    """:func:`evaluate_model` of the cached model: ``{report, scores, table}`` (pickleable)."""
    model, meta = load_model_cached(path, mtime)
    return evaluate_model(model, meta, outputs=dict(outputs_cached(path, mtime)), bench=benchmark_cached(path, mtime))


@st.cache_data(max_entries=16, show_spinner="Measuring the representation's geometry…")
def geometry_cached(path: str, mtime: float, jacobian: str | None = "estimate") -> dict:
    """:func:`ood_core.geometry.geometry_summary` of the cached model (JSON-able dict)."""
    model, _ = load_model_cached(path, mtime)
    return geometry_summary(model, benchmark_cached(path, mtime), outputs=dict(outputs_cached(path, mtime)),
                            jacobian=jacobian)


@st.cache_data(max_entries=16, show_spinner="Computing the 2-D map…")
def projection_cached(path: str, mtime: float, method: str = "pca", fit_on: str = "union",
                      normalize: bool = False, seed: int = 0) -> Projection:
    """:func:`ood_core.projection.project_benchmark` of the cached model, cached in memory and
    on disk (:func:`ood_core.projection.default_cache_dir`)."""
    model, _ = load_model_cached(path, mtime)
    return project_benchmark(model, benchmark_cached(path, mtime), method=method, fit_on=fit_on,
                             normalize=normalize, seed=seed,
                             outputs=dict(outputs_cached(path, mtime)), cache_dir=default_cache_dir())


@st.cache_data(max_entries=32, show_spinner="Computing Jacobian norms…")
def jacobian_norms_cached(path: str, mtime: float, method: str = "estimate", n_proj: int = 16,
                          probe_size: int = 256) -> dict[str, np.ndarray]:
    """||d(z/||z||)/dx||_F of the first ``probe_size`` samples of the ID test split (``"id"``)
    and of every OOD set (:func:`ood_core.geometry.jacobian_norm`)."""
    model, _ = load_model_cached(path, mtime)
    return jacobian_norms_by_set(model, benchmark_cached(path, mtime), method=method, n_proj=n_proj,
                                 probe_size=probe_size)


@st.cache_data(max_entries=32, show_spinner="Computing Jacobian norms along the path…")
def jacobian_path_cached(path: str, mtime: float, start: int, end: int, method: str = "exact",
                         steps: int = 33) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ood_core.geometry.jacobian_norm_path` between ID test samples ``start`` and ``end``."""
    model, _ = load_model_cached(path, mtime)
    x = benchmark_cached(path, mtime).test.x
    return jacobian_norm_path(model, x[start], x[end], steps=steps, method=method)


@st.cache_data(max_entries=8, show_spinner="Mapping the Jacobian norm over the plane…")
def jacobian_map_cached(path: str, mtime: float, resolution: int = 60):
    """``(xs, ys, grid, points)``: :func:`ood_core.geometry.jacobian_norm_map` over the
    bounds of the ID test split and every OOD set, and those sets' points (2-D inputs only)."""
    model, _ = load_model_cached(path, mtime)
    bench = benchmark_cached(path, mtime)
    if tuple(bench.input_shape) != (2,):
        raise OODCoreError(f"the plane map needs 2-D inputs (toy2d); {bench.name} has {tuple(bench.input_shape)}")
    points = {"ID (test)": bench.test.x.numpy(), **{f"OOD: {k}": v.numpy() for k, v in bench.ood.items()}}
    bounds = plane_bounds(np.concatenate(list(points.values())), margin=0.05)
    xs, ys, grid = jacobian_norm_map(model, bounds, resolution=resolution, method="exact")
    return xs, ys, grid, points


@st.cache_data(max_entries=16, show_spinner="Measuring energy shares…")
def energy_shares_cached(path: str, mtime: float, subspace: str = "weights") -> dict[str, np.ndarray]:
    """Per-sample share of ||z||^2 *outside* the principal subspace, for the ID test split
    and every OOD set: ``subspace="weights"`` = span{w_c} (the classifier's row space),
    ``"means"`` = the top-(C-1) centred class-mean directions of the training features."""
    model, _ = load_model_cached(path, mtime)
    outputs = outputs_cached(path, mtime)
    if subspace == "weights":
        basis = principal_subspace(weight=classifier_vectors(model))
    elif subspace == "means":
        bench = benchmark_cached(path, mtime)
        if bench.task != "multiclass":
            raise OODCoreError("the class-mean subspace needs single-label classes; use the classifier span")
        basis = class_mean_subspace(outputs["train"].features, bench.train.y, bench.num_classes)
    else:
        raise OODCoreError(f"subspace must be 'weights' or 'means', got {subspace!r}")
    return {name: 1.0 - subspace_energy_share(out.features, basis) for name, out in _scored_sets(outputs).items()}


@st.cache_data(max_entries=16)
def test_labels_cached(path: str, mtime: float) -> np.ndarray:
    """Labels of the checkpoint's ID test split ((N,) classes or (N, K) multi-hot)."""
    return benchmark_cached(path, mtime).test.y.numpy()


def teaching_mode() -> bool:
    """True when the sidebar's "Teaching mode" toggle is on: pages then open their explanation."""
    return bool(st.session_state.get("teaching", False))


def require_checkpoint():
    """``(path, mtime, model, meta)`` of the checkpoint chosen in the sidebar, for a page's top.

    Stops the page when none is chosen (app.py already says how to get one) or shows the
    file's error and stops when it cannot be read.
    """
    path = st.session_state.get("checkpoint")
    if not path:
        st.stop()
    try:
        mtime = file_mtime(path)
        model, meta = load_model_cached(path, mtime)
    except OODCoreError as e:
        st.error(str(e))
        st.stop()
    return path, mtime, model, meta


def companion_default(options: list[str], current: str, prefer: tuple[str, ...]) -> int:
    """Index in ``options`` of the checkpoint to show beside ``current``: the first file whose
    name starts with one of ``prefer`` and is not ``current``, else ``current`` itself."""
    for p in prefer:
        for i, o in enumerate(options):
            if o != current and Path(o).name.startswith(p):
                return i
    return options.index(current) if current in options else 0


@st.cache_data(max_entries=16, show_spinner="Reading feature norms…")
def feature_norms_cached(path: str, mtime: float) -> dict[str, np.ndarray]:
    """||z||_2 per sample for the ID test split (``"id"``) and every OOD set."""
    norm = make_score("feature_norm")  # the registry's ||z|| score
    return {name: norm(out) for name, out in _scored_sets(outputs_cached(path, mtime)).items()}


@st.cache_data(max_entries=16, show_spinner="Computing energies…")
def energies_cached(path: str, mtime: float) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(score name, per-sample score per set, per-label terms per set)``.

    Multiclass: the negative free energy logsumexp_k f_k (``energy``, Liu et al. 2020), and as
    per-label terms the logits f_k it is built from. Multi-label: JointEnergy sum_k softplus(f_k)
    (``joint_energy``, Wang et al. 2021) and its per-label terms softplus(f_k). High = ID.
    """
    multilabel = benchmark_cached(path, mtime).task == "multilabel"
    name = "joint_energy" if multilabel else "energy"
    score_fn = make_score(name)  # the registry's score: the same numbers as the evaluator's
    score, terms = {}, {}
    for set_name, out in _scored_sets(outputs_cached(path, mtime)).items():
        logits = out.logits.double()
        score[set_name] = score_fn(out)
        terms[set_name] = (torch.nn.functional.softplus(logits) if multilabel else logits).numpy()
    return name, score, terms


def figure_html(fig) -> str:
    """A stand-alone HTML file of a plotly figure, plotly.js inlined so it opens offline."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def show_figure(fig, key: str, file_stem: str, container=None) -> None:
    """Draw ``fig`` (in ``container``, default the page) with two ways to save it: the chart's
    camera button saves a PNG named ``file_stem`` (drawn by the browser), and a button below
    downloads an interactive HTML file. The HTML is built only when clicked (deferred), so an
    unused button costs nothing on a rerun."""
    where = container if container is not None else st
    where.plotly_chart(fig, key=key, config={"toImageButtonOptions": {"format": "png", "filename": file_stem,
                                                                       "scale": 2}})
    where.download_button("Download figure (HTML)", data=lambda: figure_html(fig), file_name=f"{file_stem}.html",
                          mime="text/html", on_click="ignore", key=f"{key}_html",
                          help="The camera icon on the chart saves a PNG")


def show_table(table: pd.DataFrame, key: str, file_stem: str, container=None) -> None:
    """A dataframe (no index) and a button that downloads it as CSV."""
    where = container if container is not None else st
    where.dataframe(table, hide_index=True, key=key)
    where.download_button("Download table (CSV)", data=table.to_csv(index=False).encode("utf-8"),
                          file_name=f"{file_stem}.csv", mime="text/csv", on_click="ignore", key=f"{key}_csv")


def or_stop(fn, *args):
    """``fn(*args)``, or the error shown and the page stopped when it raises OODCoreError."""
    try:
        return fn(*args)
    except OODCoreError as e:
        st.error(str(e))
        st.stop()


def compare_with(path: str, prefer: tuple[str, ...], key: str) -> str:
    """Sidebar-independent "Compare with" selectbox over the checkpoints beside ``path``;
    defaults to :func:`companion_default` with ``prefer``. Returns the chosen path."""
    options = [str(p) for p in list_checkpoints(Path(path).parent)]
    return st.selectbox("Compare with", options, index=companion_default(options, path, prefer), key=key,
                        format_func=lambda p: Path(p).name)


def side_by_side(paths: list[str], fetch, ood_set: str, sets=lambda result: result):
    """One column per checkpoint in ``paths``: yields ``(side, column, file name, result)``
    with ``result = fetch(path, mtime)`` for each checkpoint that can be read and whose
    ``sets(result)`` holds ``ood_set``. An unreadable file shows its error and one from
    another dataset a warning in its column, and is skipped. ``side`` is "left", "right", ...
    (for unique widget keys)."""
    for side, col, p in zip(("left", "right", "third", "fourth"), st.columns(len(paths)), paths):
        name = Path(p).name
        try:
            result = fetch(p, file_mtime(p))
        except OODCoreError as e:  # a broken second file must not take the page down
            col.error(str(e))
            continue
        if ood_set not in sets(result):
            col.warning(f"{name} has no OOD set {ood_set!r} (another dataset)")
            continue
        yield side, col, name, result
