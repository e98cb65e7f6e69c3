"""OOD geometry lab, run from a checkout: ``streamlit run app.py`` (``make run``).

The app lives in the package, :mod:`ood_core.app` (router: ``ood_core/app/main.py``, pages:
``ood_core/app/app_pages/``), so that an installed ``ood-lab app`` serves the same files.
This file only runs the router; Streamlit puts this folder on ``sys.path``, so the
``ood_core`` beside it is the one imported.
"""
from ood_core.app.main import run

run()
