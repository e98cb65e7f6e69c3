"""Speed of the geometry API, each comparison measured side by side in one run.

1. Jacobian norms of the shipped CE digits model (features d = 128, inputs 1x8x8):
   the random-projection estimate (K projections), the exact batched computation
   (torch.func + vmap) and a naive loop of torch.autograd.functional.jacobian, one sample
   at a time. Samples/s, speed-up over the naive loop, median relative error vs exact.
   Targets (issue 4): estimate at K = 16 >= 0.7 * d / K times the naive loop with median
   relative error <= 10%; on a GPU, batched exact >= 10x the naive loop.
2. Scoring throughput: one forward pass + every registry score of the task that reads
   cached outputs, vs the bare forward pass (target ratio >= 0.9), for the digits CE model
   and the digit-canvases multi-label model.
3. NC metrics, PCA and UMAP time at 1k / 10k / 50k points (synthetic 10-class features,
   d = 128) and their growth exponent (time ~ n^b between sizes).

    .venv/bin/python benchmarks/geometry_speed.py                 # CPU, all sections
    .venv/bin/python benchmarks/geometry_speed.py --device cuda   # on a GPU machine
    .venv/bin/python benchmarks/geometry_speed.py --sizes 1000,10000 --skip-umap
"""
from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from ood_core.checkpoint import load_checkpoint
from ood_core.data import load_benchmark_from_spec
from ood_core.errors import OODCoreError
from ood_core.evaluate import extract_outputs
from ood_core.geometry import jacobian_norm, nc_metrics
from ood_core.runtime import select_device
from ood_core.scores import make_score, scores_for_task


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls of ``fn`` (and its last result)."""
    best, result = math.inf, None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def naive_jacobian_norms(model, x) -> np.ndarray:
    """The baseline: torch.autograd.functional.jacobian per sample (d backward passes each)."""
    out = []
    for xi in x:
        def f(a):
            return F.normalize(model(a.unsqueeze(0)).features, dim=1)[0]
        out.append(torch.autograd.functional.jacobian(f, xi).double().pow(2).sum().sqrt().item())
    return np.array(out)


def jacobian_section(model, x, n_naive: int, ks, repeats: int, device) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    d = model(x[:1].to(device)).features.shape[1]
    x = x.to(device)
    t_naive, naive = best_time(lambda: naive_jacobian_norms(model, x[:n_naive]), 1, device)
    naive_rate = n_naive / t_naive
    t_exact, exact = best_time(lambda: jacobian_norm(model, x, method="exact", chunk_size=64), repeats, device)
    err_naive = np.max(np.abs(exact[:n_naive] / naive - 1))
    n = x.shape[0]
    print(f"\n## 1. Jacobian norms: {n} digits test images, d = {d} features, input 1x8x8 (n = 64)")
    print(f"exact (batched) vs naive loop: max relative difference {err_naive:.1e} on {n_naive} samples")
    print("| method | samples/s | speed-up vs naive loop | median rel. error vs exact | target |")
    print("|---|---|---|---|---|")
    print(f"| naive loop (autograd.functional.jacobian per sample) | {naive_rate:,.1f} | 1.0 | 0 | |")
    ratio_exact = (n / t_exact) / naive_rate
    gpu_target = ">= 10 (GPU)" if device.type == "cuda" else "(GPU target >= 10)"
    print(f"| exact, torch.func vmap, chunks of 64 | {n / t_exact:,.1f} | {ratio_exact:.1f} | 0 | {gpu_target} |")
    for k in ks:
        t_est, est = best_time(lambda: jacobian_norm(model, x, method="estimate", n_proj=k), repeats, device)
        ratio = (n / t_est) / naive_rate
        med = float(np.median(np.abs(est / exact - 1)))
        target = f">= {0.7 * d / k:.1f} and <= 10%" if k == 16 else ""
        verdict = (" (met)" if ratio >= 0.7 * d / k and med <= 0.10 else " (NOT met)") if k == 16 else ""
        print(f"| estimate, K = {k} | {n / t_est:,.1f} | {ratio:.1f} | {100 * med:.1f}% | {target}{verdict} |")
    t_one, _ = best_time(lambda: [jacobian_norm(model, x[i:i + 1], method="estimate", n_proj=16)
                                  for i in range(n_naive)], 1, device)
    print(f"| estimate, K = 16, one sample per call (no batching) | {n_naive / t_one:,.1f} | "
          f"{(n_naive / t_one) / naive_rate:.1f} | as above | |")


def scoring_section(checkpoint: Path, repeats: int, device) -> None:
    model, meta = load_checkpoint(checkpoint, device=device)
    bench = load_benchmark_from_spec(meta["dataset"])
    x = torch.cat([bench.test.x, *bench.ood.values()])
    x = x.repeat(max(1, math.ceil(20000 / x.shape[0])), 1, 1, 1)[:20000]
    train_out = extract_outputs(model, bench.train.x, device=device)
    used, skipped = [], []
    for name in scores_for_task(bench.task):
        s = make_score(name)
        if s.requires_inputs:
            skipped.append(f"{name} (needs the inputs: its own backward passes)")
            continue
        try:
            s.fit(train_out, bench.train.y, model)
            s(extract_outputs(model, x[:8], device=device))
        except OODCoreError as e:
            skipped.append(f"{name} ({str(e).split(';')[0]})")
            continue
        used.append((name, s))

    def forward_only():
        return extract_outputs(model, x, batch_size=512, device=device)

    def forward_and_scores():
        out = extract_outputs(model, x, batch_size=512, device=device)
        return {name: s(out) for name, s in used}

    forward_only()  # warm-up
    t_fwd, t_all = math.inf, math.inf
    for _ in range(repeats):  # alternate so drift in machine load hits both
        t_fwd = min(t_fwd, best_time(forward_only, 1, device)[0])
        t_all = min(t_all, best_time(forward_and_scores, 1, device)[0])
    out = forward_only()
    per_score = {name: best_time(lambda: s(out), repeats, device)[0] for name, s in used}
    n = x.shape[0]
    print(f"\n## 2. Scoring throughput, {checkpoint.name} ({meta['model']['arch']}, input "
          f"{'x'.join(map(str, bench.input_shape))}): {n} samples ({bench.name} test + OOD sets, repeated), batch 512")
    print(f"scores from the cached outputs: {', '.join(n for n, _ in used)}")
    if skipped:
        print(f"not included: {'; '.join(skipped)}")
    print("| pass | seconds | samples/s |\n|---|---|---|")
    print(f"| forward pass only | {t_fwd:.3f} | {n / t_fwd:,.0f} |")
    print(f"| forward pass + all {len(used)} scores | {t_all:.3f} | {n / t_all:,.0f} |")
    print(f"throughput ratio (with scores / forward only): {t_fwd / t_all:.2f} (target >= 0.9)")
    print("per score on the cached outputs (ms): "
          + ", ".join(f"{name} {1000 * t:.1f}" for name, t in per_score.items()))
    total = sum(per_score.values())
    print(f"cross-check from the per-score times: forward / (forward + {1000 * total:.0f} ms of scores) = "
          f"{t_fwd / (t_fwd + total):.2f}")


def synthetic_features(n: int, d: int = 128, c: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    means = 4 * rng.normal(size=(c, d))
    return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y, means


def growth(sizes, times) -> str:
    if len(sizes) < 2:
        return ""
    exps = [math.log(times[i + 1] / times[i]) / math.log(sizes[i + 1] / sizes[i]) for i in range(len(sizes) - 1)]
    return ", ".join(f"{sizes[i]}->{sizes[i + 1]}: n^{e:.2f}" for i, e in enumerate(exps))


def scale_section(sizes, skip_umap: bool, umap_epochs: int) -> None:
    from ood_core.projection import project

    print(f"\n## 3. NC metrics and projections vs number of points (d = 128, 10 classes; UMAP seeded, "
          f"n_epochs = {umap_epochs}, union fit, PCA to 50 first)")
    rows = {"nc_metrics": [], "PCA (2-D)": [], "UMAP (2-D)": []}
    if not skip_umap:
        t0 = time.perf_counter()
        # UMAP takes exact neighbours below 4096 points and NN-descent above: compile both paths
        for n_warm in (300, 5000):
            project({"id": synthetic_features(n_warm)[0]}, method="umap", n_epochs=10)
        print(f"UMAP warm-up (import + numba JIT of both neighbour paths, once per process): "
              f"{time.perf_counter() - t0:.1f} s")
    for n in sizes:
        z, y, means = synthetic_features(n)
        rows["nc_metrics"].append(best_time(lambda: nc_metrics(z, y, means), 2, torch.device("cpu"))[0])
        half = n // 2  # as in the app: half ID, half OOD, fitted on the union
        feats = {"id": z[:half], "ood": z[half:] + 10}
        rows["PCA (2-D)"].append(best_time(lambda: project(feats, method="pca"), 2, torch.device("cpu"))[0])
        if not skip_umap:
            rows["UMAP (2-D)"].append(best_time(lambda: project(feats, method="umap", n_epochs=umap_epochs),
                                                1, torch.device("cpu"))[0])
    print("| computation | " + " | ".join(f"{n:,} points" for n in sizes) + " | growth |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for name, times in rows.items():
        if times:
            print(f"| {name} | " + " | ".join(f"{t:.3f} s" for t in times) + f" | {growth(sizes, times)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "ce_digits.pt"))
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--n", type=int, default=256, help="samples for the batched Jacobian methods")
    p.add_argument("--n-naive", type=int, default=32, help="samples for the naive per-sample loop")
    p.add_argument("--ks", default="4,16,64", help="projection counts K for the estimate")
    p.add_argument("--scoring-checkpoints", default="ce_digits.pt,snojoe_canvases.pt",
                   help="shipped checkpoints (in checkpoints/) for the scoring-throughput section")
    p.add_argument("--sizes", default="1000,10000,50000", help="point counts for section 3")
    p.add_argument("--umap-epochs", type=int, default=200)
    p.add_argument("--skip-umap", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = select_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device=device)
    bench = load_benchmark_from_spec(meta["dataset"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"checkpoint {Path(args.checkpoint).name}")
    x = torch.cat([bench.test.x, *bench.ood.values()])[:args.n]
    jacobian_section(model, x, args.n_naive, [int(k) for k in args.ks.split(",")], args.repeats, device)
    for name in args.scoring_checkpoints.split(","):
        scoring_section(ROOT / "checkpoints" / name, args.repeats, device)
    scale_section([int(s) for s in args.sizes.split(",")], args.skip_umap, args.umap_epochs)


if __name__ == "__main__":
    main()
