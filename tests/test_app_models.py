"""AppTest of the Models page: the loaded checkpoint's part, and training in the app.

Training tests write into their own temporary folder (``$OOD_CHECKPOINT_DIR`` pointed at a
copy of ``ce_toy2d.pt``): the session-wide ``ckpt_dir`` is shared with other tests and must
stay as it is. AppTest does not fire ``st.fragment(run_every=...)`` timers, so the tests wait
for the job and call ``at.run()`` themselves, as the timer would.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import (APP, IMPORT_TAB, LOADED_TAB, TIMEOUT, TRAIN_TAB, array, charts, histograms, models_tab,
                             on_page)
from ood_core.app import cached, state
from ood_core import checkpoint_store
from ood_core import jobs
from ood_core.checkpoint import read_checkpoint
from ood_core.train import TrainConfig, recommended_config

pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")

JOB_WAIT_S = 120


def _new_app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _job(at: AppTest):
    return at.session_state[state.TRAINING_JOB_KEY]


def _finish(at: AppTest) -> AppTest:
    """Wait for the session's job, then rerun (as the fragment's timer would) until the page
    has shown the end of the run."""
    job = _job(at)
    assert job.wait(JOB_WAIT_S), "the training job did not finish"
    for _ in range(3):
        _ok(at.run())
        if at.session_state["training_job_announced"] == job.job_id:
            return at
    raise AssertionError("the page never announced the finished job")


def _start(at: AppTest, name: str, epochs: int, slow_motion: float | None = 0.0) -> AppTest:
    at.text_input(key="train_out_name").set_value(name)
    at.number_input(key="train_epochs").set_value(epochs)
    if slow_motion is not None:
        at.slider(key="train_slow_motion").set_value(slow_motion)
    _ok(at.run())
    assert not at.button(key="train_start").disabled
    return _ok(at.button(key="train_start").click().run())


def _chart(at: AppTest, first_trace_name: str) -> dict:
    found = [c for c in charts(at) if c["data"] and c["data"][0].get("name") == first_trace_name]
    assert len(found) == 1, [c["data"][0].get("name") for c in charts(at) if c["data"]]
    return found[0]


def _grid(values) -> np.ndarray:
    """A plotly 2-D array: nested lists, or a typed array {"dtype", "bdata", "shape"}."""
    if isinstance(values, dict):
        flat = array(values)
        shape = values.get("shape")
        return flat.reshape([int(s) for s in str(shape).split(",")]) if shape else flat
    return np.asarray(values, dtype=float)


# --------------------------------------------------------------------------- default view
def test_default_run_shows_the_loaded_checkpoint_and_the_training_form(app, ckpt_dir):
    at = _ok(on_page(app))
    assert not at.error
    assert [t.label for t in at.tabs][:3] == [LOADED_TAB, TRAIN_TAB, IMPORT_TAB]
    # loaded checkpoint: ID accuracy, metric table, histogram; the raw metadata when opened
    assert at.metric[0].label == "ID accuracy" and at.metric[0].value.endswith("%")
    assert list(at.dataframe[0].value.columns[:3]) == ["ood_set", "group", "score"]
    assert histograms(at)
    assert any(e.label == "What am I looking at?" for e in at.expander)
    assert not at.json and not [w for w in at.selectbox if w.key == "train_dataset"]  # closed: not run
    at.session_state["models_raw"] = True
    _ok(at.run())
    assert at.json[0].value and "ce" in at.json[0].value
    # training form, filled from the recipe; the loaded tab is not run meanwhile
    at = _ok(models_tab(at))
    assert not at.metric and not at.dataframe
    cfg = recommended_config("ce")
    assert at.selectbox(key="train_dataset").value == "toy2d"
    assert at.selectbox(key="train_method").value == "ce"
    assert at.number_input(key="train_epochs").value == cfg.epochs
    assert at.number_input(key="train_lr").value == pytest.approx(cfg.lr)
    assert at.number_input(key="train_seed").value == cfg.seed
    assert at.text_input(key="train_out_name").value == "ce_toy2d.pt"
    assert any("Training device: **" in c.value for c in at.caption)
    assert state.TRAINING_JOB_KEY not in at.session_state


def test_existing_file_is_protected(app, ckpt_dir):
    at = _ok(models_tab(on_page(app)))
    # the default name ce_toy2d.pt exists in the folder: a clear warning, Start disabled until Overwrite is ticked
    warning = [w.value for w in at.warning if "already exists" in w.value]
    assert len(warning) == 1
    assert "ce_toy2d.pt" in warning[0] and "Overwrite" in warning[0] and "ce_toy2d-2.pt" in warning[0]
    assert at.button(key="train_start").disabled
    at.checkbox(key="train_overwrite").check()
    _ok(at.run())
    assert not at.button(key="train_start").disabled
    # a free name needs no overwrite
    at.checkbox(key="train_overwrite").uncheck()
    at.text_input(key="train_out_name").set_value("fresh.pt")
    _ok(at.run())
    assert not [w for w in at.warning if "already exists" in w.value]
    assert not at.button(key="train_start").disabled
    assert not (ckpt_dir / "fresh.pt").exists()


@pytest.mark.parametrize("name, message", [("model.pth", "must end in .pt"), ("sub/model.pt", "plain file name"),
                                           (".hidden.pt", "hidden"), ("../escape.pt", "plain file name"),
                                           ("/tmp/abs.pt", "plain file name"), ("..", "plain file name"),
                                           ("..\\up.pt", "plain file name"), ("a\nb.pt", "control characters"),
                                           ("a\tb.pt", "control characters"), ("x" * 250 + ".pt", "too long")])
def test_bad_file_names_are_explained_and_block_start(app, name, message):
    at = _ok(models_tab(on_page(app)))
    at.text_input(key="train_out_name").set_value(name)
    _ok(at.run())
    assert any(message in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.button(key="train_start").disabled


def test_methods_follow_the_dataset_and_options_follow_the_method(app):
    at = _ok(models_tab(on_page(app)))
    toy = at.selectbox(key="train_method")
    assert "ce" in [o.split(":")[0] for o in toy.options] and not any(o.startswith("oe:") for o in toy.options)
    at.selectbox(key="train_dataset").set_value("digit-canvases")
    _ok(at.run())
    multilabel = [o.split(":")[0] for o in at.selectbox(key="train_method").options]
    assert set(multilabel) == set(jobs.methods_for(cached.benchmark_by_name_cached("digit-canvases")))
    method = at.selectbox(key="train_method").value
    assert at.text_input(key="train_out_name").value == f"{method}_digit-canvases.pt"
    assert at.number_input(key="train_epochs").value == recommended_config(method).epochs
    assert not at.slider  # no landscape options without 2-D inputs
    at.selectbox(key="train_dataset").set_value("digits")
    _ok(at.run())
    assert "oe" in [o.split(":")[0] for o in at.selectbox(key="train_method").options]


# --------------------------------------------------------------------------- training
def test_training_toy2d_in_the_app_saves_the_file_and_draws_live_charts(own_dir):
    at = _ok(models_tab(on_page(_new_app())))
    _start(at, "mine.pt", epochs=2)
    job = _job(at)
    assert job.method == "ce" and job.config.epochs == 2 and job.out_path == own_dir / "mine.pt"
    at = _finish(at)
    snap = job.snapshot()
    assert snap.status == "done" and (own_dir / "mine.pt").exists()
    meta = read_checkpoint(own_dir / "mine.pt")["meta"]
    assert meta["method"] == "ce" and meta["train_config"]["epochs"] == 2 and len(meta["history"]) == 2

    # the finished run is announced, and the sidebar lists the new file
    assert any("mine.pt" in s.value and "sidebar" in s.value for s in at.success)
    assert str(own_dir / "mine.pt") in at.selectbox(key="checkpoint").options or \
        "mine.pt" in at.selectbox(key="checkpoint").options
    assert at.progress[0].value == 100
    assert any(m.label == "Training device" and m.value.startswith(snap.device) for m in at.metric)

    # loss curve: one point per step, the job's numbers
    loss = _chart(at, "loss (per step)")
    assert list(array(loss["data"][0]["x"]).astype(int)) == snap.loss_steps == list(range(1, snap.total_steps + 1))
    assert np.allclose(array(loss["data"][0]["y"]), snap.losses)
    assert np.allclose(array(loss["data"][1]["y"]), [h["train_loss"] for h in meta["history"]])
    val = _chart(at, "id_accuracy")
    assert np.allclose(array(val["data"][0]["y"]), [h["val_id_accuracy"] for h in meta["history"]])

    # the landscape after the last epoch: regions and score heatmaps over the job's grid
    land = _chart(at, "predicted class")
    kinds = [t["type"] for t in land["data"]]
    assert kinds[:2] == ["heatmap", "heatmap"] and "contour" in kinds and "scatter" in kinds
    last = snap.landscapes[-1]
    assert [s.epoch for s in snap.landscapes] == [1, 2]
    assert np.array_equal(_grid(land["data"][0]["z"]), last.predicted)
    assert np.allclose(_grid(land["data"][1]["z"]), last.score)
    assert "epoch 2" in land["layout"]["title"]["text"]
    # replay: the slider shows the landscape of an earlier epoch
    slider = at.slider(key=f"train_landscape_epoch_{snap.job_id}")
    slider.set_value(1)
    _ok(at.run())
    land = _chart(at, "predicted class")
    assert "epoch 1" in land["layout"]["title"]["text"]
    assert np.allclose(_grid(land["data"][1]["z"]), snap.landscapes[0].score)

    # one click selects the new model in the sidebar; the loaded tab then shows it
    at.button(key="train_show").click()
    _ok(at.run())
    assert at.session_state[state.CHECKPOINT_KEY] == str(own_dir / "mine.pt")
    assert any(str(own_dir / "mine.pt") in c.value for c in at.caption)


def test_first_model_can_be_trained_in_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint_store.CHECKPOINT_ENV, str(tmp_path))
    at = _ok(on_page(_new_app()))
    assert any(checkpoint_store.TRAIN_COMMAND in i.value for i in at.info)  # the app says how; the tab can do it
    at = _finish(_start(at, "ce_toy2d.pt", epochs=1))
    assert (tmp_path / "ce_toy2d.pt").exists()
    assert at.selectbox(key="checkpoint").value == str(tmp_path / "ce_toy2d.pt")
    at = _ok(at.button(key="train_show").click().run())
    assert at.metric[0].label == "ID accuracy"  # "Show it" opens the loaded tab on the new model


def test_cancel_button_stops_the_job_and_saves_nothing(own_dir):
    at = _ok(models_tab(on_page(_new_app())))
    at.selectbox(key="train_dataset").set_value("digits")
    _ok(at.run())
    _start(at, "long.pt", epochs=500, slow_motion=None)
    job = _job(at)
    end = time.monotonic() + JOB_WAIT_S
    while job.snapshot().global_step < 2 and time.monotonic() < end:
        time.sleep(0.01)
    _ok(at.run())  # a poll while running: progress and the Cancel button
    assert job.status == "running"
    assert at.button(key="train_start").disabled  # one run per session
    at.button(key="train_cancel").click()
    _ok(at.run())
    assert job.cancel_requested
    at = _finish(at)
    assert job.status == "cancelled"
    assert any("cancelled" in w.value and "nothing was saved" in w.value for w in at.warning)
    assert sorted(p.name for p in own_dir.iterdir()) == ["ce_toy2d.pt"]
    assert not at.button(key="train_start").disabled  # a new run may start


def test_overwrite_replaces_the_file_only_when_ticked(own_dir):
    before = (own_dir / "ce_toy2d.pt").read_bytes()
    at = _ok(models_tab(on_page(_new_app())))
    at.number_input(key="train_epochs").set_value(1)
    at.slider(key="train_slow_motion").set_value(0.0)
    at.checkbox(key="train_overwrite").check()
    _ok(at.run())
    at = _finish(_ok(at.button(key="train_start").click().run()))
    assert _job(at).status == "done"
    after = (own_dir / "ce_toy2d.pt").read_bytes()
    assert after != before and read_checkpoint(own_dir / "ce_toy2d.pt")["meta"]["train_config"]["epochs"] == 1
    assert sorted(p.name for p in own_dir.iterdir()) == ["ce_toy2d.pt"]


def test_a_failed_run_shows_its_error(own_dir):
    at = _ok(models_tab(on_page(_new_app())))
    job = jobs.start_training("ce", "toy2d", TrainConfig(epochs=2, lr=10.0, optimizer="sgd"), own_dir / "bad.pt")
    at.session_state[state.TRAINING_JOB_KEY] = job
    at = _finish(at)
    assert job.status == "failed"
    assert any("loss became nan" in e.value and "Lower the learning rate" in e.value for e in at.error)
    assert not (own_dir / "bad.pt").exists()


def test_training_goes_on_while_another_page_is_open_and_the_form_is_kept(own_dir):
    at = _ok(models_tab(on_page(_new_app())))
    at.number_input(key="train_seed").set_value(7)
    _start(at, "bg.pt", epochs=3, slow_motion=0.4)
    job = _job(at)
    at.switch_page("ood_core/app/app_pages/features.py")
    _ok(at.run())  # another page renders while the job trains
    assert not job.finished or job.status == "done"
    at.switch_page("ood_core/app/app_pages/models.py")
    _ok(at.run())
    # the options are as they were and the run is still this session's
    assert at.text_input(key="train_out_name").value == "bg.pt"
    assert at.number_input(key="train_epochs").value == 3
    assert at.number_input(key="train_seed").value == 7
    assert _job(at) is job
    at = _finish(at)
    assert job.status == "done" and (own_dir / "bg.pt").exists()
    assert read_checkpoint(own_dir / "bg.pt")["meta"]["train_config"]["seed"] == 7
