"""End to end in a real browser: `streamlit run app.py` on localhost, driven with Playwright in
Debian's Chromium (no browser download). Every page is opened, one widget is changed, and the
page must show its charts and no error; screenshots go to ``$E2E_SCREENSHOT_DIR`` (default: the
test's temporary folder).

Needs the `playwright` package and `/usr/bin/chromium` (``apt-get install chromium``); `.ci/run`
installs both and sets ``E2E_REQUIRED=1``, so in CI a missing browser is a failure, not a skip.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
REQUIRED = os.environ.get("E2E_REQUIRED") == "1"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if sync_playwright is None or not shutil.which(CHROMIUM):
    reason = f"needs the playwright package and {CHROMIUM} (apt-get install chromium)"
    if REQUIRED:
        raise RuntimeError(f"E2E_REQUIRED=1 but the browser test {reason}")
    pytest.skip(reason, allow_module_level=True)

# (url path, radio option to click, text that must appear once the page has reacted)
PAGES = [
    ("", None, "Five methods"),  # the default page (Home) lives at the root; its url_path is not routed
    ("models", None, None),
    ("lessons?lesson=baseline&step=2", "mahalanobis", "mahalanobis score (high = ID)"),
    ("jacobian", "exact", "Jacobian norm of z/||z|| (exact)"),
    ("collapse", "top class-mean directions", "Energy outside the top class-mean directions"),
    ("features", None, None),
    ("energy", None, None),
    ("roc", None, None),
    ("embeddings", "ID only", "Fitted on ID only"),
    ("compare", "ROC curve", "AUROC"),
    ("claims", None, "Verdict"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    # a copy of the shipped checkpoints: the training test saves a new file beside them
    folder = tmp_path_factory.mktemp("checkpoints")
    for f in (ROOT / "checkpoints").glob("*.pt"):
        shutil.copy(f, folder / f.name)
    env = {**os.environ, "OOD_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "OOD_CHECKPOINT_DIR": str(folder)}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
                             str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start on {base} within 90 s; see {log.name}")
    yield base, folder
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def fill_training_form(page, epochs: int, out_name: str) -> None:
    """Open the Models page's "Train a new model" tab and set the epochs and the output name."""
    page.get_by_role("tab", name="Train a new model").click()
    field = page.get_by_label("Epochs", exact=True).and_(page.locator("input"))
    field.fill(str(epochs))
    field.press("Enter")
    name = page.get_by_label("Output file name", exact=True).and_(page.locator("input"))
    name.fill(out_name)
    name.press("Enter")


# a drawn chart: plotly's SVG, or the marks Vega draws
CHARTS_DRAWN = '.js-plotly-plot .main-svg, [data-testid="stVegaLiteChart"] .marks'


def _settle(page, expect: str | None = None, timeout_s: float = 90) -> None:
    """Wait until a chart (plotly or Vega-Lite) is drawn, ``expect`` (if given) is on the page and
    no spinner shows."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        spinning = page.locator('[data-testid="stSpinner"]').count()
        drawn = page.locator(CHARTS_DRAWN).count()
        seen = expect is None or page.get_by_text(expect, exact=False).count() > 0
        if not spinning and drawn and seen:
            time.sleep(0.5)  # let the charts finish drawing before a screenshot
            return
        time.sleep(0.3)
    raise AssertionError(f"after {timeout_s} s: spinner {page.locator('[data-testid=stSpinner]').count()}, "
                         f"charts {page.locator(CHARTS_DRAWN).count()}, expected text {expect!r} "
                         f"{'seen' if expect and page.get_by_text(expect).count() else 'not seen'}")


def _assert_no_error(page, where: str) -> None:
    errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{where}: " + " | ".join(errors.all_inner_texts())
    assert page.get_by_text("Page not found").count() == 0, f"{where}: Streamlit says the page does not exist"


@pytest.mark.parametrize("url_path, click, expect", PAGES)
def test_every_page_renders_and_reacts_in_chromium(server, browser, url_path, click, expect, tmp_path):
    server, _ = server
    shots = Path(os.environ.get("E2E_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/{url_path}", wait_until="domcontentloaded")
    _settle(page, None if click else expect)
    _assert_no_error(page, url_path)
    assert page.get_by_text("OOD geometry lab").first.is_visible()  # the sidebar of app.py is there
    name = url_path.split("?")[0] or "home"
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    if click:
        page.locator('[data-testid="stRadio"]').get_by_text(click, exact=True).first.click()  # the page's own radio first
        _settle(page, expect)
        _assert_no_error(page, f"{url_path} after clicking {click!r}")
        page.screenshot(path=str(shots / f"{name}-changed.png"), full_page=True)
    page.close()


def test_training_in_the_browser_redraws_the_landscape_and_saves(server, browser, tmp_path):
    """Train toy2d for 3 epochs from the Models page: the background job is polled by a
    fragment, the landscape chart appears, and the checkpoint lands in the listed folder."""
    server, folder = server
    shots = Path(os.environ.get("E2E_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server + "/models", wait_until="domcontentloaded")
    _settle(page)
    fill_training_form(page, epochs=3, out_name="e2e_toy2d.pt")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Training finished").wait_for(timeout=120_000)
    _settle(page, "Training finished")
    _assert_no_error(page, "training")
    assert (folder / "e2e_toy2d.pt").is_file()
    page.locator(".js-plotly-plot .main-svg").nth(2).wait_for(timeout=60_000)  # loss, validation, landscape (plotly)
    assert page.locator(".js-plotly-plot").count() >= 3
    page.screenshot(path=str(shots / "models-training.png"), full_page=True)
    page.locator(".js-plotly-plot").last.scroll_into_view_if_needed()  # the landscape, below the fold
    time.sleep(0.5)
    page.screenshot(path=str(shots / "models-training-landscape.png"))
    page.close()


@pytest.mark.parametrize("link, seen", [
    ("lessons?lesson=l2norm&step=3", ["3. Move the threshold", "Haas, Yolland, Rabus",
                                      "feature_norm (high = ID)"]),
    ("models?checkpoint=ce_toy2d.pt&score=energy&ood=uniform-box", ["OOD: uniform-box", "energy"]),
    ("roc?checkpoint=ce_toy2d.pt&ood=ring", ["msp vs ring"]),
])
def test_a_shared_link_opens_the_view_it_names(server, browser, link, seen, tmp_path):
    """A link copied from the sidebar's "Link to this view" opens the same page with the same
    checkpoint and controls in a new browser session."""
    server, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server}/{link}", wait_until="domcontentloaded")
    _settle(page, seen[0])
    _assert_no_error(page, link)
    for text in seen:
        assert page.get_by_text(text, exact=False).count() > 0, f"{link}: {text!r} not on the page"
    if "checkpoint=" in link:  # the sidebar's checkpoint box shows the link's checkpoint
        wanted = link.split("checkpoint=")[1].split("&")[0]
        box = page.locator(".st-key-checkpoint")
        shown = box.inner_text() + " ".join(box.locator("input").evaluate_all("els => els.map(e => e.value)"))
        assert wanted in shown, f"{link}: the checkpoint box shows {shown!r}"
    assert page.get_by_text("is not available here").count() == 0, f"{link}: a value of the link was refused"
    page.close()


def test_a_click_on_the_embedding_map_shows_that_sample(server, browser, tmp_path):
    """The Embeddings map is a Vega-Lite chart with a point selection: hovering a point shows its
    tooltip (set and index), and clicking it reruns the page with that sample under the map."""
    server, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server}/embeddings", wait_until="domcontentloaded")
    _settle(page, "Selected sample")
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    box = chart.bounding_box()
    tooltip = page.locator("#vg-tooltip-element.visible")
    found = None
    # walk a grid over the plot until the pointer rests on a point (its tooltip shows)
    for fy in np.linspace(0.15, 0.75, 13):
        for fx in np.linspace(0.1, 0.8, 15):
            x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
            page.mouse.move(x, y)
            time.sleep(0.05)
            if tooltip.count():
                text = tooltip.inner_text()
                match = re.search(r"point\s+(ID: \S+|OOD: \S+)\s+#\s+(\d+)", text)
                if not match:
                    continue
                group, index = match.group(1), int(match.group(2))
                where = "ID test" if group.startswith("ID: ") else f"OOD set {group[len('OOD: '):]}"
                if not page.get_by_text(f"{where} #{index}", exact=False).count():  # not the sample shown already
                    found = (x, y, where, index)
                    break
        if found:
            break
    assert found, "no point of the map showed a tooltip"
    x, y, where, index = found
    page.mouse.click(x, y)
    page.get_by_text(f"{where} #{index}", exact=False).first.wait_for(timeout=60_000)
    _assert_no_error(page, "embeddings after a click on the map")
    page.close()
