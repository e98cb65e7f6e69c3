"""Disk-cached feature extraction (ood_core.feature_cache) and the CLI's `features` command.

Cached outputs are compared with a direct `extract_outputs` of the same model; a hit is shown by
counting the model's forward calls (zero) or by making extraction impossible.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging

import numpy as np
import pytest
import torch

import ood_core
from ood_core.cli import main
from ood_core.feature_cache import FeatureCache, data_fingerprint, model_fingerprint

from conftest import CHECKPOINTS

DIGITS = CHECKPOINTS / "ce_digits.pt"
E = importlib.import_module("ood_core.evaluate")  # the module (ood_core.evaluate is also a function)


def _model():
    model, _ = ood_core.load_checkpoint(DIGITS)
    return model


def _count_forward(model) -> list:
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.fixture(scope="module")
def bench():
    return ood_core.load_benchmark("digits")


def _sources(bench):
    return {"train": bench.train.x, "val": bench.val.x, "id": bench.test.x, **bench.ood}


def test_second_extraction_reads_the_cache_and_runs_no_forward_pass(tmp_path, bench):
    cache = FeatureCache(tmp_path)
    first = E.extract_benchmark_outputs(_model(), bench, cache=cache)
    model = _model()  # a fresh copy of the same weights: the key is the content, not the object
    calls, seen = _count_forward(model), []
    again = E.extract_benchmark_outputs(model, bench, cache=cache,
                                        progress=lambda name, done, total, hit: seen.append((name, done, total, hit)))
    assert calls == []
    assert set(again) == {"id", "train", *bench.ood}
    sources = _sources(bench)
    assert seen == [(k, sources[k].shape[0], sources[k].shape[0], True) for k in again]
    for key, out in again.items():
        direct = E.extract_outputs(model, sources[key])
        assert torch.equal(out.features, direct.features) and torch.equal(out.logits, direct.logits)
        assert torch.equal(out.features, first[key].features)


def test_other_weights_or_other_data_are_cache_misses(tmp_path, bench):
    cache = FeatureCache(tmp_path)
    E.extract_benchmark_outputs(_model(), bench, sets=["id", "blobs"], cache=cache)

    changed = _model()
    with torch.no_grad():
        changed.backbone.net[0][1].running_mean += 0.5  # a buffer only: still another model
    calls = _count_forward(changed)
    out = E.extract_benchmark_outputs(changed, bench, sets=["id"], cache=cache)
    assert calls and torch.equal(out["id"].features, E.extract_outputs(changed, bench.test.x).features)

    model = _model()
    calls = _count_forward(model)
    other = {"blobs": bench.ood["blobs"].flip(-1)}  # same name, other pixels
    out = E.extract_benchmark_outputs(model, dataclasses.replace(bench, ood={**bench.ood, **other}),
                                      sets=["blobs"], cache=cache)
    assert calls  # the flipped set was extracted, not served from the entry of the original
    assert torch.equal(out["blobs"].features, E.extract_outputs(model, other["blobs"]).features)
    assert len(list(tmp_path.rglob("blobs-*.npz"))) == 2


def test_fingerprints(bench):
    a, b = _model(), _model()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.head.weight[0, 0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    x = bench.test.x
    assert data_fingerprint(x) == data_fingerprint(x.clone())
    assert data_fingerprint(x) != data_fingerprint(x.double())  # dtype counts
    assert data_fingerprint(x) != data_fingerprint(x.reshape(x.shape[0], -1))  # shape counts
    y = x.clone()
    y[5, 0, 3, 3] += 1e-3
    assert data_fingerprint(x) != data_fingerprint(y)


class _Payload:
    marker = None

    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def _corrupt(path, kind, n):
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif kind == "wrong rows":
        np.savez(path, features=np.zeros((n + 1, 128), np.float32), logits=np.zeros((n + 1, 6), np.float32))
    elif kind == "nan":
        np.savez(path, features=np.full((n, 128), np.nan, np.float32), logits=np.zeros((n, 6), np.float32))
    elif kind == "wrong keys":
        np.savez(path, something=np.zeros(3))
    elif kind == "pickled object":
        arr = np.empty(1, dtype=object)
        arr[0] = _Payload()
        with open(path, "wb") as f:  # an .npz whose member is a pickle that would create a file
            np.savez(f, features=arr, logits=arr, allow_pickle=True)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "wrong rows", "nan", "wrong keys", "pickled object"])
def test_unusable_cache_files_are_ignored_and_replaced(tmp_path, bench, kind, caplog):
    cache = FeatureCache(tmp_path / "c")
    model = _model()
    E.extract_benchmark_outputs(model, bench, sets=["id"], cache=cache)
    (path,) = (tmp_path / "c").rglob("id-*.npz")
    _Payload.marker = tmp_path / "payload-ran"
    _corrupt(path, kind, bench.test.x.shape[0])
    calls = _count_forward(model)
    with caplog.at_level(logging.WARNING, logger="ood_core.feature_cache"):
        out = E.extract_benchmark_outputs(model, bench, sets=["id"], cache=cache)
    assert calls, "an unusable entry must be recomputed"
    assert "ignoring" in caplog.text
    assert not _Payload.marker.exists()
    assert torch.equal(out["id"].features, E.extract_outputs(model, bench.test.x).features)
    fixed = cache.load(model_fingerprint(model), "id", data_fingerprint(bench.test.x), bench.test.x.shape[0])
    assert fixed is not None and torch.equal(fixed.logits, out["id"].logits)  # replaced by a good file


def test_a_failing_cache_write_costs_the_cache_not_the_result(tmp_path, bench, monkeypatch, caplog):
    def refuse(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FeatureCache, "store", refuse)
    with caplog.at_level(logging.WARNING, logger="ood_core.evaluate"):
        out = E.extract_benchmark_outputs(_model(), bench, sets=["id"], cache=FeatureCache(tmp_path))
    assert out["id"].features.shape == (bench.test.x.shape[0], 128)
    assert "No space left" in caplog.text


def test_progress_after_every_batch(bench):
    seen = []
    E.extract_benchmark_outputs(_model(), bench, sets=["train"], batch_size=100,
                                progress=lambda name, done, total, hit: seen.append((name, done, total, hit)))
    n = bench.train.x.shape[0]
    assert seen == [("train", min(d, n), n, False) for d in range(100, n + 100, 100)]


def test_cache_entries_are_written_atomically(tmp_path, bench, monkeypatch):
    """A writer dying before its rename leaves the previous entry whole and no temporary file."""
    import ood_core.fileio as fileio

    cache = FeatureCache(tmp_path)
    model = _model()
    key, data_key, n = model_fingerprint(model), data_fingerprint(bench.test.x), bench.test.x.shape[0]
    good = E.extract_outputs(model, bench.test.x)
    cache.store(key, "id", data_key, good)

    def die(*_a):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        cache.store(key, "id", data_key, E.ModelOutput(good.features * 0, good.logits * 0))
    monkeypatch.undo()
    kept = cache.load(key, "id", data_key, n)
    assert kept is not None and torch.equal(kept.features, good.features)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [cache.path(key, "id", data_key).name]


# --------------------------------------------------------------------------- CLI
def test_cli_features_then_evaluate_reads_them(tmp_path, monkeypatch, capsys):
    cache_dir = tmp_path / "cache"
    assert main(["features", "--checkpoint", str(DIGITS), "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "| train | 650 | 128 | extracted |" in out
    n_sets = len(ood_core.load_benchmark("digits").ood)  # unknown, 3 far-real, 5 far-synthetic
    assert len(list((cache_dir / "features").rglob("*.npz"))) == 2 + n_sets  # id, train and every OOD set

    fresh = tmp_path / "fresh.json"
    assert main(["evaluate", "--checkpoint", str(DIGITS), "--no-cache", "--json", str(fresh)]) == 0

    def no_model_runs(*_a, **_k):
        raise AssertionError("the model ran although every set was cached")

    monkeypatch.setattr(E, "extract_outputs", no_model_runs)
    cached = tmp_path / "cached.json"
    assert main(["evaluate", "--checkpoint", str(DIGITS), "--cache-dir", str(cache_dir), "--json", str(cached)]) == 0
    assert main(["geometry", "--checkpoint", str(DIGITS), "--cache-dir", str(cache_dir), "--jacobian", "none"]) == 0
    assert json.loads(cached.read_text()) == json.loads(fresh.read_text())
    assert main(["features", "--checkpoint", str(DIGITS), "--cache-dir", str(cache_dir), "--sets", "id"]) == 0
    assert "| id | 217 | 128 | cache |" in capsys.readouterr().out


def test_cli_features_errors_are_one_line(tmp_path, capsys):
    assert main(["features", "--checkpoint", str(DIGITS), "--cache-dir", str(tmp_path), "--sets", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown set of digits 'nope'" in err and "train" in err
    assert main(["features", "--checkpoint", str(DIGITS), "--no-cache"]) == 2
    assert "drop --no-cache" in capsys.readouterr().err
    assert main(["features", "--checkpoint", str(DIGITS), "--cache-dir", str(tmp_path), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
