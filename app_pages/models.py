"""Models: the chosen checkpoint's metadata, ID accuracy, the OOD metric table and one score histogram.

Reads the checkpoint path chosen in the sidebar from ``st.session_state["checkpoint"]``.
All computation is in :mod:`ood_core.app_support`; this page only lays out widgets and plots.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core import app_support as sup
from ood_core.runtime import select_device

st.title("Models")

path, mtime, model, meta = sup.require_checkpoint()
result = sup.or_stop(sup.evaluation_cached, path, mtime)

report, scores, rows = result["report"], result["scores"], result["table"]
st.caption(f"Checkpoint `{path}`")

# ---------------------------------------------------------------- headline numbers
label, value = sup.id_quality(report)
c1, c2, c3, c4 = st.columns(4)
c1.metric(label, "n/a" if value is None else f"{value:.1%}", help="On the ID test split (known classes only)")
c2.metric("Method", str(meta.get("method")))
c3.metric("Dataset", str((meta.get("dataset") or {}).get("name")))
c4.metric("Device (auto)", str(select_device("auto")), help="The device torch picks here: cuda > mps > cpu")

# ---------------------------------------------------------------- metadata
left, right = st.columns(2)
with left:
    st.subheader("Checkpoint")
    st.json(sup.metadata_summary(meta), expanded=1)
with right:
    st.subheader("Details")
    t_model, t_train, t_versions = st.tabs(["Model spec", "Train config", "Library versions"])
    t_model.json(meta.get("model") or {})
    t_train.json(meta.get("train_config") or {})
    t_versions.json(meta.get("versions") or {})

# ---------------------------------------------------------------- metric table
st.subheader("OOD detection metrics")
table = sup.metric_table(rows)
sup.show_table(table, "metric_table", f"{Path(path).stem}_ood_metrics")
st.caption(sup.TABLE_CAPTION)

# ---------------------------------------------------------------- histogram
st.subheader("Score distributions")
score_options = sup.score_names(scores)
ood_options = sup.ood_set_names(report)
for key, opts in (("score", score_options), ("ood_set", ood_options)):
    if st.session_state.get(key) not in opts:
        st.session_state.pop(key, None)  # e.g. another checkpoint with other OOD sets was chosen
s1, s2 = st.columns(2)
score = s1.selectbox("Score (high = ID)", score_options, key="score")
ood_set = s2.selectbox("OOD set", ood_options, key="ood_set",
                       format_func=lambda n: f"{n} ({report['groups'].get(n, '?')})")
fig = sup.histogram_figure(scores[f"id/{score}"], scores[f"{ood_set}/{score}"], score, ood_set)
sup.show_figure(fig, "score_hist", f"{Path(path).stem}_{score}_{ood_set}")
m = report["ood"][ood_set][score]
st.caption(f"AUROC {m['auroc']:.3f} · FPR95 {m['fpr95']:.3f} · AUPR-In {m['aupr_in']:.3f} · "
           f"AUPR-Out {m['aupr_out']:.3f}")
