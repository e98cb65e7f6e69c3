"""The Claims page: each claim's verdict, effect and interval from the stored results file, and
the mechanism figures of the shipped checkpoints; it reads stored numbers and trains nothing."""
from __future__ import annotations

import importlib
import json

import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, TIMEOUT, check_histogram, histograms, shown_tables
from ood_core.app import widgets
from ood_core import claims
from ood_core.paths import SHIPPED_CHECKPOINTS

pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


def _claims_page(monkeypatch) -> AppTest:
    def no_training(*a, **k):
        raise AssertionError("the Claims page must not train")

    monkeypatch.setattr(importlib.import_module("ood_core.train"), "_train", no_training)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("ood_core/app/app_pages/claims.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_claims_page_shows_every_stored_verdict_and_its_mechanism(monkeypatch):
    doc = json.loads(claims.COMPARE_RESULTS.read_text())  # the repository ships its latest run
    assert doc["claims"] and not doc["meta"]["quick"], "results/compare.json holds no verdicts"
    stored = claims.load_mechanisms(SHIPPED_CHECKPOINTS)
    assert stored is not None, "results/mechanisms.json does not match the shipped checkpoints: make checkpoints"
    at = _claims_page(monkeypatch)
    overview = shown_tables(at)[0]
    assert list(overview["claim"]) == [c["key"] for c in doc["claims"]]
    assert list(overview["verdict"]) == [c["verdict"] for c in doc["claims"]]
    for c in doc["claims"]:
        at.selectbox(key="claim").set_value(c["key"]).run()
        assert not at.exception
        assert [h.value for h in at.header] == [f"{c['key']} — {c['paper']}"]
        assert widgets.verdict_markdown(c["verdict"]) in " ".join(m.value for m in at.markdown)
        shown = shown_tables(at)[1]
        assert list(shown["effect [95 % CI]"]) == [claims.format_effect(p) for p in c["parts"]]
        hists = histograms(at)
        assert len(hists) == 2
        for role, hist in zip(("baseline", "method"), hists):
            check_histogram(hist, stored["figures"][c["figure"]][role]["values"])


def test_claims_page_without_results_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(claims, "COMPARE_RESULTS", tmp_path / "missing.json")
    at = _claims_page(monkeypatch)
    assert any("benchmarks/compare.py" in e.value for e in at.error)


def test_claims_page_refuses_a_foreign_results_file(monkeypatch, tmp_path):
    bad = tmp_path / "compare.json"
    bad.write_text(json.dumps({"runs": []}))
    monkeypatch.setattr(claims, "COMPARE_RESULTS", bad)
    at = _claims_page(monkeypatch)
    assert any("not a results file" in e.value for e in at.error)


def test_stale_mechanisms_are_not_served(tmp_path):
    """A mechanisms file made on other checkpoints (another digest) is ignored, not drawn."""
    doc = {"checkpoints": {"ce_digits.pt": "0" * 32}, "figures": {}}
    path = tmp_path / "mechanisms.json"
    path.write_text(json.dumps(doc))
    assert claims.load_mechanisms(SHIPPED_CHECKPOINTS, path) is None
