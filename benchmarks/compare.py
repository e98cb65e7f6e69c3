"""Every method side by side over open-set splits and seeds, and the five papers' claims judged
by paired 95 % confidence intervals.

For each dataset of ``SUITE`` the benchmark is built for several known/unknown class splits
(the open-set protocol of Neal et al. 2018: split 0 is the default 0-5 known, the others are
seeded random 6-of-10 splits), each method is trained for several seeds on each split, and
all of its scores are evaluated on every OOD set. Groups (near, far-real, far-synthetic) are
reported separately; a "balanced" figure is the mean of the group means, so no group
dominates through its number of sets.

A claim compares a method with its named baseline on the same (split, seed) pairs; a part
holds only when the 95 % interval of the paired difference excludes zero in the claimed
direction (``ood_core.stats``). ``--quick`` gives no verdicts.

    python benchmarks/compare.py                          # 5 splits x 5 seeds, every method
    python benchmarks/compare.py --quick                  # 1 split, 1 seed, 10 epochs: a smoke run
    python benchmarks/compare.py --methods ce,l2norm --splits 2 --seeds 0,1
    python benchmarks/compare.py --preset cifar10 --arch resnet18 --device cuda --data-root DIR

Every number (per split, seed, set and score) goes to the JSON results file (``--out``,
default ``results/compare.json``) that the README and the app's Claims page read.
AUROC and FPR95 are in percent; FPR95 = FPR on OOD at the threshold keeping 95 % of ID.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch


import ood_core
from ood_core.claims import COMPARE_RESULTS, format_effect, format_value
from ood_core.data import open_set_splits
from ood_core.evaluate import evaluate
from ood_core.methods import applicable_scores, get_method, method_score_params
from ood_core.stats import paired_difference_ci
from ood_core.train import recommended_config, train

DEFAULT_OUT = COMPARE_RESULTS

# Pure data: which methods run on which dataset (each next to its baseline), with how many
# open-set splits and seeds. ``splits`` is None for a dataset with a fixed class split.
SUITE = [
    {"dataset": "digits", "methods": ["ce", "movr", "l2norm", "ib", "oe", "separation"], "splits": 5},
    {"dataset": "digit-canvases", "methods": ["jointenergy", "snojoe"], "splits": 5},
]
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
# --------------------------------------------------------------------------- diagnostics
# Geometry read off each trained model: method -> [fn(model, bench, outputs) -> {name: float}].
DIAGNOSTICS: dict[str, list[Callable]] = {}


def diagnostic(*methods):
    def wrap(fn):
        for m in methods:
            DIAGNOSTICS.setdefault(m, []).append(fn)
        return fn
    return wrap


def _ood_groups(bench) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, group in bench.ood_groups.items():
        groups.setdefault(group, []).append(name)
    return groups


JACOBIAN_SAMPLES = 300  # per set: the exact Jacobian costs d backward passes per sample


@diagnostic("ce", "movr")
def jacobian_gap(model, bench, outputs) -> dict:
    """Mean exact Jacobian norm of the unit-normalised representation, ID test vs unknown classes
    (Park et al.): jnd = unknown - known, and the scale-free ratio unknown / known."""
    from ood_core.geometry import jacobian_norm

    near = bench.ood["unknown"] if "unknown" in bench.ood else torch.cat(
        [bench.ood[n] for n in _ood_groups(bench).get("near", [])])  # a real-data preset: its near sets
    known = jacobian_norm(model, bench.test.x[:JACOBIAN_SAMPLES], method="exact")
    unknown = jacobian_norm(model, near[:JACOBIAN_SAMPLES], method="exact")
    return {"jn_known": float(known.mean()), "jn_unknown": float(unknown.mean()),
            "jnd": float(unknown.mean() - known.mean()), "jn_ratio": float(unknown.mean() / known.mean())}


@diagnostic("oe", "separation")
def orthogonal_share(model, bench, outputs) -> dict:
    """Mean share of feature energy outside span{w_c} (Wu et al.): on ID test and per OOD group,
    and the balanced gap (mean over groups of OOD share - ID share)."""
    from ood_core.geometry import orthogonal_energy_share
    from ood_core.models import head_weight

    w = head_weight(model).detach().cpu()

    def share(name):
        return float(np.nanmean(orthogonal_energy_share(outputs[name].features, w)))

    out = {"orth_id": share("id")}
    for group, names in _ood_groups(bench).items():
        out[f"orth_{group}"] = float(np.mean([share(n) for n in names]))
    out["orth_gap"] = float(np.mean([out[f"orth_{g}"] - out["orth_id"] for g in _ood_groups(bench)]))
    return out


@diagnostic("ce", "ib")
def class_geometry(model, bench, outputs) -> dict:
    """Inter/intra separation ratio and Davies-Bouldin index of the ID test features (class means as centres)."""
    from ood_core.geometry import davies_bouldin, separation_ratio

    z = outputs["id"].features.numpy()
    y = np.unique(bench.test.y.numpy(), return_inverse=True)[1]  # the classes present (a tiny test split may lack some)
    return {"sep_ratio": separation_ratio(z, y), "davies_bouldin": davies_bouldin(z, y)}


# --------------------------------------------------------------------------- running
@dataclasses.dataclass
class RunSettings:
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    splits: int | None = None  # None: each SUITE entry's own
    epochs: int | None = None  # None: each method's own default
    device: str = "cpu"
    arch: str | None = None
    data_root: str | None = None
    detectors: tuple[str, ...] = ()  # registry scores evaluated for every method besides its own ("all": every cheap one)


def detectors_for(settings: RunSettings, method: str, bench) -> list[str]:
    """The method's own scores, then ``settings.detectors`` that apply to the data's task."""
    from ood_core.scores import SCORES, scores_for_task

    own = applicable_scores(get_method(method), bench)
    task = scores_for_task(bench.task)
    extra = ([s for s in task if SCORES[s].cost != "inputs"] if settings.detectors == ("all",)
             else [s for s in settings.detectors if s in task])
    return own + [s for s in extra if s not in own]


def _init_for(method: str, pretrained: dict):
    """The pretrained model a fine-tuning method starts from, when this run already trained it."""
    pre = getattr(get_method(method), "pretrain", None)
    return pretrained.get(pre) if pre else None


def run_one(method: str, bench, split: int, seed: int, settings: RunSettings, pretrained: dict) -> tuple[dict, object]:
    cfg = recommended_config(method, seed=seed, epochs=settings.epochs, device=settings.device)
    kw = {"model_params": {"arch": settings.arch}} if settings.arch else {}
    init = _init_for(method, pretrained)
    if init is not None:
        kw["init"] = init
    t0 = time.perf_counter()
    result = train(method, bench, cfg, evaluate_after=False, **kw)
    train_s = time.perf_counter() - t0
    # the method's parameters for its scores (e.g. movr's softmax at its training T); a detector
    # that cannot be fitted on this head is left out and named in the report (skipped_scores)
    ev = evaluate(result.model, bench, score_names=detectors_for(settings, method, bench),
                  score_params=method_score_params(result.meta), skip_unfit=bool(settings.detectors))
    diags = {}
    for fn in DIAGNOSTICS.get(method, []):
        diags.update(fn(result.model, bench, ev.outputs))
    run = {"method": method, "dataset": bench.name, "split": split, "known": list(bench.known), "seed": seed,
           "epochs": cfg.epochs, "train_seconds": round(train_s, 3), "init": "pretrained in this run" if init else None,
           "report": _compact(ev.report), "diagnostics": diags}
    return run, result.model


def _compact(report: dict) -> dict:
    """The report without its constant strings, metrics rounded to 6 digits (the file stays small)."""
    keep = {k: v for k, v in report.items() if k not in ("fpr95_definition", "score_convention")}
    for part in ("ood", "group_means"):
        keep[part] = {s: {sc: {m: round(float(v), 6) for m, v in ms.items()} for sc, ms in per.items()}
                      for s, per in keep[part].items()}
    return keep


def suite_entries(settings: RunSettings, only: list[str] | None, preset: str | None) -> list[dict]:
    if preset:
        methods = ["ce", "movr", "l2norm", "ib", "oe", "separation"]
        return [{"dataset": preset, "methods": [m for m in methods if not only or m in only], "splits": None}]
    entries = []
    for e in SUITE:
        methods = [m for m in e["methods"] if not only or m in only]
        if methods:
            entries.append({**e, "methods": methods,
                            "splits": settings.splits if settings.splits is not None else e["splits"]})
    return entries


def run_unit(dataset: str, methods: list[str], split: int | None, seed: int, settings: RunSettings) -> list[dict]:
    """Every method on one (dataset, split, seed): the unit of work (units are independent)."""
    known = open_set_splits(split + 1)[split] if split is not None else None
    bench = ood_core.load_benchmark(dataset, known=known, data_root=settings.data_root)
    runs, pretrained = [], {}  # method -> model of this (split, seed), for fine-tuning recipes
    # a method's pretrain stage runs first so its model can be reused
    for method in sorted(methods, key=lambda m: getattr(get_method(m), "pretrain", None) is not None):
        run, pretrained[method] = run_one(method, bench, split or 0, seed, settings, pretrained)
        q = {k: v for k, v in run["report"].items() if k.startswith("id_")}
        print(f"  {dataset:15s} split {split or 0} {method:12s} seed {seed}: {run['train_seconds']:5.1f} s, "
              + ", ".join(f"{k} {100 * v:.1f}" for k, v in q.items()), flush=True)
        runs.append(run)
    return runs


def _run_unit_in_worker(args) -> list[dict]:
    torch.set_num_threads(1)  # the workers share the cores; tiny models gain nothing from intra-op threads
    return run_unit(*args)


def run_suite(entries: list[dict], settings: RunSettings, workers: int = 1) -> list[dict]:
    """All units of ``entries``; with ``workers`` > 1 in that many processes (same runs, same order)."""
    units = [(e["dataset"], e["methods"], split, seed, settings)
             for e in entries for split in (range(e["splits"]) if e["splits"] else [None]) for seed in settings.seeds]
    if workers <= 1:
        return [run for u in units for run in run_unit(*u)]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return [run for runs in pool.imap(_run_unit_in_worker, units) for run in runs]


# --------------------------------------------------------------------------- look-ups
def value(run: dict, score: str, where: str, metric: str) -> float:
    """A metric of one run: ``where`` is an OOD set, a group, or "balanced" (mean of the group means)."""
    rep = run["report"]
    if where == "balanced":
        return float(np.mean([per[score][metric] for g, per in rep["group_means"].items() if g != "user"]))
    src = rep["ood"] if where in rep["ood"] else rep["group_means"]
    return float(src[where][score][metric])


def id_quality(run: dict) -> float:
    return float(next(v for k, v in run["report"].items() if k.startswith("id_")))


class Results:
    def __init__(self, runs: list[dict]):
        self.runs = runs

    def of(self, method: str) -> dict[tuple, dict]:
        """(split, seed) -> run of ``method``."""
        return {(r["split"], r["seed"]): r for r in self.runs if r["method"] == method}

    def has(self, *methods) -> bool:
        return all(self.of(m) for m in methods)

    def paired(self, a: str, b: str, fa: Callable[[dict], float], fb: Callable[[dict], float] | None = None):
        """Values of ``fa`` on method a's runs and ``fb`` (default fa) on b's, over their common (split, seed)."""
        ra, rb = self.of(a), self.of(b)
        keys = sorted(set(ra) & set(rb))
        fb = fb or fa
        return np.array([fa(ra[k]) for k in keys]), np.array([fb(rb[k]) for k in keys]), keys


def pm(values, scale: float = 100.0, digits: int = 1) -> str:
    values = np.asarray(values, dtype=float) * scale
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def groups_of(res: Results, method: str) -> list[str]:
    first = next(iter(res.of(method).values()))
    return [g for g in first["report"]["group_means"] if g != "user"]


def results_table(res: Results, entries: list[dict]) -> str:
    lines = []
    for entry in entries:
        methods = [m for m in entry["methods"] if res.has(m)]
        if not methods:
            continue
        first = next(iter(res.of(methods[0]).values()))
        id_name = "ID mAP" if "id_map" in first["report"] else "ID acc"
        groups = groups_of(res, methods[0])
        n = len(res.of(methods[0]))
        lines += [f"\n**{entry['dataset']}** (AUROC / FPR95 in %, mean ± std over {n} split × seed runs)\n",
                  f"| method | score | {id_name} | " + " | ".join(f"AUROC {g} | FPR95 {g}" for g in groups)
                  + " | train s |", "|---|---|---|" + "---|---|" * len(groups) + "---|"]
        for m in methods:
            runs = list(res.of(m).values())
            evaluated = next(iter(runs[0]["report"]["ood"].values()))
            for score in evaluated:  # the method's own scores first, then --detectors
                cells = [pm([value(r, score, g, k) for r in runs]) for g in groups for k in ("auroc", "fpr95")]
                lines.append(f"| {m} | {score} | {pm([id_quality(r) for r in runs])} | " + " | ".join(cells)
                             + f" | {np.mean([r['train_seconds'] for r in runs]):.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- claims
@dataclasses.dataclass(frozen=True)
class Part:
    """One testable part of a claim: mean of ``a(run of method) - b(run of baseline)`` over the
    common (split, seed) pairs, in the claimed ``direction`` ("greater" or "less"); ``margin``
    shifts zero for a non-inferiority condition (e.g. accuracy kept within 1 point)."""

    text: str
    method: str
    baseline: str
    a: Callable[[dict], float]
    b: Callable[[dict], float] | None = None
    direction: str = "greater"
    margin: float = 0.0
    unit: str = "points"  # "points": x100 for display; "raw": as is
    condition: bool = False  # a side condition of the claim, not its effect


@dataclasses.dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    statement: str
    parts: tuple[Part, ...]
    figure: str  # what the Claims page draws for the mechanism


def _score(score, where, metric):
    return lambda r: value(r, score, where, metric)


def _diag(name):
    return lambda r: float(r["diagnostics"][name])


CLAIMS = [
    Claim("movr", "Park et al., arXiv 2209.11436",
          "m-OvR training widens the Jacobian-norm gap between unknown and known samples compared with CE.",
          (Part("JND (unknown − known, unit features): movr − ce", "movr", "ce", _diag("jnd"), unit="raw"),
           Part("unknown/known Jacobian-norm ratio: movr − ce", "movr", "ce", _diag("jn_ratio"), unit="raw")),
          "jacobian_hist"),
    Claim("snojoe", "Mei et al., arXiv 2405.04759",
          "Spectral normalisation lowers JointEnergy's FPR95, and JointEnergy beats MSP and MaxLogit on "
          "multi-label data.",
          (Part("JointEnergy FPR95 (balanced over groups): snojoe − jointenergy", "snojoe", "jointenergy",
                _score("joint_energy", "balanced", "fpr95"), direction="less"),
           Part("FPR95 (balanced) on snojoe: joint_energy − msp", "snojoe", "snojoe",
                _score("joint_energy", "balanced", "fpr95"), _score("msp", "balanced", "fpr95"), direction="less"),
           Part("FPR95 (balanced) on snojoe: joint_energy − maxlogit", "snojoe", "snojoe",
                _score("joint_energy", "balanced", "fpr95"), _score("maxlogit", "balanced", "fpr95"),
                direction="less")),
          "joint_energy_hist"),
    Claim("separation", "Wu et al., arXiv 2405.17816",
          "Compared with Outlier Exposure on the same outliers, the separation terms lower FPR95 and push OOD "
          "features further into the orthogonal complement of span{w_c}.",
          (Part("FPR95 (balanced): separation score on separation − msp on oe", "separation", "oe",
                _score("separation", "balanced", "fpr95"), _score("msp", "balanced", "fpr95"), direction="less"),
           Part("orthogonal-energy gap (OOD − ID share, balanced): separation − oe", "separation", "oe",
                _diag("orth_gap"))),
          "orthogonal_share"),
    Claim("ib", "Ando, arXiv 2111.12950",
          "Compared with CE features, the IB loss makes classes more compact and separated (inter/intra ratio) "
          "and its distance score separates held-out classes better.",
          (Part("inter/intra ratio: ib − ce", "ib", "ce", _diag("sep_ratio"), unit="raw"),
           Part("min-distance AUROC on unknown classes (near): ib − ce (class means)", "ib", "ce",
                _score("min_distance", "near", "auroc"))),
          "center_distances"),
    Claim("l2norm", "Haas et al., arXiv 2306.04072",
          "Training with L2-normalised features makes the feature norm a strong OOD score, far stronger than "
          "on a CE model, with ID accuracy kept.",
          (Part("feature-norm AUROC (balanced): l2norm − ce", "l2norm", "ce", _score("feature_norm", "balanced", "auroc")),
           Part("ID accuracy: l2norm − ce (kept: interval above −1 point)", "l2norm", "ce", id_quality,
                margin=-0.01, condition=True)),
          "feature_norm_hist"),
]


def judge(res: Results, ci_method: str = "t") -> list[dict]:
    """Every claim whose methods ran: each part's effect, interval, and verdict (a JSON-able list)."""
    out = []
    for claim in CLAIMS:
        parts = []
        for p in claim.parts:
            if not res.has(p.method, p.baseline):
                break
            a, b, keys = res.paired(p.method, p.baseline, p.a, p.b)
            ci = paired_difference_ci(a, b, method=ci_method)
            # the interval must clear the margin (0 for an effect) on the claimed side
            held = None if ci.n < 2 else bool(ci.low > p.margin if p.direction == "greater" else ci.high < p.margin)
            parts.append({"text": p.text, "method": p.method, "baseline": p.baseline, "direction": p.direction,
                          "margin": p.margin, "unit": p.unit, "condition": p.condition, "n_pairs": ci.n,
                          "mean_a": float(a.mean()), "mean_b": float(b.mean()), "effect": ci.mean,
                          "low": ci.low, "high": ci.high, "confidence": ci.confidence, "interval": ci.method,
                          "holds": held, "pairs": [list(k) for k in keys]})
        else:
            verdicts = [p["holds"] for p in parts]
            verdict = ("no verdict" if any(v is None for v in verdicts) else
                       "holds" if all(verdicts) else "does not hold" if not any(verdicts) else "partly")
            out.append({"key": claim.key, "paper": claim.paper, "statement": claim.statement,
                        "figure": claim.figure, "parts": parts, "verdict": verdict})
    return out


def claims_table(judged: list[dict]) -> str:
    lines = ["| claim | part | baseline → method | effect [95 % CI] | n | holds? |", "|---|---|---|---|---|---|"]
    for c in judged:
        for i, p in enumerate(c["parts"], 1):
            yes = {True: "yes", False: "**no**", None: "no verdict"}[p["holds"]]
            lines.append(f"| {c['key']} ({c['verdict']}) | ({i}) {p['text']} | {format_value(p, 'mean_b')} → "
                         f"{format_value(p, 'mean_a')} | {format_effect(p)} | {p['n_pairs']} | {yes} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated seeds (default 0-4)")
    p.add_argument("--splits", type=int, default=None, help="open-set splits per dataset (default: 5)")
    p.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    p.add_argument("--quick", action="store_true", help="1 split, seed 0, 10 epochs: a smoke run with no verdicts")
    p.add_argument("--methods", default=None, help="only these methods (comma-separated)")
    p.add_argument("--preset", default=None, help="a real-data preset instead of the embedded suite (e.g. cifar10)")
    p.add_argument("--arch", default=None, help="backbone for every method (e.g. resnet18 with --preset)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument("--data-root", default=None, help="folder of the real datasets (default $OOD_DATA_ROOT)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that train (split, seed) units side by side, one thread each (default 1)")
    p.add_argument("--detectors", default=None,
                   help="more registry scores for every method besides its own, comma-separated, or 'all' (every "
                        "one that runs on cached outputs; see `ood-lab list`); not used by the verdicts")
    p.add_argument("--ci", default="t", choices=("t", "bootstrap"), help="interval for the verdicts (default t)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"results file (default {DEFAULT_OUT.name} in results/)")
    args = p.parse_args(argv)
    seeds = (0,) if args.quick else tuple(int(s) for s in args.seeds.split(","))
    settings = RunSettings(seeds=seeds, splits=1 if args.quick else args.splits,
                           epochs=10 if args.quick and args.epochs is None else args.epochs,
                           device=args.device, arch=args.arch, data_root=args.data_root,
                           detectors=tuple(args.detectors.split(",")) if args.detectors else ())
    from ood_core.scores import SCORES

    for d in settings.detectors:
        if d != "all" and d not in SCORES:
            raise SystemExit(f"--detectors: unknown score {d!r}; `ood-lab list` names them")
    only = args.methods.split(",") if args.methods else None
    for m in only or []:
        get_method(m)  # an unknown name fails before any training
    entries = suite_entries(settings, only, args.preset)
    t0 = time.perf_counter()
    header = (f"# compare: {len(seeds)} seed(s) {list(seeds)}; splits "
              f"{settings.splits if settings.splits is not None else 'per dataset'}{' (quick)' if args.quick else ''}; "
              f"torch {torch.__version__} on {platform.machine()}, device {args.device}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, {max(1, args.workers)} worker(s)")
    print(header, flush=True)
    runs = run_suite(entries, settings, max(1, args.workers))
    res = Results(runs)
    print(results_table(res, entries))
    judged = [] if args.quick else judge(res, args.ci)
    if judged:
        print("\n**Claims** (paired over split × seed; a part holds when its 95 % interval excludes zero "
              "in the claimed direction)\n")
        print(claims_table(judged))
    elif args.quick:
        print("\n(--quick: no verdicts)")
    seconds = time.perf_counter() - t0
    print(f"\ntotal wall time: {seconds:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": {"command": "python benchmarks/compare.py " + " ".join(argv if argv is not None else
                                                                        sys.argv[1:]),
                    "header": header, "quick": args.quick, "seeds": list(seeds), "seconds": round(seconds, 1),
                    "ci": args.ci, "torch": torch.__version__, "machine": platform.machine(),
                    "cores": os.cpu_count(), "datasets": [e["dataset"] for e in entries]},
           "claims": judged, "runs": runs}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, out)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
