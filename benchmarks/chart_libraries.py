"""What a chart library, or a table element, costs a page opened cold in the browser: plotly.js
against Vega-Lite, and Streamlit's dataframe grid against a static table and a Markdown table.

Six tiny Streamlit pages, written to a temporary folder, are served one after the other by
``streamlit run`` and opened ``--repeats`` times each in headless Chromium (Playwright), every
time in a new browser context (no HTTP cache, as a shared link opened for the first time):

* ``none``: a title and a line of text (the floor: HTML, Streamlit's scripts, the websocket);
* ``plotly``: the same plus ``--charts`` overlaid histograms drawn with ``st.plotly_chart``;
* ``vega``: the same plus as many histograms with the same data, drawn with
  ``st.vega_lite_chart`` as the app draws them (:func:`ood_core.app.figures.distributions_figure`);
* ``dataframe``: the floor plus ``--charts`` metric tables (10 rows, 6 columns) in
  ``st.dataframe``, the interactive grid (drawn on a canvas);
* ``table``: the same tables in ``st.table`` (plain HTML);
* ``markdown``: the same tables written as Markdown (:func:`ood_core.app.tables.markdown_table`)
  in ``st.markdown``, whose scripts every page loads anyway.

Timed from navigation until every chart or table is drawn (plotly's SVG, Vega's marks, the
grid's canvas, the static table, the Markdown table); the medians and each element's cost above
the floor are printed. This is why the app draws its histograms, bar and line charts with
Vega-Lite and its short tables as Markdown (``docs/performance.md``).

    python benchmarks/chart_libraries.py [--repeats 5] [--charts 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _load_app_latency():
    """benchmarks/app_latency.py (the server, the browser flags), loaded from its file."""
    spec = importlib.util.spec_from_file_location("app_latency", Path(__file__).resolve().parent / "app_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


al = _load_app_latency()

PAGE_HEAD = """import numpy as np
import streamlit as st

st.title("chart cost")
st.markdown("One line of text.")
rng = np.random.default_rng(0)
values = {{"ID (test)": rng.normal(size=2000), "OOD": rng.normal(1.0, 1.0, size=2000)}}
n_charts = {n}
"""
PAGES = {
    "none": "",
    "plotly": """import plotly.express as px
import pandas as pd
df = pd.concat([pd.DataFrame({"x": v, "set": k}) for k, v in values.items()])
for i in range(n_charts):
    st.plotly_chart(px.histogram(df, x="x", color="set", barmode="overlay", histnorm="probability density",
                                 nbins=60, opacity=0.55), key=f"c{i}")
""",
    "vega": """from ood_core.app import figures
for i in range(n_charts):
    fig = figures.distributions_figure(values, "x", None)
    st.vega_lite_chart(fig.table, fig.spec, key=f"c{i}", width="stretch")
""",
"dataframe": """import pandas as pd
table = pd.DataFrame({"ood_set": [f"set {i}" for i in range(10)], "auroc": rng.random(10),
                      "aupr_in": rng.random(10), "aupr_out": rng.random(10), "fpr95": rng.random(10),
                      "n": rng.integers(100, 1000, 10)})
for i in range(n_charts):
    st.dataframe(table, hide_index=True, key=f"c{i}")
""",
}
PAGES["table"] = PAGES["dataframe"].replace("st.dataframe(table, hide_index=True, key=f\"c{i}\")", "st.table(table)")
PAGES["markdown"] = ("from ood_core.app.tables import markdown_table\n" + PAGES["dataframe"].replace(
    "st.dataframe(table, hide_index=True, key=f\"c{i}\")", "st.markdown(markdown_table(table))"))
DRAWN = {"none": None, "plotly": al.PLOTLY_DRAWN, "vega": al.VEGA_DRAWN,  # as app_latency waits for them
         "dataframe": al.DATAFRAME_DRAWN, "table": al.TABLE_DRAWN, "markdown": al.MARKDOWN_TABLE_DRAWN}
PAIRS = (("plotly", "vega", "plotly.js", "Vega-Lite"), ("dataframe", "table", "the dataframe grid", "st.table"),
         ("table", "markdown", "st.table", "a Markdown table"))


def measure(browser, base: str, kind: str, n_charts: int, repeats: int, timeout: float = 60.0) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first load warms the server up (imports): not counted
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            t0 = time.perf_counter()
            tab.goto(base, wait_until="commit")
            tab.get_by_role("heading", name="chart cost").wait_for(timeout=timeout * 1000)
            deadline = t0 + timeout
            while DRAWN[kind] and tab.locator(DRAWN[kind]).count() < n_charts:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"{kind}: {n_charts} elements not drawn after {timeout} s")
                time.sleep(0.02)
            times.append(time.perf_counter() - t0)
        finally:
            tab.close()
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="cold loads per page (median reported; default 5)")
    p.add_argument("--charts", type=int, default=5, help="histograms (or tables) per page (default 5)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.charts < 1:
        p.error("--repeats and --charts must be >= 1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("needs the playwright package") from None
    if not Path(al.CHROMIUM).exists():
        raise SystemExit(f"needs {al.CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="ood-chart-cost-") as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=al.CHROMIUM, args=al.CHROMIUM_ARGS)
        try:
            for kind, body in PAGES.items():
                script = Path(tmp) / f"{kind}.py"
                script.write_text(PAGE_HEAD.format(n=args.charts) + body)
                print(f"  {kind} ...", file=sys.stderr, flush=True)
                with al.streamlit_server(dict(os.environ), Path(tmp) / f"{kind}.log", app=script) as base:
                    results[kind] = measure(browser, base, kind, args.charts, args.repeats)
        finally:
            browser.close()
    floor = statistics.median(results["none"])
    print(f"Cold page load in headless Chromium, {args.charts} overlaid histograms (2 sets of 2,000 values, "
          f"60 bins) or {args.charts} tables (10 x 6), median of {args.repeats}; "
          f"{al.machine_info()['cpus_usable']} CPUs")
    print("| page | median (s) | runs (s) | cost of the charts above the floor (s) |")
    print("|---|---|---|---|")
    for kind, times in results.items():
        med = statistics.median(times)
        extra = "—" if kind == "none" else f"{med - floor:.2f}"
        print(f"| {kind} | {med:.2f} | {', '.join(f'{t:.2f}' for t in times)} | {extra} |")
    for heavy, light, heavy_name, light_name in PAIRS:
        a, b = (statistics.median(results[k]) - floor for k in (heavy, light))
        print(f"{heavy_name} costs {a:.2f} s, {light_name} {b:.2f} s" + (f" ({a / b:.1f}x)" if b > 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
