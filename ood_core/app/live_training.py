"""A live training run in the app (Models page and lessons): progress, loss and validation
curves, the landscape of 2-D runs, and the controls of :class:`ood_core.jobs.TrainingJob`:
Pause (at the end of the epoch), Step one epoch, Resume, Cancel. A teacher pauses a run to talk
about the landscape, then steps it one epoch at a time.

The panel is an ``st.fragment`` polled every :data:`POLL_S` seconds while the job runs, so it
redraws only itself; when the run ends it reruns the whole app once (the sidebar then lists
the new file)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from . import figures, tables, widgets

POLL_S = 1.0
ANNOUNCED_KEY = "training_job_announced"  # id of the Models page's finished job the app was rerun for


def show_job(job_key: str, prefix: str = "train", on_done=None, announced_key: str = ANNOUNCED_KEY) -> None:
    """The panel of the job in ``st.session_state[job_key]`` (nothing when there is none);
    widget keys start with ``prefix``. ``on_done(saved path)``: the callback of a "Show it"
    button under a finished run. When the run ends the whole app reruns once
    (``st.session_state[announced_key]`` remembers the job)."""
    job = st.session_state.get(job_key)
    if job is None:
        return
    polling = not job.finished and not job.snapshot().paused
    st.fragment(run_every=POLL_S if polling else None)(_panel)(job_key, prefix, on_done, announced_key)


def controls(job, prefix: str) -> None:
    """Pause / Step one epoch / Resume / Cancel of a running or paused job."""
    snap = job.snapshot()
    if job.cancel_requested:
        st.info("Cancelling: the run stops after the batch in flight; nothing will be saved.")
        return
    c1, c2, c3, c4 = st.columns(4)
    if snap.paused:
        c1.button("Resume", key=f"{prefix}_resume", on_click=job.resume, type="primary",
                  help="Train on to the end (or to the next pause)")
        c2.button("Step one epoch", key=f"{prefix}_step", on_click=job.step_epoch,
                  help="Train exactly one more epoch, then pause again")
    elif snap.pause_requested:
        c1.button("Pausing after this epoch…", key=f"{prefix}_pausing", disabled=True)
    else:
        c1.button("Pause", key=f"{prefix}_pause", on_click=job.pause,
                  help="Stop at the end of this epoch: the figures then show the paused state")
    c4.button("Cancel training", key=f"{prefix}_cancel", on_click=job.cancel,
              help="Stops within one batch; nothing is saved")


def _panel(job_key: str, prefix: str, on_done, announced_key: str) -> None:
    job = st.session_state.get(job_key)
    if job is None:
        return
    snap = job.snapshot()
    stem = Path(snap.out_path).stem
    st.subheader(f"Run: `{snap.method}` on `{snap.dataset}` → `{Path(snap.out_path).name}`")
    st.progress(snap.fraction, text=widgets.training_status_text(snap))
    last_val = next((v for h in reversed(snap.history) for k, v in h.items() if k.startswith("val_")), None)
    m1, m2, m3, m4 = st.columns(4)
    threads = "" if snap.threads is None else f" · {snap.threads} thread{'s' if snap.threads > 1 else ''}"
    m1.metric("Training device", f"{snap.device}{threads}",
              help="cuda > mps > cpu, the first available; torch threads used by the training thread")
    m2.metric("Status", snap.status)
    m3.metric("Validation (last epoch)", "n/a" if last_val is None else f"{last_val:.1%}",
              help="Accuracy (or mAP) on the validation split of the known classes")
    m4.metric("Elapsed", f"{snap.elapsed_s:.1f} s", help="Training time; time spent paused is not counted")

    if not snap.finished:
        controls(job, prefix)
    elif snap.status == "done":
        st.success(f"Training finished: {snap.message}. It now appears in the sidebar's checkpoint list."
                   if on_done else f"Training finished: {snap.message}.")
        if on_done is not None:
            st.button("Show it under 'Loaded checkpoint'", key=f"{prefix}_show", on_click=on_done,
                      args=(snap.saved_path,), help="Selects it in the sidebar; then open the 'Loaded checkpoint' tab")
        if snap.metrics:
            label, value = tables.reported_id_quality(snap.metrics)
            st.caption(f"{label} on the ID test split: " + ("n/a" if value is None else f"{value:.1%}")
                       + ". Mean OOD detection per group:")
            widgets.show_table(tables.group_mean_table(snap.metrics), f"{prefix}_group_means", f"{stem}_group_means")
    elif snap.status == "cancelled":
        st.warning(snap.message)
    else:
        st.error(snap.error or snap.message)
        if job.error_detail:
            with st.expander("Traceback (for a bug report)"):
                st.code(job.error_detail)

    if snap.losses:
        left, right = st.columns(2)
        widgets.show_figure(figures.loss_curve_figure(snap.loss_steps, snap.losses, snap.steps, snap.history),
                            f"{prefix}_loss_curve", f"{stem}_loss", left)
        val_fig = figures.epoch_metrics_figure(snap.history)
        if val_fig is not None:
            widgets.show_figure(val_fig, f"{prefix}_val_curve", f"{stem}_validation", right)
    if snap.landscapes:
        land = snap.landscapes[-1]
        if (snap.finished or snap.paused) and len(snap.landscapes) > 1:
            epoch = st.slider("Show the landscape after epoch", 1, len(snap.landscapes), len(snap.landscapes),
                              key=f"{prefix}_landscape_epoch_{snap.job_id}" + (  # paused: a new slider per
                                  "" if snap.finished else f"_{len(snap.landscapes)}"),  # epoch, at the latest
                              help="Replay how the regions formed")
            land = snap.landscapes[epoch - 1]
        widgets.show_figure(figures.landscape_figure(land, job.plane_points, job.bench.class_names),
                            f"{prefix}_landscape", f"{stem}_landscape_epoch{land.epoch}")

    if snap.finished and st.session_state.get(announced_key) != snap.job_id:
        st.session_state[announced_key] = snap.job_id
        st.rerun()  # the whole app, once: the sidebar lists the new file and the polling stops
    if snap.paused and st.session_state.get(f"{prefix}_paused_at") != (snap.job_id, snap.epoch):
        st.session_state[f"{prefix}_paused_at"] = (snap.job_id, snap.epoch)
        st.rerun()  # the whole app, once: the fragment stops polling while the run waits
