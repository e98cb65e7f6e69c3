"""The Claims page: each claim's verdict, effect and interval from the stored results file, and
the mechanism figures of the shipped checkpoints; it reads stored numbers and trains nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, TIMEOUT, array, traces_of_type
from ood_core import claims

pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


def _run_claims_page(monkeypatch):
    import importlib

    def no_training(*a, **k):
        raise AssertionError("the Claims page must not train")

    monkeypatch.setattr(importlib.import_module("ood_core.train"), "_train", no_training)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("app_pages/claims.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_claims_page_shows_the_stored_verdicts_and_mechanisms(monkeypatch):
    doc = json.loads(claims.COMPARE_RESULTS.read_text())  # the repository ships its latest run
    assert doc["claims"], "results/compare.json holds no verdicts: run benchmarks/compare.py"
    at = _run_claims_page(monkeypatch)
    assert [h.value for h in at.header] == [f"{c['key']} — {c['paper']}" for c in doc["claims"]]
    from ood_core import app_support as sup

    text = " ".join(m.value for m in at.markdown)
    for c in doc["claims"]:
        assert sup.verdict_markdown(c["verdict"]) in text
    tables = [df.value for df in at.dataframe]  # one per claim, in order
    assert len(tables) == len(doc["claims"])
    for c, shown in zip(doc["claims"], tables):
        assert list(shown["effect [95 % CI]"]) == [claims.format_effect(p) for p in c["parts"]]
    hists = traces_of_type(at, "histogram")
    assert len(hists) == 2 * len(doc["claims"])
    stored = claims.load_mechanisms(claims.RESULTS_DIR.parent / "checkpoints") or claims.compute_mechanisms(
        claims.RESULTS_DIR.parent / "checkpoints")
    first = doc["claims"][0]
    values = stored["figures"][first["figure"]]["baseline"]["values"]
    drawn = array(hists[0]["data"][0]["x"])
    assert np.allclose(np.sort(drawn), np.sort(np.asarray(next(iter(values.values())))))


def test_claims_page_without_results_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(claims, "COMPARE_RESULTS", tmp_path / "missing.json")
    at = _run_claims_page(monkeypatch)
    assert any("benchmarks/compare.py" in e.value for e in at.error)


def test_claims_page_refuses_a_foreign_results_file(monkeypatch, tmp_path):
    bad = tmp_path / "compare.json"
    bad.write_text(json.dumps({"runs": []}))
    monkeypatch.setattr(claims, "COMPARE_RESULTS", bad)
    at = _run_claims_page(monkeypatch)
    assert any("not a results file" in e.value for e in at.error)
