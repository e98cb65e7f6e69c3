"""Embeddings: a 2-D map of the features (PCA by default, UMAP on request) with the ID test
points coloured by class and the OOD points by a chosen score; a selected sample shows its
input, its scores against the ID distribution and an Integrated Gradients map of the score.

Widgets and plots only; the numbers come from :mod:`ood_core.app.cached`.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ood_core.app import cached, figures, state, tables, widgets

st.title("Embeddings")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown("Each point is one sample's penultimate features z, mapped to 2-D. **PCA** projects on the "
                "two directions of largest variance of the centred fit set (a linear map: far stays far):")
    st.latex(r"y = V_{2}^{\top}(z - \bar z),\qquad V_2 = \text{top-2 right singular vectors of } Z - \bar z")
    st.markdown("**UMAP** (McInnes et al. 2018) keeps each point's nearest neighbours close but not global "
                "distances, so the gap between two clusters means little. Fitting on *ID only* and placing OOD "
                "points afterwards (`transform`) hides OOD: they land on ID clusters. Fit on the union to judge "
                "separation.")
    st.markdown("Clicking a point attributes the chosen OOD score s (high = ID) to the input pixels with "
                "**Integrated Gradients** (Sundararajan et al. 2017), on the straight path from a baseline x0:")
    st.latex(r"\mathrm{IG}_j(x) = (x_j - x_{0,j})\int_0^1 \frac{\partial s}{\partial x_j}"
             r"\big(x_0 + \alpha (x - x_0)\big)\,d\alpha,\qquad \sum_j \mathrm{IG}_j = s(x) - s(x_0)")
    st.markdown("Blue pixels pushed the score up (toward ID), red ones down (toward OOD). Look for OOD points "
                "coloured like ID (bright) sitting inside ID clusters: the score and the geometry agree that "
                "they look familiar. The percentile column says where the sample's score falls among the ID "
                "test samples.")

path, version, model, meta = widgets.require_checkpoint()
user_ood = widgets.user_ood()
result = widgets.or_stop(cached.evaluation_cached, path, version, user_ood)
scores = result["scores"]
score_options, ood_options = tables.score_names(scores), tables.ood_set_names(result["report"])
for key, opts in (("emb_sets", ood_options), ("emb_score", score_options), ("emb_pick_set", ["id", *ood_options])):
    value = st.session_state.get(key)
    if value is not None and any(v not in opts for v in (value if isinstance(value, list) else [value])):
        st.session_state.pop(key, None)  # another checkpoint with other scores or sets was chosen

c1, c2, c3 = st.columns(3)
method = widgets.url_radio("Map", ["pca", "umap"], key="emb_method", param="map", container=c1, horizontal=True,
                           format_func=str.upper,
                  help="PCA is instant; UMAP is computed only when chosen, then cached on disk")
fit_on = widgets.url_radio("Fit the map on", ["union", "id"], key="emb_fit_on", param="fit", container=c2,
                           horizontal=True,
                  format_func={"union": "ID + OOD", "id": "ID only"}.get)
score = widgets.url_selectbox("Colour OOD points by", score_options, key="emb_score", param="score", container=c3)
s1, s2 = st.columns([3, 1])
sets = widgets.url_multiselect("OOD sets to show", ood_options, default=ood_options, key="emb_sets", param="ood",
                               container=s1)
normalize = s2.checkbox("L2-normalise features first", key="emb_normalize",
                        help="Map z/||z|| instead of z: the geometry a cosine or l2norm head sees")

if method == "umap":
    fit = widgets.or_stop(cached.projection_in_background, path, version, "umap", fit_on, normalize, 0, user_ood)
    if not fit.done():
        st.info("Fitting UMAP in the background: the first fit in a new app process compiles numba code "
                "(10-40 s); later fits take a few seconds and every map is cached on disk. Other pages "
                "stay usable meanwhile; the map appears here when it is ready.")
        widgets.rerun_when_done(fit)
        st.stop()
    if fit.exception() is not None:
        st.error(f"UMAP failed: {fit.exception()}")
        st.stop()
    proj = widgets.or_stop(cached.projection_cached, path, version, "umap", fit_on, normalize, 0, user_ood)
else:
    proj = widgets.or_stop(cached.projection_cached, path, version, "pca", fit_on, normalize, 0, user_ood)
if proj.caveat:
    st.warning(proj.caveat)
elif fit_on == "id":
    st.caption("Fitted on ID only: the OOD points are placed with the ID fit's map. For PCA this is still a "
               "linear projection (distances can shrink, never be invented).")

labels = cached.test_labels_cached(path, version)
class_names = meta["dataset"].get("class_names") or []
fig = figures.embedding_figure(proj, scores, score, labels, class_names, sets,
                              max_per_set=figures.MAP_POINTS_PER_SET)
event = widgets.show_figure(fig, "emb_map", f"{Path(path).stem}_{method}_map", on_select="rerun")
origin = "read from the disk cache" if proj.from_cache else f"computed in {proj.seconds:.1f} s"
in_map = sum(len(proj.coords[s]) for s in ["id", *sets] if s in proj.coords)
drawn = (f"{len(fig.table)} points" if len(fig.table) == in_map else
         f"{len(fig.table)} of {in_map} points drawn (at most {figures.MAP_POINTS_PER_SET:,} per set, a fixed "
         "random sample; the picker below reaches every sample)")
st.caption(f"{drawn}, map {origin}. {widgets.EMBEDDING_SELECTION_HELP}")

# A new click on the map fills the picker below; the picker stays free to change until the next click.
picked = figures.selected_sample(event)
if picked is not None and picked != st.session_state.get("emb_last_selection") and picked[0] in ["id", *ood_options]:
    st.session_state["emb_last_selection"] = picked
    st.session_state["emb_pick_set"] = picked[0]
    st.session_state[f"emb_pick_index_{picked[0]}"] = picked[1]

st.subheader("Selected sample")
source = st.radio("Inspect", ["a sample of a set", "one input of your own"], key="emb_source", horizontal=True,
                  help="Your own input: an image or an array, converted to the model's input format, with every "
                       "score of the model and its attribution")
panel_ood, panel_scores = user_ood, scores  # the sets (and their scores) the sample comes from
if source == "one input of your own":
    st.file_uploader("One image, or a .npy/.npz array (its first sample is shown)",
                     type=sorted({s.lstrip(".") for s in widgets.IMAGE_SUFFIXES} | {"npy", "npz"}), key="one_input_file",
                     on_change=widgets.store_upload, args=("one_input_file", state.ONE_INPUT_KEY,
                                                           state.ONE_INPUT_ERROR_KEY))
    if st.session_state.get(state.ONE_INPUT_ERROR_KEY):
        st.error(st.session_state[state.ONE_INPUT_ERROR_KEY])
    panel_ood = st.session_state.get(state.ONE_INPUT_KEY)
    if not panel_ood:
        st.info("Upload an image (or an array) to see it as the model sees it, every score with its percentile "
                "among the ID test scores, and which pixels moved the score.")
        st.stop()
    (set_name, x_one), = widgets.or_stop(cached.user_ood_set, path, version, panel_ood).items()
    panel_scores = widgets.or_stop(cached.evaluation_cached, path, version, panel_ood)["scores"]
    index = 0
    st.caption(f"`{set_name}`: {x_one.shape[0]} sample(s) in the upload, converted to the model's input "
               f"{tuple(x_one.shape[1:])}; the first is shown.")
else:
    p1, p2 = st.columns(2)
    set_name = p1.selectbox("Set", ["id", *ood_options], key="emb_pick_set",
                            format_func=lambda s: "ID (test)" if s == "id" else f"OOD: {s}")
    n_samples = int(scores[f"{set_name}/{score_options[0]}"].size)
    if not 0 <= st.session_state.get(f"emb_pick_index_{set_name}", 0) < n_samples:
        st.session_state.pop(f"emb_pick_index_{set_name}")  # left over from a checkpoint with a larger set
    index = int(p2.number_input(f"Sample # (0 to {n_samples - 1})", min_value=0, max_value=n_samples - 1, step=1,
                                key=f"emb_pick_index_{set_name}"))  # no value=: a map click sets it through the state

left, right = st.columns([1, 3])
sample = widgets.or_stop(cached.sample_cached, path, version, set_name, index, panel_ood)
where = "ID test" if set_name == "id" else "your input" if source != "a sample of a set" else f"OOD set {set_name}"
if sample.ndim == 1:
    left.metric("Input point", "(" + ", ".join(f"{v:.3f}" for v in sample.tolist()) + ")")
else:
    left.image(figures.enlarged_image(sample), caption=f"{where} #{index}", clamp=True)
if set_name == "id":
    left.caption(f"label: {', '.join(widgets.label_names(labels[index], class_names))}")
with right:
    widgets.show_table(tables.score_percentile_table(panel_scores, set_name, index), "emb_scores",
                   f"{Path(path).stem}_{set_name}_{index}_scores")
    st.caption("ID percentile: share of ID test samples scoring at most this value (high = ID-like). "
               "Called ID at TPR95: at the threshold that keeps 95% of ID.")

a1, a2 = st.columns(2)
baseline = a1.radio("IG baseline x0", ["zeros", "mean"], key="emb_baseline", horizontal=True,
                    format_func={"zeros": "zeros (black / origin)", "mean": "mean training input"}.get)
n_steps = a2.select_slider("IG path points", widgets.ATTRIBUTION_STEPS, value=128, key="emb_steps",
                           help="More points: smaller completeness error (ReLU networks converge slowly)")
attr = widgets.or_info(cached.attribution_cached, path, version, set_name, index, score, n_steps, baseline, panel_ood,
                       prefix="No attribution: ")
if attr is not None:
    title = (f"{where} #{index}: {score} = {attr['score']:.4f}, baseline {attr['baseline_score']:.4f}")
    widgets.show_figure(figures.attribution_figure(attr["input"], attr["attributions"], score, title), "emb_attr",
                    f"{Path(path).stem}_{set_name}_{index}_ig_{score}")
    gap = attr["score"] - attr["baseline_score"]
    st.caption(f"Completeness: sum of attributions = {gap + attr['delta']:.4f} vs s(x) - s(x0) = {gap:.4f} "
               f"(error {attr['delta']:+.2e}; raise the path points if it is large).")
