"""Jacobian norms of the representation: ID vs OOD histograms, the JND, the norm along a path
between two samples, and the map over the plane for 2-D inputs (toy2d).

Widgets and plots only; the numbers come from :mod:`ood_core.app_support` (cached).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from ood_core import app_support as sup

st.title("Jacobian norms")
with st.expander("What am I looking at?", expanded=sup.teaching_mode()):
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

path, version, model, meta = sup.require_checkpoint(features=False)

c1, c2, c3 = st.columns(3)
method = c1.radio("Computation", ["estimate", "exact"], key="jac_method", horizontal=True)
n_proj = c2.select_slider("Projections K (estimate)", [4, 8, 16, 32, 64], value=16, key="jac_k",
                          disabled=method == "exact")
probe = c3.select_slider("Samples per set", [64, 128, 256, 512], value=256, key="jac_probe")
bar = st.progress(0.0, text=f"Jacobian norms ({method})…")
norms = sup.or_stop(sup.jacobian_norms_cached, path, version, method, n_proj, probe, sup.user_ood(),
                    lambda done, total, name: bar.progress(done / total, text=f"Jacobian norms ({method}): "
                                                                               f"{name} done, {done}/{total} sets"))
bar.empty()

ood_names = [n for n in norms if n != "id"]
chosen = st.multiselect("OOD sets", ood_names, default=ood_names[:3], key="jac_sets")
values = {"ID (test)": norms["id"], **{f"OOD: {n}": norms[n] for n in chosen}}
fig = sup.distributions_figure(values, "||J||_F", f"Jacobian norm of z/||z|| ({method})")
sup.show_figure(fig, "jac_hist", "jacobian_norms")

table = pd.DataFrame({"set": ["ID (test)"] + ood_names,
                      "mean ||J||_F": [norms["id"].mean()] + [norms[n].mean() for n in ood_names],
                      "JND vs ID": [0.0] + [norms[n].mean() - norms["id"].mean() for n in ood_names]})
sup.show_table(table, "jnd_table", "jnd")

st.subheader("Along a path between two test samples")
labels = sup.test_labels_cached(path, version)
names = meta["dataset"].get("class_names") or []


def describe(i: int) -> str:
    y = labels[i]
    if np.ndim(y) == 0:
        return f"#{i} (class {names[int(y)] if int(y) < len(names) else int(y)})"
    return f"#{i} (labels {', '.join(str(names[k]) if k < len(names) else str(k) for k in np.flatnonzero(y))})"


last = len(labels) - 1
other = int(np.flatnonzero(labels != labels[0])[0]) if labels.ndim == 1 and (labels != labels[0]).any() else min(1, last)
p1, p2 = st.columns(2)
start = int(p1.number_input("From ID test sample #", 0, last, 0, key="path_start"))
end = int(p2.number_input("To ID test sample #", 0, last, other, key="path_end"))
t, along = sup.jacobian_path_cached(path, version, start, end, method)
sup.show_figure(sup.path_figure(t, along, describe(start), describe(end)), "jac_path", "jacobian_path")

if tuple(meta["dataset"].get("input_shape", ())) == (2,):
    st.subheader("Over the input plane")
    xs, ys, grid, points = sup.jacobian_map_cached(path, version)
    sup.show_figure(sup.plane_map_figure(xs, ys, grid, points), "jac_map", "jacobian_plane_map")
    st.caption(f"Exact ||J||_F on a {len(xs)}x{len(ys)} grid; high values mark where the representation "
               f"changes fast (peak {np.max(grid):.2f}).")
