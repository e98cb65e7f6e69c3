"""Background training jobs (ood_core.jobs) and decision landscapes (ood_core.landscape).

Runs are tiny (toy2d trains an epoch in about 10 ms); the cancel tests use digits with many
epochs so there is time to cancel mid-run.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ood_core
from ood_core.checkpoint import load_checkpoint, read_checkpoint
from ood_core.errors import OODCoreError
from ood_core.jobs import (FINISHED, _thin, _use_threads_here, checkpoint_path, default_file_name, free_path, methods_for,
                           start_training)
from ood_core.landscape import decision_landscape, grid_axes
from ood_core.models import ModelOutput
from ood_core.scores import make_score
from ood_core.train import TrainConfig, train

WAIT_S = 60


def _files(folder) -> list[str]:
    """Every entry of ``folder``, hidden ones included (a pending or temporary file counts)."""
    return sorted(p.name for p in folder.iterdir())


def _wait_until(predicate, timeout=WAIT_S):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def _train_with_threads(threads: int | None, *args, **kwargs):
    """train(*args, **kwargs) in a fresh thread using ``threads`` torch threads, set the way a
    job sets them (only that thread; the test process and later threads keep their own);
    None: torch's default for a new thread, as a job with ``torch_threads=None``."""
    box = {}

    def run():
        if threads is not None:
            _use_threads_here(threads)
        box["result"] = train(*args, **kwargs)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return box["result"]


def _threads_of_a_new_thread() -> int:
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("n", torch.get_num_threads()))
    worker.start()
    worker.join()
    return box["n"]


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


# --------------------------------------------------------------------------- completion
def test_job_saves_the_same_weights_as_a_direct_train_call(tmp_path):
    cfg = TrainConfig(epochs=2, seed=5)
    job = start_training("ce", "toy2d", cfg, tmp_path / "ce_toy2d.pt", evaluate_after=False)
    assert job.wait(WAIT_S) and job.status == "done", job.snapshot().message

    seen = []
    direct = _train_with_threads(1, "ce", "toy2d", TrainConfig(epochs=2, seed=5), progress=seen.append,
                                 evaluate_after=False)
    model, meta = load_checkpoint(tmp_path / "ce_toy2d.pt")
    _assert_same_weights(model.state_dict(), direct.model.state_dict())
    assert meta["history"] == direct.history and meta["method"] == "ce"
    assert meta["train_config"]["torch_threads"] == 1

    snap = job.snapshot()
    assert snap.saved_path == str(tmp_path / "ce_toy2d.pt") and snap.error is None
    assert snap.fraction == 1.0 and snap.global_step == snap.total_steps == len(seen)
    assert snap.losses == [p.loss for p in seen]
    assert snap.loss_steps == list(range(1, len(seen) + 1))
    assert snap.history == direct.history
    assert snap.device == "cpu" or snap.device.startswith(("cuda", "mps"))
    assert snap.threads == 1
    assert snap.elapsed_s > 0
    assert _files(tmp_path) == ["ce_toy2d.pt"]  # no pending or temporary file left behind


def test_job_with_torch_default_threads_matches_train_with_the_default(tmp_path):
    job = start_training("ce", "digits", TrainConfig(epochs=1, seed=4), tmp_path / "m.pt", evaluate_after=False,
                         torch_threads=None)
    direct = _train_with_threads(None, "ce", "digits", TrainConfig(epochs=1, seed=4), evaluate_after=False)
    assert job.wait(WAIT_S) and job.status == "done"
    _assert_same_weights(load_checkpoint(tmp_path / "m.pt")[0].state_dict(), direct.model.state_dict())
    assert job.snapshot().threads == _threads_of_a_new_thread()


def test_job_thread_count_does_not_leak_into_other_threads(tmp_path):
    before, before_new = torch.get_num_threads(), _threads_of_a_new_thread()
    job = start_training("ce", "toy2d", TrainConfig(epochs=1), tmp_path / "m.pt", evaluate_after=False,
                         torch_threads=1, min_epoch_seconds=0)
    assert job.wait(WAIT_S) and job.snapshot().threads == 1
    # neither this thread nor threads started later (a Streamlit server's script runs) inherit it
    assert torch.get_num_threads() == before
    assert _threads_of_a_new_thread() == before_new


def test_live_history_matches_the_checkpoint_history_epoch_by_epoch(tmp_path):
    rows = []
    job = start_training("ce", "toy2d", TrainConfig(epochs=3, seed=1), tmp_path / "m.pt", evaluate_after=False,
                         min_epoch_seconds=0.2)
    while not job.wait(0.01):
        rows = job.snapshot().history or rows
    final = read_checkpoint(tmp_path / "m.pt")["meta"]["history"]
    live = job.snapshot().history
    assert live == final
    # the rows seen during the run carry the same train loss and validation metrics (lr is added at the end)
    for seen, kept in zip(rows, final):
        assert {k: v for k, v in kept.items() if k != "lr"} == seen


def test_evaluated_job_records_the_ood_report(tmp_path):
    job = start_training("ce", "toy2d", TrainConfig(epochs=1), tmp_path / "m.pt")
    assert job.wait(WAIT_S) and job.status == "done"
    snap = job.snapshot()
    assert snap.metrics["id_accuracy"] == read_checkpoint(tmp_path / "m.pt")["meta"]["metrics"]["id_accuracy"]
    assert {"ring", "uniform-box"} <= set(snap.metrics["ood"])


def test_config_is_copied_and_defaults_to_the_recipe(tmp_path):
    cfg = TrainConfig(epochs=1, seed=2)
    job = start_training("ce", "toy2d", cfg, tmp_path / "m.pt", evaluate_after=False)
    cfg.epochs = 99  # changing the caller's object must not change the run
    assert job.wait(WAIT_S) and job.snapshot().epochs == 1
    assert read_checkpoint(tmp_path / "m.pt")["meta"]["train_config"]["epochs"] == 1


# --------------------------------------------------------------------------- cancel
def test_cancel_stops_within_one_batch_and_saves_nothing(tmp_path):
    job = start_training("ce", "digits", TrainConfig(epochs=200, seed=0), tmp_path / "m.pt")
    _wait_until(lambda: job.snapshot().global_step >= 3)
    at_cancel = job.snapshot().global_step
    job.cancel()
    assert job.wait(WAIT_S)
    snap = job.snapshot()
    assert snap.status == "cancelled" and job.finished
    assert snap.global_step <= at_cancel + 1  # the batch in flight may finish, no more
    assert "cancelled" in snap.message and "nothing was saved" in snap.message
    assert snap.saved_path is None and snap.error is None
    assert _files(tmp_path) == []


def test_cancel_during_a_slow_motion_pause_is_immediate(tmp_path):
    job = start_training("ce", "toy2d", TrainConfig(epochs=3), tmp_path / "m.pt", min_epoch_seconds=30)
    _wait_until(lambda: len(job.snapshot().history) == 1)
    t0 = time.monotonic()
    job.cancel()
    assert job.wait(5) and job.status == "cancelled"
    assert time.monotonic() - t0 < 5
    assert _files(tmp_path) == []


def test_second_job_queues_and_can_be_cancelled_while_waiting(tmp_path):
    first = start_training("ce", "toy2d", TrainConfig(epochs=3), tmp_path / "a.pt", min_epoch_seconds=30)
    _wait_until(lambda: first.status == "running")
    second = start_training("ce", "toy2d", TrainConfig(epochs=1), tmp_path / "b.pt")
    time.sleep(0.3)
    assert second.status == "queued" and second.snapshot().global_step == 0
    second.cancel()
    assert second.wait(5) and second.status == "cancelled"
    assert "waiting" in second.snapshot().message
    assert first.status == "running"
    first.cancel()
    assert first.wait(5) and first.status == "cancelled"
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------- pause, step, resume
# A long slow-motion wait (min_epoch_seconds=30) keeps a toy2d run from racing ahead of the test:
# a pause requested before or during that wait takes effect at the end of epoch 1, at once.
SLOW = 30


@pytest.fixture
def start():
    """start_training, with every job it started cancelled at the end of the test: a failing
    test must not leave a paused run holding the one-run-at-a-time slot for the next tests."""
    jobs = []

    def _start(*args, **kwargs):
        jobs.append(start_training(*args, **kwargs))
        return jobs[-1]

    yield _start
    for job in jobs:
        job.cancel()
    for job in jobs:
        job.wait(WAIT_S)


def _paused_at(job, epoch: int, timeout=WAIT_S):
    """Wait until ``job`` pauses; check that it did after ``epoch`` and return the snapshot."""
    _wait_until(lambda: job.snapshot().paused or job.finished, timeout)
    snap = job.snapshot()
    assert snap.status == "paused" and snap.paused and not snap.pause_requested, snap.message
    assert job.paused and not job.finished and snap.phase == "paused" and "paused after epoch" in snap.message
    assert snap.epoch == epoch and snap.step == snap.steps and snap.global_step == epoch * snap.steps
    assert len(snap.losses) == epoch * snap.steps
    assert [row["epoch"] for row in snap.history] == list(range(1, epoch + 1))
    return snap


def _assert_stays_paused(job, seconds=0.3):
    """Poll for ``seconds``: the paused job neither trains nor counts the time."""
    first = job.snapshot()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        snap = job.snapshot()
        assert snap.status == "paused" and snap.paused
        assert (snap.epoch, snap.global_step, len(snap.losses), len(snap.history), len(snap.landscapes)) == \
            (first.epoch, first.global_step, len(first.losses), len(first.history), len(first.landscapes))
        assert snap.elapsed_s == first.elapsed_s  # paused time is not counted
        time.sleep(0.02)


@pytest.mark.parametrize("ask", ["pause", "step_epoch"])
def test_pause_while_running_stops_after_the_current_epoch_and_waits(tmp_path, ask, start):
    # digits: about 0.1 s per epoch of 11 steps, so the request lands mid-epoch; step_epoch while
    # running does the same as pause
    job = start("ce", "digits", TrainConfig(epochs=200, seed=0), tmp_path / "m.pt")
    _wait_until(lambda: job.snapshot().global_step >= 3)
    before = job.snapshot()
    getattr(job, ask)()
    after = job.snapshot()
    assert after.pause_requested or after.paused
    _wait_until(lambda: job.snapshot().paused or job.finished)
    snap = job.snapshot()
    # the epoch in progress when asked (the batch in flight may have ended it), never a later one
    assert before.epoch <= snap.epoch <= after.epoch + 1 and snap.epoch < snap.epochs
    _paused_at(job, snap.epoch)
    _assert_stays_paused(job)
    job.cancel()
    assert job.wait(5) and job.status == "cancelled"
    assert _files(tmp_path) == []


def test_step_epoch_trains_exactly_one_epoch_each_time_and_the_last_one_saves(tmp_path, start):
    job = start("ce", "toy2d", TrainConfig(epochs=4, seed=1), tmp_path / "m.pt", evaluate_after=False,
                         landscape_resolution=5, min_epoch_seconds=SLOW)
    job.pause()
    t0 = time.monotonic()
    snap = _paused_at(job, 1, timeout=SLOW * 2 / 3)
    assert time.monotonic() - t0 < SLOW * 2 / 3  # the pause cut the slow-motion wait short
    # the figures show the paused state: that epoch's landscape is already recorded
    assert [s.epoch for s in snap.landscapes] == [1]
    for k in (2, 3):
        job.step_epoch()
        snap = job.snapshot()  # running the step (unless it is already over: an epoch takes ~10 ms)
        assert (snap.status == "running" and snap.pause_requested) or (snap.paused and snap.epoch == k)
        snap = _paused_at(job, k)
        assert [s.epoch for s in snap.landscapes] == list(range(1, k + 1))
        _assert_stays_paused(job, 0.1)
    job.pause()  # already paused: nothing changes
    assert job.snapshot().paused and not job.snapshot().pause_requested
    job.step_epoch()  # the last epoch: the run finishes and saves instead of pausing
    assert job.wait(WAIT_S) and job.status == "done", job.snapshot().message
    snap = job.snapshot()
    assert not snap.paused and not snap.pause_requested and snap.epoch == 4 and len(snap.landscapes) == 4
    assert snap.saved_path == str(tmp_path / "m.pt") and _files(tmp_path) == ["m.pt"]
    job.pause(), job.step_epoch(), job.resume()  # no effect once finished
    assert job.status == "done" and not job.snapshot().pause_requested


def test_cancel_while_paused_ends_at_once_and_saves_nothing(tmp_path, start):
    job = start("ce", "toy2d", TrainConfig(epochs=3), tmp_path / "m.pt", min_epoch_seconds=SLOW)
    job.pause()
    _paused_at(job, 1)
    t0 = time.monotonic()
    job.cancel()
    assert job.wait(5) and time.monotonic() - t0 < 5
    snap = job.snapshot()
    assert snap.status == "cancelled" and not snap.paused and not snap.pause_requested and job.finished
    assert "nothing was saved" in snap.message and snap.saved_path is None and snap.error is None
    job.resume()
    assert job.status == "cancelled"
    assert _files(tmp_path) == []


def test_paused_stepped_and_resumed_run_saves_the_same_weights_as_an_uninterrupted_run(tmp_path, start):
    cfg = TrainConfig(epochs=5, seed=7)
    t_start = time.monotonic()
    job = start("ce", "toy2d", cfg, tmp_path / "m.pt", evaluate_after=False, min_epoch_seconds=SLOW)
    paused_s = 0.0  # time the test saw the job paused: a lower bound of the job's paused time

    def hold():
        nonlocal paused_s
        t = time.monotonic()
        _assert_stays_paused(job, 0.2)
        paused_s += time.monotonic() - t

    job.pause()
    _paused_at(job, 1)
    hold()
    job.step_epoch()
    _paused_at(job, 2)
    hold()
    job.resume()
    assert job.snapshot().status == "running" and not job.snapshot().pause_requested
    # epoch 3 trains, then the run sits in its 30 s slow-motion wait: a pause there begins at once
    _wait_until(lambda: len(job.snapshot().history) == 3)
    assert job.snapshot().status == "running"
    t0 = time.monotonic()
    job.pause()
    _paused_at(job, 3, timeout=SLOW * 2 / 3)
    assert time.monotonic() - t0 < SLOW * 2 / 3
    hold()
    job.step_epoch()
    _paused_at(job, 4)
    hold()
    job.resume()
    assert job.wait(WAIT_S) and job.status == "done", job.snapshot().message
    wall_s = time.monotonic() - t_start

    seen = []
    direct = _train_with_threads(1, "ce", "toy2d", TrainConfig(epochs=5, seed=7), progress=seen.append,
                                 evaluate_after=False)
    model, meta = load_checkpoint(tmp_path / "m.pt")
    _assert_same_weights(model.state_dict(), direct.model.state_dict())
    assert meta["history"] == direct.history
    snap = job.snapshot()
    assert snap.history == direct.history and snap.losses == [p.loss for p in seen]
    assert snap.epoch == 5 and snap.global_step == snap.total_steps and snap.fraction == 1.0
    assert 0 < snap.elapsed_s <= wall_s - paused_s  # the paused intervals are left out of elapsed_s


def test_pause_while_queued_takes_effect_after_the_first_epoch(tmp_path, start):
    first = start("ce", "toy2d", TrainConfig(epochs=3), tmp_path / "a.pt", min_epoch_seconds=SLOW)
    _wait_until(lambda: first.status == "running")
    second = start("ce", "toy2d", TrainConfig(epochs=3, seed=2), tmp_path / "b.pt", evaluate_after=False)
    assert second.status == "queued"
    second.pause()
    snap = second.snapshot()
    assert snap.status == "queued" and snap.pause_requested and not snap.paused and snap.global_step == 0
    first.cancel()
    assert first.wait(5) and first.status == "cancelled"
    _paused_at(second, 1)
    _assert_stays_paused(second, 0.1)
    second.resume()
    assert second.wait(WAIT_S) and second.status == "done", second.snapshot().message
    assert second.snapshot().epoch == 3 and not second.snapshot().paused
    assert _files(tmp_path) == ["b.pt"]


def test_a_paused_job_does_not_keep_the_interpreter_from_exiting(tmp_path):
    code = f"""
        import time
        from ood_core.jobs import start_training
        from ood_core.train import TrainConfig
        job = start_training("ce", "toy2d", TrainConfig(epochs=3), {str(tmp_path / "m.pt")!r}, min_epoch_seconds={SLOW})
        job.pause()
        end = time.monotonic() + 60
        while not job.snapshot().paused and time.monotonic() < end:
            time.sleep(0.01)
        print(job.snapshot().status)
    """
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "paused"
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------- failures and refusals
def test_diverging_run_fails_with_the_diverged_message_and_saves_nothing(tmp_path):
    job = start_training("ce", "toy2d", TrainConfig(epochs=2, lr=1e9), tmp_path / "m.pt")
    assert job.wait(WAIT_S)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert "loss became" in snap.error and "nothing was saved" in snap.error and "learning rate" in snap.error
    assert job.error_detail is None  # a user-facing error, not a bug
    assert _files(tmp_path) == []


def test_existing_file_is_refused_without_overwrite_and_left_untouched(tmp_path):
    target = tmp_path / "ce_toy2d.pt"
    target.write_bytes(b"precious")
    with pytest.raises(OODCoreError, match=r"already exists.*overwrite=True.*ce_toy2d-2\.pt"):
        start_training("ce", "toy2d", TrainConfig(epochs=1), target)
    assert target.read_bytes() == b"precious"
    assert _files(tmp_path) == ["ce_toy2d.pt"]

    job = start_training("ce", "toy2d", TrainConfig(epochs=1), target, overwrite=True, evaluate_after=False)
    assert job.wait(WAIT_S) and job.status == "done"
    assert read_checkpoint(target)["meta"]["method"] == "ce"


def test_file_that_appears_during_training_is_kept(tmp_path):
    target = tmp_path / "m.pt"
    job = start_training("ce", "toy2d", TrainConfig(epochs=2), target, evaluate_after=False, min_epoch_seconds=0.5)
    _wait_until(lambda: job.snapshot().history)
    target.write_bytes(b"someone else's model")
    assert job.wait(WAIT_S) and job.status == "done"
    assert target.read_bytes() == b"someone else's model"
    snap = job.snapshot()
    assert snap.saved_path == str(tmp_path / "m-2.pt") and "kept it" in snap.message
    assert read_checkpoint(tmp_path / "m-2.pt")["meta"]["method"] == "ce"
    assert _files(tmp_path) == ["m-2.pt", "m.pt"]


@pytest.mark.parametrize("name, message", [("model.pth", r"must end in \.pt"), (".hidden.pt", "hidden"),
                                           ("model", r"must end in \.pt")])
def test_bad_output_names_are_refused(tmp_path, name, message):
    with pytest.raises(OODCoreError, match=message):
        start_training("ce", "toy2d", TrainConfig(epochs=1), tmp_path / name)
    assert _files(tmp_path) == []


def test_output_folder_is_refused(tmp_path):
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(OODCoreError, match="is a folder"):
        start_training("ce", "toy2d", TrainConfig(epochs=1), tmp_path / "dir.pt")


def test_plain_names_and_free_names(tmp_path):
    assert checkpoint_path(tmp_path, " ce_toy2d.pt ") == tmp_path / "ce_toy2d.pt"
    for bad in ("", "sub/x.pt", "../x.pt", "x.txt", "/tmp/abs.pt", "..", ".", "a\x00b.pt", "a\nb.pt",
                "x" * 300 + ".pt", "sub\\x.pt"):
        with pytest.raises(OODCoreError):
            checkpoint_path(tmp_path, bad)
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "a-2.pt").write_bytes(b"x")
    assert free_path(tmp_path / "a.pt") == tmp_path / "a-3.pt"
    assert free_path(tmp_path / "b.pt") == tmp_path / "b.pt"
    assert default_file_name("ce", "toy2d") == "ce_toy2d.pt"


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="oe", dataset="toy2d"), "image inputs"),
    (dict(method="jointenergy", dataset="toy2d"), "multilabel"),
    (dict(method="ce", dataset="toy2d", config=TrainConfig(epochs=0)), "epochs"),
    (dict(method="ce", dataset="digits", landscape_resolution=20), "2-D inputs"),
    (dict(method="ce", dataset="toy2d", landscape_resolution=20, landscape_score="jacobian_norm"), "gradients"),
    (dict(method="ce", dataset="toy2d", torch_threads=0), "torch_threads"),
    (dict(method="nope", dataset="toy2d"), "unknown method"),
    (dict(method="ce", dataset="nope"), "unknown dataset"),
])
def test_bad_requests_are_refused_before_the_thread_starts(tmp_path, kwargs, message):
    with pytest.raises(OODCoreError, match=message):
        start_training(out_path=tmp_path / "m.pt", **kwargs)
    assert _files(tmp_path) == []


def test_methods_for_filters_by_task_and_input_kind():
    toy = methods_for(ood_core.load_benchmark("toy2d"))
    assert "ce" in toy and "oe" not in toy and "separation" not in toy and "jointenergy" not in toy
    digits = methods_for(ood_core.load_benchmark("digits"))
    assert {"ce", "oe", "separation"} <= set(digits) and "jointenergy" not in digits
    canvases = methods_for(ood_core.load_benchmark("digit-canvases"))
    assert set(canvases) == {n for n, m in ood_core.METHODS.items() if m.task == "multilabel"}


def test_snapshot_thins_long_loss_curves_evenly():
    assert list(_thin(5, 10)) == [0, 1, 2, 3, 4]
    kept = _thin(1000, 50)
    assert len(kept) <= 50 and kept[0] == 0 and kept[-1] == 999 and np.all(np.diff(kept) > 0)


def test_snapshot_respects_max_loss_points(tmp_path):
    job = start_training("ce", "toy2d", TrainConfig(epochs=2), tmp_path / "m.pt", evaluate_after=False)
    assert job.wait(WAIT_S)
    full, thin = job.snapshot(), job.snapshot(max_loss_points=10)
    assert len(thin.losses) <= 10 and thin.loss_steps[-1] == full.loss_steps[-1]
    assert [full.losses[s - 1] for s in thin.loss_steps] == thin.losses
    assert job.snapshot().status in FINISHED


# --------------------------------------------------------------------------- landscapes
def test_epoch_end_hook_does_not_change_the_weights():
    calls = []

    def hook(epoch, model):
        calls.append(epoch)
        decision_landscape(model, (-7, 7, -7, 7), resolution=15)

    a = train("ce", "toy2d", TrainConfig(epochs=3, seed=2), evaluate_after=False, epoch_end=hook)
    b = train("ce", "toy2d", TrainConfig(epochs=3, seed=2), evaluate_after=False)
    assert calls == [1, 2, 3]
    _assert_same_weights(a.model.state_dict(), b.model.state_dict())
    assert a.history == b.history


def test_toy2d_landscapes_one_per_epoch_match_brute_force(tmp_path):
    epochs, res = 3, 21
    job = start_training("ce", "toy2d", TrainConfig(epochs=epochs, seed=3), tmp_path / "m.pt",
                         landscape_resolution=res, evaluate_after=False)
    assert job.wait(WAIT_S) and job.status == "done"
    snaps = job.snapshot().landscapes
    assert [s.epoch for s in snaps] == list(range(1, epochs + 1))

    # the model after every epoch, from a direct run with the same seed
    states = []
    direct = _train_with_threads(1, "ce", "toy2d", TrainConfig(epochs=epochs, seed=3), evaluate_after=False,
                                 epoch_end=lambda e, m: states.append(copy.deepcopy(m.state_dict())))
    model = copy.deepcopy(direct.model).eval()

    pts = job.plane_points["x"]
    x_min, x_max, y_min, y_max = job.landscape_bounds
    assert x_min < pts[:, 0].min() and pts[:, 0].max() < x_max and y_min < pts[:, 1].min() and pts[:, 1].max() < y_max
    energy = make_score("energy")
    rng = np.random.default_rng(0)
    for snap, state in zip(snaps, states):
        assert snap.xs.shape == (res,) and snap.ys.shape == (res,)
        assert snap.predicted.shape == (res, res) and snap.score.shape == (res, res)
        assert snap.predicted.dtype == np.int64 and snap.score_name == "energy"
        assert (snap.xs[0], snap.xs[-1], snap.ys[0], snap.ys[-1]) == pytest.approx(job.landscape_bounds)
        model.load_state_dict(state)
        for i, j in [(0, 0), (res - 1, res - 1), (0, res - 1), (res // 2, res // 3)] + \
                [tuple(rng.integers(0, res, 2)) for _ in range(6)]:
            x = torch.tensor([[snap.xs[j], snap.ys[i]]], dtype=torch.float32)
            with torch.no_grad():
                out = model(x)
            logits = out.logits[0]
            assert snap.predicted[i, j] == int(torch.argmax(logits)), (i, j)
            assert snap.score[i, j] == pytest.approx(float(torch.logsumexp(logits.double(), 0)), rel=1e-5)
            assert snap.score[i, j] == pytest.approx(energy(ModelOutput(out.features, out.logits))[0], rel=1e-6)
    # the last landscape belongs to the saved model
    saved, _ = load_checkpoint(tmp_path / "m.pt")
    _assert_same_weights(saved.state_dict(), direct.model.state_dict())


def test_landscape_score_grid_equals_the_registry_score_on_the_grid_points():
    r = train("ce", "toy2d", TrainConfig(epochs=1), evaluate_after=False)
    for score in ("energy", "msp", "maxlogit"):
        land = decision_landscape(r.model, (-5, 5, -4, 4), resolution=9, score=score)
        with torch.no_grad():
            out = r.model.eval()(torch.tensor(land.grid_points(), dtype=torch.float32))
        assert np.allclose(land.score.ravel(), make_score(score)(out))
        assert np.array_equal(land.predicted.ravel(), out.logits.argmax(1).numpy())


def test_landscape_restores_training_mode_and_checks_its_arguments():
    r = train("ce", "toy2d", TrainConfig(epochs=1), evaluate_after=False)
    r.model.train()
    decision_landscape(r.model, (-1, 1, -1, 1), resolution=3)
    assert r.model.training
    with pytest.raises(OODCoreError, match="min < max"):
        decision_landscape(r.model, (1, -1, -1, 1))
    with pytest.raises(OODCoreError, match="resolution"):
        decision_landscape(r.model, (-1, 1, -1, 1), resolution=1)
    with pytest.raises(OODCoreError, match="fit_on"):
        decision_landscape(r.model, (-1, 1, -1, 1), score="knn")
    with pytest.raises(OODCoreError, match="gradients"):
        decision_landscape(r.model, (-1, 1, -1, 1), score="jacobian_norm")
    xs, ys = grid_axes((0, 1, 2, 4), 3)
    assert list(xs) == [0, 0.5, 1] and list(ys) == [2, 3, 4]


def test_fitted_scores_are_fitted_on_the_training_outputs_like_the_evaluator():
    bench = ood_core.load_benchmark("toy2d")
    r = train("ce", bench, TrainConfig(epochs=1), evaluate_after=False)
    model = r.model.eval()
    with torch.no_grad():
        train_out = model(bench.train.x)
    for score in ("mahalanobis", "knn", "min_distance"):
        land = decision_landscape(model, (-6, 6, -6, 6), resolution=7, score=score,
                                  fit_on=(bench.train.x, bench.train.y))
        direct = make_score(score).fit(ModelOutput(train_out.features, train_out.logits), bench.train.y, model)
        with torch.no_grad():
            grid_out = model(torch.tensor(land.grid_points(), dtype=torch.float32))
        assert np.allclose(land.score.ravel(), direct(grid_out), rtol=1e-6, atol=1e-9), score


def test_job_records_a_fitted_score_landscape(tmp_path):
    job = start_training("ce", "toy2d", TrainConfig(epochs=2), tmp_path / "m.pt", evaluate_after=False,
                         landscape_resolution=15, landscape_score="mahalanobis")
    assert job.wait(WAIT_S) and job.status == "done", job.snapshot().message
    snaps = job.snapshot().landscapes
    assert [s.score_name for s in snaps] == ["mahalanobis", "mahalanobis"]
    # Mahalanobis falls away from the training data: the grid corners score below the class centres
    centre_rows = snaps[-1].score[[3, 3, 11, 11], [3, 11, 3, 11]]
    assert snaps[-1].score[0, 0] < centre_rows.min()


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_output_name_never_writes_outside_the_folder(tmp_path, dangling):
    """A name in the folder that is a symbolic link to a file elsewhere: the app refuses it,
    and the library never writes through it (without overwrite it counts as an existing file,
    even dangling; with overwrite the link itself is replaced, not the file it points to)."""
    folder, outside = tmp_path / "ckpts", tmp_path / "elsewhere" / "victim.pt"
    folder.mkdir()
    outside.parent.mkdir()
    if not dangling:
        outside.write_bytes(b"precious")
    link = folder / "link.pt"
    link.symlink_to(outside)
    with pytest.raises(OODCoreError, match="symbolic link"):
        checkpoint_path(folder, "link.pt")
    with pytest.raises(OODCoreError, match="already exists"):
        start_training("ce", "toy2d", TrainConfig(epochs=1), link, evaluate_after=False)
    assert free_path(link) == folder / "link-2.pt"
    job = start_training("ce", "toy2d", TrainConfig(epochs=1), link, overwrite=True, evaluate_after=False)
    assert job.wait(120) and job.status == "done", job.snapshot().message
    assert job.snapshot().saved_path == str(link) and link.is_file() and not link.is_symlink()
    assert (outside.read_bytes() == b"precious") if not dangling else not outside.exists()


def test_job_of_a_fine_tune_recipe_keeps_the_pretrain_stage_out_of_its_curves(tmp_path, monkeypatch):
    import dataclasses

    from ood_core.data import Split
    from ood_core.methods import METHODS

    # the ce recipe with tiny defaults, so oe's implicit pretrain stage is cheap
    monkeypatch.setitem(METHODS, "ce", dataclasses.replace(METHODS["ce"], train_defaults={"epochs": 2, "batch_size": 32}))
    digits = ood_core.load_benchmark("digits")
    small = dataclasses.replace(digits, train=Split(digits.train.x[:64], digits.train.y[:64]))
    cfg = TrainConfig(epochs=3, batch_size=32, seed=0, optimizer="sgd", lr=0.01, schedule="cosine-step")
    job = start_training("oe", small, cfg, tmp_path / "oe.pt", evaluate_after=False)
    assert job.wait(WAIT_S * 3) and job.status == "done", job.snapshot().message
    snap = job.snapshot()
    assert [row["epoch"] for row in snap.history] == [1, 2, 3]  # the fine-tune's epochs only
    assert snap.global_step == snap.total_steps == 3 * 2
    _, meta = load_checkpoint(tmp_path / "oe.pt")
    assert meta["init"]["source"] == "pretrained in this run" and meta["init"]["method"] == "ce"


def test_movr_job_on_toy2d_trains_without_rotation_and_maps_msp_at_the_training_scale(tmp_path):
    # toy2d points are not images: the default rotation loss is left out (one warning), and the
    # landscape's msp is the registry msp at the method's logit_scale T = 32
    from ood_core.train import recommended_config

    # the config the app's form builds: the recipe's, with the user's epochs
    job = start_training("movr", "toy2d", recommended_config("movr", epochs=2), tmp_path / "m.pt",
                         evaluate_after=False, landscape_resolution=9, landscape_score="msp")
    assert job.wait(WAIT_S) and job.status == "done", job.snapshot().message
    land = job.snapshot().landscapes[-1]
    model, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["loss_params"]["rotation"] == 0.1 and meta["train_config"]["weight_decay"] == 1e-3
    with torch.no_grad():
        cos = model.eval()(torch.tensor(land.grid_points(), dtype=torch.float32)).logits.double().numpy()
    a = 32.0 * cos
    e = np.exp(a - a.max(axis=1, keepdims=True))
    np.testing.assert_allclose(land.score.ravel(), (e / e.sum(axis=1, keepdims=True)).max(axis=1), rtol=1e-5,
                               atol=1e-6)
