"""Computation behind the Streamlit app (``app.py`` + ``pages/``); the pages only draw.

Plain functions (usable without a running Streamlit server, e.g. in tests or a notebook):

* :func:`checkpoint_dir` / :func:`list_checkpoints`: where the app looks for ``*.pt`` files.
* :func:`compute_evaluation`: load a checkpoint, rebuild its benchmark, score every OOD set.
* :func:`metric_table`, :func:`score_names`, :func:`ood_set_names`, :func:`metadata_summary`:
  shape the results for display.
* :func:`histogram_figure`: the ID-vs-OOD score histogram (plotly).
* :func:`history_figure`: the per-epoch NC metrics and JND of a training history (plotly).

Cached wrappers, keyed on ``(path, version)``: ``version`` (:func:`checkpoint_version`) is
a SHA-256 of the file's content and, for a real-data checkpoint, the data root, so a
checkpoint replaced on disk is re-read (even with the same mtime) and another data root
gives other results, never stale ones:

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
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
import torch

from .checkpoint import load_checkpoint, read_checkpoint
from .claims import MECHANISMS  # noqa: F401  (the Claims page reads it from here)
from .data import IMAGE_SUFFIXES, load_benchmark_from_spec, load_user_ood
from .errors import CheckpointError, DataError, DataNotFound, OODCoreError
from .evaluate import FPR95_DEFINITION, evaluate, extract_benchmark_outputs
from .feature_cache import default_feature_cache
from .fileio import file_name_problem
from .geometry import (class_mean_subspace, classifier_vectors, geometry_summary, jacobian_norm_map,
                       jacobian_norm, jacobian_norm_path, plane_bounds, principal_subspace,
                       subspace_energy_share)
from .methods import default_score_names, method_score_params
from .projection import Projection, default_cache_dir, project_benchmark
from .runtime import select_device
from .scores import make_score

CHECKPOINT_ENV = "OOD_CHECKPOINT_DIR"
DATA_ROOT_KEY = "data_root"  # the sidebar's "Data root" text input
OUTPUT_STORE_ENTRIES = 8  # (checkpoint, version[, upload]) entries of model outputs kept in memory
REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_COMMAND = "python -m ood_core train --method ce --dataset digits --out checkpoints/ce_digits.pt"
TABLE_COLUMNS = ("ood_set", "group", "score", "auroc", "fpr95", "aupr_in", "aupr_out")
TABLE_CAPTION = (
    f"FPR95 = {FPR95_DEFINITION}; lower is better. AUROC, AUPR-In (ID positive) and AUPR-Out "
    "(OOD positive): higher is better. Every score follows one convention: high score = in-distribution (ID). "
    "Rows `mean (near)`, `mean (far-real)`, `mean (far-synthetic)` (`mean (far)` on real-data presets) "
    "average the OOD sets of each group."
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


def _stat(path: str | Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file (was it moved or deleted?)") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({getattr(e, 'strerror', None) or e})") from None


# Content digests of checkpoint files, memoised per path on everything stat() tells about the
# file: {path: (stat key, digest)}. A file whose inode was changed less than
# _RACY_WINDOW_NS ago is hashed on every call, not memoised: timestamps come from a coarse
# clock (a few ms), so a file rewritten in place twice within one tick with the same size
# would otherwise keep its first digest (git's "racily clean" problem).
_DIGESTS: dict[str, tuple[tuple, str]] = {}
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_MAX = 256
_RACY_WINDOW_NS = 2_000_000_000


def _stat_key(s: os.stat_result) -> tuple:
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def file_version(path: str | Path) -> str:
    """A SHA-256 of the file's bytes (hex, 32 characters): the file part of a checkpoint's
    cache key. Unlike a modification time it changes whenever the content does, also when a
    file is replaced by another with the same mtime (``cp -p``, ``os.utime``, a coarse-mtime
    file system). Memoised on (device, inode, size, mtime_ns, ctime_ns), so an unchanged file
    is read once (checkpoints are well under a few MB; hashing one costs about a millisecond
    per MB). CheckpointError if the file is gone or unreadable."""
    import hashlib
    import time

    key = str(path)
    before = _stat(path)
    with _DIGESTS_LOCK:
        memo = _DIGESTS.get(key)
    if memo is not None and memo[0] == _stat_key(before):
        return memo[1]
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file (was it moved or deleted?)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({e.strerror or e})") from None
    digest = h.hexdigest()[:32]
    after = _stat(path)
    if _stat_key(after) == _stat_key(before) and time.time_ns() - after.st_ctime_ns > _RACY_WINDOW_NS:
        with _DIGESTS_LOCK:
            _DIGESTS[key] = (_stat_key(after), digest)
            while len(_DIGESTS) > _DIGESTS_MAX:
                _DIGESTS.pop(next(iter(_DIGESTS)))
    return digest


def evaluate_model(model, meta: dict, outputs: dict | None = None, bench=None,
                   extra_ood: dict[str, torch.Tensor] | None = None) -> dict:
    """Evaluate ``model`` on its benchmark; a pickleable dict ``{report, scores, table}``.

    ``scores`` maps ``"SET/SCORE"`` (``"id/SCORE"`` for the ID test split) to a 1-D numpy
    array; ``table`` is :meth:`Evaluation.table`'s list of row dicts. ``outputs``: model
    outputs already extracted (reused, see :func:`outputs_cached`); ``bench``: the benchmark
    already rebuilt from ``meta`` (default: rebuilt here); ``extra_ood``: the user's own OOD
    sets ``{name: tensor}`` in the model's input format (group ``user``).
    """
    bench = bench if bench is not None else load_benchmark_from_spec(meta.get("dataset"))
    result = evaluate(model, bench, score_names=default_score_names(meta, bench), outputs=outputs,
                      extra_ood=extra_ood, score_params=method_score_params(meta))
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
    """OOD set names of a report, in evaluation order (near first, then far-real, then far-synthetic)."""
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


USER_OOD_KEY = "user_ood"  # session_state key: the path of the uploaded OOD set (or absent)
ARRAY_SUFFIXES = (".npy", ".npz")


def save_upload(files, folder: str | Path | None = None) -> Path:
    """Store the user's uploaded OOD set on disk and return the path :func:`load_user_ood` reads.

    ``files``: objects with ``.name`` and ``.getvalue()`` (Streamlit's UploadedFile): either
    one ``.npy``/``.npz`` array file, or image files (an image folder). They are written under
    ``folder`` (default ``<default_cache_dir()>/uploads``) in a sub-folder named by a SHA-256
    of the names and contents, so the returned path identifies the content (a sound cache key)
    and uploading the same files twice writes nothing new. File names are reduced to their
    last component, so a crafted name cannot write outside that folder. Returns the array
    file, or the image folder ``.../<digest>/<set name>`` (set name: ``uploaded_images``).
    Raises DataError for no files, an unsupported suffix, or arrays mixed with images.
    """
    import hashlib
    import shutil
    import tempfile

    files = [f for f in (files or []) if f is not None]
    if not files:
        raise DataError("no file uploaded; upload one .npy/.npz array file or image files")
    # the last component only (also of a Windows path), so a crafted name cannot leave the folder
    names = [Path(str(f.name).replace("\\", "/")).name for f in files]
    kinds = []
    for name in names:
        problem = file_name_problem(name)
        if problem:
            raise DataError(f"{name[:40]!r}: the file name {problem}; rename the file")
        suffix = Path(name).suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            kinds.append("array")
        elif suffix in IMAGE_SUFFIXES:
            kinds.append("image")
        else:
            raise DataError(f"{name}: unsupported file type {suffix or '(none)'!r}; upload one .npy/.npz array "
                            f"file or image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if "array" in kinds and len(files) > 1:
        raise DataError(f"upload one .npy/.npz array file on its own, or only image files; got {len(files)} files "
                        f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    if len(set(names)) != len(names):
        raise DataError("two uploaded files share a name; rename one (images from sub-folders are stored side by side)")
    digest = hashlib.sha256()
    for name, f in sorted(zip(names, files), key=lambda t: t[0]):
        data = f.getvalue()
        digest.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little") + data)
    root = Path(folder) if folder is not None else default_cache_dir() / "uploads"
    target = root / digest.hexdigest()[:24]
    leaf = names[0] if kinds[0] == "array" else "uploaded_images"
    if not (target / leaf).exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))  # written whole, then renamed into place
        try:
            (tmp / leaf).parent.mkdir(parents=True, exist_ok=True)
            if kinds[0] == "array":
                (tmp / leaf).write_bytes(files[0].getvalue())
            else:
                (tmp / leaf).mkdir()
                for name, f in zip(names, files):
                    (tmp / leaf / name).write_bytes(f.getvalue())
            try:
                tmp.rename(target)
            except OSError:  # another session stored the same content first: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target / leaf


def user_ood() -> str | None:
    """The uploaded OOD set's path stored by the sidebar when it loads for the chosen
    checkpoint's input format, else None (the sidebar shows why). Pages pass it to the cached
    functions' ``user_ood`` parameter."""
    upload, path = st.session_state.get(USER_OOD_KEY), st.session_state.get("checkpoint")
    if not upload or not path:
        return None
    try:
        user_ood_set(path, checkpoint_version(path), upload)
    except OODCoreError:
        return None
    return upload


def forget_upload() -> None:
    """``on_click`` of the sidebar's "Remove it": drop the user's OOD set and empty the
    uploaders (they get new keys; an uploader's value cannot be set from code). The stored
    files stay in the cache folder, so uploading them again is instant."""
    st.session_state.pop(USER_OOD_KEY, None)
    st.session_state.pop("user_ood_error", None)
    st.session_state["user_ood_nonce"] = st.session_state.get("user_ood_nonce", 0) + 1


def store_upload(widget_key: str) -> None:
    """``on_change`` callback of the sidebar's uploaders: store the files of ``widget_key``
    with :func:`save_upload` and remember the path (or forget it when the files are removed);
    an error is kept in ``st.session_state["user_ood_error"]`` for the sidebar to show."""
    value = st.session_state.get(widget_key)
    files = value if isinstance(value, list) else [value] if value is not None else []
    st.session_state.pop("user_ood_error", None)
    st.session_state.pop(USER_OOD_KEY, None)
    if not files:
        return
    try:
        st.session_state[USER_OOD_KEY] = str(save_upload(files))
    except (OODCoreError, OSError, ValueError) as e:
        st.session_state["user_ood_error"] = str(e)


def comparison_table(results: dict[str, dict], ood_set: str, scores: list[str] | None = None) -> pd.DataFrame:
    """One row per (model, score) on ``ood_set``: the metrics of each model's evaluation
    (``results``: file name -> :func:`evaluate_model` result) with its method, for the
    ``scores`` given (default: every score of each model), best AUROC first within a score."""
    rows = []
    for name, result in results.items():
        per_score = result["report"]["ood"].get(ood_set, {})
        for score, m in per_score.items():
            if scores is None or score in scores:
                rows.append({"model": name, "method": result.get("method"), "score": score,
                             **{k: m[k] for k in ("auroc", "fpr95", "aupr_in", "aupr_out")}})
    df = pd.DataFrame(rows, columns=["model", "method", "score", "auroc", "fpr95", "aupr_in", "aupr_out"])
    return df.sort_values(["score", "auroc"], ascending=[True, False], kind="stable").reset_index(drop=True)


def same_dataset_checkpoints(paths: list[str], current: str, dataset_of, limit: int = 4) -> list[str]:
    """``current`` and then the other files of ``paths`` trained on the same dataset
    (``dataset_of(path)`` gives a file's dataset name, None when unreadable), at most ``limit``."""
    want = dataset_of(current)
    same = [p for p in paths if p != current and want is not None and dataset_of(p) == want]
    return [current, *same][:limit]


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
@st.cache_resource(max_entries=16, show_spinner="Loading checkpoint…")
def load_model_cached(path: str, version: tuple):
    """``(model, meta)`` of the checkpoint at ``path``; ``version`` only versions the cache key."""
    return load_checkpoint(path, device=select_device("auto"))


def data_root_setting() -> str | None:
    """The data root for real-data checkpoints: the sidebar's "Data root" (``$OOD_DATA_ROOT``
    until it is edited), or None when empty."""
    from .real_data import DATA_ROOT_ENV

    root = st.session_state.get(DATA_ROOT_KEY, os.environ.get(DATA_ROOT_ENV, ""))
    return str(Path(root.strip()).expanduser()) if root and root.strip() else None


def needs_data_root(dataset: str | None) -> bool:
    """Whether ``dataset`` (a name from a checkpoint or the registry) is read from the data root."""
    from .real_data import PRESETS

    return dataset in PRESETS


def preset_status_markdown(root: str) -> str:
    """A short markdown list of the real-data presets and which of their sets are under ``root``."""
    from .real_data import PRESETS, preset_status

    if not Path(root).is_dir():
        return f"`{root}` is not a folder."
    lines = []
    for preset in PRESETS:
        status = preset_status(preset, root)
        id_name = PRESETS[preset]["id"]
        if not status[id_name]:
            lines.append(f"- `{preset}`: missing")
            continue
        sets = ", ".join(f"{n.rstrip('?')} {'✓' if ok else '✗'}" for n, ok in status.items() if n != id_name)
        ready = all(ok for n, ok in status.items() if not n.endswith("?"))
        lines.append(f"- `{preset}`: {'ready' if ready else 'OOD sets missing'} ({sets or 'no OOD sets'})")
    return "\n".join(lines)


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
def benchmark_cached(path: str, version: tuple):
    """The benchmark the checkpoint was trained on, rebuilt once from its metadata and the data
    root in ``version``; shared, read-only."""
    _, meta = load_model_cached(path, version)
    return _benchmark_for_app(lambda root: load_benchmark_from_spec(meta.get("dataset"), data_root=root),
                              version[1] if len(version) > 1 else None)


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
    name, x = user_ood_cached(user_ood, tuple(benchmark_cached(path, version).input_shape))
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


def outputs_with_progress(path: str, version: tuple, user_ood: str | None = None) -> dict:
    """:func:`outputs_cached` with a progress bar while sets are extracted or read from the
    disk cache (nothing is drawn when every set is already in memory)."""
    bar = None

    def show(name, done, total, from_cache):
        nonlocal bar
        if bar is None:
            bar = st.progress(0.0)
        how = "read from the feature cache" if from_cache else f"{done:,}/{total:,} samples"
        bar.progress(done / max(total, 1), text=f"Features of `{name}`: {how}")

    try:
        return outputs_cached(path, version, user_ood, progress=show)
    finally:
        if bar is not None:
            bar.empty()


def _scored_sets(outputs: dict) -> dict:
    """The ID test split (``"id"``) and the OOD sets of a benchmark's outputs (no train/val)."""
    return {name: out for name, out in outputs.items() if name not in ("train", "val")}


@st.cache_data(max_entries=16, show_spinner="Scoring the ID test split and the OOD sets…")
def evaluation_cached(path: str, version: tuple, user_ood: str | None = None) -> dict:
    """:func:`evaluate_model` of the cached model: ``{report, scores, table}`` (pickleable);
    with ``user_ood`` the user's set is scored too (group ``user``)."""
    model, meta = load_model_cached(path, version)
    return evaluate_model(model, meta, outputs=dict(outputs_cached(path, version, user_ood)),
                          bench=benchmark_cached(path, version), extra_ood=user_ood_set(path, version, user_ood))


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


def rerun_when_done(future, every_s: float = 1.0) -> None:
    """Poll ``future`` from a fragment every ``every_s`` seconds (only the fragment reruns) and
    rerun the whole page once it is done."""
    @st.fragment(run_every=every_s)
    def _poll():
        if future.done():
            st.rerun()

    _poll()


@st.cache_data(max_entries=256, show_spinner=False)
def jacobian_norm_set_cached(path: str, version: tuple, set_name: str, method: str = "estimate", n_proj: int = 16,
                             probe_size: int = 256, user_ood: str | None = None) -> np.ndarray:
    """||d(z/||z||)/dx||_F of the first ``probe_size`` samples of one set (``"id"`` = the ID
    test split, an OOD set, or the user's), as :func:`ood_core.geometry.jacobian_norms_by_set`
    computes it (same seed per set, so the numbers are the same)."""
    model, _ = load_model_cached(path, version)
    x = set_inputs(benchmark_cached(path, version), set_name, user_ood_set(path, version, user_ood))
    return jacobian_norm(model, x[:probe_size], method=method, n_proj=n_proj, seed=0)


def jacobian_norms_cached(path: str, version: tuple, method: str = "estimate", n_proj: int = 16,
                          probe_size: int = 256, user_ood: str | None = None, progress=None) -> dict[str, np.ndarray]:
    """||d(z/||z||)/dx||_F of the first ``probe_size`` samples of the ID test split (``"id"``),
    of every OOD set and of the user's, one cached set at a time (:func:`jacobian_norm_set_cached`):
    exact norms on many samples take seconds per set, so ``progress(done, total, set_name)``
    is called after each set (for a progress bar) and a page left midway keeps what it finished."""
    bench = benchmark_cached(path, version)
    names = ["id", *bench.ood, *user_ood_set(path, version, user_ood)]
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
    return {name: 1.0 - subspace_energy_share(out.features, basis) for name, out in _scored_sets(outputs).items()}


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


# --------------------------------------------------------------------------- in-app training (Models page)
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")


@st.cache_resource(max_entries=4, show_spinner="Building the benchmark…")
def benchmark_by_name_cached(name: str, data_root: str | None = None):
    """The benchmark ``name`` with its default split (what the in-app training uses), real
    datasets read from ``data_root``; shared with the background training thread, read-only."""
    from .data import load_benchmark

    return _benchmark_for_app(lambda root: load_benchmark(name, data_root=root), data_root)


def training_status_text(snap) -> str:
    """One line for the progress bar of a :class:`ood_core.jobs.JobSnapshot`."""
    if snap.status == "queued":
        return "Queued: waiting for another training run in this app to finish"
    return (f"Epoch {snap.epoch}/{snap.epochs} · step {snap.step}/{snap.steps} · {snap.phase} · "
            f"{snap.elapsed_s:.1f} s")


def loss_curve_figure(loss_steps, losses, steps_per_epoch: int, history: list[dict]):
    """Training loss per step (thin line) and its sample-weighted mean per epoch (markers,
    drawn at the epoch's last step); x = global step (epoch e, step s -> (e-1)*steps + s)."""
    fig = go.Figure(go.Scatter(x=np.asarray(loss_steps, dtype=np.int64), y=np.asarray(losses, dtype=np.float64),
                               mode="lines", name="loss (per step)", line=dict(width=1)))
    rows = [h for h in history if "train_loss" in h]
    if rows:
        fig.add_trace(go.Scatter(x=np.array([h["epoch"] * steps_per_epoch for h in rows], dtype=np.int64),
                                 y=np.array([h["train_loss"] for h in rows], dtype=np.float64),
                                 mode="markers+lines", name="epoch mean", marker=dict(size=7)))
    fig.update_layout(title="Training loss", xaxis_title=f"step ({steps_per_epoch} per epoch)", yaxis_title="loss",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
                      margin=dict(t=60, b=40, l=40, r=10))
    return fig


def epoch_metrics_figure(history: list[dict]):
    """Validation metrics (``val_*`` keys of a training history) per epoch; None before the first epoch ends."""
    keys = sorted({k for h in history for k in h if k.startswith("val_")})
    if not keys:
        return None
    fig = go.Figure()
    for k in keys:
        pts = [(h["epoch"], h[k]) for h in history if k in h]
        fig.add_trace(go.Scatter(x=[e for e, _ in pts], y=[v for _, v in pts], mode="lines+markers",
                                 name=k.removeprefix("val_")))
    fig.update_layout(title="Validation (known classes) per epoch", xaxis_title="epoch", yaxis_title="value",
                      xaxis=dict(dtick=1 if len(history) <= 20 else None),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
                      margin=dict(t=60, b=40, l=40, r=10))
    return fig


def group_mean_table(report: dict | None) -> pd.DataFrame:
    """AUROC and FPR95 per OOD group (near, far-real, far-synthetic, ...) and score of a training run's OOD report."""
    rows = [{"group": group, "score": score, "auroc": m.get("auroc"), "fpr95": m.get("fpr95")}
            for group, per in ((report or {}).get("group_means") or {}).items() for score, m in per.items()]
    return pd.DataFrame(rows, columns=["group", "score", "auroc", "fpr95"])


def landscape_figure(landscape, points: dict | None = None, class_names: list[str] | None = None,
                     max_points: int = 400):
    """Two panels of one :class:`ood_core.landscape.Landscape`: left the decision regions
    (predicted class per grid point), right the OOD score (high = ID) with the decision
    boundaries as white lines; ``points`` = {"x": (N, 2), "y": (N,)} (training points,
    coloured by class) are drawn on both, at most ``max_points`` of them (an even stride:
    the figure is redrawn while training runs, and the browser shares the machine)."""
    from plotly.subplots import make_subplots

    predicted, score = np.asarray(landscape.predicted), np.asarray(landscape.score, dtype=np.float64)
    n_classes = int(max(predicted.max(), (np.max(points["y"]) if points is not None else 0))) + 1
    names = list(class_names or [])
    names += [f"class {k}" for k in range(len(names), n_classes)]
    colours = [CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in range(n_classes)]
    # a stepped colour scale: class k owns [k - 0.5, k + 0.5]
    scale = []
    for k, c in enumerate(colours):
        scale += [[k / n_classes, c], [(k + 1) / n_classes, c]]
    epoch = "" if landscape.epoch is None else f"epoch {landscape.epoch}: "
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("Decision regions (predicted class)",
                                        f"{landscape.score_name} score (high = ID) and decision boundaries"))
    fig.add_trace(go.Heatmap(x=landscape.xs, y=landscape.ys, z=predicted.astype(np.float64), zmin=-0.5,
                             zmax=n_classes - 0.5, colorscale=scale, opacity=0.45, showscale=False,
                             name="predicted class",
                             hovertemplate="x=%{x:.2f}, y=%{y:.2f}<br>class %{z}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(x=landscape.xs, y=landscape.ys, z=score, colorscale="Viridis", name=landscape.score_name,
                             colorbar=dict(title=landscape.score_name, x=1.02),
                             hovertemplate="x=%{x:.2f}, y=%{y:.2f}<br>score=%{z:.3f}<extra></extra>"), row=1, col=2)
    for k in range(n_classes):
        if (predicted == k).any() and not (predicted == k).all():
            fig.add_trace(go.Contour(x=landscape.xs, y=landscape.ys, z=(predicted == k).astype(np.float64),
                                     contours=dict(start=0.5, end=0.5, size=1, coloring="none"),
                                     line=dict(color="white", width=2), showscale=False, hoverinfo="skip",
                                     showlegend=False, name=f"boundary of {names[k]}"), row=1, col=2)
    if points is not None:
        x, y = np.asarray(points["x"], dtype=np.float32), np.asarray(points["y"])
        stride = max(1, -(-len(x) // max_points))
        x, y = x[::stride], y[::stride]
        for k in range(n_classes):
            sel = x[y == k]
            for col in (1, 2):
                fig.add_trace(go.Scatter(x=sel[:, 0], y=sel[:, 1], mode="markers", name=names[k], legendgroup=names[k],
                                         showlegend=col == 1,
                                         marker=dict(size=4, color=colours[k], line=dict(width=0.5, color="white"))),
                              row=1, col=col)
    for col in (1, 2):
        fig.update_xaxes(title_text="x1", range=[landscape.xs[0], landscape.xs[-1]], row=1, col=col)
        fig.update_yaxes(title_text="x2", range=[landscape.ys[0], landscape.ys[-1]], row=1, col=col,
                         scaleanchor="x" if col == 1 else "x2")
    fig.update_layout(title=f"{epoch}what the model decides (left) and how ID it finds each point (right)",
                      legend=dict(orientation="h", y=-0.15), height=480, margin=dict(t=70, b=40, l=40, r=10))
    return fig


# --------------------------------------------------------------------------- embeddings page
ATTRIBUTION_STEPS = (32, 64, 128, 256)  # IG path points offered by the Embeddings page
EMBEDDING_SELECTION_HELP = "Click a point to show it below (or pick a sample by hand)."


def set_inputs(bench, set_name: str, user_sets: dict | None = None) -> torch.Tensor:
    """The inputs of one scored set: ``"id"`` is the ID test split, any other name an OOD set
    of the benchmark or of ``user_sets`` (the user's upload). OODCoreError for an unknown name."""
    if set_name == "id":
        return bench.test.x
    sources = {**bench.ood, **(user_sets or {})}
    if set_name not in sources:
        raise OODCoreError(f"no set named {set_name!r}; this benchmark has: id, {', '.join(sources)}")
    return sources[set_name]


def selected_sample(state) -> tuple[str, int] | None:
    """``(set name, index)`` of the first point selected in :func:`embedding_figure`'s chart,
    read from the point's ``customdata`` (``[set, index]``), or None when nothing is selected.

    ``state`` is what ``st.plotly_chart(..., on_select="rerun")`` returns (or its session-state
    value): ``{"selection": {"points": [{"customdata": [...], ...}, ...], ...}}``. Points
    without that customdata (e.g. from another figure) are skipped.
    """
    if not state:
        return None
    selection = state.get("selection") if hasattr(state, "get") else getattr(state, "selection", None)
    points = (selection.get("points") if hasattr(selection, "get") else None) or []
    for point in points:
        data = point.get("customdata") if hasattr(point, "get") else None
        if isinstance(data, (list, tuple)) and len(data) == 2 and isinstance(data[0], str):
            try:
                return data[0], int(data[1])
            except (TypeError, ValueError):
                continue
    return None


def score_percentile_table(scores: dict, set_name: str, index: int) -> pd.DataFrame:
    """Every score of one sample next to the ID test split's distribution of that score.

    ``scores``: per-sample scores ``"SET/SCORE"`` (:func:`evaluation_cached`). Columns:
    ``value``; ``ID percentile`` = 100 * fraction of ID test samples whose score is <= value
    (scores are high = ID, so a low percentile means the sample looks less ID than most ID
    data); ``ID median``; ``called ID at TPR95`` = value >= the threshold that keeps 95% of
    the ID test split (the FPR95 operating point).
    """
    from .metrics import threshold_at_tpr

    rows = []
    for name in score_names(scores):
        key = f"{set_name}/{name}"
        if key not in scores:
            continue
        values = np.asarray(scores[key])
        if not 0 <= index < values.size:
            raise OODCoreError(f"sample #{index} is out of range: {set_name!r} has {values.size} samples")
        id_scores = np.asarray(scores[f"id/{name}"], dtype=np.float64)
        value = float(values[index])
        rows.append({"score": name, "value": value,
                     "ID percentile": 100.0 * float(np.mean(id_scores <= value)),
                     "ID median": float(np.median(id_scores)),
                     "called ID at TPR95": bool(value >= threshold_at_tpr(id_scores, 0.95))})
    return pd.DataFrame(rows, columns=["score", "value", "ID percentile", "ID median", "called ID at TPR95"])


def _id_groups(labels: np.ndarray, class_names: list[str]) -> list[tuple[str, np.ndarray]]:
    """``(legend name, indices)`` of the ID test points: one group per class (multiclass), or
    per number of labels present (multi-label: label sets are too many to colour)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        names = [str(c) for c in class_names] or [str(k) for k in range(int(labels.max()) + 1)]
        return [(f"ID: {names[k] if k < len(names) else k}", np.flatnonzero(labels == k))
                for k in range(max(len(names), int(labels.max()) + 1)) if (labels == k).any()]
    counts = (labels > 0.5).sum(axis=1)
    return [(f"ID: {n} label{'s' if n != 1 else ''}", np.flatnonzero(counts == n)) for n in np.unique(counts)]


OOD_SYMBOLS = ("x", "diamond", "cross", "triangle-up", "square", "star", "triangle-down", "hexagon")


def embedding_figure(proj: Projection, scores: dict, score_name: str, id_labels, class_names: list[str],
                     sets: list[str]):
    """WebGL scatter of a 2-D map: ID test points coloured by class, the OOD ``sets`` coloured
    by ``score_name`` (high = ID) on one shared colour bar, a marker symbol per set.

    Every trace carries ``customdata = [set, index]`` per point (``"id"`` for the ID test
    split), so a selected point maps back to its sample (:func:`selected_sample`). The colour
    range spans the 1st-99th percentile of the score over the ID test split and the shown OOD
    sets, so OOD points coloured like the top of the bar score like typical ID data.
    """
    fig = go.Figure()
    id_xy = proj.coords["id"]
    palette = px.colors.qualitative.Plotly
    for k, (name, idx) in enumerate(_id_groups(id_labels, class_names)):
        fig.add_trace(go.Scattergl(
            x=id_xy[idx, 0], y=id_xy[idx, 1], mode="markers", name=name,
            marker=dict(size=5, opacity=0.55, color=palette[k % len(palette)]),
            customdata=[["id", int(i)] for i in idx],
            hovertemplate=f"{name} #%{{customdata[1]}}<br>{score_name}=%{{text}}<extra></extra>",
            text=[f"{v:.3f}" for v in np.asarray(scores[f"id/{score_name}"])[idx]]))
    shown = [s for s in sets if s in proj.coords and f"{s}/{score_name}" in scores]
    pooled = np.concatenate([np.asarray(scores[f"id/{score_name}"], dtype=np.float64)]
                            + [np.asarray(scores[f"{s}/{score_name}"], dtype=np.float64) for s in shown])
    pooled = pooled[np.isfinite(pooled)]
    lo, hi = (np.percentile(pooled, [1, 99]) if pooled.size else (0.0, 1.0))
    for k, s in enumerate(shown):
        xy, values = proj.coords[s], np.asarray(scores[f"{s}/{score_name}"], dtype=np.float64)
        fig.add_trace(go.Scattergl(
            x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"OOD: {s}",
            marker=dict(size=6, symbol=OOD_SYMBOLS[k % len(OOD_SYMBOLS)], color=values, coloraxis="coloraxis"),
            customdata=[[s, i] for i in range(len(xy))],
            hovertemplate=f"OOD: {s} #%{{customdata[1]}}<br>{score_name}=%{{marker.color:.3f}}<extra></extra>"))
    if proj.method == "pca":
        evr = proj.explained_variance_ratio or [float("nan")] * 2
        axes = [f"PC{i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(evr)]
    else:
        axes = ["UMAP 1", "UMAP 2"]
    fit = "ID test + OOD sets" if proj.fit_on == "union" else "ID test only"
    fig.update_layout(
        title=f"{proj.method.upper()} of the features (fitted on {fit}); OOD coloured by {score_name} (high = ID)",
        xaxis_title=axes[0], yaxis_title=axes[1], height=560, legend=dict(orientation="h", y=-0.12),
        coloraxis=dict(colorscale="Viridis", cmin=float(lo), cmax=float(hi if hi > lo else lo + 1e-9),
                       colorbar=dict(title=f"{score_name}<br>(high = ID)")),
        margin=dict(t=50, b=40, l=40, r=10), dragmode="pan")
    return fig


def attribution_figure(sample: np.ndarray, attributions: np.ndarray, score_name: str, title: str = ""):
    """The input and its Integrated Gradients map side by side.

    Images (C, H, W): the input in grey (channel mean) and the attribution summed over
    channels (a sum keeps completeness) on a diverging scale centred at 0: blue (positive)
    pushed the score up, toward ID; red (negative) toward OOD. Vectors (D,) such as toy2d
    points: bars of the coordinates and of their attributions.
    """
    from plotly.subplots import make_subplots

    sample, attributions = np.asarray(sample, dtype=np.float64), np.asarray(attributions, dtype=np.float64)
    if sample.ndim == 1:
        names = [f"x{i + 1}" for i in range(sample.size)]
        fig = make_subplots(rows=1, cols=2, subplot_titles=("input coordinates", f"IG of {score_name} (+ = toward ID)"))
        fig.add_trace(go.Bar(x=names, y=sample, name="input", marker_color="grey",
                             text=[f"{v:.3f}" for v in sample]), row=1, col=1)
        fig.add_trace(go.Bar(x=names, y=attributions, name="attribution",
                             marker_color=["#2166ac" if a >= 0 else "#b2182b" for a in attributions],
                             text=[f"{v:+.3f}" for v in attributions]), row=1, col=2)
        fig.update_layout(showlegend=False)
    else:
        image = sample.mean(axis=0) if sample.ndim == 3 else sample
        heat = attributions.sum(axis=0) if attributions.ndim == 3 else attributions
        m = float(np.max(np.abs(heat))) or 1e-12
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                            subplot_titles=("input", f"IG of {score_name} (blue = toward ID, red = toward OOD)"))
        fig.add_trace(go.Heatmap(z=image, colorscale="gray", showscale=False, name="input",
                                 hovertemplate="row %{y}, col %{x}<br>value %{z:.3f}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Heatmap(z=heat, colorscale="RdBu", zmin=-m, zmax=m, zmid=0.0, name="attribution",
                                 colorbar=dict(title="IG"),
                                 hovertemplate="row %{y}, col %{x}<br>IG %{z:+.4f}<extra></extra>"), row=1, col=2)
        for col, anchor in ((1, "x"), (2, "x2")):
            fig.update_yaxes(autorange="reversed", scaleanchor=anchor, row=1, col=col)
            fig.update_xaxes(constrain="domain", row=1, col=col)
    fig.update_layout(title=title or f"Integrated Gradients of {score_name}", height=380,
                      margin=dict(t=70, b=40, l=40, r=10))
    return fig


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
    from .attribution import integrated_gradients

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


def teaching_mode() -> bool:
    """True when the sidebar's "Teaching mode" toggle is on: pages then open their explanation."""
    return bool(st.session_state.get("teaching", False))


def require_checkpoint(features: bool = True):
    """``(path, version, model, meta)`` of the checkpoint chosen in the sidebar, for a page's top.

    Stops the page when none is chosen (app.py already says how to get one) or shows the
    file's error and stops when it cannot be read. With ``features`` the model's outputs on
    every set are made ready first, with a progress bar (:func:`outputs_with_progress`).
    """
    path = st.session_state.get("checkpoint")
    if not path:
        st.stop()
    try:
        version = checkpoint_version(path)
        model, meta = load_model_cached(path, version)
    except OODCoreError as e:
        st.error(str(e))
        st.stop()
    if features:
        or_stop(outputs_with_progress, path, version, user_ood())
    return path, version, model, meta


def companion_default(options: list[str], current: str, prefer: tuple[str, ...]) -> int:
    """Index in ``options`` of the checkpoint to show beside ``current``: the first file whose
    name starts with one of ``prefer`` and is not ``current``, else ``current`` itself."""
    for p in prefer:
        for i, o in enumerate(options):
            if o != current and Path(o).name.startswith(p):
                return i
    return options.index(current) if current in options else 0


@st.cache_data(max_entries=16, show_spinner="Reading feature norms…")
def feature_norms_cached(path: str, version: tuple, user_ood: str | None = None) -> dict[str, np.ndarray]:
    """||z||_2 per sample for the ID test split (``"id"``) and every OOD set (and the user's)."""
    norm = make_score("feature_norm")  # the registry's ||z|| score
    return {name: norm(out) for name, out in _scored_sets(outputs_cached(path, version, user_ood)).items()}


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
    for set_name, out in _scored_sets(outputs_cached(path, version, user_ood)).items():
        logits = scale * out.logits.double()
        score[set_name] = score_fn(out)
        terms[set_name] = (torch.nn.functional.softplus(logits) if multilabel else logits).numpy()
    return name, score, terms


def figure_html(fig) -> str:
    """A stand-alone HTML file of a plotly figure, plotly.js inlined so it opens offline."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def show_figure(fig, key: str, file_stem: str, container=None, on_select="ignore",
                selection_mode=("points", "box", "lasso")):
    """Draw ``fig`` (in ``container``, default the page) with two ways to save it: the chart's
    camera button saves a PNG named ``file_stem`` (drawn by the browser), and a button below
    downloads an interactive HTML file. The HTML is built only when clicked (deferred), so an
    unused button costs nothing on a rerun. ``on_select``/``selection_mode`` go to
    ``st.plotly_chart``; returns its value (the selection state when ``on_select="rerun"``)."""
    where = container if container is not None else st
    event = where.plotly_chart(fig, key=key, on_select=on_select, selection_mode=selection_mode,
                               config={"toImageButtonOptions": {"format": "png", "filename": file_stem, "scale": 2}})
    where.download_button("Download figure (HTML)", data=lambda: figure_html(fig), file_name=f"{file_stem}.html",
                          mime="text/html", on_click="ignore", key=f"{key}_html",
                          help="The camera icon on the chart saves a PNG")
    return event


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


def side_by_side(paths: list[str], fetch, ood_set: str, sets=lambda result: result, user_ood: str | None = None):
    """One column per checkpoint in ``paths``: yields ``(side, column, file name, result)``
    with ``result = fetch(path, version, user_ood)`` for each checkpoint that can be read and whose
    ``sets(result)`` holds ``ood_set``. An unreadable file shows its error and one from
    another dataset a warning in its column, and is skipped. ``side`` is "left", "right", ...
    (for unique widget keys)."""
    for side, col, p in zip(("left", "right", "third", "fourth"), st.columns(len(paths)), paths):
        name = Path(p).name
        try:
            result = fetch(p, checkpoint_version(p), user_ood)
        except OODCoreError as e:  # a broken second file must not take the page down
            col.error(str(e))
            continue
        if ood_set not in sets(result):
            col.warning(f"{name} has no OOD set {ood_set!r} (another dataset)")
            continue
        yield side, col, name, result


# --------------------------------------------------------------------------- claims page
SHIPPED_CHECKPOINTS = REPO_ROOT / "checkpoints"


@st.cache_data(max_entries=4, show_spinner=False)
def _claims_results(path: str, version: str) -> dict:
    from .claims import load_results

    return load_results(path)


def claims_results(path: str | Path | None = None) -> dict:
    """The stored results of ``benchmarks/compare.py`` (claims and runs), re-read when the file
    changes. OODCoreError with the command to run when it is missing."""
    from . import claims

    path = Path(path or claims.COMPARE_RESULTS)
    if not path.is_file():
        return claims.load_results(path)  # raises the one-line error
    return _claims_results(str(path), file_version(path))


@st.cache_data(max_entries=2, show_spinner="Computing the mechanism figures on the shipped checkpoints…")
def _mechanisms_computed(folder: str, versions: tuple) -> dict:
    from .claims import compute_mechanisms

    return compute_mechanisms(folder)


def claims_mechanisms(folder: str | Path = SHIPPED_CHECKPOINTS) -> dict:
    """Per-sample mechanism values on the shipped checkpoints: the stored file when it matches
    the checkpoints' contents (the usual case: read, not computed), else computed once."""
    from .claims import load_mechanisms

    stored = load_mechanisms(folder)
    if stored is not None:
        return stored
    versions = tuple((p.name, file_version(p)) for p in list_checkpoints(folder))
    return _mechanisms_computed(str(folder), versions)


def verdict_markdown(verdict: str) -> str:
    """A claim's verdict as a coloured badge: green holds, orange partly, red does not, grey none."""
    color = {"holds": "green", "partly": "orange", "does not hold": "red"}.get(verdict, "gray")
    return f"**Verdict:** :{color}-badge[{verdict}]"


def claims_overview(results: dict) -> pd.DataFrame:
    """One row per claim: its method, baseline, verdict and how many parts hold."""
    return pd.DataFrame([{"claim": c["key"], "paper": c["paper"], "verdict": c["verdict"],
                          "parts holding": f"{sum(bool(p['holds']) for p in c['parts'])} of {len(c['parts'])}"}
                         for c in results["claims"]])


def claim_table(claim: dict) -> pd.DataFrame:
    from .claims import claim_rows

    return pd.DataFrame(claim_rows(claim))


def mechanism_figure(figure: dict, role: str, x_label: str):
    """The distributions of one side (``"baseline"`` or ``"method"``) of a stored mechanism."""
    side = figure[role]
    return distributions_figure({k: np.asarray(v) for k, v in side["values"].items()}, x_label,
                                f"{side['method']} ({side['file']})")
