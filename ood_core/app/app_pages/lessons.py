"""Lessons: one per paper and one on why softmax and energy fail far from the data
(:mod:`ood_core.lessons`). Each step asks for a prediction, offers a live action (train on
toy2d with pause and step, switch a score, move a threshold, set a method beside its
baseline), draws the figure that answers it and then reveals which choice the data supports,
with the numbers and one paragraph of explanation (:mod:`ood_core.app.teaching`). The lesson
and the step are in the URL (``?lesson=movr&step=2``). Widgets and plots only."""
from __future__ import annotations

import streamlit as st

from ood_core.app import state, teaching, widgets

st.title("Lessons")
key = widgets.url_selectbox("Lesson", [lesson.key for lesson in teaching.LESSONS], key="lesson", param="lesson",
                            format_func=lambda k: teaching.BY_KEY[k].title)
lesson = teaching.BY_KEY[key]
st.caption(f"Paper: {lesson.paper}")
st.markdown(lesson.intro)
number = widgets.url_selectbox("Step", list(range(1, len(lesson.steps) + 1)), key=f"lesson_step_{key}", param="step",
                               format_func=lambda i: f"{i}. {lesson.steps[i - 1].title}")
step = lesson.steps[number - 1]

st.header(f"{number}. {step.title}")
st.markdown(f"**Predict first.** {step.question}")
evidence = teaching.step_action(lesson, step)
teaching.reveal(lesson, step, number, evidence)
if state.teaching_mode():
    st.caption("Teaching mode: the explanation appears once a prediction is chosen; the sidebar's link opens "
               "this lesson at this step.")
