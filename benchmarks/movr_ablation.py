"""Ablation of the m-OvR recipe (Park et al., arXiv 2209.11436): does movr widen the Jacobian-norm gap over ce?

For every (seed, open-set split) one ``ce`` model is trained with its recommended config and one
``movr`` model per setting (the paper's defaults, then one change at a time). Open-set splits
follow Neal et al. 2018 and are the ones ``compare.py`` uses (``ood_core.data.open_set_splits``:
split 0 = digits 0-5, then seeded random 6-of-10 choices); the other 4 digits are the ``unknown`` set. Per model, on the known test digits and the unknown digits:

- JND = mean ||d f/dx||_F on unknowns - mean on knowns, f = z/||z|| (exact Jacobian,
  :func:`ood_core.geometry.jacobian_norm`);
- ratio = mean on unknowns / mean on knowns. A cosine head and a linear head give features of
  different norms, and the unit-feature Jacobian scales with 1/||z||, so the raw JND of two
  models is not on one scale; the ratio is (JND / known mean = ratio - 1, the normalised JND);
- AUROC near (the unknown digits): movr's own ``ovr`` score vs ce's ``msp``, plus movr's ``msp``
  at its training scale T (``method_score_params``).

For each setting the table gives the means and the paired 95 % t interval of movr - ce over the
(seed, split) pairs (:func:`ood_core.stats.paired_difference_ci`); "yes" = the interval excludes 0
in movr's favour (movr > ce).

    .venv/bin/python benchmarks/movr_ablation.py                      # 5 seeds x 3 splits, every setting
    .venv/bin/python benchmarks/movr_ablation.py --seeds 3 --splits 2 --settings paper,rotation0
    .venv/bin/python benchmarks/movr_ablation.py --epochs 5 --seeds 1 --splits 1   # smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


import ood_core
from ood_core.data import open_set_splits
from ood_core.evaluate import evaluate
from ood_core.geometry import jacobian_norm
from ood_core.methods import method_score_params
from ood_core.stats import paired_difference_ci
from ood_core.train import recommended_config, train

# setting -> (loss parameter overrides, TrainConfig overrides); "paper" = movr's defaults
SETTINGS: dict[str, tuple[dict, dict]] = {
    "paper": ({}, {}),  # wd 1e-3, rotation 0.1, m 0.5, T 32
    "rotation0": ({"rotation": 0.0}, {}),
    "wd5e-4": ({}, {"weight_decay": 5e-4}),
    "m0": ({"m": 0.0}, {}),
    "T16": ({"T": 16.0}, {}),
}


def measure(model, bench, method: str, loss_params: dict) -> dict:
    """Jacobian norms of unit features on known test / unknown digits, and AUROC near of the method's scores."""
    known = jacobian_norm(model, bench.test.x, method="exact")
    unknown = jacobian_norm(model, bench.ood["unknown"], method="exact")
    names = ["msp", "ovr"] if method == "movr" else ["msp"]
    ev = evaluate(model, bench, ood_sets={"unknown": bench.ood["unknown"]}, score_names=names,
                  score_params=method_score_params(method, loss_params))
    return {"jn_known": float(known.mean()), "jn_unknown": float(unknown.mean()),
            "jnd": float(unknown.mean() - known.mean()), "ratio": float(unknown.mean() / known.mean()),
            **{f"auroc_{n}": ev.report["ood"]["unknown"][n]["auroc"] for n in names},
            "id_accuracy": ev.report["id_accuracy"], "score_params": ev.report["score_params"]}


def run_one(method: str, known, seed: int, epochs: int | None, loss_params: dict, cfg_overrides: dict) -> dict:
    bench = ood_core.load_benchmark("digits", known=known)
    cfg = recommended_config(method, seed=seed, epochs=epochs, device="cpu", **cfg_overrides)
    t0 = time.perf_counter()
    result = train(method, bench, cfg, loss_params=loss_params, evaluate_after=False)
    seconds = time.perf_counter() - t0
    return {"method": method, "known": list(known), "seed": seed, "train_seconds": seconds,
            "weight_decay": cfg.weight_decay, "loss_params": result.meta["loss_params"],
            **measure(result.model, bench, method, result.meta["loss_params"])}


def ci_cell(a, b, fmt: str) -> str:
    ci = paired_difference_ci(a, b, confidence=0.95, method="t")
    verdict = {True: "yes", False: "no", None: "n<2"}[ci.holds("greater")]
    return f"{ci.mean:{fmt}} [{ci.low:{fmt}}, {ci.high:{fmt}}] {verdict}"


def table(runs: list[dict], settings: list[str]) -> str:
    ce = {(tuple(r["known"]), r["seed"]): r for r in runs if r["method"] == "ce"}
    head = ["setting", "pairs", "JND movr", "JND ce", "ΔJND [95% CI] movr>ce", "ratio movr", "ratio ce",
            "Δratio [95% CI] movr>ce", "AUROC near movr ovr", "movr msp@T", "ce msp", "ΔAUROC ovr−msp [95% CI]",
            "train s movr", "train s ce"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in settings:
        mv = [r for r in runs if r["method"] == "movr" and r["setting"] == s and (tuple(r["known"]), r["seed"]) in ce]
        if not mv:
            continue
        cs = [ce[(tuple(r["known"]), r["seed"])] for r in mv]

        def col(rs, k):
            return np.array([r[k] for r in rs])

        lines.append("| " + " | ".join([
            s, str(len(mv)),
            f"{col(mv, 'jnd').mean():.3f}", f"{col(cs, 'jnd').mean():.3f}", ci_cell(col(mv, "jnd"), col(cs, "jnd"), ".3f"),
            f"{col(mv, 'ratio').mean():.2f}", f"{col(cs, 'ratio').mean():.2f}",
            ci_cell(col(mv, "ratio"), col(cs, "ratio"), ".2f"),
            f"{100 * col(mv, 'auroc_ovr').mean():.1f}", f"{100 * col(mv, 'auroc_msp').mean():.1f}",
            f"{100 * col(cs, 'auroc_msp').mean():.1f}",
            ci_cell(100 * col(mv, "auroc_ovr"), 100 * col(cs, "auroc_msp"), ".1f"),
            f"{col(mv, 'train_seconds').mean():.0f}", f"{col(cs, 'train_seconds').mean():.0f}",
        ]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="training seeds per split (default 5)")
    p.add_argument("--splits", type=int, default=3, help="random 6-of-10 known-digit splits (default 3)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated subset of {', '.join(SETTINGS)} (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recommended config's (30)")
    p.add_argument("--json", metavar="PATH", help="also write every run's numbers as JSON")
    args = p.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        p.error(f"unknown setting(s) {bad}; choose from {', '.join(SETTINGS)}")
    if args.seeds < 1 or args.splits < 1:
        p.error("--seeds and --splits must be >= 1")
    torch.set_num_threads(1)  # small models: one thread is as fast and leaves the other cores free
    runs: list[dict] = []
    splits = open_set_splits(args.splits)
    for known in splits:
        for seed in range(args.seeds):
            jobs = [("ce", None, {}, {})] + [("movr", s, *SETTINGS[s]) for s in settings]
            for method, setting, loss_params, cfg_overrides in jobs:
                r = run_one(method, known, seed, args.epochs, loss_params, cfg_overrides)
                r["setting"] = setting
                runs.append(r)
                print(f"known {known} seed {seed} {method}{'/' + setting if setting else ''}: JND {r['jnd']:.3f} "
                      f"ratio {r['ratio']:.2f} AUROC near {100 * r.get('auroc_ovr', r['auroc_msp']):.1f} "
                      f"({r['train_seconds']:.0f} s)", file=sys.stderr, flush=True)
            if args.json:  # after every pair: a long run that stops keeps what it measured
                Path(args.json).write_text(json.dumps(runs, indent=1))
    print(f"digits, splits {splits}, seeds 0..{args.seeds - 1}, epochs {args.epochs or 'default'}; "
          "Jacobian norms of unit features (exact), AUROC in %")
    print(table(runs, settings))
    print("Δ = movr − ce, paired over (seed, split), 95 % t interval; yes = interval above 0. "
          "JND/known-mean (normalised JND) = ratio − 1.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
