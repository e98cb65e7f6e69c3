"""Separation loss vs Outlier Exposure under the fine-tune protocol, per OOD group, paired over seeds.

For each seed a CE model is trained once (the recipes' ``pretrain``; cached as a checkpoint in
``--ce-dir``), then ``oe`` and ``separation`` are fine-tuned from it with the same schedule and
the same outliers, for every combination of ``--epochs``, ``--lr`` and ``--warmup`` given. The
table compares the separation model's FPR95 (separation score) with the oe model's FPR95 (msp
score): per OOD group (near / far: the group mean of the sets' FPR95 per seed), the paired
difference separation - oe with its 95 % t interval over seeds (``ood_core.stats``).

    .venv/bin/python benchmarks/separation_ablation.py                       # recipe defaults, seeds 0-2
    .venv/bin/python benchmarks/separation_ablation.py --lr 0.01,0.05        # two settings side by side
    .venv/bin/python benchmarks/separation_ablation.py --epochs 10,20 --warmup 0.5 --json out.json

FPR95 in percent: FPR on OOD at the threshold keeping 95 % of ID (high score = ID).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


import ood_core
from ood_core.evaluate import evaluate
from ood_core.stats import paired_difference_ci
from ood_core.train import recommended_config, train


def _floats(text):
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text):
    return [int(t) for t in text.split(",") if t.strip()]


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path`` (so parallel runs of this script train each CE model once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst a model is trained twice
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ce_model(bench, seed: int, folder: Path | None, log):
    """The CE starting model of ``seed``: read from ``folder`` if there, else trained (and saved)."""
    if folder is None:
        return train("ce", bench, recommended_config("ce", seed=seed, device="cpu"), evaluate_after=False)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ce_{bench.name}_seed{seed}.pt"
    with _locked(folder / f".{path.name}.lock"):
        if not path.exists():
            t0 = time.perf_counter()
            r = train("ce", bench, recommended_config("ce", seed=seed, device="cpu"), evaluate_after=False)
            ood_core.save_checkpoint(path, r.model, r.meta)
            log(f"  ce seed {seed}: trained in {time.perf_counter() - t0:.0f} s -> {path}")
    return str(path)


def run(args, log=print) -> list[dict]:
    bench = ood_core.load_benchmark(args.dataset)
    settings = list(itertools.product(args.epochs, args.lr, args.warmup))
    rows = []
    for seed in args.seeds:
        init = ce_model(bench, seed, args.ce_dir, log)
        for epochs, lr, warmup in settings:
            row = {"seed": seed, "epochs": epochs, "lr": lr, "warmup": warmup}
            for method, score, params in (("oe", "msp", None), ("separation", "separation", {"warmup": warmup})):
                cfg = recommended_config(method, seed=seed, epochs=epochs, lr=lr, device="cpu")
                t0 = time.perf_counter()
                r = train(method, bench, cfg, init=init, loss_params=params, evaluate_after=False)
                rep = evaluate(r.model, bench, score_names=[score]).report
                row[method] = {"id_accuracy": rep["id_accuracy"], "seconds": time.perf_counter() - t0,
                               "fpr95": {s: per[score]["fpr95"] for s, per in rep["ood"].items()}}
            log(f"  seed {seed} epochs {epochs} lr {lr:g} warmup {warmup:g}: ID acc oe "
                f"{row['oe']['id_accuracy']:.3f} sep {row['separation']['id_accuracy']:.3f} "
                f"({row['oe']['seconds']:.0f} s + {row['separation']['seconds']:.0f} s)")
            rows.append(row)
    return rows


def table(rows, bench) -> str:
    groups = {}
    for name in bench.ood:
        groups.setdefault(bench.ood_groups.get(name, "other"), []).append(name)
    lines = ["| epochs | lr | warmup | OOD | oe FPR95 (msp) | separation FPR95 (sep. score) | sep - oe [95% CI] | n "
             "| ID acc oe / sep |", "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["epochs"], r["lr"], r["warmup"]) for r in rows):
        rs = sorted((r for r in rows if (r["epochs"], r["lr"], r["warmup"]) == key), key=lambda r: r["seed"])
        acc = (f"{100 * np.mean([r['oe']['id_accuracy'] for r in rs]):.1f} / "
               f"{100 * np.mean([r['separation']['id_accuracy'] for r in rs]):.1f}")
        for label, sets in [*((f"{g} ({', '.join(s)})", s) for g, s in groups.items()), ("all", list(bench.ood))]:
            oe = [100 * np.mean([r["oe"]["fpr95"][s] for s in sets]) for r in rs]
            sep = [100 * np.mean([r["separation"]["fpr95"][s] for s in sets]) for r in rs]
            ci = paired_difference_ci(sep, oe)
            interval = f"{ci.mean:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}]" if ci.n >= 2 else f"{ci.mean:+.1f}"
            lines.append(f"| {key[0]} | {key[1]:g} | {key[2]:g} | {label} | {np.mean(oe):.1f} | {np.mean(sep):.1f} "
                         f"| {interval} | {ci.n} | {acc} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fine = ood_core.METHODS["separation"].train_defaults
    p.add_argument("--dataset", default="digits")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated; default: 0,1,2")
    p.add_argument("--epochs", type=_ints, default=[fine["epochs"]],
                   help=f"fine-tune epochs, comma-separated; default: {fine['epochs']} (the recipes')")
    p.add_argument("--lr", type=_floats, default=[fine["lr"]],
                   help=f"fine-tune peak lr, comma-separated; default: {fine['lr']:g} (the recipes')")
    p.add_argument("--warmup", type=_floats, default=[ood_core.METHODS["separation"].loss_params["warmup"]],
                   help="separation warm-up fractions, comma-separated; default: 0.5")
    p.add_argument("--ce-dir", type=Path, default=None,
                   help="folder caching the CE starting models (one per seed), shared by parallel runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads; default: 1 (tiny convolutions)")
    p.add_argument("--json", type=Path, default=None, help="write the per-seed rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows, ood_core.load_benchmark(args.dataset)))
    print(f"FPR95 in %, lower is better; sep - oe < 0 favours the separation terms; t interval over seeds "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
