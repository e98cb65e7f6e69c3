"""Neural collapse and subspaces: NC1-NC4 (and their history when recorded), the cosine matrix
of class means vs classifier vectors, and how much of each sample's feature energy lies
outside the principal subspace, ID vs OOD.

Widgets and plots only; the numbers come from :mod:`ood_core.app.cached`.
"""
from __future__ import annotations

import streamlit as st

from ood_core.app import cached, figures, state, tables, widgets

st.title("Neural collapse & subspaces")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown("Neural collapse (Papyan, Han, Donoho 2020): late in training, features of a class "
                "shrink onto their class mean (NC1), the centred means spread out like a simplex (NC2), "
                "the classifier vectors line up with the means (NC3) and the classifier acts like "
                "nearest class mean (NC4). Every metric goes to 0 under collapse:")
    st.latex(r"\mathrm{NC1} = \tfrac{1}{C}\,\mathrm{Tr}(\Sigma_W \Sigma_B^{+}),\quad "
             r"\mathrm{NC3} = \Big\| \tfrac{W^\top}{\|W\|_F} - \tfrac{M}{\|M\|_F} \Big\|_F^2")
    st.markdown("Then span{w_c} is the *principal subspace* of ID features. Wu et al. (2024) push OOD "
                "features into its orthogonal complement: look for OOD histograms of the outside share "
                "to the right of the ID one.")

path, version, model, meta = widgets.require_checkpoint()
geo = widgets.or_stop(cached.geometry_cached, path, version, None)

if "nc" in geo:
    cols = st.columns(len(geo["nc"]))
    for col, (name, value) in zip(cols, geo["nc"].items()):
        col.metric(name, f"{value:.3f}", help="On the training split; 0 = fully collapsed")
else:
    st.info("Neural-collapse metrics need single-label classes; this is a multi-label model. "
            "The subspace view below still applies.")
history_fig = figures.history_figure(meta.get("history") or [])
if history_fig is not None:
    widgets.show_figure(history_fig, "geometry_history", "nc_history")
else:
    st.caption("No per-epoch geometry was recorded for this checkpoint "
               "(train with `--track-geometry 1` to record NC1-NC4 and the JND).")

if "cosine_means_vs_weights" in geo:
    widgets.show_figure(figures.cosine_heatmap_figure(geo["cosine_means_vs_weights"], meta["dataset"].get("class_names")
                                              or range(len(geo["cosine_means_vs_weights"]))), "cosine_heatmap",
                    "cosine_means_vs_weights")
    g = geo["class_geometry"]
    st.caption(f"ID test classes: mean radius {g['mean_radius']:.3f}, mean centre distance "
               f"{g['mean_center_distance']:.3f}, ratio {g['separation_ratio']:.2f}, "
               f"Davies-Bouldin {g['davies_bouldin']:.3f}.")

st.subheader("Feature energy outside the principal subspace")
choices = {"classifier span{w_c}": "weights"}
if "nc" in geo:
    choices["top class-mean directions"] = "means"
label = widgets.url_radio("Principal subspace", list(choices), key="subspace", param="subspace", horizontal=True)
shares = widgets.or_stop(cached.energy_shares_cached, path, version, choices[label], widgets.user_ood())
ood_names = [n for n in shares if n != "id"]
chosen = widgets.url_multiselect("OOD sets", ood_names, default=ood_names[:3], key="subspace_sets", param="ood")
values = {"ID (test)": shares["id"], **{f"OOD: {n}": shares[n] for n in chosen}}
widgets.show_figure(figures.distributions_figure(values, "share of ||z||^2 outside",
                                         f"Energy outside the {label} (1 = orthogonal to it)"), "energy_hist",
                "energy_outside_subspace")
widgets.show_table(tables.energy_share_table(shares), "energy_table", "energy_shares")
