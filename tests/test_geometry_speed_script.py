"""Smoke test of section 4 (detector cost) of ``benchmarks/geometry_speed.py``.

It runs the section's real code path in its smallest mode (``--sections cost --quick``: one
worker subprocess, tiny synthetic outputs, 32 inputs) and checks the structure of the tables,
never the timings: every registered score is listed, the scores the issue names are measured,
the scores that need the inputs are measured on the real model. A worker that dies costs only
the score it was on.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

import ood_core  # noqa: F401  (registers every score)
from ood_core.scores import SCORES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "geometry_speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("geometry_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["geometry_speed"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("geometry_speed", None)


def _tables(text: str) -> dict[str, dict[str, list[str]]]:
    """{### heading: {first cell: cells}} of the markdown tables under each ### heading."""
    tables, current = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            current = tables.setdefault(line[4:], {})
        elif current is not None and line.startswith("| ") and not line.startswith("| score |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            current[cells[0]] = cells
    return tables


def test_quick_cost_section_lists_every_registered_score(speed, capsys):
    threads = torch.get_num_threads()
    try:  # one thread: the worker's start and oneDNN set-up are what cost time here
        speed.main(["--sections", "cost", "--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert f"## 4. Detector cost: all {len(SCORES)} registered scores" in out
    tables = _tables(out)
    synthetic = [t for h, t in tables.items() if h.startswith("synthetic cached outputs: 10 classes x 32 dims")]
    real = [t for h, t in tables.items() if h.startswith("ce_digits.pt: 32 inputs")]
    assert len(synthetic) == 1 and len(real) == 1, list(tables)
    synthetic, real = synthetic[0], real[0]
    assert set(synthetic) == set(SCORES)  # every registered score, also those added later
    header = ["score", "cost", "tasks", "fit (s)", "fit peak extra", "scoring samples/s", "scoring peak extra", "note"]
    for name, cells in synthetic.items():
        assert len(cells) == len(header), cells
        assert cells[1] == SCORES[name].cost
        measured = "skipped:" not in cells[-1]
        if SCORES[name].requires_inputs:
            assert not measured and "needs the inputs" in cells[-1]
        else:
            assert measured or cells[-1].startswith("skipped: "), cells  # a score that fails says why
        if measured:
            assert re.fullmatch(r"[\d,.]+", cells[5]), cells
            assert cells[6].endswith("MiB") or cells[6] == "n/a"
            assert (cells[3] == "-") == (not SCORES[name].requires_fit), cells
    for name in ("msp", "energy", "knn", "mahalanobis", "vim"):  # the scores are measured
        assert "skipped" not in synthetic[name][-1], synthetic[name]
    inputs = {n for n, c in SCORES.items() if c.requires_inputs}
    assert {"odin", "jacobian_norm"} <= inputs
    assert set(real) == inputs | {"(forward pass only)"}
    for name in inputs:
        assert "skipped" not in real[name][-1] and re.fullmatch(r"[\d,.]+", real[name][5]), real[name]


def test_a_worker_that_dies_costs_only_its_score(speed):
    jobs = [dict(kind="synthetic", classes=3, dim=4, bank=10, n=10, repeats=1, scores=["msp", "knn"])]
    res = speed.run_cost_jobs(jobs, timeout=0.2)  # no worker can import torch in 0.2 s
    assert [r["score"] for r in res[0]] == ["msp", "knn"]
    assert all("the worker died on it (exit timeout" in r["skipped"] for r in res[0])


def test_rows_and_peak_memory(speed):
    assert speed.parse_rows("1000x2048x50000,10X128X5000") == [(1000, 2048, 50000), (10, 128, 5000)]
    with pytest.raises(SystemExit):
        speed.parse_rows("1000x2048")
    meter = speed.PeakRSS()
    meter.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    extra = meter.extra()
    del block
    if extra is not None:  # Linux with /proc/self/clear_refs
        assert 56 * 2**20 <= extra <= 96 * 2**20, extra
