"""The app's plotly figures (builders only: they return a figure, :func:`ood_core.app.widgets.show_figure`
draws it). Every score is high = ID."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ..metrics import roc_curve_points
from ..projection import Projection

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


def figure_html(fig) -> str:
    """A stand-alone HTML file of a plotly figure, plotly.js inlined so it opens offline."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def mechanism_figure(figure: dict, role: str, x_label: str):
    """The distributions of one side (``"baseline"`` or ``"method"``) of a stored mechanism."""
    side = figure[role]
    return distributions_figure({k: np.asarray(v) for k, v in side["values"].items()}, x_label,
                                f"{side['method']} ({side['file']})")


def mechanism_card_figure(figure: dict, x_label: str, height: int = 230):
    """The method's side of a stored mechanism, small (a Home page card): ID against each OOD
    group, no title (the card names it), the legend below."""
    fig = mechanism_figure(figure, "method", x_label)
    fig.update_layout(title=None, height=height, margin=dict(t=10, b=10, l=10, r=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.35, x=0, font=dict(size=10)),
                      xaxis_title=dict(text=x_label, font=dict(size=11)), yaxis_title=None)
    return fig


def roc_curves(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (FPR, TPR)}`` for :func:`roc_figure` from ``{name: (ID scores, OOD scores)}``."""
    return {name: tuple(roc_curve_points(id_s, ood_s)[:2]) for name, (id_s, ood_s) in pairs.items()}


def energy_terms_figure(names, terms: np.ndarray, score_name: str, value: float):
    """Bars of one sample's per-label terms of its energy (``energies_cached``'s terms)."""
    what = "softplus(f_k): this label's term of the JointEnergy" if score_name == "joint_energy" else \
        "logit f_k, times the method's logit_scale where it sets one (movr: T) (the energy is their log-sum-exp)"
    return px.bar(pd.DataFrame({"label": [str(n) for n in names], "term": terms}), x="label", y="term",
                  title=f"{score_name} = {value:.3f}; bars: {what}")


def enlarged_image(sample: np.ndarray, size: int = 160) -> np.ndarray:
    """A (C, H, W) input as one grey image about ``size`` pixels wide, for ``st.image``: the
    channel mean, enlarged by nearest neighbour (keeps the pixels crisp) and clipped to [0, 1]."""
    image = sample.mean(axis=0)
    zoom = max(1, size // image.shape[-1])
    return np.clip(np.kron(image, np.ones((zoom, zoom))), 0.0, 1.0)
