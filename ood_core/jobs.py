"""Training in a background thread, with progress, cancellation and a safe save.

:func:`start_training` checks everything it can up front (method, dataset, options, the
output file), then runs :func:`ood_core.train.train` in a daemon thread and returns a
:class:`TrainingJob` at once, so the caller (a Streamlit page, a notebook) stays free while
the model trains. The caller polls :meth:`TrainingJob.snapshot` for a consistent copy of
the progress (per-step losses, per-epoch validation metrics, landscape snapshots for 2-D
inputs) and may :meth:`TrainingJob.cancel` at any time, or :meth:`~TrainingJob.pause` it
between epochs, look at the figures, :meth:`~TrainingJob.step_epoch` one epoch at a time and
:meth:`~TrainingJob.resume` (a reset is a cancel and a new start).

Guarantees:

* **Cancel** sets a :class:`threading.Event`; the per-batch progress callback sees it after
  the batch in flight and raises :class:`~ood_core.errors.TrainingCancelled`, so training
  stops within one batch (a final OOD evaluation that is already running finishes first,
  then its result is dropped). A cancelled run saves nothing.
* **Pause, step, resume.** :meth:`TrainingJob.pause` stops the run at the end of the epoch in
  progress, after that epoch's history row and landscape snapshot are recorded (so the
  figures show the paused model), and the training thread waits there with status
  ``"paused"``; :meth:`TrainingJob.step_epoch` lets it train exactly one more epoch and pause
  again; :meth:`TrainingJob.resume` lets it run to the end. The wait only blocks inside the
  per-epoch hook and draws nothing from any random generator, so a run paused and stepped any
  number of times trains and saves exactly the weights of an uninterrupted run with the same
  seed. The last epoch never pauses (there is nothing left to step: the run evaluates and
  saves). A paused run keeps the one-run-at-a-time slot (its model and optimizer live in its
  thread); :meth:`TrainingJob.cancel` ends it at once and saves nothing, and the waiting
  thread is a daemon, so a paused job never keeps the interpreter from exiting.
* **Never lose saved work**: an existing output file is refused at start unless
  ``overwrite=True``. The checkpoint is written only when training has finished, atomically
  (:func:`ood_core.checkpoint.save_checkpoint`); without ``overwrite`` it is linked into
  place with a no-clobber step, and if a file of that name appeared during training the new
  model is saved beside it (``name-2.pt``) rather than over it. A run that fails
  (:class:`~ood_core.errors.TrainingDiverged`, a bad option, any error) saves nothing and
  records a message saying what happened.
* **Modest on the CPU.** The training thread uses ``torch_threads`` intra-op threads (default
  1; only that thread: the rest of the process keeps its own setting, see
  :func:`_use_threads_here`). The
  embedded benchmarks' models are too small to gain from more, and several OpenMP threads slow
  down many times over when the cores are shared with a browser or other work (they wait for
  each other at every operation). The count is stored in the checkpoint's ``train_config``
  (``torch_threads``): results can differ in the last bits between thread counts.
* **One run at a time per process.** Weight initialisation is seeded through torch's
  process-wide random generator, so two runs at once would disturb each other's seeds (and
  share the same cores). A job started while another runs waits with status ``"queued"``;
  it can be cancelled while waiting. This lock is the module's only shared state: there is
  no registry of jobs; whoever starts a job keeps the object (the app keeps it in
  ``st.session_state``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import traceback
import uuid
from pathlib import Path

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .data import Benchmark, load_benchmark
from .errors import OODCoreError, TrainingCancelled
from .fileio import file_name_problem
from .geometry import plane_bounds
from .landscape import DEFAULT_SCORE, Landscape, check_landscape_score, decision_landscape
from .methods import METHODS, Method, get_method, method_score_params
from .runtime import select_device
from .train import Progress, TrainConfig, recommended_config, train

FINISHED = ("done", "cancelled", "failed")  # "queued", "running" and "paused" are not finished
CHECKPOINT_SUFFIX = ".pt"
MAX_LOSS_POINTS = 2000  # per-step losses handed out by snapshot(); longer runs are thinned evenly
LANDSCAPE_MARGIN = 0.05  # the landscape grid covers the training points and OOD sets, widened by 5 %

_ONE_RUN_AT_A_TIME = threading.Lock()


# --------------------------------------------------------------------------- choices and names
def landscape_frame(bench: Benchmark) -> tuple[tuple[float, float, float, float], dict[str, np.ndarray]]:
    """(bounds, points) of a score landscape over a 2-D benchmark: the grid covers the training
    points and every OOD set, widened by :data:`LANDSCAPE_MARGIN`; the points drawn on it are
    the training set by class ({"x": (N, 2), "y": (N,)}, copies)."""
    every = np.concatenate([bench.train.x.numpy()] + [x.numpy() for x in bench.ood.values()])
    return (plane_bounds(every, margin=LANDSCAPE_MARGIN),
            {"x": bench.train.x.numpy().copy(), "y": bench.train.y.numpy().copy()})


def methods_for(bench: Benchmark) -> list[str]:
    """Names of the registered methods that can train on ``bench``: the method's task must be
    the data's, and recipes with auxiliary training outliers (built by cutting up training
    images) need image inputs (C, H, W)."""
    return [name for name, m in METHODS.items() if _method_fits(m, bench)]


def _method_fits(m: Method, bench: Benchmark) -> bool:
    return m.task == bench.task and (m.outliers is None or len(bench.input_shape) == 3)


def default_file_name(method: str, dataset: str) -> str:
    """The suggested checkpoint file name, ``<method>_<dataset>.pt``."""
    return f"{method}_{dataset}{CHECKPOINT_SUFFIX}"




def checkpoint_path(folder: str | Path, file_name: str) -> Path:
    """``folder / file_name`` after checking that ``file_name`` is a plain ``*.pt`` name that
    stays inside ``folder``: no folders (``/``, ``..``), not hidden, no control characters
    (NUL, newline, ...), at most ``fileio.MAX_NAME_BYTES`` bytes, and not an existing symbolic link
    (saving must never write through a link to a file outside ``folder``). Raises
    OODCoreError saying what to type instead."""
    name = (file_name or "").strip()
    if not name or "/" in name or "\\" in name or Path(name).name != name or name in (".", ".."):
        raise OODCoreError(f"output file name {file_name!r} must be a plain file name without folders, "
                           f"e.g. ce_toy2d{CHECKPOINT_SUFFIX}")
    problem = file_name_problem(name)
    if problem:
        raise OODCoreError(f"output file name {file_name[:40]!r} {problem}; use letters, digits, '-', '_' and '.', "
                           f"e.g. ce_toy2d{CHECKPOINT_SUFFIX}")
    path = _check_name(Path(folder) / name)
    if path.is_symlink():
        raise OODCoreError(f"{name!r} in {folder} is a symbolic link (to {os.readlink(path)}); the app does not "
                           f"save through links; choose another name such as {free_path(path).name}")
    return path


def _check_name(path: Path) -> Path:
    if path.suffix != CHECKPOINT_SUFFIX:
        raise OODCoreError(f"checkpoint file name {path.name!r} must end in {CHECKPOINT_SUFFIX} (the app lists "
                           f"*{CHECKPOINT_SUFFIX} files); pass e.g. {path.stem or 'model'}{CHECKPOINT_SUFFIX}")
    if path.name.startswith("."):
        raise OODCoreError(f"checkpoint file name {path.name!r} starts with a dot: hidden files are not listed; "
                           f"pass e.g. {path.name.lstrip('.') or 'model.pt'}")
    return path


def free_path(path: str | Path) -> Path:
    """``path`` if no file has that name, else the first free ``stem-2.pt``, ``stem-3.pt``, ..."""
    path = Path(path)
    candidate, k = path, 2
    while os.path.lexists(candidate):  # a dangling symbolic link takes its name too
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate


def check_output_path(out_path: str | Path, overwrite: bool = False) -> Path:
    """The absolute output path, after refusing a bad name, a folder, or (unless
    ``overwrite``) an existing file; the error names what to pass instead.

    Only the folder part is resolved, never the file name: when the name is a symbolic
    link, the save replaces the link itself (with ``overwrite``) and never writes to the
    file it points to; without ``overwrite`` a link, even a dangling one, counts as an
    existing file."""
    raw = str(out_path)
    if "\0" in raw:
        raise OODCoreError(f"output path {raw!r} contains a NUL character; pass a plain file path")
    path = _check_name(Path(out_path).expanduser())
    path = path.parent.resolve() / path.name
    if path.is_dir() and not path.is_symlink():
        raise OODCoreError(f"{path} is a folder; pass a checkpoint file path ending in {CHECKPOINT_SUFFIX}")
    if path.parent.exists() and not path.parent.is_dir():
        raise OODCoreError(f"{path.parent} is a file, not a folder; pass a path inside a folder")
    if os.path.lexists(path) and not overwrite:
        raise OODCoreError(f"{path} already exists and would be replaced; pass overwrite=True (in the app: tick "
                           f"'Overwrite') to replace it, or choose another file name such as {free_path(path).name}")
    return path


def _use_threads_here(n: int) -> int:
    """Make the calling thread use ``n`` torch intra-op threads and leave every other thread as
    it was; returns the count torch now reports here.

    ``torch.set_num_threads`` sets the calling thread's OpenMP count *and* a process-wide
    default that threads started later pick up (a Streamlit server starts one per script run).
    The default is put back at once from a short-lived helper thread, whose own setting ends
    with it, so only this thread keeps ``n``.
    """
    default_here = torch.get_num_threads()  # this new thread started with the process-wide default
    torch.set_num_threads(n)
    restore = threading.Thread(target=torch.set_num_threads, args=(default_here,), name="ood-restore-threads")
    restore.start()
    restore.join()
    return torch.get_num_threads()


# --------------------------------------------------------------------------- snapshot
@dataclasses.dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state at one moment (safe to read while training goes on).

    ``loss_steps`` are 1-based global step numbers (epoch e, step s -> (e-1)*steps + s) and
    ``losses`` the training loss of those steps (thinned evenly, the last step always kept,
    when the run has more than ``MAX_LOSS_POINTS`` steps). ``history`` has one row per
    finished epoch (``epoch``, ``train_loss`` = sample-weighted mean over the epoch and the
    ``val_*`` metrics); once the run is done it is the history stored in the checkpoint.
    ``landscapes`` has one :class:`~ood_core.landscape.Landscape` per finished epoch (2-D
    inputs with a landscape resolution only). ``metrics`` is the saved model's OOD report;
    ``threads`` the torch intra-op threads of the run (None until it starts).

    ``paused`` is True while the run waits between epochs (``status`` is then ``"paused"`` and
    ``epoch`` the last finished epoch); ``pause_requested`` is True from a
    :meth:`TrainingJob.pause` (or a :meth:`TrainingJob.step_epoch`) until the run pauses at the
    end of the epoch in progress (False again once paused, resumed, or past the last epoch).
    ``elapsed_s`` is the time since the run left the queue, without the time spent paused
    (training, landscape snapshots, slow-motion waits, evaluation and saving count; waiting in
    the queue or paused does not), up to the end of the run.
    """

    job_id: str
    method: str
    dataset: str
    status: str
    paused: bool
    pause_requested: bool
    phase: str
    device: str
    threads: int | None
    out_path: str
    epoch: int
    epochs: int
    step: int
    steps: int
    global_step: int
    total_steps: int
    loss_steps: list[int]
    losses: list[float]
    history: list[dict]
    landscapes: list[Landscape]
    error: str | None
    message: str
    saved_path: str | None
    metrics: dict | None
    elapsed_s: float

    @property
    def fraction(self) -> float:
        """Share of the training steps done, 0..1 (1 once the run is done)."""
        if self.status == "done":
            return 1.0
        return self.global_step / self.total_steps if self.total_steps else 0.0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _thin(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread items of ``n``, first and last included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


# --------------------------------------------------------------------------- the job
class TrainingJob:
    """One training run in a background thread. Create it with :func:`start_training`."""

    def __init__(self, method: str, bench: Benchmark, config: TrainConfig, out_path: Path, overwrite: bool,
                 landscape_resolution: int | None, landscape_score: str, evaluate_after: bool,
                 min_epoch_seconds: float, torch_threads: int | None):
        self.job_id = uuid.uuid4().hex[:8]
        self.method = method
        self.bench = bench
        self.config = config
        self.out_path = out_path
        self.overwrite = overwrite
        self.evaluate_after = evaluate_after
        self.min_epoch_seconds = float(min_epoch_seconds)
        self.torch_threads = torch_threads
        self.device = str(select_device(config.device))
        self.landscape_resolution = landscape_resolution
        self.landscape_score = landscape_score
        # The 2-D points drawn under the landscape (training set, by class) and the grid's extent.
        self.plane_points: dict[str, np.ndarray] | None = None
        self.landscape_bounds: tuple[float, float, float, float] | None = None
        if landscape_resolution is not None:
            self.landscape_bounds, self.plane_points = landscape_frame(bench)

        self._cancel = threading.Event()
        self._lock = threading.Lock()
        # Wakes the training thread from a pause or a slow-motion wait: notified (under
        # self._lock) by pause(), resume(), step_epoch() and cancel().
        self._wake = threading.Condition(self._lock)
        self._pause_requested = False  # pause at the end of the epoch in progress
        self._paused = False  # the training thread is waiting in _on_epoch_end
        self._paused_since = 0.0
        self._paused_total = 0.0  # seconds spent paused so far (left out of elapsed_s)
        self._training_over = False  # the last epoch has ended: nothing left to pause before
        self._n_train = len(bench.train)
        self._steps = math.ceil(self._n_train / config.batch_size)
        self._status = "queued"
        self._phase = "waiting for another training run in this process to finish"
        self._epoch = self._step = self._global_step = 0
        self._losses: list[float] = []
        self._history: list[dict] = []
        self._landscapes: list[Landscape] = []
        self._epoch_total = 0.0
        self._epoch_count = 0
        self._epoch_started = 0.0
        self._error: str | None = None
        self._error_detail: str | None = None
        self._message = "queued"
        self._saved_path: Path | None = None
        self._metrics: dict | None = None
        self._started: float | None = None
        self._threads: int | None = None
        self._ended: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"ood-train-{self.job_id}", daemon=True)

    # ----------------------------------------------------------------- public
    @property
    def status(self) -> str:
        """"queued", "running", "paused" (waiting between epochs, see :meth:`pause`), "done",
        "cancelled" or "failed"; only the last three are :data:`FINISHED`."""
        with self._lock:
            return self._status

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def error_detail(self) -> str | None:
        """The traceback of an unexpected (non-OODCoreError) failure, for bug reports."""
        with self._lock:
            return self._error_detail

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called (the run may still be finishing its batch)."""
        return self._cancel.is_set()

    @property
    def paused(self) -> bool:
        """True while the run waits between epochs (status "paused")."""
        with self._lock:
            return self._paused

    def cancel(self) -> None:
        """Ask the run to stop; it does within one batch (or at once while queued, paused or
        in a slow-motion wait). Nothing is saved."""
        self._cancel.set()
        with self._lock:  # wake a paused or slow-motion wait so that it sees the request
            self._wake.notify_all()

    def pause(self) -> None:
        """Ask the run to pause at the end of the epoch in progress, once that epoch's history row
        and landscape snapshot are recorded (during a slow-motion wait: at once); it then waits
        with status "paused" until :meth:`resume`, :meth:`step_epoch` or :meth:`cancel`. A job
        still queued (or pretraining the starting model of a fine-tune recipe) pauses after its
        first epoch. No effect when already paused, after the last epoch has ended (the run
        goes on to evaluate and save) or once finished."""
        with self._lock:
            if self._paused or self._training_over or self._status in FINISHED:
                return
            self._pause_requested = True
            self._wake.notify_all()  # cut a slow-motion wait short

    def resume(self) -> None:
        """Let a paused run go on to the end (or the next :meth:`pause`); also withdraws a pause
        requested but not yet reached. No effect otherwise."""
        with self._lock:
            self._pause_requested = False
            if self._paused:
                self._end_pause_locked()

    def step_epoch(self) -> None:
        """While paused: train exactly one more epoch, then pause again (after the last epoch the
        run evaluates and saves instead). While running: the same as :meth:`pause` (a step
        already in progress is not extended). The stepped epoch skips the slow-motion wait, so
        each step shows at once."""
        with self._lock:
            if self._training_over or self._status in FINISHED:
                return
            self._pause_requested = True
            if self._paused:
                self._end_pause_locked()
            else:
                self._wake.notify_all()

    def _close_pause_locked(self) -> None:
        """End an open pause's bookkeeping (caller holds self._lock): count its time, clear it."""
        if self._paused:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused = False

    def _end_pause_locked(self) -> None:
        """Leave the pause (caller holds self._lock): count the paused time, mark the run
        running, wake the training thread."""
        self._close_pause_locked()
        self._status, self._phase = "running", "training"
        self._message = f"resumed after epoch {self._epoch}/{self.config.epochs}"
        self._wake.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds (None = until finished); True when the job has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self, max_loss_points: int = MAX_LOSS_POINTS) -> JobSnapshot:
        """A consistent copy of the progress (see :class:`JobSnapshot`)."""
        with self._lock:
            keep = _thin(len(self._losses), max(2, int(max_loss_points)))
            # the clock stands still while paused (so elapsed_s is the same number until resumed)
            now = self._ended if self._ended is not None else self._paused_since if self._paused else time.monotonic()
            return JobSnapshot(
                job_id=self.job_id, method=self.method, dataset=self.bench.name, status=self._status,
                paused=self._paused, pause_requested=self._pause_requested, phase=self._phase,
                device=self.device, threads=self._threads, out_path=str(self.out_path),
                epoch=self._epoch, epochs=self.config.epochs, step=self._step, steps=self._steps,
                global_step=self._global_step, total_steps=self._steps * self.config.epochs,
                loss_steps=[int(i) + 1 for i in keep], losses=[self._losses[i] for i in keep],
                history=[dict(row) for row in self._history], landscapes=list(self._landscapes),
                error=self._error, message=self._message,
                saved_path=str(self._saved_path) if self._saved_path else None,
                metrics=self._metrics,
                elapsed_s=(now - self._started - self._paused_total) if self._started is not None else 0.0)

    # ----------------------------------------------------------------- thread side
    def _set(self, **fields) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self, f"_{k}", v)

    def _finish(self, **fields) -> None:
        """Record the end of the run (status done, cancelled or failed): a pause still open (a
        cancel while paused) is closed first, so that ``paused`` never outlives the run."""
        with self._lock:
            self._close_pause_locked()
            self._pause_requested = False
            for k, v in fields.items():
                setattr(self, f"_{k}", v)

    def _on_progress(self, p: Progress) -> None:
        """Per-batch callback from train(): record the step, then honour a cancel request."""
        if p.stage == "pretrain":  # a fine-tune recipe training its starting model: the curves are the fine-tune's
            with self._lock:
                self._message = f"pretraining: epoch {p.epoch}/{p.epochs}, step {p.step}/{p.steps}, loss {p.loss:.4f}"
            if self._cancel.is_set():
                raise TrainingCancelled(f"training cancelled while pretraining (epoch {p.epoch}); nothing was saved")
            return
        with self._lock:
            self._epoch, self._step = p.epoch, p.step
            self._global_step = (p.epoch - 1) * p.steps + p.step
            self._losses.append(p.loss)
            # the same sample-weighted epoch mean train() keeps for its history
            batch = min(self.config.batch_size, self._n_train - (p.step - 1) * self.config.batch_size)
            if p.step == 1:
                self._epoch_total, self._epoch_count = 0.0, 0
            self._epoch_total += p.loss * batch
            self._epoch_count += batch
            if p.val is not None:
                self._history.append({"epoch": p.epoch, "train_loss": self._epoch_total / self._epoch_count,
                                      **{f"val_{k}": v for k, v in p.val.items()}})
                if p.epoch == p.epochs:
                    self._phase = "evaluating OOD detection" if self.evaluate_after else "saving"
            self._message = f"epoch {p.epoch}/{p.epochs}, step {p.step}/{p.steps}, loss {p.loss:.4f}"
        if self._cancel.is_set():
            raise TrainingCancelled(f"training cancelled at epoch {p.epoch}, step {p.step}; nothing was saved")

    def _on_epoch_end(self, epoch: int, model) -> None:
        """After each epoch: the landscape snapshot (2-D inputs), then the optional slow-motion
        wait, then a requested pause (see :meth:`pause`). The history row of the epoch is
        already recorded (by its last batch's progress call), so a pause shows it. Waiting
        here touches neither the model nor any random generator: the weights do not depend on it.
        """
        if self._cancel.is_set():
            raise TrainingCancelled(f"training cancelled after epoch {epoch}; nothing was saved")
        if self.landscape_resolution is not None:
            snap = decision_landscape(model, self.landscape_bounds, self.landscape_resolution,
                                      score=self.landscape_score, epoch=epoch,
                                      fit_on=(self.bench.train.x, self.bench.train.y),
                                      score_params=method_score_params(self.method).get(self.landscape_score))
            with self._lock:
                self._landscapes.append(snap)
        last = epoch >= self.config.epochs
        with self._lock:
            if self.min_epoch_seconds > 0 and not last:
                # slow motion: wait out the epoch's minimum length, unless a cancel or a pause
                # request comes first (the pause then begins at once)
                deadline = self._epoch_started + self.min_epoch_seconds
                while not (self._cancel.is_set() or self._pause_requested):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            if last:
                self._training_over = True
                self._pause_requested = False
            elif self._pause_requested and not self._cancel.is_set():
                self._pause_requested = False
                self._paused, self._paused_since = True, time.monotonic()
                self._status, self._phase = "paused", "paused"
                self._message = (f"paused after epoch {epoch}/{self.config.epochs}: resume, step one epoch "
                                 f"or cancel")
                while self._paused and not self._cancel.is_set():
                    self._wake.wait()  # woken by resume(), step_epoch() (-> _end_pause_locked) or cancel()
        if self._cancel.is_set():
            raise TrainingCancelled(f"training cancelled after epoch {epoch}; nothing was saved")
        self._epoch_started = time.monotonic()

    def _run(self) -> None:
        acquired = False
        try:
            while not (acquired := _ONE_RUN_AT_A_TIME.acquire(timeout=0.1)):
                if self._cancel.is_set():
                    raise TrainingCancelled("training cancelled while waiting for another run; nothing was saved")
            if self._cancel.is_set():
                raise TrainingCancelled("training cancelled before it started; nothing was saved")
            threads_used = _use_threads_here(self.torch_threads) if self.torch_threads else torch.get_num_threads()
            self._epoch_started = time.monotonic()
            self._set(status="running", phase="training", started=self._epoch_started, threads=threads_used,
                      message="starting")
            result = train(self.method, self.bench, self.config, progress=self._on_progress,
                           evaluate_after=self.evaluate_after, epoch_end=self._on_epoch_end)
            if self._cancel.is_set():
                raise TrainingCancelled("training cancelled during the final evaluation; nothing was saved")
            self._set(phase="saving")
            result.meta["train_config"]["torch_threads"] = threads_used
            saved, note = self._save(result)
            self._finish(status="done", phase="done", saved_path=saved, history=[dict(r) for r in result.history],
                         metrics=result.meta.get("metrics"), message=f"saved {saved}" + (f" ({note})" if note else ""))
        except TrainingCancelled as e:
            self._finish(status="cancelled", phase="cancelled", message=str(e))
        except OODCoreError as e:
            self._finish(status="failed", phase="failed", error=str(e), message=f"failed: {e}")
        except Exception as e:  # a bug: keep the traceback for the report, say so in one line
            self._finish(status="failed", phase="failed", error=f"unexpected error {type(e).__name__}: {e}",
                         error_detail=traceback.format_exc(), message=f"failed: {type(e).__name__}: {e}")
        finally:
            if acquired:
                _ONE_RUN_AT_A_TIME.release()
            self._set(ended=time.monotonic() if self._started is not None else None)

    def _save(self, result) -> tuple[Path, str | None]:
        """Write the checkpoint; returns ``(path, note)``. Never replaces a file unless
        ``overwrite`` was given: the archive is written (atomically) under a hidden name in
        the target folder, then hard-linked to the target name, which fails instead of
        replacing a file that appeared meanwhile; the next free ``name-k.pt`` is used then."""
        if self.overwrite:
            if self.out_path.is_symlink():  # the app writes into its folder only: the link is replaced, not its target
                self.out_path.unlink()
            return save_checkpoint(self.out_path, result.model, result.meta), None
        pending = self.out_path.with_name(f".{self.out_path.stem}.{self.job_id}.pending{CHECKPOINT_SUFFIX}")
        save_checkpoint(pending, result.model, result.meta)
        try:
            target = self.out_path
            for _ in range(1000):
                try:
                    os.link(pending, target)
                    break
                except FileExistsError:
                    target = free_path(self.out_path)
                except OSError:  # no hard links on this file system: check, then rename
                    target = free_path(self.out_path)
                    os.replace(pending, target)
                    break
            else:
                raise OODCoreError(f"could not find a free file name next to {self.out_path}")
        finally:
            pending.unlink(missing_ok=True)
        note = None if target == self.out_path else f"{self.out_path.name} appeared during training; kept it"
        return target, note


def start_training(method: str, dataset: str | Benchmark, config: TrainConfig | None = None,
                   out_path: str | Path = "model.pt", overwrite: bool = False,
                   landscape_resolution: int | None = None, landscape_score: str = DEFAULT_SCORE,
                   evaluate_after: bool = True, min_epoch_seconds: float = 0.0,
                   torch_threads: int | None = 1, data_root=None) -> TrainingJob:
    """Check the request, then train ``method`` on ``dataset`` in a background thread.

    ``config`` defaults to :func:`ood_core.train.recommended_config` of the method (it is
    copied; changing it afterwards does not affect the run). ``out_path`` must end in
    ``.pt``; an existing file is refused unless ``overwrite``. ``landscape_resolution``
    (2-D inputs only, e.g. 60) records a :class:`~ood_core.landscape.Landscape` of score
    ``landscape_score`` after every epoch (a score that learns from data, such as
    ``mahalanobis``, is fitted on the training split each time). ``min_epoch_seconds`` > 0 waits after each epoch
    until it has lasted that long (a slow-motion view of a fast run; the weights are the
    same; a :meth:`TrainingJob.pause` during the wait pauses at once). ``torch_threads``:
    intra-op threads of the training thread (None = torch's default here; see the module
    docstring for why 1). Raises OODCoreError for a bad request; what goes wrong later is in
    the job's status and snapshot. ``data_root``: the folder of a
    real-data preset's files when ``dataset`` is a name (see :func:`ood_core.data.load_benchmark`).
    """
    m = get_method(method)
    bench = dataset if isinstance(dataset, Benchmark) else load_benchmark(dataset, data_root=data_root)
    if not _method_fits(m, bench):
        fitting = ", ".join(methods_for(bench)) or "none"
        raise OODCoreError(f"method {method!r} ({m.task}{', needs image inputs' if m.outliers else ''}) cannot "
                           f"train on {bench.name} ({bench.task}, inputs {tuple(bench.input_shape)}); "
                           f"choose one of: {fitting}")
    cfg = dataclasses.replace(config) if config is not None else recommended_config(method)
    cfg.validate()
    select_device(cfg.device)  # an unavailable device is refused now, not in the thread
    if landscape_resolution is not None:
        if tuple(bench.input_shape) != (2,):
            raise OODCoreError(f"a decision landscape needs 2-D inputs (toy2d); {bench.name} has inputs "
                               f"{tuple(bench.input_shape)}: pass landscape_resolution=None")
        if int(landscape_resolution) < 2:
            raise OODCoreError(f"landscape_resolution must be >= 2 grid points per axis, got {landscape_resolution}")
        check_landscape_score(landscape_score)
    if min_epoch_seconds < 0 or not math.isfinite(min_epoch_seconds):
        raise OODCoreError(f"min_epoch_seconds must be >= 0, got {min_epoch_seconds}")
    if torch_threads is not None and int(torch_threads) < 1:
        raise OODCoreError(f"torch_threads must be >= 1 (or None for torch's default), got {torch_threads}")
    path = check_output_path(out_path, overwrite)
    job = TrainingJob(method, bench, cfg, path, overwrite,
                      None if landscape_resolution is None else int(landscape_resolution), landscape_score,
                      evaluate_after, min_epoch_seconds, None if torch_threads is None else int(torch_threads))
    job._thread.start()
    return job
