"""Training throughput of ood_core's loop vs a bare PyTorch loop, side by side in one run.

Both loops train the same model (same spec, seed, optimiser, batch size) on the same data
for the same number of epochs; ours also does its per-epoch validation, NaN checks and
progress callbacks. Prints samples/s for each and the ratio (target >= 0.9).

    .venv/bin/python benchmarks/train_speed.py                      # digits, smallcnn, CPU
    .venv/bin/python benchmarks/train_speed.py --dataset toy2d --epochs 20
    .venv/bin/python benchmarks/train_speed.py --device cuda        # on a GPU machine
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ood_core  # noqa: E402
from ood_core.models import build_model, default_arch  # noqa: E402
from ood_core.runtime import seed_everything, select_device  # noqa: E402
from ood_core.train import TrainConfig, train  # noqa: E402


def bare_loop(bench, cfg: TrainConfig, device) -> float:
    """The minimal loop: shuffle, forward, CE, backward, step. Returns seconds."""
    gen = seed_everything(cfg.seed)
    model = build_model(default_arch(bench.input_shape), bench.num_classes, bench.input_shape).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = bench.train.x, bench.train.y
    n = x.shape[0]
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[idx].to(device)).logits, y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def ours(bench, cfg: TrainConfig) -> float:
    steps = []
    t0 = time.perf_counter()
    train("ce", bench, cfg, progress=steps.append, evaluate_after=False)
    if select_device(cfg.device).type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    assert len(steps) == cfg.epochs * math.ceil(len(bench.train) / cfg.batch_size)
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", help="digits or toy2d (multiclass)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="alternate the two loops this many times; best time kept")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = select_device(args.device)
    bench = ood_core.load_benchmark(args.dataset)
    if bench.task != "multiclass":
        p.error(f"--dataset {args.dataset} is {bench.task}; this benchmark times the CE recipe: use digits or toy2d")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=str(device))
    bare_loop(bench, TrainConfig(epochs=1, device=str(device)), device)  # warm-up (allocator, kernels)
    t_bare, t_ours = math.inf, math.inf
    for _ in range(args.repeats):  # alternate so drift in machine load hits both
        t_bare = min(t_bare, bare_loop(bench, cfg, device))
        t_ours = min(t_ours, ours(bench, cfg))
    samples = args.epochs * len(bench.train)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"dataset {args.dataset}: {len(bench.train)} train samples x {args.epochs} epochs, batch {args.batch_size}")
    print("| loop | seconds | samples/s |\n|---|---|---|")
    print(f"| bare PyTorch | {t_bare:.2f} | {samples / t_bare:,.0f} |")
    print(f"| ood_core.train (validation each epoch, callbacks) | {t_ours:.2f} | {samples / t_ours:,.0f} |")
    print(f"ratio ours/bare throughput: {t_bare / t_ours:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
