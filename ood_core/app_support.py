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
import streamlit as st

from .checkpoint import load_checkpoint
from .data import load_benchmark_from_spec
from .errors import CheckpointError
from .evaluate import FPR95_DEFINITION, evaluate, extract_benchmark_outputs
from .geometry import geometry_summary
from .methods import default_score_names
from .projection import Projection, default_cache_dir, project_benchmark
from .runtime import select_device

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


def evaluate_model(model, meta: dict, outputs: dict | None = None) -> dict:
    """Evaluate ``model`` on its benchmark; a pickleable dict ``{report, scores, table}``.

    ``scores`` maps ``"SET/SCORE"`` (``"id/SCORE"`` for the ID test split) to a 1-D numpy
    array; ``table`` is :meth:`Evaluation.table`'s list of row dicts. ``outputs``: model
    outputs already extracted (reused, see :func:`outputs_cached`).
    """
    bench = load_benchmark_from_spec(meta.get("dataset"))
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


# --------------------------------------------------------------------------- cached wrappers
@st.cache_resource(max_entries=8, show_spinner="Loading checkpoint…")
def load_model_cached(path: str, mtime: float):
    """``(model, meta)`` of the checkpoint at ``path``; ``mtime`` only versions the cache key."""
    return load_checkpoint(path, device=select_device("auto"))


@st.cache_resource(max_entries=8, show_spinner="Extracting features…")
def outputs_cached(path: str, mtime: float) -> dict:
    """Model outputs (features, logits) of every split and OOD set of the checkpoint's
    benchmark, extracted once per (checkpoint, version); shared, treat as read-only."""
    model, meta = load_model_cached(path, mtime)
    return extract_benchmark_outputs(model, load_benchmark_from_spec(meta.get("dataset")))


@st.cache_data(max_entries=16, show_spinner="Scoring the ID test split and the OOD sets…")
def evaluation_cached(path: str, mtime: float) -> dict:
    """:func:`evaluate_model` of the cached model: ``{report, scores, table}`` (pickleable)."""
    model, meta = load_model_cached(path, mtime)
    return evaluate_model(model, meta, outputs=dict(outputs_cached(path, mtime)))


@st.cache_data(max_entries=16, show_spinner="Measuring the representation's geometry…")
def geometry_cached(path: str, mtime: float, jacobian: str | None = "estimate") -> dict:
    """:func:`ood_core.geometry.geometry_summary` of the cached model (JSON-able dict)."""
    model, meta = load_model_cached(path, mtime)
    bench = load_benchmark_from_spec(meta.get("dataset"))
    return geometry_summary(model, bench, outputs=dict(outputs_cached(path, mtime)), jacobian=jacobian)


@st.cache_data(max_entries=16, show_spinner="Computing the 2-D map…")
def projection_cached(path: str, mtime: float, method: str = "pca", fit_on: str = "union",
                      normalize: bool = False, seed: int = 0) -> Projection:
    """:func:`ood_core.projection.project_benchmark` of the cached model, cached in memory and
    on disk (:func:`ood_core.projection.default_cache_dir`)."""
    model, meta = load_model_cached(path, mtime)
    bench = load_benchmark_from_spec(meta.get("dataset"))
    return project_benchmark(model, bench, method=method, fit_on=fit_on, normalize=normalize, seed=seed,
                             outputs=dict(outputs_cached(path, mtime)), cache_dir=default_cache_dir())
