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
4. Detector cost: every score of the registry (``ood_core.scores.SCORES``, so scores added
   later appear by themselves) with its ``cost`` (a key of ``scores.COSTS``): fit time,
   scoring throughput (samples/s) and peak extra memory, on synthetic cached outputs of a
   linear head (features from a seeded generator, random labels), one row per setting
   ``CLASSESxDIMxBANK`` of ``--cost-rows``, each scoring ``--cost-n`` samples (10,000): by
   default 10 x 128 with a 5,000-sample bank (this project's scale; the section then takes
   well under a minute); the issue's 1,000-class x 2,048-dim head with a 50,000-sample
   training bank is ``--cost-rows 1000x2048x50000`` (about 2 minutes with ``--threads 1
   --repeats 1`` on 2 busy CPU cores, most of it Mahalanobis' and ViM's float64 fits and
   KNN's 10,000 x 50,000 x 2,048 product; it needs about 3 GiB free). Scores that need the inputs (``requires_inputs``: odin,
   jacobian_norm) are timed on the shipped ``ce_digits.pt`` instead, next to its bare
   forward pass. Each setting runs in a worker subprocess (see :func:`cost_section` for what
   the memory columns measure); a score that fails is listed with its reason, and a worker
   that dies is restarted after the score it died on.

    .venv/bin/python benchmarks/geometry_speed.py                 # CPU, all sections
    .venv/bin/python benchmarks/geometry_speed.py --device cuda   # on a GPU machine
    .venv/bin/python benchmarks/geometry_speed.py --sizes 1000,10000 --skip-umap
    .venv/bin/python benchmarks/geometry_speed.py --sections cost             # section 4 only
    .venv/bin/python benchmarks/geometry_speed.py --sections cost --quick     # seconds: tiny rows
    .venv/bin/python benchmarks/geometry_speed.py --sections cost --cost-rows 1000x2048x50000 --repeats 1
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
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
from ood_core.methods import default_score_names
from ood_core.runtime import select_device
from ood_core.scores import COSTS, SCORES, make_score, scores_for_task


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

    def forward_and_scores(names=None):
        out = extract_outputs(model, x, batch_size=512, device=device)
        return {name: s(out) for name, s in used if names is None or name in names}

    # what the app computes and caches for this checkpoint (its method's scores), apart from every detector
    own = [n for n in default_score_names(meta, bench) if n in dict(used)]
    forward_only()  # warm-up
    t_fwd, t_all, t_own = math.inf, math.inf, math.inf
    for _ in range(repeats):  # alternate so drift in machine load hits all three
        t_fwd = min(t_fwd, best_time(forward_only, 1, device)[0])
        t_all = min(t_all, best_time(forward_and_scores, 1, device)[0])
        t_own = min(t_own, best_time(lambda: forward_and_scores(own), 1, device)[0])
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
    print(f"| forward pass + the checkpoint's {len(own)} reported scores | {t_own:.3f} | {n / t_own:,.0f} |")
    print(f"| forward pass + all {len(used)} scores | {t_all:.3f} | {n / t_all:,.0f} |")
    print(f"the checkpoint's reported scores (what the app evaluates and caches): {', '.join(own)}")
    print(f"throughput ratio, the checkpoint's scores: {t_fwd / t_own:.2f}; every score: {t_fwd / t_all:.2f} "
          "(target >= 0.9)")
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


# --------------------------------------------------------------------------- 4. detector cost
# Memory: the worker's peak resident set size (VmHWM in /proc/self/status) is reset before
# each phase by writing 5 to /proc/self/clear_refs (Linux >= 4.0), and the rise of the peak
# above the resident size just before the phase is reported. Freed memory must leave the
# process first, else a score would reuse what an earlier one left in the heap and show
# nothing: glibc's malloc_trim(0) hands free heap pages back before each phase (large blocks
# are unmapped on free anyway).
MIB = 2.0 ** 20


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak resident memory of this process above its level at :meth:`start`, in bytes (None where
    /proc/self/clear_refs cannot reset the peak: then it is not measured rather than guessed)."""

    def start(self) -> None:
        gc.collect()
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.base = _proc_status_kib("VmRSS")
        except OSError:
            self.base = None

    def extra(self) -> float | None:
        hwm = _proc_status_kib("VmHWM")
        return None if self.base is None or hwm is None else max(0, hwm - self.base) * 1024.0


class SyntheticLinearModel(torch.nn.Module):
    """What a fitted score reads from a model: a linear head (``model.head``); forward(z) = (z, W z + b)."""

    def __init__(self, classes: int, dim: int, seed: int):
        from ood_core.models import LinearHead

        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.head = LinearHead(dim, classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(classes, dim, generator=g) / math.sqrt(dim))
            self.head.bias.copy_(0.1 * torch.randn(classes, generator=g))

    def forward(self, z):
        from ood_core.models import ModelOutput

        return ModelOutput(z, self.head(z))


def synthetic_outputs(classes: int, dim: int, bank: int, n: int, seed: int = 0):
    """(model, train outputs, train labels, scored outputs): class means + unit noise, random labels, float32."""
    from ood_core.models import ModelOutput

    g = torch.Generator().manual_seed(seed)
    model = SyntheticLinearModel(classes, dim, seed)
    means = 2.0 * torch.randn(classes, dim, generator=g)

    def draw(rows):
        y = torch.randint(classes, (rows,), generator=g)
        z = torch.randn(rows, dim, generator=g).add_(means[y])
        with torch.no_grad():
            return ModelOutput(z, model.head(z)), y

    train, y = draw(bank)
    test, _ = draw(n)
    return model, train, y, test


def _score_result(name: str, fn_fit, fn_score, fn_warm, n: int, repeats: int, meter: PeakRSS, cuda=None) -> dict:
    """Fit once (timed, with its memory), warm up on a few rows, then score ``repeats`` times (best time)."""
    cls = SCORES[name]
    res = {"fit_s": None, "fit_mem": None}
    if cls.requires_fit:
        meter.start()
        t0 = time.perf_counter()
        fn_fit()
        res["fit_s"] = time.perf_counter() - t0
        res["fit_mem"] = meter.extra()
    fn_warm()  # first-call costs (lazy initialisation, thread pools) are not the score's
    meter.start()
    if cuda is not None:
        torch.cuda.synchronize(cuda)
        torch.cuda.reset_peak_memory_stats(cuda)
        cuda_base = torch.cuda.memory_allocated(cuda)
    best = math.inf
    for _ in range(repeats):
        if cuda is not None:
            torch.cuda.synchronize(cuda)
        t0 = time.perf_counter()
        s = fn_score()
        if cuda is not None:
            torch.cuda.synchronize(cuda)
        best = min(best, time.perf_counter() - t0)
    res["score_mem"] = meter.extra()
    if cuda is not None:
        res["score_cuda_mem"] = float(torch.cuda.max_memory_allocated(cuda) - cuda_base)
    s = np.asarray(s)
    if s.shape != (n,) or not np.isfinite(s).all():
        raise OODCoreError(f"scores of shape {s.shape}, {int((~np.isfinite(s)).sum())} non-finite")
    res.update(score_s=best, rate=n / best)
    return res


def cost_worker(jobs: list[dict]) -> None:
    """Run the cost jobs given by the parent; one ``RESULT {json}`` line per (job, score), flushed."""
    from ood_core.models import ModelOutput

    meter = PeakRSS()

    def emit(job_i, name, **kw):
        print("RESULT " + json.dumps({"job": job_i, "score": name, **kw}), flush=True)

    for job_i, job in enumerate(jobs):
        if not job["scores"]:
            continue
        try:
            if job["kind"] == "synthetic":
                model, train, y, test = synthetic_outputs(job["classes"], job["dim"], job["bank"], job["n"])
                multi_hot = torch.zeros(y.shape[0], job["classes"]).scatter_(1, y[:, None], 1.0)
            else:
                device = select_device(job["device"])
                model, meta = load_checkpoint(job["checkpoint"], device=device)
                bench = load_benchmark_from_spec(meta["dataset"])
                x = torch.cat([bench.test.x, *bench.ood.values()])
                x = x.repeat(max(1, math.ceil(job["n"] / x.shape[0])), *([1] * (x.dim() - 1)))[:job["n"]]
                cuda = device if device.type == "cuda" else None
                extract_outputs(model, x, device=device)  # warm-up (per-shape kernel set-up)
                t_fwd = min(best_time(lambda: extract_outputs(model, x, device=device), 1, device)[0]
                            for _ in range(job["repeats"]))
                emit(job_i, "(forward pass only)", score_s=t_fwd, rate=job["n"] / t_fwd)
        except Exception as e:  # the setting itself failed: every score of it says so
            for name in job["scores"]:
                emit(job_i, name, skipped=f"setting failed: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        for name in job["scores"]:
            cls = SCORES[name]
            try:
                score = make_score(name)
                if job["kind"] == "synthetic":
                    if cls.requires_inputs:
                        emit(job_i, name, skipped="needs the inputs, not cached outputs: timed on the real model")
                        continue
                    labels = y if "multiclass" in cls.tasks else multi_hot
                    few = ModelOutput(test.features[:64], test.logits[:64])
                    res = _score_result(name, lambda: score.fit(train, labels, model), lambda: score(test),
                                        lambda: score(few), job["n"], job["repeats"], meter)
                    if "multiclass" not in cls.tasks:
                        res["note"] = f"a {'/'.join(cls.tasks)} score, timed on the same logits"
                else:
                    if not cls.requires_inputs:
                        continue
                    if cls.refusal(bench.task):
                        emit(job_i, name, skipped=cls.refusal(bench.task))
                        continue
                    res = _score_result(name, lambda: None, lambda: score.score_inputs(model, x),
                                        # warm-up on the same shapes: oneDNN/cuDNN set up per input shape
                                        lambda: score.score_inputs(model, x), job["n"], job["repeats"], meter, cuda)
                emit(job_i, name, **res)
            except Exception as e:
                msg = str(e).splitlines()[0] if str(e) else ""
                emit(job_i, name, skipped=f"{type(e).__name__}: {msg}"[:200])
            finally:
                score = None
                gc.collect()


def run_cost_jobs(jobs: list[dict], timeout: float | None = None) -> list[list[dict]]:
    """Run ``jobs`` in worker subprocesses; per job the list of result dicts, in order.

    A worker that dies (killed for memory, a crash in native code, ``timeout`` seconds) costs
    the score it was on, which is reported with the exit status; a fresh worker goes on with
    the rest."""
    results: list[list[dict]] = [[] for _ in jobs]
    todo = [dict(job, scores=list(job["scores"])) for job in jobs]
    # the worker uses this process's thread count (and finds the same ood_core)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    while any(job["scores"] for job in todo):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cost-worker", json.dumps(todo)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc = f"timeout after {timeout:g} s"
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = ""
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                r = json.loads(line[len("RESULT "):])
                results[r["job"]].append(r)
                if r["score"] in todo[r["job"]]["scores"]:
                    todo[r["job"]]["scores"].remove(r["score"])
        if rc == 0:
            for job_i, job in enumerate(todo):  # anything a job left out (e.g. output scores on the real model)
                job["scores"] = []
            break
        for job_i, job in enumerate(todo):  # the score the worker was on when it died
            if job["scores"]:
                name = job["scores"].pop(0)
                tail = (stderr.strip().splitlines() or [""])[-1][:160]
                results[job_i].append({"job": job_i, "score": name,
                                       "skipped": f"the worker died on it (exit {rc}){': ' + tail if tail else ''}"})
                break
    return results


def _fmt_mem(b) -> str:
    return "n/a" if b is None else f"{b / MIB:,.1f} MiB"


def _fmt_rate(r) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:,.1f}"


def cost_section(rows, n: int, input_n: int, checkpoint: Path, device, repeats: int,
                 timeout: float | None = None) -> list[dict]:
    """Print section 4 and return its table as dicts (one per setting and score).

    ``rows``: (classes, dim, bank) settings for the synthetic cached outputs, each scoring ``n``
    samples; the scores that need the inputs are timed on ``checkpoint`` with ``input_n`` inputs
    on ``device`` (the cached-output scores always run on the CPU, where the evaluator keeps
    the cached outputs). Times are the best of ``repeats`` scoring calls, fit once.

    Memory columns: the peak resident set size (RSS) of the worker process above its RSS
    just before the phase. "fit" includes the statistics the score keeps (e.g. KNN's
    normalised bank, bank x dim float32); "scoring" is the largest temporary of the scoring
    calls (e.g. a KNN block of rows x bank cosines, bounded by the score's chunking). It
    counts everything the process touches (torch, NumPy, BLAS workspaces), not only tensors;
    page granularity, heap fragments and BLAS buffers add up to about 1 MiB of noise. With ``device``
    cuda the input scores also report the CUDA allocator's peak above its level before.
    """
    names = list(SCORES)
    jobs = [dict(kind="synthetic", classes=k, dim=d, bank=b, n=n, repeats=repeats, scores=names)
            for k, d, b in rows]
    jobs.append(dict(kind="inputs", checkpoint=str(checkpoint), device=str(device), n=input_n, repeats=repeats,
                     scores=[nm for nm in names if SCORES[nm].requires_inputs]))
    t0 = time.perf_counter()
    results = run_cost_jobs(jobs, timeout)
    print(f"\n## 4. Detector cost: all {len(names)} registered scores (fit once, scoring best of {repeats}; "
          f"{time.perf_counter() - t0:.0f} s)")
    print("cost: " + "; ".join(f"{k} = {v}" for k, v in COSTS.items()))
    print("memory: peak RSS of the worker process above its RSS just before the phase (fit: including the "
          "statistics the score keeps; scoring: its largest temporaries); CPU memory of the whole process")
    table = []
    for job, res in zip(jobs, results):
        if job["kind"] == "synthetic":
            setting = (f"synthetic cached outputs: {job['classes']:,} classes x {job['dim']:,} dims, training bank "
                       f"{job['bank']:,}, {n:,} samples scored (CPU)")
        else:
            setting = f"{Path(job['checkpoint']).name}: {input_n:,} inputs scored ({device})"
        print(f"\n### {setting}")
        print("| score | cost | tasks | fit (s) | fit peak extra | scoring samples/s | scoring peak extra | note |")
        print("|---|---|---|---|---|---|---|---|")
        by_name = {r["score"]: r for r in res}
        order = [nm for nm in by_name if nm not in SCORES] + [nm for nm in names if nm in by_name]
        for nm in order:
            r = by_name[nm]
            cls = SCORES.get(nm)
            cost = cls.cost if cls is not None else "-"
            tasks = ", ".join(cls.tasks) if cls is not None else "-"
            if "skipped" in r:
                cells = ["-", "-", "-", "-", "skipped: " + r["skipped"]]
            else:
                mem = _fmt_mem(r.get("score_mem")) if cls is not None else "-"
                if "score_cuda_mem" in r:
                    mem = f"{r['score_cuda_mem'] / MIB:,.1f} MiB CUDA, {mem} RSS"
                cells = ["-" if r.get("fit_s") is None else f"{r['fit_s']:.3f}",
                         "-" if r.get("fit_s") is None else _fmt_mem(r.get("fit_mem")),
                         _fmt_rate(r["rate"]), mem, r.get("note", "")]
            print(f"| {nm} | {cost} | {tasks} | " + " | ".join(cells) + " |")
            table.append({"setting": setting, "score": nm, "cost": cost, **r})
    return table


def parse_rows(spec: str) -> list[tuple[int, int, int]]:
    rows = []
    for part in filter(None, spec.split(",")):
        try:
            k, d, b = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--cost-rows: {part!r} is not CLASSESxDIMxBANK (e.g. 1000x2048x50000)") from None
        rows.append((k, d, b))
    return rows


SECTIONS = ("jacobian", "scoring", "scale", "cost")
QUICK = dict(cost_rows="10x32x500", cost_n=500, cost_input_n=32, repeats=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "ce_digits.pt"))
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"which sections, of: {','.join(SECTIONS)}")
    p.add_argument("--n", type=int, default=256, help="samples for the batched Jacobian methods")
    p.add_argument("--n-naive", type=int, default=32, help="samples for the naive per-sample loop")
    p.add_argument("--ks", default="4,16,64", help="projection counts K for the estimate")
    p.add_argument("--scoring-checkpoints", default="ce_digits.pt,snojoe_canvases.pt",
                   help="shipped checkpoints (in checkpoints/) for the scoring-throughput section")
    p.add_argument("--sizes", default="1000,10000,50000", help="point counts for section 3")
    p.add_argument("--umap-epochs", type=int, default=200)
    p.add_argument("--skip-umap", action="store_true")
    p.add_argument("--cost-rows", default="10x128x5000",
                   help="section 4 settings CLASSESxDIMxBANK of synthetic cached outputs (comma-separated); "
                        "the issue's row is 1000x2048x50000 (about 2 minutes, 3 GiB: see the module docstring)")
    p.add_argument("--cost-n", type=int, default=10000, help="section 4: samples scored per synthetic setting")
    p.add_argument("--cost-input-n", type=int, default=1000,
                   help="section 4: inputs scored by the scores that need the inputs (on --checkpoint)")
    p.add_argument("--cost-timeout", type=float, default=None, help="section 4: seconds per worker (default: none)")
    p.add_argument("--quick", action="store_true",
                   help=f"smallest settings for section 4 ({', '.join(f'{k}={v}' for k, v in QUICK.items())})")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 on a machine whose cores are busy)")
    p.add_argument("--cost-worker", help=argparse.SUPPRESS)  # internal: JSON jobs of a section-4 worker
    args = p.parse_args(argv)
    if args.cost_worker is not None:
        cost_worker(json.loads(args.cost_worker))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(sections) - set(SECTIONS):
        raise SystemExit(f"--sections: unknown {sorted(set(sections) - set(SECTIONS))}; choose of {', '.join(SECTIONS)}")
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"checkpoint {Path(args.checkpoint).name}")
    if "jacobian" in sections:
        model, meta = load_checkpoint(args.checkpoint, device=device)
        bench = load_benchmark_from_spec(meta["dataset"])
        x = torch.cat([bench.test.x, *bench.ood.values()])[:args.n]
        jacobian_section(model, x, args.n_naive, [int(k) for k in args.ks.split(",")], args.repeats, device)
    if "scoring" in sections:
        for name in args.scoring_checkpoints.split(","):
            scoring_section(ROOT / "checkpoints" / name, args.repeats, device)
    if "scale" in sections:
        scale_section([int(s) for s in args.sizes.split(",")], args.skip_umap, args.umap_epochs)
    if "cost" in sections:
        cost_section(parse_rows(args.cost_rows), args.cost_n, args.cost_input_n, Path(args.checkpoint), device,
                     args.repeats, args.cost_timeout)


if __name__ == "__main__":
    main()
