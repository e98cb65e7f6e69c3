"""Every page keeps its main controls in the URL: opened at ``/<page>?...`` (as a browser opens a
shared link), the page shows those values, writes them back into the query string, and the
sidebar's "Link to this view" carries them; a stale value falls back to the default with a
notice. (The browser test opens real links: tests/test_e2e_browser.py.)"""
from __future__ import annotations

import pytest

from apptest_helpers import on_page, opened_at

# page file, the link's query, {widget kind: {key: value the page must show}}
LINKS = [
    ("models", {"score": "energy", "ood": "textures"}, {"selectbox": {"score": "energy", "ood_set": "textures"}}),
    ("jacobian", {"method": "exact", "ood": "blobs,constant"},
     {"radio": {"jac_method": "exact"}, "multiselect": {"jac_sets": ["blobs", "constant"]}}),
    ("collapse", {"subspace": "top class-mean directions", "ood": "textures"},
     {"radio": {"subspace": "top class-mean directions"}, "multiselect": {"subspace_sets": ["textures"]}}),
    ("features", {"ood": "blobs"}, {"selectbox": {"feat_set": "blobs"}}),
    ("energy", {"ood": "constant"}, {"selectbox": {"energy_set": "constant"}}),
    ("roc", {"scores": "msp,energy", "ood": "unknown"},
     {"multiselect": {"roc_scores": ["msp", "energy"], "roc_sets": ["unknown"]}}),
    ("embeddings", {"map": "pca", "fit": "id", "score": "energy", "ood": "blobs"},
     {"radio": {"emb_fit_on": "id"}, "selectbox": {"emb_score": "energy"}, "multiselect": {"emb_sets": ["blobs"]}}),
    ("compare", {"models": "ce_digits.pt,l2norm_digits.pt", "ood": "textures", "score": "msp", "plot": "ROC curve"},
     {"selectbox": {"compare_set": "textures", "compare_score": "msp"}, "radio": {"compare_plot": "ROC curve"}}),
    ("claims", {"claim": "ib"}, {"selectbox": {"claim": "ib"}}),
    ("lessons", {"lesson": "movr", "step": "2"}, {"selectbox": {"lesson": "movr", "lesson_step_movr": 2}}),
]


@pytest.mark.parametrize("name,params,want", LINKS, ids=[link[0] for link in LINKS])
def test_a_link_reproduces_the_page_and_writes_its_controls(app, name, params, want, monkeypatch):
    if name == "compare":  # two checkpoints of one dataset: the shipped ones
        from conftest import CHECKPOINTS
        from ood_core import checkpoint_store

        monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(CHECKPOINTS))
    at = opened_at(app, name, params)
    if name == "compare":
        assert [p.rsplit("/", 1)[-1] for p in at.multiselect(key="compare_models").value] == \
            ["ce_digits.pt", "l2norm_digits.pt"]
    assert not at.exception, [e.value for e in at.exception]
    for kind, widgets in want.items():
        for key, value in widgets.items():
            assert getattr(at, kind)(key=key).value == value, (kind, key)
    for param, text in params.items():  # the page writes its controls back into the URL
        shown = at.query_params[param]
        assert (shown[0] if isinstance(shown, list) else shown) == text, param
    link = " ".join(c.value for c in at.sidebar.code)
    assert all(f"{p}=" in link for p in params), link
    assert not [i.value for i in at.sidebar.info if "not available here" in i.value]


@pytest.mark.parametrize("name,param", [("jacobian", "method"), ("embeddings", "score"), ("claims", "claim"),
                                         ("features", "ood")])
def test_a_stale_value_falls_back_with_a_notice(app, name, param):
    at = opened_at(app, name, {param: "nosuch"})
    assert not at.exception, [e.value for e in at.exception]
    assert f"`{param}=nosuch` is not available here" in " ".join(i.value for i in at.sidebar.info)


def test_a_link_opened_on_one_page_never_sets_another_pages_controls(app):
    at = opened_at(app, "jacobian", {"ood": "blobs"})
    at.switch_page("ood_core/app/app_pages/collapse.py").run()
    assert not at.exception
    assert at.multiselect(key="subspace_sets").value != ["blobs"]  # collapse keeps its own default


def test_pause_step_and_resume_from_the_models_page(own_dir):
    """The Models page's job panel: Pause stops after the epoch, Step one epoch adds exactly one,
    Resume trains to the end and saves."""
    import time

    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, TIMEOUT, models_tab
    from ood_core.app import state

    at = models_tab(on_page(AppTest.from_file(APP, default_timeout=TIMEOUT)))
    at.text_input(key="train_out_name").set_value("paused.pt")
    at.number_input(key="train_epochs").set_value(6)
    at.slider(key="train_slow_motion").set_value(0.3)
    at.run()
    at.button(key="train_start").click().run()
    job = at.session_state[state.TRAINING_JOB_KEY]

    def wait(cond, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond(job.snapshot()):
                return job.snapshot()
            time.sleep(0.05)
        raise AssertionError(job.snapshot())

    wait(lambda s: s.epoch >= 1)
    at.run()
    at.button(key="train_pause").click().run()
    paused = wait(lambda s: s.paused)
    at.run()
    assert not at.exception and [m.value for m in at.metric if m.label == "Status"] == ["paused"]
    at.button(key="train_step").click().run()
    wait(lambda s: s.paused and s.epoch == paused.epoch + 1)
    at.run()
    at.button(key="train_resume").click().run()
    done = wait(lambda s: s.finished)
    assert done.status == "done" and (own_dir / "paused.pt").is_file()
