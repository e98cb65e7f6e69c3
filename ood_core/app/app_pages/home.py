"""Home (the default page): what the lab is for, and the five methods as cards, each with the
figure of its mechanism on the shipped checkpoints (stored with them: read, not computed),
one sentence, its claim's verdict and links to its page and its lesson. Widgets and plots only."""
from __future__ import annotations

import streamlit as st

from ood_core.app import teaching
from ood_core.app.pages import page_file

st.title("OOD geometry lab")
st.markdown(
    "A model trained on some classes must also say when an input belongs to **none** of them: that is "
    "out-of-distribution (OOD) detection. This lab shows *why* a detector works or fails, by drawing the "
    "geometry it relies on (Jacobian norms, feature norms, class centres, the classifier's subspace, energies) "
    "for models you train here in seconds, the shipped ones, or your own.")

start, learn, check = st.columns(3)
with start.container(border=True):
    st.markdown("**Look at a model**: its card, training run and every OOD score.")
    st.page_link(page_file("models"), label="Models", icon=":material/model_training:")
with learn.container(border=True):
    st.markdown(f"**Follow a lesson**: {len(teaching.LESSONS)} short ones, each a prediction, a live step "
                "and its answer.")
    st.page_link(page_file("lessons"), label="Lessons", icon=":material/school:")
with check.container(border=True):
    st.markdown("**Check the papers' claims**: measured over splits and seeds, with 95 % intervals.")
    st.page_link(page_file("claims"), label="Claims", icon=":material/fact_check:")

st.subheader("Five methods, and the figure that shows how each one works")
teaching.method_cards()
st.caption("Each figure: the method's shipped checkpoint, ID test samples against the OOD groups; the Claims page "
           "sets it beside its baseline.")
