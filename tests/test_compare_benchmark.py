"""benchmarks/compare.py: open-set splits, paired verdicts on hand-made runs (against scipy), and an
end-to-end run of the claims on a real-data preset (fake CIFAR files in the real format)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_bench", ROOT / "benchmarks" / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_open_set_splits():
    from ood_core.data import open_set_splits

    splits = open_set_splits(5)
    assert splits[0] == (0, 1, 2, 3, 4, 5)
    assert len(set(splits)) == 5
    assert all(len(s) == 6 and list(s) == sorted(s) and set(s) <= set(range(10)) for s in splits)
    assert open_set_splits(3) == splits[:3]  # seeded; a prefix of the longer list
    assert len(set(open_set_splits(40))) == 40  # never a split twice


def _run(method, split, seed, fn_auroc, acc, diags=None):
    """A run record as compare.run_one writes it, with one OOD set per group."""
    groups = {"unknown": "near", "photos": "far-real", "blobs": "far-synthetic"}
    ood = {s: {"feature_norm": {"auroc": fn_auroc[g], "fpr95": 1 - fn_auroc[g]}} for s, g in groups.items()}
    return {"method": method, "split": split, "seed": seed, "train_seconds": 1.0, "diagnostics": diags or {},
            "report": {"id_accuracy": acc, "ood": ood, "groups": groups,
                       "group_means": {g: ood[s] for s, g in groups.items()}}}


def test_verdicts_are_paired_t_intervals(compare):
    rng = np.random.default_rng(0)
    runs, ce_bal, l2_bal = [], [], []
    for split in range(2):
        for seed in range(3):
            base = {g: 0.8 + 0.05 * rng.random() for g in ("near", "far-real", "far-synthetic")}
            gain = {g: 0.05 + 0.01 * rng.random() for g in base}
            runs.append(_run("ce", split, seed, base, 0.99))
            runs.append(_run("l2norm", split, seed, {g: base[g] + gain[g] for g in base}, 0.99 - 0.001 * seed))
            ce_bal.append(np.mean(list(base.values())))
            l2_bal.append(np.mean([base[g] + gain[g] for g in base]))
    judged = {c["key"]: c for c in compare.judge(compare.Results(runs))}
    assert list(judged) == ["l2norm"]  # the other claims' methods did not run
    auroc_part, acc_part = judged["l2norm"]["parts"]
    ref = sps.ttest_rel(l2_bal, ce_bal).confidence_interval(0.95)
    assert auroc_part["n_pairs"] == 6
    assert auroc_part["low"] == pytest.approx(ref.low) and auroc_part["high"] == pytest.approx(ref.high)
    assert auroc_part["holds"] is True and acc_part["holds"] is True
    assert judged["l2norm"]["verdict"] == "holds"


def test_no_effect_does_not_hold_and_an_accuracy_drop_fails_the_condition(compare):
    runs = []
    for seed in range(5):
        same = {g: 0.9 + 0.01 * ((seed * 7) % 3) for g in ("near", "far-real", "far-synthetic")}
        noisy = {g: v + (0.01 if seed % 2 else -0.01) for g, v in same.items()}
        runs += [_run("ce", 0, seed, same, 0.99), _run("l2norm", 0, seed, noisy, 0.95)]
    (claim,) = compare.judge(compare.Results(runs))
    assert [p["holds"] for p in claim["parts"]] == [False, False]
    assert claim["verdict"] == "does not hold"


def test_one_pair_gives_no_verdict(compare):
    runs = [_run("ce", 0, 0, dict.fromkeys(("near", "far-real", "far-synthetic"), 0.8), 0.99),
            _run("l2norm", 0, 0, dict.fromkeys(("near", "far-real", "far-synthetic"), 0.9), 0.99)]
    (claim,) = compare.judge(compare.Results(runs))
    assert claim["verdict"] == "no verdict"


def test_claims_on_a_real_data_preset_end_to_end(compare, tmp_path, capsys):
    """--preset cifar10 (fake files in the real format) trains every method, judges the claims and
    stores every number; the same command runs on a GPU with --arch resnet18 --device cuda."""
    from fake_datasets import write_all

    root = write_all(tmp_path / "data")
    out = tmp_path / "res.json"
    assert compare.main(["--preset", "cifar10", "--data-root", str(root), "--arch", "smallcnn", "--epochs", "1",
                         "--seeds", "0,1", "--methods", "ce,l2norm,oe,separation", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {(r["method"], r["seed"]) for r in doc["runs"]} == {(m, s) for m in ("ce", "l2norm", "oe", "separation")
                                                                for s in (0, 1)}
    assert all(r["dataset"] == "cifar10" for r in doc["runs"])
    sep = next(r for r in doc["runs"] if r["method"] == "separation")
    assert sep["init"] == "pretrained in this run"  # fine-tuned from the ce model of the same seed
    assert {"orth_id", "orth_gap"} <= set(sep["diagnostics"])
    keys = {c["key"]: c for c in doc["claims"]}
    assert set(keys) == {"l2norm", "separation"}
    assert all(p["n_pairs"] == 2 for c in keys.values() for p in c["parts"])
    assert "**Claims**" in capsys.readouterr().out


def test_detectors_join_every_method_and_a_head_they_do_not_fit_is_named(compare, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert compare.main(["--methods", "ce,movr", "--splits", "1", "--seeds", "0", "--epochs", "1", "--detectors",
                         "react,gen,rmds", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    ce = next(r for r in doc["runs"] if r["method"] == "ce")
    movr = next(r for r in doc["runs"] if r["method"] == "movr")
    first = lambda run: next(iter(run["report"]["ood"].values()))  # noqa: E731
    assert {"msp", "react", "gen", "rmds"} <= set(first(ce))
    # movr's cosine head: react re-applies a linear head, so it is left out with the reason
    assert "react" not in first(movr) and "linear classifier head" in movr["report"]["skipped_scores"]["react"]
    assert {"gen", "rmds"} <= set(first(movr))
    printed = capsys.readouterr().out
    assert "| ce | react |" in printed and "| movr | gen |" in printed
    with pytest.raises(SystemExit, match="unknown score 'nope'"):
        compare.main(["--methods", "ce", "--quick", "--detectors", "nope", "--out", str(out)])
