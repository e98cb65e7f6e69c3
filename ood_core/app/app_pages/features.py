"""Feature magnitudes: the distribution of ||z|| for ID vs OOD, the chosen model beside a
second one (by default its method's baseline, or an L2-normalised model beside a baseline).
Widgets and plots only."""
from __future__ import annotations

import streamlit as st

from ood_core.app import cached, state, tables, widgets

st.title("Feature magnitudes")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown("The norm of the penultimate features, used directly as a score:")
    st.latex(r"s(x) = \|z(x)\|_2 \quad (\text{high} = \text{ID})")
    st.markdown("Haas et al. (2023) train with L2-normalised features (the classifier only sees "
                "z/‖z‖), which frees ‖z‖ to encode familiarity: ID inputs get large norms, OOD inputs small "
                "ones. Compare a CE model with an `l2norm` model: look for the OOD histogram moving left "
                "of the ID one, and for a higher AUROC.")

path, version, model, meta = widgets.require_checkpoint()
widgets.two_model_page(path, version, "feat", cached.feature_norms_cached, prefer=("l2norm",),
                       sets=lambda norms: norms, score=lambda norms: "feature_norm",
                       x_label=lambda norms: "||z||", title=lambda name, norms: name,
                       rows=tables.feature_norm_rows, file_stem="feature_norms")
