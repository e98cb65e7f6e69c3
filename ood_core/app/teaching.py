"""The Home page's method cards and the Lessons page's steps (:mod:`ood_core.lessons`): each
step's live action and figure, and the reveal of what the data says. The numbers come from the
same cached calls as the other pages (evaluations, landscapes, the stored mechanism figures,
training jobs) on the shipped checkpoints."""
from __future__ import annotations

import uuid
from pathlib import Path

import streamlit as st

from ..claims import MECHANISMS
from ..errors import OODCoreError
from ..lessons import BY_KEY, LESSONS, Lesson, Step, choices_of, judge, lesson_for_method  # noqa: F401
from ..paths import SHIPPED_CHECKPOINTS, default_cache_dir
from . import cached, figures, live_training, training, widgets
from .pages import page_file

JOB_KEY = "lesson_job"  # the lesson's live training run (separate from the Models page's)
ANNOUNCED_KEY = "lesson_job_announced"


# --------------------------------------------------------------------------- Home
def method_cards() -> None:
    """The five methods as cards: title, verdict, one sentence, the mechanism figure of the
    method's shipped checkpoint, links to its page and its lesson."""
    try:
        stored = cached.claims_mechanisms()["figures"]
    except OODCoreError as e:  # no shipped checkpoints here: the cards go on without figures
        st.info(str(e))
        stored = {}
    verdicts = widgets.claim_verdicts()
    mechanisms = list(MECHANISMS.values())
    for row in (mechanisms[:3], mechanisms[3:]):
        for col, mech in zip(st.columns(3), row):
            with col.container(border=True):
                st.markdown(f"**{mech.title}**")
                if mech.claim in verdicts:
                    st.markdown(widgets.verdict_markdown(verdicts[mech.claim]))
                st.caption(mech.headline)
                if mech.key in stored:
                    widgets.show_figure(figures.mechanism_card_figure(stored[mech.key], mech.x_label),
                                        f"home_{mech.key}", f"home_{mech.key}")
                links = st.columns(2)
                with links[0]:
                    st.page_link(page_file(mech.page), label="Its page", icon=":material/insights:")
                lesson = lesson_for_method(mech.method)
                if lesson is not None:
                    with links[1]:
                        st.page_link(page_file("lessons"), label="Its lesson", icon=":material/school:",
                                     query_params={"lesson": lesson.key})


# --------------------------------------------------------------------------- Lessons
def _evaluation(path: str) -> dict:
    return widgets.or_stop(cached.evaluation_cached, path, cached.checkpoint_version(path))


def _run_file(lesson: Lesson) -> str:
    """A new file name for a run of ``lesson`` (its key first: the run's lesson is read from it)."""
    return f"{lesson.key}_{uuid.uuid4().hex[:8]}.pt"


def _lesson_job(lesson: Lesson):
    """This session's lesson run, when it belongs to ``lesson`` (its file is named after it)."""
    job = st.session_state.get(JOB_KEY)
    return job if job is not None and Path(job.out_path).name.startswith(f"{lesson.key}_") else None


def _start_run(lesson_key: str) -> None:
    """Button callback: (re)start the lesson's live run, saved into the cache folder (a previous
    run is cancelled: Reset)."""
    lesson = BY_KEY[lesson_key]
    old = st.session_state.get(JOB_KEY)
    if old is not None and not old.finished:
        old.cancel()
    spec = lesson.train
    folder = default_cache_dir() / "lessons"
    folder.mkdir(parents=True, exist_ok=True)
    bench = cached.benchmark_by_name_cached(spec["dataset"])
    lr = training.option_defaults(spec["method"], spec["dataset"])["lr"]
    job = widgets.or_error(training.start, spec["method"], bench, folder / _run_file(lesson),
                           epochs=spec["epochs"], lr=lr, seed=0, overwrite=False,
                           landscape_score=spec["landscape_score"],
                           min_epoch_seconds=float(st.session_state.get("lesson_slow_motion", 0.3)))
    if job is not None:
        st.session_state[JOB_KEY] = job


def step_action(lesson: Lesson, step: Step) -> dict:
    """Draw the step's live action and its figure; returns what the step is judged on:
    ``{"scores": per-sample scores, "mechanism": the stored mechanism figure}``, each None where
    the step has none (or not yet: a lesson run not finished)."""
    path = str(SHIPPED_CHECKPOINTS / lesson.method_file)
    version = cached.checkpoint_version(path)
    key = lesson.key
    if step.kind == "train":
        st.slider("Slow motion: at least this many seconds per epoch", 0.0, 1.0, 0.3, 0.05, key="lesson_slow_motion",
                  help="toy2d trains an epoch in milliseconds; slow motion lets the class watch the regions form")
        job = _lesson_job(lesson)
        spec = lesson.train
        st.button("Train it now" if job is None else "Reset: train again from the start", key="lesson_train",
                  on_click=_start_run, args=(key,), type="primary" if job is None else "secondary",
                  help=f"{spec['method']} on {spec['dataset']}, {spec['epochs']} epochs, seed 0 (a few seconds); "
                       "pause it, step one epoch, resume")
        if job is None:
            st.info("Press **Train it now**: the landscape's right panel draws the MSP score over the plane after "
                    "every epoch.")
            return {"scores": None, "mechanism": None}
        live_training.show_job(JOB_KEY, "lesson", announced_key=ANNOUNCED_KEY)
        snap = job.snapshot()
        done = snap.status == "done" and snap.saved_path
        return {"scores": _evaluation(str(snap.saved_path))["scores"] if done else None, "mechanism": None}
    if step.kind == "mechanism":
        mech = MECHANISMS[lesson.mechanism]
        stored = widgets.or_stop(cached.claims_mechanisms)["figures"].get(lesson.mechanism)
        if stored is None:
            st.error("The mechanism figures of the shipped checkpoints are missing (`make checkpoints` writes them).")
            st.stop()
        st.caption(mech.what)
        left, right = st.columns(2)
        for role, col in (("baseline", left), ("method", right)):
            widgets.show_figure(figures.mechanism_figure(stored, role, mech.x_label), f"lesson_mech_{role}",
                                f"lesson_{key}_{role}", col)
        return {"scores": None, "mechanism": stored}
    scores = _evaluation(path)["scores"]
    if step.kind == "scores":
        chosen = st.radio("Score (high = ID)", list(choices_of(step, scores)), key=f"lesson_score_{key}",
                          horizontal=True)
        bench = cached.benchmark_cached(path, version)
        if tuple(bench.input_shape) == (2,):
            land, points = widgets.or_stop(cached.landscape_cached, path, version, chosen)
            widgets.show_figure(figures.landscape_figure(land, points, bench.class_names), f"lesson_land_{key}",
                                f"lesson_{key}_{chosen}_landscape")
        else:
            widgets.show_figure(figures.distributions_figure(
                {"ID (test)": scores[f"id/{chosen}"], f"OOD: {step.ood_set}": scores[f"{step.ood_set}/{chosen}"]},
                f"{chosen} (high = ID)", f"{lesson.method_file}: {chosen}"), f"lesson_hist_{key}",
                f"lesson_{key}_{chosen}")
        return {"scores": scores, "mechanism": None}
    ident, ood = scores[f"id/{step.score}"], scores[f"{step.ood_set}/{step.score}"]
    threshold = widgets.threshold_slider(ident, ood, key=f"lesson_threshold_{key}")
    widgets.confusion_metrics(ident, ood, threshold)
    fig = figures.distributions_figure({"ID (test)": ident, f"OOD: {step.ood_set}": ood}, f"{step.score} (high = ID)",
                                       f"{lesson.method_file}: {step.score} (dashed: the threshold)",
                                       threshold=threshold)
    widgets.show_figure(fig, f"lesson_threshold_fig_{key}", f"lesson_{key}_threshold")
    return {"scores": scores, "mechanism": None}


def reveal(lesson: Lesson, step: Step, number: int, evidence: dict) -> None:
    """The prediction, then (once chosen) the choice the data supports (``evidence``: what
    :func:`step_action` returned) with its numbers, the explanation, the claim's verdict and the
    way on."""
    scores = evidence["scores"]
    choices = list(choices_of(step, scores)) if step.kind != "scores" or scores is not None else []
    prediction = st.radio("Your prediction", choices, index=None, key=f"lesson_predict_{lesson.key}_{number}")
    if prediction is None:
        st.caption("Choose a prediction to see what the data says.")
        return
    if step.kind == "train" and scores is None:
        st.caption("Train the model (and let the run finish) to see what the data says.")
        return
    index, why = judge(step, scores=scores, mechanism=evidence["mechanism"], high_is_id=lesson.high_is_id)
    answer = choices[index]
    right = prediction == answer
    (st.success if right else st.warning)(f"The data here says: **{answer}**" + (
        " — as you predicted." if right else f" (you predicted: {prediction})."))
    st.caption(why)
    st.markdown(step.explanation)
    verdict = widgets.claim_verdicts().get(lesson.method) if lesson.method else None
    if verdict:
        st.markdown(widgets.verdict_markdown(verdict) + " over all splits and seeds (Claims page)")
    if number < len(lesson.steps):
        st.button("Next step", key="lesson_next", on_click=st.session_state.update,
                  args=({f"lesson_step_{lesson.key}": number + 1},))
    else:
        st.page_link(page_file("claims"), label="See the claims measured over splits and seeds",
                     icon=":material/fact_check:")
