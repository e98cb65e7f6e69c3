"""Energy scores: ID vs OOD energy histograms for the chosen model beside a second one (for
multi-label data by default JointEnergy without vs with spectral norm), and the per-label
terms of one chosen sample. Widgets and plots only."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from ood_core import app_support as sup
from ood_core.metrics import auroc

st.title("Energy scores")
with st.expander("What am I looking at?", expanded=sup.teaching_mode()):
    st.markdown("The negative free energy of the logits (Liu et al. 2020) for single-label models and "
                "JointEnergy (Wang et al. 2021) for multi-label models:")
    st.latex(r"E(x) = \log \sum_k e^{f_k(x)},\qquad "
             r"E_{\mathrm{joint}}(x) = \sum_k \log\big(1 + e^{f_k(x)}\big)\quad(\text{high} = \text{ID})")
    st.markdown("Each multi-label term is one label's evidence, so an image with several confident known "
                "labels scores high. SNoJoE (Mei et al. 2024) adds spectral normalisation to the backbone to "
                "keep the logits of far-away inputs from growing; compare `jointenergy` with `snojoe` and look "
                "at how far the OOD histogram sits left of the ID one.")

path, version, model, meta = sup.require_checkpoint()
other = sup.compare_with(path, ("snojoe", "jointenergy"), key="energy_compare")
user_ood = sup.user_ood()
score_name, energies, terms = sup.or_stop(sup.energies_cached, path, version, user_ood)
ood_names = [n for n in energies if n != "id"]
ood_set = st.selectbox("OOD set", ood_names, key="energy_set")

rows = []
for side, col, name, (name_p, e_p, _) in sup.side_by_side([path, other], sup.energies_cached, ood_set,
                                                          sets=lambda result: result[1], user_ood=user_ood):
    sup.show_figure(sup.distributions_figure({"ID (test)": e_p["id"], f"OOD: {ood_set}": e_p[ood_set]}, name_p,
                                             f"{name}: {name_p}"), f"energy_hist_{side}", f"energy_{side}", col)
    rows += [{"model": name, "score": name_p, "ood_set": s, "AUROC": auroc(e_p["id"], e_p[s])}
             for s in e_p if s != "id"]
table = pd.DataFrame(rows).drop_duplicates(subset=["model", "ood_set"])
sup.show_table(table, "energy_table", "energy")

st.subheader("One sample, label by label")
s1, s2 = st.columns(2)
sample_set = s1.selectbox("Set", ["id", *ood_names], key="energy_sample_set",
                          format_func=lambda n: "ID (test)" if n == "id" else f"OOD: {n}")
index = int(s2.number_input("Sample #", 0, len(energies[sample_set]) - 1, 0, key="energy_sample"))
names = meta["dataset"].get("class_names") or list(range(terms[sample_set].shape[1]))
what = "softplus(f_k): this label's term of the JointEnergy" if score_name == "joint_energy" else \
    "logit f_k, times the method's logit_scale where it sets one (movr: T) (the energy is their log-sum-exp)"
fig = px.bar(pd.DataFrame({"label": [str(n) for n in names], "term": terms[sample_set][index]}), x="label", y="term",
             title=f"{score_name} = {energies[sample_set][index]:.3f}; bars: {what}")
sup.show_figure(fig, "energy_terms", "energy_per_label")
