"""Claims: each paper's claim, the effect measured by benchmarks/compare.py with its 95 %
interval and verdict, and the figure of the mechanism for the method beside its baseline on
the shipped checkpoints. Reads stored results; trains nothing. Widgets and plots only."""
from __future__ import annotations

import streamlit as st

from ood_core.app import cached, state, tables, widgets

st.title("Claims")
with st.expander("How is a claim judged?", expanded=state.teaching_mode()):
    st.markdown(
        "Each method is trained on several open-set splits (known/unknown classes) and seeds, and compared "
        "with its baseline **on the same (split, seed) pairs**. A part of a claim holds only when the 95 % "
        "confidence interval of the paired difference excludes zero in the claimed direction. Effects are in "
        "percentage points (AUROC, FPR95, accuracy) or in the quantity's own unit. *Balanced* figures "
        "average the group means (near, far-real, far-synthetic), so no group dominates by its number of sets.")

results = widgets.or_stop(cached.claims_results)
meta = results["meta"]
st.caption(f"From `{meta.get('command', 'benchmarks/compare.py')}` — {meta.get('header', '')}; "
           f"{meta.get('seconds', '?')} s in all.")
if meta.get("quick") or not results["claims"]:
    st.warning("These results come from a quick run without verdicts; run `python benchmarks/compare.py`.")
    st.stop()

widgets.static_table(tables.claims_overview(results))  # five rows: static (no grid scripts)
by_key = {c["key"]: c for c in results["claims"]}
key = widgets.url_selectbox("Claim", list(by_key), key="claim", param="claim",
                           format_func=lambda k: f"{k} — {by_key[k]['paper']}")
claim = by_key[key]
st.header(f"{claim['key']} — {claim['paper']}")
st.markdown(claim["statement"])
st.markdown(widgets.verdict_markdown(claim["verdict"]))
widgets.show_table(tables.claim_table(claim), f"claim_{claim['key']}", f"claim_{claim['key']}")
widgets.show_mechanism(claim)
