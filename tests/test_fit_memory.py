"""Every fitted score's fit stays within the memory budget: none copies the whole training
bank (features or logits) to float64. Measured as the benchmark does (benchmarks/
geometry_speed.py's PeakRSS: the rise of this process's peak resident set above its level
just before each fit), in a subprocess, on 30,000 x 512 float32 features and 384 classes.

A float64 copy of those features is 123 MB, of the logits 92 MB; with a 4 MiB budget a
chunked fit needs a few MB. Before the fits of react, dice, klm, openmax and min_distance
were chunked they rose by 90-250 MB here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ood_core.scores import SCORES

ROOT = Path(__file__).resolve().parents[1]
K, D, N = 384, 512, 30_000
BUDGET = 4 << 20

_SCRIPT = r"""
import gc, importlib.util, json, sys
import numpy as np, torch
spec = importlib.util.spec_from_file_location("gs", sys.argv[1])
gs = importlib.util.module_from_spec(spec); spec.loader.exec_module(gs)
import ood_core.scores as S
k, d, n, budget = (int(v) for v in sys.argv[2:6])
S.MEMORY_BUDGET_BYTES = budget
model, train, y, _ = gs.synthetic_outputs(k, d, n, 10)
# one-time costs that are not a fit's: BLAS/LAPACK work buffers, thread pools, lazy imports
a = torch.randn(600, d, dtype=torch.float64); _ = a.T @ a; np.linalg.eigh((a.T @ a).numpy())
np.linalg.pinv(np.random.default_rng(0).normal(size=(k, d))); torch.bincount(torch.arange(10))
meter, res = gs.PeakRSS(), {}
for name in sys.argv[6].split(","):
    s = S.make_score(name)
    meter.start()
    s.fit(train, y, model)
    res[name] = meter.extra()
    del s
    gc.collect()
print(json.dumps(res))
"""


def _fitted_names() -> list[str]:
    return sorted(n for n, c in SCORES.items()
                  if c.requires_fit and c.cost != "inputs" and "multiclass" in c.tasks)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
def test_every_fit_stays_far_below_a_float64_copy_of_the_bank():
    names = _fitted_names()
    assert {"react", "dice", "klm", "openmax", "min_distance", "knn", "vim"} <= set(names)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT / "benchmarks" / "geometry_speed.py"),
                           str(K), str(D), str(N), str(BUDGET), ",".join(names)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    if any(v is None for v in peaks.values()):
        pytest.skip("the peak resident set could not be reset on this kernel")
    copy64 = 8 * N * min(D, K)  # the smaller of the two float64 copies: 92 MB
    bank32 = 4 * N * D  # knn and nnguide keep the (normalised) features as a float32 bank by design
    over = {name: round(v / 2**20, 1) for name, v in peaks.items()
            if v > (bank32 if name in ("knn", "nnguide") else 0) + 0.4 * copy64}
    assert not over, f"fit peaks above the bound (MiB): {over}"
