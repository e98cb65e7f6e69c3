"""The app's tables: results shaped into DataFrames for ``st.dataframe`` or a Markdown table
(:func:`markdown_table`), and their CSV download (:func:`ood_core.app.widgets.show_table`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..claims import claim_rows
from ..errors import OODCoreError
from ..evaluate import FPR95_DEFINITION
from ..metrics import threshold_at_tpr

def score_names(scores: dict) -> list[str]:
    """Score names present in a per-sample score dict, in registry order."""
    return [k.split("/", 1)[1] for k in scores if k.startswith("id/")]


def ood_set_names(report: dict) -> list[str]:
    """OOD set names of a report, in evaluation order (near first, then far-real, then far-synthetic)."""
    return list(report.get("ood", {}))


def reported_id_quality(report: dict) -> tuple[str, float | None]:
    """``(label, value)`` of the ID quality metric: accuracy (multiclass) or mAP (multilabel)."""
    if "id_accuracy" in report:
        return "ID accuracy", report["id_accuracy"]
    if "id_map" in report:
        return "ID mAP", report["id_map"]
    return "ID accuracy", None


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


def model_card(meta: dict) -> pd.DataFrame:
    """The checkpoint as a readable card: one row per fact (what it is, its data, its model,
    how it was trained or imported), the raw metadata left to a JSON view."""
    from ..methods import METHODS

    ds, spec, cfg = meta.get("dataset") or {}, meta.get("model") or {}, meta.get("train_config") or {}
    method = meta.get("method")
    rows = [("Method", f"{method}: {METHODS[method].description}" if method in METHODS else str(method))]
    names = ds.get("class_names") or []
    known = ds.get("known") or []
    rows += [("Dataset", f"{ds.get('name')} ({ds.get('task')}, input {tuple(ds.get('input_shape') or ())})"),
             ("Known classes", ", ".join(str(names[k]) if isinstance(k, int) and k < len(names) else str(k)
                                         for k in known) or "-")]
    imported = meta.get("imported")
    if imported:
        pre = imported.get("preprocess") or {}
        rows += [("Architecture", f"{imported.get('arch')}: features {imported.get('feature_dim')}-d from "
                                  f"{imported.get('feature_layer') or 'the input of ' + str(imported.get('head_layer'))}"),
                 ("Weights", str(imported.get("weights"))),
                 ("Preprocessing", f"resize {pre.get('resize')}, crop {pre.get('crop')}, mean {pre.get('mean')}, "
                                   f"std {pre.get('std')}")]
    else:
        extra = [f"{k} {spec[k]}" for k in ("feature_dim", "norm") if spec.get(k) is not None]
        rows.append(("Architecture", f"{spec.get('arch')} backbone, {spec.get('head')} head"
                     + (f" ({', '.join(extra)})" if extra else "")
                     + (", spectral norm" if spec.get("spectral_norm") else "")))
    if cfg:
        rows.append(("Training", f"{cfg.get('epochs')} epochs, {cfg.get('optimizer')} lr {cfg.get('lr'):g}, "
                                 f"weight decay {cfg.get('weight_decay'):g}, batch {cfg.get('batch_size')}, "
                                 f"seed {cfg.get('seed')}, on {cfg.get('device_used')}"
                     if isinstance(cfg.get("lr"), (int, float)) and isinstance(cfg.get("weight_decay"), (int, float))
                     else str(cfg)))
    if meta.get("init"):
        rows.append(("Started from", str(meta["init"].get("source"))))
    if meta.get("loss_params"):
        rows.append(("Loss parameters", ", ".join(f"{k}={v}" for k, v in meta["loss_params"].items())))
    if meta.get("partial"):
        rows.append(("Partial", f"saved after epoch {meta['partial'].get('epochs_done')} of "
                                f"{meta['partial'].get('epochs')} (no OOD report)"))
    rows.append(("Created", str(meta.get("created"))))
    return pd.DataFrame(rows, columns=["", "value"])


def headline_metrics(report: dict) -> pd.DataFrame:
    """Mean AUROC and FPR95 (in %) of each score per OOD group: the card's one table of results."""
    rows = [{"score": score, "group": group, "AUROC %": 100 * m["auroc"], "FPR95 %": 100 * m["fpr95"]}
            for group, per_score in (report.get("group_means") or {}).items() for score, m in per_score.items()]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    groups, scores = list(dict.fromkeys(df["group"])), list(dict.fromkeys(df["score"]))  # the report's order
    wide = df.pivot(index="score", columns="group", values=["AUROC %", "FPR95 %"]).round(1)
    return wide.reindex(index=scores, columns=[(m, g) for m in ("AUROC %", "FPR95 %") for g in groups])


TABLE_COLUMNS = ("ood_set", "group", "score", "auroc", "fpr95", "aupr_in", "aupr_out")
TABLE_CAPTION = (
    f"FPR95 = {FPR95_DEFINITION}; lower is better. AUROC, AUPR-In (ID positive) and AUPR-Out "
    "(OOD positive): higher is better. Every score follows one convention: high score = in-distribution (ID). "
    "Rows `mean (near)`, `mean (far-real)`, `mean (far-synthetic)` (`mean (far)` on real-data presets) "
    "average the OOD sets of each group."
)


def metric_table(rows: list[dict], scores: list[str] | None = None, ood_sets: list[str] | None = None) -> pd.DataFrame:
    """The table rows as a DataFrame: the standard columns first, any other metric after;
    only the rows of ``scores`` and of ``ood_sets`` (and the group means) when given."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    first = [c for c in TABLE_COLUMNS if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    if scores is not None:
        df = df[df["score"].isin(scores)]
    if ood_sets is not None:
        df = df[df["ood_set"].isin(ood_sets) | df["ood_set"].str.startswith("mean")]
    return df


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


def group_mean_table(report: dict | None) -> pd.DataFrame:
    """AUROC and FPR95 per OOD group (near, far-real, far-synthetic, ...) and score of a training run's OOD report."""
    rows = [{"group": group, "score": score, "auroc": m.get("auroc"), "fpr95": m.get("fpr95")}
            for group, per in ((report or {}).get("group_means") or {}).items() for score, m in per.items()]
    return pd.DataFrame(rows, columns=["group", "score", "auroc", "fpr95"])


def score_percentile_table(scores: dict, set_name: str, index: int) -> pd.DataFrame:
    """Every score of one sample next to the ID test split's distribution of that score.

    ``scores``: per-sample scores ``"SET/SCORE"`` (:func:`evaluation_cached`). Columns:
    ``value``; ``ID percentile`` = 100 * fraction of ID test samples whose score is <= value
    (scores are high = ID, so a low percentile means the sample looks less ID than most ID
    data); ``ID median``; ``called ID at TPR95`` = value >= the threshold that keeps 95% of
    the ID test split (the FPR95 operating point).
    """
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


def claims_overview(results: dict) -> pd.DataFrame:
    """One row per claim: its method, baseline, verdict and how many parts hold."""
    return pd.DataFrame([{"claim": c["key"], "paper": c["paper"], "verdict": c["verdict"],
                          "parts holding": f"{sum(bool(p['holds']) for p in c['parts'])} of {len(c['parts'])}"}
                         for c in results["claims"]])


def claim_table(claim: dict) -> pd.DataFrame:
    return pd.DataFrame(claim_rows(claim))


def feature_norm_rows(model: str, norms: dict[str, np.ndarray], metrics: dict[str, dict]) -> list[dict]:
    """Rows of the Feature magnitudes table for one model: mean ||z|| of ID and of each OOD set,
    and the AUROC of ||z|` as a score (``metrics``: :func:`ood_core.app.cached.score_metrics_cached`)."""
    return [{"model": model, "ood_set": s, "mean ||z|| ID": norms["id"].mean(), "mean ||z|| OOD": norms[s].mean(),
             "AUROC of ||z||": metrics[s]["auroc"]} for s in norms if s != "id"]


def energy_rows(model: str, score: str, metrics: dict[str, dict]) -> list[dict]:
    """Rows of the Energy scores table for one model: the AUROC of its energy score per OOD set."""
    return [{"model": model, "score": score, "ood_set": s, "AUROC": m["auroc"]} for s, m in metrics.items()]


def jnd_table(norms: dict[str, np.ndarray]) -> pd.DataFrame:
    """Mean ||J||_F per set and the JND of each OOD set against the ID test split (``"id"``)."""
    from ..geometry import jnd

    diff = jnd({name: np.asarray(v) for name, v in norms.items()})  # the one JND implementation
    ood = [n for n in norms if n != "id"]
    return pd.DataFrame({"set": ["ID (test)"] + ood, "mean ||J||_F": [float(np.mean(norms[n])) for n in ["id"] + ood],
                         "JND vs ID": [0.0] + [diff[n] for n in ood]})


def energy_share_table(shares: dict[str, np.ndarray]) -> pd.DataFrame:
    """Mean share of ||z||^2 outside the principal subspace per set (NaN samples skipped)."""
    ood = [n for n in shares if n != "id"]
    return pd.DataFrame({"set": ["ID (test)"] + ood,
                         "mean share outside": [float(np.nanmean(shares[n])) for n in ["id"] + ood]})


# Characters that Streamlit's Markdown would read as table, emphasis, math or escapes.
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\|$*_~`[]<>"})
MISSING_CELL = "–"


def format_cell(value) -> str:
    """How :func:`markdown_table` writes one value.

    Booleans ``yes``/``no``; integers as they are; floats with 4 decimals, trailing zeros
    dropped (0.923456 -> ``0.9235``, 93.4 -> ``93.4``), or 4 significant digits in scientific
    notation when 0 < |x| < 1e-3 or |x| >= 1e5 (``1.235e-05``); None and NaN ``–``.
    """
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return MISSING_CELL
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v != 0 and not 1e-3 <= abs(v) < 1e5:
            return f"{v:.3e}"
        text = f"{v:.4f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return " ".join(str(value).split()).translate(_MARKDOWN_SPECIAL)


def markdown_table(table: pd.DataFrame, index: bool = False) -> str:
    """``table`` as a GitHub-flavoured Markdown table (what ``st.markdown`` draws), cells by
    :func:`format_cell`, numeric columns right-aligned.

    Why not ``st.table``: its scripts (about 0.85 MB with their number and date formatting)
    load with the first static table a browser shows, which held back the first render of a
    page opened cold on 2 cores by about 0.2 s; Markdown's scripts are loaded by every page.
    ``index=True`` writes the index as the first column; a column MultiIndex is flattened
    (levels joined by a space).
    """
    df = table.reset_index() if index else table
    names = [" ".join(str(p) for p in c if str(p)) if isinstance(c, tuple) else str(c) for c in df.columns]
    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else ":---"
             for c in df.columns]
    lines = ["| " + " | ".join(format_cell(n) if n else " " for n in names) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join(lines)
