"""Home (the default page) and the Lessons page, with AppTest on the shipped checkpoints.

Each lesson step's revealed answer is checked against an independent computation: AUROC from
scikit-learn, FPR at 95 % TPR by a direct count, on the evaluation computed without the app
(``evaluation_of``) or on the stored mechanism values read straight from the JSON file."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from apptest_helpers import check_histogram, evaluation_of, histograms, on_page, opened_at
from ood_core.claims import MECHANISMS, MECHANISMS_FILE
from ood_core.lessons import FPR_BANDS, LESSONS, SAME_AUROC, SEPARATION
from ood_core.paths import SHIPPED_CHECKPOINTS

STEPS = [(lesson.key, i) for lesson in LESSONS for i, step in enumerate(lesson.steps, 1) if step.kind != "train"]


@pytest.fixture
def lab(app, tmp_path, monkeypatch):
    monkeypatch.setenv("OOD_CACHE_DIR", str(tmp_path / "cache"))
    return app


def test_home_is_the_default_page_with_a_card_per_method(lab):
    at = lab.run()
    assert not at.exception
    assert at.title[0].value == "OOD geometry lab"
    stored = json.loads(MECHANISMS_FILE.read_text())["figures"]
    hist = histograms(at)
    assert len(hist) == len(MECHANISMS) == 5
    for fig, key in zip(hist, MECHANISMS):  # each card draws its method's stored values
        check_histogram(fig, stored[key]["method"]["values"])
    assert not at.get("plotly_chart")  # Home's charts are Vega-Lite: a cold start page never loads plotly.js
    links = at.get("page_link")
    lessons = sorted(link.proto.query_string for link in links if "lesson=" in link.proto.query_string)
    assert lessons == sorted(f"lesson={m.method}" for m in MECHANISMS.values())
    pages = {link.proto.page.strip("/") for link in links}  # url paths
    assert {"models", "lessons", "claims", "jacobian", "features", "energy", "collapse", "embeddings"} <= pages
    text = " ".join(m.value for m in at.markdown)
    assert "Verdict" in text  # the claims' verdicts from the stored results


def _open_step(at, lesson_key: str, number: int):
    at.selectbox(key="lesson").set_value(lesson_key).run()
    at.selectbox(key=f"lesson_step_{lesson_key}").set_value(number).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _expected(lesson, step) -> str:
    """The choice the data supports, computed without ood_core's metrics or judge."""
    if step.kind == "mechanism":
        stored = json.loads(MECHANISMS_FILE.read_text())["figures"][lesson.mechanism]
        sign = 1.0 if lesson.high_is_id else -1.0

        def sep(side):
            values = stored[side]["values"]
            ident = np.asarray(values["ID (test)"])
            ood = np.concatenate([np.asarray(v) for k, v in values.items() if k != "ID (test)"])
            y = np.r_[np.ones(len(ident)), np.zeros(len(ood))]
            return roc_auc_score(y, sign * np.r_[ident, ood])

        diff = sep("method") - sep("baseline")
        return SEPARATION[0 if diff > SAME_AUROC else 1 if abs(diff) <= SAME_AUROC else 2]
    scores = evaluation_of(SHIPPED_CHECKPOINTS / lesson.method_file)["scores"]
    if step.kind == "scores":
        names = step.scores or sorted({k.split("/", 1)[1] for k in scores})
        aucs = {n: roc_auc_score(np.r_[np.ones(len(scores[f"id/{n}"])), np.zeros(len(scores[f"{step.ood_set}/{n}"]))],
                                 np.r_[scores[f"id/{n}"], scores[f"{step.ood_set}/{n}"]])
                for n in names if f"{step.ood_set}/{n}" in scores}
        return max(aucs, key=aucs.get)
    ident, ood = scores[f"id/{step.score}"], scores[f"{step.ood_set}/{step.score}"]
    threshold = np.sort(ident)[int(np.floor(0.05 * len(ident)))]  # keeps at least 95 % of ID (score >= t)
    while np.mean(ident >= threshold) < 0.95:
        threshold = np.nextafter(threshold, -np.inf)
    fpr = np.mean(ood >= threshold)
    return FPR_BANDS[0 if fpr < 0.10 else 1 if fpr <= 0.50 else 2]


@pytest.mark.parametrize("lesson_key,number", STEPS, ids=[f"{k}-{n}" for k, n in STEPS])
def test_each_step_reveals_what_the_data_says(lab, lesson_key, number):
    lesson = next(x for x in LESSONS if x.key == lesson_key)
    step = lesson.steps[number - 1]
    at = _open_step(on_page(lab, "lessons"), lesson_key, number)
    assert not at.success and not at.warning  # no answer before a prediction
    radio = at.radio(key=f"lesson_predict_{lesson_key}_{number}")
    expected = _expected(lesson, step)
    assert expected in radio.options
    wrong = next(o for o in radio.options if o != expected)
    radio.set_value(wrong).run()
    assert not at.exception
    assert at.warning and f"The data here says: **{expected}**" in at.warning[0].value
    assert step.explanation in " ".join(m.value for m in at.markdown)
    at.radio(key=f"lesson_predict_{lesson_key}_{number}").set_value(expected).run()
    assert at.success and "as you predicted" in at.success[0].value


def test_the_threshold_step_counts_what_the_slider_lets_through(lab):
    at = _open_step(on_page(lab, "lessons"), "baseline", 3)
    scores = evaluation_of(SHIPPED_CHECKPOINTS / "ce_toy2d.pt")["scores"]
    ident, ood = scores["id/msp"], scores["uniform-box/msp"]
    slider = at.slider(key="lesson_threshold_baseline")
    t = float(np.median(ident))
    slider.set_value(t).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["OOD accepted"] == str(int(np.sum(ood >= t)))
    assert metrics["ID kept"] == str(int(np.sum(ident >= t)))
    (hist,) = histograms(at)  # the dashed rule sits at the slider's threshold
    check_histogram(hist, {"ID (test)": ident, "OOD: uniform-box": ood})
    assert hist.spec["layer"][1]["encoding"]["x"]["datum"] == pytest.approx(t)


def test_a_shared_lesson_link_opens_that_step_and_a_stale_one_falls_back(lab):
    at = opened_at(lab, "lessons", {"lesson": "l2norm", "step": "3"})
    assert not at.exception
    assert at.selectbox(key="lesson").value == "l2norm" and at.selectbox(key="lesson_step_l2norm").value == 3
    assert at.header[0].value.startswith("3. Move the threshold")
    assert at.query_params["lesson"] in ("l2norm", ["l2norm"])

    from streamlit.testing.v1 import AppTest

    from apptest_helpers import APP, TIMEOUT

    stale = opened_at(AppTest.from_file(APP, default_timeout=TIMEOUT), "lessons", {"lesson": "nosuch", "step": "9"})
    assert not stale.exception
    assert stale.selectbox(key="lesson").value == LESSONS[0].key
    notes = " ".join(i.value for i in stale.sidebar.info)
    assert "`lesson=nosuch` is not available here" in notes


def _wait(at, job_key: str, done, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = at.session_state[job_key]
        if done(job.snapshot()):
            return job.snapshot()
        time.sleep(0.05)
    raise AssertionError(f"timed out; last snapshot {at.session_state[job_key].snapshot()}")


def test_the_baseline_lesson_trains_live_with_pause_step_and_resume(lab, tmp_path):
    at = _open_step(on_page(lab, "lessons"), "baseline", 1)
    at.slider(key="lesson_slow_motion").set_value(0.2).run()
    at.radio(key="lesson_predict_baseline_1").set_value(at.radio(key="lesson_predict_baseline_1").options[0]).run()
    assert "Train the model" in " ".join(c.value for c in at.caption)  # no answer before a run
    at.button(key="lesson_train").click().run()
    assert not at.exception
    _wait(at, "lesson_job", lambda s: s.epoch >= 1)
    at.button(key="lesson_pause").click().run()
    paused = _wait(at, "lesson_job", lambda s: s.paused)
    at.run()
    assert [b for b in at.button if b.key == "lesson_resume"] and at.slider  # paused: the epoch slider
    at.button(key="lesson_step").click().run()
    stepped = _wait(at, "lesson_job", lambda s: s.paused and s.epoch == paused.epoch + 1)
    assert stepped.epoch == paused.epoch + 1
    at.run()
    at.button(key="lesson_resume").click().run()
    done = _wait(at, "lesson_job", lambda s: s.finished)
    assert done.status == "done" and str(done.saved_path).startswith(str(tmp_path / "cache" / "lessons"))
    at.run()
    assert not at.exception
    scores = evaluation_of(done.saved_path)["scores"]
    y = np.r_[np.ones(len(scores["id/msp"])), np.zeros(len(scores["ring/msp"]))]
    auc = roc_auc_score(y, np.r_[scores["id/msp"], scores["ring/msp"]])
    expected = at.radio(key="lesson_predict_baseline_1").options[0 if auc >= 0.75 else 2 if auc <= 0.55 else 1]
    shown = [e.value for e in [*at.success, *at.warning] if "The data here says" in e.value]
    assert shown and f"The data here says: **{expected}**" in shown[0]


def test_next_step_moves_on_and_writes_the_step_into_the_link(lab):
    at = _open_step(on_page(lab, "lessons"), "l2norm", 1)
    assert not [b for b in at.button if b.key == "lesson_next"]  # no way on before a prediction
    radio = at.radio(key="lesson_predict_l2norm_1")
    radio.set_value(radio.options[0]).run()
    at.button(key="lesson_next").click().run()
    assert not at.exception
    assert at.selectbox(key="lesson_step_l2norm").value == 2 and at.header[0].value.startswith("2. Switch the score")
    assert at.query_params["step"] in ("2", ["2"]) and at.query_params["lesson"] in ("l2norm", ["l2norm"])
