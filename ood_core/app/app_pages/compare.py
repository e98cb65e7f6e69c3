"""Compare methods: 2-4 checkpoints side by side on one OOD set, the same plot in every column
and one metric table. Widgets and plots only."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core.app import cached, figures, state, tables, widgets

st.title("Compare methods")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown("Each column is one checkpoint (one training method) scored on the **same** OOD set with "
                "the **same** score, so differences come from the representation the method learned. "
                "Every score is high for ID; the table reports, per model and score:")
    st.latex(r"\mathrm{AUROC} = \Pr[s(x_{\mathrm{ID}}) > s(x_{\mathrm{OOD}})],\qquad "
             r"\mathrm{FPR95} = \Pr[s(x_{\mathrm{OOD}}) \ge t_{95}],\ \Pr[s(x_{\mathrm{ID}}) \ge t_{95}] = 0.95")
    st.markdown("Look for the column whose OOD histogram sits furthest left of the ID one (or whose ROC "
                "hugs the top-left corner), and check whether the ranking of methods holds for near, "
                "far-real (photo crops) and far-synthetic (generated) OOD sets alike.")

path, version, model, meta = widgets.require_checkpoint()
options = widgets.sibling_checkpoints(path)
if any(p not in options for p in st.session_state.get("compare_models", [])):
    st.session_state.pop("compare_models", None)  # a file vanished or another folder is listed
chosen = widgets.url_multiselect("Checkpoints (2-4)", options, key="compare_models", param="models",
                                 text_of=lambda p: Path(p).name, max_selections=4,
                                 default=widgets.same_dataset_default(options, path),
                                 format_func=lambda p: Path(p).name,
                                 help="Default: the sidebar's checkpoint and its baseline (or another model) "
                                      "trained on the same dataset")
if len(chosen) < 2:
    st.info("Pick at least two checkpoints to compare.")
    st.stop()

user_ood = widgets.user_ood()
first = widgets.or_stop(cached.evaluation_cached, chosen[0], cached.checkpoint_version(chosen[0]), user_ood)
ood_options = tables.ood_set_names(first["report"])
others = [widgets.or_stop(cached.evaluation_cached, p, cached.checkpoint_version(p), user_ood)["scores"]
          for p in chosen[1:]]
common_scores = [s for s in tables.score_names(first["scores"]) if all(f"id/{s}" in o for o in others)]
for key, opts in (("compare_set", ood_options), ("compare_score", common_scores)):
    if st.session_state.get(key) not in opts:
        st.session_state.pop(key, None)
if not common_scores:
    st.warning("These checkpoints share no score (e.g. single-label and multi-label models); pick others.")
    st.stop()

c1, c2, c3 = st.columns([2, 2, 3])
ood_set = widgets.url_selectbox("OOD set", ood_options, key="compare_set", param="ood", container=c1,
                                format_func=lambda n: f"{n} ({first['report']['groups'].get(n, '?')})")
score = widgets.url_selectbox("Score (high = ID)", common_scores, key="compare_score", param="score", container=c2,
                              index=common_scores.index("energy") if "energy" in common_scores else 0)
plot = widgets.url_radio("Plot in every column", ["score histogram", "ROC curve"], key="compare_plot", param="plot",
                        container=c3, horizontal=True)

paths = {Path(p).name: p for p in chosen}
results = {}
for side, col, name, result in widgets.side_by_side(chosen, cached.evaluation_cached, ood_set,
                                                    sets=lambda r: r["report"]["ood"], user_ood=user_ood):
    method = cached.checkpoint_method(paths[name])
    results[name] = {**result, "method": method}
    col.caption(f"method `{method}`")
    id_s, ood_s = result["scores"][f"id/{score}"], result["scores"][f"{ood_set}/{score}"]
    if plot == "score histogram":  # narrow columns: the file name as title, the legend below
        fig = figures.distributions_figure({"ID (test)": id_s, f"OOD: {ood_set}": ood_s}, f"{score} (high = ID)",
                                           name, legend_below=True)
    else:
        fig = figures.roc_figure(figures.roc_curves(
            {f"AUROC {result['report']['ood'][ood_set][score]['auroc']:.3f}": (id_s, ood_s)}), title=name)
    widgets.show_figure(fig, f"compare_fig_{side}", f"{Path(name).stem}_{score}_{ood_set}", col)

st.subheader(f"Metrics on {ood_set}")
all_scores = st.toggle("Every score of every model (not only the chosen one)", key="compare_all_scores")
table = tables.comparison_table(results, ood_set, None if all_scores else [score])
widgets.show_table(table, "compare_table", f"compare_{ood_set}")
st.caption(tables.TABLE_CAPTION)
