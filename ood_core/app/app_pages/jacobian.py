"""Jacobian norms of the representation: ID vs OOD histograms, the JND, the norm along a path
between two samples, and the map over the plane for 2-D inputs (toy2d).

Widgets and plots only; the numbers come from :mod:`ood_core.app.cached`.
"""
from __future__ import annotations

import streamlit as st

from ood_core.app import cached, figures, state, tables, widgets

st.title("Jacobian norms")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown(
        "For each input x, the Frobenius norm of the Jacobian of the unit-normalised features "
        "f(x) = z/‖z‖ with respect to the input:")
    st.latex(r"\|J(x)\|_F = \Big\|\frac{\partial f(x)}{\partial x}\Big\|_F,\qquad "
             r"\mathrm{JND} = \overline{\|J\|_F}_{\,\mathrm{OOD}} - \overline{\|J\|_F}_{\,\mathrm{ID}}")
    st.markdown(
        "Park et al. (2022) argue that training makes the representation *flat* around known classes "
        "(small norm) and *steep* in the open space between them. Look for OOD histograms to the right "
        "of the ID one (JND > 0), and for a bump in the path plot where it leaves one class for another. "
        "*Estimate* uses K random projections (one backward pass each, unbiased in ‖J‖²); *exact* "
        "computes the whole Jacobian (slower).")

path, version, model, meta = widgets.require_checkpoint(features=False)

c1, c2, c3 = st.columns(3)
method = widgets.url_radio("Computation", ["estimate", "exact"], key="jac_method", param="method", container=c1,
                          horizontal=True)
view = cached.JACOBIAN_VIEW  # the defaults; a shipped checkpoint's first view is stored for them
n_proj = c2.select_slider("Projections K (estimate)", [4, 8, 16, 32, 64], value=view.n_proj, key="jac_k",
                          disabled=method == "exact")
probe = c3.select_slider("Samples per set", [64, 128, 256, 512], value=view.probe_size, key="jac_probe")
ood_names = widgets.or_stop(cached.ood_set_names, path, version, widgets.user_ood())
chosen = widgets.url_multiselect("OOD sets", ood_names, default=cached.jacobian_view_sets(ood_names)[1:],
                                 key="jac_sets", param="ood")
every = st.checkbox("JND of every OOD set in the table", key="jac_every",
                    help="Off: the norms of the sets shown above only (faster: each set is a few hundred "
                         "backward passes, more for exact); on: every OOD set, one set at a time")
# exact norms take seconds per set: their bar shows at once; the estimate's only if it is slow
bar = widgets.DelayedProgress(delay_s=0.0 if method == "exact" else widgets.PROGRESS_DELAY_S)
bar.update(0.0, f"Jacobian norms ({method})…")
norms = widgets.or_stop(cached.jacobian_norms_cached, path, version, method, n_proj, probe, widgets.user_ood(),
                        lambda done, total, name: bar.update(done / total, f"Jacobian norms ({method}): "
                                                                           f"{name} done, {done}/{total} sets"),
                        None if every else chosen)
bar.empty()

values = {"ID (test)": norms["id"], **{f"OOD: {n}": norms[n] for n in chosen}}
fig = figures.distributions_figure(values, "||J||_F", f"Jacobian norm of z/||z|| ({method})")
widgets.show_figure(fig, "jac_hist", "jacobian_norms")

widgets.show_table(tables.jnd_table(norms), "jnd_table", "jnd")
if not every and len(chosen) < len(ood_names):
    st.caption(f"The sets shown above; tick *JND of every OOD set* for all {len(ood_names)}.")

st.subheader("Along a path between two test samples")
labels = cached.test_labels_cached(path, version)
names = meta["dataset"].get("class_names") or []
last = len(labels) - 1
other = widgets.other_class_index(labels)  # a path from one class to another by default
p1, p2 = st.columns(2)
start = int(p1.number_input("From ID test sample #", 0, last, 0, key="path_start"))
end = int(p2.number_input("To ID test sample #", 0, last, other, key="path_end"))
t, along = cached.jacobian_path_cached(path, version, start, end, method)
widgets.show_figure(figures.path_figure(t, along, widgets.describe_sample(labels, start, names),
                                        widgets.describe_sample(labels, end, names)), "jac_path", "jacobian_path")

if tuple(meta["dataset"].get("input_shape", ())) == (2,):
    st.subheader("Over the input plane")
    xs, ys, grid, points = cached.jacobian_map_cached(path, version)
    widgets.show_figure(figures.plane_map_figure(xs, ys, grid, points), "jac_map", "jacobian_plane_map")
    st.caption(f"Exact ||J||_F on a {len(xs)}x{len(ys)} grid; high values mark where the representation "
               f"changes fast (peak {grid.max():.2f}).")
