"""Smoke test of ``benchmarks/app_latency.py`` so the latency script cannot silently rot.

It runs the script's real code path (``main()`` with ``--pages roc --repeats 1 --json``) on
the shipped checkpoints and checks the structure of what it reports, never the timings: those
depend on the machine and are the script's job, not the test suite's.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "app_latency.py"


@pytest.fixture(scope="module")
def lat():
    spec = importlib.util.spec_from_file_location("app_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["app_latency"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("app_latency", None)


def test_pages_are_parsed_from_app_py(lat):
    pages = lat.registered_pages()
    names = [p.name for p in pages]
    assert "models" in names and "roc" in names
    assert len(set(names)) == len(names)
    assert sum(p.default for p in pages) == 1
    for p in pages:
        assert (ROOT / p.file).is_file(), p.file
    # a page renamed or removed in app.py must not leave a stale entry in the widget table
    assert set(lat.WIDGETS) <= set(names), set(lat.WIDGETS) - set(names)
    assert [p.name for p in lat.select_pages(pages, "roc,models")] == ["roc", "models"]
    with pytest.raises(SystemExit):
        lat.select_pages(pages, "no-such-page")


def test_fallback_widget_choice_skips_what_cannot_be_set(lat):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string(
        "import streamlit as st\n"
        "st.selectbox('fmt', ['a', 'b'], format_func=lambda v: f'<{v}>', key='fmt')\n"
        "st.selectbox('one', ['only'], key='one')\n"
        "st.radio('pick', ['x', 'y'], key='pick')\n", default_timeout=30).run()
    choice = lat.choose_widget(at, "a page with no WIDGETS entry")
    assert (choice.kind, choice.key, choice.values) == ("radio", "pick", ["y", "x"])
    empty = AppTest.from_string("import streamlit as st\nst.title('stub')\n", default_timeout=30).run()
    assert lat.choose_widget(empty, "stub") is None


def test_script_measures_one_page(lat, tmp_path, monkeypatch, capsys, clear_streamlit_caches):
    monkeypatch.delenv("OOD_CHECKPOINT_DIR", raising=False)  # the shipped checkpoints
    out = tmp_path / "latency.json"
    rc = lat.main(["--pages", "roc", "--repeats", "1", "--json", str(out), "--verbose"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "| roc" in printed and "target ≤ 3 s" in printed and "Cold process start" in printed

    data = json.loads(out.read_text())
    assert data["checkpoint"] == "ce_digits.pt"
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["torch"]
    assert data["targets_s"] == {"first_render": 3.0, "rerender": 1.0}
    (row,) = data["apptest"]
    assert row["page"] == "roc" and row["error"] is None
    assert isinstance(row["first_render_s"], float)
    assert len(row["rerender_s"]) == 1 and row["widget_kind"] == "slider"
    assert row["charts"] == 0 and row["vega_charts"] >= 1  # the ROC chart is drawn with Vega-Lite
    assert data["browser"] is None


def test_a_page_that_raises_is_reported(lat, tmp_path, monkeypatch, clear_streamlit_caches):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "ok.py").write_text("import streamlit as st\nst.radio('r', ['a', 'b'], key='r')\n")
    (tmp_path / "pages" / "bad.py").write_text("raise ValueError('boom')\n")
    (tmp_path / "app.py").write_text(
        "import streamlit as st\n"
        "st.navigation([st.Page('pages/ok.py', default=True), st.Page('pages/bad.py', url_path='broken')]).run()\n")
    monkeypatch.setattr(lat, "APP", tmp_path / "app.py")
    pages = lat.registered_pages(tmp_path / "app.py")
    assert [(p.name, p.default) for p in pages] == [("ok", True), ("broken", False)]
    ok, bad = lat.run(pages, repeats=2, timeout=30)
    assert ok.error is None and len(ok.rerender_s) == 2 and ok.widget_key == "r"
    assert bad.first_render_s is None and "boom" in bad.error
    assert "ERROR" in lat.format_table([ok, bad], 2)


def test_browser_mode_measures_a_page_by_url_and_via_the_sidebar(lat, tmp_path, monkeypatch, clear_streamlit_caches):
    """``--browser`` on one fast page (Claims: its run can end within a frame, which the
    recorder must still see) with one repeat: each figure is there, not its size."""
    if importlib.util.find_spec("playwright") is None or not Path(lat.CHROMIUM).exists():
        pytest.skip(f"needs the playwright package and {lat.CHROMIUM} (apt-get install chromium)")
    monkeypatch.delenv("OOD_CHECKPOINT_DIR", raising=False)
    out = tmp_path / "latency.json"
    assert lat.main(["--pages", "claims", "--repeats", "1", "--browser", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["browser"]
    assert row["error"] is None
    assert len(row["first_renders_s"]) == len(row["sidebar_first_renders_s"]) == len(row["rerender_s"]) == 1
    assert 0 < row["connected_s"] <= row["script_start_s"] <= row["script_done_s"] < row["first_render_s"]
    assert row["sidebar_first_render_s"] > 0
