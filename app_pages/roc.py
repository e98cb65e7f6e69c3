"""ROC curves for chosen scores and OOD sets, a threshold slider with live TPR/FPR and
confusion counts, and the metric table. Widgets and plots only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from ood_core import app_support as sup
from ood_core.metrics import confusion_at_threshold, roc_curve_points, threshold_at_tpr

st.title("ROC & metrics")
with st.expander("What am I looking at?", expanded=sup.teaching_mode()):
    st.markdown("Every score is *high for ID*. A threshold t calls a sample ID when its score ≥ t; "
                "sweeping t traces the ROC curve of TPR (ID kept) against FPR (OOD wrongly kept):")
    st.latex(r"\mathrm{TPR}(t) = \Pr[s(x_{\mathrm{ID}}) \ge t],\quad \mathrm{FPR}(t) = \Pr[s(x_{\mathrm{OOD}}) \ge t],"
             r"\quad \mathrm{FPR95} = \mathrm{FPR}(t_{95})")
    st.markdown("AUROC is the area under the curve; FPR95 is the FPR at the threshold keeping 95% of ID. "
                "Move the slider and watch the confusion counts: a curve hugging the top-left corner "
                "means a threshold exists that keeps ID and rejects OOD.")

path, version, model, meta = sup.require_checkpoint()
result = sup.or_stop(sup.evaluation_cached, path, version, sup.user_ood())
report, scores = result["report"], result["scores"]
score_options, ood_options = sup.score_names(scores), sup.ood_set_names(report)
for key, opts in (("roc_scores", score_options), ("roc_sets", ood_options)):
    if any(v not in opts for v in st.session_state.get(key, [])):
        st.session_state.pop(key, None)  # another checkpoint with other scores or sets was chosen

c1, c2 = st.columns(2)
chosen_scores = c1.multiselect("Scores", score_options, default=score_options[:2], key="roc_scores")
chosen_sets = c2.multiselect("OOD sets", ood_options, default=ood_options[:1], key="roc_sets")
if not chosen_scores or not chosen_sets:
    st.info("Pick at least one score and one OOD set.")
    st.stop()

t1, t2 = st.columns(2)
thr_score = t1.selectbox("Threshold on score", chosen_scores, key="thr_score")
thr_set = t2.selectbox("against OOD set", chosen_sets, key="thr_set")
id_s, ood_s = scores[f"id/{thr_score}"], scores[f"{thr_set}/{thr_score}"]
both = np.concatenate([id_s, ood_s])
lo, hi = float(np.min(both)), float(np.max(both))
default = float(np.clip(threshold_at_tpr(id_s, 0.95), lo, hi))
slider_key = f"thr_{thr_score}_{thr_set}"  # one slider per (score, set): ranges differ
threshold = st.slider("Threshold (called ID when score ≥ threshold; starts at the 95%-TPR threshold)",
                      lo, hi if hi > lo else lo + 1e-9, default, key=slider_key, format="%.4f")
conf = confusion_at_threshold(id_s, ood_s, threshold)

curves = {}
for s in chosen_scores:
    for o in chosen_sets:
        fpr, tpr, _ = roc_curve_points(scores[f"id/{s}"], scores[f"{o}/{s}"])
        curves[f"{s} vs {o} (AUROC {report['ood'][o][s]['auroc']:.3f})"] = (fpr, tpr)
sup.show_figure(sup.roc_figure(curves, (conf["fpr"], conf["tpr"])), "roc_chart", f"{Path(path).stem}_roc")

m1, m2, m3, m4, m5, m6 = st.columns(6)
m1.metric("TPR", f"{conf['tpr']:.3f}")
m2.metric("FPR", f"{conf['fpr']:.3f}")
m3.metric("ID kept", conf["id_as_id"])
m4.metric("ID rejected", conf["id_as_ood"])
m5.metric("OOD accepted", conf["ood_as_id"])
m6.metric("OOD rejected", conf["ood_as_ood"])

st.subheader("Metric table")
table = sup.metric_table(result["table"])
table = table[table["score"].isin(chosen_scores)
              & (table["ood_set"].isin(chosen_sets) | table["ood_set"].str.startswith("mean"))]
sup.show_table(table, "roc_table", f"{Path(path).stem}_roc_metrics")
st.caption(sup.TABLE_CAPTION)
