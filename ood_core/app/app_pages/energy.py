"""Energy scores: ID vs OOD energy histograms for the chosen model beside a second one (for
multi-label data by default JointEnergy without vs with spectral norm), and the per-label
terms of one chosen sample. The second model defaults to the method's baseline (or, beside a
baseline, a method compared with it). Widgets and plots only."""
from __future__ import annotations

import streamlit as st

from ood_core.app import cached, figures, state, tables, widgets

st.title("Energy scores")
with st.expander("What am I looking at?", expanded=state.teaching_mode()):
    st.markdown("The negative free energy of the logits (Liu et al. 2020) for single-label models and "
                "JointEnergy (Wang et al. 2021) for multi-label models:")
    st.latex(r"E(x) = \log \sum_k e^{f_k(x)},\qquad "
             r"E_{\mathrm{joint}}(x) = \sum_k \log\big(1 + e^{f_k(x)}\big)\quad(\text{high} = \text{ID})")
    st.markdown("Each multi-label term is one label's evidence, so an image with several confident known "
                "labels scores high. SNoJoE (Mei et al. 2024) adds spectral normalisation to the backbone to "
                "keep the logits of far-away inputs from growing; compare `jointenergy` with `snojoe` and look "
                "at how far the OOD histogram sits left of the ID one.")

path, version, model, meta = widgets.require_checkpoint()
(score_name, energies, terms), ood_names = widgets.two_model_page(
    path, version, "energy", cached.energies_cached, prefer=("snojoe",), sets=lambda result: result[1],
    score=lambda result: result[0], x_label=lambda result: result[0], title=lambda name, result: f"{name}: {result[0]}",
    rows=lambda name, result, metrics: tables.energy_rows(name, result[0], metrics), file_stem="energy")

st.subheader("One sample, label by label")
s1, s2 = st.columns(2)
sample_set = s1.selectbox("Set", ["id", *ood_names], key="energy_sample_set",
                          format_func=lambda n: "ID (test)" if n == "id" else f"OOD: {n}")
index = int(s2.number_input("Sample #", 0, len(energies[sample_set]) - 1, 0, key="energy_sample"))
names = meta["dataset"].get("class_names") or list(range(terms[sample_set].shape[1]))
widgets.show_figure(figures.energy_terms_figure(names, terms[sample_set][index], score_name,
                                                energies[sample_set][index]), "energy_terms", "energy_per_label")
