"""Side-by-side benchmark of every method on the embedded benchmark, with the papers' claims.

Trains each method of ``SUITE`` for several seeds, evaluates all of its scores on every OOD
set of its dataset, prints a markdown table (mean ± std over seeds) and then each paper's
claim next to the numbers measured for it, with a plain verdict.

    .venv/bin/python benchmarks/compare.py              # 3 seeds, every method (~5 min on 2 CPU cores)
    .venv/bin/python benchmarks/compare.py --quick      # 1 seed, 10 epochs: a smoke run
    .venv/bin/python benchmarks/compare.py --json results.json

AUROC and FPR95 are in percent; FPR95 = FPR on OOD at the threshold keeping 95% of ID.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ood_core  # noqa: E402
from ood_core.evaluate import evaluate  # noqa: E402
from ood_core.methods import applicable_scores, get_method  # noqa: E402
from ood_core.train import recommended_config, train  # noqa: E402

# Pure data: which methods run on which embedded dataset (each method next to its baseline).
SUITE = [
    {"dataset": "digits", "methods": ["ce", "movr", "l2norm", "ib", "oe", "separation"]},
    {"dataset": "digit-canvases", "methods": ["jointenergy", "snojoe"]},
]

# Per-run geometry read off the trained model: method -> fn(model, bench) -> {name: float}.
DIAGNOSTICS: dict[str, Callable] = {}


def diagnostic(*methods):
    def wrap(fn):
        for m in methods:
            DIAGNOSTICS.setdefault(m, [])
            DIAGNOSTICS[m].append(fn)
        return fn
    return wrap


@diagnostic("ce", "movr")
def jacobian_gap(model, bench) -> dict:
    """Mean exact Jacobian norm of the unit-normalised representation: ID test vs unknown digits."""
    from ood_core.geometry import jacobian_norm

    known = jacobian_norm(model, bench.test.x, method="exact")
    unknown = jacobian_norm(model, bench.ood["unknown"], method="exact")
    return {"jn_known": float(known.mean()), "jn_unknown": float(unknown.mean()),
            "jnd": float(unknown.mean() - known.mean()), "jn_ratio": float(unknown.mean() / known.mean())}


@diagnostic("oe", "separation")
def orthogonal_share(model, bench) -> dict:
    """Mean share of feature energy outside span{w_c}: ID test, unknown digits, generated far sets."""
    from ood_core.evaluate import extract_outputs
    from ood_core.geometry import orthogonal_energy_share

    w = model.head.weight.detach().cpu()

    def share(x):
        return float(np.nanmean(orthogonal_energy_share(extract_outputs(model, x).features, w)))

    far = [share(x) for name, x in bench.ood.items() if bench.ood_groups[name] == "far"]
    return {"orth_id": share(bench.test.x), "orth_unknown": share(bench.ood["unknown"]), "orth_far": float(np.mean(far))}


@diagnostic("ce", "ib")
def class_geometry(model, bench) -> dict:
    """Inter/intra separation ratio and Davies-Bouldin index of the ID test features (class means as centres)."""
    from ood_core.evaluate import extract_outputs
    from ood_core.geometry import davies_bouldin, separation_ratio

    z = extract_outputs(model, bench.test.x).features.numpy()
    y = bench.test.y.numpy()
    return {"sep_ratio": separation_ratio(z, y), "davies_bouldin": davies_bouldin(z, y)}


# --------------------------------------------------------------------------- running
def run_one(method: str, bench, seed: int, quick: bool) -> dict:
    cfg = recommended_config(method, seed=seed, epochs=10 if quick else None, device="cpu")
    t0 = time.perf_counter()
    result = train(method, bench, cfg, evaluate_after=False)
    train_s = time.perf_counter() - t0
    ev = evaluate(result.model, bench, score_names=applicable_scores(get_method(method), bench))
    diags = {}
    for fn in DIAGNOSTICS.get(method, []):
        diags.update(fn(result.model, bench))
    return {"method": method, "dataset": bench.name, "seed": seed, "epochs": cfg.epochs, "train_seconds": train_s,
            "report": ev.report, "diagnostics": diags}


def run_suite(seeds, quick: bool, only: list[str] | None = None, log=print) -> list[dict]:
    runs = []
    for entry in SUITE:
        bench = ood_core.load_benchmark(entry["dataset"])
        for method in entry["methods"]:
            if only and method not in only:
                continue
            for seed in seeds:
                run = run_one(method, bench, seed, quick)
                q = {k: v for k, v in run["report"].items() if k.startswith("id_")}
                log(f"  {entry['dataset']:15s} {method:12s} seed {seed}: {run['train_seconds']:5.1f} s, "
                    + ", ".join(f"{k} {100 * v:.1f}" for k, v in q.items()))
                runs.append(run)
    return runs


# --------------------------------------------------------------------------- aggregation
class Results:
    """Look-ups over the runs: values per seed, and mean ± std."""

    def __init__(self, runs: list[dict]):
        self.runs = runs

    def _of(self, method):
        return [r for r in self.runs if r["method"] == method]

    def has(self, *methods) -> bool:
        return all(self._of(m) for m in methods)

    def values(self, method: str, score: str, where: str, metric: str) -> np.ndarray:
        """``where`` is an OOD set name, a group ("near", "far") or "all" (mean over every set)."""
        out = []
        for r in self._of(method):
            rep = r["report"]
            if where == "all":
                out.append(np.mean([per[score][metric] for per in rep["ood"].values()]))
            else:
                src = rep["ood"] if where in rep["ood"] else rep["group_means"]
                out.append(src[where][score][metric])
        return np.array(out)

    def id_values(self, method: str) -> np.ndarray:
        return np.array([next(v for k, v in r["report"].items() if k.startswith("id_")) for r in self._of(method)])

    def diag(self, method: str, name: str) -> np.ndarray:
        return np.array([r["diagnostics"][name] for r in self._of(method)])

    def seconds(self, method: str) -> float:
        return float(np.mean([r["train_seconds"] for r in self._of(method)]))


def pm(values, scale: float = 100.0, digits: int = 1) -> str:
    values = np.asarray(values, dtype=float) * scale
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def results_table(res: Results) -> str:
    lines = []
    for entry in SUITE:
        methods = [m for m in entry["methods"] if res.has(m)]
        if not methods:
            continue
        first = res._of(methods[0])[0]["report"]
        id_name = "ID mAP" if "id_map" in first else "ID acc"
        lines += [f"\n**{entry['dataset']}** (AUROC / FPR95 in %, mean ± std over seeds; near = unknown classes, "
                  "far = mean of the generated sets)\n",
                  f"| method | score | {id_name} | AUROC near | FPR95 near | AUROC far | FPR95 far | train s |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in methods:
            evaluated = next(iter(res._of(m)[0]["report"]["ood"].values()))
            for score in get_method(m).scores:
                if score not in evaluated:
                    continue
                cells = [pm(res.values(m, score, g, k)) for g in ("near", "far") for k in ("auroc", "fpr95")]
                lines.append(f"| {m} | {score} | {pm(res.id_values(m))} | " + " | ".join(cells)
                             + f" | {res.seconds(m):.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- claims
@dataclass
class Claim:
    method: str
    paper: str
    statement: str
    needs: tuple[str, ...]
    check: Callable[[Results], tuple[str, list[bool]]]  # -> (what was measured, does each part hold?)


CLAIMS: list[Claim] = []


def better(a, b, higher: bool = True) -> bool:
    """a beats b by more than the seed spread (the larger of the two standard deviations)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    spread = max(a.std(ddof=1), b.std(ddof=1)) if a.size > 1 and b.size > 1 else 0.0
    gap = (a.mean() - b.mean()) if higher else (b.mean() - a.mean())
    return bool(gap > spread)


def _claim_movr(r: Results):
    jnd_ce, jnd_m = r.diag("ce", "jnd"), r.diag("movr", "jnd")
    ratio_ce, ratio_m = r.diag("ce", "jn_ratio"), r.diag("movr", "jn_ratio")
    au_ce, au_m = r.values("ce", "msp", "near", "auroc"), r.values("movr", "ovr", "near", "auroc")
    text = (f"JND (unit features, unknown − known): ce {pm(jnd_ce, 1, 3)} vs movr {pm(jnd_m, 1, 3)}; "
            f"unknown/known norm ratio ce {pm(ratio_ce, 1, 2)} vs movr {pm(ratio_m, 1, 2)}; "
            f"AUROC near: ce msp {pm(au_ce)} vs movr ovr {pm(au_m)}")
    return text, [better(jnd_m, jnd_ce)]


def _claim_snojoe(r: Results):
    f_je = r.values("jointenergy", "joint_energy", "all", "fpr95")
    f_sn = r.values("snojoe", "joint_energy", "all", "fpr95")
    beats = [better(r.values(m, "joint_energy", "all", "fpr95"), r.values(m, other, "all", "fpr95"), higher=False)
             for m in ("jointenergy", "snojoe") for other in ("maxlogit", "msp")]
    text = (f"JointEnergy FPR95 (mean of all sets): no SN {pm(f_je)} vs SN {pm(f_sn)}; "
            f"near: {pm(r.values('jointenergy', 'joint_energy', 'near', 'fpr95'))} vs "
            f"{pm(r.values('snojoe', 'joint_energy', 'near', 'fpr95'))}. On snojoe, FPR95 all sets: "
            f"joint_energy {pm(f_sn)}, maxlogit {pm(r.values('snojoe', 'maxlogit', 'all', 'fpr95'))}, "
            f"msp {pm(r.values('snojoe', 'msp', 'all', 'fpr95'))}")
    return text, [better(f_sn, f_je, higher=False), all(beats[1::2]), all(beats[0::2])]


def _claim_separation(r: Results):
    f_oe = r.values("oe", "msp", "all", "fpr95")
    f_sep = r.values("separation", "separation", "all", "fpr95")
    o_id, o_unk, o_far = (r.diag("separation", k) for k in ("orth_id", "orth_unknown", "orth_far"))
    text = (f"FPR95 (mean of all sets): oe msp {pm(f_oe)} vs separation score {pm(f_sep)}; "
            f"orthogonal-complement energy share on separation: ID {pm(o_id)}%, unknown {pm(o_unk)}%, "
            f"far {pm(o_far)}% (oe: ID {pm(r.diag('oe', 'orth_id'))}%, far {pm(r.diag('oe', 'orth_far'))}%)")
    return text, [better(f_sep, f_oe, higher=False), better(o_far, o_id) and better(o_unk, o_id)]


def _claim_ib(r: Results):
    s_ce, s_ib = r.diag("ce", "sep_ratio"), r.diag("ib", "sep_ratio")
    a_ce = r.values("ce", "min_distance", "near", "auroc")
    a_ib = r.values("ib", "min_distance", "near", "auroc")
    f_ce = r.values("ce", "min_distance", "near", "fpr95")
    f_ib = r.values("ib", "min_distance", "near", "fpr95")
    text = (f"inter/intra ratio: ce {pm(s_ce, 1, 2)} vs ib {pm(s_ib, 1, 2)}; min-distance AUROC on unknown "
            f"digits: ce (class means) {pm(a_ce)} vs ib {pm(a_ib)}; FPR95 {pm(f_ce)} vs {pm(f_ib)}")
    return text, [better(s_ib, s_ce), better(a_ib, a_ce) or better(f_ib, f_ce, higher=False)]


def _claim_l2norm(r: Results):
    a_ce = r.values("ce", "feature_norm", "all", "auroc")
    a_l2 = r.values("l2norm", "feature_norm", "all", "auroc")
    acc_ce, acc_l2 = r.id_values("ce"), r.id_values("l2norm")
    text = (f"feature-norm AUROC (mean of all sets): ce {pm(a_ce)} vs l2norm {pm(a_l2)} "
            f"(near {pm(r.values('ce', 'feature_norm', 'near', 'auroc'))} vs "
            f"{pm(r.values('l2norm', 'feature_norm', 'near', 'auroc'))}); ID acc {pm(acc_ce)} vs {pm(acc_l2)}")
    return text, [better(a_l2, a_ce) and a_l2.mean() - a_ce.mean() >= 0.05, acc_l2.mean() >= acc_ce.mean() - 0.01]


CLAIMS += [
    Claim("movr", "Park et al. 2022", "m-OvR widens the Jacobian-norm gap between unknown and known samples vs CE",
          ("ce", "movr"), _claim_movr),
    Claim("snojoe", "Mei et al. 2024", "(1) spectral norm lowers JointEnergy's FPR95; JointEnergy beats (2) MSP and "
          "(3) MaxLogit on multi-label data", ("jointenergy", "snojoe"), _claim_snojoe),
    Claim("separation", "Wu et al. 2024", "(1) vs OE on the same outliers the separation terms lower FPR95; (2) OOD "
          "features keep more energy outside span{w_c} than ID features", ("oe", "separation"), _claim_separation),
    Claim("ib", "Ando 2021", "vs CE features (1) the inter/intra ratio grows and (2) the distance score separates "
          "held-out classes better", ("ce", "ib"), _claim_ib),
    Claim("l2norm", "Haas et al. 2023", "(1) feature-norm AUROC of the L2-trained model >> that of the CE model "
          "(we require >= 5 points), (2) accuracy kept (within 1 point)", ("ce", "l2norm"), _claim_l2norm),
]


def claims_report(res: Results) -> str:
    lines = ["A part holds only when the gap exceeds the seed spread (the larger standard deviation).\n",
             "| method | paper's claim | measured here | holds here? |", "|---|---|---|---|"]
    for c in CLAIMS:
        if not res.has(*c.needs):
            continue
        measured, parts = c.check(res)
        verdict = "yes" if all(parts) else ("**no**" if not any(parts) else "partly: " + ", ".join(
            f"({i}) {'yes' if ok else 'no'}" for i, ok in enumerate(parts, 1)))
        lines.append(f"| {c.method} | {c.statement} ({c.paper}) | {measured} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; default 0,1,2")
    p.add_argument("--quick", action="store_true", help="1 seed and 10 epochs: a smoke run, not the claims")
    p.add_argument("--methods", default=None, help="only these methods (comma-separated)")
    p.add_argument("--json", default=None, help="also write every run's report here")
    args = p.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    print(f"# compare: seeds {seeds}{' (quick)' if args.quick else ''}; torch {torch.__version__} on "
          f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    runs = run_suite(seeds, args.quick, args.methods.split(",") if args.methods else None)
    res = Results(runs)
    print(results_table(res))
    print("\n**Claims** (each paper's claim next to what this run measured)\n")
    print(claims_report(res))
    print(f"\ntotal wall time: {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
