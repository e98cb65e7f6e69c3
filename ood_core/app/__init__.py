"""The Streamlit app: the only part of ood_core that imports streamlit or plotly.

* ``main.py``: the entrypoint (router + sidebar); ``app_pages/``: the pages, widgets and calls only.
* :mod:`.state`: the session-state keys shared by the router, the pages and the helpers.
* :mod:`.cached`: every ``st.cache_*`` wrapper (model, benchmark, outputs, evaluation, geometry, maps...).
* :mod:`.figures`: the plotly figure builders; :mod:`.tables`: the DataFrames shown.
* :mod:`.widgets`: figure/table display with downloads, error handling, the two-model layout.
* :mod:`.training`: what the Models page's training form needs from the core.

The pages live in ``app_pages/``, not ``pages/``: Streamlit switches to its legacy multipage
mode whenever a ``pages/`` folder sits beside the entrypoint, and then runs a page without the
router, so the sidebar and the chosen checkpoint vanish.
"""