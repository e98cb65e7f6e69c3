"""Latency of every app page with the shipped checkpoints: first render and re-render after a widget change.

Targets (issue): on CPU, with the shipped checkpoints in ``checkpoints/``, every page's
**first render <= 3 s** and its **re-render after a widget change <= 1 s**.

Method (AppTest mode, the default; ``streamlit.testing.v1.AppTest``, no browser):

* Pages: every ``PageEntry("x.py", title, url_path)`` of the app's page registry
  (``ood_core/app/pages.py``, from which the router builds its ``st.Page`` list; a router with
  literal ``st.Page(...)`` calls is read the same way), parsed from the source, so a new page is
  measured without editing this script. The checkpoint is the
  sidebar's default (the first ``*.pt`` by name in ``$OOD_CHECKPOINT_DIR`` or
  ``checkpoints/``; ``--checkpoint NAME`` picks another one).
* Cold process start (reported once, not a page figure): the first ``at.run()`` of
  ``app.py`` in this process, i.e. the default page plus the imports of torch, plotly,
  ``ood_core`` ... A freshly started ``streamlit run`` server pays this once.
* First render of page P: a fresh ``AppTest`` of ``app.py`` is run once (the default page,
  untimed), then the Streamlit caches are cleared (``st.cache_data.clear()``,
  ``st.cache_resource.clear()``) and ``at.switch_page(P).run()`` is timed. Each page gets a
  fresh, empty ``$OOD_CACHE_DIR`` (the on-disk projection/upload cache) so a disk cache left
  by an earlier run cannot make the first render look faster than a new user's
  (``--keep-disk-cache`` uses the existing one instead). Python modules stay imported from
  the cold start, as they would in a running server; a module imported only by one page
  (e.g. umap) is paid by that page's first render.
* Re-render of page P: the page's main widget (``WIDGETS`` below: a key or the first widget
  of a kind; fallback: the first selectbox/radio in the main area with >= 2 options whose
  labels can be set) is switched to another value and ``.run()`` is timed; this is
  repeated ``--repeats`` times, alternating between the new and the original value, and
  the **median** is compared with the target. The first change (which may compute what the
  page has not cached yet) is also reported.
* Every run must end without ``at.exception``; a page that raised is reported and the
  script exits non-zero.

The timed numbers are Streamlit's own script execution (``app.py`` plus the page, as the
server runs it), which is what the user waits for, minus the websocket transfer and the
browser's drawing.

``--browser`` adds the same measurement in a real browser: per page a fresh ``streamlit run``
server (headless, free port) and Debian Chromium driven by Playwright. The server is warmed
up like the AppTest process (the default page is opened once: its time is the server's cold
start). Before each first render its caches are cleared with the app menu's "Clear caches"
(shortcut "c", from a tab on the default page) and its disk cache ($OOD_CACHE_DIR) is emptied.
Every first render counts until a script run has ended, the page's title and every chart,
table and image of its first render (the plotly, Vega-Lite, dataframe, static-table and image
counts AppTest saw) are drawn (an image: its file loaded) and no spinner shows. That test runs
inside the page at every animation frame, so the harness takes no CPU time from the page while
it loads.
It is measured two ways, ``--repeats`` times each (median reported):

* **by URL**: the page opened in a new browser context (no HTTP cache: a shared link opened
  for the first time), timed from navigation; split into "connected" (HTML + JS loaded,
  websocket open), script start and script end (of the median run);
* **via the sidebar**: the default page opened and drawn, then the page's sidebar link
  clicked, timed from the click (how a user moves between pages; the browser has Streamlit's
  scripts loaded already). Not for the default page itself.

Re-render = from the user's input event (the option click, or the End/Home key on a slider)
until the script run it triggered has ended and the browser painted (two animation frames
after). The widget is the one AppTest mode changed.

By default CUDA devices are hidden (``CUDA_VISIBLE_DEVICES=""``) so the figures are CPU
ones; ``--gpu`` lets the app pick a GPU.

    .venv/bin/python benchmarks/app_latency.py                       # every page, AppTest
    .venv/bin/python benchmarks/app_latency.py --pages models,roc --repeats 5
    .venv/bin/python benchmarks/app_latency.py --browser --json latency.json
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as _dt
import importlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
ROUTER = ROOT / "ood_core" / "app" / "main.py"  # the st.navigation call app.py runs
TARGET_FIRST_S = 3.0
TARGET_RERENDER_S = 1.0
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking"]
# a chart that is drawn: plotly's SVG, or the marks Vega draws (one match per chart)
PLOTLY_DRAWN = ".js-plotly-plot:has(.main-svg)"
VEGA_DRAWN = '[data-testid="stVegaLiteChart"]:has(svg.marks, canvas.marks)'
# a table that is drawn: the dataframe grid's canvas, the static table's HTML, or a Markdown table
DATAFRAME_DRAWN = '[data-testid="stDataFrame"]:has(canvas[data-testid="data-grid-canvas"])'
TABLE_DRAWN = '[data-testid="stTable"]:has(table)'
MARKDOWN_TABLE_DRAWN = '[data-testid="stMarkdown"] table'  # ood_core.app.tables.markdown_table

# Each page's main widget: (kind, key). key None = the first widget of that kind in the main area.
# Pages not listed use the fallback (first selectbox/radio in the main area with >= 2 settable options).
WIDGETS: dict[str, tuple[str, str | None]] = {
    "models": ("selectbox", "score"),          # histogram score: cached evaluation, new figure
    "lessons": ("selectbox", "lesson"),        # another lesson: its first step and figure
    "jacobian": ("radio", "jac_method"),       # estimate <-> exact Jacobian norms
    "collapse": ("radio", "subspace"),         # principal vs class-mean subspace
    "features": ("selectbox", "feat_set"),     # OOD set of the feature-norm histograms
    "energy": ("selectbox", "energy_set"),     # OOD set of the energy histograms
    "roc": ("slider", None),                   # threshold slider (its key depends on score and set)
}
FALLBACK_KINDS = ("selectbox", "radio")


# ----------------------------------------------------------------------------- pages of app.py
@dataclass
class PageInfo:
    name: str   # url_path, else the file stem
    file: str   # relative to app.py, e.g. "app_pages/models.py"
    title: str
    default: bool = False  # the default page is served at "/" (its url_path gives "page not found")


def registered_pages(app: Path = ROUTER) -> list[PageInfo]:
    """The ``st.Page("file.py", title=...)`` or ``st.Page(PAGES / "file.py", ...)`` calls of
    ``app`` in source order; ``file`` relative to :data:`APP` (as ``AppTest.switch_page`` wants
    it), ``PAGES`` being the router's folder of pages."""
    tree = ast.parse(Path(app).read_text(), filename=str(app))
    pages = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Page"):
            continue
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Div) and isinstance(arg.right, ast.Constant):
            # the router's PAGES folder, not imported: importing ood_core here would spoil the cold start
            file = os.path.relpath(ROUTER.parent / "app_pages" / arg.right.value, APP.parent)
        elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            file = arg.value
        else:
            continue
        kw = {k.arg: k.value.value for k in node.keywords
              if k.arg in ("title", "url_path", "default") and isinstance(k.value, ast.Constant)}
        stem = Path(file).stem
        pages.append((node.lineno, node.col_offset, PageInfo(kw.get("url_path") or stem, file, kw.get("title") or stem,
                                                             bool(kw.get("default")))))
    pages = [p for *_, p in sorted(pages, key=lambda t: (t[0], t[1]))]
    if not pages and (Path(app).parent / "pages.py").is_file():
        pages = _page_entries(Path(app).parent / "pages.py")
    if pages and not any(p.default for p in pages):
        pages[0].default = True  # st.navigation's default: the first page
    return pages


def _page_entries(registry: Path) -> list[PageInfo]:
    """The ``PageEntry("file.py", "title", "url_path")`` calls of the app's page registry
    (``ood_core/app/pages.py``, from which the router builds its ``st.Page`` list); url path ""
    is the default page, named by its file stem."""
    tree = ast.parse(registry.read_text(), filename=str(registry))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "PageEntry" and len(node.args) == 3 \
                and all(isinstance(a, ast.Constant) for a in node.args):
            file, title, url_path = (a.value for a in node.args)
            rel = os.path.relpath(registry.parent / "app_pages" / file, APP.parent)
            out.append((node.lineno, PageInfo(url_path or Path(file).stem, rel, title, not url_path)))
    return [p for _, p in sorted(out, key=lambda t: t[0])]


def select_pages(pages: list[PageInfo], wanted: str | None) -> list[PageInfo]:
    """``wanted``: comma-separated url paths or file stems (None/"" = all). Unknown names raise."""
    if not wanted:
        return pages
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    by_name = {p.name: p for p in pages} | {Path(p.file).stem: p for p in pages}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown page(s) {', '.join(unknown)}; app.py registers {', '.join(p.name for p in pages)}")
    return [by_name[n] for n in names]


# ----------------------------------------------------------------------------- AppTest helpers
class PageError(RuntimeError):
    """A page raised (``at.exception``), timed out, or its widget could not be changed."""


@dataclass
class WidgetChoice:
    kind: str
    key: str | None
    label: str
    values: list  # [new value, original value]; alternated

    def describe(self) -> str:
        ident = f"key={self.key}" if self.key else f"label={self.label!r}"
        shown = [v if isinstance(v, str) else round(v, 4) if isinstance(v, float) else v for v in self.values]
        return f"{self.kind} {ident}: {shown[1]!r} <-> {shown[0]!r}"


def clear_streamlit_caches() -> None:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def check_run(at, page: str, stage: str) -> None:
    """Raise PageError if the last run of ``at`` showed an exception."""
    if len(at.exception):
        msgs = "; ".join(str(e.value) for e in at.exception)
        raise PageError(f"{page}: exception during {stage}: {msgs}")


def timed_run(at_or_widget, at, page: str, stage: str, timeout: float) -> float:
    t0 = time.perf_counter()
    try:
        at_or_widget.run(timeout=timeout)
    except RuntimeError as e:  # AppTest's "script run timed out"
        raise PageError(f"{page}: {stage}: {e}") from None
    dt = time.perf_counter() - t0
    check_run(at, page, stage)
    return dt


def _main_widgets(at, kind: str) -> list:
    return list(getattr(at.main, kind))


def _find(at, kind: str, key: str | None, label: str | None = None):
    for w in _main_widgets(at, kind):
        if (key is not None and w.key == key) or (key is None and (label is None or w.label == label)):
            return w
    return None


def _labels_settable(w) -> bool:
    """True if the option labels can be passed to set_value (identity format_func on them)."""
    fmt = w.format_func
    for o in w.options:
        try:
            if str(fmt(o)) != o:
                return False
        except Exception:  # AppTest then falls back to the label itself
            continue
    return True


def _choice_for(w, kind: str) -> WidgetChoice | None:
    """Two values to alternate between for widget ``w`` (new first), or None if not possible."""
    if w.disabled:
        return None
    if kind in ("selectbox", "radio", "select_slider"):
        options = list(w.options)
        if len(options) < 2 or not _labels_settable(w):
            return None
        current = w.value if kind == "select_slider" else options[w.index or 0]
        if kind == "select_slider":
            current = str(current)
            if current not in options:
                return None
        other = options[1] if current == options[0] else options[0]
        return WidgetChoice(kind, w.key, w.label, [other, current])
    if kind == "slider":
        lo, hi, cur = w.min, w.max, w.value
        if isinstance(cur, (tuple, list)) or hi == lo:
            return None
        a, b = lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)
        if isinstance(cur, int) and isinstance(lo, int):
            a, b = int(round(a)), int(round(b))
            if a == b:
                a, b = lo, hi
        return WidgetChoice(kind, w.key, w.label, [b, a])
    return None


def choose_widget(at, page: str) -> WidgetChoice | None:
    """The widget to change on ``page`` after its first render (see WIDGETS and the fallback)."""
    if page in WIDGETS:
        kind, key = WIDGETS[page]
        w = _find(at, kind, key)
        if w is None:
            raise PageError(f"{page}: no {kind} with key {key!r} in the main area (update WIDGETS in {__file__})")
        choice = _choice_for(w, kind)
        if choice is None:
            raise PageError(f"{page}: the {kind} {w.label!r} cannot be switched to a second value "
                            f"(fewer than 2 options, disabled, or a format_func; update WIDGETS)")
        return choice
    for kind in FALLBACK_KINDS:
        for w in _main_widgets(at, kind):
            choice = _choice_for(w, kind)
            if choice is not None:
                return choice
    return None


@contextlib.contextmanager
def env_var(name: str, value: str | None):
    """Set (or with None leave alone) an environment variable for the block, then restore it."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@dataclass
class PageResult:
    page: str
    file: str
    title: str
    first_render_s: float | None = None
    rerender_s: list[float] = field(default_factory=list)
    widget: str | None = None
    widget_key: str | None = None   # the key the widget had (for the browser mode)
    widget_kind: str | None = None
    widget_options: list = field(default_factory=list)
    heading: str | None = None      # the page's st.title, for the browser mode
    charts: int = 0                 # plotly charts on the first render
    vega_charts: int = 0            # Vega-Lite charts on the first render
    dataframes: int = 0             # st.dataframe grids on the first render
    tables: int = 0                 # static st.table tables on the first render
    images: int = 0                 # st.image elements on the first render
    errors_shown: list[str] = field(default_factory=list)  # st.error messages (reported, not fatal)
    error: str | None = None        # an exception / timeout: fatal

    @property
    def rerender_median_s(self) -> float | None:
        return statistics.median(self.rerender_s) if self.rerender_s else None

    @property
    def first_change_s(self) -> float | None:
        return self.rerender_s[0] if self.rerender_s else None

    def to_json(self) -> dict:
        d = asdict(self)
        d["rerender_median_s"] = self.rerender_median_s
        d["first_change_s"] = self.first_change_s
        d["first_render_met"] = None if self.first_render_s is None else self.first_render_s <= TARGET_FIRST_S
        d["rerender_met"] = None if self.rerender_median_s is None else self.rerender_median_s <= TARGET_RERENDER_S
        return d


def measure_page(page: PageInfo, repeats: int = 3, timeout: float = 300.0, checkpoint: str | None = None,
                 fresh_disk_cache: bool = True) -> PageResult:
    """First render and re-render times of one page with AppTest (see the module docstring).

    Raises PageError when the page raised, timed out or its widget could not be changed;
    the partial result is attached as ``error.result``.
    """
    from streamlit.testing.v1 import AppTest

    from ood_core.app import state

    res = PageResult(page.name, page.file, page.title)
    try:
        at = AppTest.from_file(str(APP), default_timeout=timeout)
        if checkpoint:
            at.session_state[state.CHECKPOINT_KEY] = checkpoint
        with tempfile.TemporaryDirectory(prefix="ood-latency-cache-") as tmp:
            with env_var("OOD_CACHE_DIR", str(Path(tmp) / "boot") if fresh_disk_cache else None):
                timed_run(at, at, page.name, "the initial run of app.py (default page)", timeout)
            with env_var("OOD_CACHE_DIR", str(Path(tmp) / "page") if fresh_disk_cache else None):
                clear_streamlit_caches()
                at.switch_page(page.file)
                res.first_render_s = timed_run(at, at, page.name, "the first render", timeout)
                res.charts = len(at.get("plotly_chart"))
                res.vega_charts = len(at.get("vega_lite_chart"))
                res.dataframes, res.tables = len(at.dataframe), len(at.table)
                res.images = len(at.get("image"))
                res.heading = at.title[0].value if len(at.title) else None
                res.errors_shown = [str(e.value) for e in at.error]
                choice = choose_widget(at, page.name)
                if choice is None:
                    return res
                res.widget, res.widget_key, res.widget_kind = choice.describe(), choice.key, choice.kind
                res.widget_options = list(choice.values)
                for i in range(repeats):
                    w = _find(at, choice.kind, choice.key, None if choice.key else choice.label)
                    if w is None:
                        raise PageError(f"{page.name}: the {choice.kind} {choice.label!r} vanished after a change")
                    value = choice.values[i % 2]
                    w.set_value(value)
                    res.rerender_s.append(timed_run(w, at, page.name, f"re-render #{i + 1} ({value!r})", timeout))
                    now = _find(at, choice.kind, choice.key, None if choice.key else choice.label)
                    got = None if now is None else (now.options[now.index] if choice.kind in ("selectbox", "radio")
                                                    else now.value)
                    if choice.kind in ("selectbox", "radio", "select_slider") and str(got) != str(value):
                        raise PageError(f"{page.name}: set {choice.kind} {choice.label!r} to {value!r} "
                                        f"but the page shows {got!r}")
    except PageError as e:
        res.error = str(e)
        e.result = res
        raise
    return res


# ----------------------------------------------------------------------------- browser mode (bonus)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Installed before the page loads: records (performance.now() ms since navigation) every change of
# stApp's connection and script state, a "painted" mark two animation frames after each script run
# ends, and the times of user input events.
_RECORDER_JS = """
window.__lat = {events: [], inputs: []};
(() => {
  const rec = (name) => {
    window.__lat.events.push([name, performance.now()]);
    if (name === 'notRunning') requestAnimationFrame(() => requestAnimationFrame(
        () => window.__lat.events.push(['painted', performance.now()])));
  };
  let conn = null, script = null;
  const see = (c, s) => {
    if (c !== conn) { conn = c; rec('conn:' + c); }
    if (s !== script) { script = s; rec(s); }
  };
  const CONN = 'data-test-connection-state', SCRIPT = 'data-test-script-state';
  // Watches the whole document: stApp may be mounted late or again. A fast script run can set
  // and clear "running" before the callback runs, so every change is replayed from the
  // records' old values (a record's new value is the next record's old value).
  new MutationObserver((records) => {
    const app = document.querySelector('[data-testid="stApp"]');
    const mine = records.filter((r) => r.type === 'attributes' && r.target === app);
    mine.forEach((r, i) => {
      const next = mine.slice(i + 1).find((q) => q.attributeName === r.attributeName);
      const value = next ? next.oldValue : app.getAttribute(r.attributeName);
      if (r.attributeName === CONN) see(value, script); else see(conn, value);
    });
    if (app) see(app.getAttribute(CONN), app.getAttribute(SCRIPT));
  }).observe(document, {subtree: true, childList: true, attributes: true, attributeOldValue: true,
                        attributeFilter: [CONN, SCRIPT]});
  for (const t of ['pointerdown', 'keydown'])
    document.addEventListener(t, () => window.__lat.inputs.push(performance.now()), true);
})();
"""


@contextlib.contextmanager
def streamlit_server(env: dict, log_path: Path, start_timeout: float = 120.0, app: Path = APP):
    """``streamlit run app`` (headless, on a free port, environment ``env``); yields its base URL."""
    port = _free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app),
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--server.headless", "true", "--browser.gatherUsageStats", "false",
                                 "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise PageError(f"streamlit did not start on {base}; see {log_path}")
                time.sleep(0.3)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


# the app connected, with no script running
APP_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]'


# The same test, run inside the page: see :func:`_wait_drawn`. arg = {heading, charts, needRun}.
_DRAWN_JS = """
(arg) => {
  const app = document.querySelector(%s);
  if (!app || document.querySelector('[data-testid="stSpinner"]')) return false;
  const drawn = [%s];
  for (let i = 0; i < arg.charts.length && i < drawn.length; i++)
    if (arg.charts[i] && document.querySelectorAll(drawn[i]).length < arg.charts[i]) return false;
  const images = [...document.querySelectorAll('[data-testid="stImage"] img')];  // loaded and decoded
  if (arg.charts.length > drawn.length &&
      images.filter((im) => im.complete && im.naturalWidth > 0).length < arg.charts[drawn.length]) return false;
  if (arg.needRun) {  // a script run started and ended since the recorder was reset
    const names = (window.__lat ? window.__lat.events : []).map((e) => e[0]);
    const start = names.indexOf('running');
    if (start < 0 || names.indexOf('notRunning', start) < 0) return false;
  }
  if (arg.heading == null) return true;  // None may arrive as undefined
  // as Playwright's get_by_role("heading", name=...): a case-insensitive substring of the name
  const want = arg.heading.replace(/\\s+/g, ' ').trim().toLowerCase();
  return [...document.querySelectorAll('h1, h2, h3, h4, h5, h6, [role="heading"]')].some(
    (h) => h.textContent.replace(/\\s+/g, ' ').trim().toLowerCase().includes(want));
}
""" % (json.dumps(APP_IDLE), ", ".join(json.dumps(sel) for sel in (PLOTLY_DRAWN, VEGA_DRAWN, DATAFRAME_DRAWN,
                                                                   TABLE_DRAWN)))


def _page_errors(page) -> list[str]:
    return page.locator('[data-testid="stException"]').all_inner_texts()


def _browser_change(page, kind: str, key: str, label: str) -> None:
    box = page.locator(f".st-key-{key}")
    if kind == "selectbox":  # streamlit 1.67: a react-aria combobox; older: a baseweb select
        option = page.get_by_role("option", name=label, exact=True)
        openers = [box.locator('button[aria-haspopup="listbox"]'), box.get_by_role("combobox"),
                   box.locator('[data-baseweb="select"]')]
        # a page that reruns once after its first render (URL state) mounts the widget again
        openers[0].or_(openers[1]).or_(openers[2]).first.wait_for(timeout=30_000)
        for attempt in range(6):  # the popup sometimes closes again at once (scrolling into view)
            opener = openers[attempt % len(openers)]
            if opener.count():
                opener.first.click()
                with contextlib.suppress(Exception):
                    option.wait_for(state="visible", timeout=1500)
                if option.count() and option.first.is_visible():
                    break
                page.keyboard.press("Escape")
        option.first.click()  # the user's input: the timing starts at this click
    elif kind == "radio":
        box.get_by_text(label, exact=True).click()
    elif kind in ("slider", "select_slider"):
        handle = box.locator('input[type="range"], [role="slider"]').first
        handle.focus()
        handle.press(label)  # "End" / "Home"
    else:
        raise PageError(f"browser mode cannot change a {kind}")


def _wait_drawn(tab, heading: str | None, charts: tuple[int, ...], timeout: float, what: str,
                need_run: bool = True) -> None:
    """Until a script run has started and ended since the recorder was reset, no spinner shows,
    the heading is there and every chart and table of the first render is drawn: ``charts`` =
    (plotly, Vega-Lite, dataframe, table, image) counts from AppTest (missing trailing counts:
    0); an image counts once its file is loaded. ``need_run=False``: the page's heading (new on
    the page) may stand for the run, because a run that ends within one frame never shows the
    "running" state.

    The test runs in the page at every animation frame (``wait_for_function``), not polled from
    here: polling took a dozen browser round trips every 50 ms, CPU time taken from the two
    cores the server and the browser share while the page loads."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    arg = {"heading": heading, "charts": list(charts), "needRun": need_run}
    try:
        tab.wait_for_function(_DRAWN_JS, arg=arg, polling="raf", timeout=timeout * 1000)
    except PlaywrightTimeout:
        events = [ev[0] for ev in tab.evaluate("() => window.__lat ? window.__lat.events : []")]
        raise PageError(f"{what}: not drawn after {timeout} s in the browser (events {events})") from None


def _clear_caches(tab) -> None:
    """The app menu's "Clear caches" (keyboard shortcut "c") in an open tab of the app: like
    ``st.cache_data.clear(); st.cache_resource.clear()`` in AppTest mode."""
    tab.evaluate("() => document.activeElement && document.activeElement.blur()")
    tab.keyboard.press("c")
    button = tab.get_by_role("dialog").get_by_role("button", name="Clear caches", exact=True)
    button.click(timeout=10_000)
    tab.get_by_role("dialog").wait_for(state="detached", timeout=10_000)


def _empty_dir(folder: Path | None) -> None:
    """Empty the server's $OOD_CACHE_DIR (the disk cache) between two first renders."""
    if folder is None:
        return
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _new_tab(browser):
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})  # a new context: no HTTP cache
    tab.add_init_script(_RECORDER_JS)
    return tab


def warm_up_server(browser, base: str, timeout: float) -> float:
    """Open the default page once (the server's cold start: imports, first run). Returns its time in s."""
    tab = _new_tab(browser)
    try:
        t0 = time.perf_counter()
        tab.goto(base + "/", wait_until="commit")
        _wait_drawn(tab, None, (0, 0), timeout, "warm-up (default page)")
        return time.perf_counter() - t0
    finally:
        tab.close()


def _default_page_cleared(tab, base: str, cache: Path | None, timeout: float) -> None:
    """Open the default page in ``tab`` and wait until it is drawn, then clear the server's
    caches and empty its disk cache: what comes next is a first render."""
    tab.goto(base + "/", wait_until="commit")
    _wait_drawn(tab, None, (0, 0), timeout, "the default page before clearing the caches")
    _clear_caches(tab)
    _empty_dir(cache)


def _fresh_start(browser, base: str, cache: Path | None, timeout: float) -> None:
    """Before a first render by URL: :func:`_default_page_cleared` in a tab closed again."""
    tab = _new_tab(browser)
    try:
        _default_page_cleared(tab, base, cache, timeout)
    finally:
        tab.close()


def _split(events: list) -> dict:
    """Connected / script start / script end (s since the navigation) from the recorder's events."""
    first = lambda name: next((t / 1000.0 for n, t in events if n == name), None)  # noqa: E731
    start = first("running")
    done = first("notRunning") if start is None else next(
        (t / 1000.0 for n, t in events if n == "notRunning" and t / 1000.0 >= start), None)
    return {"connected_s": first("conn:CONNECTED"), "script_start_s": start, "script_done_s": done}


def _sidebar_first_render(browser, base: str, page_info: PageInfo, heading: str | None, charts: tuple[int, ...],
                          cache: Path | None, timeout: float) -> float:
    """A first render reached inside the app: the default page is opened and drawn, the caches are
    cleared and the disk cache emptied, then the page's sidebar link is clicked; timed from the
    click until the page is drawn (the browser has Streamlit's scripts loaded already, and
    plotly.js or Vega only if the default page drew such a chart)."""
    tab = _new_tab(browser)
    try:
        _default_page_cleared(tab, base, cache, timeout)
        link = tab.locator(f'[data-testid="stSidebarNav"] a[href$="/{page_info.name}"]')
        tab.evaluate("() => { window.__lat.events = []; }")
        t0 = time.perf_counter()
        link.first.click()
        _wait_drawn(tab, heading, charts, timeout, f"{page_info.name} (via the sidebar)", need_run=heading is None)
        elapsed = time.perf_counter() - t0
        if errs := _page_errors(tab):
            raise PageError(f"{page_info.name}: exception in the browser (via the sidebar): {' | '.join(errs)}")
        return elapsed
    finally:
        tab.close()


def browser_measure(page_info: PageInfo, apptest: PageResult | None, browser, env: dict, repeats: int,
                    workdir: Path, timeout: float = 120.0, fresh_disk_cache: bool = True) -> dict:
    """First renders (opened by URL, and via the sidebar) and re-renders of one page in Chromium
    against a fresh server (see the module docstring); ``repeats`` of each, medians reported."""
    out = {"page": page_info.name, "server_cold_start_s": None, "first_render_s": None, "first_renders_s": [],
           "connected_s": None, "script_start_s": None, "script_done_s": None,
           "sidebar_first_render_s": None, "sidebar_first_renders_s": [], "rerender_s": [], "error": None}
    heading = apptest.heading if apptest else None
    charts = ((apptest.charts, apptest.vega_charts, apptest.dataframes, apptest.tables, apptest.images)
              if apptest else (0, 0))
    with tempfile.TemporaryDirectory(prefix="ood-latency-cache-", dir=workdir) as cache_dir, \
            streamlit_server({**env, "OOD_CACHE_DIR": cache_dir} if fresh_disk_cache else env,
                             workdir / f"streamlit-{page_info.name}.log") as base:
        cache = Path(cache_dir) if fresh_disk_cache else None
        tab = None
        try:
            out["server_cold_start_s"] = warm_up_server(browser, base, timeout)
            splits = []
            for i in range(repeats):  # opened by its URL (a shared link), in a browser with no cache
                _fresh_start(browser, base, cache, timeout)
                if tab is not None:
                    tab.close()
                tab = _new_tab(browser)
                t0 = time.perf_counter()
                tab.goto(f"{base}/{'' if page_info.default else page_info.name}", wait_until="commit")
                _wait_drawn(tab, heading, charts, timeout, page_info.name)
                out["first_renders_s"].append(time.perf_counter() - t0)
                splits.append(_split(tab.evaluate("() => window.__lat.events")))
                if errs := _page_errors(tab):
                    raise PageError(f"{page_info.name}: exception in the browser: {' | '.join(errs)}")
            out["first_render_s"] = statistics.median(out["first_renders_s"])
            median_run = sorted(range(repeats), key=lambda j: out["first_renders_s"][j])[(repeats - 1) // 2]
            out.update(splits[median_run])  # the split of the median run
            if apptest and apptest.widget_key:
                _rerenders(tab, apptest, repeats, timeout, out)
            if not page_info.default:  # the default page is where a sidebar click starts
                tab.close()
                tab = None
                for _ in range(repeats):
                    out["sidebar_first_renders_s"].append(
                        _sidebar_first_render(browser, base, page_info, heading, charts, cache, timeout))
                out["sidebar_first_render_s"] = statistics.median(out["sidebar_first_renders_s"])
        except PageError as e:
            out["error"] = str(e)
        except Exception as e:  # playwright timeouts and the like: report, do not abort the other pages
            out["error"] = f"{page_info.name}: {type(e).__name__}: {e}".splitlines()[0]
        finally:
            if tab is not None:
                with contextlib.suppress(Exception):
                    tab.screenshot(path=str(workdir / f"{page_info.name}.png"))
                tab.close()
    return out


def _wait_quiet(tab, timeout: float, quiet_s: float = 0.3) -> None:
    """Until the app is connected, no script runs and the recorder saw no new event for
    ``quiet_s``: a page that reruns once more after a change (its URL state) is done, so the
    next input is not swallowed by a widget being mounted again."""
    app = tab.locator(APP_IDLE)
    deadline = time.perf_counter() + timeout
    seen, since = -1, time.perf_counter()
    while time.perf_counter() < deadline:
        n = tab.evaluate("() => window.__lat.events.length")
        if n != seen:
            seen, since = n, time.perf_counter()
        elif time.perf_counter() - since >= quiet_s and app.count():
            return
        time.sleep(0.03)


def _rerenders(tab, apptest: PageResult, repeats: int, timeout: float, out: dict,
               retry_after_s: float = 10.0) -> None:
    """``repeats`` changes of the page's main widget (alternating values), each timed from the
    input event until the script run it started has ended and the browser painted.

    Each change waits for a quiet app first. An input that starts no run within
    ``retry_after_s`` is made once more (the time then counts from that second input); a
    second miss is an error."""
    kind, key = apptest.widget_kind, apptest.widget_key
    steps = ["End", "Home"] if kind in ("slider", "select_slider") else [str(v) for v in apptest.widget_options]
    for i in range(repeats):
        _wait_quiet(tab, timeout)
        tab.evaluate("() => { window.__lat.events = []; window.__lat.inputs = []; }")
        _browser_change(tab, kind, key, steps[i % 2])
        retry = time.perf_counter() + retry_after_s
        end = time.perf_counter() + timeout
        while True:
            lat = tab.evaluate("() => window.__lat")
            names = [e[0] for e in lat["events"]]
            if "running" in names and "painted" in names[names.index("running"):]:
                break
            if retry is not None and not names and time.perf_counter() > retry:
                retry = None  # the input was lost (no event at all): make it once more
                tab.evaluate("() => { window.__lat.inputs = []; }")
                _browser_change(tab, kind, key, steps[i % 2])
            if time.perf_counter() > end:
                raise PageError(f"{apptest.page}: changing {kind} {key!r} to {steps[i % 2]!r} "
                                f"started no script run in the browser (events {names})")
            time.sleep(0.03)
        t_run = next(t for n, t in lat["events"] if n == "running")
        t_in = max([t for t in lat["inputs"] if t <= t_run], default=t_run)
        t_paint = next(t for n, t in lat["events"] if n == "painted" and t >= t_run)
        out["rerender_s"].append((t_paint - t_in) / 1000.0)
        if errs := _page_errors(tab):
            raise PageError(f"{apptest.page}: exception in the browser after a change: {' | '.join(errs)}")


def run_browser(pages: list[PageInfo], results: dict[str, PageResult], repeats: int, timeout: float,
                workdir: Path, fresh_disk_cache: bool = True, checkpoint: str | None = None) -> list[dict]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("--browser needs the playwright package") from None
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"--browser needs {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
    if checkpoint:
        print(f"note: the browser mode measures the sidebar's default checkpoint, not {Path(checkpoint).name}",
              file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("OOD_CHECKPOINT_DIR", str(ROOT / "checkpoints"))
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for page in pages:
                print(f"  browser: {page.name} ...", file=sys.stderr, flush=True)
                try:
                    rows.append(browser_measure(page, results.get(page.name), browser, env, repeats, workdir,
                                                timeout, fresh_disk_cache))
                except PageError as e:  # the server did not start
                    rows.append({"page": page.name, "first_render_s": None, "rerender_s": [], "error": str(e)})
        finally:
            browser.close()
    return rows


# ----------------------------------------------------------------------------- report
def machine_info() -> dict:
    import streamlit
    import torch

    from ood_core.runtime import select_device, usable_cpus

    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "cpu_model": model,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "streamlit": streamlit.__version__,
        "python": platform.python_version(),
        "device": str(select_device("auto")),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _met(x: float | None, target: float) -> str:
    return "—" if x is None else ("yes" if x <= target else "NO")


def format_table(results: list[PageResult], repeats: int) -> str:
    head = ["page", "first render (s)", f"target ≤ {TARGET_FIRST_S:g} s", "met?",
            f"re-render (s, median of {repeats})", f"target ≤ {TARGET_RERENDER_S:g} s", "met?",
            "first change (s)", "widget changed"]
    rows = []
    for r in results:
        widget = r.widget or ("— (no settable selectbox/radio on the page)" if r.error is None else "—")
        if r.error:
            widget = f"ERROR: {r.error}"
        rows.append([r.page, _fmt(r.first_render_s), f"≤ {TARGET_FIRST_S:g}", _met(r.first_render_s, TARGET_FIRST_S),
                     _fmt(r.rerender_median_s), f"≤ {TARGET_RERENDER_S:g}",
                     _met(r.rerender_median_s, TARGET_RERENDER_S), _fmt(r.first_change_s), widget])
    return _markdown(head, rows)


def format_browser_table(rows: list[dict], repeats: int) -> str:
    head = ["page", "server cold start (s)", f"first render, by URL (s, median of {repeats})", "met?",
            "of which: connected / script start / script end (s)",
            f"first render, via the sidebar (s, median of {repeats})", "met?",
            f"re-render (s, median of {repeats})", "met?", "first change (s)", "note"]
    out = []
    for b in rows:
        med = statistics.median(b["rerender_s"]) if b["rerender_s"] else None
        split = " / ".join(_fmt(b.get(k)) for k in ("connected_s", "script_start_s", "script_done_s"))
        side = b.get("sidebar_first_render_s")
        out.append([b["page"], _fmt(b.get("server_cold_start_s")), _fmt(b["first_render_s"]),
                    _met(b["first_render_s"], TARGET_FIRST_S), split,
                    "— (the start page)" if side is None and not b["error"] and b.get("first_render_s")
                    else _fmt(side),
                    _met(side, TARGET_FIRST_S),
                    _fmt(med), _met(med, TARGET_RERENDER_S), _fmt(b["rerender_s"][0] if b["rerender_s"] else None),
                    f"ERROR: {b['error']}" if b["error"] else ""])
    return _markdown(head, out)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# ----------------------------------------------------------------------------- main
def cold_start(timeout: float, checkpoint: str | None, fresh_disk_cache: bool) -> dict:
    """The cold process start: importing ``ood_core.app.widgets`` (torch, plotly, streamlit ...;
    None if this process had imported it already) and the first ``at.run()`` of app.py (the
    default page). Raises PageError if that run raised."""
    from streamlit.testing.v1 import AppTest

    out = {"import_s": None, "first_run_s": None}
    if "ood_core.app.widgets" not in sys.modules:
        t0 = time.perf_counter()
        importlib.import_module("ood_core.app.widgets")
        out["import_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="ood-latency-cache-") as tmp, \
            env_var("OOD_CACHE_DIR", tmp if fresh_disk_cache else None):
        at = AppTest.from_file(str(APP), default_timeout=timeout)
        if checkpoint:
            from ood_core.app import state

            at.session_state[state.CHECKPOINT_KEY] = checkpoint
        out["first_run_s"] = timed_run(at, at, "app.py", "the first run of app.py (default page)", timeout)
    return out


def run(pages: list[PageInfo], repeats: int = 3, timeout: float = 300.0, checkpoint: str | None = None,
        fresh_disk_cache: bool = True) -> list[PageResult]:
    """Measure ``pages`` with AppTest, one after the other; a page that fails has ``error`` set."""
    results = []
    for page in pages:
        print(f"  apptest: {page.name} ...", file=sys.stderr, flush=True)
        try:
            results.append(measure_page(page, repeats, timeout, checkpoint, fresh_disk_cache))
        except PageError as e:
            results.append(e.result)
    clear_streamlit_caches()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Method and targets: see the module docstring (python -m pydoc).")
    p.add_argument("--pages", default=None, help="comma-separated pages (url path or file stem); default: all "
                                                 "pages registered in app.py")
    p.add_argument("--repeats", type=int, default=3, help="widget changes per page (median reported; default 3)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per script run (default 300)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file name in the checkpoint folder "
                                                      "(default: the sidebar's default, the first *.pt by name)")
    p.add_argument("--keep-disk-cache", action="store_true",
                   help="use the existing $OOD_CACHE_DIR / ~/.cache/ood-lab instead of a fresh empty one per page")
    p.add_argument("--gpu", action="store_true", help="let the app use a visible GPU (default: CPU only)")
    p.add_argument("--browser", action="store_true", help="also measure in Chromium via Playwright (bonus)")
    p.add_argument("--browser-out", default=None, metavar="DIR",
                   help="keep the browser mode's screenshots and server logs in DIR (default: a temporary folder)")
    p.add_argument("--verbose", action="store_true", help="keep Streamlit's bare-mode warnings in the log")
    p.add_argument("--json", default=None, metavar="OUT", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    if not args.verbose:  # AppTest's bare-mode warnings ("No runtime found", ...); errors still show
        from streamlit import config as st_config
        from streamlit.logger import set_log_level

        st_config.set_option("logger.level", "error")
        set_log_level("error")
    with env_var("CUDA_VISIBLE_DEVICES", None if args.gpu else ""):
        fresh = not args.keep_disk_cache
        try:
            cold = cold_start(args.timeout, None, fresh)
        except PageError as e:
            cold = {"error": str(e)}
        from ood_core.checkpoint_store import checkpoint_dir, list_checkpoints

        pages = select_pages(registered_pages(), args.pages)
        ckpts = list_checkpoints(checkpoint_dir())
        if not ckpts:
            raise SystemExit(f"no checkpoint (*.pt) in {checkpoint_dir()}")
        checkpoint = None
        if args.checkpoint:
            match = [c for c in ckpts if c.name == args.checkpoint]
            if not match:
                raise SystemExit(f"no checkpoint {args.checkpoint!r}; have {', '.join(c.name for c in ckpts)}")
            checkpoint = str(match[0])
        ckpt_name = Path(checkpoint).name if checkpoint else ckpts[0].name
        info = machine_info()
        print(f"App latency, {info['date']} on {info['host']}: {info['cpus_usable']}/{info['cpu_count']} CPUs "
              f"({info['cpu_model']}), torch {info['torch']} ({info['torch_threads']} threads), "
              f"streamlit {info['streamlit']}, python {info['python']}, device the app picks: {info['device']}")
        print(f"Checkpoint: {ckpt_name} from {checkpoint_dir()}; pages: {', '.join(pg.name for pg in pages)}; "
              f"load average at start: {info['loadavg_start']}", flush=True)

        results = run(pages, args.repeats, args.timeout, checkpoint, fresh)
        browser_rows = None
        if args.browser:
            with tempfile.TemporaryDirectory(prefix="ood-latency-browser-") as work:
                out_dir = Path(args.browser_out or work)
                out_dir.mkdir(parents=True, exist_ok=True)
                browser_rows = run_browser(pages, {r.page: r for r in results}, args.repeats, args.timeout,
                                           out_dir, fresh, checkpoint)
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    print()
    print("AppTest (streamlit.testing.v1): time of the script run = app.py + the page as Streamlit executes it, "
          "what the user waits for minus websocket transfer and browser drawing.")
    print(f"First render: fresh AppTest, Streamlit caches cleared, "
          f"{'existing' if args.keep_disk_cache else 'fresh empty'} $OOD_CACHE_DIR (disk cache), "
          "modules already imported. Re-render: main widget changed, median of "
          f"{args.repeats} alternating changes; 'first change' is the first of them.")
    if cold.get("error"):
        print(f"Cold process start: the first run of app.py raised: {cold['error']}")
    else:
        imp = "" if cold["import_s"] is None else f"import of ood_core.app.widgets (torch, plotly, ...) {cold['import_s']:.2f} s + "
        print(f"Cold process start (not a page figure): {imp}first run of app.py (default page) "
              f"{cold['first_run_s']:.2f} s.")
    print()
    print(format_table(results, args.repeats))
    for r in results:
        if r.errors_shown:
            print(f"note: {r.page} shows st.error: {' | '.join(r.errors_shown)}")
        if r.first_change_s is not None and r.first_change_s > TARGET_RERENDER_S >= (r.rerender_median_s or 0):
            print(f"note: {r.page}: the first change took {r.first_change_s:.2f} s (computes what was not cached yet)")
    if browser_rows is not None:
        print()
        print("Browser (Chromium headless, Playwright; a fresh `streamlit run` per page, warmed up on the default "
              "page; before each first render the server's caches are cleared and its disk cache emptied): "
              "first render by URL = navigation in a new browser context (no HTTP cache) -> script run ended, "
              "title and every chart, table and image drawn, no spinner; via the sidebar = the default page drawn, "
              "then a click on the page's link -> the same; re-render = input event -> the script run it started "
              "ended and painted.")
        print(format_browser_table(browser_rows, args.repeats))
    print(f"\nLoad average start {info['loadavg_start']} -> end {info['loadavg_end']} "
          f"(figures from a busy machine are not final).")

    failed = [r for r in results if r.error] + [b for b in (browser_rows or []) if b["error"]]
    if cold.get("error"):
        failed.append({"error": f"cold start: {cold['error']}"})
    if args.json:
        payload = {"machine": info, "checkpoint": ckpt_name,
                   "settings": {"repeats": args.repeats, "fresh_disk_cache": not args.keep_disk_cache,
                                "gpu_allowed": args.gpu, "pages": [pg.name for pg in pages]},
                   "targets_s": {"first_render": TARGET_FIRST_S, "rerender": TARGET_RERENDER_S},
                   "cold_process_start": cold,
                   "apptest": [r.to_json() for r in results],
                   "browser": [{**b, "rerender_median_s": statistics.median(b["rerender_s"]) if b["rerender_s"] else None,
                                "first_change_s": b["rerender_s"][0] if b["rerender_s"] else None}
                               for b in browser_rows] if browser_rows is not None else None}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.json}")
    if failed:
        print(f"\nFAILED: {len(failed)} page run(s) raised or could not be measured:", file=sys.stderr)
        for f in failed:
            print(f"  {f.error if isinstance(f, PageResult) else f['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
