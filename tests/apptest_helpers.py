"""Shared pieces of the AppTest suites (test_app*.py): the app's path, the fixtures that train
small checkpoints once per session, and decoders for the plotly JSON the pages send.

Fixtures are registered in ``conftest.py`` (``ckpt_dir``, ``app``, ``clear_streamlit_caches``).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120


def charts(at: AppTest) -> list[dict]:
    """Every plotly chart of the last run, as its figure JSON."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(values) -> np.ndarray:
    """A plotly JSON array: a list, or plotly 7's typed array {"dtype", "bdata": base64}."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values, dtype=float)


def traces_of_type(at: AppTest, trace_type: str) -> list[dict]:
    """The charts whose first trace has type ``trace_type`` ("histogram", "scatter", ...)."""
    return [c for c in charts(at) if c["data"] and c["data"][0]["type"] == trace_type]


def evaluation_of(path) -> dict:
    """The app's evaluation of a checkpoint (:func:`ood_core.views.evaluate_model`), computed
    directly: no cache, no Streamlit; the reference the pages' numbers are checked against."""
    from ood_core import load_checkpoint
    from ood_core.views import evaluate_model

    return evaluate_model(*load_checkpoint(path))


MODELS = "ood_core/app/app_pages/models.py"


def page(name: str) -> str:
    """The path ``AppTest.switch_page`` takes for the app page file ``name`` (``"models"``)."""
    return f"ood_core/app/app_pages/{name}.py"


def on_page(at: AppTest, name: str = "models") -> AppTest:
    """Run the app once (its default page is Home) and open the page ``name``."""
    at.run()
    return at.switch_page(page(name)).run()


def opened_at(at: AppTest, name: str, params: dict) -> AppTest:
    """Open the app as a browser opens ``/<url path of name>?params``: the query string, and the
    URL the router records on a session's first run (``state.note_page``), which a browser's
    first run at that page would record. AppTest itself always starts on the default page."""
    from ood_core.app import state
    from ood_core.app.pages import PAGES

    url_path = next(p.url_path for p in PAGES if p.file == f"{name}.py")
    at.query_params.update(params)
    at.session_state[state._URL_OPENED_KEY] = {"page": url_path, "params": dict(params)}
    return on_page(at, name)
