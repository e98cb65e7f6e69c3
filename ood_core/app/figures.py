"""The app's figures (builders only: they return a figure, :func:`ood_core.app.widgets.show_figure`
draws it). Every score is high = ID.

Histograms, bar and line charts, ROC curves, the cosine heatmap, the embedding map (click
selection) and attributions are Vega-Lite specs (:class:`VegaChart`). Training curves,
landscapes and the toy2d plane map are plotly figures. In a page opened cold, the browser
spends about 2.3 s loading, compiling and drawing five histograms with plotly.js (4.7 MB) on
2 CPU cores, 0.35 s with Vega (``benchmarks/chart_libraries.py``). So a page whose charts are
all Vega-Lite never loads plotly.js; with the default checkpoint, every page is such a page on
its first screen."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..metrics import roc_curve_points
from ..projection import Projection

HIST_BINS = 60  # bins of every density histogram, shared by its sets
# the sets of a histogram (ID first): contrasting hues, as plotly's default sequence
SET_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
               "#ff97ff", "#fecb52")


@dataclass
class VegaChart:
    """A Vega-Lite chart for ``st.vega_lite_chart``: ``spec`` (without data) and ``table``, the
    data it draws (also the chart's CSV download); ``height`` in pixels (None: Streamlit's default)."""
    spec: dict
    table: pd.DataFrame = field(repr=False)
    height: int | None = None


def vega_png(chart: VegaChart, width: int = 640, scale: float = 2.0) -> bytes:
    """``chart`` as a PNG, ``width`` (x ``scale``) pixels wide, drawn offline by vl-convert (no
    browser), for its download button."""
    import vl_convert

    values = json.loads(chart.table.to_json(orient="records"))  # NaN -> null, numpy scalars -> JSON
    sizes = {} if "hconcat" in chart.spec else {"width": width, "height": chart.height or 320}  # views sized
    return vl_convert.vegalite_to_png({**chart.spec, "data": {"values": values}, **sizes}, scale=scale)


def density_table(values: dict[str, np.ndarray], bins: int = HIST_BINS) -> pd.DataFrame:
    """Density histograms of several sets on one set of bin edges (``bins`` equal bins over the
    finite values of all sets; non-finite values are left out): one row per (set, bin), with
    columns ``set``, ``start``, ``end``, ``count`` and ``density`` = count / (n_set * width), so
    each set's bars have area 1 (an empty set has no rows). Sets keep the order of ``values``."""
    arrays = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in values.items()}
    arrays = {name: v[np.isfinite(v)] for name, v in arrays.items()}
    pooled = np.concatenate(list(arrays.values())) if arrays else np.empty(0)
    columns = ["set", "start", "end", "count", "density"]
    if not pooled.size:
        return pd.DataFrame(columns=columns)
    edges = np.histogram_bin_edges(pooled, bins=bins)  # equal values: a unit-wide range around them
    frames = []
    for name, v in arrays.items():
        if not v.size:
            continue
        counts, _ = np.histogram(v, bins=edges)
        frames.append(pd.DataFrame({"set": name, "start": edges[:-1], "end": edges[1:], "count": counts,
                                    "density": counts / (v.size * np.diff(edges))}))
    return pd.DataFrame(columns=columns) if not frames else pd.concat(frames, ignore_index=True)[columns]


def _colour(field_name: str, names: list[str], legend: dict) -> dict:
    """The colour encoding of one series per name, in that order, with :data:`SET_COLOURS`."""
    return {"field": field_name, "type": "nominal", "title": None, "sort": names,
            "scale": {"domain": names, "range": list(SET_COLOURS[:len(names)])}, "legend": legend}


def _legend(below: bool) -> dict:
    # below (narrow columns): two entries per row, so the plot keeps most of the height
    return {"orient": "bottom", "columns": 2, "labelLimit": 110} if below else {"orient": "right"}


def distributions_figure(values: dict[str, np.ndarray], x_label: str, title: str | None,
                         threshold: float | None = None, height: int | None = None,
                         legend_below: bool = False) -> VegaChart:
    """Overlaid density histograms, one colour per set in the order of ``values`` (the first is
    the reference), on shared bins (:func:`density_table`); a dashed rule at ``threshold`` when given."""
    table = density_table(values)
    bars = {
        "mark": {"type": "bar", "opacity": 0.55, "binSpacing": 0},
        "encoding": {
            "x": {"field": "start", "type": "quantitative", "title": x_label, "scale": {"zero": False}},
            "x2": {"field": "end"},
            "y": {"field": "density", "type": "quantitative", "title": "density", "stack": None},
            "y2": {"datum": 0},
            "color": _colour("set", list(values), _legend(legend_below)),
            "tooltip": [{"field": "set"}, {"field": "start", "format": ".4g"}, {"field": "end", "format": ".4g"},
                        {"field": "count"}, {"field": "density", "format": ".3g"}],
        },
    }
    spec: dict = {"layer": [bars]} if threshold is not None else dict(bars)
    if threshold is not None:
        spec["layer"].append({"mark": {"type": "rule", "strokeDash": [6, 4], "color": "black"},
                              "encoding": {"x": {"datum": float(threshold), "type": "quantitative"}}})
    if title:
        spec["title"] = title
    return VegaChart(spec, table, height)


def histogram_figure(id_scores, ood_scores, score_name: str, ood_name: str) -> VegaChart:
    """Overlaid density histograms of one score, ID test split vs one OOD set."""
    return distributions_figure({"ID (test)": id_scores, f"OOD: {ood_name}": ood_scores}, score_name,
                                f"{score_name}: ID vs {ood_name} (higher = more ID)")


HISTORY_KEYS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3", "nc4", "jnd")


def lines_chart(table: pd.DataFrame, x: str, y: str, series: str | None, title: str, x_title: str, y_title: str,
                points: bool = True, layers: list[dict] | None = None, x_domain=None, y_domain=None) -> VegaChart:
    """Lines of ``y`` against ``x`` (points in the order of the table's rows, one line per value of
    ``series`` in order of appearance), with optional extra Vega-Lite ``layers`` on top."""
    names = list(dict.fromkeys(table[series])) if series else []
    table = table.assign(_order=np.arange(len(table)))
    line: dict = {
        "mark": {"type": "line", "point": points, "tooltip": True},
        "encoding": {
            "x": {"field": x, "type": "quantitative", "title": x_title,
                  **({"scale": {"domain": list(x_domain)}} if x_domain else {})},
            "y": {"field": y, "type": "quantitative", "title": y_title,
                  "scale": {"domain": list(y_domain)} if y_domain else {"zero": False}},
            "order": {"field": "_order", "type": "quantitative"},
        },
    }
    if series:
        line["encoding"]["color"] = _colour(series, names, {"orient": "bottom", "direction": "vertical",
                                                            "labelLimit": 400})
    spec = {"title": title, "layer": [line, *(layers or [])]}
    return VegaChart(spec, table)


def history_figure(history: list[dict]):
    """Lines of the per-epoch geometry record (NC metrics, JND) of a training history, or None
    when nothing was recorded (``TrainConfig.geometry_every`` was 0)."""
    rows = [{"epoch": h["epoch"], "metric": k, "value": h[k]}
            for h in history for k in HISTORY_KEYS if k in h]
    if not rows:
        return None
    return lines_chart(pd.DataFrame(rows), "epoch", "value", "metric",
                       "Geometry over training (NC metrics tend to 0 under collapse; JND = unknown - known ||J||)",
                       "epoch", "value")


def path_figure(t: np.ndarray, norms: np.ndarray, start_label: str, end_label: str) -> VegaChart:
    """||J||_F along the straight path between two inputs (t = 0 at the first)."""
    table = pd.DataFrame({"t": np.asarray(t, dtype=np.float64), "||J||_F": np.asarray(norms, dtype=np.float64)})
    return lines_chart(table, "t", "||J||_F", None,
                       f"Jacobian norm on the straight path from {start_label} (t = 0) to {end_label} (t = 1)",
                       "t", "||J||_F")


def plane_map_figure(xs, ys, grid, points: dict[str, np.ndarray]):
    """Heatmap of ||J||_F over the plane (toy2d) with the given 2-D point sets on top."""
    fig = go.Figure(go.Heatmap(x=xs, y=ys, z=grid, colorscale="Viridis", colorbar=dict(title="||J||_F")))
    for name, p in points.items():
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers", name=name, marker=dict(size=4, opacity=0.7)))
    fig.update_layout(title="Jacobian norm over the input plane", xaxis_title="x1", yaxis_title="x2",
                      legend=dict(orientation="h"), margin=dict(t=50, b=40, l=40, r=10))
    return fig


def cosine_heatmap_figure(matrix, class_names) -> VegaChart:
    """Heatmap of cos(centred class mean c, classifier vector c') (rows: means, columns: weights)."""
    names = [str(c) for c in class_names]
    m = np.asarray(matrix, dtype=np.float64)
    table = pd.DataFrame({"mean of class": np.repeat(names, m.shape[1]), "vector of class": np.tile(names, m.shape[0]),
                          "cos": m.ravel()})
    spec = {"title": "cos(class mean − global mean, classifier vector): a collapsed net has a bright diagonal",
            "mark": {"type": "rect", "tooltip": True},
            "encoding": {"x": {"field": "vector of class", "type": "ordinal", "sort": names,
                               "title": "classifier vector of class"},
                         "y": {"field": "mean of class", "type": "ordinal", "sort": names,
                               "title": "centred mean of class"},
                         "color": {"field": "cos", "type": "quantitative", "title": "cos",
                                   "scale": {"scheme": "redblue", "domain": [-1, 1], "reverse": True}}}}
    return VegaChart(spec, table)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], marker: tuple[float, float] | None = None,
               title: str = "ROC (ID = positive class; a sample is called ID when its score ≥ threshold)"
               ) -> VegaChart:
    """ROC curves (ID = positive class) named by ``curves`` keys, the chance line (dotted), and an
    optional cross at the (FPR, TPR) of the chosen threshold."""
    table = pd.concat([pd.DataFrame({"curve": name, "FPR": np.asarray(fpr, dtype=np.float64),
                                     "TPR": np.asarray(tpr, dtype=np.float64)})
                       for name, (fpr, tpr) in curves.items()], ignore_index=True) if curves else \
        pd.DataFrame({"curve": pd.Series(dtype=str), "FPR": pd.Series(dtype=float), "TPR": pd.Series(dtype=float)})
    layers = [{"data": {"values": [{"FPR": 0.0, "TPR": 0.0}, {"FPR": 1.0, "TPR": 1.0}]},
               "mark": {"type": "line", "strokeDash": [2, 3], "color": "grey"},
               "encoding": {"x": {"field": "FPR", "type": "quantitative"},
                            "y": {"field": "TPR", "type": "quantitative"}},
               "name": "chance"}]
    if marker is not None:
        layers.append({"mark": {"type": "point", "shape": "cross", "size": 160, "color": "black", "filled": True},
                       "encoding": {"x": {"datum": float(marker[0]), "type": "quantitative"},
                                    "y": {"datum": float(marker[1]), "type": "quantitative"}},
                       "name": "threshold"})
    return lines_chart(table, "FPR", "TPR", "curve", title, "FPR (OOD called ID)", "TPR (ID kept)", points=False,
                       layers=layers, x_domain=(0, 1), y_domain=(0, 1.02))


CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")


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


OOD_SHAPES = ("cross", "diamond", "triangle-up", "square", "triangle-down", "triangle-right", "triangle-left",
              "wedge", "arrow")
EMBEDDING_PICKS = ("pick_id", "pick_ood")  # the map's point selections (one per layer)


MAP_POINTS_PER_SET = 3000  # drawn per set at most: a canvas scatter stays quick to send and draw


def drawn_indices(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """The indices of a set of ``n`` points that the map draws: all of them when ``n <=
    max_points`` (or ``max_points`` is None), else ``max_points`` of them drawn uniformly without
    replacement with a generator seeded by ``seed`` (the same points on every rerun), sorted."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def embedding_table(proj: Projection, scores: dict, score_name: str, id_labels, class_names: list[str],
                    sets: list[str], max_per_set: int | None = MAP_POINTS_PER_SET) -> pd.DataFrame:
    """The points of :func:`embedding_figure`: one row per sample with its map coordinates
    ``x``, ``y``, its ``set`` (``"id"`` for the ID test split) and ``index`` in that set, its
    legend ``group`` (an ID class, or ``"OOD: <set>"``) and its ``score``. ID rows come first,
    grouped by class; then each shown OOD set in the order of ``sets``.

    A set larger than ``max_per_set`` (default :data:`MAP_POINTS_PER_SET`; None: no limit) is
    drawn as a seeded uniform sample of that many points (:func:`drawn_indices`); ``index`` stays
    the sample's index in its whole set, so a clicked point is still the right sample."""
    id_xy = proj.coords["id"]
    id_scores = np.asarray(scores[f"id/{score_name}"], dtype=np.float64)
    id_kept = np.zeros(len(id_xy), dtype=bool)
    id_kept[drawn_indices(len(id_xy), max_per_set)] = True
    frames = [pd.DataFrame({"x": id_xy[idx, 0], "y": id_xy[idx, 1], "set": "id", "index": idx, "group": name,
                            "score": id_scores[idx]})
              for name, idx in ((name, idx[id_kept[idx]]) for name, idx in _id_groups(id_labels, class_names))
              if idx.size]
    for s in sets:
        if s in proj.coords and f"{s}/{score_name}" in scores:
            xy = proj.coords[s]
            idx = drawn_indices(len(xy), max_per_set)
            frames.append(pd.DataFrame({"x": xy[idx, 0], "y": xy[idx, 1], "set": s, "index": idx,
                                        "group": f"OOD: {s}",
                                        "score": np.asarray(scores[f"{s}/{score_name}"], dtype=np.float64)[idx]}))
    table = pd.concat(frames, ignore_index=True)
    table["x"], table["y"] = table["x"].astype(np.float64), table["y"].astype(np.float64)
    table["index"] = table["index"].astype(np.int64)
    return table


def embedding_figure(proj: Projection, scores: dict, score_name: str, id_labels, class_names: list[str],
                     sets: list[str], max_per_set: int | None = MAP_POINTS_PER_SET) -> VegaChart:
    """Scatter of a 2-D map (Vega-Lite): ID test points coloured by class, the OOD ``sets``
    coloured by ``score_name`` (high = ID) on one shared colour bar, a marker shape per set.

    The points are :func:`embedding_table`'s rows (at most ``max_per_set`` per set). A click selects a point: each layer has a
    point selection (:data:`EMBEDDING_PICKS`) on the fields ``set`` and ``index``, so the
    selection maps back to its sample (:func:`selected_sample`). The colour range spans the
    1st-99th percentile of the score over the ID test split and the shown OOD sets, so OOD
    points coloured like the top of the bar score like typical ID data.

    Why Vega-Lite and not a plotly WebGL scatter: the page then never loads plotly.js (4.7 MB),
    which cost the page opened cold about a second on 2 cores (``benchmarks/app_latency.py``).
    """
    table = embedding_table(proj, scores, score_name, id_labels, class_names, sets, max_per_set)
    pooled = table["score"].to_numpy()
    pooled = pooled[np.isfinite(pooled)]
    lo, hi = (np.percentile(pooled, [1, 99]) if pooled.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1e-9
    if proj.method == "pca":
        evr = proj.explained_variance_ratio or [float("nan")] * 2
        axes = [f"PC{i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(evr)]
    else:
        axes = ["UMAP 1", "UMAP 2"]
    groups = list(dict.fromkeys(table["group"]))
    id_groups = [g for g in groups if not g.startswith("OOD: ")]
    ood_groups = [g for g in groups if g.startswith("OOD: ")]
    position = {"x": {"field": "x", "type": "quantitative", "title": axes[0], "scale": {"zero": False}},
                "y": {"field": "y", "type": "quantitative", "title": axes[1], "scale": {"zero": False}}}
    tooltip = [{"field": "group", "title": "point"}, {"field": "index", "title": "#"},
               {"field": "score", "title": score_name, "format": ".4g"}]

    def pick(name: str) -> dict:
        return {"name": name, "select": {"type": "point", "fields": ["set", "index"], "on": "click",
                                          "clear": "dblclick"}}

    id_layer = {
        "transform": [{"filter": "datum.set === 'id'"}],
        "params": [pick(EMBEDDING_PICKS[0])],
        "mark": {"type": "circle", "size": 28, "opacity": 0.6, "cursor": "pointer"},
        "encoding": {**position, "tooltip": tooltip,
                     "color": {"field": "group", "type": "nominal", "title": "ID test", "sort": id_groups,
                               "scale": {"domain": id_groups, "scheme": "category10" if len(id_groups) <= 10
                                         else "tableau20"},
                               "legend": {"orient": "right"}}},
    }
    ood_layer = {
        "transform": [{"filter": "datum.set !== 'id'"}],
        "params": [pick(EMBEDDING_PICKS[1])],
        "mark": {"type": "point", "size": 30, "filled": True, "opacity": 0.85, "cursor": "pointer"},
        "encoding": {**position, "tooltip": tooltip,
                     "color": {"field": "score", "type": "quantitative", "title": [score_name, "(high = ID)"],
                               "scale": {"scheme": "viridis", "domain": [float(lo), float(hi)], "clamp": True}},
                     "shape": {"field": "group", "type": "nominal", "title": "OOD set", "sort": ood_groups,
                               "scale": {"domain": ood_groups,
                                         "range": [OOD_SHAPES[k % len(OOD_SHAPES)] for k in range(len(ood_groups))]},
                               "legend": {"orient": "bottom", "columns": 4}}},
    }
    fit = "ID test + OOD sets" if proj.fit_on == "union" else "ID test only"
    spec = {"title": f"{proj.method.upper()} of the features (fitted on {fit}); OOD coloured by {score_name} "
                     "(high = ID)",
            "layer": [id_layer, ood_layer] if ood_groups else [id_layer],
            "resolve": {"scale": {"color": "independent"}, "legend": {"color": "independent"}}}
    return VegaChart(spec, table, height=520)


def selected_sample(state) -> tuple[str, int] | None:
    """``(set name, index)`` of the point selected in :func:`embedding_figure`'s chart, or None
    when nothing is selected.

    ``state`` is what ``st.vega_lite_chart(..., on_select="rerun")`` returns (or its session-state
    value): ``{"selection": {"pick_id": [{"set": ..., "index": ...}], "pick_ood": [...]}}``. The
    OOD layer is drawn on top, so its pick is read first; values without both fields are skipped.
    """
    if not state:
        return None
    selection = state.get("selection") if hasattr(state, "get") else getattr(state, "selection", None)
    if not hasattr(selection, "get"):
        return None
    for name in reversed(EMBEDDING_PICKS):
        for point in selection.get(name) or []:
            if not hasattr(point, "get") or not isinstance(point.get("set"), str):
                continue
            try:
                return point["set"], int(point["index"])
            except (KeyError, TypeError, ValueError):
                continue
    return None


def attribution_table(sample: np.ndarray, attributions: np.ndarray) -> pd.DataFrame:
    """The numbers of :func:`attribution_figure`. Images (C, H, W) or (H, W): one row per pixel
    with ``row``, ``col``, ``input`` (the channel mean) and ``attribution`` (the sum over
    channels, which keeps completeness). Vectors (D,): one row per coordinate with ``coordinate``
    (``x1`` ...), ``input`` and ``attribution``."""
    sample, attributions = np.asarray(sample, dtype=np.float64), np.asarray(attributions, dtype=np.float64)
    if sample.ndim == 1:
        return pd.DataFrame({"coordinate": [f"x{i + 1}" for i in range(sample.size)], "input": sample,
                             "attribution": attributions})
    image = sample.mean(axis=0) if sample.ndim == 3 else sample
    heat = attributions.sum(axis=0) if attributions.ndim == 3 else attributions
    rows, cols = np.indices(image.shape)
    return pd.DataFrame({"row": rows.ravel(), "col": cols.ravel(), "input": image.ravel(), "attribution": heat.ravel()})


def attribution_figure(sample: np.ndarray, attributions: np.ndarray, score_name: str, title: str = "") -> VegaChart:
    """The input and its Integrated Gradients map side by side (Vega-Lite), from
    :func:`attribution_table`.

    Images: the input in grey and the attribution on a diverging scale centred at 0: blue
    (positive) pushed the score up, toward ID; red (negative) toward OOD. Vectors such as toy2d
    points: bars of the coordinates and of their attributions.
    """
    table = attribution_table(sample, attributions)
    m = float(np.max(np.abs(table["attribution"]))) or 1e-12
    side = 260
    if "coordinate" in table:
        def bars(field_name: str, title_text: str, colour: dict) -> dict:
            return {"title": title_text, "width": side, "height": side, "mark": {"type": "bar", "tooltip": True},
                    "encoding": {"x": {"field": "coordinate", "type": "nominal", "title": None,
                                       "sort": list(table["coordinate"])},
                                 "y": {"field": field_name, "type": "quantitative"}, "color": colour}}
        views = [bars("input", "input coordinates", {"value": "grey"}),
                 bars("attribution", f"IG of {score_name} (+ = toward ID)",
                      {"condition": {"test": "datum.attribution >= 0", "value": "#2166ac"}, "value": "#b2182b"})]
    else:
        n_rows, n_cols = int(table["row"].max()) + 1, int(table["col"].max()) + 1
        height = int(side * n_rows / max(n_rows, n_cols))
        width = int(side * n_cols / max(n_rows, n_cols))

        def pixels(field_name: str, title_text: str, scale: dict, legend) -> dict:
            axis = {"labels": False, "ticks": False, "title": None}
            return {"title": title_text, "width": width, "height": height, "mark": {"type": "rect"},
                    "encoding": {"x": {"field": "col", "type": "ordinal", "axis": axis},
                                 "y": {"field": "row", "type": "ordinal", "axis": axis},
                                 "color": {"field": field_name, "type": "quantitative", "scale": scale,
                                           "legend": legend},
                                 "tooltip": [{"field": "row"}, {"field": "col"},
                                             {"field": field_name, "format": "+.4f"}]}}
        views = [pixels("input", "input", {"scheme": "greys", "reverse": True}, None),
                 pixels("attribution", f"IG of {score_name} (blue = toward ID, red = toward OOD)",
                        {"scheme": "redblue", "domain": [-m, m], "domainMid": 0.0}, {"title": "IG"})]
    spec = {"title": title or f"Integrated Gradients of {score_name}", "hconcat": views,
            "resolve": {"scale": {"color": "independent"}}}
    return VegaChart(spec, table, height=side + 60)


def figure_html(fig) -> str:
    """A stand-alone HTML file of a plotly figure, plotly.js inlined so it opens offline."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def mechanism_figure(figure: dict, role: str, x_label: str) -> VegaChart:
    """The distributions of one side (``"baseline"`` or ``"method"``) of a stored mechanism."""
    side = figure[role]
    return distributions_figure({k: np.asarray(v) for k, v in side["values"].items()}, x_label,
                                f"{side['method']} ({side['file']})")


def mechanism_card_figure(figure: dict, x_label: str, height: int = 300) -> VegaChart:
    """The method's side of a stored mechanism, small (a Home page card): ID against each OOD
    group, no title (the card names it), the legend below."""
    values = {k: np.asarray(v) for k, v in figure["method"]["values"].items()}
    return distributions_figure(values, x_label, None, height=height, legend_below=True)


def roc_curves(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (FPR, TPR)}`` for :func:`roc_figure` from ``{name: (ID scores, OOD scores)}``."""
    return {name: tuple(roc_curve_points(id_s, ood_s)[:2]) for name, (id_s, ood_s) in pairs.items()}


def energy_terms_figure(names, terms: np.ndarray, score_name: str, value: float) -> VegaChart:
    """Bars of one sample's per-label terms of its energy (``energies_cached``'s terms)."""
    what = "softplus(f_k): this label's term of the JointEnergy" if score_name == "joint_energy" else \
        "logit f_k, times the method's logit_scale where it sets one (movr: T) (the energy is their log-sum-exp)"
    labels = [str(n) for n in names]
    table = pd.DataFrame({"label": labels, "term": np.asarray(terms, dtype=np.float64)})
    return VegaChart({"title": f"{score_name} = {value:.3f}; bars: {what}", "mark": "bar",
                      "encoding": {"x": {"field": "label", "type": "nominal", "sort": labels, "title": "label"},
                                   "y": {"field": "term", "type": "quantitative", "title": "term"},
                                   "tooltip": [{"field": "label"}, {"field": "term", "format": ".4g"}]}}, table)


def enlarged_image(sample: np.ndarray, size: int = 160) -> np.ndarray:
    """A (C, H, W) input as one grey image about ``size`` pixels wide, for ``st.image``: the
    channel mean, enlarged by nearest neighbour (keeps the pixels crisp) and clipped to [0, 1]."""
    image = sample.mean(axis=0)
    zoom = max(1, size // image.shape[-1])
    return np.clip(np.kron(image, np.ones((zoom, zoom))), 0.0, 1.0)
