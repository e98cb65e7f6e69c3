"""The one training loop, used by the CLI, the benchmarks and the app.

Seeded and reproducible (same seed, same device -> same weights), device chosen
automatically (cuda > mps > cpu) unless given, a progress callback after every batch, and
a clean stop with :class:`TrainingDiverged` the moment the loss is NaN or infinite.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) the same loop trains with
DistributedDataParallel, each rank taking its share of every global batch; see
:mod:`ood_core.distributed` for how that matches single-process training.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import math
import os
import traceback
from typing import Callable, NamedTuple

import torch

from . import distributed as ddp
from .data import Benchmark, load_benchmark, training_outliers
from .errors import CheckpointError, OODCoreError, TrainingDiverged
from .evaluate import evaluate, extract_outputs, id_metrics
from .geometry import model_geometry_snapshot
from .methods import LossContext, applicable_scores, get_method, method_score_params
from .models import OODModel, build_model, default_arch
from .checks import MAX_EPOCHS, finite, seed as check_seed, whole
from .runtime import library_versions, seed_everything, select_device


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SCHEDULES = ("cosine-epoch", "cosine-step")
MAX_WORKERS = 64  # DataLoader worker processes: more is a typo that would fork the machine to a halt


def cosine_lr(t: int, total: int, lr: float, lr_min: float = 0.0) -> float:
    """Cosine annealing: lr_min + (lr - lr_min) * (1 + cos(pi * t / total)) / 2, for step t of total.

    lr at t = 0, lr_min at t = total (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts).
    """
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / total)) / 2


@dataclasses.dataclass
class TrainConfig:
    """Optimiser settings. Defaults suit the embedded benchmark on a CPU."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9, nesterov)
    # Cosine annealing from lr to lr_min: "cosine-epoch" steps once per epoch (T = epochs, as
    # before), "cosine-step" once per optimiser step (T = epochs x steps per epoch, the fine-tune
    # schedule of the Separation reference code); lr at step t = cosine_lr(t, T, lr, lr_min).
    schedule: str = "cosine-epoch"
    lr_min: float = 0.0
    seed: int = 0
    device: str = "auto"
    # Record neural-collapse metrics (multiclass) and the Jacobian-norm difference on a small
    # probe every this many epochs (and after the last one) into the history; 0 = off.
    geometry_every: int = 0
    probe_size: int = 128
    # GPU input path. Off by default, so the default run (and its weights) stays as it was.
    # amp: mixed precision for the forward pass and the loss, "off", "bf16" (CPU or CUDA) or
    # "fp16" (CUDA only, with a gradient scaler against underflow). channels_last: NHWC memory
    # layout for image models, which tensor cores prefer. On CUDA each batch is also copied from
    # pinned memory with non_blocking=True, so the copy overlaps the previous step.
    amp: str = "off"
    channels_last: bool = False
    # workers: DataLoader worker processes that gather the batches (pinned by a loader thread on
    # CUDA) while the main process trains; 0 = in the main process, as before. The shuffle and the
    # outlier batches stay in the main process, so the weights do not depend on it. The workers
    # start from a fork server (see _worker_context), so a script that sets it needs the usual
    # ``if __name__ == "__main__":`` guard; the training set is shared with them via /dev/shm.
    # (Streamlit makes the app script ``__main__``, so each worker would re-run it: the app trains
    # with workers=0.)
    workers: int = 0

    def validate(self) -> None:
        """Refuse (OODCoreError) any option that is not a number of the right kind and range:
        NaN/Inf, booleans, text, fractions where a count is meant, seeds outside 0..2**32-1."""
        self.epochs = whole(self.epochs, "epochs", 1, MAX_EPOCHS)
        self.batch_size = whole(self.batch_size, "batch size", 1)
        self.lr = finite(self.lr, "learning rate", positive=True)
        self.weight_decay = finite(self.weight_decay, "weight decay", 0)
        if self.schedule not in SCHEDULES:
            raise OODCoreError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        self.lr_min = finite(self.lr_min, f"lr_min (the final learning rate, at most lr = {self.lr:g})", 0, self.lr)
        if self.optimizer not in ("adam", "sgd"):
            raise OODCoreError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        self.seed = check_seed(self.seed)
        self.geometry_every = whole(self.geometry_every, "geometry_every (0 = off)", 0)
        self.probe_size = whole(self.probe_size, "probe_size", 2)
        if self.amp not in AMP_DTYPES:
            raise OODCoreError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        self.workers = whole(self.workers, "workers (0 = load batches in the main process)", 0, MAX_WORKERS)


def recommended_config(method: str, **overrides) -> TrainConfig:
    """TrainConfig for ``method``: class defaults < the method's ``train_defaults`` < ``overrides``.

    ``overrides`` whose value is None are ignored (so CLI options left unset fall through).
    """
    m = get_method(method)
    values = {**m.train_defaults, **{k: v for k, v in overrides.items() if v is not None}}
    bad = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if bad:
        raise OODCoreError(f"unknown training option(s) {sorted(bad)}")
    return TrainConfig(**values)


class Progress(NamedTuple):
    """Passed to the progress callback after every batch.

    ``val`` is filled (a dict of validation metrics) on the last batch of each epoch only.
    ``stage`` is "pretrain" while a method with ``Method.pretrain`` trains its starting model
    (epochs and steps then count that run), "train" for the method's own run. ``lr`` is the
    learning rate this step used.
    """

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    loss: float
    val: dict | None
    stage: str = "train"
    lr: float | None = None


@dataclasses.dataclass
class TrainResult:
    model: OODModel
    meta: dict  # ready for save_checkpoint
    history: list[dict]
    rank: int = 0  # under torchrun: only rank 0 holds metrics and should write the checkpoint


def _optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _geometry_probe(bench: Benchmark, cfg: TrainConfig) -> dict:
    """Fixed samples for the per-epoch geometry record, drawn with their own generator (so
    switching the record on does not change the training run): up to 8 x ``probe_size``
    training samples for the NC metrics, ``probe_size`` validation samples (known) and
    ``probe_size`` samples spread over the benchmark's OOD sets (unknown) for the JND.

    The OOD samples only measure; nothing in training or model selection reads them.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 7919)

    def pick(x, n):
        return x[torch.randperm(x.shape[0], generator=gen)[:n]]

    n_train = min(bench.train.x.shape[0], 8 * cfg.probe_size)
    idx = torch.randperm(bench.train.x.shape[0], generator=gen)[:n_train]
    per_set = max(1, cfg.probe_size // max(1, len(bench.ood)))
    unknown = [pick(x, per_set) for x in bench.ood.values()]
    return {"x_train": bench.train.x[idx], "y_train": bench.train.y[idx],
            "x_known": pick(bench.val.x, cfg.probe_size),
            "x_unknown": torch.cat(unknown) if unknown else None}


class _IndexedPairs(torch.utils.data.Dataset):
    """``dataset[local]`` is the whole batch ``(x[local], y[local])`` for an index tensor ``local``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, local: torch.Tensor):
        return self.x[local], self.y[local]


class _EpochBatches(torch.utils.data.Sampler):
    """Yields the index tensors of the current epoch, which the main process sets (iterated there)."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _BatchLoader:
    """``workers`` processes that gather the batches the main process chose, in its order.

    The workers draw nothing: the shuffle comes from the training generator in the main process,
    and the loader's own seed (for worker seeding) from a private generator, not torch's global one.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, workers: int, device: torch.device):
        self._batches = _EpochBatches()
        self._loader = torch.utils.data.DataLoader(
            _IndexedPairs(x, y), batch_size=None, sampler=self._batches, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=True,  # start the workers once per run
            # forkserver, not fork (unsafe in the app's multi-threaded server) nor spawn (imports torch every run)
            multiprocessing_context=_worker_context(), generator=torch.Generator().manual_seed(0))
        self._iter = None

    def epoch(self, batches: list[torch.Tensor]):
        """An iterator over ``(x[local], y[local])`` for each ``local`` in ``batches``."""
        self._batches.batches = batches
        self._iter = iter(self._loader)
        return self._iter

    def close(self) -> None:
        """Stop the worker processes now (also when training stopped mid-epoch)."""
        it, self._iter, self._loader = self._iter, None, None
        if it is not None and hasattr(it, "_shutdown_workers"):  # otherwise they stop when it is collected
            it._shutdown_workers()


def _worker_context():
    """Where the workers come from: a fork server that has imported torch and this module (once per
    process, ~1 s), so later runs start their workers in ~0.05 s where spawn takes 1-2 s every run
    (measured on 2 CPU cores). Not plain fork: the app trains in a thread of a multi-threaded server,
    and forking a process with other threads (or with CUDA up) can deadlock or break the child."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    preload = list(getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", ["__main__"]))
    if __name__ not in preload:  # only read when the server starts; keeps whatever was asked before
        ctx.set_forkserver_preload([*preload, __name__])
    return ctx


def train(method: str = "ce", dataset: str | Benchmark = "digits", config: TrainConfig | None = None,
          known=None, progress: Callable[[Progress], None] | None = None, model_params: dict | None = None,
          loss_params: dict | None = None, evaluate_after: bool = True,
          epoch_end: Callable[[int, OODModel], None] | None = None, checkpoint_every: int = 0,
          checkpoint: Callable[[OODModel, dict], None] | None = None, init=None, data_root=None,
          download: bool | None = None) -> TrainResult:
    """Train ``method`` on ``dataset`` and return the model with its checkpoint metadata.

    ``model_params`` override the model spec (``arch``, ``feature_dim``, ...) and
    ``loss_params`` the method's loss defaults (e.g. ``{"T": 32, "m": 0.5}``). With
    ``evaluate_after`` the OOD report of every score that applies is stored in
    ``meta["metrics"]``; a score that cannot be fitted here (e.g. ViM or KNN on too few
    training images) is left out and named in ``meta["metrics"]["skipped_scores"]``.

    ``epoch_end(epoch, model)`` is called after every epoch (after the learning-rate step),
    e.g. to record a snapshot of the model's decisions. It must leave the model as it found
    it (parameters, buffers, train/eval mode) and draw nothing from torch's global random
    generator; then the trained weights are the same with or without it.

    ``checkpoint(model, meta)`` is called after every ``checkpoint_every`` completed epochs
    (not after the last one: the caller saves the finished model) with the metadata of a
    checkpoint of the model as it is now: the final metadata without ``metrics`` (no OOD
    evaluation, to keep it cheap) and with ``meta["partial"] = {"epochs_done": k, "epochs": total}``.
    E.g. ``checkpoint=lambda model, meta: save_checkpoint(path, model, meta)`` keeps the last
    good state on disk; the weights do not depend on it. Before the call the weights are
    checked to be finite (:class:`TrainingDiverged` otherwise), so a saved state is usable.

    ``init`` is the starting point: the weights of a trained model (an :class:`OODModel`, a
    :class:`TrainResult`, a state dict, or a checkpoint path) instead of a random initialisation.
    Its model spec must equal the one this run builds, and for a checkpoint or a TrainResult its
    dataset (name, known classes, split seed) must be this benchmark's. A method with
    ``Method.pretrain`` (oe, separation: "ce") and no ``init`` first trains that method on the
    same benchmark (its own recommended config with this run's seed, device, amp, channels_last
    and workers; same ``model_params``; no OOD evaluation) and fine-tunes from it, so
    ``train(m, init=train(pre, ...))`` with the same seed gives the same weights as
    ``train(m)``. ``progress`` sees both runs (``Progress.stage``); ``epoch_end`` and
    ``checkpoint`` only the fine-tune. ``meta["init"]`` records the starting point: ``source``
    ("model", "state_dict", "checkpoint" or "pretrained in this run"), ``method`` and ``seed``
    where known, ``path`` of a checkpoint, ``weights`` (the
    :func:`ood_core.feature_cache.model_fingerprint` of the starting model) and, for an
    implicit pretrain, its ``train_config`` and ``final`` history row.

    ``data_root`` and ``download``: where a real-data preset's files are and whether missing
    ones may be fetched, when ``dataset`` is a name (None: ``$OOD_DATA_ROOT`` /
    ``$OOD_DATA_DOWNLOAD``; see :func:`ood_core.data.load_benchmark`); embedded datasets ignore them.

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; training is data-parallel
    (:mod:`ood_core.distributed`), while validation, ``progress``, ``epoch_end`` and
    ``evaluate_after`` run on rank 0 only. Every rank returns the trained (unwrapped) model;
    ``result.rank`` says which one should save it. The process group is destroyed on return
    if this call created it.
    """
    cfg = config or TrainConfig()
    cfg.validate()
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise OODCoreError(f"checkpoint_every must be a whole number of epochs >= 0 (0 = off), got {checkpoint_every!r}")
    if checkpoint_every and checkpoint is None:
        raise OODCoreError("checkpoint_every needs a checkpoint(model, meta) callback that saves the model")
    m = get_method(method)
    bench = dataset if isinstance(dataset, Benchmark) else load_benchmark(
        dataset, known=known, data_root=data_root, download=download)
    if bench.task != m.task:
        raise OODCoreError(f"method {method!r} is for {m.task} data but dataset {bench.name!r} is {bench.task}")
    start = _resolve_init(init, bench) if init is not None else None  # before any training: a bad init fails fast
    pre = get_method(m.pretrain) if start is None and m.pretrain is not None else None
    if pre is not None and pre.task != m.task:
        raise OODCoreError(f"method {m.name!r} pretrains with {pre.name!r}, which is for {pre.task} data")
    device = select_device(cfg.device)
    dctx = ddp.DistContext()
    if ddp.env_world_size() > 1:
        dctx, device = ddp.distributed_context(device)
    try:
        if pre is not None:
            start = _pretrain(pre, m, bench, cfg, device, dctx, progress, model_params)
        return _train(m, bench, cfg, device, dctx, progress, model_params, loss_params, evaluate_after, epoch_end,
                      checkpoint_every if checkpoint is not None else 0, checkpoint, start=start)
    except BaseException as e:
        if dctx.enabled:
            # The traceback's frames still hold the DDP-wrapped model; destroying the process group
            # under it made a rank abort at exit now and then. Release it first.
            traceback.clear_frames(e.__traceback__)
            gc.collect()
        raise
    finally:
        ddp.shutdown(dctx)


# Execution settings a pretrain stage takes from the caller's config; everything else (epochs,
# optimiser, schedule) is the pretrain method's own recipe.
PRETRAIN_INHERITS = ("seed", "device", "amp", "channels_last", "workers")


@dataclasses.dataclass
class _Start:
    """Where a run starts: weights to load, the spec they belong to (None: unknown) and the record for meta."""

    state_dict: dict
    spec: dict | None
    info: dict


def _resolve_init(init, bench: Benchmark) -> _Start:
    """Read ``train(init=...)``: a model, a TrainResult, a state dict or a checkpoint path."""
    from .checkpoint import load_checkpoint

    meta = None
    if isinstance(init, TrainResult):
        model, meta, info = init.model, init.meta, {"source": "model"}
    elif isinstance(init, OODModel):
        model, info = init, {"source": "model"}
    elif isinstance(init, (str, os.PathLike)):
        try:
            model, meta = load_checkpoint(init)  # weights-only loader: a checkpoint cannot run code
        except CheckpointError as e:
            raise CheckpointError(f"init: {e}") from None
        info = {"source": "checkpoint", "path": str(init)}
        if meta.get("partial"):
            p = meta["partial"]
            raise OODCoreError(f"init {init}: a partial checkpoint (epoch {p.get('epochs_done')} of "
                               f"{p.get('epochs')}); pass the finished one")
    elif isinstance(init, dict) and init and all(isinstance(v, torch.Tensor) for v in init.values()):
        return _Start(dict(init), None, {"source": "state_dict"})
    else:
        raise OODCoreError(f"init must be a trained OODModel, a TrainResult, a state dict or a checkpoint path, "
                           f"got {type(init).__name__}")
    if meta is not None:
        ds = meta.get("dataset") or {}
        want = bench.spec()
        for key in ("name", "known", "split_seed"):
            if ds.get(key) != want[key]:
                raise OODCoreError(f"init was trained on {ds.get('name')} (known {ds.get('known')}, split seed "
                                   f"{ds.get('split_seed')}), not on this benchmark {want['name']} (known "
                                   f"{want['known']}, split seed {want['split_seed']}); pass a model of this benchmark")
        info.update(method=meta.get("method"), seed=(meta.get("train_config") or {}).get("seed"))
    return _Start({k: v.detach() for k, v in model.state_dict().items()}, dict(model.spec), info)


def _load_start(model: OODModel, start: _Start) -> dict:
    """Load ``start`` into the freshly built ``model`` (spec checked first); return ``meta["init"]``."""
    from .feature_cache import model_fingerprint

    if start.spec is not None and start.spec != model.spec:
        diff = ", ".join(f"{k} {start.spec.get(k)!r} (this run: {model.spec.get(k)!r})"
                         for k in sorted(set(start.spec) | set(model.spec)) if start.spec.get(k) != model.spec.get(k))
        raise OODCoreError(f"init model does not match the model this run builds: {diff}; pass a model of the same "
                           "spec, or model_params (--arch/--feature-dim) that match it")
    try:
        model.load_state_dict(start.state_dict, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise OODCoreError(f"init weights do not fit the {model.spec['arch']} model this run builds "
                           f"(pass the weights of a model of the same spec): {detail}") from None
    return {**start.info, "weights": model_fingerprint(model)}


def _pretrain(pre, m, bench: Benchmark, cfg: TrainConfig, device, dctx, progress, model_params) -> _Start:
    """Train ``pre`` (the starting model of ``m``) on ``bench``; see :func:`train`."""
    pcfg = recommended_config(pre.name, **{k: getattr(cfg, k) for k in PRETRAIN_INHERITS})
    pcfg.validate()
    try:
        r = _train(pre, bench, pcfg, device, dctx, progress, model_params, None, False, None, stage="pretrain")
    except TrainingDiverged as e:
        err = TrainingDiverged(f"pretraining {pre.name} for {m.name}: {e}")
        for attr in ("epoch", "step", "loss", "lr"):
            setattr(err, attr, getattr(e, attr, None))
        raise err from e
    info = {"source": "pretrained in this run", "method": pre.name, "train_config": r.meta["train_config"],
            "final": r.history[-1] if r.history else None}
    return _Start({k: v.detach() for k, v in r.model.state_dict().items()}, dict(r.model.spec), info)


def _checkpoint_meta(m, bench: Benchmark, model: OODModel, cfg: TrainConfig, device: torch.device,
                     dctx: ddp.DistContext, used_loss_params: dict, history: list[dict],
                     init_info: dict | None = None) -> dict:
    """The checkpoint metadata of a run (without the OOD ``metrics``)."""
    return {
        "method": m.name,
        **({"init": init_info} if init_info is not None else {}),
        "dataset": bench.spec(),
        "model": model.spec,
        "train_config": {**dataclasses.asdict(cfg), "device_used": str(device), "world_size": dctx.world_size},
        "loss_params": used_loss_params,
        "history": history,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _train(m, bench: Benchmark, cfg: TrainConfig, device: torch.device, dctx: ddp.DistContext, progress,
           model_params, loss_params, evaluate_after, epoch_end, checkpoint_every=0, checkpoint=None,
           start: _Start | None = None, stage: str = "train") -> TrainResult:
    gen = seed_everything(cfg.seed)

    spec = dict(arch=default_arch(bench.input_shape), num_classes=bench.num_classes,
                input_shape=bench.input_shape, head=m.head, spectral_norm=m.spectral_norm)
    spec.update(m.model_params)
    spec.update(model_params or {})
    model = build_model(**spec)  # built (drawing its random init) with or without a start: same RNG stream after
    init_info = _load_start(model, start) if start is not None else None
    model = model.to(device)
    amp_dtype = AMP_DTYPES[cfg.amp]
    if cfg.amp == "fp16" and device.type != "cuda":
        raise OODCoreError(f"amp='fp16' needs a CUDA device (float16 with a gradient scaler); on {device.type} "
                           "use amp='bf16' or 'off'")
    images = bench.train.x.dim() == 4
    if cfg.channels_last and images:
        model = model.to(memory_format=torch.channels_last)
    layout = torch.channels_last if cfg.channels_last and images else torch.contiguous_format
    pinned = device.type == "cuda"
    net = model  # what the forward pass calls: the model, or its DDP wrapper
    if dctx.enabled:  # before the optimiser is built: the conversion makes new BatchNorm parameters
        ddp.check_batches(bench.train.x.shape[0], cfg.batch_size, dctx)
        model = ddp.convert_batchnorm(model, device)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    unknown_params = set(loss_params or {}) - set(m.loss_params)
    if unknown_params:
        raise OODCoreError(f"method {m.name!r} has no loss parameter {sorted(unknown_params)}; "
                           f"its parameters are {sorted(m.loss_params) or 'none'}")
    used_loss_params = {**m.loss_params, **(loss_params or {})}
    loss_fn = m.make_loss(**used_loss_params).to(device)
    outliers = None
    if m.outliers is not None:
        outliers = training_outliers(m.outliers, bench, seed=cfg.seed)
        out_batch = max(1, round(cfg.batch_size * m.outlier_ratio))
    opt = _optimizer(cfg, list(model.parameters()) + list(loss_fn.parameters()))
    x_train, y_train = bench.train.x, bench.train.y
    n = x_train.shape[0]
    steps = math.ceil(n / cfg.batch_size)
    per_step = cfg.schedule == "cosine-step"
    if per_step:
        total_steps = cfg.epochs * steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: cosine_lr(t, total_steps, cfg.lr, cfg.lr_min) / cfg.lr)
    else:  # per epoch, exactly as before (eta_min = lr_min = 0 by default)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")  # a no-op unless fp16

    probe = _geometry_probe(bench, cfg) if cfg.geometry_every and dctx.is_main else None
    if not dctx.is_main:
        progress = epoch_end = checkpoint = None
    history: list[dict] = []
    loader = _BatchLoader(x_train, y_train, cfg.workers, device) if cfg.workers else None
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=gen)
            loaded = None if loader is None else loader.epoch(
                [ddp.rank_slice(order[i:i + cfg.batch_size], dctx) for i in range(0, n, cfg.batch_size)])
            total, count = 0.0, 0
            for step in range(1, steps + 1):
                idx = order[(step - 1) * cfg.batch_size: step * cfg.batch_size]
                local = ddp.rank_slice(idx, dctx)  # the whole batch unless distributed
                if loaded is None:
                    xb, yb = x_train[local], y_train[local]
                    if pinned:  # indexing makes a new pageable tensor: pin it so the copy can be asynchronous
                        xb, yb = xb.pin_memory(), yb.pin_memory()
                else:  # the same batch, gathered by a worker (and pinned by the loader's thread on CUDA)
                    xb, yb = next(loaded)
                xb = xb.to(device, non_blocking=pinned, memory_format=layout)
                yb = yb.to(device, non_blocking=pinned)
                ob = None
                if outliers is not None:
                    ob = outliers[torch.randint(outliers.shape[0], (out_batch,), generator=gen)].to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = loss_fn(net(xb), yb, LossContext(xb, model, epoch, cfg.epochs, ob))
                loss_value = loss.item()  # one device sync per step serves the check, the log and the callback
                if dctx.enabled:
                    # the global mean loss on every rank (so a NaN anywhere stops all ranks at this step);
                    # DDP averages gradients over ranks, so weight this rank's mean by its share of the batch
                    share = local.numel() * dctx.world_size / idx.numel()
                    loss_value = ddp.all_reduce_sum([loss_value * local.numel()], device)[0] / idx.numel()
                    loss = loss * share
                if not math.isfinite(loss_value):
                    err = TrainingDiverged(
                        f"training loss became {loss_value} at epoch {epoch}, step {step}; nothing was saved. "
                        f"Lower the learning rate (now {cfg.lr:g}) or check the data for NaN/Inf")
                    err.epoch, err.step, err.loss, err.lr = epoch, step, loss_value, cfg.lr
                    raise err
                lr_used = opt.param_groups[0]["lr"]
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if dctx.enabled:
                    ddp.average_grads(loss_fn.parameters(), dctx)
                scaler.step(opt)
                scaler.update()
                total += loss_value * idx.numel()
                count += idx.numel()
                val = None
                if step == steps and dctx.is_main:
                    val = id_metrics(bench.task, extract_outputs(model, bench.val.x), bench.val.y)
                    history.append({"epoch": epoch, "train_loss": total / count,
                                    "lr": opt.param_groups[0]["lr"], **{f"val_{k}": v for k, v in val.items()}})
                    if probe is not None and (epoch % cfg.geometry_every == 0 or epoch == cfg.epochs):
                        history[-1].update(model_geometry_snapshot(model, bench.task, **probe))
                if progress is not None:
                    progress(Progress(epoch, cfg.epochs, step, steps, loss_value, val, stage, lr_used))
                if per_step:
                    sched.step()
            if not per_step:
                sched.step()
            if epoch_end is not None:
                epoch_end(epoch, model)
            if checkpoint is not None and epoch % checkpoint_every == 0 and epoch < cfg.epochs:
                bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
                if bad:
                    err = TrainingDiverged(f"the weights became NaN/Inf in epoch {epoch} ({bad[0]}); "
                                           f"lower the learning rate (now {cfg.lr:g}) or check the data for NaN/Inf")
                    err.epoch, err.step, err.loss, err.lr = epoch, steps, float("nan"), cfg.lr
                    raise err
                meta = _checkpoint_meta(m, bench, model, cfg, device, dctx, used_loss_params,
                                        [dict(h) for h in history], init_info)
                meta["partial"] = {"epochs_done": epoch, "epochs": cfg.epochs}
                checkpoint(model, meta)
            ddp.barrier(dctx)  # the other ranks wait while rank 0 validates
    finally:
        if loader is not None:
            loader.close()

    if dctx.enabled:  # plain BatchNorm again: the saved and returned model is the unwrapped one
        trained = model
        model = build_model(**spec).to(device)
        model.load_state_dict(trained.state_dict())
    model.eval()
    meta = _checkpoint_meta(m, bench, model, cfg, device, dctx, used_loss_params, history, init_info)
    if evaluate_after and dctx.is_main:
        # a score that cannot be fitted on this model and data (ViM, KNN on a tiny image folder)
        # is named in report["skipped_scores"]; it must not cost the trained weights
        meta["metrics"] = evaluate(model, bench, score_names=applicable_scores(m, bench),
                                   score_params=method_score_params(m, used_loss_params), skip_unfit=True).report
    return TrainResult(model, meta, history, dctx.rank)
