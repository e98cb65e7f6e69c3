"""Training throughput of ood_core's loop vs a bare PyTorch loop, side by side in one run.

Both loops train the same model (same spec, seed, optimiser, batch size) on the same data
for the same number of epochs, with the same input settings (mixed precision, memory layout,
DataLoader workers, pinned non-blocking copies on CUDA); ours also does its per-epoch
validation, a loss sync + NaN check and a progress callback every step. The two loops run in
alternating pairs (--repeats, default 5), so drift in machine load hits both; each pair gives a
throughput ratio, and the target (>= 0.9) is on the median of the pairs' ratios. Also prints
each pair and the best time of each loop.

    .venv/bin/python benchmarks/train_speed.py                      # digits, smallcnn, CPU
    .venv/bin/python benchmarks/train_speed.py --dataset toy2d --epochs 20
    .venv/bin/python benchmarks/train_speed.py --arch resnet18 --samples 512 --epochs 1 --batch-size 128  # CPU smoke

The GPU measurement (ResNet-18 on 50,000 synthetic 32x32 RGB images, 10 classes):

    python benchmarks/train_speed.py --arch resnet18 --device cuda --amp bf16 --channels-last --workers 4
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

import ood_core
from ood_core.data import Benchmark, Split
from ood_core.evaluate import extract_outputs
from ood_core.models import build_model, default_arch
from ood_core.runtime import seed_everything, select_device
from ood_core.train import AMP_DTYPES, TrainConfig, _worker_context, train

SYNTHETIC = "synthetic-rgb32"


def synthetic_benchmark(samples: int, val_samples: int, classes: int = 10, seed: int = 0) -> Benchmark:
    """``samples`` random 32x32 RGB images (uint8 levels scaled to [0, 1]) with random labels, and a
    ``val_samples`` validation split: the shape and size of CIFAR-10, built in memory in a second."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).float().div_(255)
        return Split(x, torch.randint(0, classes, (n,), generator=gen))

    train_split, val_split = split(samples), split(val_samples)
    return Benchmark(name=SYNTHETIC, task="multiclass", input_shape=(3, 32, 32), known=tuple(range(classes)),
                     class_names=[f"class{i}" for i in range(classes)], train=train_split, val=val_split,
                     test=val_split, ood={}, ood_groups={})


class _Pairs(torch.utils.data.Dataset):
    """``ds[idx]`` = the whole batch ``(x[idx], y[idx])``: gathered by one indexing, as both loops do."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]


class _Epoch(torch.utils.data.Sampler):
    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def bare_loop(bench, cfg: TrainConfig, device, arch: str) -> float:
    """The minimal loop: shuffle, forward, CE, backward, step (with the same input settings as ours:
    autocast, a gradient scaler for fp16, channels_last, pinned non-blocking copies on CUDA, a
    DataLoader with the same worker count). Returns seconds."""
    gen = seed_everything(cfg.seed)
    model = build_model(arch, bench.num_classes, bench.input_shape).to(device)
    images = bench.train.x.dim() == 4
    layout = torch.channels_last if cfg.channels_last and images else torch.contiguous_format
    model = model.to(memory_format=layout) if images else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = AMP_DTYPES[cfg.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    pinned = device.type == "cuda"
    x, y = bench.train.x, bench.train.y
    n = x.shape[0]
    loader = sampler = None
    if cfg.workers:
        sampler = _Epoch()
        loader = torch.utils.data.DataLoader(_Pairs(x, y), batch_size=None, sampler=sampler, num_workers=cfg.workers,
                                             pin_memory=pinned, persistent_workers=True,
                                             multiprocessing_context=_worker_context())
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        if loader is not None:
            sampler.batches = list(torch.split(order, cfg.batch_size))
            batches = iter(loader)
        else:
            batches = ((x[idx], y[idx]) for idx in torch.split(order, cfg.batch_size))
        for xb, yb in batches:
            if pinned and loader is None:
                xb, yb = xb.pin_memory(), yb.pin_memory()
            xb = xb.to(device, non_blocking=pinned, memory_format=layout)
            yb = yb.to(device, non_blocking=pinned)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(xb).logits, yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    del batches, loader  # stops the workers
    return elapsed


def ours(bench, cfg: TrainConfig, arch: str) -> float:
    steps = []
    device = select_device(cfg.device)
    t0 = time.perf_counter()
    train("ce", bench, cfg, progress=steps.append, evaluate_after=False, model_params={"arch": arch})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    assert len(steps) == cfg.epochs * math.ceil(len(bench.train) / cfg.batch_size)
    return elapsed


def validation_seconds(bench, cfg: TrainConfig, device, arch: str, repeats: int = 5) -> float:
    """Seconds of the validation passes our loop makes in a run of ``cfg.epochs`` epochs (one
    ``extract_outputs`` over the validation split per epoch, as ``ood_core.train``), best of ``repeats``."""
    model = build_model(arch, bench.num_classes, bench.input_shape).to(device)
    x = bench.val.x
    if cfg.channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    extract_outputs(model, x)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(cfg.epochs):
            extract_outputs(model, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None,
                   help=f"digits or toy2d (multiclass), or {SYNTHETIC} (random 32x32 RGB images, 10 classes); "
                        f"default: {SYNTHETIC} with --arch resnet18, else digits")
    p.add_argument("--arch", default=None, choices=("smallcnn", "mlp", "resnet18"),
                   help="backbone of both loops; default: the dataset's own (smallcnn for digits)")
    p.add_argument("--samples", type=int, default=50_000, help=f"{SYNTHETIC} training images; default: 50000")
    p.add_argument("--val-samples", type=int, default=None,
                   help=f"{SYNTHETIC} validation images (our loop validates on them every epoch); "
                        "default: 1%% of --samples, at least 32")
    p.add_argument("--epochs", type=int, default=None, help="default: 10 (2 for resnet18)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 (128 for resnet18)")
    p.add_argument("--repeats", type=int, default=5,
                   help="alternating pairs (bare, ours) to run; the target is on the median pair ratio; default: 5")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off",
                   help="mixed precision in both loops: bf16 (CPU or CUDA) or fp16 (CUDA, with a gradient scaler)")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and inputs in both loops")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes gathering (and pinning) batches in both loops; 0 = none")
    args = p.parse_args()
    dataset = args.dataset or (SYNTHETIC if args.arch == "resnet18" else "digits")
    resnet = (args.arch or "") == "resnet18" or dataset == SYNTHETIC
    epochs = args.epochs or (2 if resnet else 10)
    batch_size = args.batch_size or (128 if resnet else 64)
    device = select_device(args.device)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.amp == "fp16" and device.type != "cuda":
        p.error("--amp fp16 needs --device cuda; use bf16 on the CPU")
    if dataset == SYNTHETIC:
        val_samples = args.val_samples if args.val_samples is not None else max(32, args.samples // 100)
        if args.samples < 1 or val_samples < 1:
            p.error("--samples and --val-samples must be >= 1")
        bench = synthetic_benchmark(args.samples, val_samples)
    else:
        bench = ood_core.load_benchmark(dataset)
    if bench.task != "multiclass":
        p.error(f"--dataset {dataset} is {bench.task}; this benchmark times the CE recipe: use digits or toy2d")
    arch = args.arch or default_arch(bench.input_shape)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, device=str(device), amp=args.amp,
                      channels_last=args.channels_last, workers=args.workers)
    cfg.validate()
    warm = TrainConfig(**{**vars(cfg), "epochs": 1})
    # warm-up of both loops (allocator, kernels for each batch shape, worker server): our first run
    # otherwise pays one-time costs the bare loop's warm-up already paid (first pairs were ~0.8)
    bare_loop(bench, warm, device, arch)
    ours(bench, warm, arch)
    pairs = []
    for _ in range(args.repeats):  # alternate so drift in machine load hits both
        pairs.append((bare_loop(bench, cfg, device, arch), ours(bench, cfg, arch)))
    t_bare, t_ours = min(b for b, _ in pairs), min(o for _, o in pairs)
    ratios = sorted(b / o for b, o in pairs)
    median = statistics.median(ratios)
    samples = epochs * len(bench.train)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"dataset {dataset}: {len(bench.train)} train samples x {epochs} epochs, batch {batch_size}")
    if resnet or args.amp != "off" or args.channels_last or args.workers:
        print(f"model {arch}; both loops: amp {args.amp}, channels_last {args.channels_last}, "
              f"workers {args.workers}{', pinned non-blocking copies' if device.type == 'cuda' else ''}; "
              f"ours also validates on {len(bench.val)} samples every epoch and syncs the loss every step")
    print("| loop | best seconds | samples/s |\n|---|---|---|")
    print(f"| bare PyTorch | {t_bare:.2f} | {samples / t_bare:,.0f} |")
    print(f"| ood_core.train (validation each epoch, callbacks) | {t_ours:.2f} | {samples / t_ours:,.0f} |")
    print("pairs (bare s, ours s, ratio): " + ", ".join(f"({b:.2f}, {o:.2f}, {b / o:.2f})" for b, o in pairs))
    print(f"best-time ratio ours/bare throughput: {t_bare / t_ours:.2f}")
    # where our extra time goes: the validation pass each epoch, which the bare loop does not make
    t_val = validation_seconds(bench, cfg, device, arch)
    print(f"our validation passes: {epochs} x {1000 * t_val / epochs:.1f} ms = {t_val:.2f} s "
          f"({100 * t_val / t_ours:.0f}% of our best time); best-time ratio without them: "
          f"{t_bare / max(t_ours - t_val, 1e-9):.2f} (a breakdown, not the target)")
    verdict = "met" if median >= 0.9 else "NOT met"
    print(f"median pair ratio ours/bare throughput over {len(pairs)} alternating pairs: {median:.2f} "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; target >= 0.9: {verdict})")


if __name__ == "__main__":
    main()
