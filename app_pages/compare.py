"""Compare methods: 2-4 checkpoints side by side on one OOD set, the same plot in every column
and one metric table. Widgets and plots only."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core import app_support as sup
from ood_core.metrics import roc_curve_points

st.title("Compare methods")
with st.expander("What am I looking at?", expanded=sup.teaching_mode()):
    st.markdown("Each column is one checkpoint (one training method) scored on the **same** OOD set with "
                "the **same** score, so differences come from the representation the method learned. "
                "Every score is high for ID; the table reports, per model and score:")
    st.latex(r"\mathrm{AUROC} = \Pr[s(x_{\mathrm{ID}}) > s(x_{\mathrm{OOD}})],\qquad "
             r"\mathrm{FPR95} = \Pr[s(x_{\mathrm{OOD}}) \ge t_{95}],\ \Pr[s(x_{\mathrm{ID}}) \ge t_{95}] = 0.95")
    st.markdown("Look for the column whose OOD histogram sits furthest left of the ID one (or whose ROC "
                "hugs the top-left corner), and check whether the ranking of methods holds for near, "
                "far-real (photo crops) and far-synthetic (generated) OOD sets alike.")

path, version, model, meta = sup.require_checkpoint()
options = [str(p) for p in sup.list_checkpoints(Path(path).parent)]
if any(p not in options for p in st.session_state.get("compare_models", [])):
    st.session_state.pop("compare_models", None)  # a file vanished or another folder is listed
chosen = st.multiselect("Checkpoints (2-4)", options, key="compare_models", max_selections=4,
                        default=sup.same_dataset_checkpoints(options, path, sup.checkpoint_dataset),
                        format_func=lambda p: Path(p).name,
                        help="Default: the sidebar's checkpoint and others trained on the same dataset")
if len(chosen) < 2:
    st.info("Pick at least two checkpoints to compare.")
    st.stop()

user_ood = sup.user_ood()
first = sup.or_stop(sup.evaluation_cached, chosen[0], sup.checkpoint_version(chosen[0]), user_ood)
ood_options = sup.ood_set_names(first["report"])
others = [sup.or_stop(sup.evaluation_cached, p, sup.checkpoint_version(p), user_ood)["scores"] for p in chosen[1:]]
common_scores = [s for s in sup.score_names(first["scores"]) if all(f"id/{s}" in o for o in others)]
for key, opts in (("compare_set", ood_options), ("compare_score", common_scores)):
    if st.session_state.get(key) not in opts:
        st.session_state.pop(key, None)
if not common_scores:
    st.warning("These checkpoints share no score (e.g. single-label and multi-label models); pick others.")
    st.stop()

c1, c2, c3 = st.columns([2, 2, 3])
ood_set = c1.selectbox("OOD set", ood_options, key="compare_set",
                       format_func=lambda n: f"{n} ({first['report']['groups'].get(n, '?')})")
score = c2.selectbox("Score (high = ID)", common_scores, key="compare_score",
                     index=common_scores.index("energy") if "energy" in common_scores else 0)
plot = c3.radio("Plot in every column", ["score histogram", "ROC curve"], key="compare_plot", horizontal=True)

paths = {Path(p).name: p for p in chosen}
results = {}
for side, col, name, result in sup.side_by_side(chosen, sup.evaluation_cached, ood_set,
                                                sets=lambda r: r["report"]["ood"], user_ood=user_ood):
    method = sup.checkpoint_meta_cached(paths[name], sup.file_version(paths[name])).get("method")
    results[name] = {**result, "method": method}
    col.caption(f"method `{method}`")
    id_s, ood_s = result["scores"][f"id/{score}"], result["scores"][f"{ood_set}/{score}"]
    if plot == "score histogram":
        fig = sup.histogram_figure(id_s, ood_s, score, ood_set)
    else:
        fig = sup.roc_figure({f"AUROC {result['report']['ood'][ood_set][score]['auroc']:.3f}":
                              roc_curve_points(id_s, ood_s)[:2]})
    fig.update_layout(title=name, legend=dict(orientation="h", yanchor="top", y=-0.2))  # narrow columns
    sup.show_figure(fig, f"compare_fig_{side}", f"{Path(name).stem}_{score}_{ood_set}", col)

st.subheader(f"Metrics on {ood_set}")
all_scores = st.toggle("Every score of every model (not only the chosen one)", key="compare_all_scores")
table = sup.comparison_table(results, ood_set, None if all_scores else [score])
sup.show_table(table, "compare_table", f"compare_{ood_set}")
st.caption(sup.TABLE_CAPTION)
