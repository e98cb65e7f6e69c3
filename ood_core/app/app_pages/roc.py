"""ROC curves for chosen scores and OOD sets, a threshold slider with live TPR/FPR and
confusion counts, and the metric table. Widgets and plots only."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core.app import cached, figures, state, tables, widgets

st.title("ROC & metrics")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown("Every score is *high for ID*. A threshold t calls a sample ID when its score ≥ t; "
                "sweeping t traces the ROC curve of TPR (ID kept) against FPR (OOD wrongly kept):")
    st.latex(r"\mathrm{TPR}(t) = \Pr[s(x_{\mathrm{ID}}) \ge t],\quad \mathrm{FPR}(t) = \Pr[s(x_{\mathrm{OOD}}) \ge t],"
             r"\quad \mathrm{FPR95} = \mathrm{FPR}(t_{95})")
    st.markdown("AUROC is the area under the curve; FPR95 is the FPR at the threshold keeping 95% of ID. "
                "Move the slider and watch the confusion counts: a curve hugging the top-left corner "
                "means a threshold exists that keeps ID and rejects OOD.")

path, version, model, meta = widgets.require_checkpoint()
own = widgets.or_stop(cached.evaluation_cached, path, version, widgets.user_ood())
extra = widgets.detector_picker(own, meta, key="roc_detectors")
result = widgets.or_stop(cached.evaluation_cached, path, version, widgets.user_ood(), extra) if extra else own
report, scores = result["report"], result["scores"]
for name, why in (report.get("skipped_scores") or {}).items():
    st.warning(f"`{name}` cannot be computed on this model: {why}")
score_options, ood_options = tables.score_names(scores), tables.ood_set_names(report)
for key, opts in (("roc_scores", score_options), ("roc_sets", ood_options)):
    if any(v not in opts for v in st.session_state.get(key, [])):
        st.session_state.pop(key, None)  # another checkpoint with other scores or sets was chosen

c1, c2 = st.columns(2)
chosen_scores = widgets.url_multiselect("Scores", score_options, key="roc_scores", param="scores", container=c1,
                                        default=score_options[:2])
chosen_sets = widgets.url_multiselect("OOD sets", ood_options, key="roc_sets", param="ood", container=c2,
                                      default=ood_options[:1])
if not chosen_scores or not chosen_sets:
    st.info("Pick at least one score and one OOD set.")
    st.stop()

t1, t2 = st.columns(2)
thr_score = t1.selectbox("Threshold on score", chosen_scores, key="thr_score")
thr_set = t2.selectbox("against OOD set", chosen_sets, key="thr_set")
id_s, ood_s = scores[f"id/{thr_score}"], scores[f"{thr_set}/{thr_score}"]
threshold = widgets.threshold_slider(id_s, ood_s, key=f"thr_{thr_score}_{thr_set}")  # one per (score, set)
chart = st.container()  # the chart above the metrics, drawn once the threshold's point is known
conf = widgets.confusion_metrics(id_s, ood_s, threshold)
curves = figures.roc_curves({f"{s} vs {o} (AUROC {report['ood'][o][s]['auroc']:.3f})":
                             (scores[f"id/{s}"], scores[f"{o}/{s}"]) for s in chosen_scores for o in chosen_sets})
widgets.show_figure(figures.roc_figure(curves, (conf["fpr"], conf["tpr"])), "roc_chart", f"{Path(path).stem}_roc",
                    chart)

st.subheader("Metric table")
table = tables.metric_table(result["table"], scores=chosen_scores, ood_sets=chosen_sets)
widgets.show_table(table, "roc_table", f"{Path(path).stem}_roc_metrics")
st.caption(tables.TABLE_CAPTION)
