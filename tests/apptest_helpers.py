"""Shared pieces of the AppTest suites (test_app*.py): the app's path, the fixtures that train
small checkpoints once per session, and decoders for the charts the pages send (plotly JSON,
Vega-Lite specs with their Arrow data).

Fixtures are registered in ``conftest.py`` (``ckpt_dir``, ``app``, ``clear_streamlit_caches``).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120


def shown_tables(at: AppTest) -> list[pd.DataFrame]:
    """Every table of the last run in page order: the dataframe grids and the static Markdown
    ones (:func:`ood_core.app.widgets.show_table` picks by length), the latter read back by
    :func:`parse_markdown_table`."""
    def walk(node):
        for child in getattr(node, "children", {}).values():
            kind = getattr(child, "type", None)
            if kind in ("dataframe", "table"):
                yield child.value
            elif kind == "markdown" and str(child.value).startswith("| "):
                yield parse_markdown_table(child.value)
            yield from walk(child)
    return list(walk(at.main))


def _split_row(line: str) -> list[str]:
    cells, cell, escaped = [], "", False
    for ch in line.strip()[1:-1]:
        if escaped:
            cell, escaped = cell + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == "|":
            cells, cell = cells + [cell.strip()], ""
        else:
            cell += ch
    return cells + [cell.strip()]


def parse_markdown_table(text: str) -> pd.DataFrame:
    """A Markdown table back as a DataFrame, written independently of the app's formatter:
    escapes removed; a column whose cells all read as numbers (or "–") becomes float, one of
    "yes"/"no" bool. Its numbers are rounded as shown: compare them with :func:`as_shown`."""
    lines = text.strip().splitlines()
    header, rows = _split_row(lines[0]), [_split_row(line) for line in lines[2:]]
    df = pd.DataFrame(rows, columns=header)
    for c in df.columns:
        col = df[c]
        if col.isin(["yes", "no"]).all():
            df[c] = col == "yes"
            continue
        numbers = pd.to_numeric(col.replace("–", "nan"), errors="coerce")
        if numbers.notna().sum() == (col != "–").sum() and (col != "–").any():
            df[c] = numbers
    return df


def as_shown(value):
    """``pytest.approx`` at the precision a Markdown table shows (4 decimals or 4 significant
    digits: :func:`ood_core.app.tables.format_cell`)."""
    return pytest.approx(value, rel=5e-4, abs=5.1e-5)


def charts(at: AppTest) -> list[dict]:
    """Every plotly chart of the last run, as its figure JSON."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(values) -> np.ndarray:
    """A plotly JSON array: a list, or plotly 7's typed array {"dtype", "bdata": base64}."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values, dtype=float)


def traces_of_type(at: AppTest, trace_type: str) -> list[dict]:
    """The plotly charts whose first trace has type ``trace_type`` ("scatter", "heatmap", ...)."""
    return [c for c in charts(at) if c["data"] and c["data"][0]["type"] == trace_type]


@dataclass
class VegaView:
    """One ``st.vega_lite_chart`` of a run: its spec and the table it draws."""
    spec: dict
    table: pd.DataFrame

    @property
    def sets(self) -> list[str]:
        """A histogram's sets, in the legend's order (the colour scale's domain)."""
        layer = self.spec["layer"][0] if "layer" in self.spec else self.spec
        return list(layer["encoding"]["color"]["scale"]["domain"])

    @property
    def title(self) -> str | None:
        return self.spec.get("title")


def vega_charts(at: AppTest) -> list[VegaView]:
    """Every Vega-Lite chart of the last run (Streamlit sends the data apart, as Arrow)."""
    return [VegaView(json.loads(c.proto.spec), pa.ipc.open_stream(c.proto.data.data).read_pandas())
            for c in at.get("vega_lite_chart")]


def histograms(at: AppTest) -> list[VegaView]:
    """The density histograms (``figures.distributions_figure``) of the last run."""
    return [v for v in vega_charts(at) if {"set", "start", "end", "density"} <= set(v.table.columns)]


def roc_charts(at: AppTest) -> list[VegaView]:
    """The ROC charts (``figures.roc_figure``) of the last run: a table of (curve, FPR, TPR) rows."""
    return [v for v in vega_charts(at) if {"curve", "FPR", "TPR"} <= set(v.table.columns)]


def roc_marker(view: VegaView) -> tuple[float, float] | None:
    """The (FPR, TPR) cross of an ROC chart's threshold, None when it has none."""
    for layer in view.spec.get("layer", []):
        if layer.get("name") == "threshold":
            return layer["encoding"]["x"]["datum"], layer["encoding"]["y"]["datum"]
    return None


def check_histogram(view: VegaView, values: dict) -> None:
    """The histogram draws exactly ``values`` ({set: samples}): per set, each bar's count is the
    number of finite samples in [start, end) (the last bin closed), counted here by comparison,
    and its density is count / (n * width)."""
    assert view.sets == list(values)
    for name, v in values.items():
        v = np.asarray(v, dtype=float).ravel()
        v = v[np.isfinite(v)]
        rows = view.table[view.table["set"] == name].sort_values("start")
        start, end = rows["start"].to_numpy(), rows["end"].to_numpy()
        last = np.arange(len(rows)) == len(rows) - 1
        counts = [int(((v >= a) & ((v < b) | (is_last & (v <= b)))).sum()) for a, b, is_last in zip(start, end, last)]
        assert rows["count"].tolist() == counts and sum(counts) == v.size
        np.testing.assert_allclose(rows["density"], np.asarray(counts) / (v.size * (end - start)))


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


MODELS_TAB_KEY = "models_tab"  # the Models page's tabs: only the open one runs
TRAIN_TAB, IMPORT_TAB, LOADED_TAB = "Train a new model", "Import a model", "Loaded checkpoint"


def models_tab(at: AppTest, label: str = TRAIN_TAB) -> AppTest:
    """Open a tab of the Models page, as a click on it does (it sets the tabs' state and
    reruns), and run the page."""
    at.session_state[MODELS_TAB_KEY] = label
    return at.run()


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
