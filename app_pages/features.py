"""Feature magnitudes: the distribution of ||z|| for ID vs OOD, the chosen model beside a
second one (by default an L2-normalised model). Widgets and plots only."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ood_core import app_support as sup
from ood_core.metrics import auroc

st.title("Feature magnitudes")
with st.expander("What am I looking at?", expanded=sup.teaching_mode()):
    st.markdown("The norm of the penultimate features, used directly as a score:")
    st.latex(r"s(x) = \|z(x)\|_2 \quad (\text{high} = \text{ID})")
    st.markdown("Haas et al. (2023) train with L2-normalised features (the classifier only sees "
                "z/‖z‖), which frees ‖z‖ to encode familiarity: ID inputs get large norms, OOD inputs small "
                "ones. Compare a CE model with an `l2norm` model: look for the OOD histogram moving left "
                "of the ID one, and for a higher AUROC.")

path, version, model, meta = sup.require_checkpoint()
other = sup.compare_with(path, ("l2norm", "ce_"), key="feat_compare")
left_norms = sup.or_stop(sup.feature_norms_cached, path, version, sup.user_ood())
ood_names = [n for n in left_norms if n != "id"]
ood_set = st.selectbox("OOD set", ood_names, key="feat_set")

rows = []
for side, col, name, norms in sup.side_by_side([path, other], sup.feature_norms_cached, ood_set,
                                                    user_ood=sup.user_ood()):
    sup.show_figure(sup.distributions_figure({"ID (test)": norms["id"], f"OOD: {ood_set}": norms[ood_set]},
                                             "||z||", name), f"feat_hist_{side}", f"feature_norms_{side}", col)
    for s in [n for n in norms if n != "id"]:
        rows.append({"model": name, "ood_set": s, "mean ||z|| ID": norms["id"].mean(),
                     "mean ||z|| OOD": norms[s].mean(), "AUROC of ||z||": auroc(norms["id"], norms[s])})
table = pd.DataFrame(rows).drop_duplicates(subset=["model", "ood_set"])
sup.show_table(table, "feat_table", "feature_norms")
